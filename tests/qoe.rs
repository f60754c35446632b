//! QoE: hand-made sessions with metrics worked out by hand, the fixture's sessions as
//! golden summaries and as every vendor's request, and properties that must hold for
//! any delivery order. Regenerate the golden files with
//! `UPDATE_GOLDEN=1 cargo test --test qoe` and review the diff.

#[path = "golden/support.rs"]
mod support;

mod common;

use playrelay::dest::ga4::{Ga4Config, Ga4Translator};
use playrelay::dest::segment::{SegmentConfig, SegmentTranslator};
use playrelay::dest::tealium::{TealiumConfig, TealiumTranslator};
use playrelay::dest::webhook::{WebhookConfig, WebhookTranslator};
use playrelay::dest::{BatchLimits, EventNames, Translate};
use playrelay::event::{Event, SessionEnd};
use playrelay::qoe::metrics::{compute, Fact, Kind};

use playrelay::qoe::summarize_events;
use proptest::prelude::*;
use serde_json::{json, Value};
use std::time::Duration;
use support::*;

const WIDE: BatchLimits = BatchLimits {
    max_events: 10_000,
    max_bytes: 10 << 20,
};

/// One event of a hand-made session: type, ms after the start, and what to patch.
fn at(n: u32, ty: &str, ms: i64, extra: Value) -> Event {
    let t = time::macros::datetime!(2026-11-01 19:00:00 UTC) + time::Duration::milliseconds(ms);
    let mut value = base_event(n, ty, &playrelay::event::format_rfc3339(t), json!({}));
    if let (Some(base), Value::Object(extra)) = (value.as_object_mut(), extra) {
        for (k, v) in extra {
            if v.is_null() {
                base.remove(&k);
            } else {
                base.insert(k, v);
            }
        }
    }
    event_from_value(&value)
}

fn state(state: &str, bitrate_bps: u64) -> Value {
    json!({"playback": {"state": state, "rendition": {"bitrate_bps": bitrate_bps}}})
}

fn summary(events: &[Event]) -> Value {
    let summaries = summarize_events(events, SessionEnd::IdleTimeout, RECEIVED_AT);
    assert_eq!(summaries.len(), 1, "one session");
    let value = summaries[0].to_json_value();
    assert_eq!(value["type"], "session.summary");
    value["data"].clone()
}

/// Checks the listed metrics; the rest must be what a plain session has.
fn expect(events: &[Event], expected: Value) {
    let data = summary(events);
    for (key, want) in expected.as_object().expect("object") {
        assert_eq!(&data[key], want, "data.{key} in {data:#}");
    }
}

#[test]
fn preroll_before_startup_is_not_startup_time() {
    let events = [
        at(0, "playback.requested", 0, state("starting", 0)),
        at(
            1,
            "ad.break_started",
            200,
            json!({"ad": {"pod": {"position": "preroll"}}, "playback": {"state": "starting"}}),
        ),
        at(
            2,
            "ad.started",
            300,
            json!({"ad": {"ad_id": "ad-1"}, "playback": {"state": "starting"}}),
        ),
        at(
            3,
            "ad.completed",
            15_300,
            json!({"ad": {"ad_id": "ad-1"}, "playback": {"state": "starting"}}),
        ),
        at(
            4,
            "ad.break_ended",
            15_400,
            json!({"ad": {"pod": {"position": "preroll"}}, "playback": {"state": "starting"}}),
        ),
        at(5, "playback.started", 16_000, state("playing", 2_000_000)),
        at(6, "playback.heartbeat", 26_000, state("playing", 2_000_000)),
        at(7, "playback.completed", 36_000, state("ended", 2_000_000)),
    ];
    expect(
        &events,
        json!({
            "outcome": "started", "ended_by": "completed", "events": 8,
            "startup_ms": 800, "watched_ms": 36_000, "playing_ms": 20_000, "paused_ms": 0,
            "ad_breaks": 1, "ads_started": 1, "ads_completed": 1,
            "avg_bitrate_bps": 2_000_000, "playback_failure": false, "error_code": null,
            "rebuffer_count": 0, "rebuffer_ratio": 0.0,
        }),
    );
}

