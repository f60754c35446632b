//! Golden vendor payloads: events in, the exact requests (method, URL with secrets
//! redacted, headers, body) compared with the files under `tests/golden/<vendor>/`.
//! Regenerate with `UPDATE_GOLDEN=1 cargo test --test vendor_golden` and review the diff.

#[path = "golden/support.rs"]
mod support;

use playrelay::dest::ga4::{Ga4Config, Ga4Translator};
use playrelay::dest::segment::{SegmentConfig, SegmentTranslator};
use playrelay::dest::tealium::{TealiumConfig, TealiumTranslator};
use playrelay::dest::webhook::{WebhookConfig, WebhookTranslator};
use playrelay::dest::{
    redact, BatchLimits, Disposition, EventNames, NameOverride, Translate, Translation,
};
use playrelay::event::Event;
use serde::Serialize;
use serde_json::json;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use support::*;
use time::macros::datetime;
use time::OffsetDateTime;

const WIDE: BatchLimits = BatchLimits {
    max_events: 10_000,
    max_bytes: 10 << 20,
};

#[derive(Serialize)]
struct GoldenRequest {
    method: String,
    url: String,
    headers: BTreeMap<String, String>,
    events: Vec<usize>,
    body_bytes: usize,
    body: Node,
}

#[derive(Serialize)]
struct GoldenRefusal {
    index: usize,
    disposition: &'static str,
    reason: &'static str,
    detail: String,
}

#[derive(Serialize)]
struct GoldenNote {
    index: usize,
    reason: &'static str,
    count: usize,
    detail: String,
}

#[derive(Serialize)]
struct Golden {
    requests: Vec<GoldenRequest>,
    refused: Vec<GoldenRefusal>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    notes: Vec<GoldenNote>,
}

#[derive(Serialize)]
struct SummaryRequest {
    url: String,
    events: usize,
    first_event: usize,
    last_event: usize,
    body_bytes: usize,
}

#[derive(Serialize)]
struct Summary {
    requests: Vec<SummaryRequest>,
    refused: BTreeMap<String, usize>,
}

fn disposition(d: Disposition) -> &'static str {
    match d {
        Disposition::Dropped => "dropped",
        Disposition::Refused => "refused",
    }
}

fn translate(t: &dyn Translate, events: &[Event], sent_at: OffsetDateTime) -> Translation {
    let refs: Vec<&Event> = events.iter().collect();
    let translation = t.translate(&refs, sent_at);
    assert_accounted(events.len(), &translation);
    translation
}

fn plain_body(headers: &http::HeaderMap, body: &[u8]) -> Vec<u8> {
    if headers
        .get(http::header::CONTENT_ENCODING)
        .is_some_and(|v| v == "gzip")
    {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(body)
            .read_to_end(&mut out)
            .expect("gzip body");
        out
    } else {
        body.to_vec()
    }
}

fn golden(t: &dyn Translate, events: &[Event], sent_at: OffsetDateTime) -> String {
    let translation = translate(t, events, sent_at);
    let secrets = t.secrets();
    let requests = translation
        .requests
        .iter()
        .map(|r| {
            let body = plain_body(&r.headers, &r.body);
            GoldenRequest {
                method: r.method.to_string(),
                url: redact(&r.url, &secrets),
                headers: r
                    .headers
                    .iter()
                    .map(|(k, v)| {
                        let v = String::from_utf8_lossy(v.as_bytes());
                        (k.to_string(), redact(&v, &secrets))
                    })
                    .collect(),
                events: r.events.clone(),
                body_bytes: r.body.len(),
                body: parse_ordered(&body).unwrap_or_else(|e| panic!("body: {e}")),
            }
        })
        .collect();
    let mut refused: Vec<GoldenRefusal> = translation
        .refused
        .iter()
        .map(|r| GoldenRefusal {
            index: r.index,
            disposition: disposition(r.disposition),
            reason: r.reason,
            detail: redact(&r.detail, &secrets),
        })
        .collect();
    refused.sort_by_key(|r| r.index);
    let notes = translation
        .notes
        .iter()
        .map(|n| GoldenNote {
            index: n.index,
            reason: n.reason,
            count: n.count,
            detail: n.detail.clone(),
        })
        .collect();
    pretty(&Golden {
        requests,
        refused,
        notes,
    })
}

