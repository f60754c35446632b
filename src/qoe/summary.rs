//! The `session.summary` event: the envelope of the session's first event (in order)
//! and the session's metrics in `data`. It is built as JSON text and parsed like a
//! client's event, so it is a valid `player-event/1` event by construction.

use super::metrics::{Fact, Metrics};
use crate::event::{Event, EventError, Rfc3339Millis, StreamType, SCHEMA_VERSION};
use serde::Serialize;
use serde_json::value::RawValue;
use std::sync::Arc;
use time::OffsetDateTime;
use xxhash_rust::xxh3::xxh3_128;

pub const SUMMARY_TYPE: &str = "session.summary";

/// The bounded labels of the fleet QoE metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Labels {
    pub stream_type: &'static str,
    pub platform: &'static str,
}

/// Player platforms kept as they are in metric labels; anything else is `other`.
const PLATFORMS: &[&str] = &[
    "web",
    "android",
    "ios",
    "ipados",
    "tvos",
    "android_tv",
    "fire_tv",
    "roku",
    "tizen",
    "webos",
    "chromecast",
    "playstation",
    "xbox",
    "windows",
    "macos",
    "linux",
];

/// A client's `context.player.platform` as a bounded label value.
pub fn platform_label(platform: Option<&str>) -> &'static str {
    let Some(platform) = platform.filter(|p| !p.is_empty()) else {
        return "unknown";
    };
    PLATFORMS
        .iter()
        .find(|known| known.eq_ignore_ascii_case(platform))
        .copied()
        .unwrap_or("other")
}

pub fn stream_type_label(stream_type: Option<StreamType>) -> &'static str {
    match stream_type {
        Some(StreamType::Vod) => "vod",
        Some(StreamType::Live) => "live",
        Some(StreamType::LiveDvr) => "live_dvr",
        Some(StreamType::Linear) => "linear",
        None => "unknown",
    }
}

/// What a summary takes from the session's first event in order: its `session`,
/// `user`, `content` and `context` as JSON text (smaller than the typed values), its
/// ingest source and the metric labels.
pub struct Envelope {
    pub order: (u32, i64, u64),
    json: Box<str>,
    pub source: Option<Arc<str>>,
    pub labels: Labels,
}

#[derive(Serialize)]
struct EnvelopeParts<'a> {
    session: &'a crate::event::Session,
    user: &'a crate::event::User,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a crate::event::Content>,
    #[serde(skip_serializing_if = "Option::is_none")]
    context: Option<&'a crate::event::Context>,
}

impl Envelope {
    pub fn of(event: &Event, fact: &Fact) -> Envelope {
        let body = &event.body;
        let parts = EnvelopeParts {
            session: &body.session,
            user: &body.user,
            content: body.content.as_ref(),
            context: body.context.as_ref(),
        };
        // Plain structs of strings and numbers: serializing cannot fail.
        let json = serde_json::to_string(&parts).unwrap_or_else(|_| "{}".into());
        Envelope {
            order: fact.order(),
            json: json.into_boxed_str(),
            source: event.source.clone(),
            labels: Labels {
                stream_type: stream_type_label(body.content.as_ref().and_then(|c| c.stream_type)),
                platform: platform_label(
                    body.context
                        .as_ref()
                        .and_then(|c| c.player.as_ref())
                        .and_then(|p| p.platform.as_deref()),
                ),
            },
        }
    }

    pub fn heap_bytes(&self) -> usize {
        self.json.len()
    }
}

/// `data` of a summary; the three values that may be unknown are written as `null`.
#[derive(Serialize)]
struct Data<'a> {
    outcome: &'static str,
    playback_failure: bool,
    ended_by: &'static str,
    events: u32,
    startup_ms: Option<u64>,
    watched_ms: u64,
    playing_ms: u64,
    paused_ms: u64,
    rebuffer_count: u32,
    rebuffer_ms: u64,
    rebuffer_ratio: f64,
    seek_count: u32,
    seek_ms: u64,
    avg_bitrate_bps: Option<u64>,
    bitrate_upswitches: u32,
    bitrate_downswitches: u32,
    ad_breaks: u32,
    ads_started: u32,
    ads_completed: u32,
    error_code: Option<&'a str>,
}