#[test]
fn a_rebuffer_during_a_seek_counts_only_after_the_seek() {
    let events = [
        at(0, "playback.requested", 0, state("starting", 0)),
        at(1, "playback.started", 1_000, state("playing", 1_000_000)),
        at(
            2,
            "playback.seek_started",
            10_000,
            state("seeking", 1_000_000),
        ),
        at(
            3,
            "playback.rebuffer_started",
            10_500,
            state("rebuffering", 1_000_000),
        ),
        at(
            4,
            "playback.seek_ended",
            12_000,
            state("rebuffering", 1_000_000),
        ),
        at(
            5,
            "playback.rebuffer_ended",
            13_000,
            state("playing", 1_000_000),
        ),
        at(6, "playback.exited", 20_000, state("playing", 1_000_000)),
    ];
    expect(
        &events,
        json!({
            "ended_by": "exited", "startup_ms": 1_000, "watched_ms": 20_000,
            "seek_count": 1, "seek_ms": 2_000, "rebuffer_count": 1, "rebuffer_ms": 1_000,
            "rebuffer_ratio": 0.05, "playing_ms": 16_000,
        }),
    );
}

#[test]
fn a_pause_before_the_end_runs_to_the_end() {
    let events = [
        at(0, "playback.requested", 0, state("starting", 0)),
        at(1, "playback.started", 500, state("playing", 1_000_000)),
        at(2, "playback.paused", 10_500, state("paused", 1_000_000)),
        at(3, "playback.completed", 12_500, state("ended", 1_000_000)),
    ];
    expect(
        &events,
        json!({
            "ended_by": "completed", "paused_ms": 2_000, "watched_ms": 10_500,
            "playing_ms": 10_000, "avg_bitrate_bps": 1_000_000,
        }),
    );
}

#[test]
fn an_open_pause_at_exit_is_not_watched() {
    let events = [
        at(0, "playback.requested", 0, state("starting", 0)),
        at(1, "playback.started", 1_000, state("playing", 1_000_000)),
        at(2, "playback.paused", 5_000, state("paused", 1_000_000)),
        at(3, "playback.exited", 65_000, state("paused", 1_000_000)),
    ];
    expect(
        &events,
        json!({
            "ended_by": "exited", "paused_ms": 60_000, "watched_ms": 5_000,
            "playing_ms": 4_000,
        }),
    );
}

#[test]
fn a_live_stream_weighs_bitrate_by_time_played() {
    let live = |mut v: Value| {
        v["content"] = json!({"asset_id": "L-1", "stream_type": "live", "duration_ms": null});
        v
    };
    let quality = |from: u64, to: u64| {
        live(json!({
            "playback": {"state": "playing", "rendition": {"bitrate_bps": to}},
            "data": {"from_bitrate_bps": from}
        }))
    };
    let events = [
        at(0, "playback.requested", 0, live(state("starting", 0))),
        at(
            1,
            "playback.started",
            2_000,
            live(state("playing", 1_000_000)),
        ),
        at(
            2,
            "playback.heartbeat",
            12_000,
            live(state("playing", 1_000_000)),
        ),
        at(
            3,
            "playback.heartbeat",
            22_000,
            live(state("playing", 1_000_000)),
        ),
        at(4, "quality.changed", 30_000, quality(1_000_000, 3_000_000)),
        at(5, "quality.changed", 40_000, quality(3_000_000, 1_500_000)),
        at(
            6,
            "playback.exited",
            50_000,
            live(state("playing", 1_500_000)),
        ),
    ];
    // 28 s at 1 Mbps, 10 s at 3 Mbps, 10 s at 1.5 Mbps.
    let average = (28_000u64 * 1_000_000 + 10_000 * 3_000_000 + 10_000 * 1_500_000) / 48_000;
    expect(
        &events,
        json!({
            "startup_ms": 2_000, "watched_ms": 50_000, "playing_ms": 48_000,
            "avg_bitrate_bps": average, "bitrate_upswitches": 1, "bitrate_downswitches": 1,
        }),
    );
    let summaries = summarize_events(&events, SessionEnd::IdleTimeout, RECEIVED_AT);
    assert_eq!(
        summaries[0].to_json_value()["content"]["stream_type"],
        "live"
    );
}

