//! Delivery under faults: vendors that fail, hang, reject, cut answers short or are not
//! there. The accounting invariant is the oracle:
//! received = delivered + dead_lettered + dropped + queued + in_flight.

mod common;

use common::*;
use playrelay::{config, replay, system_clock};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

const QUICK_RETRY: &str =
    "retry = { max_attempts = 6, initial_backoff_ms = 5, max_backoff_ms = 40, max_elapsed_ms = 10000 }";

fn one_destination(url: &str, dead_letters: &Path, extra: &str) -> String {
    let retry = if extra.contains("retry =") {
        ""
    } else {
        QUICK_RETRY
    };
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
dead_letter_dir = "{}"
drain_timeout_ms = 20000

[destinations.vendor]
type = "webhook"
endpoint = "{url}"
batch = {{ max_events = 20, max_wait_ms = 5 }}
{retry}
{extra}

[[routes]]
name = "all"
match = {{ types = ["*"] }}
to = ["vendor"]
"#,
        dead_letters.display()
    )
}

#[tokio::test]
async fn flaky_vendor_gets_every_event_with_retries_honouring_retry_after() {
    let vendor = StandIn::start(|n| match n {
        4 => Reply::WithHeaders(429, vec![("retry-after", "1".into())]),
        n if n % 3 == 2 => Reply::Status(503),
        _ => Reply::Status(200),
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(&one_destination(&vendor.url("/"), dir.path(), "")).await;
    let answer = post_ndjson(relay.local_addr, FIXTURE).await;
    assert_eq!(answer.body["accepted"], 708);
    let metrics = relay.relay.clone();
    relay.shutdown().await;

    let delivered = vendor.delivered_events();
    let counts = id_counts(&delivered);
    assert_eq!(counts.len(), 708, "every event arrives at least once");
    let duplicates = delivered.len() - counts.len();
    // A 503 here is answered before the body is used, so a retry never duplicates.
    assert_eq!(duplicates, 0);
    let text = metrics.metrics.encode();
    let accounts = Accounts::read(&text, "vendor");
    accounts.assert_balanced();
    assert_eq!(accounts.sent, 708.0);
    assert!(
        metric(
            &text,
            "playrelay_destination_retries_total{destination=\"vendor\"}"
        ) >= 10.0
    );
    assert!(
        metric(
            &text,
            "playrelay_destination_responses_total{destination=\"vendor\",status=\"503\"}"
        ) >= 10.0
    );
    assert_eq!(
        metric(
            &text,
            "playrelay_destination_responses_total{destination=\"vendor\",status=\"429\"}"
        ),
        1.0
    );
    // The retry of the batch the vendor answered 429 waited for its Retry-After: 1.
    let requests = vendor.requests();
    let limited = requests
        .iter()
        .find(|r| r.status == 429)
        .expect("the 429 was answered");
    let retried = requests
        .iter()
        .filter(|r| r.body == limited.body && r.arrived > limited.arrived)
        .map(|r| r.arrived)
        .min()
        .expect("the limited batch was sent again");
    let waited = retried - limited.arrived;
    assert!(
        waited >= Duration::from_millis(950),
        "retried {waited:?} after a 429 with Retry-After: 1"
    );
    assert_no_dead_letters(dir.path(), "vendor");
}

#[tokio::test]
async fn a_hung_vendor_does_not_slow_the_healthy_ones_and_its_events_are_dead_lettered() {
    let hung = StandIn::start(|_| Reply::Hang).await;
    let healthy_a = StandIn::ok().await;
    let healthy_b = StandIn::ok().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = format!(
        r#"
[server]
listen = "127.0.0.1:0"
dead_letter_dir = "{dir}"
[destinations.hung]
type = "webhook"
endpoint = "{hung}"
timeout_ms = 1500
batch = {{ max_events = 100, max_wait_ms = 5 }}
retry = {{ max_attempts = 2, initial_backoff_ms = 5, max_backoff_ms = 10 }}
breaker = {{ failure_threshold = 100 }}
[destinations.a]
type = "webhook"
endpoint = "{a}"
batch = {{ max_events = 100, max_wait_ms = 5 }}
[destinations.b]
type = "webhook"
endpoint = "{b}"
batch = {{ max_events = 100, max_wait_ms = 5 }}
[[routes]]
name = "all"
match = {{ types = ["*"] }}
to = ["hung", "a", "b"]
"#,
        dir = dir.path().display(),
        hung = hung.url("/"),
        a = healthy_a.url("/"),
        b = healthy_b.url("/"),
    );
    let relay = start_relay(&toml).await;
    let answer = post_ndjson(relay.local_addr, FIXTURE).await;
    assert_eq!(answer.body["accepted"], 708);
    // Both healthy vendors get everything while the hung one has not settled a single event.
    assert_eq!(
        healthy_a
            .wait_for_events(708, Duration::from_secs(10))
            .await
            .len(),
        708
    );
    assert_eq!(
        healthy_b
            .wait_for_events(708, Duration::from_secs(10))
            .await
            .len(),
        708
    );
    let text = relay.relay.metrics.encode();
    let hung_accounts = Accounts::read(&text, "hung");
    assert_eq!(
        hung_accounts.sent + hung_accounts.dead_lettered,
        0.0,
        "{hung_accounts:?}"
    );
    assert!(hung_accounts.in_flight > 0.0);
    // Ingest answers at once while the hung vendor holds requests.
    let again = post_ndjson(relay.local_addr, FIXTURE.lines().next().unwrap_or("")).await;
    assert_eq!(again.status, 202);

    // Two attempts of 1.5 s each, then dead letters.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let accounts = Accounts::read(&relay.relay.metrics.encode(), "hung");
        accounts.assert_balanced();
        if accounts.dead_lettered == 709.0 || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    relay.shutdown().await;
    let records = dead_letters(dir.path(), "hung");
    assert_eq!(records.len(), 709);
    assert!(records
        .iter()
        .all(|r| r["reason"] == "retries_exhausted" && r["attempts"] == 2));
    assert!(records[0]["error"]
        .as_str()
        .unwrap_or("")
        .contains("no answer within 1500 ms"));
    assert!(records[0]["event"]["received_at"].is_string());
}

#[tokio::test]
async fn a_rejecting_vendor_is_not_retried_and_replay_delivers_after_the_fix() {
    let vendor = StandIn::start(|_| {
        Reply::WithHeaders(400, vec![("x-error", "Missing tealium_account".into())])
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(&one_destination(&vendor.url("/"), dir.path(), "")).await;
    post_ndjson(relay.local_addr, FIXTURE).await;
    let metrics = relay.relay.clone();
    relay.shutdown().await;

    let requests = vendor.requests();
    let attempted: usize = requests.iter().map(|r| body_events(&r.body).len()).sum();
    assert_eq!(
        attempted, 708,
        "each event sent exactly once: no retry of a 400"
    );
    let records = dead_letters(dir.path(), "vendor");
    assert_eq!(records.len(), 708);
    for record in &records {
        assert_eq!(record["reason"], "rejected");
        assert_eq!(record["status"], 400);
        assert_eq!(record["error"], "Missing tealium_account");
        assert_eq!(record["attempts"], 1);
        assert_eq!(record["destination"], "vendor");
    }
    Accounts::read(&metrics.metrics.encode(), "vendor").assert_balanced();

    // The vendor is fixed: replay the dead letters through the normal stack.
    let fixed = StandIn::ok().await;
    let toml = one_destination(&fixed.url("/"), dir.path(), "");
    let config = config::load_str(&toml, Path::new("fixed.toml"), &|_| None).expect("config");
    let report = replay::replay(
        &config,
        "vendor",
        &dir.path().join("vendor.ndjson"),
        system_clock(),
    )
    .await
    .expect("replay");
    assert_eq!(report.records, 708);
    assert_eq!(report.delivered, 708);
    assert_eq!(report.dead_lettered, 0);
    let replayed = fixed.delivered_events();
    let original: Vec<Value> = records.iter().map(|r| r["event"].clone()).collect();
    assert_eq!(id_counts(&replayed), id_counts(&original), "event ids kept");
    // received_at is the original one, not the replay time.
    let by_id: HashMap<&str, &Value> = original
        .iter()
        .map(|e| (e["event_id"].as_str().unwrap_or(""), e))
        .collect();
    for event in &replayed {
        let id = event["event_id"].as_str().unwrap_or("");
        assert_eq!(event["received_at"], by_id[id]["received_at"]);
    }
}

#[tokio::test]
async fn cut_answers_and_absent_vendors_end_in_dead_letters() {
    let half = half_answering_vendor().await;
    let absent = format!("http://127.0.0.1:{}/", closed_port());
    for (name, url) in [("half", format!("http://{half}/")), ("absent", absent)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let relay = start_relay(&one_destination(
            &url,
            dir.path(),
            "breaker = { failure_threshold = 1000, probe_interval_ms = 10 }",
        ))
        .await;
        let answer = post_ndjson(relay.local_addr, FIXTURE).await;
        assert_eq!(answer.body["accepted"], 708, "{name}");
        let metrics = relay.relay.clone();
        let report = relay.shutdown().await;
        assert!(report.drained, "{name}");
        let text = metrics.metrics.encode();
        let accounts = Accounts::read(&text, "vendor");
        accounts.assert_balanced();
        assert_eq!(accounts.dead_lettered, 708.0, "{name}: {accounts:?}");
        let records = dead_letters(dir.path(), "vendor");
        assert_eq!(records.len(), 708, "{name}");
        assert!(
            records
                .iter()
                .all(|r| r["reason"] == "retries_exhausted" && r["attempts"] == 6),
            "{name}"
        );
        let label = if name == "absent" {
            "connect_error"
        } else {
            "error"
        };
        assert!(
            metric(&text, &format!("playrelay_destination_responses_total{{destination=\"vendor\",status=\"{label}\"}}")) > 0.0,
            "{name}: {text}"
        );
    }
}

/// The memory spool: what shutdown cannot deliver has nowhere to wait but the
/// dead-letter file (the disk spool keeps it: tests/spool.rs).
const MEMORY_SPOOL: &str = "[spool]\nbackend = \"memory\"\n";

#[tokio::test]
async fn shutdown_with_a_vendor_down_leaves_every_queued_event_in_dead_letters() {
    let down = format!("http://127.0.0.1:{}/", closed_port());
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = MEMORY_SPOOL.to_string() + &one_destination(
        &down,
        dir.path(),
        "retry = { max_attempts = 1000, initial_backoff_ms = 50, max_backoff_ms = 100, max_elapsed_ms = 600000 }",
    )
    .replace("drain_timeout_ms = 20000", "drain_timeout_ms = 300");
    let relay = start_relay(&toml).await;
    let answer = post_ndjson(relay.local_addr, FIXTURE).await;
    assert_eq!(answer.body["accepted"], 708);
    let metrics = relay.relay.clone();
    let report = relay.shutdown().await;
    assert!(!report.drained);
    let accounts = Accounts::read(&metrics.metrics.encode(), "vendor");
    accounts.assert_balanced();
    assert_eq!(accounts.queued + accounts.in_flight, 0.0);
    assert_eq!(
        accounts.sent + accounts.dead_lettered,
        708.0,
        "{accounts:?}"
    );
    let records = dead_letters(dir.path(), "vendor");
    assert_eq!(
        id_counts(
            &records
                .iter()
                .map(|r| r["event"].clone())
                .collect::<Vec<_>>()
        )
        .len(),
        708
    );
    assert!(records.iter().all(|r| r["reason"] == "shutdown"));
}

#[tokio::test]
async fn a_full_queue_dead_letters_the_overflow() {
    let hung = StandIn::start(|_| Reply::Hang).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = MEMORY_SPOOL.to_string()
        + &one_destination(
            &hung.url("/"),
            dir.path(),
            "queue = { max_events = 50 }\nconcurrency = 1\ntimeout_ms = 60000",
        )
        .replace("drain_timeout_ms = 20000", "drain_timeout_ms = 100");
    let relay = start_relay(&toml).await;
    post_ndjson(relay.local_addr, FIXTURE).await;
    let metrics = relay.relay.clone();
    relay.shutdown().await;
    let accounts = Accounts::read(&metrics.metrics.encode(), "vendor");
    accounts.assert_balanced();
    assert_eq!(accounts.dead_lettered, 708.0);
    let records = dead_letters(dir.path(), "vendor");
    let full = records
        .iter()
        .filter(|r| r["reason"] == "queue_full")
        .count();
    assert!(full >= 600, "{full} overflowed");
    assert_eq!(records.len(), 708);
}

#[tokio::test]
async fn readiness_names_a_destination_whose_breaker_opened_and_a_critical_one_fails_it() {
    let healthy = StandIn::ok().await;
    let down = format!("http://127.0.0.1:{}/", closed_port());
    for critical in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let toml = format!(
            r#"
[server]
listen = "127.0.0.1:0"
dead_letter_dir = "{dir}"
drain_timeout_ms = 500
[destinations.down]
type = "webhook"
endpoint = "{down}"
critical = {critical}
breaker = {{ failure_threshold = 2, probe_interval_ms = 60000 }}
retry = {{ max_attempts = 1 }}
[destinations.up]
type = "webhook"
endpoint = "{up}"
[[routes]]
name = "all"
match = {{ types = ["*"] }}
to = ["down", "up"]
"#,
            dir = dir.path().display(),
            up = healthy.url("/up"),
        );
        let relay = start_relay(&toml).await;
        let addr = relay.local_addr;
        assert_eq!(send(addr, "GET", "/readyz", &[], "").await.status, 200);
        assert_eq!(post_ndjson(addr, FIXTURE).await.status, 202);
        let state = relay.relay.clone();
        wait_until("the breaker opens", Duration::from_secs(10), || {
            metric(
                &state.metrics.encode(),
                "playrelay_destination_breaker_state{destination=\"down\"}",
            ) == 1.0
        })
        .await;
        let ready = send(addr, "GET", "/readyz", &[], "").await;
        let destinations = ready.body["destinations"].as_array().expect("destinations");
        let down_view = destinations
            .iter()
            .find(|d| d["name"] == "down")
            .expect("down listed");
        let up_view = destinations
            .iter()
            .find(|d| d["name"] == "up")
            .expect("up listed");
        assert_eq!(down_view["breaker"], "open", "{:?}", ready.body);
        assert_eq!(up_view["breaker"], "closed", "{:?}", ready.body);
        let last_error = down_view["last_error"]["error"]
            .as_str()
            .expect("last error");
        assert!(!last_error.is_empty());
        assert!(down_view["last_error"]["at"].as_str().is_some());
        if critical {
            assert_eq!(ready.status, 503, "{:?}", ready.body);
            assert_eq!(ready.body["status"], "degraded");
            let reasons = ready.body["reasons"].to_string();
            assert!(reasons.contains("critical destination down"), "{reasons}");
        } else {
            assert_eq!(ready.status, 200, "{:?}", ready.body);
            assert_eq!(ready.body["status"], "ready");
        }
        relay.shutdown().await;
    }
}
