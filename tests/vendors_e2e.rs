//! Each vendor destination over a real socket: the relay sends to a local stand-in,
//! which is checked for method, path, query, auth, content type and body.

mod common;

use base64::Engine;
use common::*;
use playrelay::RelayOptions;
use serde_json::Value;
use std::collections::HashSet;
use std::sync::Arc;
use time::macros::datetime;

/// An hour after the fixture sessions: inside GA4's 72-hour window.
fn fixture_clock() -> RelayOptions {
    RelayOptions {
        clock: Arc::new(|| datetime!(2026-11-01 21:00:00 UTC)),
    }
}

fn config(destination: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
{destination}
batch = {{ max_wait_ms = 5 }}
[[routes]]
name = "all"
match = {{ types = ["*"] }}
to = ["vendor"]
"#
    )
}

/// Starts a relay with one destination (`vendor`) at the fixture's time, posts the
/// fixture sessions and shuts down, so the stand-in holds everything that was sent.
async fn send_fixture(destination: &str) -> Arc<playrelay::Relay> {
    let relay = start_relay_with(&config(destination), fixture_clock()).await;
    post_ndjson(relay.local_addr, FIXTURE).await;
    let handle = relay.relay.clone();
    relay.shutdown().await;
    handle
}

fn fixture_ids() -> HashSet<String> {
    fixture_events()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test]
