//! `type = "ga4"`: Google Analytics 4 Measurement Protocol (`POST /mp/collect`).
//!
//! GA4 answers 2xx even for data it throws away, so every documented limit is enforced
//! here before sending: 25 events per request, one `client_id` and `user_id` per request,
//! 25 params per event, legal names, values ≤ 100 characters and only strings or
//! numbers, bodies under 130 kB, and timestamps at most 72 h old.
//!
//! Units: seconds (floored) for times, percent for progress; live durations are left out.

use super::engagement::EngagementClock;
use super::pack::{
    ad_type, endpoint_base, kbps, post, seconds, sendable, sound, Groups, Limits, Packed, Packer,
    Val,
};
use super::vendors::{self, Vendor, VendorConfig, VendorDefaults};
use super::{
    BatchLimits, BuildError, EventNames, NameOverride, Note, Refusal, Translate, Translation,
    VendorRequest, VendorResponse, Verdict,
};
use crate::event::{Event, EventType, PresentationMode};
use http::header::{HeaderValue, CONTENT_TYPE};
use http::HeaderMap;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::sync::Mutex;
use time::{Duration, OffsetDateTime};

pub const MAX_REQUEST_EVENTS: usize = 25;
pub const MAX_PARAMS: usize = 25;
pub const MAX_NAME_CHARS: usize = 40;
pub const MAX_VALUE_CHARS: usize = 100;
/// Bodies must be smaller than 130 kB.
pub const MAX_BODY_BYTES: usize = 130_000;
/// GA4 drops events older than 72 h.
pub const MAX_AGE: Duration = Duration::hours(72);
/// Clocks a little ahead are normal: such timestamps are clamped to `sent_at`. Further
/// ahead the time cannot be trusted and the event is refused (`in_future`).
pub const MAX_FUTURE_SKEW: Duration = Duration::minutes(10);

/// Event names GA4 reserves (Measurement Protocol reference).
pub const RESERVED_EVENT_NAMES: &[&str] = &[
    "ad_activeview",
    "ad_click",
    "ad_exposure",
    "ad_impression",
    "ad_query",
    "ad_reward",
    "adunit_exposure",
    "app_background",
    "app_clear_data",
    "app_exception",
    "app_remove",
    "app_store_refund",
    "app_store_subscription_cancel",
    "app_store_subscription_convert",
    "app_store_subscription_renew",
    "app_update",
    "app_upgrade",
    "dynamic_link_app_open",
    "dynamic_link_app_update",
    "dynamic_link_first_open",
    "error",
    "firebase_campaign",
    "first_open",
    "first_visit",
    "in_app_purchase",
    "notification_dismiss",
    "notification_foreground",
    "notification_open",
    "notification_receive",
    "os_update",
    "screen_view",
    "session_start",
    "session_start_with_rollout",
    "user_engagement",
];
pub const RESERVED_PREFIXES: &[&str] = &["ga_", "google_", "firebase_"];

/// Query values keep RFC 3986's unreserved characters; everything else is encoded.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

const GLOBAL_BASE: &str = "https://www.google-analytics.com";
const EU_BASE: &str = "https://region1.google-analytics.com";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ga4Region {
    #[default]
    Global,
    Eu,
}

/// Keys of `[destinations.NAME]` for `type = "ga4"` (the common keys are elsewhere).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Ga4Config {
    /// A web stream's id (`G-…`); events are sent with a `client_id`.
    #[serde(default)]
    pub measurement_id: Option<String>,
    /// An app stream's Firebase app id instead; events are sent with the app's
    /// `app_instance_id` (`context.firebase_app_instance_id`).
    #[serde(default)]
    pub firebase_app_id: Option<String>,
    pub api_secret: String,
    /// `global` (default, www.google-analytics.com) or `eu` (region1.google-analytics.com).
    #[serde(default)]
    pub region: Ga4Region,
    /// Base URL override (tests, proxies); replaces the region's host.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Send to the validation server (`/debug/mp/collect`), which records nothing and
    /// answers what is wrong; see [`Translate::findings`].
    #[serde(default)]
    pub validate: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Ga4Error {
    #[error("measurement_id: must not be empty")]
    EmptyMeasurementId,
    #[error(
        "measurement_id: give measurement_id (a web stream) or firebase_app_id (an app stream)"
    )]
    NoStream,
    #[error("firebase_app_id: give measurement_id or firebase_app_id, not both")]
    BothStreams,
    #[error("firebase_app_id: must not be empty")]
    EmptyFirebaseAppId,
    #[error("api_secret: must not be empty")]
    EmptyApiSecret,
    #[error("endpoint: {0}")]
    Endpoint(String),
    #[error("events.{event_type:?}: {name:?} is not a valid GA4 event name: {problem}")]
    EventName {
        event_type: String,
        name: String,
        problem: &'static str,
    },
}

/// GA4 splits each batch by client (25 events of one client per request): the batch
/// is what one translation sorts. It states no rate but each request carries few
/// events, so it needs many in flight.
pub static VENDOR: Vendor = Vendor {
    type_name: "ga4",
    defaults: VendorDefaults {
        batch: BatchLimits {
            max_events: 500,
            max_bytes: 512 * 1024,
        },
        max_concurrency: 256,
        rate_limit: None,
    },
    parse: vendors::parse::<Ga4Config>,
    example: "measurement_id = \"G-XXXXXXXXXX\"\napi_secret = \"ga4-api-secret\"",
};

impl VendorConfig for Ga4Config {
    fn translator(
        &self,
        names: EventNames,
        properties: bool,
        limits: BatchLimits,
    ) -> Result<Box<dyn Translate>, BuildError> {
        vendors::boxed(Ga4Translator::new(self, names, properties, limits))
    }