fn summary(t: &dyn Translate, events: &[Event], sent_at: OffsetDateTime) -> String {
    let translation = translate(t, events, sent_at);
    let secrets = t.secrets();
    let requests = translation
        .requests
        .iter()
        .map(|r| {
            parse_ordered(&plain_body(&r.headers, &r.body)).expect("valid body");
            SummaryRequest {
                url: redact(&r.url, &secrets),
                events: r.events.len(),
                first_event: r.events[0],
                last_event: r.events[r.events.len() - 1],
                body_bytes: r.body.len(),
            }
        })
        .collect();
    let mut refused = BTreeMap::new();
    for r in &translation.refused {
        *refused
            .entry(format!("{}:{}", disposition(r.disposition), r.reason))
            .or_insert(0) += 1;
    }
    pretty(&Summary { requests, refused })
}

fn pretty<T: Serialize>(value: &T) -> String {
    let mut text = serde_json::to_string_pretty(value).expect("serializable");
    text.push('\n');
    text
}

fn check(vendor: &str, name: &str, actual: &str) {
    let path = format!(
        "{}/tests/golden/{vendor}/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(format!(
            "{}/tests/golden/{vendor}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .expect("golden dir");
        std::fs::write(&path, actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!("{path} missing: run UPDATE_GOLDEN=1 cargo test --test vendor_golden")
    });
    if expected != actual {
        let line = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(expected.lines().count().min(actual.lines().count()));
        panic!(
            "{path} differs from the output at line {}:\n  expected: {}\n  actual:   {}\n\
             (UPDATE_GOLDEN=1 cargo test --test vendor_golden rewrites it; review the diff)",
            line + 1,
            expected.lines().nth(line).unwrap_or("<end>"),
            actual.lines().nth(line).unwrap_or("<end>"),
        );
    }
}

/// Three whole fixture sessions (live with a user id, VOD with ads, a startup error),
/// with only the first heartbeat of each kept so the files stay reviewable.
fn fixture_highlights() -> Vec<Event> {
    let sessions = [
        "a6a3a450-6513-470e-a69e-0d37f2a74de4",
        "ca304218-62f2-421b-86bf-4fa2f4337bd1",
        "224065ed-6136-4cbf-a7e2-0a3d123419d6",
    ];
    let mut heartbeat_seen = std::collections::HashSet::new();
    fixture_events()
        .into_iter()
        .filter(|e| sessions.contains(&e.body.session.id.as_str()))
        .filter(|e| {
            e.event_type() != "playback.heartbeat"
                || heartbeat_seen.insert(e.body.session.id.clone())
        })
        .collect()
}

fn overrides(paused: &str) -> EventNames {
    EventNames::new(HashMap::from([
        (
            "playback.paused".to_string(),
            NameOverride::Rename(paused.into()),
        ),
        (
            "playback.heartbeat".to_string(),
            NameOverride::Enabled(false),
        ),
        (
            "playback.milestone".to_string(),
            NameOverride::Rename("video_milestone_reached".into()),
        ),
    ]))
}

/// A few events: a pause (renamed), a heartbeat (disabled), a milestone (renamed from
/// unmapped or default), a completion (default name).
fn override_events() -> Vec<Event> {
    [
        "playback.paused",
        "playback.heartbeat",
        "playback.milestone",
        "playback.completed",
    ]
    .iter()
    .enumerate()
    .map(|(i, ty)| {
        let data = if *ty == "playback.milestone" {
            json!({"data": {"percent": 50}})
        } else {
            json!({})
        };
        event_from_value(&base_event(
            900 + i as u32,
            ty,
            &format!("2026-11-01T19:10:0{i}.000Z"),
            data,
        ))
    })
    .collect()
}