async fn segment_gets_basic_auth_json_batches_with_message_ids() {
    let vendor = StandIn::ok().await;
    // The client says it sent at 21:05 by its clock; the relay's clock says 21:00: the
    // device is 5 minutes fast, and Segment gets corrected timestamps.
    let relay = start_relay_with(
        &config(&format!(
            "[destinations.vendor]\ntype = \"segment\"\nwrite_key = \"wk_12345678\"\nendpoint = \"{}\"",
            vendor.url("")
        )),
        fixture_clock(),
    )
    .await;
    let answer = send(
        relay.local_addr,
        "POST",
        "/v1/events",
        &[
            ("content-type", "application/x-ndjson"),
            ("x-sent-at", "2026-11-01T21:05:00Z"),
        ],
        FIXTURE,
    )
    .await;
    assert_eq!(answer.status, 202);
    relay.shutdown().await;
    let requests = vendor.requests();
    assert!(!requests.is_empty());
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("wk_12345678:")
    );
    let mut message_ids = HashSet::new();
    let mut completed_contents = HashSet::new();
    for request in &requests {
        assert_eq!(request.method, "POST");
        assert_eq!(request.uri.path(), "/v1/batch");
        assert_eq!(request.uri.query(), None);
        assert_eq!(request.headers["authorization"], auth.as_str());
        assert_eq!(request.headers["content-type"], "application/json");
        let body: Value = serde_json::from_slice(&request.body).expect("JSON body");
        assert_eq!(body["sentAt"], "2026-11-01T21:00:00.000Z");
        for item in body["batch"].as_array().expect("batch") {
            assert_eq!(item["type"], "track");
            assert!(item["event"].as_str().unwrap_or("").starts_with("Video "));
            assert!(item["anonymousId"].is_string() || item["userId"].is_string());
            assert_eq!(item["context"]["library"]["name"], "playrelay");
            // The viewer's address as the relay saw it.
            assert_eq!(item["context"]["ip"], "127.0.0.1");
            let at = |key: &str| {
                time::OffsetDateTime::parse(
                    item[key].as_str().unwrap_or(""),
                    &time::format_description::well_known::Rfc3339,
                )
                .expect("RFC 3339")
            };
            assert_eq!(
                at("originalTimestamp") - at("timestamp"),
                time::Duration::minutes(5)
            );
            let id = item["messageId"].as_str().unwrap_or("").to_string();
            match id.strip_suffix(":content") {
                Some(event_id) => {
                    assert_eq!(item["event"], "Video Content Completed");
                    completed_contents.insert(event_id.to_string());
                }
                None => {
                    message_ids.insert(id);
                }
            }
        }
    }
    // Every completion closed its content first.
    let completions: HashSet<String> = fixture_events()
        .iter()
        .filter(|e| e["type"] == "playback.completed")
        .map(|e| e["event_id"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(!completions.is_empty());
    assert_eq!(completed_contents, completions);
    // Every Segment-mapped event arrived once, keyed by its event_id.
    let mapped = fixture_events()
        .iter()
        .filter(|e| {
            playrelay::dest::segment::default_name(e["type"].as_str().unwrap_or("")).is_some()
        })
        .count();
    assert_eq!(message_ids.len(), mapped);
    assert!(message_ids.is_subset(&fixture_ids()));
}

#[tokio::test]
async fn ga4_gets_measurement_protocol_requests_and_validation_findings_are_counted() {
    let vendor = StandIn::start(|_| {
        Reply::Body(
            200,
            r#"{"validationMessages":[{"fieldPath":"events","description":"demo finding","validationCode":"VALUE_INVALID"}]}"#,
        )
    })
    .await;
    let handle = send_fixture(&format!(
        "[destinations.vendor]\ntype = \"ga4\"\nmeasurement_id = \"G-TEST123\"\napi_secret = \"s3cr3t-value\"\nvalidate = true\nendpoint = \"{}\"",
        vendor.url("")
    ))
    .await;
    let requests = vendor.requests();
    assert!(!requests.is_empty());
    let mut engaged_ms = 0;
    for request in &requests {
        assert_eq!(request.method, "POST");
        assert_eq!(request.uri.path(), "/debug/mp/collect");
        assert_eq!(
            request.uri.query(),
            Some("measurement_id=G-TEST123&api_secret=s3cr3t-value")
        );
        assert_eq!(request.headers["content-type"], "application/json");
        let body: Value = serde_json::from_slice(&request.body).expect("JSON body");
        let events = body["events"].as_array().expect("events");
        assert!(!events.is_empty() && events.len() <= 25);
        assert!(body["client_id"].is_string());
        // The viewer's address as the relay saw it, for GA4's geography.
        assert_eq!(body["ip_override"], "127.0.0.1");
        for event in events {
            assert!(event["params"]["session_id"].is_number());
            let engagement = event["params"]["engagement_time_msec"]
                .as_u64()
                .expect("engagement");
            assert!((1..=30 * 60 * 1000).contains(&engagement));
            engaged_ms += engagement;
        }
    }
    // The fixture's sessions play for minutes, not 100 ms per event as before.
    assert!(engaged_ms > 60_000 * 10, "{engaged_ms}");
    let text = handle.metrics.encode();
    assert_eq!(
        metric(
            &text,
            "playrelay_destination_vendor_findings_total{destination=\"vendor\"}"
        ),
        requests.len() as f64
    );
    assert!(!text.contains("s3cr3t-value"));
    Accounts::read(&text, "vendor").assert_balanced();
}

#[tokio::test]
async fn tealium_gets_bulk_events_of_one_visitor_with_flat_keys() {
    let vendor = StandIn::ok().await;
    send_fixture(&format!(
        "[destinations.vendor]\ntype = \"tealium\"\naccount = \"acme\"\nprofile = \"main\"\nenvironment = \"prod\"\nendpoint = \"{}\"\nrate_limit = {{ events_per_second = 100000 }}",
        vendor.url("")
    ))
    .await;
    let requests = vendor.requests();
    assert!(requests.iter().any(|r| r.uri.path() == "/bulk-event"));
    for request in &requests {
        assert_eq!(request.method, "POST");
        assert!(matches!(request.uri.path(), "/bulk-event" | "/event"));
        assert_eq!(request.headers["content-type"], "application/json");
        let body: Value = serde_json::from_slice(&request.body).expect("JSON body");
        if request.uri.path() == "/bulk-event" {
            assert_eq!(body["shared"]["tealium_account"], "acme");
            assert_eq!(body["shared"]["tealium_profile"], "main");
            let visitor = &body["shared"]["tealium_visitor_id"];
            assert!(visitor.is_string());
            let events = body["events"].as_array().expect("events");
            assert!(events.len() <= 10);
            for event in events {
                assert!(event["tealium_event"].is_string());
                // One visitor per device: the anonymous id, whoever is logged in.
                if event.get("anonymous_id").is_some() {
                    assert_eq!(&event["anonymous_id"], visitor);
                }
                // The viewer's address as the relay saw it, unless the player gave one.
                assert!(event["ip"].is_string(), "{event}");
                assert!(event
                    .as_object()
                    .expect("object")
                    .keys()
                    .all(|k| !k.contains('.')));
            }
        } else {
            assert_eq!(body["tealium_account"], "acme");
            assert!(body["tealium_visitor_id"].is_string());
        }
    }
}

#[tokio::test]
async fn dry_run_writes_requests_with_secrets_hidden_and_sends_nothing() {
    let vendor = StandIn::ok().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = config(&format!(
        "[destinations.vendor]\ntype = \"ga4\"\nmeasurement_id = \"G-TEST123\"\napi_secret = \"s3cr3t-value\"\nendpoint = \"{}\"\ndry_run = true",
        vendor.url("")
    ))
    .replace(
        "[server]",
        &format!("[server]\ndry_run_dir = {:?}", dir.path().display().to_string()),
    );
    let relay = start_relay_with(&toml, fixture_clock()).await;
    post_ndjson(relay.local_addr, FIXTURE).await;
    relay.shutdown().await;
    assert!(vendor.requests().is_empty());
    let written = std::fs::read_to_string(dir.path().join("vendor.http")).expect("dry-run file");
    assert!(written.starts_with("POST http://"));
    assert!(written.contains("/mp/collect?measurement_id=G-TEST123&api_secret=***"));
    assert!(!written.contains("s3cr3t-value"));
}

#[test]
fn translate_prints_requests_for_the_shipped_routes_without_secrets() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_playrelay"))
        .args([
            "translate",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/routes.toml"),
        ])
        .args(["--destination", "ga4", "--sent-at", "2026-11-01T21:00:00Z"])
        .env("GA4_API_SECRET", "very-secret-value")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run playrelay");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(FIXTURE.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("output");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("POST https://www.google-analytics.com/mp/collect?measurement_id="));
    assert!(text.contains("api_secret=***"));
    assert!(!text.contains("very-secret-value"));
    assert!(text.contains("dropped: unmapped"));
}