    fn secrets(&self) -> Vec<(&'static str, String)> {
        vec![("api_secret", self.api_secret.clone())]
    }
}

pub struct Ga4Translator {
    url: String,
    headers: HeaderMap,
    names: EventNames,
    pass_properties: bool,
    limits: Limits,
    secrets: Vec<String>,
    /// `client_id` (web stream) or `app_instance_id` (app stream).
    app_stream: bool,
    /// When each session's previous GA4 event was sent, for `engagement_time_msec`.
    engagement: Mutex<EngagementClock>,
}

/// The GA4 name of each `player-event/1` type; `None` is unmapped on purpose.
pub fn default_name(event_type: &str) -> Option<&'static str> {
    EventType::parse(event_type).and_then(name_of)
}

/// The GA4 name of each contract type; `None` is unmapped on purpose.
pub fn name_of(event_type: EventType) -> Option<&'static str> {
    Some(match event_type {
        EventType::PlaybackStarted => "video_start",
        EventType::PlaybackMilestone => "video_progress",
        EventType::PlaybackCompleted => "video_complete",
        EventType::PlaybackPaused => "video_pause",
        EventType::PlaybackResumed => "video_resume",
        EventType::PlaybackRebufferStarted => "video_buffer_start",
        EventType::PlaybackRebufferEnded => "video_buffer_end",
        EventType::PlaybackSeekStarted => "video_seek",
        EventType::PlaybackSeekEnded => "video_seek_complete",
        EventType::PlaybackExited => "video_exit",
        EventType::PlaybackInterrupted => "video_interrupt",
        // Never `error`: GA4 reserves it.
        EventType::PlaybackError => "video_error",
        EventType::QualityChanged => "video_quality_change",
        EventType::AdBreakStarted => "video_ad_break_start",
        EventType::AdBreakEnded => "video_ad_break_end",
        EventType::AdStarted => "video_ad_start",
        EventType::AdQuartile => "video_ad_progress",
        EventType::AdCompleted => "video_ad_complete",
        EventType::AdSkipped => "video_ad_skip",
        EventType::AdClicked => "video_ad_click",
        EventType::AdImpression => "video_ad_impression",
        EventType::AdError => "video_ad_error",
        // The relay's per-session QoE summary; GA4 has no recommended counterpart.
        EventType::SessionSummary => "video_session_summary",
        // Unmapped on purpose: session.started and playback.requested (no GA4 meaning
        // before the first frame), playback.heartbeat (every 10 s would spend the
        // property's event quota), playback.rate_changed, volume.changed,
        // presentation.changed. Rename them in the `events` table to send them.
        EventType::SessionStarted
        | EventType::PlaybackRequested
        | EventType::PlaybackHeartbeat
        | EventType::PlaybackRateChanged
        | EventType::VolumeChanged
        | EventType::PresentationChanged => return None,
    })
}

/// Why `name` cannot be a GA4 event or param name, if it cannot.
pub fn name_problem(name: &str, event: bool) -> Option<&'static str> {
    let mut chars = name.chars();
    if !chars.next().is_some_and(|c| c.is_ascii_alphabetic()) {
        return Some("must start with a letter");
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Some("only letters, digits and _ are allowed");
    }
    if name.len() > MAX_NAME_CHARS {
        return Some("longer than 40 characters");
    }
    if RESERVED_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return Some("starts with a reserved prefix (ga_, google_, firebase_)");
    }
    if event && RESERVED_EVENT_NAMES.contains(&name) {
        return Some("reserved by GA4");
    }
    None
}

/// Makes any text a legal GA4 name: other characters become `_`, a name that does not
/// start with a letter or is reserved gets `custom_` in front, and it is cut to 40.
pub fn legal_name(raw: &str, event: bool) -> Cow<'_, str> {
    if name_problem(raw, event).is_none() {
        return Cow::Borrowed(raw);
    }
    let mut name: String = raw
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let reserved = RESERVED_PREFIXES.iter().any(|p| name.starts_with(p))
        || (event && RESERVED_EVENT_NAMES.contains(&name.as_str()));
    if reserved || !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        name.insert_str(0, "custom_");
    }
    name.truncate(MAX_NAME_CHARS);
    Cow::Owned(name)
}

