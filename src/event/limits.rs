//! A cheap pre-scan of a request body, before anything is allocated per value: nesting
//! depth, string length, fields per object, items per array, duplicate keys, and the
//! number of events. It never allocates more than a few bytes per open object, and it
//! leaves syntax to serde: on bytes it does not understand it stops and says nothing.

use serde::Deserialize;
use std::borrow::Cow;

/// `[server.json]`: the shape a request's JSON may have.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct JsonLimits {
    /// Nesting inside one event; the event object itself is depth 1. At most 100.
    #[serde(default = "defaults::max_depth")]
    pub max_depth: usize,
    /// Length of one string (key or value) in bytes, as sent (escapes count as written).
    #[serde(default = "defaults::max_string_bytes")]
    pub max_string_bytes: usize,
    /// Keys in one object.
    #[serde(default = "defaults::max_fields")]
    pub max_fields: usize,
    /// Items in one array inside an event (the top-level array of events is limited by
    /// `max_events_per_request` instead).
    #[serde(default = "defaults::max_array_items")]
    pub max_array_items: usize,
}

mod defaults {
    pub fn max_depth() -> usize {
        32
    }
    pub fn max_string_bytes() -> usize {
        64 * 1024
    }
    pub fn max_fields() -> usize {
        256
    }
    pub fn max_array_items() -> usize {
        1_000
    }
}

impl Default for JsonLimits {
    fn default() -> Self {
        JsonLimits {
            max_depth: defaults::max_depth(),
            max_string_bytes: defaults::max_string_bytes(),
            max_fields: defaults::max_fields(),
            max_array_items: defaults::max_array_items(),
        }
    }
}

/// Which limit a body broke, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitError {
    /// `at` is the event (`[3]`, `line 3`) and the path inside it.
    Shape {
        at: String,
        message: String,
    },
    TooManyEvents,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Object,
    Array,
}

struct Frame<'a> {
    kind: Kind,
    /// Items so far (array) or keys so far (object).
    count: usize,
    /// Object: the next string is a key.
    expect_key: bool,
    /// Object: the last key read, for paths.
    key: &'a [u8],
    /// Object: where its keys start in [`Scratch::keys`].
    keys_from: usize,
    /// The array of events at the top of a JSON body: counted against `max_events`,
    /// not against depth or `max_array_items`.
    batch: bool,
}

/// What the scan needs beyond the text, kept across the lines of one NDJSON body so
/// that a body costs a few allocations, not one per object.
#[derive(Default)]
pub(crate) struct Scratch<'a> {
    stack: Vec<Frame<'a>>,
    /// The keys of every open object, innermost last; an object's keys are dropped
    /// when it closes.
    keys: Vec<Cow<'a, [u8]>>,
}

/// Checks one JSON text. `batch`: a top-level array holds events (JSON bodies);
/// `events` counts events so far (shared across NDJSON lines), `line` names NDJSON lines.
#[cfg(test)]
pub(crate) fn check(
    text: &[u8],
    limits: &JsonLimits,
    batch: bool,
    max_events: usize,
    events: &mut usize,
    line: Option<usize>,
) -> Result<(), LimitError> {
    check_with(
        &mut Scratch::default(),
        text,
        limits,
        batch,
        max_events,
        events,
        line,
    )
}