/// One web session as an analytics engineer would check it against each vendor's docs:
/// the device clock 16 minutes fast (the client gave its send time), the viewer's IP
/// known to the relay, consent and page context, a login mid-session, heartbeats
/// between the events GA4 gets, a non-fatal error, the completion; then a second
/// session that ends in a fatal startup error.
fn fidelity_events() -> Vec<Event> {
    let context = json!({
        "player": {"name": "THEOplayer", "version": "9.2.0", "platform": "web"},
        "device": {"type": "desktop", "manufacturer": "Apple", "model": "MacBookPro18,3",
            "os_name": "macOS", "os_version": "15.1"},
        "locale": "en-GB", "user_agent": "Mozilla/5.0 (Test)",
        "page": {"url": "https://www.example.com/watch/A-100?utm_source=news",
            "referrer": "https://news.example.com/", "title": "Seasonal Forests | Example TV"},
        "consent": {"analytics": true, "advertising": false},
        "ga_client_id": "1234567890.1761990000"
    });
    let anonymous = json!({"anonymous_id": "anon-1"});
    let known = json!({"anonymous_id": "anon-1", "user_id": "user-1"});
    let steps: [(&str, &str, u64, Value); 9] = [
        (
            "playback.requested",
            "20:13:00.000",
            0,
            json!({"state": "starting"}),
        ),
        (
            "playback.started",
            "20:13:01.500",
            0,
            json!({"data": {"startup_ms": 1500}}),
        ),
        ("playback.heartbeat", "20:13:11.500", 10_000, json!({})),
        ("playback.heartbeat", "20:13:21.500", 20_000, json!({})),
        (
            "playback.error",
            "20:13:25.000",
            23_500,
            json!({"error": {"code": "3016",
            "category": "network", "message": "segment retry", "fatal": false, "phase": "playback"}}),
        ),
        (
            "playback.paused",
            "20:13:30.000",
            28_500,
            json!({"state": "paused"}),
        ),
        ("playback.resumed", "20:14:30.000", 28_500, json!({})),
        ("playback.heartbeat", "20:14:40.000", 38_500, json!({})),
        (
            "playback.completed",
            "20:15:00.000",
            60_000,
            json!({"state": "ended"}),
        ),
    ];
    let mut events: Vec<Event> = steps
        .into_iter()
        .enumerate()
        .map(|(i, (ty, time, position, extra))| {
            let mut value = base_event(
                700 + i as u32,
                ty,
                &format!("2026-11-01T{time}Z"),
                json!({"user": if i < 4 { anonymous.clone() } else { known.clone() },
                    "context": context.clone()}),
            );
            value["content"]["duration_ms"] = json!(60_000);
            value["playback"]["position_ms"] = json!(position);
            value["playback"]["visible"] = json!(true);
            if let Value::Object(extra) = extra {
                for (k, v) in extra {
                    if k == "state" {
                        value["playback"]["state"] = v;
                    } else {
                        value[k] = v;
                    }
                }
            }
            event_from_value(&value)
        })
        .collect();
    let mut fatal = base_event(
        720,
        "playback.error",
        "2026-11-01T19:58:40.000Z",
        json!({"session": {"id": "s-fatal"}, "user": anonymous,
            "error": {"code": "4001", "category": "decode", "message": "unsupported codec",
                "fatal": true, "phase": "startup"}}),
    );
    fatal["playback"]["position_ms"] = json!(0);
    events.push(event_from_value(&fatal));
    for event in &mut events {
        event.client_ip = Some("203.0.113.77".parse().expect("ip"));
    }
    // The web session's device clock is 16 minutes 5 seconds fast; the second session
    // gave no send time and its clock is right.
    for event in events.iter_mut().take(9) {
        event.client_sent_at = Some(datetime!(2026-11-01 20:15:05 UTC));
    }
    events
}

// ---------------------------------------------------------------- Segment

fn segment(names: EventNames, pass_properties: bool, limits: BatchLimits) -> SegmentTranslator {
    let config: SegmentConfig =
        serde_json::from_value(json!({"write_key": "wk_SECRET_123"})).expect("config");
    SegmentTranslator::new(&config, names, pass_properties, limits).expect("valid config")
}

#[test]
fn segment_fixture_sessions() {
    let t = segment(EventNames::default(), false, WIDE);
    check(
        "segment",
        "fixture_sessions",
        &golden(&t, &fixture_highlights(), SENT_AT),
    );
}

#[test]
fn segment_handmade_events_with_properties() {
    let t = segment(EventNames::default(), true, WIDE);
    check(
        "segment",
        "handmade",
        &golden(&t, &handmade_events(), SENT_AT),
    );
}