/// `s` cut to at most 100 characters (not bytes).
pub fn cut(s: &str) -> &str {
    if s.len() <= MAX_VALUE_CHARS {
        return s; // no more characters than bytes
    }
    match s.char_indices().nth(MAX_VALUE_CHARS) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A stable GA4 `session_id` when the event has no `session.app_session_id`: FNV-1a
/// (64 bit) of `session.player_session_id`, else of `session.id`, reduced to at most
/// 10 digits like the ids gtag.js makes. The same session always gets the same number.
pub fn derived_session_id(key: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash % 10_000_000_000
}

impl Ga4Translator {
    pub fn new(
        config: &Ga4Config,
        names: EventNames,
        pass_properties: bool,
        limits: BatchLimits,
    ) -> Result<Self, Ga4Error> {
        let (id_key, id) = match (&config.measurement_id, &config.firebase_app_id) {
            (Some(_), Some(_)) => return Err(Ga4Error::BothStreams),
            (None, None) => return Err(Ga4Error::NoStream),
            (Some(m), None) if m.trim().is_empty() => return Err(Ga4Error::EmptyMeasurementId),
            (None, Some(f)) if f.trim().is_empty() => return Err(Ga4Error::EmptyFirebaseAppId),
            (Some(m), None) => ("measurement_id", m),
            (None, Some(f)) => ("firebase_app_id", f),
        };
        if config.api_secret.trim().is_empty() {
            return Err(Ga4Error::EmptyApiSecret);
        }
        for (event_type, over) in names.overrides() {
            if let NameOverride::Rename(name) = over {
                if let Some(problem) = name_problem(name, true) {
                    return Err(Ga4Error::EventName {
                        event_type: event_type.clone(),
                        name: name.clone(),
                        problem,
                    });
                }
            }
        }
        let base = match &config.endpoint {
            Some(endpoint) => endpoint_base(endpoint).map_err(Ga4Error::Endpoint)?,
            None => match config.region {
                Ga4Region::Global => GLOBAL_BASE,
                Ga4Region::Eu => EU_BASE,
            },
        };
        let path = if config.validate {
            "/debug/mp/collect"
        } else {
            "/mp/collect"
        };
        let secret = utf8_percent_encode(&config.api_secret, QUERY_VALUE).to_string();
        let url = sendable(format!(
            "{base}{path}?{id_key}={}&api_secret={secret}",
            utf8_percent_encode(id, QUERY_VALUE)
        ))
        .map_err(Ga4Error::Endpoint)?;
        let mut secrets = vec![config.api_secret.clone()];
        if secret != config.api_secret {
            secrets.push(secret);
        }
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Ok(Ga4Translator {
            url,
            headers,
            names,
            pass_properties,
            limits: Limits {
                max_events: limits.max_events.clamp(1, MAX_REQUEST_EVENTS),
                max_items: usize::MAX,
                max_bytes: limits.max_bytes.min(MAX_BODY_BYTES - 1),
            },
            secrets,
            app_stream: config.firebase_app_id.is_some(),
            engagement: Mutex::new(EngagementClock::default()),
        })
    }

    fn resolve<'a>(&'a self, event: &'a Event) -> Result<Cow<'a, str>, super::names::Unnamed> {
        self.resolve_type(event.event_type())
    }

    fn resolve_type<'a>(&'a self, ty: &'a str) -> Result<Cow<'a, str>, super::names::Unnamed> {
        self.names
            .resolve_custom(ty, default_name(ty), |custom| legal_name(custom, true))
    }
}

/// GA4 takes only strings and numbers: a flag is `"true"` or `"false"`.
fn flag(b: bool) -> Val<'static> {
    Val::Str(if b { "true" } else { "false" })
}

/// The params of one event in priority order; [`MAX_PARAMS`] are kept, the rest dropped.
struct Params<'a>(Vec<(Cow<'a, str>, Val<'a>)>);

impl<'a> Params<'a> {
    fn push(&mut self, name: &'static str, value: Val<'a>) {
        self.0.push((Cow::Borrowed(name), value));
    }
    fn str(&mut self, name: &'static str, value: &'a Option<String>) {
        if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
            self.push(name, Val::Str(v));
        }
    }
}

impl Serialize for Params<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len().min(MAX_PARAMS)))?;
        for (k, v) in self.0.iter().take(MAX_PARAMS) {
            match v {
                Val::Str(v) => map.serialize_entry(k, cut(v))?,
                v => map.serialize_entry(k, v)?,
            }
        }
        map.end()
    }
}