fn fatal(code: &str) -> Value {
    json!({"error": {"code": code, "fatal": true, "message": "it broke"}, "playback": {"state": "error"}})
}

#[test]
fn a_fatal_error_before_the_first_frame_is_a_start_failure() {
    let events = [
        at(0, "playback.requested", 0, state("starting", 0)),
        at(1, "playback.error", 3_000, fatal("4001")),
    ];
    expect(
        &events,
        json!({
            "outcome": "start_failure", "playback_failure": false, "ended_by": "error",
            "startup_ms": null, "error_code": "4001", "watched_ms": 3_000, "playing_ms": 0,
            "avg_bitrate_bps": null,
        }),
    );
}

#[test]
fn a_fatal_error_after_the_first_frame_is_a_playback_failure() {
    let events = [
        at(0, "playback.requested", 0, state("starting", 0)),
        at(1, "playback.started", 1_000, state("playing", 1_000_000)),
        at(
            2,
            "playback.error",
            20_000,
            json!({"error": {"code": "NET_1", "fatal": false}}),
        ),
        at(3, "playback.error", 20_500, fatal("NET_502")),
    ];
    expect(
        &events,
        json!({
            "outcome": "started", "playback_failure": true, "ended_by": "error",
            "error_code": "NET_502", "watched_ms": 20_500, "startup_ms": 1_000,
        }),
    );
}

#[test]
fn leaving_before_the_first_frame_is_an_exit_before_start() {
    let events = [
        at(0, "session.started", 0, state("starting", 0)),
        at(1, "playback.requested", 100, state("starting", 0)),
        at(2, "playback.exited", 4_100, state("starting", 0)),
    ];
    expect(
        &events,
        json!({
            "outcome": "exit_before_start", "ended_by": "exited", "startup_ms": null,
            "watched_ms": 4_000, "playing_ms": 0, "avg_bitrate_bps": null, "events": 3,
        }),
    );
}

#[test]
fn a_session_no_event_closed_says_why_it_ended() {
    let events = [
        at(0, "playback.requested", 0, state("starting", 0)),
        at(1, "playback.started", 1_000, state("playing", 1_000_000)),
    ];
    for end in [
        SessionEnd::IdleTimeout,
        SessionEnd::Evicted,
        SessionEnd::Shutdown,
    ] {
        let summaries = summarize_events(&events, end, RECEIVED_AT);
        assert_eq!(
            summaries[0].to_json_value()["data"]["ended_by"],
            end.as_str()
        );
    }
}

#[test]
fn the_summary_carries_the_sessions_envelope_and_a_stable_id() {
    let events = [
        at(0, "playback.requested", 0, state("starting", 0)),
        at(1, "playback.started", 1_000, state("playing", 1_000_000)),
        at(2, "playback.completed", 9_000, state("ended", 1_000_000)),
    ];
    let a = summarize_events(&events, SessionEnd::IdleTimeout, RECEIVED_AT);
    let b = summarize_events(&events, SessionEnd::IdleTimeout, SENT_AT);
    let value = a[0].to_json_value();
    assert_eq!(value["session"]["id"], "s-hand");
    assert_eq!(value["user"]["user_id"], "user-1");
    assert_eq!(value["content"]["asset_id"], "A-100");
    assert_eq!(value["context"]["player"]["platform"], "web");
    assert_eq!(
        value["timestamp"], "2026-11-01T19:00:09.000Z",
        "the last event's time"
    );
    assert!(value.get("playback").is_none());
    assert_eq!(
        a[0].event_id(),
        b[0].event_id(),
        "the same session, the same id"
    );
}

// ------------------------------------------------------------ the fixture's sessions

