//! `type = "tealium"`: Tealium Collect HTTP API — one event to `/event`, several events
//! of one visitor to `/bulk-event` (at most 10, with the account, profile, environment,
//! datasource and visitor id hoisted into `shared`, as Tealium's SDKs do).
//!
//! Every key is flat and period-free: nested data is joined with `_`, and periods in
//! custom property keys become `_`. Units: seconds (floored) for lengths and playheads,
//! kbps, volume 0–100 (0 when muted); sub-second durations keep ms with an `_ms` key.

use super::names::Unnamed;
use super::pack::{
    ad_type, endpoint_base, kbps, post, seconds, sendable, sound, Groups, Limits, Packed, Packer,
    Val,
};
use super::vendors::{self, Vendor, VendorConfig, VendorDefaults, VendorRate};
use super::{
    BatchLimits, BuildError, EventNames, Refusal, Translate, Translation, VendorRequest,
    VendorResponse, Verdict,
};
use crate::event::{AdInsertion, Event, EventType, PlaybackState, PresentationMode, Rfc3339Millis};
use http::header::{HeaderValue, CONTENT_ENCODING, CONTENT_TYPE};
use http::{HeaderMap, StatusCode};
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};
use std::borrow::Cow;
use time::OffsetDateTime;

/// `/bulk-event` takes at most 10 events.
pub const MAX_REQUEST_EVENTS: usize = 10;
/// Tealium rejects bodies over 1 MB; counted on the uncompressed JSON.
pub const MAX_BODY_BYTES: usize = 1_000_000;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Vocabulary {
    /// Tealium's "Basic video tracking" names (`video_start`, `video_milestone`, …).
    #[default]
    Basic,
    /// The mobile media module's names (`media_session_start`, `media_play`, …).
    Media,
}

/// Keys of `[destinations.NAME]` for `type = "tealium"` (the common keys are elsewhere).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TealiumConfig {
    pub account: String,
    pub profile: String,
    #[serde(default)]
    pub datasource: Option<String>,
    /// e.g. `prod`, `qa`, `dev`.
    #[serde(default)]
    pub environment: Option<String>,
    /// Host `collect-<region>.tealiumiq.com`; default `collect.tealiumiq.com`.
    #[serde(default)]
    pub region: Option<String>,
    /// Base URL override (tests, proxies); replaces the host.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub vocabulary: Vocabulary,
    /// Gzip request bodies (`Content-Encoding: gzip`), as Tealium's SDKs do.
    #[serde(default)]
    pub gzip: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TealiumError {
    #[error("account: must not be empty or contain whitespace")]
    Account,
    #[error("profile: must not be empty or contain whitespace")]
    Profile,
    #[error("region: {0:?} must be lowercase letters, digits and - (e.g. \"eu-central-1\")")]
    Region(String),
    #[error("endpoint: {0}")]
    Endpoint(String),
    #[error("datasource: must not be empty when set")]
    Datasource,
    #[error("environment: must not be empty when set")]
    Environment,
}

/// Tealium splits each batch by visitor (10 per request): the batch is what one
/// translation sorts. Its 100 events/s per account is 10 requests of 10 a second,
/// so 8 in flight is plenty.
pub static VENDOR: Vendor = Vendor {
    type_name: "tealium",
    defaults: VendorDefaults {
        batch: BatchLimits {
            max_events: 100,
            max_bytes: 512 * 1024,
        },
        max_concurrency: 8,
        rate_limit: Some(VendorRate {
            requests_per_second: None,
            events_per_second: Some(100),
        }),
    },
    parse: vendors::parse::<TealiumConfig>,
    example: "account = \"acme\"\nprofile = \"main\"",
};

impl VendorConfig for TealiumConfig {
    fn translator(
        &self,
        names: EventNames,
        properties: bool,
        limits: BatchLimits,
    ) -> Result<Box<dyn Translate>, BuildError> {
        vendors::boxed(TealiumTranslator::new(self, names, properties, limits))
    }
}

pub struct TealiumTranslator {
    event_url: String,
    bulk_url: String,
    headers: HeaderMap,
    names: EventNames,
    vocabulary: Vocabulary,
    pass_properties: bool,
    limits: Limits,
    gzip: bool,
    account: String,
    profile: String,
    environment: Option<String>,
    datasource: Option<String>,
    /// Length of the shared keys without the visitor id's JSON string.
    shared_base: usize,
}

/// The basic-vocabulary name of each `player-event/1` type; `None` is unmapped on purpose.
pub fn default_name(event_type: &str) -> Option<&'static str> {
    default_name_for(Vocabulary::Basic, event_type)
}

/// The name of each type in either vocabulary.
pub fn default_name_for(vocabulary: Vocabulary, event_type: &str) -> Option<&'static str> {
    EventType::parse(event_type).and_then(|ty| name_of(vocabulary, ty))
}

