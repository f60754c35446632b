//! Request bodies → events. A body that is not well-formed as a whole is refused whole
//! (nothing half-parsed is forwarded); a well-formed body is judged event by event.

use super::limits::{check_with, JsonLimits, LimitError, Scratch};
use super::{Event, EventError};
use serde::Serialize;
use serde_json::value::RawValue;
use time::OffsetDateTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// One JSON object, or an array of them.
    Json,
    /// One JSON object per line.
    Ndjson,
}

#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub max_events: usize,
    /// The shape of the JSON, checked before any event is parsed.
    pub json: JsonLimits,
}

impl BodyLimits {
    pub fn new(max_events: usize) -> BodyLimits {
        BodyLimits {
            max_events,
            json: JsonLimits::default(),
        }
    }
}

#[derive(Debug, Default)]
pub struct ParsedBody {
    pub events: Vec<Event>,
    pub rejected: Vec<Rejection>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Rejection {
    /// Position of the event in the request: array index, or NDJSON record number (0-based).
    pub index: usize,
    pub error: String,
    #[serde(skip)]
    pub reason: &'static str,
}

/// Why a whole body was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum BodyError {
    #[error("body is not valid JSON: {message} at line {line} column {column}")]
    Syntax {
        message: String,
        line: usize,
        column: usize,
    },
    #[error("body must be a JSON object or an array of objects, found {found}")]
    NotEvents { found: &'static str },
    #[error("body holds more than {max} events")]
    TooManyEvents { max: usize },
    #[error("body is empty")]
    Empty,
    #[error("{at}: {message}")]
    Limit { at: String, message: String },
}

pub fn parse_body(
    body: &[u8],
    format: BodyFormat,
    limits: BodyLimits,
    received_at: OffsetDateTime,
) -> Result<ParsedBody, BodyError> {
    prescan(body, format, &limits)?;
    if let Some(parsed) = parse_fast(body, format, limits, received_at) {
        return Ok(parsed);
    }
    parse_checked(body, format, limits, received_at)
}

/// The common case in one pass per event: every record is a JSON object that serde
/// takes as a `PlayerEvent`. Whatever else (a syntax error, a wrong type, an array
/// body, too many events, invalid UTF-8) returns `None`, and [`parse_checked`] decides
/// with its exact errors. A record serde takes is well-formed JSON (unknown fields are
/// skipped with the same checks a `RawValue` gets), so when this returns `Some` the
/// checked path would have returned the same events and rejections.
fn parse_fast(
    body: &[u8],
    format: BodyFormat,
    limits: BodyLimits,
    received_at: OffsetDateTime,
) -> Option<ParsedBody> {
    let text = std::str::from_utf8(body).ok()?;
    let mut records: Vec<&str> = Vec::new();
    match format {
        BodyFormat::Ndjson => {
            for line in text.split('\n') {
                let line = line.trim_ascii();
                if !line.is_empty() {
                    records.push(line);
                }
            }
        }
        BodyFormat::Json => {
            // One object; arrays take the checked path.
            let object = text.trim_matches([' ', '\t', '\n', '\r']);
            if !object.starts_with('{') {
                return None;
            }
            records.push(object);
        }
    }
    if records.is_empty() || records.len() > limits.max_events {
        return None;
    }
    let mut parsed = ParsedBody {
        events: Vec::with_capacity(records.len()),
        rejected: Vec::new(),
    };
    for (index, raw) in records.into_iter().enumerate() {
        match Event::from_text_fast(raw, received_at)? {
            Ok(event) => parsed.events.push(event),
            Err(err) => parsed.rejected.push(rejection(index, &err)),
        }
    }
    Some(parsed)
}

/// Splits the body into records first (a body that is not well-formed as a whole is
/// refused whole), then judges each record, naming the field of any error.
fn parse_checked(
    body: &[u8],
    format: BodyFormat,
    limits: BodyLimits,
    received_at: OffsetDateTime,
) -> Result<ParsedBody, BodyError> {
    let records = match format {
        BodyFormat::Json => split_json(body)?,
        BodyFormat::Ndjson => split_ndjson(body)?,
    };
    if records.is_empty() {
        return Err(BodyError::Empty);
    }
    if records.len() > limits.max_events {
        return Err(BodyError::TooManyEvents {
            max: limits.max_events,
        });
    }
    let mut parsed = ParsedBody {
        events: Vec::with_capacity(records.len()),
        rejected: Vec::new(),
    };
    for (index, raw) in records.into_iter().enumerate() {
        match Event::from_json(raw, received_at) {
            Ok(event) => parsed.events.push(event),
            Err(err) => parsed.rejected.push(rejection(index, &err)),
        }
    }
    Ok(parsed)
}

/// The shape limits, over the whole body, before serde allocates anything per value.
fn prescan(body: &[u8], format: BodyFormat, limits: &BodyLimits) -> Result<(), BodyError> {
    let mut events = 0;
    let mut scratch = Scratch::default();
    let result = match format {
        BodyFormat::Json => check_with(
            &mut scratch,
            body,
            &limits.json,
            true,
            limits.max_events,
            &mut events,
            None,
        ),
        BodyFormat::Ndjson => lines(body).enumerate().try_for_each(|(i, line)| {
            check_with(
                &mut scratch,
                line,
                &limits.json,
                false,
                limits.max_events,
                &mut events,
                Some(i + 1),
            )
        }),
    };
    result.map_err(|e| match e {
        LimitError::TooManyEvents => BodyError::TooManyEvents {
            max: limits.max_events,
        },
        LimitError::Shape { at, message } => BodyError::Limit { at, message },
    })
}

/// The body split at every `\n`, as `split(|b| *b == b'\n')` does, a vector at a time.
fn lines(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(body);
    std::iter::from_fn(move || {
        let text = rest?;
        match memchr::memchr(b'\n', text) {
            Some(at) => {
                rest = Some(&text[at + 1..]);
                Some(&text[..at])
            }
            None => {
                rest = None;
                Some(text)
            }
        }
    })
}

fn rejection(index: usize, err: &EventError) -> Rejection {
    Rejection {
        index,
        error: err.to_string(),
        reason: err.reason(),
    }
}

fn split_json(body: &[u8]) -> Result<Vec<&RawValue>, BodyError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        None => Err(BodyError::Empty),
        Some(b'[') => serde_json::from_slice::<Vec<&RawValue>>(body).map_err(syntax_error),
        Some(b'{') => serde_json::from_slice::<&RawValue>(body)
            .map(|raw| vec![raw])
            .map_err(syntax_error),
        Some(_) => match serde_json::from_slice::<&RawValue>(body) {
            Ok(raw) => Err(BodyError::NotEvents {
                found: json_kind(raw.get()),
            }),
            Err(e) => Err(syntax_error(e)),
        },
    }
}