/// [`check`] with buffers the caller keeps across texts.
pub(crate) fn check_with<'a>(
    scratch: &mut Scratch<'a>,
    text: &'a [u8],
    limits: &JsonLimits,
    batch: bool,
    max_events: usize,
    events: &mut usize,
    line: Option<usize>,
) -> Result<(), LimitError> {
    scratch.stack.clear();
    scratch.keys.clear();
    let Scratch { stack, keys } = scratch;
    let mut i = 0;
    let mut top_values = 0usize;
    // Trailing garbage after a JSON body is serde's error to report, not ours. Checked
    // only where a top-level value ends, not at every byte.
    let ends_at_second_value = line.is_none() && batch;
    while i < text.len() {
        let byte = text[i];
        match byte {
            b' ' | b'\t' | b'\n' | b'\r' | b':' => i += 1,
            b',' => {
                if let Some(frame) = stack.last_mut() {
                    if frame.kind == Kind::Object {
                        frame.expect_key = true;
                    }
                }
                i += 1;
            }
            b'"' => {
                let start = i + 1;
                let Some((end, escaped)) = string_end(text, start) else {
                    return Ok(()); // unterminated: serde says so
                };
                let len = end - start;
                let is_key = stack
                    .last()
                    .is_some_and(|f| f.kind == Kind::Object && f.expect_key);
                if len > limits.max_string_bytes {
                    let what = if is_key { "key" } else { "string" };
                    return Err(shape(
                        stack,
                        line,
                        format!(
                            "{what} is {len} bytes, more than json.max_string_bytes ({})",
                            limits.max_string_bytes
                        ),
                    ));
                }
                if is_key {
                    let raw = &text[start..end];
                    let frame = stack.last_mut().expect("checked above");
                    frame.expect_key = false;
                    frame.count += 1;
                    frame.key = raw;
                    if frame.count > limits.max_fields {
                        return Err(shape(
                            stack,
                            line,
                            format!(
                                "object has more than json.max_fields ({}) keys",
                                limits.max_fields
                            ),
                        ));
                    }
                    keys.push(if escaped {
                        unescape(&text[start - 1..=end], raw)
                    } else {
                        Cow::Borrowed(raw)
                    });
                    i = end + 1;
                    // Most keys are followed by their colon: one pass of the loop less.
                    if text.get(i) == Some(&b':') {
                        i += 1;
                    }
                } else {
                    value_starts(stack, limits, line, max_events, events)?;
                    if stack.is_empty() {
                        top_values += 1;
                        if top_values > 1 && ends_at_second_value {
                            return Ok(());
                        }
                    }
                    i = end + 1;
                    i = past_comma(stack, text, i);
                }
            }
            b'{' | b'[' => {
                value_starts(stack, limits, line, max_events, events)?;
                let kind = if byte == b'{' {
                    Kind::Object
                } else {
                    Kind::Array
                };
                let is_batch = batch && stack.is_empty() && kind == Kind::Array;
                if stack.is_empty() {
                    top_values += 1;
                    if !is_batch {
                        count_event(events, max_events)?;
                    }
                }
                stack.push(Frame {
                    kind,
                    count: 0,
                    expect_key: kind == Kind::Object,
                    key: b"",
                    keys_from: keys.len(),
                    batch: is_batch,
                });
                // Only the bottom frame can be the batch.
                let depth = stack.len() - usize::from(stack[0].batch);
                if depth > limits.max_depth {
                    return Err(shape(
                        &stack[..stack.len() - 1],
                        line,
                        format!("nested deeper than json.max_depth ({})", limits.max_depth),
                    ));
                }
                i += 1;
            }
            b'}' | b']' => {
                let Some(frame) = stack.pop() else {
                    return Ok(());
                };
                if frame.kind == Kind::Object {
                    if let Some(key) = duplicate(&mut keys[frame.keys_from..]) {
                        let key = String::from_utf8_lossy(&key).into_owned();
                        return Err(shape(
                            stack,
                            line,
                            format!("duplicate key {:?}", truncate(&key)),
                        ));
                    }
                    keys.truncate(frame.keys_from);
                }
                if stack.is_empty() && top_values > 1 && ends_at_second_value {
                    return Ok(());
                }
                i = past_comma(stack, text, i + 1);
            }
            _ => {
                // A number, true, false, null, or garbage: skip to the next delimiter.
                value_starts(stack, limits, line, max_events, events)?;
                if stack.is_empty() {
                    top_values += 1;
                }
                let start = i;
                while i < text.len() && !is_delimiter(text[i]) {
                    i += 1;
                }
                let token = &text[start..i];
                if token
                    .first()
                    .is_some_and(|b| *b == b'-' || b.is_ascii_digit())
                {
                    // An unknown field is forwarded as written: a number no parser can
                    // hold (1e999) is refused here, not somewhere downstream.
                    if !plain_finite(token) {
                        let finite = std::str::from_utf8(token)
                            .ok()
                            .and_then(|t| t.parse::<f64>().ok())
                            .is_some_and(f64::is_finite);
                        if !finite || token.len() > limits.max_string_bytes {
                            return Err(shape(stack, line, "number out of range".to_string()));
                        }
                    }
                }
                if stack.is_empty() && top_values > 1 && ends_at_second_value {
                    return Ok(());
                }
                i = past_comma(stack, text, i);
            }
        }
    }
    Ok(())
}

