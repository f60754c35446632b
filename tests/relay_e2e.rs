//! The relay end to end: real sockets on 127.0.0.1, webhook stand-ins, the real entry points.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::io::Write;
use std::time::Duration;

fn two_webhooks(playback: &StandIn, ads: &StandIn) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[destinations.playback_hook]
type = "webhook"
endpoint = "{}"
batch = {{ max_events = 50, max_wait_ms = 20 }}

[destinations.ads_hook]
type = "webhook"
endpoint = "{}"
encoding = "ndjson"
batch = {{ max_events = 7, max_wait_ms = 20 }}

[[routes]]
name = "playback"
match = {{ types = ["playback.*", "quality.changed"] }}
to = ["playback_hook"]

[[routes]]
name = "ads-and-errors"
match = {{ types = ["ad.*", "*.error"] }}
to = ["ads_hook"]
"#,
        playback.url("/playback"),
        ads.url("/ads")
    )
}

#[tokio::test]
async fn sample_sessions_reach_exactly_the_matching_stand_ins() {
    let playback = StandIn::ok().await;
    let ads = StandIn::ok().await;
    let relay = start_relay(&two_webhooks(&playback, &ads)).await;

    let answer = post_ndjson(relay.local_addr, FIXTURE).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(answer.body, json!({"accepted": 708, "rejected": []}));
    relay.shutdown().await;

    let sent = fixture_events();
    let matches = |event: &Value, f: &dyn Fn(&str) -> bool| f(event["type"].as_str().unwrap_or(""));
    let is_playback = |t: &str| t.starts_with("playback.") || t == "quality.changed";
    let is_ad_or_error = |t: &str| t.starts_with("ad.") || t.ends_with(".error");
    for (stand_in, wanted) in [
        (&playback, &is_playback as &dyn Fn(&str) -> bool),
        (&ads, &is_ad_or_error),
    ] {
        let expected: Vec<Value> = sent
            .iter()
            .filter(|e| matches(e, wanted))
            .cloned()
            .collect();
        let got: Vec<Value> = stand_in
            .delivered_events()
            .into_iter()
            .map(without_received_at)
            .collect();
        let ids: HashSet<&str> = got.iter().filter_map(|e| e["event_id"].as_str()).collect();
        assert_eq!(ids.len(), got.len(), "an event arrived twice");
        let by_id = |events: &[Value]| {
            let mut events = events.to_vec();
            events.sort_by(|a, b| a["event_id"].as_str().cmp(&b["event_id"].as_str()));
            events
        };
        assert_eq!(by_id(&got), by_id(&expected), "exactly the matching events");
        // Batches are sent several at a time, so they may arrive in any order; inside
        // one, the events keep the order they were sent in.
        let position: std::collections::HashMap<&str, usize> = expected
            .iter()
            .enumerate()
            .filter_map(|(i, e)| Some((e["event_id"].as_str()?, i)))
            .collect();
        for request in stand_in.requests() {
            let order: Vec<usize> = body_events(&request.body)
                .iter()
                .filter_map(|e| position.get(e["event_id"].as_str()?).copied())
                .collect();
            assert!(
                order.windows(2).all(|w| w[0] < w[1]),
                "order inside a batch: {order:?}"
            );
        }
    }
    // playback.error matched both routes but the two hooks are different destinations.
    assert!(ads.delivered_events().len() > 3);
    let content_types: HashSet<String> = ads
        .requests()
        .iter()
        .map(|r| r.headers["content-type"].to_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        content_types,
        HashSet::from(["application/x-ndjson".to_string()])
    );
    assert!(ads
        .requests()
        .iter()
        .all(|r| body_events(&r.body).len() <= 7));
}

#[tokio::test]
async fn an_event_matching_several_routes_reaches_a_destination_once() {
    let hook = StandIn::ok().await;
    let toml = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[destinations.hook]
type = "webhook"
endpoint = "{}"
batch = {{ max_wait_ms = 5 }}
[[routes]]
name = "all"
match = {{ types = ["*"] }}
to = ["hook"]
[[routes]]
name = "errors-again"
match = {{ types = ["playback.error"] }}
to = ["hook", "hook"]
"#,
        hook.url("/")
    );
    let relay = start_relay(&toml).await;
    let answer = post_ndjson(relay.local_addr, FIXTURE).await;
    assert_eq!(answer.body["accepted"], 708);
    relay.shutdown().await;
    assert_eq!(hook.delivered_events().len(), 708);
}

