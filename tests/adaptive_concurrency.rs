//! Adaptive request concurrency against real sockets: a vendor stand-in on 127.0.0.1 that
//! holds every answer 100 ms and counts the requests it holds at once. Every wait is
//! bounded; nothing here asserts on elapsed time.
// The stand-in holds answers in real time.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod common;

use axum::http::StatusCode;
use common::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// The old fixed default of `concurrency`.
const OLD_DEFAULT: usize = 4;

/// A vendor 100 ms away: it counts requests held at once (and the peak), and answers
/// 200, or 429 / 503 while `refuse` is set.
#[derive(Default)]
struct SlowVendor {
    held: AtomicUsize,
    peak: AtomicUsize,
    answered: AtomicUsize,
    refuse: std::sync::Mutex<Option<u16>>,
}

impl SlowVendor {
    async fn start() -> (Arc<SlowVendor>, String) {
        let vendor = Arc::new(SlowVendor::default());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/events", listener.local_addr().expect("addr"));
        let state = vendor.clone();
        let app = axum::Router::new().fallback(move || {
            let vendor = state.clone();
            async move {
                let now = vendor.held.fetch_add(1, Ordering::SeqCst) + 1;
                vendor.peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                vendor.held.fetch_sub(1, Ordering::SeqCst);
                vendor.answered.fetch_add(1, Ordering::SeqCst);
                let refuse = *vendor.refuse.lock().expect("lock");
                let status = refuse.unwrap_or(200);
                StatusCode::from_u16(status).unwrap_or(StatusCode::OK)
            }
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (vendor, url)
    }
}

fn config(url: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
drain_timeout_ms = 500

[destinations.vendor]
type = "webhook"
endpoint = "{url}"
batch = {{ max_events = 5, max_wait_ms = 1 }}
retry = {{ max_attempts = 1000, initial_backoff_ms = 50, max_backoff_ms = 200 }}
breaker = {{ failure_threshold = 1000000 }}
{extra}

[[routes]]
name = "all"
match = {{ types = ["*"] }}
to = ["vendor"]
"#
    )
}

/// `n` fixture events with fresh ids.
fn events(prefix: u32, n: usize) -> String {
    let fixture = fixture_events();
    (0..n)
        .map(|i| {
            let mut event: Value = fixture[i % fixture.len()].clone();
            event["event_id"] = json!(format!("{prefix:08x}-0000-4000-8000-{i:012x}"));
            format!("{event}\n")
        })
        .collect()
}

/// Sends `requests` NDJSON bodies of 1,000 events each.
async fn load(relay: &playrelay::RunningRelay, first: u32, requests: u32) {
    for r in first..first + requests {
        let answer = post_ndjson(relay.local_addr, events(r, 1000)).await;
        assert_eq!(answer.status, 202, "{:?}", answer.body);
    }
}

fn limit(relay: &playrelay::RunningRelay) -> f64 {
    metric(
        &relay.relay.metrics.encode(),
        "playrelay_destination_concurrency_limit{destination=\"vendor\"}",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_ms_vendor_gets_twenty_times_the_old_default_in_flight() {
    let (vendor, url) = SlowVendor::start().await;
    let relay = start_relay(&config(&url, "")).await;
    // 20,000 events in batches of 5: 4,000 requests, far more than 4 at a time carry.
    load(&relay, 1, 20).await;
    wait_until(
        "80 requests held by the vendor at once",
        Duration::from_secs(60),
        || vendor.peak.load(Ordering::SeqCst) >= 20 * OLD_DEFAULT,
    )
    .await;
    let peak = vendor.peak.load(Ordering::SeqCst);
    let rtt = metric(
        &relay.relay.metrics.encode(),
        "playrelay_destination_rtt_seconds{destination=\"vendor\"}",
    );
    println!(
        "peak in flight {peak}, limit {}, average round trip {rtt:.3} s",
        limit(&relay)
    );
    assert!((0.09..1.0).contains(&rtt), "{rtt}");
    assert!(limit(&relay) <= 128.0);
    relay.shutdown().await;
}

async fn back_pressure_shrinks_the_limit(status: u16) {
    let (vendor, url) = SlowVendor::start().await;
    let relay = start_relay(&config(&url, "")).await;
    load(&relay, 1, 20).await;
    wait_until("the limit to climb", Duration::from_secs(60), || {
        limit(&relay) >= 32.0
    })
    .await;
    let high = limit(&relay);
    *vendor.refuse.lock().expect("lock") = Some(status);
    wait_until("the limit to come down", Duration::from_secs(30), || {
        limit(&relay) <= 4.0
    })
    .await;
    println!("{status}: limit {high} → {}", limit(&relay));
    // The vendor accepts again: nothing was lost, every event arrives.
    *vendor.refuse.lock().expect("lock") = None;
    wait_until("every event sent", Duration::from_secs(120), || {
        Accounts::read(&relay.relay.metrics.encode(), "vendor").sent >= 20_000.0
    })
    .await;
    let accounts = Accounts::read(&relay.relay.metrics.encode(), "vendor");
    assert_eq!(accounts.dead_lettered, 0.0);
    accounts.assert_balanced();
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_429_halve_the_limit() {
    back_pressure_shrinks_the_limit(429).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_503_halve_the_limit() {
    back_pressure_shrinks_the_limit(503).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_concurrency_is_never_passed() {
    let (vendor, url) = SlowVendor::start().await;
    let relay = start_relay(&config(&url, "concurrency = 3")).await;
    load(&relay, 1, 2).await;
    wait_until("a few hundred requests", Duration::from_secs(60), || {
        vendor.answered.load(Ordering::SeqCst) >= 100
    })
    .await;
    assert_eq!(vendor.peak.load(Ordering::SeqCst), 3);
    assert_eq!(limit(&relay), 3.0);
    relay.shutdown().await;
}

/// A 429 with `Retry-After` is the vendor pacing the relay: it does not use up
/// `max_attempts`, so a request refused more often than that still arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_429s_do_not_use_up_the_attempts() {
    let vendor = StandIn::start(|n| {
        if n < 6 {
            Reply::WithHeaders(429, vec![("retry-after", "0".into())])
        } else {
            Reply::Status(200)
        }
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = format!(
        r#"
[server]
listen = "127.0.0.1:0"
dead_letter_dir = {:?}

[destinations.vendor]
type = "webhook"
endpoint = "{}"
batch = {{ max_events = 1000, max_wait_ms = 5 }}
concurrency = 1
retry = {{ max_attempts = 2, initial_backoff_ms = 5, max_backoff_ms = 10 }}

[[routes]]
name = "all"
match = {{ types = ["*"] }}
to = ["vendor"]
"#,
        dir.path().display().to_string(),
        vendor.url("/events")
    );
    let relay = start_relay(&toml).await;
    let answer = post_ndjson(relay.local_addr, events(7, 100)).await;
    assert_eq!(answer.status, 202);
    vendor.wait_for_events(100, Duration::from_secs(20)).await;
    let accounts = Accounts::read(&relay.relay.metrics.encode(), "vendor");
    assert_eq!(accounts.dead_lettered, 0.0, "{accounts:?}");
    assert_eq!(vendor.requests().len(), 7);
    relay.shutdown().await;
}