fn check(name: &str, actual: &str) {
    let path = format!("{}/tests/golden/qoe/{name}", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(format!("{}/tests/golden/qoe", env!("CARGO_MANIFEST_DIR")))
            .expect("golden dir");
        std::fs::write(&path, actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{path} missing: run UPDATE_GOLDEN=1 cargo test --test qoe"));
    if expected != actual {
        let line = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(expected.lines().count().min(actual.lines().count()));
        panic!(
            "{path} differs at line {}:\n  expected: {}\n  actual:   {}",
            line + 1,
            expected.lines().nth(line).unwrap_or("<end>"),
            actual.lines().nth(line).unwrap_or("<end>"),
        );
    }
}

fn fixture_summaries() -> Vec<Event> {
    summarize_events(&fixture_events(), SessionEnd::IdleTimeout, RECEIVED_AT)
}

#[test]
fn fixture_sessions_summarize_as_the_golden_file_says() {
    let mut text = String::new();
    for summary in fixture_summaries() {
        let mut line = Vec::new();
        summary.write_json(&mut line);
        text.push_str(&String::from_utf8(line).expect("utf8"));
        text.push('\n');
    }
    check("fixture_summaries.ndjson", &text);
}

#[test]
fn fixture_summaries_are_valid_against_the_published_schema() {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/schema/player-event-1.schema.json"
        ))
        .expect("schema"),
    )
    .expect("schema JSON");
    let validator = jsonschema::validator_for(&schema).expect("valid schema");
    for summary in fixture_summaries() {
        let value = summary.to_json_value();
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{errors:?}\n{value:#}");
    }
}

/// The JSON documents of every request (an NDJSON body gives one a line).
fn documents(t: &dyn Translate, events: &[Event]) -> Vec<Node> {
    let refs: Vec<&Event> = events.iter().collect();
    let translation = t.translate(&refs, SENT_AT);
    assert!(translation.refused.is_empty(), "{:?}", translation.refused);
    let mut out = Vec::new();
    for request in &translation.requests {
        let mut body = request.body.to_vec();
        if request
            .headers
            .get(http::header::CONTENT_ENCODING)
            .is_some_and(|v| v == "gzip")
        {
            let mut plain = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut plain)
                .expect("gzip");
            body = plain;
        }
        let text = String::from_utf8(body).expect("utf8");
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            out.push(parse_ordered(line.as_bytes()).expect("valid JSON"));
        }
    }
    out
}

fn body_of(t: &dyn Translate, events: &[Event]) -> String {
    let mut out = String::new();
    for node in documents(t, events) {
        out.push_str(&serde_json::to_string_pretty(&node).expect("json"));
        out.push('\n');
    }
    out
}

#[test]
fn segment_sends_summaries_as_video_playback_summarized() {
    let config: SegmentConfig =
        serde_json::from_value(json!({"write_key": "wk_SECRET_123"})).expect("config");
    let t = SegmentTranslator::new(&config, EventNames::default(), false, WIDE).expect("valid");
    let body = body_of(&t, &fixture_summaries());
    assert!(body.contains("\"event\": \"Video Playback Summarized\""));
    check("segment_summaries.json", &body);
}

#[test]
fn ga4_sends_summaries_within_its_param_limits() {
    let config: Ga4Config =
        serde_json::from_value(json!({"measurement_id": "G-TEST123", "api_secret": "s3cret"}))
            .expect("config");
    let t = Ga4Translator::new(&config, EventNames::default(), true, WIDE).expect("valid");
    let summaries = fixture_summaries();
    for document in documents(&t, &summaries) {
        let value: Value = serde_json::to_value(&document).expect("json");
        for event in value["events"].as_array().expect("events") {
            assert_eq!(event["name"], "video_session_summary");
            let params = event["params"].as_object().expect("params");
            assert!(
                params.len() <= playrelay::dest::ga4::MAX_PARAMS,
                "{params:?}"
            );
            for (name, value) in params {
                assert!(
                    playrelay::dest::ga4::name_problem(name, false).is_none(),
                    "{name}"
                );
                assert!(
                    value.is_number() || value.as_str().is_some_and(|s| s.chars().count() <= 100),
                    "{name}: {value}"
                );
            }
            assert!(params["watched_time_msec"].is_number());
            assert!(params["playback_failure"].is_number());
        }
    }
    let body = body_of(&t, &summaries);
    check("ga4_summaries.json", &body);
}