/// `gzip = true`: the same requests, compressed, with `Content-Encoding: gzip`; the
/// batch limits are the body's before compression.
#[test]
fn segment_gzip_carries_the_same_body() {
    let plain = segment(EventNames::default(), true, WIDE);
    let config: SegmentConfig =
        serde_json::from_value(json!({"write_key": "wk_SECRET_123", "gzip": true}))
            .expect("config");
    let gzip = SegmentTranslator::new(&config, EventNames::default(), true, WIDE).expect("valid");
    let events = handmade_events();
    let refs: Vec<&Event> = events.iter().collect();
    let a = plain.translate(&refs, SENT_AT);
    let b = gzip.translate(&refs, SENT_AT);
    assert_eq!(a.requests.len(), b.requests.len());
    for (a, b) in a.requests.iter().zip(&b.requests) {
        assert_eq!(b.headers["content-encoding"], "gzip");
        assert!(b.body.len() < a.body.len());
        assert_eq!(plain_body(&b.headers, &b.body), a.body.to_vec());
        assert_eq!(a.events, b.events);
    }
}

/// Content Completed before Playback Completed, `content_asset_ids` on playback events,
/// only fatal errors as interruptions, consent, the relay-seen IP, and timestamps
/// corrected for the device clock with `originalTimestamp` kept.
#[test]
fn segment_fidelity_session() {
    let t = segment(EventNames::default(), false, WIDE);
    check(
        "segment",
        "fidelity_session",
        &golden(&t, &fidelity_events(), SENT_AT),
    );
    // Segment keys the choices by the workspace's category ids (OneTrust's here).
    let config: SegmentConfig = serde_json::from_value(json!({"write_key": "wk_SECRET_123",
        "consent_categories": {"analytics": "C0002", "advertising": "C0004"}}))
    .expect("config");
    let onetrust =
        SegmentTranslator::new(&config, EventNames::default(), false, WIDE).expect("valid");
    let events = fidelity_events();
    let translation = onetrust.translate(&[&events[0]], SENT_AT);
    let body: Value = serde_json::from_slice(&translation.requests[0].body).expect("json");
    assert_eq!(
        body["batch"][0]["context"]["consent"],
        json!({"categoryPreferences": {"C0002": true, "C0004": false}})
    );
}

#[test]
fn segment_whole_fixture_in_one_batch() {
    let t = segment(EventNames::default(), false, WIDE);
    let events = fixture_events();
    let text = summary(&t, &events, SENT_AT);
    check("segment", "fixture_all_summary", &text);
    let refs: Vec<&Event> = events.iter().collect();
    let translation = t.translate(&refs, SENT_AT);
    for r in &translation.requests {
        assert!(r.body.len() <= 480 * 1024);
    }
}

#[test]
fn segment_big_events_split_by_bytes_and_oversize_is_refused() {
    let t = segment(EventNames::default(), true, WIDE);
    let mut events: Vec<Event> = (0..40)
        .map(|i| {
            event_from_value(&base_event(
                500 + i,
                "playback.heartbeat",
                "2026-11-01T19:20:00.000Z",
                json!({"properties": {"blob": "b".repeat(20 * 1024)}}),
            ))
        })
        .collect();
    events.push(event_from_value(&base_event(
        600,
        "playback.heartbeat",
        "2026-11-01T19:20:00.000Z",
        json!({"properties": {"blob": "b".repeat(33 * 1024)}}),
    )));
    check(
        "segment",
        "split_480kb_summary",
        &summary(&t, &events, SENT_AT),
    );
    // And the configured batch limits cut too.
    let small = segment(
        EventNames::default(),
        false,
        BatchLimits {
            max_events: 3,
            max_bytes: 1 << 20,
        },
    );
    let refs: Vec<&Event> = events.iter().collect();
    let translation = small.translate(&refs, SENT_AT);
    assert_eq!(translation.requests.len(), 14);
    assert!(translation.requests.iter().all(|r| r.events.len() <= 3));
}

#[test]
fn segment_events_override_renames_and_disables() {
    let t = segment(overrides("Player Paused"), false, WIDE);
    check(
        "segment",
        "events_override",
        &golden(&t, &override_events(), SENT_AT),
    );
}

// ---------------------------------------------------------------- GA4

fn ga4(names: EventNames, pass_properties: bool) -> Ga4Translator {
    let config: Ga4Config = serde_json::from_value(
        json!({"measurement_id": "G-TEST123", "api_secret": "sec/RET value"}),
    )
    .expect("config");
    Ga4Translator::new(&config, names, pass_properties, WIDE).expect("valid config")
}

