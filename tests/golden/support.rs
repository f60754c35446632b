//! Shared by `vendor_golden.rs` and `vendor_props.rs`: building events, reading request
//! bodies back with their key order (and refusing duplicate keys), and the accounting rule.
#![allow(dead_code)]

use playrelay::dest::Translation;
use playrelay::event::Event;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::fmt;
use time::macros::datetime;
use time::OffsetDateTime;

/// After the last fixture event (2026-11-01T19:44:40Z), so none is too old for GA4.
pub const SENT_AT: OffsetDateTime = datetime!(2026-11-01 20:00:00 UTC);
pub const RECEIVED_AT: OffsetDateTime = datetime!(2026-11-01 19:59:00 UTC);

/// A JSON value that keeps its key order, so golden files show bodies as sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
}

impl Node {
    pub fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Object(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Node::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Node]> {
        match self {
            Node::Array(a) => Some(a),
            _ => None,
        }
    }
    pub fn as_object(&self) -> Option<&[(String, Node)]> {
        match self {
            Node::Object(o) => Some(o),
            _ => None,
        }
    }
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Node::Number(n) => n.as_u64(),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Node, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("JSON")
            }
            fn visit_unit<E>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
                Ok(Node::Bool(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
                Ok(Node::Number(v.into()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
                Ok(Node::Number(v.into()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
                serde_json::Number::from_f64(v)
                    .map(Node::Number)
                    .ok_or_else(|| E::custom("non-finite number"))
            }
            fn visit_str<E>(self, v: &str) -> Result<Node, E> {
                Ok(Node::String(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<Node, E> {
                Ok(Node::String(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element()? {
                    out.push(v);
                }
                Ok(Node::Array(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut out: Vec<(String, Node)> = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Node>()? {
                    if out.iter().any(|(seen, _)| *seen == k) {
                        return Err(de::Error::custom(format!("duplicate key {k:?}")));
                    }
                    out.push((k, v));
                }
                Ok(Node::Object(out))
            }
        }
        de.deserialize_any(V)
    }
}

impl Serialize for Node {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Node::Null => s.serialize_unit(),
            Node::Bool(b) => s.serialize_bool(*b),
            Node::Number(n) => n.serialize(s),
            Node::String(v) => s.serialize_str(v),
            Node::Array(a) => {
                let mut seq = s.serialize_seq(Some(a.len()))?;
                for v in a {
                    seq.serialize_element(v)?;
                }
                seq.end()
            }
            Node::Object(o) => {
                let mut map = s.serialize_map(Some(o.len()))?;
                for (k, v) in o {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

/// Parses a body, failing on invalid JSON or a duplicate key anywhere.
pub fn parse_ordered(bytes: &[u8]) -> Result<Node, String> {
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

pub fn event_from_value(value: &Value) -> Event {
    let text = serde_json::to_string(value).expect("serializable");
    let raw: Box<RawValue> = RawValue::from_string(text).expect("raw");
    Event::from_json(&raw, RECEIVED_AT).unwrap_or_else(|e| panic!("invalid test event: {e}"))
}

pub fn fixture_events() -> Vec<Event> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/sessions.ndjson"
    ))
    .expect("fixture");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let raw: Box<RawValue> = serde_json::from_str(line).expect("fixture line is JSON");
            Event::from_json(&raw, RECEIVED_AT).expect("fixture events are valid")
        })
        .collect()
}

/// A full VOD event to patch: top-level keys of `extra` replace the base's.
pub fn base_event(n: u32, ty: &str, timestamp: &str, extra: Value) -> Value {
    let mut base = json!({
        "event_id": format!("00000000-0000-4000-8000-{n:012}"),
        "type": ty,
        "timestamp": timestamp,
        "sequence": n,
        "session": {"id": "s-hand", "player_session_id": "p-hand", "app_session_id": "1761990000"},
        "user": {"anonymous_id": "anon-1", "user_id": "user-1"},
        "content": {
            "asset_id": "A-100", "title": "Seasonal Forests", "duration_ms": 392000,
            "stream_type": "vod", "url": "https://cdn.example.com/forests/master.m3u8",
            "streaming_format": "hls", "genre": "Nature", "provider": "Example TV"
        },
        "playback": {
            "state": "playing", "position_ms": 278500,
            "rendition": {"bitrate_bps": 2445999, "framerate": 29.97, "label": "720p", "width": 1280, "height": 720},
            "volume": 0.555, "muted": false, "presentation_mode": "inline", "playback_rate": 1.0
        },
        "context": {
            "player": {"name": "THEOplayer", "version": "9.2.0", "platform": "web"},
            "locale": "en-GB", "user_agent": "Mozilla/5.0 (Test)"
        }
    });
    if let (Some(b), Value::Object(extra)) = (base.as_object_mut(), extra) {
        for (k, v) in extra {
            if v.is_null() {
                b.remove(&k);
            } else {
                b.insert(k, v);
            }
        }
    }
    base
}

/// Hand-made events for what the fixture lacks: every other type, odd and missing
/// fields, unicode, over-long strings, custom types and properties.
pub fn handmade_events() -> Vec<Event> {
    let ad = json!({"ad_id": "ad-1", "creative_id": "cr-1", "title": "Spot", "advertiser": "Acme",
        "system": "GAM", "insertion": "ssai", "duration_ms": 15000, "position_ms": 7500,
        "skip_offset_ms": 5000,
        "pod": {"id": "mid-1", "index": 1, "position": "midroll", "ad_count": 2, "ad_position": 1}});
    let t = |s: u32| format!("2026-11-01T19:00:{s:02}.000Z");
    let long = "x".repeat(300);
    let mut props = serde_json::Map::new();
    for i in 0..30 {
        props.insert(format!("prop_{i:02}"), json!(i));
    }
    let specs: Vec<(&str, Value)> = vec![
        (
            "session.started",
            json!({"content": {"asset_id": "A-100", "title": "Seasonal Forests",
                "description": "Trees through the year", "program": "Forests", "season": 2,
                "episode": "5", "genre": "Nature", "publisher": "Example Studios",
                "channel": "Nature One", "provider": "Example TV", "keywords": ["trees", "autumn"],
                "airdate": "2026-10-01", "duration_ms": 392000, "stream_type": "vod",
                "url": "https://cdn.example.com/forests/master.m3u8", "language": "en"},
              "context": {"player": {"name": "THEOplayer", "version": "9.2.0", "platform": "android"},
                "app": {"name": "Forest App", "version": "3.1", "build": 310},
                "device": {"type": "mobile", "manufacturer": "Acme", "model": "P1",
                    "os_name": "Android", "os_version": "15"},
                "page": {"url": "https://example.com/watch", "referrer": "https://example.com/", "title": "Watch"},
                "user_agent": "Mozilla/5.0 (Android)", "ip": "203.0.113.7", "locale": "de-DE",
                "consent": {"analytics": true, "advertising": false}}}),
        ),
        ("playback.requested", json!({})),
        ("playback.started", json!({"data": {"startup_ms": 1234}})),
        (
            "playback.paused",
            json!({"playback": {"state": "paused", "position_ms": 61999}}),
        ),
        ("playback.resumed", json!({})),
        ("playback.rebuffer_started", json!({})),
        (
            "playback.rebuffer_ended",
            json!({"data": {"duration_ms": 2500}}),
        ),
        (
            "playback.seek_started",
            json!({"data": {"from_ms": 10000, "to_ms": 95500}}),
        ),
        ("playback.seek_ended", json!({"data": {"duration_ms": 800}})),
        ("playback.heartbeat", json!({})),
        ("playback.milestone", json!({"data": {"percent": 25}})),
        (
            "playback.completed",
            json!({"playback": {"state": "ended", "position_ms": 392000}}),
        ),
        (
            "playback.exited",
            json!({"data": {"reason": "source_change"}}),
        ),
        (
            "playback.interrupted",
            json!({"data": {"method": "backgrounded"}}),
        ),
        (
            "playback.error",
            json!({"error": {"code": 3001, "category": "network", "message": "manifest 404",
                "fatal": true, "source": "network", "http_status": 404, "phase": "startup"}}),
        ),
        (
            "quality.changed",
            json!({"data": {"from_bitrate_bps": 800000}}),
        ),
        ("playback.rate_changed", json!({})),
        (
            "volume.changed",
            json!({"playback": {"state": "playing", "volume": 0.8, "muted": true}}),
        ),
        (
            "presentation.changed",
            json!({"playback": {"state": "playing", "presentation_mode": "fullscreen"}}),
        ),
        ("ad.break_started", json!({"ad": ad.clone()})),
        ("ad.started", json!({"ad": ad.clone()})),
        (
            "ad.quartile",
            json!({"ad": ad.clone(), "data": {"quartile": 2}}),
        ),
        ("ad.skipped", json!({"ad": ad.clone()})),
        ("ad.clicked", json!({"ad": ad.clone()})),
        ("ad.impression", json!({"ad": ad.clone()})),
        (
            "ad.error",
            json!({"ad": ad.clone(), "error": {"code": "402", "message": "VAST timeout", "source": "ad"}}),
        ),
        ("ad.completed", json!({"ad": ad.clone()})),
        ("ad.break_ended", json!({"ad": ad.clone()})),
        (
            "custom.chapter_viewed",
            json!({"properties": {"chapter": "Spring", "chapter.index": 2, "tags": ["a", "b"],
                "nested": {"deep.key": {"x": 1}}, "nothing": null, "flag": true,
                "position": "should not replace the spec value"}}),
        ),
        (
            "custom.Kapitel-Übersicht.ß",
            json!({"properties": {"größe": "groß"}}),
        ),
        // Only what the contract requires.
        (
            "playback.paused",
            json!({"session": {"id": "s-min"}, "user": {"anonymous_id": "anon-min"},
                "content": null, "playback": null, "context": null, "sequence": null}),
        ),
        (
            "playback.started",
            json!({"content": {"asset_id": "Ü-1", "title": format!("Les Misérables — 東京 🎬 {long}"),
                "duration_ms": 5000, "stream_type": "vod"},
              "properties": {"long_value": long.clone(), "unicode": "日本語テキスト"}}),
        ),
        // No anonymous_id: GA4 has no client_id for it; the others send it.
        ("playback.paused", json!({"user": {"user_id": "user-only"}})),
        (
            "playback.heartbeat",
            json!({"content": {"asset_id": "L-1", "title": "Match Day Live", "duration_ms": null,
                "stream_type": "live"}}),
        ),
        (
            "custom.many_props",
            json!({"properties": Value::Object(props)}),
        ),
    ];
    specs
        .into_iter()
        .enumerate()
        .map(|(i, (ty, extra))| {
            let n = i as u32;
            event_from_value(&base_event(n, ty, &t(n % 60), extra))
        })
        .collect()
}

/// Every input index in exactly one request's `events` or exactly one refusal.
pub fn assert_accounted(n: usize, translation: &Translation) {
    let mut seen = vec![0u32; n];
    for r in &translation.requests {
        assert!(!r.events.is_empty(), "a request without events");
        for &i in &r.events {
            assert!(i < n, "index {i} out of range {n}");
            seen[i] += 1;
        }
    }
    for r in &translation.refused {
        assert!(r.index < n, "refused index {} out of range {n}", r.index);
        seen[r.index] += 1;
    }
    for (i, count) in seen.iter().enumerate() {
        assert_eq!(*count, 1, "index {i} accounted {count} times");
    }
}