#[test]
fn tealium_sends_summaries_as_flat_video_keys() {
    let config: TealiumConfig =
        serde_json::from_value(json!({"account": "acct", "profile": "main"})).expect("config");
    let t = TealiumTranslator::new(&config, EventNames::default(), false, WIDE).expect("valid");
    let body = body_of(&t, &fixture_summaries());
    assert!(body.contains("\"tealium_event\": \"video_session_summary\""));
    assert!(body.contains("\"video_rebuffer_ratio\""));
    check("tealium_summaries.json", &body);
}

#[test]
fn webhooks_get_the_summary_as_it_is() {
    let config: WebhookConfig = serde_json::from_value(
        json!({"endpoint": "http://127.0.0.1:9/events", "encoding": "ndjson"}),
    )
    .expect("config");
    let t = WebhookTranslator::new(&config, EventNames::default(), true, WIDE).expect("valid");
    let summaries = fixture_summaries();
    let body = body_of(&t, &summaries);
    for summary in &summaries {
        assert!(body.contains(&format!("\"event_id\": \"{}\"", summary.event_id())));
    }
    assert!(body.contains("\"rebuffer_ratio\""));
}

// ------------------------------------------------------------------- properties

const KINDS: &[&str] = &[
    "playback.requested",
    "playback.started",
    "playback.paused",
    "playback.resumed",
    "playback.rebuffer_started",
    "playback.rebuffer_ended",
    "playback.seek_started",
    "playback.seek_ended",
    "playback.heartbeat",
    "quality.changed",
    "ad.break_started",
    "ad.break_ended",
    "playback.error",
    "playback.completed",
    "playback.exited",
];

