//! The published JSON Schema (2020-12) of `player-event/1`, generated from the types in
//! [`super::types`] so the two cannot drift. `playrelay schema` prints it and the repo
//! carries it as `schema/player-event-1.schema.json` (tests/schema.rs keeps them equal).
//!
//! The helpers below fill in what the derive cannot see: the event type list (taken
//! from [`EventType::ALL`], so a new type shows up here by being added there), fields that
//! take a string or a number, and the cross-field rules the relay enforces.

use super::types::{EventType, PlayerEvent, SCHEMA_VERSION};
use schemars::generate::SchemaSettings;
use schemars::{json_schema, Schema, SchemaGenerator};
use serde_json::{json, Value};

/// The JSON Schema (draft 2020-12) of one `player-event/1` event.
pub fn player_event_schema() -> Schema {
    let generator = SchemaSettings::draft2020_12().into_generator();
    generator.into_root_schema_for::<PlayerEvent>()
}

/// The schema as the repo carries it: pretty JSON with a final newline.
pub fn player_event_schema_json() -> String {
    let mut text = serde_json::to_string_pretty(&player_event_schema())
        .unwrap_or_else(|_| unreachable!("a schema is plain JSON"));
    text.push('\n');
    text
}

/// When each contract type is sent (the THEOplayer / HTML5 source) and the `data` it
/// carries; `None` for a type that has not been described yet.
pub fn event_type_description(event_type: EventType) -> Option<&'static str> {
    Some(match event_type {
        EventType::SessionStarted => "A source is set (THEOplayer `sourcechange`, HTML5 `loadstart`): a new playback session.",
        EventType::PlaybackRequested => "First play intent after a source (`play`).",
        EventType::PlaybackStarted => "First frame (first `playing`). data: `startup_ms`.",
        EventType::PlaybackPaused => "`pause`, except the one right before the end.",
        EventType::PlaybackResumed => "`playing` after a pause.",
        EventType::PlaybackRebufferStarted => "`waiting` after the first frame, never while seeking or paused.",
        EventType::PlaybackRebufferEnded => "`playing` after a rebuffer. data: `duration_ms`.",
        EventType::PlaybackSeekStarted => "`seeking`. data: `from_ms`, `to_ms`.",
        EventType::PlaybackSeekEnded => "`seeked`. data: `duration_ms`.",
        EventType::PlaybackHeartbeat => "Every heartbeat interval (10 s by default) while playing.",
        EventType::PlaybackMilestone => "The position crosses 10, 25, 50, 75 or 90 % of the duration. data: `percent`.",
        EventType::PlaybackCompleted => "`ended` (never before a first frame).",
        EventType::PlaybackExited => "The viewer leaves before the end: source change, page unload, destroy. data: `reason`.",
        EventType::PlaybackInterrupted => "Playback stops unintentionally: backgrounded, offline, a call. data: `method`.",
        EventType::PlaybackError => "`error`, `segmentnotfound`, DRM errors; details in `error`.",
        EventType::QualityChanged => "The video rendition changes (THEOplayer `activequalitychanged`). data: `from_bitrate_bps`.",
        EventType::PlaybackRateChanged => "`ratechange`; the new rate is `playback.playback_rate`.",
        EventType::VolumeChanged => "`volumechange`; the new values are `playback.volume` and `playback.muted`.",
        EventType::PresentationChanged => "`presentationmodechange`; the new mode is `playback.presentation_mode`.",
        EventType::AdBreakStarted => "An ad break begins (`adbreakbegin`).",
        EventType::AdBreakEnded => "An ad break ends (`adbreakend`).",
        EventType::AdStarted => "An ad begins (`adbegin`).",
        EventType::AdCompleted => "An ad ends (`adend`).",
        EventType::AdQuartile => "An ad reaches a quartile (`adfirstquartile`, `admidpoint`, `adthirdquartile`). data: `quartile`.",
        EventType::AdSkipped => "The viewer skips an ad (`adskip`).",
        EventType::AdClicked => "The viewer clicks an ad.",
        EventType::AdImpression => "An ad impression is counted (`adimpression`).",
        EventType::AdError => "An ad fails (`aderror`); details in `error`.",
        EventType::SessionSummary => "Made by the relay when a session ends (docs/qoe.md): the session's envelope and its QoE metrics. data: `outcome`, `playback_failure`, `ended_by`, `events`, `startup_ms`, `watched_ms`, `playing_ms`, `paused_ms`, `rebuffer_count`, `rebuffer_ms`, `rebuffer_ratio`, `seek_count`, `seek_ms`, `avg_bitrate_bps`, `bitrate_upswitches`, `bitrate_downswitches`, `ad_breaks`, `ads_started`, `ads_completed`, `error_code`.",
    })
}

/// `type`: one of [`EventType::ALL`] (each with its description) or `custom.<name>`.
pub(crate) fn event_type(_: &mut SchemaGenerator) -> Schema {
    let mut choices: Vec<Value> = EventType::ALL
        .iter()
        .map(|ty| {
            let description = event_type_description(*ty)
                .map(str::to_string)
                .unwrap_or_else(|| format!("The `{ty}` event."));
            json!({ "const": ty.as_str(), "description": description })
        })
        .collect();
    choices.push(json!({
        "pattern": "^custom\\..+",
        "description": "An app-defined event: `custom.` followed by a name; `data` may hold anything."
    }));
    json_schema!({ "type": "string", "anyOf": choices })
}

/// `schema`: the contract version, only ever this one.
pub(crate) fn schema_version(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "enum": [SCHEMA_VERSION, null], "default": SCHEMA_VERSION })
}

/// Codes, seasons and builds: players send numbers or strings; both are kept as text.
pub(crate) fn string_or_number(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": ["string", "number", "null"] })
}

/// `user`: at least one of the two ids, non-empty.
pub(crate) fn user_any_of() -> Value {
    json!([
        { "required": ["user_id"], "properties": { "user_id": { "type": "string", "minLength": 1 } } },
        { "required": ["anonymous_id"], "properties": { "anonymous_id": { "type": "string", "minLength": 1 } } }
    ])
}

/// `ad.*` events carry `ad`; `*.error` events carry `error`.
pub(crate) fn conditional_requirements() -> Value {
    json!([
        {
            "if": { "required": ["type"], "properties": { "type": { "pattern": "^ad\\." } } },
            "then": { "required": ["ad"], "properties": { "ad": { "type": "object" } } }
        },
        {
            "if": { "required": ["type"], "properties": { "type": { "pattern": "\\.error$" } } },
            "then": { "required": ["error"], "properties": { "error": { "type": "object" } } }
        }
    ])
}
