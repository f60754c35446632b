//! Micro-benchmarks of the per-event hot path: parse and validate one event, and
//! translate one event for each vendor. `cargo bench --bench micro`.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use playrelay::config;
use playrelay::event::{parse_body, BodyFormat, BodyLimits, Event};
use std::path::Path;
use time::OffsetDateTime;

const FIXTURE: &str = include_str!("../tests/fixtures/sessions.ndjson");

const ROUTES: &str = r#"
[server]
listen = "127.0.0.1:0"

[destinations.segment]
type = "segment"
write_key = "bench-write-key"
endpoint = "http://127.0.0.1:9"

[destinations.ga4]
type = "ga4"
measurement_id = "G-BENCH"
api_secret = "bench-api-secret"
endpoint = "http://127.0.0.1:9"

[destinations.tealium]
type = "tealium"
account = "bench"
profile = "main"
endpoint = "http://127.0.0.1:9"

[destinations.webhook]
type = "webhook"
endpoint = "http://127.0.0.1:9/events"

[[routes]]
name = "everything"
match = { types = ["*"] }
to = ["segment", "ga4", "tealium", "webhook"]
"#;

/// A `playback.started` of the fixture: a type every vendor maps, with content,
/// playback, rendition and context filled in.
fn one_event_text() -> &'static str {
    FIXTURE
        .lines()
        .find(|l| l.contains("\"type\":\"playback.started\""))
        .expect("fixture has a playback.started")
}

fn parse_one(text: &str, now: OffsetDateTime) -> Event {
    let mut parsed = parse_body(
        text.as_bytes(),
        BodyFormat::Json,
        BodyLimits::new(1000),
        now,
    )
    .expect("parses");
    parsed.events.pop().expect("valid")
}

fn benches(c: &mut Criterion) {
    let text = one_event_text();
    let now = playrelay::system_clock()();
    // GA4 refuses events over 72 h old: the event happens "now".
    let fresh = {
        let mut value: serde_json::Value = serde_json::from_str(text).expect("json");
        value["timestamp"] = serde_json::json!(playrelay::event::format_rfc3339(now));
        serde_json::to_string(&value).expect("json")
    };

    let mut group = c.benchmark_group("parse");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse_body/1 event (json)", |b| {
        b.iter(|| {
            parse_body(
                black_box(fresh.as_bytes()),
                BodyFormat::Json,
                BodyLimits::new(1000),
                now,
            )
        })
    });
    let ndjson: String = FIXTURE.lines().take(50).collect::<Vec<_>>().join("\n");
    group.throughput(Throughput::Elements(50));
    group.bench_function("parse_body/50 events (ndjson)", |b| {
        b.iter(|| {
            parse_body(
                black_box(ndjson.as_bytes()),
                BodyFormat::Ndjson,
                BodyLimits::new(1000),
                now,
            )
        })
    });
    group.finish();

    let config = config::load_str(ROUTES, Path::new("bench.toml"), &|_| None).expect("config");
    let event = parse_one(&fresh, now);
    let mut group = c.benchmark_group("translate");
    group.throughput(Throughput::Elements(1));
    for (name, destination) in &config.destinations {
        let translator = destination.translator().expect("translator");
        let translation = translator.translate(&[&event], now);
        assert_eq!(translation.requests.len(), 1, "{name} sends the event");
        group.bench_function(format!("{name}/1 event"), |b| {
            b.iter_batched(
                || (),
                |()| translator.translate(black_box(&[&event]), now),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();

    // A realistic batch: 100 events of the fixture in order (a few sessions, mostly
    // heartbeats, which GA4 and Tealium leave out), per event.
    let batch: Vec<Event> = FIXTURE
        .lines()
        .take(100)
        .map(|line| {
            let mut value: serde_json::Value = serde_json::from_str(line).expect("json");
            value["timestamp"] = serde_json::json!(playrelay::event::format_rfc3339(now));
            parse_one(&value.to_string(), now)
        })
        .collect();
    let refs: Vec<&Event> = batch.iter().collect();
    let mut group = c.benchmark_group("translate_batch");
    group.throughput(Throughput::Elements(refs.len() as u64));
    for (name, destination) in &config.destinations {
        let translator = destination.translator().expect("translator");
        group.bench_function(format!("{name}/100 events"), |b| {
            b.iter(|| translator.translate(black_box(&refs), now))
        });
    }
    group.finish();
}

criterion_group!(micro, benches);
criterion_main!(micro);
