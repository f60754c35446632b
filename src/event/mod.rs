//! `player-event/1`: the typed event, its validation, and how request bodies become events.

mod client;
mod limits;
mod parse;
mod schema;
mod types;

pub use client::{client_sent_at, stamp_client, SENT_AT_HEADER, SENT_AT_QUERY};
pub use limits::JsonLimits;
pub use parse::{parse_body, BodyError, BodyFormat, BodyLimits, ParsedBody, Rejection};
pub use schema::{event_type_description, player_event_schema, player_event_schema_json};
pub use types::*;

use serde_json::value::RawValue;
use std::sync::Arc;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// An accepted event: the typed view for routing and translators, plus the exact JSON
/// the client sent, so pass-through destinations forward every field, known or not.
#[derive(Debug, Clone)]
pub struct Event {
    /// The event's JSON text exactly as sent (already checked to be one JSON object).
    raw: Box<str>,
    pub body: PlayerEvent,
    pub timestamp: OffsetDateTime,
    pub received_at: OffsetDateTime,
    /// The ingest source the event came through, when sources are configured.
    pub source: Option<Arc<str>>,
    /// Its position in the disk spool (0: not spooled), which destinations acknowledge.
    pub spool_seq: u64,
    /// The viewer's address as the relay saw it (the peer, or the client end of a
    /// trusted proxy's `X-Forwarded-For`), stamped at ingest like `received_at`.
    pub client_ip: Option<std::net::IpAddr>,
    /// When the client sent the request, by its own clock (`X-Sent-At`, or `?sent_at=`
    /// for `sendBeacon`): with `received_at` it measures the device clock's skew.
    pub client_sent_at: Option<OffsetDateTime>,
    /// The contract type, read once at parse; `None` for `custom.*`.
    known_type: Option<EventType>,
}

/// Why one event was refused. The text names the field so a player developer can fix it.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum EventError {
    #[error("event is not a JSON object")]
    NotAnObject,
    #[error("{path}: missing required field")]
    Missing { path: String },
    #[error("{path}: {message}")]
    WrongType { path: String, message: String },
    #[error("{path}: {message}")]
    InvalidValue { path: String, message: String },
    #[error("type: unknown event type {0:?} (custom types must start with \"custom.\")")]
    UnknownType(String),
}

impl EventError {
    /// The `reason` label of `playrelay_events_rejected_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            EventError::NotAnObject => "not_an_object",
            EventError::Missing { .. } => "missing_field",
            EventError::WrongType { .. } => "wrong_type",
            EventError::InvalidValue { .. } => "invalid_value",
            EventError::UnknownType(_) => "unknown_type",
        }
    }
}

impl Event {
    /// Parses and validates one event from its JSON text.
    pub fn from_json(raw: &RawValue, received_at: OffsetDateTime) -> Result<Event, EventError> {
        let text = raw.get();
        if !text.starts_with('{') {
            return Err(EventError::NotAnObject);
        }
        let mut de = serde_json::Deserializer::from_str(text);
        let body: PlayerEvent =
            serde_path_to_error::deserialize(&mut de).map_err(classify_serde_error)?;
        Event::validated(text, body, received_at)
    }

    /// The fast path for the common case, one pass over `text` without tracking field
    /// paths: `None` when serde refuses the text (or it is not an object), so the caller
    /// takes the checked path ([`Event::from_json`]) for the exact error. When serde
    /// takes it, the result is what `from_json` gives, since both run the same
    /// `Deserialize` and the same validation.
    ///
    /// `text` must be the whole record (no trailing characters are allowed) and the
    /// caller must know it is valid UTF-8, as a `&str` is.
    pub(crate) fn from_text_fast(
        text: &str,
        received_at: OffsetDateTime,
    ) -> Option<Result<Event, EventError>> {
        if !text.starts_with('{') {
            return None;
        }
        let body: PlayerEvent = serde_json::from_str(text).ok()?;
        Some(Event::validated(text, body, received_at))
    }