/// The params of one event, in priority order (see docs/vendor-mappings.md): session
/// and engagement, GA4's own video params, the page, what the event type carries,
/// the rest of the player state, then custom properties.
fn params<'a>(event: &'a Event, engagement_msec: u64, pass_properties: bool) -> Params<'a> {
    let body = &event.body;
    let mut p = Params(Vec::with_capacity(40));
    if event.event_type() == crate::qoe::summary::SUMMARY_TYPE {
        summary_params(event, &mut p);
        return p;
    }
    match body.session.app_session_id.as_deref() {
        Some(id) if !id.is_empty() => match id.parse::<u64>() {
            Ok(n) => p.push("session_id", Val::U(n)),
            Err(_) => p.push("session_id", Val::Str(id)),
        },
        _ => {
            let key = body
                .session
                .player_session_id
                .as_deref()
                .unwrap_or(&body.session.id);
            p.push("session_id", Val::U(derived_session_id(key)));
        }
    }
    p.push("engagement_time_msec", Val::U(engagement_msec));
    let content = body.content.as_ref();
    let playback = body.playback.as_ref();
    let live = content.is_none_or(|c| c.is_live());
    let duration = content.and_then(|c| c.duration_ms).filter(|_| !live);
    let position = playback.and_then(|pb| pb.position_ms);
    if let Some(v) = position {
        p.push("video_current_time", Val::U(seconds(v)));
    }
    if let Some(d) = duration {
        p.push("video_duration", Val::U(seconds(d)));
    }
    let percent = body.data.as_ref().and_then(|d| d.percent).map(u64::from);
    let percent = percent.or_else(|| match (position, duration) {
        (Some(pos), Some(d)) if d > 0 => Some((pos.saturating_mul(100) / d).min(100)),
        _ => None,
    });
    if let Some(v) = percent {
        p.push("video_percent", Val::U(v));
    }
    if let Some(c) = content {
        p.str("video_title", &c.title);
    }
    let provider = content
        .and_then(|c| c.provider.as_deref())
        .or_else(|| {
            body.context
                .as_ref()
                .and_then(|c| c.player.as_ref())
                .and_then(|pl| pl.name.as_deref())
        })
        .filter(|v| !v.is_empty());
    if let Some(v) = provider {
        p.push("video_provider", Val::Str(v));
    }
    if let Some(c) = content {
        p.str("video_url", &c.url);
    }
    if let Some(v) = playback.and_then(|pb| pb.visible) {
        p.push("visible", flag(v));
    }
    if let Some(page) = body.context.as_ref().and_then(|c| c.page.as_ref()) {
        p.str("page_location", &page.url);
        p.str("page_referrer", &page.referrer);
        p.str("page_title", &page.title);
    }
    if let Some(c) = content {
        p.str("video_id", &c.asset_id);
    }
    if let Some(d) = &body.data {
        if let Some(v) = d.startup_ms {
            p.push("startup_time_msec", Val::U(v));
        }
        if let Some(v) = d.duration_ms {
            p.push("duration_msec", Val::U(v));
        }
        if let Some(v) = d.from_ms {
            p.push("seek_from_time", Val::U(seconds(v)));
        }
        if let Some(v) = d.to_ms {
            p.push("seek_to_time", Val::U(seconds(v)));
        }
        p.str("exit_reason", &d.reason);
        p.str("interrupt_method", &d.method);
        if let Some(v) = d.from_bitrate_bps {
            p.push("previous_bitrate", Val::U(kbps(v)));
        }
        if let Some(v) = d.quartile {
            p.push("ad_quartile", Val::U(v.into()));
        }
    }
    if let Some(e) = &body.error {
        p.str("error_code", &e.code);
        p.str("error_category", &e.category);
        p.str("error_message", &e.message);
        if let Some(v) = e.fatal {
            p.push("error_fatal", flag(v));
        }
        p.str("error_source", &e.source);
        if let Some(v) = e.http_status {
            p.push("error_http_status", Val::U(v.into()));
        }
        p.str("error_phase", &e.phase);
    }
    if let Some(ad) = &body.ad {
        p.str("ad_id", &ad.ad_id);
        p.str("ad_title", &ad.title);
        p.str("ad_advertiser", &ad.advertiser);
        p.str("ad_system", &ad.system);
        if let Some(pod) = &ad.pod {
            if let Some(pos) = pod.position {
                p.push("ad_type", Val::Str(ad_type(pos)));
            }
            if let Some(v) = pod.ad_position {
                p.push("ad_position", Val::U(v.into()));
            }
        }
        if let Some(v) = ad.duration_ms {
            p.push("ad_duration", Val::U(seconds(v)));
        }
        if let Some(v) = ad.position_ms {
            p.push("ad_current_time", Val::U(seconds(v)));
        }
    }
    let stream_type = match content.and_then(|c| c.stream_type) {
        Some(crate::event::StreamType::Vod) => Some("vod"),
        Some(crate::event::StreamType::Live) => Some("live"),
        Some(crate::event::StreamType::LiveDvr) => Some("live_dvr"),
        Some(crate::event::StreamType::Linear) => Some("linear"),
        None => None,
    };
    if let Some(v) = stream_type {
        p.push("video_stream_type", Val::Str(v));
    }
    if let Some(pb) = playback {
        if let Some(r) = &pb.rendition {
            if let Some(v) = r.bitrate_bps {
                p.push("video_bitrate", Val::U(kbps(v)));
            }
            p.str("video_quality", &r.label);
        }
        if let Some(v) = sound(pb.volume, pb.muted) {
            p.push("video_volume", Val::U(v));
        }
        if let Some(m) = pb.presentation_mode {
            p.push("video_fullscreen", flag(m == PresentationMode::Fullscreen));
        }
        if let Some(v) = pb.playback_rate {
            p.push("video_playback_rate", Val::F(v));
        }
    }
    if let Some(c) = content {
        p.str("video_genre", &c.genre);
    }
    if let Some(pl) = body.context.as_ref().and_then(|c| c.player.as_ref()) {
        p.str("player_name", &pl.name);
        p.str("player_version", &pl.version);
        p.str("player_platform", &pl.platform);
    }
    if pass_properties {
        if let Some(custom) = &body.properties {
            push_custom(&mut p, custom);
        }
    }
    p
}

/// `session.summary` within GA4's 25 params: the session, 4 dimensions to slice by and
/// its 19 metrics, all numbers (times in msec like `startup_time_msec`, the bitrate in
/// kbps like `video_bitrate`, `playback_failure` 0 or 1 so it sums as a custom metric)
/// except outcome, ended_by and error_code. Custom properties do not fit and are left out.
fn summary_params<'a>(event: &'a Event, p: &mut Params<'a>) {
    let body = &event.body;
    let key = body
        .session
        .player_session_id
        .as_deref()
        .unwrap_or(&body.session.id);
    match body.session.app_session_id.as_deref() {
        Some(id) if !id.is_empty() => match id.parse::<u64>() {
            Ok(n) => p.push("session_id", Val::U(n)),
            Err(_) => p.push("session_id", Val::Str(id)),
        },
        _ => p.push("session_id", Val::U(derived_session_id(key))),
    }
    // The session's watching was counted by its own events: the summary adds none
    // (GA4 wants the param present and above 0).
    p.push("engagement_time_msec", Val::U(1));
    let content = body.content.as_ref();
    if let Some(c) = content {
        p.str("video_id", &c.asset_id);
        p.str("video_title", &c.title);
    }
    p.push(
        "video_stream_type",
        Val::Str(crate::qoe::summary::stream_type_label(
            content.and_then(|c| c.stream_type),
        )),
    );
    if let Some(pl) = body.context.as_ref().and_then(|c| c.player.as_ref()) {
        p.str("player_platform", &pl.platform);
    }
    let Some(d) = body.data.as_deref() else {
        return;
    };
    if let Some(v) = d.outcome {
        p.push("qoe_outcome", Val::Str(v.as_str()));
    }
    if let Some(v) = d.ended_by {
        p.push("ended_by", Val::Str(v.as_str()));
    }
    if let Some(v) = d.playback_failure {
        p.push("playback_failure", Val::U(u64::from(v)));
    }
    let numbers = [
        ("startup_time_msec", d.startup_ms),
        ("watched_time_msec", d.watched_ms),
        ("playing_time_msec", d.playing_ms),
        ("paused_time_msec", d.paused_ms),
        ("rebuffer_count", d.rebuffer_count.map(u64::from)),
        ("rebuffer_time_msec", d.rebuffer_ms),
        ("seek_count", d.seek_count.map(u64::from)),
        ("seek_time_msec", d.seek_ms),
        ("avg_bitrate", d.avg_bitrate_bps.map(kbps)),
        ("bitrate_upswitches", d.bitrate_upswitches.map(u64::from)),
        (
            "bitrate_downswitches",
            d.bitrate_downswitches.map(u64::from),
        ),
        ("ad_breaks", d.ad_breaks.map(u64::from)),
        ("ads_started", d.ads_started.map(u64::from)),
        ("ads_completed", d.ads_completed.map(u64::from)),
    ];
    for (k, v) in numbers {
        if let Some(v) = v {
            p.push(k, Val::U(v));
        }
    }
    if let Some(v) = d.rebuffer_ratio {
        p.push("rebuffer_ratio", Val::F(v));
    }
    p.str("error_code", &d.error_code);
}