/// The name of each contract type in either vocabulary; `None` is unmapped on purpose.
pub fn name_of(vocabulary: Vocabulary, event_type: EventType) -> Option<&'static str> {
    let (basic, media) = match event_type {
        EventType::SessionStarted => ("video_load", "media_session_start"),
        EventType::PlaybackStarted => ("video_start", "media_play"),
        EventType::PlaybackPaused => ("video_pause", "media_pause"),
        EventType::PlaybackResumed => ("video_play", "media_play"),
        EventType::PlaybackRebufferStarted => ("video_buffer_start", "media_buffer_start"),
        EventType::PlaybackRebufferEnded => ("video_buffer_complete", "media_buffer_complete"),
        EventType::PlaybackSeekStarted => ("video_seek", "media_seek_start"),
        EventType::PlaybackSeekEnded => ("video_seek_complete", "media_seek_complete"),
        // Basic has no heartbeat (and 100 events/s per account goes fast); the media
        // module sends one.
        EventType::PlaybackHeartbeat => ("", "media_heartbeat"),
        EventType::PlaybackMilestone => ("video_milestone", "media_milestone"),
        EventType::PlaybackCompleted => ("video_complete", "media_session_end"),
        EventType::PlaybackExited => ("video_exit", "media_session_end"),
        EventType::PlaybackInterrupted => ("video_interrupt", "media_stop"),
        // The media module has no error, ad quartile, ad impression or ad error event
        // (MediaConstants.kt's `MediaEvent`): unmapped there.
        EventType::PlaybackError => ("video_error", ""),
        EventType::QualityChanged => ("video_bitrate_change", "media_bitrate_change"),
        EventType::AdBreakStarted => ("video_ad_break_start", "media_adbreak_start"),
        EventType::AdBreakEnded => ("video_ad_break_complete", "media_adbreak_complete"),
        EventType::AdStarted => ("video_ad_start", "media_ad_start"),
        EventType::AdQuartile => ("video_ad_quartile", ""),
        EventType::AdCompleted => ("video_ad_complete", "media_ad_complete"),
        EventType::AdSkipped => ("video_ad_skip", "media_ad_skip"),
        EventType::AdClicked => ("video_ad_click", "media_ad_click"),
        EventType::AdImpression => ("video_ad_impression", ""),
        EventType::AdError => ("video_ad_error", ""),
        // The relay's per-session QoE summary (no media-module counterpart: its own name).
        EventType::SessionSummary => ("video_session_summary", "media_session_summary"),
        // Unmapped in both: playback.requested, playback.rate_changed, volume.changed,
        // presentation.changed. Rename them in the `events` table to send them.
        EventType::PlaybackRequested
        | EventType::PlaybackRateChanged
        | EventType::VolumeChanged
        | EventType::PresentationChanged => ("", ""),
    };
    let name = match vocabulary {
        Vocabulary::Basic => basic,
        Vocabulary::Media => media,
    };
    (!name.is_empty()).then_some(name)
}

/// A key with every period replaced by `_` (Tealium keys must not contain periods).
pub fn clean_key(key: &str) -> Cow<'_, str> {
    if key.contains('.') {
        Cow::Owned(key.replace('.', "_"))
    } else {
        Cow::Borrowed(key)
    }
}