    fn validated(
        text: &str,
        body: PlayerEvent,
        received_at: OffsetDateTime,
    ) -> Result<Event, EventError> {
        let (timestamp, known_type) = validate(&body)?;
        Ok(Event {
            raw: text.into(),
            body,
            timestamp,
            received_at,
            source: None,
            spool_seq: 0,
            client_ip: None,
            client_sent_at: None,
            known_type,
        })
    }

    /// Rebuilds an event the relay accepted earlier (the spool, replays): the same
    /// parse and validation as ingest, with the `received_at` it was given then.
    pub fn restore(text: &str, received_at: OffsetDateTime) -> Result<Event, EventError> {
        if let Some(result) = Event::from_text_fast(text, received_at) {
            return result;
        }
        let raw: &RawValue = serde_json::from_str(text).map_err(|_| EventError::NotAnObject)?;
        Event::from_json(raw, received_at)
    }

    /// The event's time on the relay's clock: the device time moved by the device
    /// clock's skew (`received_at` − `client_sent_at`) when the client gave its send
    /// time; else the device time, but never later than `received_at`, since no event
    /// happens after the relay received it.
    pub fn corrected_timestamp(&self) -> OffsetDateTime {
        match self.client_sent_at {
            // A send time absurd enough to leave the calendar: the receive time.
            Some(sent) => self
                .timestamp
                .checked_add(self.received_at - sent)
                .unwrap_or(self.received_at),
            None => self.timestamp.min(self.received_at),
        }
    }

    pub fn event_type(&self) -> &str {
        &self.body.event_type
    }

    /// The contract type of the event; `None` for an app's `custom.*` type.
    pub fn known_type(&self) -> Option<EventType> {
        self.known_type
    }

    pub fn event_id(&self) -> &str {
        &self.body.event_id
    }

    /// The JSON the client sent.
    pub fn raw_json(&self) -> &str {
        &self.raw
    }

    /// Appends the event as the client sent it plus the relay's `received_at`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let raw: &str = &self.raw;
        if self.body.received_at.is_some() {
            // The client sent its own `received_at`: rebuild the object so the key is
            // not duplicated. Rare, so the slow path is fine.
            if let Ok(serde_json::Value::Object(mut map)) = serde_json::from_str(raw) {
                map.insert(
                    "received_at".into(),
                    serde_json::Value::String(format_rfc3339(self.received_at)),
                );
                // Writing a Value into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut *out, &map);
                return;
            }
        }
        let body = raw.trim_end();
        let body = &body[..body.len() - 1]; // drop the closing brace
        out.extend_from_slice(body.as_bytes());
        let empty_object = body.trim_end().ends_with('{');
        if !empty_object {
            out.push(b',');
        }
        out.extend_from_slice(b"\"received_at\":\"");
        out.extend_from_slice(format_rfc3339(self.received_at).as_bytes());
        out.extend_from_slice(b"\"}");
    }

    pub fn to_json_value(&self) -> serde_json::Value {
        let mut buf = Vec::with_capacity(self.raw.len() + 48);
        self.write_json(&mut buf);
        serde_json::from_slice(&buf).unwrap_or(serde_json::Value::Null)
    }
}

/// RFC 3339 with millisecond precision in UTC, the form the contract uses.
pub fn format_rfc3339(t: OffsetDateTime) -> String {
    Rfc3339Millis(t).with_str(str::to_string)
}

/// A time that serializes (and displays) as [`format_rfc3339`] does, without
/// allocating: translators write one per event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rfc3339Millis(pub OffsetDateTime);

