//! What the hot-path benchmarks (`micro`, `instructions`) share: a config with one
//! destination of each vendor, and the fixture's events as ingest and the translators
//! see them.

use playrelay::config::{self, Config};
use playrelay::event::{parse_body, BodyFormat, BodyLimits, Event};
use std::path::Path;
use time::OffsetDateTime;

pub const FIXTURE: &str = include_str!("../../tests/fixtures/sessions.ndjson");

const ROUTES: &str = r#"
[server]
listen = "127.0.0.1:0"

[destinations.segment]
type = "segment"
write_key = "bench-write-key"
endpoint = "http://127.0.0.1:9"

[destinations.ga4]
type = "ga4"
measurement_id = "G-BENCH"
api_secret = "bench-api-secret"
endpoint = "http://127.0.0.1:9"

[destinations.tealium]
type = "tealium"
account = "bench"
profile = "main"
endpoint = "http://127.0.0.1:9"

[destinations.webhook]
type = "webhook"
endpoint = "http://127.0.0.1:9/events"

[[routes]]
name = "everything"
match = { types = ["*"] }
to = ["segment", "ga4", "tealium", "webhook"]
"#;

pub fn config() -> Config {
    config::load_str(ROUTES, Path::new("bench.toml"), &|_| None).expect("config")
}

/// The first `n` fixture events as one NDJSON body, as a player batch arrives.
pub fn ndjson(n: usize) -> String {
    FIXTURE.lines().take(n).collect::<Vec<_>>().join("\n")
}

/// `text` with its timestamp set to `now`: GA4 refuses events over 72 h old.
pub fn fresh(text: &str, now: OffsetDateTime) -> String {
    let mut value: serde_json::Value = serde_json::from_str(text).expect("json");
    value["timestamp"] = serde_json::json!(playrelay::event::format_rfc3339(now));
    value.to_string()
}

pub fn parse_one(text: &str, now: OffsetDateTime) -> Event {
    let mut parsed = parse_body(
        text.as_bytes(),
        BodyFormat::Json,
        BodyLimits::new(1000),
        now,
    )
    .expect("parses");
    parsed.events.pop().expect("valid")
}

/// A realistic batch: the first `n` fixture events in order (a few sessions, mostly
/// heartbeats, which GA4 and Tealium leave out), happening `now`.
pub fn batch(n: usize, now: OffsetDateTime) -> Vec<Event> {
    FIXTURE
        .lines()
        .take(n)
        .map(|line| parse_one(&fresh(line, now), now))
        .collect()
}