/// The summary's `event_id`: a UUID (version 8) from the session id and its events, so
/// the same session summarized again (a replay) has the same id and vendors that
/// de-duplicate (Segment's `messageId`) count it once.
pub fn summary_event_id(session_id: &str, metrics: &Metrics, last: &Fact) -> String {
    // The last event's sequence and time, not its id: a folded last event has none kept.
    let key = format!(
        "{SUMMARY_TYPE}|{session_id}|{}|{}|{}",
        metrics.events,
        last.end_sequence(),
        last.end_ms()
    );
    uuid::Builder::from_custom_bytes(xxh3_128(key.as_bytes()).to_be_bytes())
        .into_uuid()
        .to_string()
}

/// The `session.summary` event of a session. `facts` are the session's facts in order
/// (see [`super::metrics::normalize`]); its `timestamp` is the last one's, so vendors
/// place it at the session's end; `received_at` is when the relay made it.
pub fn build(
    session_id: &str,
    envelope: &Envelope,
    facts: &[Fact],
    metrics: &Metrics,
    error_code: Option<&str>,
    received_at: OffsetDateTime,
) -> Result<Event, EventError> {
    let last = facts.last().copied().unwrap_or(Fact {
        id: 0,
        at_ms: received_at.unix_timestamp() * 1000,
        sequence: 0,
        bitrate_bps: 0,
        run: 0,
        span_ms: 0,
        kind: super::metrics::Kind::Other,
        flags: 0,
    });
    let timestamp =
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(last.end_ms()) * 1_000_000)
            .unwrap_or(received_at);
    let data = Data {
        outcome: metrics.outcome.as_str(),
        playback_failure: metrics.playback_failure,
        ended_by: metrics.ended_by.as_str(),
        events: metrics.events,
        startup_ms: metrics.startup_ms,
        watched_ms: metrics.watched_ms,
        playing_ms: metrics.playing_ms,
        paused_ms: metrics.paused_ms,
        rebuffer_count: metrics.rebuffer_count,
        rebuffer_ms: metrics.rebuffer_ms,
        // Six decimals say enough and keep payloads readable.
        rebuffer_ratio: (metrics.rebuffer_ratio * 1e6).round() / 1e6,
        seek_count: metrics.seek_count,
        seek_ms: metrics.seek_ms,
        avg_bitrate_bps: metrics.avg_bitrate_bps,
        bitrate_upswitches: metrics.bitrate_upswitches,
        bitrate_downswitches: metrics.bitrate_downswitches,
        ad_breaks: metrics.ad_breaks,
        ads_started: metrics.ads_started,
        ads_completed: metrics.ads_completed,
        error_code,
    };
    let data = serde_json::to_string(&data).unwrap_or_else(|_| "{}".into());
    // `json` is an object: splice its members in after the event's own keys.
    let members = envelope
        .json
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .unwrap_or("");
    let text = format!(
        "{{\"schema\":\"{SCHEMA_VERSION}\",\"event_id\":\"{}\",\"type\":\"{SUMMARY_TYPE}\",\"timestamp\":\"{}\",{members},\"data\":{data}}}",
        summary_event_id(session_id, metrics, &last),
        Rfc3339Millis(timestamp),
    );
    // The fast path takes it (it is well-formed by construction); the checked one says
    // what is wrong if it ever does not.
    let mut event = match Event::from_text_fast(&text, received_at) {
        Some(parsed) => parsed?,
        None => {
            let raw: Box<RawValue> =
                serde_json::from_str(&text).map_err(|_| EventError::NotAnObject)?;
            Event::from_json(&raw, received_at)?
        }
    };
    event.source = envelope.source.clone();
    Ok(event)
}