/// Most values are followed by their comma: it is taken here, as the loop's `,` arm
/// would, to spare the loop a pass.
fn past_comma(stack: &mut [Frame], text: &[u8], i: usize) -> usize {
    if text.get(i) != Some(&b',') {
        return i;
    }
    if let Some(frame) = stack.last_mut() {
        if frame.kind == Kind::Object {
            frame.expect_key = true;
        }
    }
    i + 1
}

fn is_delimiter(byte: u8) -> bool {
    matches!(
        byte,
        b' ' | b'\t' | b'\n' | b'\r' | b',' | b':' | b']' | b'}' | b'[' | b'{' | b'"'
    )
}

/// `-?[0-9]+(\.[0-9]+)?` of at most 300 characters: finite whatever the digits, and
/// well within `max_string_bytes`' floor, so most numbers skip the float parse.
fn plain_finite(token: &[u8]) -> bool {
    if token.len() > 300 {
        return false;
    }
    let digits = token.strip_prefix(b"-").unwrap_or(token);
    let (int, frac) = match digits.iter().position(|b| *b == b'.') {
        Some(dot) => (&digits[..dot], Some(&digits[dot + 1..])),
        None => (digits, None),
    };
    let all_digits = |part: &[u8]| !part.is_empty() && part.iter().all(u8::is_ascii_digit);
    all_digits(int) && frac.is_none_or(all_digits)
}

fn count_event(events: &mut usize, max_events: usize) -> Result<(), LimitError> {
    *events += 1;
    if *events > max_events {
        return Err(LimitError::TooManyEvents);
    }
    Ok(())
}

/// Counts a value that starts inside the current container.
fn value_starts(
    stack: &mut [Frame],
    limits: &JsonLimits,
    line: Option<usize>,
    max_events: usize,
    events: &mut usize,
) -> Result<(), LimitError> {
    let Some(frame) = stack.last_mut() else {
        return Ok(());
    };
    if frame.kind != Kind::Array {
        return Ok(());
    }
    frame.count += 1;
    if frame.batch {
        return count_event(events, max_events);
    }
    if frame.count > limits.max_array_items {
        return Err(shape(
            stack,
            line,
            format!(
                "array has more than json.max_array_items ({}) items",
                limits.max_array_items
            ),
        ));
    }
    Ok(())
}

/// The index of the closing quote of a string whose content starts at `start`, and
/// whether the string holds an escape.
fn string_end(text: &[u8], start: usize) -> Option<(usize, bool)> {
    let mut i = start;
    let mut escaped = false;
    // Every byte of every event passes here. Eight bytes at a time: most strings are
    // short, where memchr's vector setup per call cost more than the search (a plain
    // byte loop over the first 24 bytes, tried before, cost 19% more than memchr).
    loop {
        let at = next_quote_or_backslash(text, i)?;
        if text[at] == b'"' {
            return Some((at, escaped));
        }
        escaped = true;
        i = at + 2;
    }
}

/// Where the first quote or backslash is, at or after `from`.
fn next_quote_or_backslash(text: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    const QUOTES: u64 = u64::from_ne_bytes([b'"'; 8]);
    const BACKSLASHES: u64 = u64::from_ne_bytes([b'\\'; 8]);
    // A byte of `x` is flagged when it is zero; a false flag can only sit above a true
    // one, so the lowest flag is exact.
    let zero_bytes = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let mut i = from;
    while let Some(word) = text.get(i..i + 8) {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        let word = u64::from_le_bytes(bytes);
        let found = zero_bytes(word ^ QUOTES) | zero_bytes(word ^ BACKSLASHES);
        if found != 0 {
            return Some(i + found.trailing_zeros() as usize / 8);
        }
        i += 8;
    }
    text.get(i..)?
        .iter()
        .position(|b| *b == b'"' || *b == b'\\')
        .map(|at| i + at)
}

/// A key as its characters, so `"a"` and `"\u0061"` are the same key.
fn unescape<'a>(quoted: &'a [u8], raw: &'a [u8]) -> Cow<'a, [u8]> {
    match serde_json::from_slice::<String>(quoted) {
        Ok(text) => Cow::Owned(text.into_bytes()),
        Err(_) => Cow::Borrowed(raw),
    }
}