/// The device clock 16 minutes fast no longer loses the session (`in_future`);
/// engagement is the time watched since the session's previous GA4 event, heartbeats
/// included; consent, page, device, the relay-seen IP, the gtag client id and
/// `visible` are sent.
#[test]
fn ga4_fidelity_session() {
    let t = ga4(EventNames::default(), false);
    let events = fidelity_events();
    let text = golden(&t, &events, SENT_AT);
    check("ga4", "fidelity_session", &text);
    let refs: Vec<&Event> = events.iter().collect();
    // A fresh translator, so the engagement clock starts from nothing again.
    let translation = ga4(EventNames::default(), false).translate(&refs, SENT_AT);
    assert!(
        translation
            .refused
            .iter()
            .all(|r| r.disposition == Disposition::Dropped && r.reason == "unmapped"),
        "{:?}",
        translation.refused
    );
    let mut engaged_ms = 0;
    for r in &translation.requests {
        let body: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
        for e in body["events"].as_array().expect("events") {
            engaged_ms += e["params"]["engagement_time_msec"]
                .as_u64()
                .expect("engagement");
        }
    }
    // Of the web session's 2 minutes, the viewer watched all but the minute paused:
    // past GA4's 10-second engaged-session bar.
    assert!((59_000..=62_000).contains(&engaged_ms), "{engaged_ms}");
}

/// The same events for an app stream: `firebase_app_id` in the URL and each event's
/// `app_instance_id`; an event without one is refused.
#[test]
fn ga4_app_stream_uses_app_instance_id() {
    let config: Ga4Config = serde_json::from_value(json!({
        "firebase_app_id": "1:1234567890:android:321abc456def7890",
        "api_secret": "sec/RET value"}))
    .expect("config");
    let t = Ga4Translator::new(&config, EventNames::default(), false, WIDE).expect("valid");
    let mut events = fidelity_events();
    events.truncate(3);
    let mut value = base_event(
        730,
        "playback.paused",
        "2026-11-01T19:58:00.000Z",
        json!({}),
    );
    value["context"]["firebase_app_instance_id"] = json!("b3c9f8a1d2e4f6a8b0c2d4e6f8a0b2c4");
    events[0] = event_from_value(&value);
    check("ga4", "app_stream", &golden(&t, &events, SENT_AT));
}

/// Past 25 params the lowest-priority ones are left out, counted, and said.
#[test]
fn ga4_params_past_25_are_cut_by_priority_and_counted() {
    let t = ga4(EventNames::default(), true);
    let properties: serde_json::Map<String, Value> = (0..12)
        .map(|i| (format!("custom_{i:02}"), json!(i)))
        .collect();
    let event = event_from_value(&base_event(
        740,
        "playback.paused",
        "2026-11-01T19:58:00.000Z",
        json!({"properties": properties, "context": {
            "page": {"url": "https://www.example.com/watch", "title": "Watch"},
            "player": {"name": "THEOplayer", "version": "9.2.0", "platform": "web"}}}),
    ));
    let text = golden(&t, std::slice::from_ref(&event), SENT_AT);
    check("ga4", "params_cut", &text);
    let translation = t.translate(&[&event], SENT_AT);
    let note = &translation.notes[0];
    assert_eq!(note.reason, "params_cut");
    assert!(note.detail.contains("custom_11"), "{}", note.detail);
    assert!(!note.detail.contains("page_location"), "{}", note.detail);
}

#[test]
fn ga4_fixture_sessions() {
    let t = ga4(EventNames::default(), false);
    check(
        "ga4",
        "fixture_sessions",
        &golden(&t, &fixture_highlights(), SENT_AT),
    );
}

#[test]
fn ga4_handmade_events_with_properties() {
    let t = ga4(EventNames::default(), true);
    check("ga4", "handmade", &golden(&t, &handmade_events(), SENT_AT));
}

#[test]
fn ga4_whole_fixture_summary() {
    let t = ga4(EventNames::default(), false);
    check(
        "ga4",
        "fixture_all_summary",
        &summary(&t, &fixture_events(), SENT_AT),
    );
}

fn one_client_events(n: u32, anonymous_id: &str, first: u32) -> Vec<Event> {
    (0..n)
        .map(|i| {
            event_from_value(&base_event(
                first + i,
                "playback.paused",
                &format!("2026-11-01T19:30:{:02}.000Z", i % 60),
                json!({"user": {"anonymous_id": anonymous_id}}),
            ))
        })
        .collect()
}