fn valid_region(region: &str) -> bool {
    !region.is_empty()
        && region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn valid_word(s: &str) -> bool {
    !s.is_empty() && !s.contains(char::is_whitespace)
}

impl TealiumTranslator {
    pub fn new(
        config: &TealiumConfig,
        names: EventNames,
        pass_properties: bool,
        limits: BatchLimits,
    ) -> Result<Self, TealiumError> {
        if !valid_word(&config.account) {
            return Err(TealiumError::Account);
        }
        if !valid_word(&config.profile) {
            return Err(TealiumError::Profile);
        }
        if config.datasource.as_deref().is_some_and(str::is_empty) {
            return Err(TealiumError::Datasource);
        }
        if config.environment.as_deref().is_some_and(str::is_empty) {
            return Err(TealiumError::Environment);
        }
        let base = match (&config.endpoint, &config.region) {
            (Some(endpoint), _) => endpoint_base(endpoint)
                .map_err(TealiumError::Endpoint)?
                .to_string(),
            (None, Some(region)) => {
                if !valid_region(region) {
                    return Err(TealiumError::Region(region.clone()));
                }
                format!("https://collect-{region}.tealiumiq.com")
            }
            (None, None) => "https://collect.tealiumiq.com".to_string(),
        };
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if config.gzip {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        let mut translator = TealiumTranslator {
            event_url: sendable(format!("{base}/event")).map_err(TealiumError::Endpoint)?,
            bulk_url: sendable(format!("{base}/bulk-event")).map_err(TealiumError::Endpoint)?,
            headers,
            names,
            vocabulary: config.vocabulary,
            pass_properties,
            limits: Limits {
                max_events: limits.max_events.clamp(1, MAX_REQUEST_EVENTS),
                max_items: usize::MAX,
                max_bytes: limits.max_bytes.min(MAX_BODY_BYTES),
            },
            gzip: config.gzip,
            account: config.account.clone(),
            profile: config.profile.clone(),
            environment: config.environment.clone(),
            datasource: config.datasource.clone(),
            shared_base: 0,
        };
        // `""` is the empty visitor id's JSON.
        translator.shared_base = translator.shared("").len() - 2;
        Ok(translator)
    }

    fn resolve<'a>(&'a self, event: &'a Event) -> Result<Cow<'a, str>, Unnamed> {
        self.resolve_type(event.event_type())
    }

    fn resolve_type<'a>(&'a self, ty: &'a str) -> Result<Cow<'a, str>, Unnamed> {
        self.names
            .resolve_custom(ty, default_name_for(self.vocabulary, ty), Cow::Borrowed)
    }

    /// The keys every event of a visitor shares, without braces:
    /// `"tealium_account":…,"tealium_profile":…,…,"tealium_visitor_id":…`.
    fn shared(&self, visitor_id: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        let mut entry = |k: &str, v: &str| {
            if !out.is_empty() {
                out.push(b',');
            }
            let _ = serde_json::to_writer(&mut out, k);
            out.push(b':');
            let _ = serde_json::to_writer(&mut out, v);
        };
        entry("tealium_account", &self.account);
        entry("tealium_profile", &self.profile);
        if let Some(env) = &self.environment {
            entry("tealium_environment", env);
        }
        if let Some(ds) = &self.datasource {
            entry("tealium_datasource", ds);
        }
        entry("tealium_visitor_id", visitor_id);
        out
    }

    /// One event alone: the shared keys and the event's keys in one flat object.
    fn single_body(shared: &[u8], item: &[u8]) -> Vec<u8> {
        let mut body = Vec::with_capacity(shared.len() + item.len() + 2);
        body.push(b'{');
        body.extend_from_slice(shared);
        body.push(b',');
        // `item` is an object that starts with `"tealium_event"`: drop its `{`.
        body.extend_from_slice(&item[1..]);
        body
    }

    /// One event alone goes to `/event` as a flat object; more to `/bulk-event`.
    fn request(&self, shared: &[u8], packed: Packed) -> VendorRequest {
        if let [index] = packed.events[..] {
            let body = Self::single_body(shared, packed.units());
            post(&self.event_url, &self.headers, body, vec![index], self.gzip)
        } else {
            post(
                &self.bulk_url,
                &self.headers,
                packed.body,
                packed.events,
                self.gzip,
            )
        }
    }
}

fn bulk_open(body: &mut Vec<u8>, shared: &[u8]) {
    body.reserve(16 * 1024);
    body.extend_from_slice(b"{\"shared\":{");
    body.extend_from_slice(shared);
    body.extend_from_slice(b"},\"events\":[");
}

impl Translate for TealiumTranslator {
    fn translate(&self, events: &[&Event], _sent_at: OffsetDateTime) -> Translation {
        let mut translation = Translation::default();
        // Events grouped by visitor in order of first appearance.
        // Each unit is an input index and its encoded event object.
        let mut groups: Groups<&str, (usize, Vec<u8>)> = Groups::new();
        // The shared keys' length for a visitor is `shared_base` plus the visitor id as
        // JSON: measured per event without building the shared keys each time.
        let mut visitor_json = Vec::with_capacity(64);
        for (index, event) in events.iter().enumerate() {
            let name = match self.resolve(event) {
                Ok(name) => name,
                Err(unnamed) => {
                    translation.refused.push(Refusal::unnamed(
                        index,
                        event.event_type(),
                        unnamed,
                        "tealium",
                    ));
                    continue;
                }
            };
            let Some(visitor) = visitor_id(event) else {
                translation.refused.push(Refusal::refused(
                    index,
                    "missing_visitor_id",
                    "tealium needs user.user_id or user.anonymous_id as tealium_visitor_id",
                ));
                continue;
            };
            let mut item = Vec::with_capacity(2048);
            let mut keys = fields(event, &name);
            if self.vocabulary == Vocabulary::Media {
                keys = media_fields(event, keys);
            }
            let flat = Flat {
                fields: keys,
                custom: if self.pass_properties {
                    event.body.properties.as_ref()
                } else {
                    None
                },
            };
            // Serializing into a Vec cannot fail: every map key is a string.
            let _ = serde_json::to_writer(&mut item, &flat);
            // The body this event makes when it travels alone to `/event`.
            visitor_json.clear();
            // Writing a string into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut visitor_json, visitor);
            let single = self.shared_base + visitor_json.len() + item.len() + 1;
            if single > self.limits.max_bytes {
                translation.refused.push(Refusal::refused(
                    index,
                    "oversize",
                    format!(
                        "event is about {single} bytes; tealium takes at most {} per request",
                        self.limits.max_bytes
                    ),
                ));
                continue;
            }
            groups.push(visitor, (index, item));
        }
        for (visitor, items) in groups.into_groups() {
            let shared = self.shared(visitor);
            // Even chunks: 11 events make 6 + 5, two bulk requests, rather than 10 + 1.
            let chunks = items.len().div_ceil(self.limits.max_events);
            let limits = Limits {
                max_events: items.len().div_ceil(chunks.max(1)),
                ..self.limits
            };
            let mut packer = Packer::new(limits, b"]}");
            for (index, item) in items {
                if let Some(full) = packer.push(index, &item, 1, |b| bulk_open(b, &shared)) {
                    translation.requests.push(self.request(&shared, full));
                }
            }
            if let Some(last) = packer.finish() {
                translation.requests.push(self.request(&shared, last));
            }
        }
        translation
    }

    /// 2xx delivered; 400 is a bad body (the reason is in `X-Error`), never retried;
    /// 408, 429 and 5xx retried; other 4xx rejected.
    fn classify(&self, response: &VendorResponse) -> Verdict {
        if response.status == StatusCode::BAD_REQUEST {
            return Verdict::Reject;
        }
        super::default_classify(response.status)
    }

    fn sends_type(&self, event_type: &str) -> bool {
        self.resolve_type(event_type).is_ok()
    }
}

/// `tealium_visitor_id`: stable per device, from `user.anonymous_id`, so a login does
/// not split the AudienceStream visitor in two (the known user travels as `user_id`);
/// `user.user_id` only when the event has no anonymous id.
pub fn visitor_id(event: &Event) -> Option<&str> {
    let user = &event.body.user;
    user.anonymous_id
        .as_deref()
        .filter(|s| !s.is_empty())
        .or(user.user_id.as_deref().filter(|s| !s.is_empty()))
}

/// The key the media module (Tealium/tealium-kotlin `MediaConstants.kt`) uses for one
/// of the relay's keys; `media_` + the same suffix for what the module has no key for;
/// `None` for keys the media vocabulary says another way (see [`media_fields`]).
pub fn media_key(key: &'static str) -> Option<&'static str> {
    Some(match key {
        // SessionKey
        "video_id" => "media_custom_id",
        "video_name" => "media_name",
        "video_length" => "media_duration",
        "video_platform" => "media_player_name",
        "video_channel" => "media_channel_name",
        "video_milestone" | "video_live" | "video_stream_type" | "video_presentation_mode" => {
            return None
        }
        // QoEKey
        "video_bitrate" => "media_qoe_bitrate",
        "video_startup_time_ms" => "media_qoe_startup_time",
        "video_framerate" => "media_qoe_frames_per_second",
        "video_dropped_frames" => "media_qoe_dropped_frames",
        "video_playback_rate" => "media_qoe_playback_speed",
        // AdKey
        "video_ad_id" => "media_ad_id",
        "video_ad_name" => "media_ad_name",
        "video_ad_length" => "media_ad_duration",
        "video_ad_position" => "media_ad_position",
        "video_ad_advertiser" => "media_ad_advertiser",
        "video_ad_creative_id" => "media_ad_creative_id",
        // AdBreakKey
        "video_ad_pod_id" => "media_ad_break_id",
        "video_ad_pod_index" => "media_ad_break_index",
        // Not in the module: the relay's own, under the module's prefix.
        "video_playhead" => "media_playhead",
        "video_url" => "media_url",
        "video_streaming_format" => "media_streaming_format",
        "video_description" => "media_description",
        "video_program" => "media_program",
        "video_season" => "media_season",
        "video_episode" => "media_episode",
        "video_genre" => "media_genre",
        "video_publisher" => "media_publisher",
        "video_provider" => "media_provider",
        "video_keywords" => "media_keywords",
        "video_airdate" => "media_airdate",
        "video_language" => "media_language",
        "video_state" => "media_playback_state",
        "video_buffer" => "media_buffer",
        "video_rendition_id" => "media_rendition_id",
        "video_width" => "media_width",
        "video_height" => "media_height",
        "video_codecs" => "media_codecs",
        "video_quality" => "media_quality",
        "video_volume" => "media_volume",
        "video_muted" => "media_muted",
        "video_cdn" => "media_cdn",
        "video_autoplay" => "media_autoplay",
        "video_event_duration_ms" => "media_event_duration_ms",
        "video_seek_from" => "media_seek_from",
        "video_seek_to" => "media_seek_to",
        "video_exit_reason" => "media_exit_reason",
        "video_interrupt_method" => "media_interrupt_method",
        "video_previous_bitrate" => "media_qoe_previous_bitrate",
        "video_ad_quartile" => "media_ad_quartile",
        "video_ad_system" => "media_ad_system",
        "video_ad_insertion" => "media_ad_insertion",
        "video_ad_playhead" => "media_ad_playhead",
        "video_ad_skip_offset" => "media_ad_skip_offset",
        "video_ad_type" => "media_ad_break_type",
        "video_ad_pod_size" => "media_ad_break_ad_count",
        "video_error_code" => "media_error_code",
        "video_error_category" => "media_error_category",
        "video_error_message" => "media_error_message",
        "video_error_fatal" => "media_error_fatal",
        "video_error_source" => "media_error_source",
        "video_error_http_status" => "media_error_http_status",
        "video_error_phase" => "media_error_phase",
        other => other,
    })
}

/// The basic vocabulary's keys in the media module's: each renamed by [`media_key`],
/// plus the session keys the module sends with every event (`media_uuid` = the
/// playback session, `media_type`, `media_stream_type`, `media_tracking_type`), the
/// milestone as the module writes it (`"25%"`) and the player state it knows
/// (`fullscreen`, `picture_in_picture`).
fn media_fields<'a>(
    event: &'a Event,
    basic: Vec<(&'static str, Val<'a>)>,
) -> Vec<(&'static str, Val<'a>)> {
    let body = &event.body;
    let mut out = Vec::with_capacity(basic.len() + 6);
    let mut session_keys_at = None;
    for (key, value) in basic {
        if let Some(renamed) = media_key(key) {
            out.push((renamed, value));
        }
        if key == "anonymous_id" || (key == "user_id" && session_keys_at.is_none()) {
            session_keys_at = Some(out.len());
        }
    }
    let content = body.content.as_ref();
    let live = content.is_none_or(|c| c.is_live());
    let stream_type = match content.and_then(|c| c.stream_type) {
        Some(crate::event::StreamType::Vod) => "vod",
        Some(crate::event::StreamType::Linear) => "linear",
        Some(_) => "live",
        None if live => "live",
        None => "vod",
    };
    let mut session = vec![
        ("media_uuid", Val::Str(body.session.id.as_str())),
        ("media_type", Val::Str("video")),
        ("media_stream_type", Val::Str(stream_type)),
        // Every significant event, the heartbeat and the milestones are sent.
        ("media_tracking_type", Val::Str("heartbeat_milestone")),
    ];
    if let Some(v) = body.data.as_ref().and_then(|d| d.percent) {
        session.push(("media_milestone", Val::Text(format!("{v}%"))));
    }
    let state = body
        .playback
        .as_ref()
        .and_then(|p| p.presentation_mode)
        .and_then(|m| match m {
            PresentationMode::Fullscreen => Some("fullscreen"),
            PresentationMode::Pip => Some("picture_in_picture"),
            PresentationMode::Inline => None,
        });
    if let Some(state) = state {
        session.push(("media_player_state", Val::Str(state)));
    }
    let at = session_keys_at.unwrap_or(out.len());
    out.splice(at..at, session);
    out
}

struct Flat<'a> {
    fields: Vec<(&'static str, Val<'a>)>,
    custom: Option<&'a Map<String, Value>>,
}

impl Serialize for Flat<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for (k, v) in &self.fields {
            map.serialize_entry(k, v)?;
        }
        if let Some(custom) = self.custom {
            let mut flat: Vec<(String, &Value)> = Vec::new();
            flatten_into(None, custom, &mut flat);
            let mut seen: Vec<&str> = Vec::with_capacity(flat.len());
            for (k, v) in &flat {
                // The relay's keys win, `tealium_*` keys are the relay's to set, and two
                // custom keys that flatten to the same key keep the first.
                if k.is_empty()
                    || k.starts_with("tealium_")
                    || self.fields.iter().any(|(known, _)| known == k)
                    || seen.contains(&k.as_str())
                {
                    continue;
                }
                seen.push(k);
                map.serialize_entry(k, v)?;
            }
        }
        map.end()
    }
}