impl Rfc3339Millis {
    /// Calls `f` with the text, built on the stack for years 0–9999 (all real ones).
    pub fn with_str<R>(self, f: impl FnOnce(&str) -> R) -> R {
        let t = self.0.to_offset(time::UtcOffset::UTC);
        let (y, mo, d) = (t.year(), t.month() as u8, t.day());
        let (h, mi, s, ms) = (t.hour(), t.minute(), t.second(), t.millisecond());
        if !(0..=9999).contains(&y) {
            return f(&format!(
                "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z"
            ));
        }
        let mut buf = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, value: u32, digits: usize| {
            let mut v = value;
            for i in (0..digits).rev() {
                buf[at + i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, y as u32, 4);
        put(5, mo.into(), 2);
        put(8, d.into(), 2);
        put(11, h.into(), 2);
        put(14, mi.into(), 2);
        put(17, s.into(), 2);
        put(20, ms.into(), 3);
        // Only ASCII digits and separators were written.
        f(std::str::from_utf8(&buf).unwrap_or_default())
    }
}

impl std::fmt::Display for Rfc3339Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.with_str(|s| f.write_str(s))
    }
}

impl serde::Serialize for Rfc3339Millis {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.with_str(|text| s.serialize_str(text))
    }
}

fn classify_serde_error(err: serde_path_to_error::Error<serde_json::Error>) -> EventError {
    let path = err.path().to_string();
    let inner = err.into_inner();
    let message = strip_position(&inner.to_string());
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'))
    {
        let path = if path == "." || path.is_empty() {
            field.to_string()
        } else {
            format!("{path}.{field}")
        };
        return EventError::Missing { path };
    }
    let path = if path == "." { "event".into() } else { path };
    if message.starts_with("invalid type") {
        EventError::WrongType { path, message }
    } else {
        EventError::InvalidValue { path, message }
    }
}

/// serde_json appends " at line L column C"; inside one event the field path says more.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// Checks what serde's types cannot: formats, the type list, and cross-field rules.
fn validate(body: &PlayerEvent) -> Result<(OffsetDateTime, Option<EventType>), EventError> {
    let invalid = |path: &str, message: String| EventError::InvalidValue {
        path: path.into(),
        message,
    };
    if let Some(schema) = &body.schema {
        if schema != SCHEMA_VERSION {
            return Err(invalid(
                "schema",
                format!("unsupported schema {schema:?}, expected {SCHEMA_VERSION:?}"),
            ));
        }
    }
    if uuid::Uuid::try_parse(&body.event_id).is_err() {
        return Err(invalid(
            "event_id",
            format!("{:?} is not a UUID", truncate(&body.event_id, 64)),
        ));
    }
    let ty = body.event_type.as_str();
    let custom = ty.strip_prefix("custom.");
    let known_type = EventType::parse(ty);
    if known_type.is_none() && custom.is_none_or(str::is_empty) {
        return Err(EventError::UnknownType(truncate(ty, 64).to_string()));
    }
    let timestamp = OffsetDateTime::parse(&body.timestamp, &Rfc3339).map_err(|e| {
        invalid(
            "timestamp",
            format!("{:?} is not RFC 3339: {e}", truncate(&body.timestamp, 64)),
        )
    })?;
    if body.session.id.is_empty() {
        return Err(invalid("session.id", "must not be empty".into()));
    }
    let has = |s: &Option<String>| s.as_deref().is_some_and(|s| !s.is_empty());
    if !has(&body.user.user_id) && !has(&body.user.anonymous_id) {
        return Err(EventError::Missing {
            path: "user.user_id or user.anonymous_id".into(),
        });
    }
    if ty.starts_with("ad.") && body.ad.is_none() {
        return Err(EventError::Missing { path: "ad".into() });
    }
    if ty.ends_with(".error") && body.error.is_none() {
        return Err(EventError::Missing {
            path: "error".into(),
        });
    }
    if let Some(volume) = body.playback.as_ref().and_then(|p| p.volume) {
        if !(0.0..=1.0).contains(&volume) {
            return Err(invalid(
                "playback.volume",
                format!("{volume} is outside 0.0-1.0"),
            ));
        }
    }
    Ok((timestamp, known_type))
}