#[test]
fn ga4_26_events_of_one_client_make_2_requests() {
    let t = ga4(EventNames::default(), false);
    let events = one_client_events(26, "anon-26", 100);
    let text = summary(&t, &events, SENT_AT);
    check("ga4", "split_26_events_summary", &text);
    let refs: Vec<&Event> = events.iter().collect();
    let translation = t.translate(&refs, SENT_AT);
    let sizes: Vec<usize> = translation
        .requests
        .iter()
        .map(|r| r.events.len())
        .collect();
    assert_eq!(sizes, vec![25, 1]);
}

#[test]
fn ga4_events_of_3_clients_make_3_requests() {
    let t = ga4(EventNames::default(), false);
    let mut events = Vec::new();
    for i in 0..2 {
        for client in ["anon-a", "anon-b", "anon-c"] {
            events.extend(one_client_events(
                1,
                client,
                200 + i * 10 + events.len() as u32,
            ));
        }
    }
    let text = golden(&t, &events, SENT_AT);
    check("ga4", "three_clients", &text);
    let refs: Vec<&Event> = events.iter().collect();
    let translation = t.translate(&refs, SENT_AT);
    let groups: Vec<Vec<usize>> = translation
        .requests
        .iter()
        .map(|r| r.events.clone())
        .collect();
    assert_eq!(groups, vec![vec![0, 3], vec![1, 4], vec![2, 5]]);
}

#[test]
fn ga4_refuses_too_old_and_takes_future_times_as_received() {
    let t = ga4(EventNames::default(), false);
    // Received at 19:59 (RECEIVED_AT), sent at 20:00, no client send time given.
    let times = [
        "2026-10-29T19:59:59.000Z", // 72 h and 1 s before SENT_AT: too old
        "2026-10-29T20:00:00.000Z", // exactly 72 h: still accepted
        "2026-11-01T20:05:00.000Z", // after it was received: taken as received (19:59)
        "2026-11-01T20:30:00.000Z", // the same, however far ahead the device clock is
    ];
    let events: Vec<Event> = times
        .iter()
        .enumerate()
        .map(|(i, ts)| {
            event_from_value(&base_event(
                300 + i as u32,
                "playback.paused",
                ts,
                json!({}),
            ))
        })
        .collect();
    check("ga4", "event_times", &golden(&t, &events, SENT_AT));
    let refs: Vec<&Event> = events.iter().collect();
    let translation = t.translate(&refs, SENT_AT);
    let reasons: Vec<(usize, &str)> = translation
        .refused
        .iter()
        .map(|r| (r.index, r.reason))
        .collect();
    assert_eq!(reasons, vec![(0, "too_old")]);
}

#[test]
fn ga4_validate_mode_uses_the_debug_endpoint() {
    let config: Ga4Config = serde_json::from_value(json!({"measurement_id": "G-TEST123",
        "api_secret": "abc", "validate": true, "endpoint": "http://127.0.0.1:8081/"}))
    .expect("config");
    let t = Ga4Translator::new(&config, EventNames::default(), false, WIDE).expect("valid");
    let events = one_client_events(1, "anon-v", 400);
    let refs: Vec<&Event> = events.iter().collect();
    let translation = t.translate(&refs, SENT_AT);
    assert_eq!(
        translation.requests[0].url,
        "http://127.0.0.1:8081/debug/mp/collect?measurement_id=G-TEST123&api_secret=abc"
    );
}

#[test]
fn ga4_events_override_renames_and_disables() {
    let t = ga4(overrides("player_paused"), false);
    check(
        "ga4",
        "events_override",
        &golden(&t, &override_events(), SENT_AT),
    );
}

// ---------------------------------------------------------------- Tealium

fn tealium(
    extra: serde_json::Value,
    names: EventNames,
    pass_properties: bool,
) -> TealiumTranslator {
    let mut config = json!({"account": "acme", "profile": "video", "environment": "prod",
        "datasource": "ab12cd"});
    if let (Some(c), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            c.insert(k.clone(), v.clone());
        }
    }
    let config: TealiumConfig = serde_json::from_value(config).expect("config");
    TealiumTranslator::new(&config, names, pass_properties, WIDE).expect("valid config")
}

#[test]
fn tealium_fixture_sessions() {
    let t = tealium(json!({}), EventNames::default(), false);
    check(
        "tealium",
        "fixture_sessions",
        &golden(&t, &fixture_highlights(), SENT_AT),
    );
}