/// Flattens custom properties: objects join keys with `_`, arrays of scalars stay
/// arrays, arrays holding objects or arrays are flattened by position (`key_0_x`).
fn flatten_into<'a>(
    prefix: Option<&str>,
    map: &'a Map<String, Value>,
    out: &mut Vec<(String, &'a Value)>,
) {
    for (k, v) in map {
        let key = match prefix {
            Some(p) => format!("{p}_{}", clean_key(k)),
            None => clean_key(k).into_owned(),
        };
        flatten_value(key, v, out);
    }
}

fn flatten_value<'a>(key: String, value: &'a Value, out: &mut Vec<(String, &'a Value)>) {
    match value {
        Value::Object(inner) => flatten_into(Some(&key), inner, out),
        Value::Array(items) if items.iter().any(|i| i.is_object() || i.is_array()) => {
            for (i, item) in items.iter().enumerate() {
                flatten_value(format!("{key}_{i}"), item, out);
            }
        }
        _ => out.push((key, value)),
    }
}

/// `session.summary`'s metrics as flat `video_*` keys (times in ms like
/// `video_startup_time_ms`, the bitrate in kbps like `video_bitrate`).
fn summary_fields<'a>(d: &'a crate::event::EventData, f: &mut Vec<(&'static str, Val<'a>)>) {
    if let Some(v) = d.outcome {
        f.push(("video_qoe_outcome", Val::Str(v.as_str())));
    }
    if let Some(v) = d.playback_failure {
        f.push(("video_playback_failure", Val::B(v)));
    }
    if let Some(v) = d.ended_by {
        f.push(("video_ended_by", Val::Str(v.as_str())));
    }
    let numbers = [
        ("video_session_events", d.events.map(u64::from)),
        ("video_watched_time_ms", d.watched_ms),
        ("video_playing_time_ms", d.playing_ms),
        ("video_paused_time_ms", d.paused_ms),
        ("video_rebuffer_count", d.rebuffer_count.map(u64::from)),
        ("video_rebuffer_time_ms", d.rebuffer_ms),
        ("video_seek_count", d.seek_count.map(u64::from)),
        ("video_seek_time_ms", d.seek_ms),
        ("video_average_bitrate", d.avg_bitrate_bps.map(kbps)),
        (
            "video_bitrate_upswitches",
            d.bitrate_upswitches.map(u64::from),
        ),
        (
            "video_bitrate_downswitches",
            d.bitrate_downswitches.map(u64::from),
        ),
        ("video_ad_breaks", d.ad_breaks.map(u64::from)),
        ("video_ads_started", d.ads_started.map(u64::from)),
        ("video_ads_completed", d.ads_completed.map(u64::from)),
    ];
    for (k, v) in numbers {
        if let Some(v) = v {
            f.push((k, Val::U(v)));
        }
    }
    if let Some(v) = d.rebuffer_ratio {
        f.push(("video_rebuffer_ratio", Val::F(v)));
    }
    if let Some(v) = d.error_code.as_deref() {
        f.push(("video_error_code", Val::Str(v)));
    }
}