/// The smallest key that occurs twice, if any. Small objects (nearly all) are compared
/// pairwise without sorting; `keys` may be reordered.
fn duplicate(keys: &mut [Cow<'_, [u8]>]) -> Option<Vec<u8>> {
    if keys.len() < 2 {
        return None;
    }
    if keys.len() <= 16 {
        let any = (1..keys.len()).any(|j| keys[..j].iter().any(|k| *k == keys[j]));
        if !any {
            return None;
        }
    }
    keys.sort_unstable();
    keys.windows(2)
        .find(|w| w[0] == w[1])
        .map(|w| w[0].to_vec())
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Where the scan is: the event, then the path inside it.
fn shape(stack: &[Frame], line: Option<usize>, message: String) -> LimitError {
    let mut at = match line {
        Some(line) => format!("line {line}"),
        None => String::new(),
    };
    let mut path = String::new();
    for frame in stack {
        match frame.kind {
            Kind::Array if frame.batch => at = format!("[{}]", frame.count.saturating_sub(1)),
            Kind::Array => path.push_str(&format!("[{}]", frame.count.saturating_sub(1))),
            Kind::Object if frame.count > 0 => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(truncate(&String::from_utf8_lossy(frame.key)));
            }
            Kind::Object => {}
        }
    }
    // The innermost object's key is the one being read only when a value follows it.
    if let Some(frame) = stack.last() {
        if frame.kind == Kind::Object && frame.expect_key && frame.count > 0 {
            // Between keys: the path names the object, not its last key.
            if let Some(dot) = path.rfind('.') {
                path.truncate(dot);
            } else {
                path.clear();
            }
        }
    }
    let at = match (at.is_empty(), path.is_empty()) {
        (true, true) => "event".to_string(),
        (true, false) => path,
        (false, true) => at,
        (false, false) => format!("{at} {path}"),
    };
    LimitError::Shape { at, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str, limits: JsonLimits) -> Result<usize, LimitError> {
        let mut events = 0;
        check(text.as_bytes(), &limits, true, 10, &mut events, None).map(|()| events)
    }

    fn tight() -> JsonLimits {
        JsonLimits {
            max_depth: 3,
            max_string_bytes: 8,
            max_fields: 3,
            max_array_items: 2,
        }
    }

    fn message(result: Result<usize, LimitError>) -> String {
        match result {
            Err(LimitError::Shape { at, message }) => format!("{at}: {message}"),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn shapes_within_limits_pass_and_events_are_counted() {
        assert_eq!(
            run(r#"[{"a":{"b":[1,2]}},{"c":"12345678"}]"#, tight()),
            Ok(2)
        );
        assert_eq!(run(r#"{"a":1,"b":2,"c":3}"#, tight()), Ok(1));
    }

    #[test]
    fn each_limit_names_the_event_and_path() {
        assert_eq!(
            message(run(r#"[{}, {"a":{"b":{"c":{}}}}]"#, tight())),
            "[1] a.b.c: nested deeper than json.max_depth (3)"
        );
        assert_eq!(
            message(run(r#"[{"s":"123456789"}]"#, tight())),
            "[0] s: string is 9 bytes, more than json.max_string_bytes (8)"
        );
        assert_eq!(
            message(run(r#"{"a":1,"b":2,"c":3,"d":4}"#, tight())),
            "d: object has more than json.max_fields (3) keys"
        );
        assert_eq!(
            message(run(r#"{"p":{"tags":[1,2,3]}}"#, tight())),
            "p.tags[2]: array has more than json.max_array_items (2) items"
        );
        assert_eq!(
            message(run(r#"[{"a":1,"\u0061":2}]"#, tight())),
            "[0]: duplicate key \"a\""
        );
        assert_eq!(
            message(run(r#"{"u":{"id":"x","id":"y"}}"#, tight())),
            "u: duplicate key \"id\""
        );
    }

    #[test]
    fn the_smallest_duplicate_key_is_named_whatever_the_object_size() {
        let limits = JsonLimits::default();
        assert_eq!(
            message(run(r#"{"b":1,"a":2,"b":3,"a":4}"#, limits)),
            "event: duplicate key \"a\""
        );
        let mut keys: Vec<String> = (0..20).map(|i| format!("\"k{i:02}\":{i}")).collect();
        keys.push("\"k07\":0".into());
        keys.push("\"k03\":0".into());
        let big = format!("{{{}}}", keys.join(","));
        assert_eq!(message(run(&big, limits)), "event: duplicate key \"k03\"");
        // Keys of a closed object are not the next sibling's.
        assert_eq!(run(r#"[{"a":{"x":1},"b":{"x":2}},{"x":3}]"#, limits), Ok(2));
    }

    #[test]
    fn string_ends_are_found_short_or_long_with_escapes_anywhere() {
        let reference = |text: &[u8], start: usize| {
            let mut i = start;
            let mut escaped = false;
            while i < text.len() {
                match text[i] {
                    b'"' => return Some((i, escaped)),
                    b'\\' => {
                        escaped = true;
                        i += 2;
                    }
                    _ => i += 1,
                }
            }
            None
        };
        for len in 0..60 {
            for escape_at in [None, Some(0), Some(len / 2), Some(23), Some(24), Some(len)] {
                let mut text = vec![b'a'; len];
                if let Some(at) = escape_at.filter(|at| *at < len) {
                    text[at] = b'\\';
                }
                let closed = [b"\"".as_slice(), &text, b"\"x"].concat();
                let open = [b"\"".as_slice(), &text].concat();
                for text in [closed, open] {
                    assert_eq!(string_end(&text, 1), reference(&text, 1), "{text:?}");
                }
            }
        }
    }

    #[test]
    fn plain_numbers_skip_the_float_parse_and_others_do_not() {
        for plain in ["0", "-7", "12.50", "-0.001"] {
            assert!(plain_finite(plain.as_bytes()), "{plain}");
        }
        for other in ["1e5", "1.", ".5", "-", "1.2.3", "0x1"] {
            assert!(!plain_finite(other.as_bytes()), "{other}");
        }
        let huge = format!("[{{\"n\":{}}}]", "9".repeat(400));
        assert_eq!(
            message(run(&huge, JsonLimits::default())),
            "[0] n: number out of range"
        );
    }

    #[test]
    fn separators_are_read_alike_next_to_a_value_or_apart_from_it() {
        let limits = JsonLimits::default();
        for text in [
            r#"{"a":"x","b":1,"c":{},"a":[]}"#,
            r#"{ "a" : "x" , "b" : 1 , "c" : {} , "a" : [] }"#,
            "{\"a\"\n:\"x\"\n,\"b\":1\t,\"c\":{}\r\n,\"a\":[]}",
        ] {
            assert_eq!(
                message(run(text, limits)),
                "event: duplicate key \"a\"",
                "{text}"
            );
        }
        // A value's comma in an array does not make the next item a key.
        assert_eq!(run(r#"[{"a":["x",1,{},[]],"b":"x"}]"#, limits), Ok(1));
        // After the first whole value of a JSON body, the rest is serde's to refuse,
        // once a second value has ended.
        assert_eq!(run(r#"{"a":1} "x" {"a":1,"a":2}"#, limits), Ok(1));
        assert_eq!(run(r#"{"a":1} 2 {"a":1,"a":2}"#, limits), Ok(1));
        assert_eq!(run(r#"{"a":1} {} {"a":1,"a":2}"#, limits), Ok(2));
        assert_eq!(
            message(run(r#"{"a":1} {"a":1,"a":2}"#, limits)),
            "event: duplicate key \"a\""
        );
    }

    #[test]
    fn the_event_array_counts_against_max_events_only() {
        let many = format!("[{}]", ["{}"; 11].join(","));
        assert_eq!(run(&many, tight()), Err(LimitError::TooManyEvents));
        let tiny = format!("[{}]", vec!["1"; 100_000].join(","));
        assert_eq!(run(&tiny, tight()), Err(LimitError::TooManyEvents));
    }

    #[test]
    fn numbers_no_parser_can_hold_are_refused() {
        assert_eq!(
            message(run(r#"[{"big":1e999}]"#, tight())),
            "[0] big: number out of range"
        );
        assert_eq!(run(r#"[{"ok":-1.5e3}]"#, tight()), Ok(1));
    }

    #[test]
    fn garbage_never_panics() {
        for text in ["", "\"", "]]]", "{\"a", "[\"\\", "{,,,}", "\u{0}\u{ff}"] {
            let _ = run(text, tight());
        }
    }
}
