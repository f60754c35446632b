//! Property tests over the event parser: no input makes it panic or ignore its limits,
//! and valid events come back as they went in.

use playrelay::event::{parse_body, BodyError, BodyFormat, BodyLimits, EventType, JsonLimits};
use proptest::prelude::*;
use serde_json::{json, Value};
use time::OffsetDateTime;

fn limits() -> BodyLimits {
    BodyLimits {
        max_events: 50,
        json: JsonLimits {
            max_depth: 6,
            max_string_bytes: 64,
            max_fields: 8,
            max_array_items: 8,
        },
    }
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,80}".prop_map(Value::String),
    ];
    leaf.prop_recursive(10, 200, 12, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..12).prop_map(Value::Array),
            prop::collection::btree_map(".{0,10}", inner, 0..12)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn valid_event() -> impl Strategy<Value = Value> {
    let types: Vec<&'static str> = EventType::ALL
        .iter()
        .map(|t| t.as_str())
        .filter(|t| !t.starts_with("ad.") && !t.ends_with(".error"))
        .collect();
    (
        any::<u128>(),
        prop::sample::select(types),
        "[a-zA-Z0-9_-]{1,30}",
        "[a-zA-Z0-9@._-]{1,30}",
        0u64..10_000_000,
        prop::option::of("[a-z]{1,10}"),
    )
        .prop_map(|(id, ty, session, user, position, extra)| {
            let mut event = json!({
                "event_id": uuid::Uuid::from_u128(id).to_string(),
                "type": ty,
                "timestamp": "2026-01-15T10:20:30.123Z",
                "session": {"id": session},
                "user": {"user_id": user},
                "playback": {"position_ms": position},
            });
            if let Some(extra) = extra {
                event["x_unknown"] = json!({ "kept": extra });
            }
            event
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        for format in [BodyFormat::Json, BodyFormat::Ndjson] {
            let _ = parse_body(&bytes, format, limits(), OffsetDateTime::UNIX_EPOCH);
        }
    }

    #[test]
    fn arbitrary_json_never_panics_and_depth_is_enforced(value in any_json()) {
        let text = value.to_string();
        let result = parse_body(text.as_bytes(), BodyFormat::Json, limits(), OffsetDateTime::UNIX_EPOCH);
        // Depth counts from the event: a top-level array of events does not count.
        let event_depth = match &value {
            Value::Array(items) => items.iter().map(depth).max().unwrap_or(0),
            other => depth(other),
        };
        if event_depth > 6 {
            prop_assert!(
                matches!(&result, Err(BodyError::Limit { .. }) | Err(BodyError::TooManyEvents { .. })),
                "depth {} passed: {:?}", event_depth, result.as_ref().map(|p| p.events.len())
            );
        }
        if let Ok(parsed) = &result {
            prop_assert!(parsed.events.len() + parsed.rejected.len() <= 50);
        }
    }

    #[test]
    fn valid_events_round_trip(events in prop::collection::vec(valid_event(), 1..10)) {
        let body = Value::Array(events.clone()).to_string();
        let parsed = parse_body(body.as_bytes(), BodyFormat::Json, BodyLimits::new(100), OffsetDateTime::UNIX_EPOCH)
            .expect("a valid body");
        prop_assert!(parsed.rejected.is_empty(), "{:?}", parsed.rejected);
        prop_assert_eq!(parsed.events.len(), events.len());
        for (event, sent) in parsed.events.iter().zip(&events) {
            let mut back = event.to_json_value();
            prop_assert_eq!(back["received_at"].as_str(), Some("1970-01-01T00:00:00.000Z"));
            back.as_object_mut().expect("object").remove("received_at");
            prop_assert_eq!(&back, sent);
            prop_assert_eq!(event.event_id(), sent["event_id"].as_str().unwrap_or_default());
        }
        let ndjson: String = events.iter().map(|e| format!("{e}\n")).collect();
        let lines = parse_body(ndjson.as_bytes(), BodyFormat::Ndjson, BodyLimits::new(100), OffsetDateTime::UNIX_EPOCH)
            .expect("valid NDJSON");
        prop_assert_eq!(lines.events.len(), events.len());
    }
}