#[tokio::test]
async fn types_a_vendor_only_drops_are_counted_and_never_queued() {
    let hung = StandIn::start(|_| Reply::Hang).await;
    let relay = start_relay_with(
        &config(&format!(
            "[destinations.vendor]\ntype = \"ga4\"\nmeasurement_id = \"G-TEST123\"\napi_secret = \"s3cr3t-value\"\nendpoint = \"{}\"\nevents = {{ \"playback.paused\" = false }}\ntimeout_ms = 60000",
            hung.url("")
        ))
        .replace("[server]", "[server]\ndrain_timeout_ms = 100"),
        fixture_clock(),
    )
    .await;
    post_ndjson(relay.local_addr, FIXTURE).await;
    let text = relay.relay.metrics.encode();
    let fixture = fixture_events();
    let count = |f: &dyn Fn(&str) -> bool| {
        fixture
            .iter()
            .filter(|e| f(e["type"].as_str().unwrap_or("")))
            .count() as f64
    };
    let unmapped = count(&|t| playrelay::dest::ga4::default_name(t).is_none());
    let disabled = count(&|t| t == "playback.paused");
    let dropped = |reason: &str| {
        metric(
            &text,
            &format!("playrelay_destination_events_dropped_total{{destination=\"vendor\",reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(dropped("unmapped"), unmapped);
    assert_eq!(dropped("disabled"), disabled);
    let accounts = Accounts::read(&text, "vendor");
    accounts.assert_balanced();
    // Only what GA4 would send was queued or taken.
    assert_eq!(
        accounts.queued + accounts.in_flight,
        708.0 - unmapped - disabled
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn events_a_vendor_refuses_are_dead_lettered_with_the_reason() {
    let vendor = StandIn::ok().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = config(&format!(
        "[destinations.vendor]\ntype = \"ga4\"\nmeasurement_id = \"G-TEST123\"\napi_secret = \"s3cr3t-value\"\nendpoint = \"{}\"",
        vendor.url("")
    ))
    .replace(
        "[server]",
        &format!("[server]\ndead_letter_dir = {:?}", dir.path().display().to_string()),
    );
    // A week after the fixture sessions: every event GA4 would send is too old.
    let week_later = RelayOptions {
        clock: Arc::new(|| datetime!(2026-11-08 21:00:00 UTC)),
    };
    let relay = start_relay_with(&toml, week_later).await;
    post_ndjson(relay.local_addr, FIXTURE).await;
    let metrics = relay.relay.clone();
    relay.shutdown().await;
    assert!(vendor.requests().is_empty());
    let mapped = fixture_events()
        .iter()
        .filter(|e| playrelay::dest::ga4::default_name(e["type"].as_str().unwrap_or("")).is_some())
        .count();
    let records = dead_letters(dir.path(), "vendor");
    assert_eq!(records.len(), mapped);
    for record in &records {
        assert_eq!(record["reason"], "too_old");
        assert!(record["error"]
            .as_str()
            .unwrap_or("")
            .contains("more than 72 h"));
        assert!(!record.to_string().contains("s3cr3t-value"));
    }
    Accounts::read(&metrics.metrics.encode(), "vendor").assert_balanced();
}

/// A webhook as a data engineer sets it up: events from a named ingest source, in an
/// envelope, signed, gzipped; the stand-in checks the signature the documented way.
#[tokio::test]
async fn webhook_gets_signed_gzipped_envelopes_with_schema_source_and_batch_id() {
    use hmac::Mac;
    use std::io::Read;
    let secret = "whsec-e2e-0123456789";
    let vendor = StandIn::ok().await;
    let relay = start_relay_with(
        &format!(
            r#"
[server]
listen = "127.0.0.1:0"
[sources.web]
[destinations.vendor]
type = "webhook"
endpoint = "{}"
envelope = true
signing_secret = "{secret}"
gzip = true
batch = {{ max_wait_ms = 5 }}
[[routes]]
name = "all"
match = {{ types = ["*"] }}
to = ["vendor"]
"#,
            vendor.url("/hook")
        ),
        fixture_clock(),
    )
    .await;
    post_ndjson(relay.local_addr, FIXTURE).await;
    relay.shutdown().await;
    let requests = vendor.requests();
    assert!(!requests.is_empty());
    let mut ids = HashSet::new();
    for request in &requests {
        assert_eq!(request.uri.path(), "/hook");
        assert_eq!(request.headers["content-type"], "application/json");
        assert_eq!(request.headers["content-encoding"], "gzip");
        let mut body = Vec::new();
        flate2::read::GzDecoder::new(&request.body[..])
            .read_to_end(&mut body)
            .expect("gzip");
        // Verify: HMAC-SHA-256(secret, "<t>.<body>") against v1, and t is recent.
        let signature = request.headers["x-playrelay-signature"]
            .to_str()
            .expect("ascii");
        let (t, v1) = signature.split_once(",v1=").expect("t=…,v1=…");
        let t = t.strip_prefix("t=").expect("t=");
        assert_eq!(t, "1793566800"); // 2026-11-01T21:00:00Z, the relay's clock
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("key");
        mac.update(format!("{t}.").as_bytes());
        mac.update(&body);
        let expected: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(v1, expected);
        let envelope: Value = serde_json::from_slice(&body).expect("JSON envelope");
        assert_eq!(
            envelope["batch_id"].as_str(),
            request.headers["x-playrelay-batch-id"].to_str().ok()
        );
        assert_eq!(envelope["sent_at"], "2026-11-01T21:00:00.000Z");
        for event in envelope["events"].as_array().expect("events") {
            assert_eq!(event["schema"], "player-event/1");
            assert_eq!(event["source"], "web");
            ids.insert(event["event_id"].as_str().unwrap_or("").to_string());
        }
    }
    assert_eq!(ids, fixture_ids());
}