/// Custom properties as params: names made legal, strings and numbers only (booleans as
/// "true"/"false"; null, arrays and objects left out), never replacing a standard param.
fn push_custom<'a>(p: &mut Params<'a>, custom: &'a Map<String, Value>) {
    for (key, value) in custom {
        let value = match value {
            Value::String(s) => Val::Str(s),
            Value::Number(n) => Val::Num(n),
            Value::Bool(b) => flag(*b),
            Value::Null | Value::Array(_) | Value::Object(_) => continue,
        };
        let name = legal_name(key, false);
        if p.0.iter().any(|(k, _)| *k == name) {
            continue;
        }
        p.0.push((name, value));
    }
}

#[derive(Serialize)]
struct Ga4Event<'a> {
    name: &'a str,
    params: Params<'a>,
    timestamp_micros: i128,
}

fn micros(t: OffsetDateTime) -> i128 {
    t.unix_timestamp_nanos() / 1000
}

impl Translate for Ga4Translator {
    fn translate(&self, events: &[&Event], sent_at: OffsetDateTime) -> Translation {
        let mut translation = Translation::default();
        // Events grouped by request: identity and the request-level context (consent,
        // IP, device), in order of first appearance; each entry is (input index, event
        // time, encoded event).
        type Key<'e> = (&'e str, Option<&'e str>, Vec<u8>);
        let mut groups: Groups<Key, (usize, i128, Vec<u8>)> = Groups::new();
        // Only its length is needed per event: one buffer, not one allocation each.
        let mut header = Vec::with_capacity(256);
        // A poisoned lock only means another batch panicked mid-way: the clock is
        // still usable (at worst one session's previous time is stale).
        let mut clock = self
            .engagement
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (index, event) in events.iter().enumerate() {
            let name = match self.resolve(event) {
                Ok(name) => name,
                Err(unnamed) => {
                    translation.refused.push(Refusal::unnamed(
                        index,
                        event.event_type(),
                        unnamed,
                        "ga4",
                    ));
                    continue;
                }
            };
            let id = match self.identity(event) {
                Ok(id) => id,
                Err(refusal) => {
                    translation
                        .refused
                        .push(Refusal::refused(index, refusal.0, refusal.1));
                    continue;
                }
            };
            let user_id = event.body.user.user_id.as_deref().filter(|s| !s.is_empty());
            // The device clock's skew corrected first, so a clock a few minutes fast
            // does not make every event "in the future".
            let mut time = event.corrected_timestamp();
            if time < sent_at - MAX_AGE {
                translation.refused.push(Refusal::refused(
                    index,
                    "too_old",
                    format!(
                        "event time {} is more than 72 h before the send time {}",
                        crate::event::format_rfc3339(time),
                        crate::event::format_rfc3339(sent_at)
                    ),
                ));
                continue;
            }
            if time > sent_at + MAX_FUTURE_SKEW {
                translation.refused.push(Refusal::refused(
                    index,
                    "in_future",
                    format!(
                        "event time {} is more than 10 minutes after the send time {}",
                        crate::event::format_rfc3339(time),
                        crate::event::format_rfc3339(sent_at)
                    ),
                ));
                continue;
            }
            if time > sent_at {
                time = sent_at;
            }
            let engagement = clock.engagement_msec(event, time);
            let params = params(event, engagement, self.pass_properties);
            if params.0.len() > MAX_PARAMS {
                let cut: Vec<&str> = params.0[MAX_PARAMS..].iter().map(|(k, _)| &**k).collect();
                translation.notes.push(Note {
                    index,
                    reason: "params_cut",
                    count: cut.len(),
                    detail: format!(
                        "ga4 takes {MAX_PARAMS} params per event; left out: {}",
                        cut.join(", ")
                    ),
                });
            }
            let mut item = Vec::with_capacity(1024);
            let encoded = Ga4Event {
                name: &name,
                params,
                timestamp_micros: micros(time),
            };
            // Serializing into a Vec cannot fail: every map key is a string.
            let _ = serde_json::to_writer(&mut item, &encoded);
            let context = request_context(event);
            header.clear();
            write_header(&mut header, id, user_id, micros(time), &context);
            if !self
                .limits
                .fits_alone(header.len(), item.len(), CLOSE.len())
            {
                translation.notes.retain(|n| n.index != index);
                translation.refused.push(Refusal::refused(
                    index,
                    "oversize",
                    format!(
                        "event makes a {} byte body; ga4 takes less than {} bytes",
                        header.len() + item.len() + 2,
                        MAX_BODY_BYTES
                    ),
                ));
                continue;
            }
            clock.sent(event, time);
            groups.push((id.1, user_id, context), (index, micros(time), item));
        }
        drop(clock);
        let id_key = if self.app_stream {
            "app_instance_id"
        } else {
            "client_id"
        };
        for ((id, user_id, context), items) in groups.into_groups() {
            let mut packer = Packer::new(self.limits, CLOSE);
            for (i, (index, time, item)) in items.iter().enumerate() {
                let open = |body: &mut Vec<u8>| {
                    // Room for the request's events, so the body is not grown in steps.
                    let estimate: usize = items[i..]
                        .iter()
                        .take(self.limits.max_events)
                        .map(|(_, _, item)| item.len() + 1)
                        .sum();
                    body.reserve((header.len() + estimate + 2).min(self.limits.max_bytes));
                    write_header(body, (id_key, id), user_id, *time, &context);
                };
                if let Some(full) = packer.push(*index, item, 1, open) {
                    translation.requests.push(self.request(full));
                }
            }
            if let Some(last) = packer.finish() {
                translation.requests.push(self.request(last));
            }
        }
        translation
    }