#[tokio::test]
async fn mixed_request_accepts_the_valid_events_and_names_the_rest() {
    let hook = StandIn::ok().await;
    let relay = start_relay(&two_webhooks(&hook, &hook)).await;
    let good = fixture_events();
    let mut no_id = good[1].clone();
    no_id.as_object_mut().map(|m| m.remove("event_id"));
    let mut unknown_type = good[2].clone();
    unknown_type["type"] = json!("playback.teleported");
    let mut wrong_type = good[3].clone();
    wrong_type["playback"]["position_ms"] = json!("twelve");
    let body = json!([good[4], no_id, unknown_type, good[5], wrong_type]);

    let answer = post_json(relay.local_addr, body.to_string()).await;
    assert_eq!(answer.status, 202);
    assert_eq!(answer.body["accepted"], 2);
    let rejected = answer.body["rejected"]
        .as_array()
        .expect("rejected list")
        .clone();
    let indices: Vec<u64> = rejected
        .iter()
        .filter_map(|r| r["index"].as_u64())
        .collect();
    assert_eq!(indices, vec![1, 2, 4]);
    assert_eq!(rejected[0]["error"], "event_id: missing required field");
    assert!(rejected[1]["error"]
        .as_str()
        .unwrap_or("")
        .contains("playback.teleported"));
    assert!(rejected[2]["error"]
        .as_str()
        .unwrap_or("")
        .starts_with("playback.position_ms: invalid type"));

    relay.shutdown().await;
    let ids: Vec<Value> = hook
        .delivered_events()
        .into_iter()
        .map(|e| e["event_id"].clone())
        .collect();
    assert_eq!(
        ids,
        vec![good[4]["event_id"].clone(), good[5]["event_id"].clone()]
    );
}

#[tokio::test]
async fn broken_bodies_get_their_status_a_json_error_and_forward_nothing() {
    let hook = StandIn::ok().await;
    let toml = two_webhooks(&hook, &hook).replace(
        "[server]\nlisten = \"127.0.0.1:0\"",
        "[server]\nlisten = \"127.0.0.1:0\"\nmax_body_bytes = 4096\nmax_decompressed_bytes = 8192",
    );
    let relay = start_relay(&toml).await;
    let addr = relay.local_addr;
    let one = FIXTURE.lines().next().expect("fixture");

    let malformed = post_json(addr, format!("[{one}, {{\"type\": ")).await;
    assert_eq!(malformed.status, 400);
    assert!(
        malformed.body["error"]
            .as_str()
            .unwrap_or("")
            .contains("line 1 column"),
        "{}",
        malformed.body
    );

    let truncated = post_ndjson(addr, format!("{one}\n{}", &one[..one.len() / 2])).await;
    assert_eq!(truncated.status, 400);
    assert!(truncated.body["error"]
        .as_str()
        .unwrap_or("")
        .contains("line 2"));

    let not_gzip = send(
        addr,
        "POST",
        "/v1/events",
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        one.to_string(),
    )
    .await;
    assert_eq!(not_gzip.status, 400);
    assert!(not_gzip.body["error"]
        .as_str()
        .unwrap_or("")
        .contains("gzip"));

    let oversized = post_ndjson(addr, format!("{one}\n").repeat(10)).await;
    assert_eq!(oversized.status, 413);
    assert!(oversized.body["error"].is_string());

    // A gzip bomb: small on the wire, over the decompressed cap.
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(&vec![b' '; 64 * 1024]).expect("gzip");
    let bomb = encoder.finish().expect("gzip");
    assert!(bomb.len() < 4096);
    let inflated = send(
        addr,
        "POST",
        "/v1/events",
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        bomb,
    )
    .await;
    assert_eq!(inflated.status, 413);

    let wrong_type = send(
        addr,
        "POST",
        "/v1/events",
        &[("content-type", "text/csv")],
        one.to_string(),
    )
    .await;
    assert_eq!(wrong_type.status, 415);
    assert!(wrong_type.body["error"].is_string());

    let unknown_path = send(addr, "GET", "/v2/nothing", &[], "").await;
    assert_eq!(unknown_path.status, 404);
    let wrong_method = send(addr, "GET", "/v1/events", &[], "").await;
    assert_eq!(wrong_method.status, 405);

    // A real gzip body works.
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(one.as_bytes()).expect("gzip");
    let gzipped = send(
        addr,
        "POST",
        "/v1/events",
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        encoder.finish().expect("gzip"),
    )
    .await;
    assert_eq!(gzipped.status, 202, "{}", gzipped.body);
    assert_eq!(gzipped.body["accepted"], 1);

    relay.shutdown().await;
    // Only the gzip body's one event went anywhere (the first fixture is session.started,
    // routed nowhere by these routes).
    assert!(hook.requests().is_empty(), "{:?}", hook.requests());
}