fn split_ndjson(body: &[u8]) -> Result<Vec<&RawValue>, BodyError> {
    let mut records = Vec::new();
    for (line_index, line) in lines(body).enumerate() {
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        let raw: &RawValue = serde_json::from_slice(line).map_err(|e| BodyError::Syntax {
            message: strip_position(&e.to_string()),
            line: line_index + 1,
            column: e.column(),
        })?;
        records.push(raw);
    }
    Ok(records)
}

fn syntax_error(e: serde_json::Error) -> BodyError {
    BodyError::Syntax {
        message: strip_position(&e.to_string()),
        line: e.line(),
        column: e.column(),
    }
}

fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

fn json_kind(text: &str) -> &'static str {
    match text.as_bytes().first() {
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENT: &str = r#"{"event_id":"0190f6d2-7c3a-7b1e-9a1e-3f2c8d1e4b55","type":"playback.paused","timestamp":"2026-01-15T10:20:30.123Z","session":{"id":"s1"},"user":{"anonymous_id":"a-1"}}"#;
    const LIMITS: BodyLimits = BodyLimits {
        max_events: 3,
        json: JsonLimits {
            max_depth: 32,
            max_string_bytes: 65536,
            max_fields: 256,
            max_array_items: 1000,
        },
    };

    fn parse(body: &str, format: BodyFormat) -> Result<ParsedBody, BodyError> {
        parse_body(body.as_bytes(), format, LIMITS, OffsetDateTime::UNIX_EPOCH)
    }

    #[test]
    fn single_object_array_and_ndjson_all_parse() {
        assert_eq!(
            parse(EVENT, BodyFormat::Json).map(|p| p.events.len()),
            Ok(1)
        );
        let array = format!("[{EVENT},{EVENT}]");
        assert_eq!(
            parse(&array, BodyFormat::Json).map(|p| p.events.len()),
            Ok(2)
        );
        let ndjson = format!("{EVENT}\n\r\n{EVENT}\r\n");
        let parsed = parse(&ndjson, BodyFormat::Ndjson).expect("ndjson");
        assert_eq!(parsed.events.len(), 2);
    }

    #[test]
    fn invalid_events_are_rejected_by_index() {
        let array = format!(r#"[{EVENT},{{"type":"x"}},7]"#);
        let parsed = parse(&array, BodyFormat::Json).expect("well-formed");
        assert_eq!(parsed.events.len(), 1);
        let indices: Vec<usize> = parsed.rejected.iter().map(|r| r.index).collect();
        assert_eq!(indices, vec![1, 2]);
        assert_eq!(parsed.rejected[1].error, "event is not a JSON object");
    }

    #[test]
    fn truncated_ndjson_names_the_line() {
        let body = format!("{EVENT}\n{}", &EVENT[..40]);
        let err = parse(&body, BodyFormat::Ndjson).unwrap_err();
        assert!(matches!(err, BodyError::Syntax { line: 2, .. }), "{err:?}");
    }

    #[test]
    fn malformed_json_and_scalars_are_refused_whole() {
        let err = parse("[{\"a\":1},", BodyFormat::Json).unwrap_err();
        assert!(matches!(err, BodyError::Syntax { line: 1, .. }), "{err:?}");
        let err = parse("\"hello\"", BodyFormat::Json).unwrap_err();
        assert_eq!(err, BodyError::NotEvents { found: "a string" });
        assert_eq!(parse("  ", BodyFormat::Json).unwrap_err(), BodyError::Empty);
    }

    /// The one-pass path must give what the checked path gives, whatever the body.
    #[test]
    fn fast_path_agrees_with_the_checked_path() {
        let bad_type = EVENT.replace("playback.paused", "playback.napping");
        let bad_field = EVENT.replace(r#""s1""#, "7");
        let cases: Vec<(String, BodyFormat)> = vec![
            (EVENT.to_string(), BodyFormat::Json),
            (format!(" \r\n{EVENT}\n "), BodyFormat::Json),
            (format!("\x0c{EVENT}"), BodyFormat::Json),
            (format!("{EVENT}\x0c"), BodyFormat::Json),
            (format!("{EVENT} x"), BodyFormat::Json),
            (format!("[{EVENT}]"), BodyFormat::Json),
            (format!("{EVENT}\n{bad_type}\n{EVENT}"), BodyFormat::Ndjson),
            (format!("{EVENT}\n{bad_field}"), BodyFormat::Ndjson),
            (format!("{EVENT}\n\n\r\n{EVENT}\r\n"), BodyFormat::Ndjson),
            (format!("{EVENT}\n[1,2]"), BodyFormat::Ndjson),
            (format!("{EVENT}\n{{\"a\":\"\\q\"}}"), BodyFormat::Ndjson),
            (format!("{EVENT}\n{}", &EVENT[..40]), BodyFormat::Ndjson),
            (
                EVENT.replace(r#""s1"}"#, r#""s1"},"x":{"y":[1,"\u00e9",{"z":null}]}"#),
                BodyFormat::Ndjson,
            ),
            (
                EVENT.replace(r#""s1"}"#, "\"s1\"},\"x\":\"a\u{1}b\""),
                BodyFormat::Ndjson,
            ),
            (
                format!("{EVENT}\n{EVENT}\n{EVENT}\n{EVENT}"),
                BodyFormat::Ndjson,
            ),
            ("\n \n".to_string(), BodyFormat::Ndjson),
        ];
        let summary = |r: Result<ParsedBody, BodyError>| {
            r.map(|p| {
                let events: Vec<(String, String)> = p
                    .events
                    .iter()
                    .map(|e| (e.raw_json().to_string(), format!("{:?}", e.body)))
                    .collect();
                (events, p.rejected)
            })
        };
        for (body, format) in cases {
            let at = OffsetDateTime::UNIX_EPOCH;
            assert_eq!(
                summary(parse_body(body.as_bytes(), format, LIMITS, at)),
                summary(parse_checked(body.as_bytes(), format, LIMITS, at)),
                "{body:?}"
            );
        }
        let invalid_utf8 = [EVENT.as_bytes(), b"\n{\"a\":\"\xff\"}"].concat();
        assert!(parse_body(
            &invalid_utf8,
            BodyFormat::Ndjson,
            LIMITS,
            OffsetDateTime::UNIX_EPOCH
        )
        .is_err());
    }

    #[test]
    fn lines_split_as_slice_split_does() {
        for body in ["", "\n", "a", "a\n", "\na", "a\nb", "a\n\nb\n", "\n\n"] {
            let ours: Vec<&[u8]> = lines(body.as_bytes()).collect();
            let std: Vec<&[u8]> = body.as_bytes().split(|b| *b == b'\n').collect();
            assert_eq!(ours, std, "{body:?}");
        }
    }

    #[test]
    fn too_many_events_is_refused() {
        let body = format!("[{EVENT},{EVENT},{EVENT},{EVENT}]");
        let err = parse(&body, BodyFormat::Json).unwrap_err();
        assert_eq!(err, BodyError::TooManyEvents { max: 3 });
    }
}