fn fact_strategy() -> impl Strategy<Value = Vec<Fact>> {
    prop::collection::vec(
        (
            0..KINDS.len(),
            0i64..20_000,
            any::<bool>(),
            0u32..4,
            any::<bool>(),
            any::<bool>(),
        ),
        1..40,
    )
    .prop_map(|items| {
        let mut at = 1_000_000i64;
        items
            .into_iter()
            .enumerate()
            .map(|(i, (kind, step, playing, rate, fatal, backwards))| {
                // Mostly forward in time; sometimes a client clock steps back.
                at += if backwards { -step / 4 } else { step };
                let kind = Kind::of(KINDS[kind]);
                let mut flags = 0;
                if playing {
                    flags |= playrelay::qoe::metrics::PLAYING;
                }
                if fatal && kind == Kind::Error {
                    flags |= playrelay::qoe::metrics::FATAL;
                }
                Fact {
                    id: 1000 + i as u64,
                    at_ms: at,
                    sequence: i as u32,
                    bitrate_bps: rate * 1_000_000,
                    run: 0,
                    span_ms: 0,
                    kind,
                    flags,
                }
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn delivery_order_and_repeats_do_not_change_the_metrics(
        facts in fact_strategy(),
        seed in any::<u64>(),
        repeats in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
    ) {
        let expected = compute(&facts, SessionEnd::IdleTimeout);
        let mut delivered = facts.clone();
        for index in &repeats {
            delivered.push(facts[index.index(facts.len())]);
        }
        let mut rng = fastrand::Rng::with_seed(seed);
        rng.shuffle(&mut delivered);
        prop_assert_eq!(&compute(&delivered, SessionEnd::IdleTimeout), &expected);
        // As the sessionizer keeps them: repeats refused, heartbeats folded on arrival.
        let mut kept = Vec::new();
        for fact in &delivered {
            playrelay::qoe::metrics::add(&mut kept, *fact);
        }
        prop_assert!(kept.len() <= facts.len());
        prop_assert_eq!(compute(&kept, SessionEnd::IdleTimeout), expected);
    }

    #[test]
    fn ratios_and_times_stay_in_bounds(facts in fact_strategy()) {
        let m = compute(&facts, SessionEnd::IdleTimeout);
        prop_assert!((0.0..=1.0).contains(&m.rebuffer_ratio), "{:?}", m);
        prop_assert!(m.playing_ms <= m.watched_ms, "{:?}", m);
        prop_assert!(m.rebuffer_ms <= m.watched_ms, "{:?}", m);
        prop_assert_eq!(m.events as usize, facts.len());
    }
}

/// The whole path, events to summary text: shuffled and repeated fixture sessions give
/// byte-identical summaries.
#[test]
fn shuffled_and_repeated_fixture_events_give_the_same_summaries() {
    let events = fixture_events();
    let expected: Vec<String> = fixture_summaries()
        .iter()
        .map(|e| e.raw_json().to_string())
        .collect();
    for seed in 0..5u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut delivered = events.clone();
        for _ in 0..50 {
            let i = rng.usize(..events.len());
            delivered.push(events[i].clone());
        }
        rng.shuffle(&mut delivered);
        let actual: Vec<String> =
            summarize_events(&delivered, SessionEnd::IdleTimeout, RECEIVED_AT)
                .iter()
                .map(|e| e.raw_json().to_string())
                .collect();
        assert_eq!(actual, expected, "seed {seed}");
    }
}

// ------------------------------------------------------- the relay, in paused time

fn ndjson(events: &[Event]) -> String {
    let mut out = Vec::new();
    for event in events {
        out.extend_from_slice(event.raw_json().as_bytes());
        out.push(b'\n');
    }
    String::from_utf8(out).expect("utf8")
}

fn session(id: &str, first: u32, types: &[&str]) -> Vec<Event> {
    types
        .iter()
        .enumerate()
        .map(|(i, ty)| {
            let n = first + i as u32;
            let mut value = base_event(
                n,
                ty,
                &format!("2026-11-01T19:00:{:02}.000Z", i * 5),
                json!({}),
            );
            value["session"] = json!({"id": id});
            value["sequence"] = json!(i);
            event_from_value(&value)
        })
        .collect()
}

async fn post(app: &axum::Router, body: String) {
    use tower::ServiceExt;
    let request = http::Request::post("/v1/events")
        .header("content-type", "application/x-ndjson")
        .body(axum::body::Body::from(body))
        .expect("request");
    let response = app.clone().oneshot(request).await.expect("answer");
    assert_eq!(response.status(), 202);
}

fn metric_value(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(sample) && l[sample.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A relay whose summaries go to `dir/out.ndjson`, with `more` added to its config.
async fn start_paused_relay(dir: &tempfile::TempDir, more: &str) -> playrelay::RunningRelay {
    let config = playrelay::config::load_str(
        &relay_toml(dir, more),
        std::path::Path::new("qoe.toml"),
        &|_| None,
    )
    .expect("config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let options = playrelay::RelayOptions {
        clock: std::sync::Arc::new(|| RECEIVED_AT),
    };
    playrelay::start(config, listener, options)
        .await
        .expect("starts")
}

fn relay_toml(dir: &tempfile::TempDir, more: &str) -> String {
    // The memory spool: these tests pause tokio's clock, which would run ahead while
    // the disk spool's thread syncs (tests/spool.rs covers the disk).
    format!(
        r#"
[spool]
backend = "memory"

[server]
listen = "127.0.0.1:0"
dead_letter_dir = "{dir}/dead"

[qoe]
enabled = true
idle_timeout_ms = 60000
end_grace_ms = 2000

[destinations.out]
type = "file"
path = "{dir}/out.ndjson"

[[routes]]
name = "summaries"
match = {{ types = ["session.summary"] }}
to = ["out"]
{more}
"#,
        dir = dir.path().display()
    )
}

fn summaries_in(dir: &tempfile::TempDir) -> Vec<Value> {
    let text = std::fs::read_to_string(dir.path().join("out.ndjson")).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect()
}

/// A reload (here one that adds a destination and a route) keeps open sessions: the
/// summary counts the events from before and after it, and reaches the new route too.
#[tokio::test(start_paused = true)]
async fn a_reload_keeps_open_sessions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let running = start_paused_relay(&dir, "").await;
    let app = playrelay::ingest::app(running.relay.clone());
    let events = session(
        "kept",
        400,
        &[
            "playback.requested",
            "playback.started",
            "playback.paused",
            "playback.completed",
        ],
    );
    post(&app, ndjson(&events[..2])).await;
    let more = format!(
        "\n[destinations.copy]\ntype = \"file\"\npath = \"{}/copy.ndjson\"\n\n[[routes]]\nname = \"copy\"\nmatch = {{ types = [\"session.*\"] }}\nto = [\"copy\"]\n",
        dir.path().display()
    );
    let config = playrelay::config::load_str(
        &relay_toml(&dir, &more),
        std::path::Path::new("qoe.toml"),
        &|_| None,
    )
    .expect("config");
    let outcome = running.reloader().apply(config).await;
    assert!(outcome.applied, "{outcome:?}");
    assert_eq!(outcome.added, vec!["copy".to_string()]);
    post(&app, ndjson(&events[2..])).await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    running.shutdown().await;
    let summaries = summaries_in(&dir);
    assert_eq!(summaries.len(), 1);
    assert_eq!(summaries[0]["data"]["events"], 4);
    assert_eq!(summaries[0]["data"]["ended_by"], "completed");
    let copy = std::fs::read_to_string(dir.path().join("copy.ndjson")).expect("copy");
    assert_eq!(copy.lines().count(), 1, "{copy}");
}

/// Grace, idle timeout and shutdown on the real relay, with tokio's clock paused: the
/// summaries come out at the right moments and reach a destination like any event.
#[tokio::test(start_paused = true)]
async fn the_relay_summarizes_after_the_grace_the_idle_timeout_and_at_shutdown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let running = start_paused_relay(&dir, "").await;
    let app = playrelay::ingest::app(running.relay.clone());
    let ended = |ended_by: &str| {
        metric_value(
            &running.relay.metrics.encode(),
            &format!("playrelay_qoe_sessions_ended_total{{ended_by=\"{ended_by}\"}}"),
        )
    };
    let mut completed = session(
        "done",
        100,
        &[
            "playback.requested",
            "playback.started",
            "playback.completed",
        ],
    );
    // The completion arrives first and a retry of it comes too: the grace waits for the rest.
    completed.rotate_right(1);
    completed.push(completed[0].clone());
    post(&app, ndjson(&completed[..2])).await;
    post(
        &app,
        ndjson(&session(
            "idle",
            200,
            &["playback.requested", "playback.started"],
        )),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(1_000)).await;
    post(&app, ndjson(&completed[2..])).await;
    assert_eq!(ended("completed"), None, "still within the grace");
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    assert_eq!(ended("completed"), Some(1.0));
    assert_eq!(ended("idle_timeout"), None);
    tokio::time::sleep(std::time::Duration::from_secs(58)).await;
    assert_eq!(ended("idle_timeout"), Some(1.0));
    post(&app, ndjson(&session("open", 300, &["playback.requested"]))).await;
    let report = running.shutdown().await;
    assert!(report.drained);
    let summaries = summaries_in(&dir);
    let by_session: Vec<(String, String, u64)> = summaries
        .iter()
        .map(|s| {
            (
                s["session"]["id"].as_str().unwrap_or("").to_string(),
                s["data"]["ended_by"].as_str().unwrap_or("").to_string(),
                s["data"]["events"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        by_session,
        vec![
            ("done".to_string(), "completed".to_string(), 3),
            ("idle".to_string(), "idle_timeout".to_string(), 2),
            ("open".to_string(), "shutdown".to_string(), 1),
        ]
    );
    assert!(summaries
        .iter()
        .all(|s| s["received_at"] == "2026-11-01T19:59:00.000Z"));
}

// ------------------------------------------------------- crashes, in real time

/// The real relay binary, SIGKILLed while a session is open: the session's events
/// from before the kill are in the checkpoint, the relay restores them at its next
/// start, and the closing event sent then gives one summary with every event.
#[tokio::test]
async fn open_sessions_survive_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The default checkpoint file: beside the disk spool (playrelay-out/spool).
    let config = r#"
[server]
listen = "127.0.0.1:0"

[qoe]
enabled = true
end_grace_ms = 300
checkpoint_interval_ms = 100

[destinations.out]
type = "file"
path = "out.ndjson"

[[routes]]
name = "summaries"
match = { types = ["session.summary"] }
to = ["out"]
"#;
    let checkpoint = dir.path().join("playrelay-out/spool.qoe-sessions.bin");
    let events = session(
        "crashed",
        900,
        &[
            "playback.requested",
            "playback.started",
            "playback.paused",
            "playback.resumed",
            "playback.completed",
        ],
    );
    let relay = common::binary::Relay::start(dir.path(), config);
    let addr: std::net::SocketAddr = relay.addr.parse().expect("address");
    let answer = common::post_ndjson(addr, ndjson(&events[..4])).await;
    assert_eq!(answer.status, 202);
    // An empty checkpoint is a header and a CRC; one with the session is longer.
    common::wait_until(
        "the session is checkpointed",
        Duration::from_secs(10),
        || std::fs::metadata(&checkpoint).is_ok_and(|m| m.len() > 100),
    )
    .await;
    relay.kill();
    assert!(
        summaries_in(&dir).is_empty(),
        "no summary before the restart"
    );

    let relay = common::binary::Relay::start(dir.path(), config);
    let addr: std::net::SocketAddr = relay.addr.parse().expect("address");
    let answer = common::post_ndjson(addr, ndjson(&events[4..])).await;
    assert_eq!(answer.status, 202);
    common::wait_until("the summary is written", Duration::from_secs(10), || {
        !summaries_in(&dir).is_empty()
    })
    .await;
    // Give a second summary (there must be none) the time to show.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let summaries = summaries_in(&dir);
    assert_eq!(summaries.len(), 1, "{summaries:?}");
    let data = &summaries[0]["data"];
    assert_eq!(summaries[0]["session"]["id"], "crashed");
    assert_eq!(data["events"], 5);
    assert_eq!(data["ended_by"], "completed");
    assert_eq!(data["outcome"], "started");
    // requested 0 s, started 5 s, paused 10 s, resumed 15 s, completed 20 s.
    assert_eq!(data["startup_ms"], 5_000);
    assert_eq!(data["paused_ms"], 5_000);
    assert_eq!(data["watched_ms"], 15_000);
    drop(relay);
}

/// A checkpoint file that is not one (another program's, or damaged) is moved aside
/// with a warning, and the relay starts without it and checkpoints afresh.
#[tokio::test]
async fn a_bad_checkpoint_is_set_aside_and_the_relay_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sessions.bin");
    std::fs::write(&path, b"PRQS\x01 torn in half").expect("write");
    let more = format!(
        "checkpoint_path = \"{}\"\ncheckpoint_interval_ms = 100\n",
        path.display()
    );
    let toml = relay_toml(&dir, "").replace(
        "end_grace_ms = 2000\n",
        &format!("end_grace_ms = 2000\n{more}"),
    );
    let config = playrelay::config::load_str(&toml, std::path::Path::new("qoe.toml"), &|_| None)
        .expect("config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let running = playrelay::start(config, listener, playrelay::RelayOptions::default())
        .await
        .expect("starts despite the bad file");
    let aside = dir.path().join("sessions.bin.bad-1");
    assert_eq!(
        std::fs::read(&aside).expect("moved aside"),
        b"PRQS\x01 torn in half"
    );
    let app = playrelay::ingest::app(running.relay.clone());
    post(
        &app,
        ndjson(&session("fresh", 950, &["playback.requested"])),
    )
    .await;
    common::wait_until("a new checkpoint", Duration::from_secs(10), || {
        std::fs::metadata(&path).is_ok_and(|m| m.len() > 100)
    })
    .await;
    // Shutdown summarizes the open session, so it leaves an empty checkpoint behind:
    // a restart must not summarize it again.
    running.shutdown().await;
    assert_eq!(summaries_in(&dir).len(), 1);
    let saved = std::fs::read(&path).expect("checkpoint");
    let contents = playrelay::qoe::checkpoint::open(&saved).expect("a checkpoint");
    assert_eq!(contents.sessions, 0);
}