/// One webhook destination in small batches whose stand-in holds every answer until the
/// returned gate opens; `server_extra` goes into `[server]`.
async fn gated_vendor_relay(
    server_extra: &str,
) -> (
    tokio::sync::watch::Sender<bool>,
    StandIn,
    playrelay::RunningRelay,
) {
    let (gate, gate_rx) = tokio::sync::watch::channel(false);
    let hook = StandIn::start(move |_| Reply::UntilOpen(gate_rx.clone(), 200)).await;
    let toml = format!(
        r#"
[server]
listen = "127.0.0.1:0"
drain_timeout_ms = 30000
{server_extra}
[destinations.slow]
type = "webhook"
endpoint = "{}"
batch = {{ max_events = 10, max_wait_ms = 1 }}
[[routes]]
name = "all"
match = {{ types = ["*"] }}
to = ["slow"]
"#,
        hook.url("/slow")
    );
    let relay = start_relay(&toml).await;
    (gate, hook, relay)
}

#[tokio::test]
async fn shutdown_delivers_everything_still_queued() {
    // A slow vendor and small batches: most events are still queued when shutdown starts.
    // The vendor holds its answers until the gate opens, after shutdown has started.
    let (gate, hook, relay) = gated_vendor_relay("").await;
    let answer = post_ndjson(relay.local_addr, FIXTURE).await;
    assert_eq!(answer.body["accepted"], 708);
    let relay_state = relay.relay.clone();
    // The vendor holds the first batches, so the rest stays queued until the gate opens.
    wait_until("batches held at the vendor", Duration::from_secs(5), || {
        Accounts::read(&relay_state.metrics.encode(), "slow").in_flight > 0.0
    })
    .await;
    let accounts = Accounts::read(&relay_state.metrics.encode(), "slow");
    assert!(
        accounts.queued > 0.0,
        "events should still be queued: {accounts:?}"
    );
    let (report, ()) = tokio::join!(relay.shutdown(), async {
        let _ = gate.send(true);
    });
    assert!(report.drained);
    let got: HashSet<String> = hook
        .delivered_events()
        .iter()
        .filter_map(|e| e["event_id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(got.len(), 708);
}

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let hook = StandIn::ok().await;
    let relay = start_relay(&two_webhooks(&hook, &hook)).await;
    let addr = relay.local_addr;
    assert_eq!(send(addr, "GET", "/healthz", &[], "").await.status, 200);
    let ready = send(addr, "GET", "/readyz", &[], "").await;
    assert_eq!(
        (ready.status, ready.body["status"].clone()),
        (200, json!("ready"))
    );

    let mut body = fixture_events()[..3].to_vec();
    body.push(json!({"type": "nonsense"}));
    post_json(addr, Value::Array(body).to_string()).await;
    let text = send(addr, "GET", "/metrics", &[], "").await.body;
    let text = text.as_str().expect("metrics are text");
    assert_eq!(metric(text, "playrelay_events_received_total"), 4.0);
    assert_eq!(metric(text, "playrelay_events_accepted_total"), 3.0);
    assert_eq!(
        metric(
            text,
            "playrelay_events_rejected_total{reason=\"missing_field\"}"
        ),
        1.0
    );
    // session.started and playback.requested go to playback_hook? Only playback.* does.
    assert_eq!(metric(text, "playrelay_events_unrouted_total"), 1.0);
    assert!(text.contains("playrelay_destination_queue_depth{destination=\"playback_hook\"}"));
    relay.shutdown().await;
}

#[tokio::test]
async fn file_destination_appends_ndjson() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nested/out.ndjson");
    let toml = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[destinations.local]
type = "file"
path = "{}"
[[routes]]
name = "all"
match = {{ types = ["*"] }}
to = ["local"]
"#,
        path.display()
    );
    let relay = start_relay(&toml).await;
    post_ndjson(relay.local_addr, FIXTURE).await;
    relay.shutdown().await;
    let written = std::fs::read_to_string(&path).expect("file written");
    let got: Vec<Value> = written
        .lines()
        .map(|l| without_received_at(serde_json::from_str(l).expect("json line")))
        .collect();
    assert_eq!(got, fixture_events());
}