fn fields<'a>(event: &'a Event, name: &'a str) -> Vec<(&'static str, Val<'a>)> {
    let body = &event.body;
    let mut f: Vec<(&'static str, Val<'a>)> = Vec::with_capacity(64);
    let s = |f: &mut Vec<(&'static str, Val<'a>)>, k: &'static str, v: &'a Option<String>| {
        if let Some(v) = v.as_deref() {
            f.push((k, Val::Str(v)));
        }
    };
    f.push(("tealium_event", Val::Str(name)));
    f.push(("event_id", Val::Str(&body.event_id)));
    f.push(("event_type", Val::Str(&body.event_type)));
    f.push(("event_timestamp", Val::Time(Rfc3339Millis(event.timestamp))));
    if let Some(v) = body.sequence {
        f.push(("event_sequence", Val::U(v)));
    }
    f.push(("session_id", Val::Str(&body.session.id)));
    s(&mut f, "player_session_id", &body.session.player_session_id);
    s(&mut f, "app_session_id", &body.session.app_session_id);
    s(&mut f, "user_id", &body.user.user_id);
    // The key Tealium's SDKs use for the known user (the visitor-stitching attribute).
    s(&mut f, "customer_id", &body.user.user_id);
    s(&mut f, "anonymous_id", &body.user.anonymous_id);
    let content = body.content.as_ref();
    let playback = body.playback.as_ref();
    let live = content.is_none_or(|c| c.is_live());
    if let Some(c) = content {
        s(&mut f, "video_id", &c.asset_id);
        s(&mut f, "video_name", &c.title);
        if let Some(d) = c.duration_ms.filter(|_| !live) {
            f.push(("video_length", Val::U(seconds(d))));
        }
    }
    if let Some(v) = playback.and_then(|p| p.position_ms) {
        f.push(("video_playhead", Val::U(seconds(v))));
    }
    if let Some(v) = body.data.as_ref().and_then(|d| d.percent) {
        f.push(("video_milestone", Val::U(v.into())));
    }
    let ctx = body.context.as_ref();
    let player = ctx.and_then(|c| c.player.as_ref());
    if let Some(p) = player {
        s(&mut f, "video_platform", &p.name);
    }
    f.push(("video_live", Val::B(live)));
    if let Some(c) = content {
        if let Some(t) = c.stream_type {
            let v = match t {
                crate::event::StreamType::Vod => "vod",
                crate::event::StreamType::Live => "live",
                crate::event::StreamType::LiveDvr => "live_dvr",
                crate::event::StreamType::Linear => "linear",
            };
            f.push(("video_stream_type", Val::Str(v)));
        }
        s(&mut f, "video_url", &c.url);
        s(&mut f, "video_streaming_format", &c.streaming_format);
        s(&mut f, "video_description", &c.description);
        s(&mut f, "video_program", &c.program);
        s(&mut f, "video_season", &c.season);
        s(&mut f, "video_episode", &c.episode);
        s(&mut f, "video_genre", &c.genre);
        s(&mut f, "video_publisher", &c.publisher);
        s(&mut f, "video_channel", &c.channel);
        s(&mut f, "video_provider", &c.provider);
        if let Some(v) = &c.keywords {
            f.push(("video_keywords", Val::Strs(v)));
        }
        s(&mut f, "video_airdate", &c.airdate);
        s(&mut f, "video_language", &c.language);
    }
    if let Some(p) = playback {
        if let Some(state) = p.state {
            let v = match state {
                PlaybackState::Starting => "starting",
                PlaybackState::Playing => "playing",
                PlaybackState::Paused => "paused",
                PlaybackState::Seeking => "seeking",
                PlaybackState::Rebuffering => "rebuffering",
                PlaybackState::Ended => "ended",
                PlaybackState::Error => "error",
            };
            f.push(("video_state", Val::Str(v)));
        }
        if let Some(v) = p.buffer_ms {
            f.push(("video_buffer", Val::U(seconds(v))));
        }
        if let Some(r) = &p.rendition {
            s(&mut f, "video_rendition_id", &r.id);
            if let Some(v) = r.bitrate_bps {
                f.push(("video_bitrate", Val::U(kbps(v))));
            }
            if let Some(v) = r.framerate {
                f.push(("video_framerate", Val::F(v)));
            }
            if let Some(v) = r.width {
                f.push(("video_width", Val::U(v.into())));
            }
            if let Some(v) = r.height {
                f.push(("video_height", Val::U(v.into())));
            }
            s(&mut f, "video_codecs", &r.codecs);
            s(&mut f, "video_quality", &r.label);
        }
        if let Some(v) = p.playback_rate {
            f.push(("video_playback_rate", Val::F(v)));
        }
        if let Some(v) = sound(p.volume, p.muted) {
            f.push(("video_volume", Val::U(v)));
        }
        if let Some(v) = p.muted {
            f.push(("video_muted", Val::B(v)));
        }
        if let Some(m) = p.presentation_mode {
            let v = match m {
                PresentationMode::Inline => "inline",
                PresentationMode::Fullscreen => "fullscreen",
                PresentationMode::Pip => "pip",
            };
            f.push(("video_presentation_mode", Val::Str(v)));
        }
        if let Some(v) = p.dropped_frames {
            f.push(("video_dropped_frames", Val::U(v)));
        }
        s(&mut f, "video_cdn", &p.cdn);
        if let Some(v) = p.autoplay {
            f.push(("video_autoplay", Val::B(v)));
        }
    }
    if let Some(d) = &body.data {
        if let Some(v) = d.startup_ms {
            f.push(("video_startup_time_ms", Val::U(v)));
        }
        if let Some(v) = d.duration_ms {
            f.push(("video_event_duration_ms", Val::U(v)));
        }
        if let Some(v) = d.from_ms {
            f.push(("video_seek_from", Val::U(seconds(v))));
        }
        if let Some(v) = d.to_ms {
            f.push(("video_seek_to", Val::U(seconds(v))));
        }
        s(&mut f, "video_exit_reason", &d.reason);
        s(&mut f, "video_interrupt_method", &d.method);
        if let Some(v) = d.from_bitrate_bps {
            f.push(("video_previous_bitrate", Val::U(kbps(v))));
        }
        if let Some(v) = d.quartile {
            f.push(("video_ad_quartile", Val::U(v.into())));
        }
    }
    if event.event_type() == crate::qoe::summary::SUMMARY_TYPE {
        if let Some(d) = &body.data {
            summary_fields(d, &mut f);
        }
    }
    if let Some(ad) = &body.ad {
        s(&mut f, "video_ad_id", &ad.ad_id);
        s(&mut f, "video_ad_creative_id", &ad.creative_id);
        s(&mut f, "video_ad_name", &ad.title);
        s(&mut f, "video_ad_advertiser", &ad.advertiser);
        s(&mut f, "video_ad_system", &ad.system);
        if let Some(i) = ad.insertion {
            let v = match i {
                AdInsertion::Csai => "csai",
                AdInsertion::Ssai => "ssai",
            };
            f.push(("video_ad_insertion", Val::Str(v)));
        }
        if let Some(v) = ad.duration_ms {
            f.push(("video_ad_length", Val::U(seconds(v))));
        }
        if let Some(v) = ad.position_ms {
            f.push(("video_ad_playhead", Val::U(seconds(v))));
        }
        if let Some(v) = ad.skip_offset_ms {
            f.push(("video_ad_skip_offset", Val::U(seconds(v))));
        }
        if let Some(pod) = &ad.pod {
            s(&mut f, "video_ad_pod_id", &pod.id);
            if let Some(v) = pod.index {
                f.push(("video_ad_pod_index", Val::U(v.into())));
            }
            if let Some(v) = pod.position {
                f.push(("video_ad_type", Val::Str(ad_type(v))));
            }
            if let Some(v) = pod.ad_count {
                f.push(("video_ad_pod_size", Val::U(v.into())));
            }
            if let Some(v) = pod.ad_position {
                f.push(("video_ad_position", Val::U(v.into())));
            }
        }
    }
    if let Some(e) = &body.error {
        s(&mut f, "video_error_code", &e.code);
        s(&mut f, "video_error_category", &e.category);
        s(&mut f, "video_error_message", &e.message);
        if let Some(v) = e.fatal {
            f.push(("video_error_fatal", Val::B(v)));
        }
        s(&mut f, "video_error_source", &e.source);
        if let Some(v) = e.http_status {
            f.push(("video_error_http_status", Val::U(v.into())));
        }
        s(&mut f, "video_error_phase", &e.phase);
    }
    if let Some(c) = ctx {
        if let Some(p) = player {
            s(&mut f, "player_name", &p.name);
            s(&mut f, "player_version", &p.version);
            s(&mut f, "player_platform", &p.platform);
        }
        if let Some(a) = &c.app {
            s(&mut f, "app_name", &a.name);
            s(&mut f, "app_version", &a.version);
            s(&mut f, "app_build", &a.build);
        }
        if let Some(d) = &c.device {
            s(&mut f, "device_type", &d.device_type);
            s(&mut f, "device_manufacturer", &d.manufacturer);
            s(&mut f, "device_model", &d.model);
            s(&mut f, "device_os_name", &d.os_name);
            s(&mut f, "device_os_version", &d.os_version);
        }
        s(&mut f, "user_agent", &c.user_agent);
        // The player's own, else the address the relay saw (after the `ip` rule).
        match (&c.ip, event.client_ip) {
            (Some(ip), _) => f.push(("ip", Val::Str(ip))),
            (None, Some(ip)) => f.push(("ip", Val::Text(ip.to_string()))),
            (None, None) => {}
        }
        s(&mut f, "locale", &c.locale);
        if let Some(p) = &c.page {
            s(&mut f, "page_url", &p.url);
            s(&mut f, "page_referrer", &p.referrer);
            s(&mut f, "page_title", &p.title);
        }
        if let Some(consent) = &c.consent {
            if let Some(v) = consent.analytics {
                f.push(("consent_analytics", Val::B(v)));
            }
            if let Some(v) = consent.advertising {
                f.push(("consent_advertising", Val::B(v)));
            }
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn config() -> TealiumConfig {
        TealiumConfig {
            account: "acme".into(),
            profile: "main".into(),
            datasource: None,
            environment: Some("prod".into()),
            region: None,
            endpoint: None,
            vocabulary: Vocabulary::Basic,
            gzip: false,
        }
    }

    const LIMITS: BatchLimits = BatchLimits {
        max_events: 1000,
        max_bytes: 10 << 20,
    };

    #[test]
    fn keys_lose_their_periods_and_nesting() {
        assert_eq!(clean_key("a.b.c"), "a_b_c");
        assert_eq!(clean_key("plain"), "plain");
        let props: Map<String, Value> =
            serde_json::from_str(r#"{"a.b":{"c.d":1,"e":[1,2]},"list":[{"x.y":true}],"n":null}"#)
                .expect("json");
        let mut flat = Vec::new();
        flatten_into(None, &props, &mut flat);
        let keys: Vec<&str> = flat.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, vec!["a_b_c_d", "a_b_e", "list_0_x_y", "n"]);
    }

    #[test]
    fn vocabularies_name_the_same_types() {
        assert_eq!(default_name("playback.started"), Some("video_start"));
        assert_eq!(default_name("playback.heartbeat"), None);
        assert_eq!(
            default_name_for(Vocabulary::Media, "playback.heartbeat"),
            Some("media_heartbeat")
        );
        assert_eq!(
            default_name_for(Vocabulary::Media, "ad.break_started"),
            Some("media_adbreak_start")
        );
        assert_eq!(default_name("playback.requested"), None);
    }

    #[test]
    fn region_picks_the_host_and_bad_values_name_the_field() {
        let mut c = config();
        c.region = Some("eu-central-1".into());
        let t = TealiumTranslator::new(&c, EventNames::default(), false, LIMITS).expect("ok");
        assert_eq!(
            t.bulk_url,
            "https://collect-eu-central-1.tealiumiq.com/bulk-event"
        );
        c.region = Some("EU 1".into());
        let err = TealiumTranslator::new(&c, EventNames::default(), false, LIMITS)
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(
                "region: \"EU 1\" must be lowercase letters, digits and - (e.g. \"eu-central-1\")"
            )
        );
        c.region = None;
        c.account = String::new();
        let err = TealiumTranslator::new(&c, EventNames::default(), false, LIMITS).err();
        assert_eq!(err, Some(TealiumError::Account));
    }

    #[test]
    fn classify_and_x_error() {
        let t =
            TealiumTranslator::new(&config(), EventNames::default(), false, LIMITS).expect("ok");
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-error",
            HeaderValue::from_static("missing tealium_account"),
        );
        let response = |code: u16, headers: HeaderMap| VendorResponse {
            status: StatusCode::from_u16(code).expect("status"),
            headers,
            body: Bytes::new(),
        };
        let bad = response(400, headers);
        assert_eq!(t.classify(&bad), Verdict::Reject);
        assert_eq!(
            crate::dest::stated_reason(&bad).as_deref(),
            Some("missing tealium_account")
        );
        assert_eq!(
            t.classify(&response(200, HeaderMap::new())),
            Verdict::Delivered
        );
        assert_eq!(t.classify(&response(429, HeaderMap::new())), Verdict::Retry);
        assert_eq!(t.classify(&response(408, HeaderMap::new())), Verdict::Retry);
        assert_eq!(t.classify(&response(502, HeaderMap::new())), Verdict::Retry);
        assert_eq!(
            t.classify(&response(403, HeaderMap::new())),
            Verdict::Reject
        );
    }
}
