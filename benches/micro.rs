//! Micro-benchmarks of the per-event hot path: parse and validate one event, and
//! translate one event for each vendor. `cargo bench --bench micro`.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use playrelay::event::{parse_body, BodyFormat, BodyLimits};

#[path = "common/hot_path.rs"]
mod hot_path;
use hot_path::{batch, fresh, ndjson, parse_one, FIXTURE};

/// A `playback.started` of the fixture: a type every vendor maps, with content,
/// playback, rendition and context filled in.
fn one_event_text() -> &'static str {
    FIXTURE
        .lines()
        .find(|l| l.contains("\"type\":\"playback.started\""))
        .expect("fixture has a playback.started")
}

fn benches(c: &mut Criterion) {
    let text = one_event_text();
    let now = playrelay::system_clock()();
    // GA4 refuses events over 72 h old: the event happens "now".
    let fresh = fresh(text, now);

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
    let ndjson = ndjson(50);
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

    let config = hot_path::config();
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

    let batch = batch(100, now);
    let refs: Vec<_> = batch.iter().collect();
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