#[tokio::test]
async fn a_full_queue_drops_the_newest_and_counts_it() {
    let hook = StandIn::start(|_| Reply::Hang).await;
    // Dropping the newest is the memory spool's answer to a full queue.
    let toml = format!(
        r#"
[spool]
backend = "memory"
[server]
listen = "127.0.0.1:0"
drain_timeout_ms = 200
[destinations.stuck]
type = "webhook"
endpoint = "{}"
timeout_ms = 60000
queue = {{ max_events = 100, when_full = "drop_newest" }}
batch = {{ max_events = 10, max_wait_ms = 1 }}
[[routes]]
name = "all"
match = {{ types = ["*"] }}
to = ["stuck"]
"#,
        hook.url("/")
    );
    let relay = start_relay(&toml).await;
    let answer = post_ndjson(relay.local_addr, FIXTURE).await;
    // Ingest does not wait on the hung vendor.
    assert_eq!(answer.body["accepted"], 708);
    let text = relay.relay.metrics.encode();
    let dropped = metric(
        &text,
        "playrelay_destination_events_dropped_total{destination=\"stuck\",reason=\"queue_full\"}",
    );
    // 100 queued, up to 10 taken into a batch; the rest dropped.
    assert!((598.0..=608.0).contains(&dropped), "dropped {dropped}");
    let report = relay.shutdown().await;
    assert!(!report.drained);
}

#[tokio::test]
async fn shutdown_turns_readiness_off_first_then_refuses_ingest_while_health_answers() {
    let (gate, hook, relay) = gated_vendor_relay("shutdown_grace_ms = 1500").await;
    let addr = relay.local_addr;
    let state = relay.relay.clone();
    assert_eq!(post_ndjson(addr, FIXTURE).await.status, 202);
    let shutdown = tokio::spawn(relay.shutdown());

    // The grace period: not ready any more, but events are still taken.
    wait_until("readiness turns off", Duration::from_secs(5), || {
        state.readiness() == "draining"
    })
    .await;
    assert_eq!(send(addr, "GET", "/readyz", &[], "").await.status, 503);
    let during_grace = post_ndjson(addr, FIXTURE).await;
    assert_eq!(during_grace.status, 202, "{:?}", during_grace.body);

    // Then ingest refuses (the vendor still holds the drain), and health still answers.
    wait_until("ingest closes", Duration::from_secs(5), || {
        state.ingest_closed()
    })
    .await;
    let refused = post_ndjson(addr, FIXTURE).await;
    assert_eq!(refused.status, 503, "{:?}", refused.body);
    assert_eq!(refused.headers["retry-after"], "1");
    assert!(
        refused.body["error"]
            .as_str()
            .is_some_and(|e| e.contains("shutting down")),
        "{:?}",
        refused.body
    );
    assert_eq!(send(addr, "GET", "/healthz", &[], "").await.status, 200);
    assert_eq!(send(addr, "GET", "/readyz", &[], "").await.status, 503);

    let _ = gate.send(true);
    let report = shutdown.await.expect("shutdown task");
    assert!(report.drained);
    // Both accepted posts arrived; the refused one was never taken.
    let counts = id_counts(&hook.delivered_events());
    assert_eq!(counts.len(), 708);
    assert!(
        counts.values().all(|n| *n == 2),
        "each id once per accepted post"
    );
    assert_eq!(
        metric(
            &state.metrics.encode(),
            "playrelay_ingest_refused_total{reason=\"shutting_down\"}"
        ),
        1.0
    );
}
