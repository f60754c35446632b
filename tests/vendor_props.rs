//! Properties of the vendor translators over arbitrary valid events: every input index is
//! accounted for exactly once, GA4 requests pass every GA4 limit, Tealium keys never
//! hold a period, and Segment requests stay within Segment's caps.

#[path = "golden/support.rs"]
mod support;

use playrelay::dest::ga4::{self, Ga4Config, Ga4Translator};
use playrelay::dest::segment::{SegmentConfig, SegmentTranslator};
use playrelay::dest::tealium::{TealiumConfig, TealiumTranslator};
use playrelay::dest::{BatchLimits, EventNames, Translate};
use playrelay::event::{Event, EventType};
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use support::*;
use time::Duration;

const WIDE: BatchLimits = BatchLimits {
    max_events: 10_000,
    max_bytes: 10 << 20,
};

fn text(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::string::string_regex(&format!("[a-zA-Z0-9 ._-]{{0,{max}}}")).expect("regex"),
        proptest::collection::vec(any::<char>(), 0..max).prop_map(|c| c.into_iter().collect()),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::string::string_regex("[a-z][a-z0-9_.]{0,12}").expect("regex"),
        text(50),
        Just("position".to_string()),
        Just("tealium_visitor_id".to_string()),
        Just("ga_x".to_string()),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        text(150).prop_map(Value::String),
        any::<i64>().prop_map(|n| json!(n)),
        (-1e9f64..1e9).prop_map(|n| json!(n)),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(key(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn properties() -> impl Strategy<Value = Option<Map<String, Value>>> {
    proptest::option::of(
        proptest::collection::btree_map(key(), value(), 0..35)
            .prop_map(|m| m.into_iter().collect::<Map<String, Value>>()),
    )
}

fn event_type() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(EventType::ALL.to_vec()).prop_map(|t| t.as_str().to_string()),
        1 => text(60).prop_filter("non-empty", |s| !s.is_empty()).prop_map(|s| format!("custom.{s}")),
    ]
}

prop_compose! {
    fn arb_event(n: u32)(
        ty in event_type(),
        // From 80 h before to 20 min after the send time.
        offset_s in -(80 * 3600i64)..1200,
        anon in proptest::option::of(0u8..4),
        user in proptest::option::of(0u8..3),
        title in proptest::option::of(text(200)),
        duration in proptest::option::of(0u64..10_000_000),
        live in any::<bool>(),
        position in proptest::option::of(0u64..10_000_000),
        volume in proptest::option::of(0.0f64..=1.0),
        muted in proptest::option::of(any::<bool>()),
        props in properties(),
        app_session in proptest::option::of(text(20)),
    ) -> Value {
        let ts = SENT_AT + Duration::seconds(offset_s);
        let mut user_obj = Map::new();
        // The contract needs at least one of the two ids.
        let anon = if anon.is_none() && user.is_none() { Some(0) } else { anon };
        if let Some(a) = anon {
            user_obj.insert("anonymous_id".into(), json!(format!("anon-{a}")));
        }
        if let Some(u) = user {
            user_obj.insert("user_id".into(), json!(format!("user-{u}")));
        }
        let mut e = json!({
            "event_id": format!("00000000-0000-4000-8000-{n:012}"),
            "type": ty,
            "timestamp": playrelay::event::format_rfc3339(ts),
            "session": {"id": format!("s-{n}")},
            "user": user_obj,
            "content": {"title": title, "duration_ms": if live { None } else { duration },
                "stream_type": if live { "live" } else { "vod" }},
            "playback": {"position_ms": position, "volume": volume, "muted": muted},
        });
        if let Some(s) = app_session {
            e["session"]["app_session_id"] = json!(s);
        }
        if ty.starts_with("ad.") {
            e["ad"] = json!({"ad_id": "ad", "title": title, "pod": {"position": "preroll"}});
        }
        if ty.ends_with(".error") {
            e["error"] = json!({"code": 1, "message": title});
        }
        if let Some(p) = props {
            e["properties"] = Value::Object(p);
        }
        e
    }
}

fn batch() -> impl Strategy<Value = Vec<Event>> {
    (0usize..45).prop_flat_map(|len| {
        (0..len as u32)
            .map(arb_event)
            .collect::<Vec<_>>()
            .prop_map(|values| values.iter().map(event_from_value).collect())
    })
}

fn ids(event: &Event) -> (Option<String>, Option<String>) {
    (
        event.body.user.anonymous_id.clone(),
        event.body.user.user_id.clone(),
    )
}

fn check_ga4(events: &[Event], limits: BatchLimits) -> Result<(), TestCaseError> {
    let config: Ga4Config =
        serde_json::from_value(json!({"measurement_id": "G-1", "api_secret": "api-secret-1"}))
            .expect("config");
    let t = Ga4Translator::new(&config, EventNames::default(), true, limits).expect("valid");
    let refs: Vec<&Event> = events.iter().collect();
    let translation = t.translate(&refs, SENT_AT);
    assert_accounted(events.len(), &translation);
    for note in &translation.notes {
        prop_assert!(translation
            .requests
            .iter()
            .any(|r| r.events.contains(&note.index)));
        prop_assert!(note.count > 0);
    }
    let oldest = (SENT_AT - ga4::MAX_AGE).unix_timestamp_nanos() / 1000;
    let newest = SENT_AT.unix_timestamp_nanos() / 1000;
    for r in &translation.requests {
        prop_assert!(r.body.len() < ga4::MAX_BODY_BYTES);
        prop_assert!(r.body.len() <= limits.max_bytes);
        prop_assert!(r.events.len() <= 25 && r.events.len() <= limits.max_events);
        let first = ids(&events[r.events[0]]);
        for &i in &r.events {
            prop_assert_eq!(
                &ids(&events[i]),
                &first,
                "one client_id and user_id per request"
            );
        }
        let body = parse_ordered(&r.body).map_err(TestCaseError::fail)?;
        prop_assert_eq!(
            body.get("client_id").and_then(Node::as_str),
            first.0.as_deref()
        );
        prop_assert_eq!(
            body.get("user_id").and_then(Node::as_str),
            first.1.as_deref()
        );
        let items = body.get("events").and_then(Node::as_array).expect("events");
        prop_assert_eq!(items.len(), r.events.len());
        for item in items {
            let name = item.get("name").and_then(Node::as_str).expect("name");
            prop_assert_eq!(ga4::name_problem(name, true), None, "event name {}", name);
            let micros = match item.get("timestamp_micros") {
                Some(Node::Number(n)) => n.as_i64().expect("integer") as i128,
                _ => return Err(TestCaseError::fail("timestamp_micros")),
            };
            prop_assert!(micros >= oldest && micros <= newest);
            let params = item
                .get("params")
                .and_then(Node::as_object)
                .expect("params");
            prop_assert!(params.len() <= 25);
            let engagement = params
                .iter()
                .find(|(k, _)| k == "engagement_time_msec")
                .and_then(|(_, v)| match v {
                    Node::Number(n) => n.as_u64(),
                    _ => None,
                });
            // Time watched since the session's previous GA4 event: positive, capped.
            prop_assert!(engagement.is_some_and(|ms| (1..=30 * 60 * 1000).contains(&ms)));
            for (k, v) in params {
                prop_assert_eq!(ga4::name_problem(k, false), None, "param name {}", k);
                match v {
                    Node::String(s) => prop_assert!(s.chars().count() <= 100),
                    Node::Number(_) => {}
                    other => prop_assert!(false, "param {} is {:?}", k, other),
                }
            }
        }
    }
    Ok(())
}

fn period_free(node: &Node) -> Result<(), TestCaseError> {
    match node {
        Node::Object(entries) => {
            for (k, v) in entries {
                prop_assert!(!k.contains('.'), "key {:?}", k);
                period_free(v)?;
            }
        }
        Node::Array(items) => {
            for v in items {
                period_free(v)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn check_tealium(events: &[Event], limits: BatchLimits) -> Result<(), TestCaseError> {
    let config: TealiumConfig =
        serde_json::from_value(json!({"account": "a", "profile": "p"})).expect("config");
    let t = TealiumTranslator::new(&config, EventNames::default(), true, limits).expect("valid");
    let refs: Vec<&Event> = events.iter().collect();
    let translation = t.translate(&refs, SENT_AT);
    assert_accounted(events.len(), &translation);
    for r in &translation.requests {
        prop_assert!(r.events.len() <= 10 && r.events.len() <= limits.max_events);
        prop_assert!(r.body.len() <= 1_000_000 && r.body.len() <= limits.max_bytes);
        let body = parse_ordered(&r.body).map_err(TestCaseError::fail)?;
        period_free(&body)?;
        // Stable per device: the anonymous id first, so a login does not split it.
        let visitor = |e: &Event| playrelay::dest::tealium::visitor_id(e).map(str::to_string);
        let first = visitor(&events[r.events[0]]);
        for &i in &r.events {
            prop_assert_eq!(visitor(&events[i]), first.clone());
        }
        if r.events.len() == 1 {
            prop_assert!(r.url.ends_with("/event"));
            prop_assert!(body.get("tealium_event").is_some());
        } else {
            prop_assert!(r.url.ends_with("/bulk-event"));
            let items = body.get("events").and_then(Node::as_array).expect("events");
            prop_assert_eq!(items.len(), r.events.len());
        }
    }
    Ok(())
}

fn check_segment(events: &[Event], limits: BatchLimits) -> Result<(), TestCaseError> {
    let config: SegmentConfig =
        serde_json::from_value(json!({"write_key": "wk-12345678"})).expect("config");
    let t = SegmentTranslator::new(&config, EventNames::default(), true, limits).expect("valid");
    let refs: Vec<&Event> = events.iter().collect();
    let translation = t.translate(&refs, SENT_AT);
    assert_accounted(events.len(), &translation);
    for r in &translation.requests {
        prop_assert!(r.body.len() <= 480 * 1024 && r.body.len() <= limits.max_bytes);
        prop_assert!(r.events.len() <= limits.max_events);
        let body = parse_ordered(&r.body).map_err(TestCaseError::fail)?;
        let items = body.get("batch").and_then(Node::as_array).expect("batch");
        prop_assert!(items.len() <= 2500);
        // A completion is sent as Video Content Completed then Video Playback Completed.
        let completions = r
            .events
            .iter()
            .filter(|&&i| events[i].event_type() == "playback.completed")
            .count();
        prop_assert_eq!(items.len(), r.events.len() + completions);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn translators_keep_every_vendor_rule(events in batch()) {
        check_ga4(&events, WIDE)?;
        check_tealium(&events, WIDE)?;
        check_segment(&events, WIDE)?;
    }

    #[test]
    fn small_batch_limits_are_respected_too(
        events in batch(),
        max_events in 1usize..6,
        max_bytes in 2_000usize..20_000,
    ) {
        let limits = BatchLimits { max_events, max_bytes };
        check_ga4(&events, limits)?;
        check_tealium(&events, limits)?;
        check_segment(&events, limits)?;
    }
}
