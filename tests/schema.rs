//! The published schema (`schema/player-event-1.schema.json`) is exactly what the types
//! generate, covers the whole contract, and accepts every fixture event while refusing
//! what the relay refuses.

use playrelay::event::{event_type_description, player_event_schema_json, EventType};
use serde_json::{json, Value};

const COMMITTED: &str = include_str!("../schema/player-event-1.schema.json");
const FIXTURES: &str = include_str!("fixtures/sessions.ndjson");

fn generated() -> Value {
    serde_json::from_str(&player_event_schema_json()).expect("the generated schema is JSON")
}

fn validator() -> jsonschema::Validator {
    jsonschema::options()
        .should_validate_formats(true)
        .build(&generated())
        .expect("the generated schema is a valid JSON Schema")
}

#[test]
fn committed_schema_matches_the_types() {
    let generated = player_event_schema_json();
    if COMMITTED != generated {
        panic!(
            "schema/player-event-1.schema.json is out of date with src/event/types.rs; \
             regenerate it with `cargo run -- schema > schema/player-event-1.schema.json`"
        );
    }
}

#[test]
fn schema_is_draft_2020_12_and_describes_every_type_and_field() {
    let schema = generated();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    let types = schema["properties"]["type"]["anyOf"]
        .as_array()
        .expect("type is a list of choices");
    for ty in EventType::ALL {
        let entry = types
            .iter()
            .find(|c| c["const"] == ty.as_str())
            .unwrap_or_else(|| panic!("event type {ty} is missing from the schema"));
        assert!(entry["description"].as_str().is_some_and(|d| !d.is_empty()));
    }
    for ty in EventType::ALL {
        assert!(
            event_type_description(ty).is_some(),
            "event type {ty} has no description in src/event/schema.rs"
        );
    }
    // Every property of every object in the schema has a description.
    let mut undocumented = Vec::new();
    let mut objects = vec![("".to_string(), &schema)];
    for (name, def) in schema["$defs"].as_object().expect("$defs").iter() {
        objects.push((name.clone(), def));
        if def.get("description").is_none() {
            undocumented.push(name.clone());
        }
        for variant in def["oneOf"].as_array().into_iter().flatten() {
            if variant.get("description").is_none() {
                undocumented.push(format!("{name}: {variant}"));
            }
        }
    }
    for (name, object) in objects {
        for (field, prop) in object["properties"].as_object().into_iter().flatten() {
            if prop.get("description").is_none() {
                undocumented.push(format!("{name}.{field}"));
            }
        }
    }
    assert!(undocumented.is_empty(), "undocumented: {undocumented:?}");
}

#[test]
fn every_fixture_event_validates() {
    let validator = validator();
    let mut count = 0;
    for (line, text) in FIXTURES.lines().enumerate() {
        if text.trim().is_empty() {
            continue;
        }
        let event: Value = serde_json::from_str(text).expect("fixture line is JSON");
        let errors: Vec<String> = validator
            .iter_errors(&event)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "fixture line {}: {errors:?}", line + 1);
        count += 1;
    }
    assert!(count >= 700, "only {count} fixture events");
}

#[test]
fn schema_refuses_what_the_relay_refuses() {
    let validator = validator();
    let good = json!({
        "event_id": "0190f6d2-7c3a-7b1e-9a1e-3f2c8d1e4b55",
        "type": "playback.paused",
        "timestamp": "2026-01-15T10:20:30.123Z",
        "session": {"id": "s-1"},
        "user": {"anonymous_id": "a-1"},
        "playback": {"state": "paused", "volume": 0.5},
        "an_unknown_field": {"is": "kept"}
    });
    assert!(validator.is_valid(&good), "{:?}", validator.validate(&good));
    let custom = with(&good, "/type", json!("custom.chapter_viewed"));
    assert!(validator.is_valid(&custom));

    let cases = [
        with(&good, "/type", json!("playback.bogus")),
        with(&good, "/type", json!("custom.")),
        with(&good, "/event_id", json!("not-a-uuid")),
        with(&good, "/timestamp", json!("yesterday")),
        with(&good, "/user", json!({})),
        with(&good, "/user", json!({"anonymous_id": ""})),
        with(&good, "/session/id", json!("")),
        with(&good, "/playback/volume", json!(1.5)),
        with(&good, "/playback/state", json!("dancing")),
        with(&good, "/schema", json!("player-event/2")),
        with(&good, "/type", json!("ad.started")),
        with(&good, "/type", json!("playback.error")),
    ];
    for case in cases {
        assert!(!validator.is_valid(&case), "accepted: {case}");
    }
}

fn with(base: &Value, pointer: &str, value: Value) -> Value {
    let mut out = base.clone();
    let (parent, key) = pointer.rsplit_once('/').expect("a JSON pointer");
    out.pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .expect("parent is an object")
        .insert(key.to_string(), value);
    out
}