#[test]
fn tealium_handmade_events_with_properties() {
    let t = tealium(json!({}), EventNames::default(), true);
    check(
        "tealium",
        "handmade",
        &golden(&t, &handmade_events(), SENT_AT),
    );
}

#[test]
fn tealium_media_vocabulary() {
    let t = tealium(
        json!({"vocabulary": "media", "region": "eu-central-1"}),
        EventNames::default(),
        false,
    );
    check(
        "tealium",
        "media_vocabulary",
        &golden(&t, &handmade_events()[..12], SENT_AT),
    );
}

/// One visitor per device through a login (`tealium_visitor_id` from the anonymous
/// id, the user as `user_id`), in both vocabularies; the media one with the media
/// module's event names and keys only.
#[test]
fn tealium_fidelity_session() {
    let basic = tealium(json!({}), EventNames::default(), false);
    let events = fidelity_events();
    check(
        "tealium",
        "fidelity_session",
        &golden(&basic, &events, SENT_AT),
    );
    let media = tealium(json!({"vocabulary": "media"}), EventNames::default(), false);
    let text = golden(&media, &events, SENT_AT);
    for line in text.lines() {
        assert!(
            !line.contains("\"video_"),
            "a basic key in the media vocabulary: {line}"
        );
    }
    check("tealium", "fidelity_session_media", &text);
}

#[test]
fn tealium_whole_fixture_summary() {
    let t = tealium(json!({}), EventNames::default(), false);
    check(
        "tealium",
        "fixture_all_summary",
        &summary(&t, &fixture_events(), SENT_AT),
    );
}

#[test]
fn tealium_11_events_of_one_visitor_make_2_bulk_requests() {
    let t = tealium(json!({}), EventNames::default(), false);
    let events = one_client_events(11, "anon-11", 700);
    check(
        "tealium",
        "split_11_events_summary",
        &summary(&t, &events, SENT_AT),
    );
    let refs: Vec<&Event> = events.iter().collect();
    let translation = t.translate(&refs, SENT_AT);
    assert_eq!(translation.requests.len(), 2);
    for r in &translation.requests {
        assert!(r.url.ends_with("/bulk-event"), "{}", r.url);
        assert!(r.events.len() <= 10);
    }
}

#[test]
fn tealium_gzip_carries_the_same_body() {
    let plain = tealium(json!({}), EventNames::default(), true);
    let gzip = tealium(json!({"gzip": true}), EventNames::default(), true);
    let events = handmade_events();
    let refs: Vec<&Event> = events.iter().collect();
    let a = plain.translate(&refs, SENT_AT);
    let b = gzip.translate(&refs, SENT_AT);
    assert_eq!(a.requests.len(), b.requests.len());
    for (a, b) in a.requests.iter().zip(&b.requests) {
        assert_eq!(
            b.headers.get("content-encoding").map(|v| v.as_bytes()),
            Some(&b"gzip"[..])
        );
        assert_eq!(plain_body(&b.headers, &b.body), a.body.to_vec());
        assert_eq!(a.events, b.events);
    }
}

#[test]
fn tealium_events_override_renames_and_disables() {
    let t = tealium(json!({}), overrides("player_paused"), false);
    check(
        "tealium",
        "events_override",
        &golden(&t, &override_events(), SENT_AT),
    );
}

// ---------------------------------------------------------------- Webhook

fn webhook(config: Value) -> WebhookTranslator {
    let config: WebhookConfig = serde_json::from_value(config).expect("config");
    WebhookTranslator::new(&config, EventNames::default(), true, WIDE).expect("valid config")
}

/// The fidelity events with an ingest source on the first half.
fn sourced_events() -> Vec<Event> {
    let mut events = fidelity_events();
    for event in events.iter_mut().take(5) {
        event.source = Some("web".into());
    }
    events
}