    /// GA4 answers 2xx even for bad data; anything else means a broken request that
    /// sending again cannot fix, so nothing is ever retried.
    fn classify(&self, response: &VendorResponse) -> Verdict {
        if response.status.is_success() {
            Verdict::Delivered
        } else {
            Verdict::Reject
        }
    }

    /// The validation server's `validationMessages`, one readable line each.
    fn findings(&self, response: &VendorResponse) -> Vec<String> {
        #[derive(Deserialize)]
        struct Answer {
            #[serde(default, rename = "validationMessages")]
            validation_messages: Vec<Message>,
        }
        #[derive(Deserialize)]
        struct Message {
            #[serde(default, rename = "fieldPath")]
            field_path: Option<String>,
            #[serde(default)]
            description: Option<String>,
            #[serde(default, rename = "validationCode")]
            validation_code: Option<String>,
        }
        let Ok(answer) = serde_json::from_slice::<Answer>(&response.body) else {
            return Vec::new();
        };
        answer
            .validation_messages
            .into_iter()
            .map(|m| {
                format!(
                    "{} at {}: {}",
                    m.validation_code.as_deref().unwrap_or("VALIDATION"),
                    m.field_path
                        .as_deref()
                        .filter(|p| !p.is_empty())
                        .unwrap_or("(body)"),
                    m.description.as_deref().unwrap_or("no description"),
                )
            })
            .collect()
    }

    fn secrets(&self) -> Vec<String> {
        self.secrets.clone()
    }

    fn sends_type(&self, event_type: &str) -> bool {
        self.resolve_type(event_type).is_ok()
    }
}

impl Ga4Translator {
    fn request(&self, packed: Packed) -> VendorRequest {
        post(&self.url, &self.headers, packed.body, packed.events, false)
    }
}

/// What closes a request body that [`write_header`] opened.
const CLOSE: &[u8] = b"]}";

/// `{"client_id":…,"user_id":…,"timestamp_micros":…,<context>,"events":[` — the
/// request's time is its first event's; each event also carries its own
/// `timestamp_micros`. `context` is [`request_context`]'s, without braces.
fn write_header(
    out: &mut Vec<u8>,
    (id_key, id): (&str, &str),
    user_id: Option<&str>,
    time: i128,
    context: &[u8],
) {
    use std::io::Write as _;
    out.push(b'{');
    let _ = serde_json::to_writer(&mut *out, id_key);
    out.push(b':');
    let _ = serde_json::to_writer(&mut *out, id);
    if let Some(user_id) = user_id {
        out.extend_from_slice(b",\"user_id\":");
        let _ = serde_json::to_writer(&mut *out, user_id);
    }
    // Writing into a Vec cannot fail.
    let _ = write!(out, ",\"timestamp_micros\":{time}");
    if !context.is_empty() {
        out.push(b',');
        out.extend_from_slice(context);
    }
    out.extend_from_slice(b",\"events\":[");
}

/// The gtag.js client id in a `_ga` cookie value (`GA1.1.1234567890.1761990000`) or
/// as gtag gives it (`1234567890.1761990000`); `None` for anything else.
pub fn ga_client_id(raw: &str) -> Option<&str> {
    let raw = raw.trim();
    let id = match raw.strip_prefix("GA") {
        // `GA<version>.<domain depth>.<random>.<seconds>`
        Some(rest) => rest.splitn(3, '.').nth(2)?,
        None => raw,
    };
    let (random, seconds) = id.split_once('.')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(random) && digits(seconds)).then_some(id)
}

impl Ga4Translator {
    /// (`client_id` or `app_instance_id`, its value), or why there is none.
    fn identity<'e>(
        &self,
        event: &'e Event,
    ) -> Result<(&'static str, &'e str), (&'static str, &'static str)> {
        let context = event.body.context.as_ref();
        if self.app_stream {
            return context
                .and_then(|c| c.firebase_app_instance_id.as_deref())
                .filter(|s| !s.is_empty())
                .map(|id| ("app_instance_id", id))
                .ok_or((
                    "missing_app_instance_id",
                    "a ga4 app stream (firebase_app_id) needs context.firebase_app_instance_id",
                ));
        }
        context
            .and_then(|c| c.ga_client_id.as_deref())
            .and_then(ga_client_id)
            .or(event
                .body
                .user
                .anonymous_id
                .as_deref()
                .filter(|s| !s.is_empty()))
            .map(|id| ("client_id", id))
            .ok_or((
                "missing_client_id",
                "ga4 needs context.ga_client_id or user.anonymous_id as its client_id",
            ))
    }
}

