//! The Grafana dashboard in docs/grafana/ queries only metrics the relay exports: every
//! `playrelay_*` name in every panel's expression is checked against the names in the
//! relay's own `/metrics` text (counters as `_total`, histograms as `_bucket`, `_sum`
//! and `_count`), so renaming a metric without the dashboard fails here.

mod common;

use common::{post_ndjson, start_relay, StandIn, FIXTURE};
use serde_json::Value;
use std::collections::BTreeSet;

/// Every sample name a relay that has worked shows in `/metrics`, from its `# TYPE`
/// lines: a relay with QoE on, a vendor stand-in and a file destination takes the
/// fixture, a bad event and a refused request, then shuts down (summarizing sessions).
async fn exported() -> BTreeSet<String> {
    let vendor = StandIn::ok().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = format!(
        r#"
[server]
listen = "127.0.0.1:0"
max_events_per_request = 500

[qoe]
enabled = true

[destinations.vendor]
type = "webhook"
endpoint = "{}"

[destinations.local]
type = "file"
path = "{}/out.ndjson"
events = {{ "playback.heartbeat" = false }}

[[routes]]
name = "all"
match = {{ types = ["*"] }}
to = ["vendor", "local"]

[[routes]]
name = "sampled"
match = {{ types = ["ad.*"] }}
to = ["local"]
sample = 0.5
"#,
        vendor.url("/events"),
        dir.path().display()
    );
    let relay = start_relay(&toml).await;
    let lines: Vec<&str> = FIXTURE.lines().collect();
    for chunk in lines.chunks(400) {
        let answer = post_ndjson(relay.local_addr, chunk.join("\n")).await;
        assert_eq!(answer.status, 202);
    }
    assert_eq!(
        post_ndjson(relay.local_addr, "{\"type\":\"nope\"}")
            .await
            .status,
        202
    );
    assert_eq!(
        post_ndjson(relay.local_addr, lines[..501].join("\n"))
            .await
            .status,
        413
    );
    let metrics = relay.relay.metrics.clone();
    relay.shutdown().await;
    let text = metrics.encode();
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_string());
            }
        }
    }
    names
}

fn expressions(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", Value::String(text)) => out.push(text.clone()),
                    // Template variables' queries (`label_values(...)`), not data source types.
                    ("query", Value::String(text)) if text.contains('(') => out.push(text.clone()),
                    _ => expressions(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| expressions(v, out)),
        _ => {}
    }
}

fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("playrelay_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[tokio::test]
async fn every_dashboard_query_names_an_exported_metric() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/grafana/playrelay.json"
    ))
    .expect("dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut exprs = Vec::new();
    expressions(&dashboard, &mut exprs);
    assert!(exprs.len() >= 20, "{} queries", exprs.len());
    let exported = exported().await;
    let mut used = BTreeSet::new();
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(
            !names.is_empty(),
            "a query with no playrelay metric: {expr}"
        );
        for name in names {
            assert!(
                exported.contains(&name),
                "{name} (in {expr}) is not exported; the relay has:\n{exported:#?}"
            );
            used.insert(name);
        }
    }
    // The QoE section covers the fleet metrics the issue asks for.
    for name in [
        "playrelay_qoe_sessions_total",
        "playrelay_qoe_startup_seconds_bucket",
        "playrelay_qoe_watched_seconds_total",
        "playrelay_qoe_playing_seconds_total",
        "playrelay_qoe_rebuffer_seconds_total",
        "playrelay_qoe_playback_failures_total",
        "playrelay_destination_events_sent_total",
    ] {
        assert!(used.contains(name), "the dashboard does not show {name}");
    }
}

#[tokio::test]
async fn the_name_check_can_fail() {
    assert_eq!(
        metric_names("sum(rate(playrelay_nope_total{job=\"x\"}[5m])) / playrelay_b"),
        vec!["playrelay_nope_total", "playrelay_b"]
    );
    let exported = exported().await;
    assert!(!exported.contains("playrelay_nope_total"));
    assert!(exported.contains("playrelay_qoe_sessions_total"));
}