fn truncate(s: &str, max_chars: usize) -> &str {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Event, EventError> {
        let raw: Box<RawValue> = serde_json::from_str(text).expect("test input is JSON");
        Event::from_json(&raw, OffsetDateTime::UNIX_EPOCH)
    }

    const GOOD: &str = r#"{"event_id":"0190f6d2-7c3a-7b1e-9a1e-3f2c8d1e4b55","type":"playback.paused","timestamp":"2026-01-15T10:20:30.123Z","session":{"id":"s1"},"user":{"anonymous_id":"a-1"},"x_unknown":{"kept":true}}"#;

    #[test]
    fn valid_event_keeps_unknown_fields_and_gets_received_at() {
        let event = parse(GOOD).expect("valid");
        let value = event.to_json_value();
        assert_eq!(value["x_unknown"]["kept"], true);
        assert_eq!(value["received_at"], "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn missing_event_id_names_the_field() {
        let text = GOOD.replace(r#""event_id":"0190f6d2-7c3a-7b1e-9a1e-3f2c8d1e4b55","#, "");
        let err = parse(&text).unwrap_err();
        assert_eq!(err.to_string(), "event_id: missing required field");
        assert_eq!(err.reason(), "missing_field");
    }

    #[test]
    fn wrong_type_names_the_nested_path() {
        let text = GOOD.replace(
            r#""x_unknown""#,
            r#""playback":{"position_ms":"late"},"x_unknown""#,
        );
        let err = parse(&text).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("playback.position_ms: invalid type"),
            "{err}"
        );
    }

    #[test]
    fn unknown_type_is_rejected_but_custom_is_not() {
        let err = parse(&GOOD.replace("playback.paused", "playback.napping")).unwrap_err();
        assert_eq!(err.reason(), "unknown_type");
        parse(&GOOD.replace("playback.paused", "custom.chapter_viewed")).expect("custom ok");
        parse(&GOOD.replace("playback.paused", "custom.")).expect_err("empty custom name");
    }

    #[test]
    fn ad_events_need_an_ad() {
        let err = parse(&GOOD.replace("playback.paused", "ad.started")).unwrap_err();
        assert_eq!(err.to_string(), "ad: missing required field");
    }

    #[test]
    fn client_received_at_is_overwritten_not_duplicated() {
        let text = GOOD.replace(r#""x_unknown""#, r#""received_at":"forged","x_unknown""#);
        let event = parse(&text).expect("valid");
        let mut out = Vec::new();
        event.write_json(&mut out);
        let out = String::from_utf8(out).expect("utf8");
        assert_eq!(out.matches("received_at").count(), 1, "{out}");
        assert!(out.contains("1970-01-01T00:00:00.000Z"));
    }

    #[test]
    fn rfc3339_matches_the_formatted_text() {
        let expected = |t: OffsetDateTime| {
            let t = t.to_offset(time::UtcOffset::UTC);
            format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                t.year(),
                t.month() as u8,
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                t.millisecond()
            )
        };
        for text in [
            "1970-01-01T00:00:00Z",
            "2026-01-15T10:20:30.123456+02:00",
            "0001-12-31T23:59:59.999Z",
            "9999-12-31T23:59:59.999Z",
        ] {
            let t = OffsetDateTime::parse(text, &Rfc3339).expect("valid");
            assert_eq!(format_rfc3339(t), expected(t), "{text}");
            assert_eq!(super::Rfc3339Millis(t).to_string(), expected(t));
            assert_eq!(
                serde_json::to_string(&super::Rfc3339Millis(t)).expect("json"),
                format!("\"{}\"", expected(t))
            );
        }
    }

    #[test]
    fn bad_timestamp_and_uuid_are_invalid_values() {
        let err = parse(&GOOD.replace("2026-01-15T10:20:30.123Z", "yesterday")).unwrap_err();
        assert!(err.to_string().starts_with("timestamp:"), "{err}");
        let err = parse(&GOOD.replace("0190f6d2-7c3a", "zz")).unwrap_err();
        assert!(err.to_string().starts_with("event_id:"), "{err}");
    }
}