/// The request-level fields an event brings, as JSON members without braces (empty
/// when none): `consent` from `context.consent.advertising`, `ip_override` from
/// `context.ip` else the address the relay saw (left out when analytics consent is
/// refused), and `device` from `context.device`, `context.locale` and the user agent.
fn request_context(event: &Event) -> Vec<u8> {
    let context = event.body.context.as_ref();
    let consent = context.and_then(|c| c.consent.as_ref());
    let mut members = Map::new();
    if let Some(advertising) = consent.and_then(|c| c.advertising) {
        let state = if advertising { "GRANTED" } else { "DENIED" };
        members.insert(
            "consent".into(),
            serde_json::json!({"ad_user_data": state, "ad_personalization": state}),
        );
    }
    if consent.and_then(|c| c.analytics) != Some(false) {
        let ip = context
            .and_then(|c| c.ip.clone())
            .or_else(|| event.client_ip.map(|ip| ip.to_string()));
        if let Some(ip) = ip {
            members.insert("ip_override".into(), Value::String(ip));
        }
    }
    let mut device = Map::new();
    let mut put = |key: &str, value: Option<&str>| {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            device.insert(key.into(), Value::String(cut(v).to_string()));
        }
    };
    if let Some(c) = context {
        if let Some(d) = &c.device {
            let category = d.device_type.as_deref().map(|t| match t {
                "tv" | "ctv" | "smarttv" => "smart tv",
                other => other,
            });
            put("category", category);
        }
        put("language", c.locale.as_deref());
        if let Some(d) = &c.device {
            put("operating_system", d.os_name.as_deref());
            put("operating_system_version", d.os_version.as_deref());
            put("model", d.model.as_deref());
            put("brand", d.manufacturer.as_deref());
        }
        if let Some((browser, version)) = c.user_agent.as_deref().and_then(browser) {
            put("browser", Some(browser));
            put("browser_version", Some(version));
        }
    }
    if !device.is_empty() {
        members.insert("device".into(), Value::Object(device));
    }
    if members.is_empty() {
        return Vec::new();
    }
    // Serializing a map of strings cannot fail; the braces are dropped.
    let text = serde_json::to_vec(&members).unwrap_or_default();
    text[1..text.len().saturating_sub(1).max(1)].to_vec()
}

/// Product tokens, most specific first (Edge and Opera also say Chrome; Chrome also
/// says Safari), each with the browser it names.
const BROWSER_TOKENS: [(&str, &str); 9] = [
    ("Edg", "Edge"),
    ("EdgA", "Edge"),
    ("EdgiOS", "Edge"),
    ("OPR", "Opera"),
    ("SamsungBrowser", "Samsung Internet"),
    ("CriOS", "Chrome"),
    ("FxiOS", "Firefox"),
    ("Firefox", "Firefox"),
    ("Chrome", "Chrome"),
];

