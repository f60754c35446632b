//! QoE costs, printed as figures (docs/qoe.md): the sessionizer's time per event and
//! memory per open session, and the whole relay's events/s with `[qoe]` on and off in
//! the same run. `cargo bench --bench qoe` (add `-- --quick` for a short run).
// A benchmark measures real elapsed time.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use playrelay::event::{parse_body, BodyFormat, BodyLimits, Event};
use playrelay::qoe::{Qoe, QoeConfig, QoeMetrics};
use serde_json::Value;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::macros::datetime;
use time::OffsetDateTime;
use tower::ServiceExt;

/// The system allocator, counting what is live: the bytes asked for and the bytes
/// glibc's malloc really takes for them (its 8-byte header, 16-byte rounding and
/// 32-byte minimum), so memory per open session is measured, not estimated.
struct Counting;

static ASKED: AtomicUsize = AtomicUsize::new(0);
static TAKEN: AtomicUsize = AtomicUsize::new(0);

fn taken(size: usize) -> usize {
    ((size + 8 + 15) & !15).max(32)
}

// SAFETY: every call goes straight to the system allocator with the caller's layout;
// the counters are only statistics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ASKED.fetch_add(layout.size(), Ordering::Relaxed);
        TAKEN.fetch_add(taken(layout.size()), Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        ASKED.fetch_sub(layout.size(), Ordering::Relaxed);
        TAKEN.fetch_sub(taken(layout.size()), Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ASKED.fetch_add(layout.size(), Ordering::Relaxed);
        TAKEN.fetch_add(taken(layout.size()), Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        let out = unsafe { System.realloc(ptr, layout, new_size) };
        if !out.is_null() {
            ASKED.fetch_sub(layout.size(), Ordering::Relaxed);
            TAKEN.fetch_sub(taken(layout.size()), Ordering::Relaxed);
            ASKED.fetch_add(new_size, Ordering::Relaxed);
            TAKEN.fetch_add(taken(new_size), Ordering::Relaxed);
        }
        out
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Live heap bytes: (asked for, taken by malloc).
fn live() -> (usize, usize) {
    (ASKED.load(Ordering::Relaxed), TAKEN.load(Ordering::Relaxed))
}

const FIXTURE: &str = include_str!("../tests/fixtures/sessions.ndjson");
const NOW: OffsetDateTime = datetime!(2026-11-01 20:00:00 UTC);

/// The fixture `copies` times over, each copy with its own session and event ids,
/// copies interleaved the way concurrent viewers' events arrive. Session ids stay
/// UUIDs (the fixture's, with copy `k` in the last 12 digits), as the schema
/// recommends. With `unique`, every copy also has its own content (`url`,
/// `asset_id`) and context (`user_agent`), so no two viewers' envelopes share
/// anything: the worst case for memory. With `text_ids`, session ids are the
/// fixture's with `-k` appended instead (not UUIDs: kept as text).
fn viewers(copies: usize) -> Vec<String> {
    viewers_of(copies, false, false)
}

fn viewers_of(copies: usize, unique: bool, text_ids: bool) -> Vec<String> {
    let lines: Vec<Value> = FIXTURE
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let mut out = Vec::with_capacity(lines.len() * copies);
    for (i, line) in lines.iter().enumerate() {
        for k in 0..copies {
            let mut v = line.clone();
            v["event_id"] = Value::String(format!("{k:08x}-0000-4000-8000-{i:012x}"));
            let session = v["session"]["id"].as_str().unwrap_or("s").to_string();
            v["session"]["id"] = Value::String(match session.get(..24) {
                Some(prefix) if !text_ids => format!("{prefix}{k:012x}"),
                _ => format!("{session}-{k}"),
            });
            if unique {
                if let Some(content) = v.get_mut("content").and_then(Value::as_object_mut) {
                    for key in ["url", "asset_id"] {
                        if let Some(Value::String(s)) = content.get_mut(key) {
                            s.push_str(&format!("-{k}"));
                        }
                    }
                }
                if let Some(Value::String(ua)) = v.pointer_mut("/context/user_agent") {
                    ua.push_str(&format!(" v{k}"));
                }
            }
            out.push(v.to_string());
        }
    }
    out
}

fn parse(lines: &[String]) -> Vec<Event> {
    let body = lines.join("\n");
    parse_body(
        body.as_bytes(),
        BodyFormat::Ndjson,
        BodyLimits::new(usize::MAX),
        NOW,
    )
    .expect("parses")
    .events
}

fn qoe_on() -> QoeConfig {
    QoeConfig {
        enabled: true,
        ..QoeConfig::default()
    }
}

fn sessionizer(quick: bool) {
    let copies = if quick { 20 } else { 200 };
    let events = parse(&viewers(copies));
    let sessions = 12 * copies;
    let mut per_event = Vec::new();
    for _ in 0..if quick { 3 } else { 7 } {
        let qoe = Qoe::new(QoeMetrics::default());
        qoe.configure(&qoe_on());
        let start = Instant::now();
        for event in &events {
            qoe.observe(event);
        }
        per_event.push(start.elapsed().as_nanos() as f64 / events.len() as f64);
    }
    per_event.sort_by(|a, b| a.total_cmp(b));
    println!(
        "sessionizer: {} events of {sessions} sessions: {:.0} ns/event (median of {}, best {:.0})",
        events.len(),
        per_event[per_event.len() / 2],
        per_event.len(),
        per_event[0],
    );
    let start = Instant::now();
    let mut sum = 0u64;
    for event in &events {
        sum = sum.wrapping_add(playrelay::qoe::metrics::Fact::of(event).id);
    }
    println!(
        "of which making the 32-byte fact: {:.0} ns/event ({sum:x})",
        start.elapsed().as_nanos() as f64 / events.len() as f64
    );
    let off = Qoe::new(QoeMetrics::default());
    let start = Instant::now();
    for event in &events {
        off.observe(event);
    }
    println!(
        "sessionizer off: {:.1} ns/event",
        start.elapsed().as_nanos() as f64 / events.len() as f64
    );
    memory(
        &events,
        &format!("the fixture's sessions, {copies} viewers of each content"),
    );
    let unique = parse(&viewers_of(copies, true, false));
    memory(&unique, "every viewer with its own content and context");
    let unique = parse(&viewers_of(copies, true, true));
    memory(
        &unique,
        "every viewer with its own content and context, session ids not UUIDs",
    );
}

/// Memory with every session open, at a quarter, half and all of its events: the heap
/// bytes really live (counted by the allocator) next to the sessionizer's estimate.
fn memory(events: &[Event], what: &str) {
    println!("memory, {what}:");
    for share in [4, 2, 1] {
        let before = live();
        let qoe = Qoe::new(QoeMetrics::default());
        qoe.configure(&qoe_on());
        let n = events.len() / share;
        for event in &events[..n] {
            qoe.observe(event);
        }
        let after = live();
        let open = qoe.open_sessions().max(1);
        let per = |bytes: usize| bytes as f64 / open as f64;
        println!(
            "  {open} open sessions after 1/{share} of the events ({:.0} events each): {:.0} bytes/session on the heap ({:.0} with malloc's overhead), estimate {:.0}",
            n as f64 / open as f64,
            per(after.0.saturating_sub(before.0)),
            per(after.1.saturating_sub(before.1)),
            per(qoe.approximate_bytes()),
        );
        let parts = qoe.memory().per_session();
        let parts: Vec<String> = parts
            .iter()
            .map(|(name, bytes)| format!("{name} {bytes:.0}"))
            .collect();
        println!("    estimate by part, bytes/session: {}", parts.join(", "));
        drop(qoe);
    }
}

const RELAY: &str = r#"
# Each run its own spool (and QoE checkpoint beside it) in its temporary directory:
# without this every run reopened and grew one spool in the working directory.
[spool]
dir = "DIR/spool"

[server]
listen = "127.0.0.1:0"
max_events_per_request = 1000
dead_letter_dir = "DIR/dead"
dry_run_dir = "DIR/dry"

[qoe]
enabled = QOE

[destinations.segment]
type = "segment"
write_key = "bench-write-key"
dry_run = true

[destinations.ga4]
type = "ga4"
measurement_id = "G-BENCH"
api_secret = "bench-api-secret"
dry_run = true

[destinations.tealium]
type = "tealium"
account = "bench"
profile = "main"
dry_run = true
rate_limit = { events_per_second = 1000000000 }

[destinations.warehouse]
type = "webhook"
endpoint = "http://127.0.0.1:9/events"
dry_run = true

[[routes]]
name = "everything"
match = { types = ["*"] }
to = ["segment", "ga4", "tealium", "warehouse"]
"#;

/// The relay in this process, fed through its HTTP app (no sockets), timed from the
/// first request to the end of shutdown (everything translated and written).
async fn relay_events_per_second(qoe: bool, bodies: &[Arc<String>], events: usize) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = RELAY
        .replace("DIR", &dir.path().display().to_string())
        .replace("QOE", if qoe { "true" } else { "false" });
    let config = playrelay::config::load_str(&text, std::path::Path::new("bench.toml"), &|_| None)
        .expect("config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let options = playrelay::RelayOptions {
        clock: Arc::new(|| NOW),
    };
    let running = playrelay::start(config, listener, options)
        .await
        .expect("relay starts");
    let app = playrelay::ingest::app(running.relay.clone());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for part in 0..8 {
        let app = app.clone();
        let bodies: Vec<Arc<String>> = bodies.iter().skip(part).step_by(8).cloned().collect();
        tasks.push(tokio::spawn(async move {
            for body in bodies {
                let request = http::Request::post("/v1/events")
                    .header("content-type", "application/x-ndjson")
                    .body(axum::body::Body::from(body.as_bytes().to_vec()))
                    .expect("request");
                let answer = app.clone().oneshot(request).await.expect("answer");
                assert_eq!(answer.status(), 202);
            }
        }));
    }
    for task in tasks {
        task.await.expect("sender");
    }
    let summaries = running.relay.qoe.open_sessions();
    let report = running.shutdown().await;
    assert!(report.drained);
    let elapsed = start.elapsed();
    if qoe {
        assert!(summaries > 0, "sessions were open");
    }
    events as f64 / elapsed.as_secs_f64().max(f64::EPSILON)
}

fn relay(quick: bool) {
    let copies = if quick { 10 } else { 60 };
    let lines = viewers(copies);
    let bodies: Vec<Arc<String>> = lines.chunks(100).map(|c| Arc::new(c.join("\n"))).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let rounds = std::env::args()
        .skip_while(|a| a != "--rounds")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(if quick { 2 } else { 4 });
    // `--qoe on|off`: one side only (to count its instructions under callgrind).
    let only = std::env::args()
        .skip_while(|a| a != "--qoe")
        .nth(1)
        .map(|v| v == "on");
    if let Some(qoe) = only {
        let rate = runtime.block_on(relay_events_per_second(qoe, &bodies, lines.len()));
        println!(
            "relay, 4 dry-run vendors, {} events, QoE {}: {rate:.0} events/s",
            lines.len(),
            if qoe { "on" } else { "off" }
        );
        return;
    }
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        off.push(runtime.block_on(relay_events_per_second(false, &bodies, lines.len())));
        on.push(runtime.block_on(relay_events_per_second(true, &bodies, lines.len())));
    }
    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    println!(
        "relay, 4 dry-run vendors, {} events in requests of 100: QoE off {:.0} events/s, on {:.0} events/s (best of {rounds}); on/off = {:.3} (medians {:.3})",
        lines.len(),
        best(&off),
        best(&on),
        best(&on) / best(&off),
        median(&mut on) / median(&mut off),
    );
    std::thread::sleep(Duration::from_millis(10));
}

/// `-- [--quick] [--relay-only | --sessionizer-only] [--rounds N] [--qoe on|off]`
fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    if !std::env::args().any(|a| a == "--relay-only") {
        sessionizer(quick);
    }
    if !std::env::args().any(|a| a == "--sessionizer-only") {
        relay(quick);
    }
}