/// Every event carries `schema` and its ingest `source`; the opt-in envelope, the batch
/// id header (the same as the envelope's), the Stripe-style signature over
/// `<t>.<body>` (the body before gzip), and gzip.
#[test]
fn webhook_envelope_signed_gzipped() {
    let secret = "whsec-test-0123456789";
    let t = webhook(
        json!({"endpoint": "https://hooks.example.com/in", "envelope": true,
        "signing_secret": secret, "gzip": true}),
    );
    let events = sourced_events();
    check("webhook", "envelope_signed", &golden(&t, &events, SENT_AT));
    let refs: Vec<&Event> = events.iter().collect();
    let translation = t.translate(&refs, SENT_AT);
    assert_eq!(translation.requests.len(), 1);
    let request = &translation.requests[0];
    assert_eq!(request.headers["content-encoding"], "gzip");
    let body = plain_body(&request.headers, &request.body);
    let value: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(
        value["batch_id"].as_str(),
        request.headers["x-playrelay-batch-id"].to_str().ok()
    );
    assert_eq!(
        request.headers["idempotency-key"],
        request.headers["x-playrelay-batch-id"]
    );
    assert_eq!(value["events"][0]["source"], "web");
    assert!(value["events"][9].get("source").is_none());
    assert_eq!(value["events"][9]["schema"], "player-event/1");
    // The receiver's check, as docs/vendor-mappings.md shows it.
    use hmac::Mac;
    let header = request.headers["x-playrelay-signature"]
        .to_str()
        .expect("ascii");
    let (t_part, v1_part) = header.split_once(',').expect("t=…,v1=…");
    let timestamp = t_part.strip_prefix("t=").expect("t=");
    assert_eq!(timestamp, SENT_AT.unix_timestamp().to_string());
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(&body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(v1_part.strip_prefix("v1=").expect("v1="), expected);
    // The same events give the same batch id: a receiver can drop a retried batch.
    let again = t.translate(&refs, SENT_AT + time::Duration::minutes(1));
    assert_eq!(
        again.requests[0].headers["x-playrelay-batch-id"],
        request.headers["x-playrelay-batch-id"]
    );
}

/// A flat shape for receivers that want one: each key the value at its JSON pointer
/// (into the event as it would otherwise be sent), null where there is none.
#[test]
fn webhook_fields_select_and_rename() {
    let t = webhook(json!({"endpoint": "https://hooks.example.com/in",
        "fields": {"id": "/event_id", "type": "/type", "at": "/timestamp",
            "received": "/received_at", "session": "/session/id", "user": "/user/user_id",
            "position_ms": "/playback/position_ms", "error_code": "/error/code",
            "source": "/source", "schema": "/schema"}}));
    check("webhook", "fields", &golden(&t, &sourced_events(), SENT_AT));
}

// ---------------------------------------------------------------- Secrets

/// What `translate` and dry-run files show: secrets hidden by position. A one-letter
/// api_secret (refused at config load, but possible through the library) no longer
/// turns the URL into `http***://www.google-analytic***.com`.
#[test]
fn rendered_requests_hide_secrets_by_position_only() {
    let config: Ga4Config =
        serde_json::from_value(json!({"measurement_id": "G-TEST123", "api_secret": "s"}))
            .expect("config");
    let t = Ga4Translator::new(&config, EventNames::default(), false, WIDE).expect("valid");
    let events = fidelity_events();
    let translation = t.translate(&[&events[1]], SENT_AT);
    let text = playrelay::dest::render_request(&translation.requests[0], &t.secrets());
    assert!(
        text.starts_with(
            "POST https://www.google-analytics.com/mp/collect?measurement_id=G-TEST123&api_secret=***\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("\"session_id\""),
        "the body is untouched: {text}"
    );

    let hook = webhook(json!({
        "endpoint": "https://relay:pa55word-1@hooks.example.com/in/T0KEN-PATH-1?token=tok-123456789&team=video",
        "headers": {"X-Api-Key": "key-0123456789", "X-Team": "video"},
        "signing_secret": "whsec-test-0123456789"}));
    let translation = hook.translate(&[&events[1]], SENT_AT);
    let text = playrelay::dest::render_request(&translation.requests[0], &hook.secrets());
    assert!(
        text.starts_with(
            "POST https://relay:***@hooks.example.com/in/T0KEN-PATH-1?token=***&team=video\n"
        ),
        "{text}"
    );
    assert!(text.contains("x-api-key: ***\n"), "{text}");
    assert!(text.contains("x-team: video\n"), "{text}");
    assert!(text.contains("x-playrelay-signature: t="), "{text}");
    for secret in [
        "pa55word-1",
        "tok-123456789",
        "key-0123456789",
        "whsec-test-0123456789",
    ] {
        assert!(!text.contains(secret), "{secret} shown: {text}");
    }
}