/// The browser and its version from a user agent, by the product tokens browsers put
/// in it (`Chrome/131.0`), the most specific one present winning; Safari by `Version/`
/// once `Safari/` is there. `None` when no known token is there.
//
// One pass over the user agent's slashes, each checked against every token: it runs
// for every event GA4 sends, and a search per token cost it 15% of its translation.
pub fn browser(user_agent: &str) -> Option<(&'static str, &str)> {
    // Where each token's version starts, at its first `token/`.
    let mut found: [Option<usize>; BROWSER_TOKENS.len()] = [None; BROWSER_TOKENS.len()];
    let (mut safari, mut version) = (false, None);
    for slash in memchr::memchr_iter(b'/', user_agent.as_bytes()) {
        let before = &user_agent[..slash];
        for (at, (token, _)) in found.iter_mut().zip(BROWSER_TOKENS) {
            if at.is_none() && before.ends_with(token) {
                *at = Some(slash + 1);
            }
        }
        safari |= before.ends_with("Safari");
        if version.is_none() && before.ends_with("Version") {
            version = Some(slash + 1);
        }
    }
    let version_at = |start: usize| {
        let rest = &user_agent[start..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.'))
            .unwrap_or(rest.len());
        (end > 0).then(|| &rest[..end])
    };
    for (at, (_, name)) in found.iter().zip(BROWSER_TOKENS) {
        if let Some(version) = at.and_then(version_at) {
            return Some((name, version));
        }
    }
    if safari {
        return version.and_then(version_at).map(|v| ("Safari", v));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::StatusCode;
    use std::collections::HashMap;

    #[test]
    fn names_are_checked_and_made_legal() {
        assert_eq!(name_problem("video_start", true), None);
        assert_eq!(name_problem("error", true), Some("reserved by GA4"));
        assert_eq!(name_problem("error", false), None);
        assert!(name_problem("ga_thing", false).is_some());
        assert!(name_problem("9lives", true).is_some());
        assert!(name_problem(&"a".repeat(41), true).is_some());
        assert_eq!(legal_name("chapter_viewed", true), "chapter_viewed");
        assert_eq!(
            legal_name("Kapitel-Übersicht.ß", true),
            "Kapitel__bersicht__"
        );
        assert_eq!(legal_name("error", true), "custom_error");
        assert_eq!(legal_name("google_x", false), "custom_google_x");
        assert_eq!(legal_name("1st", false), "custom_1st");
        assert_eq!(legal_name("", false), "custom_");
        let raw = "é".repeat(60);
        let long = legal_name(&raw, true);
        assert_eq!(long.len(), 40);
        assert_eq!(name_problem(&long, true), None);
        for ty in EventType::ALL {
            if let Some(name) = name_of(ty) {
                assert_eq!(name_problem(name, true), None, "{name}");
            }
        }
    }

    #[test]
    fn values_are_cut_to_100_characters() {
        let s = "é".repeat(150);
        assert_eq!(cut(&s).chars().count(), 100);
        assert_eq!(cut("short"), "short");
    }

    #[test]
    fn gtag_client_ids_and_browsers_are_read() {
        assert_eq!(
            ga_client_id("GA1.1.1234567890.1761990000"),
            Some("1234567890.1761990000")
        );
        assert_eq!(
            ga_client_id("1234567890.1761990000"),
            Some("1234567890.1761990000")
        );
        assert_eq!(ga_client_id("GA1.1.not-an-id"), None);
        assert_eq!(ga_client_id("anon-1"), None);
        let chrome = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";
        assert_eq!(browser(chrome), Some(("Chrome", "131.0.0.0")));
        let edge = "Mozilla/5.0 (Windows NT 10.0) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.2903.70";
        assert_eq!(browser(edge), Some(("Edge", "131.0.2903.70")));
        let safari = "Mozilla/5.0 (Macintosh) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15";
        assert_eq!(browser(safari), Some(("Safari", "18.1")));
        assert_eq!(browser("Mozilla/5.0 (Test)"), None);
    }

    /// The search the single pass replaced: each token looked for in turn.
    fn browser_by_search(user_agent: &str) -> Option<(&'static str, &str)> {
        let version_after = |token: &str| {
            let at = user_agent.find(token)? + token.len();
            let rest = &user_agent[at..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.'))
                .unwrap_or(rest.len());
            (end > 0).then(|| &rest[..end])
        };
        for (token, name) in BROWSER_TOKENS {
            if let Some(version) = version_after(&format!("{token}/")) {
                return Some((name, version));
            }
        }
        if user_agent.contains("Safari/") {
            return version_after("Version/").map(|v| ("Safari", v));
        }
        None
    }

    #[test]
    fn browsers_are_read_as_a_search_per_token_reads_them() {
        let agents = [
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
            "Mozilla/5.0 (Windows NT 10.0) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.2903.70",
            "Mozilla/5.0 (Linux; Android 14) Chrome/131.0 Mobile Safari/537.36 EdgA/131.0.2903.87",
            "Mozilla/5.0 (iPhone) AppleWebKit/605.1.15 Version/18.0 EdgiOS/131.2903.86 Mobile/15E148 Safari/605.1.15",
            "Mozilla/5.0 (Windows NT 10.0) Chrome/130.0.0.0 Safari/537.36 OPR/115.0.0.0",
            "Mozilla/5.0 (Linux; Android 14) SamsungBrowser/26.0 Chrome/122.0.0.0 Mobile Safari/537.36",
            "Mozilla/5.0 (iPhone) CriOS/131.0.6778.73 Mobile/15E148 Safari/604.1",
            "Mozilla/5.0 (iPhone) FxiOS/133.0 Mobile/15E148 Safari/605.1.15",
            "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
            "Mozilla/5.0 (Macintosh) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
            "Mozilla/5.0 (Macintosh) Safari/605.1.15",
            "Version/1.0",
            "Chrome/",
            "Chrome/ Edg/1",
            "Chrome/(1) Firefox/2",
            "NotChrome/1.2 Chrome/3.4",
            "Chrome/1 Chrome/2",
            "xEdg/5 Chrome/6",
            "/Chrome/7/",
            "Safari/1 Version/",
            "Mozilla/5.0 (Test)",
            "",
            "////",
            "Chrome/é1",
            "Edg/ü Chrome/9.0",
        ];
        for agent in agents {
            assert_eq!(browser(agent), browser_by_search(agent), "{agent}");
        }
    }

    #[test]
    fn derived_session_id_is_stable_and_numeric() {
        let a = derived_session_id("p-1");
        assert_eq!(a, derived_session_id("p-1"));
        assert_ne!(a, derived_session_id("p-2"));
        assert!(a < 10_000_000_000);
    }

    fn translator(validate: bool, names: EventNames) -> Result<Ga4Translator, Ga4Error> {
        Ga4Translator::new(
            &Ga4Config {
                measurement_id: Some("G-TEST".into()),
                firebase_app_id: None,
                api_secret: "s e/cret".into(),
                region: Ga4Region::Eu,
                endpoint: None,
                validate,
            },
            names,
            false,
            BatchLimits {
                max_events: 100,
                max_bytes: 1 << 20,
            },
        )
    }

    #[test]
    fn url_is_percent_encoded_and_both_secret_forms_are_secret() {
        let t = translator(true, EventNames::default()).expect("valid");
        assert_eq!(
            t.url,
            "https://region1.google-analytics.com/debug/mp/collect?measurement_id=G-TEST&api_secret=s%20e%2Fcret"
        );
        assert_eq!(
            t.secrets(),
            vec!["s e/cret".to_string(), "s%20e%2Fcret".into()]
        );
    }

    #[test]
    fn renaming_to_a_reserved_name_is_a_config_error() {
        let names = EventNames::new(HashMap::from([(
            "playback.error".to_string(),
            NameOverride::Rename("error".into()),
        )]));
        let err = translator(false, names).err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("events.\"playback.error\": \"error\" is not a valid GA4 event name: reserved by GA4")
        );
    }

    #[test]
    fn any_failure_is_rejected_and_findings_are_readable() {
        let t = translator(true, EventNames::default()).expect("valid");
        let response = |code: u16, body: &'static str| VendorResponse {
            status: StatusCode::from_u16(code).expect("status"),
            headers: HeaderMap::new(),
            body: Bytes::from_static(body.as_bytes()),
        };
        assert_eq!(t.classify(&response(204, "")), Verdict::Delivered);
        for code in [400, 408, 429, 500, 503] {
            assert_eq!(t.classify(&response(code, "")), Verdict::Reject, "{code}");
        }
        let findings = t.findings(&response(
            200,
            r#"{"validationMessages":[{"fieldPath":"events[0].name","description":"Event name is reserved.","validationCode":"NAME_RESERVED"}]}"#,
        ));
        assert_eq!(
            findings,
            vec!["NAME_RESERVED at events[0].name: Event name is reserved.".to_string()]
        );
        assert!(t
            .findings(&response(200, r#"{"validationMessages":[]}"#))
            .is_empty());
    }
}
