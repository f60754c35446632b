//! The typed view of `player-event/1`. Unknown fields are ignored here on purpose: the
//! original JSON text travels with the event (see [`super::Event`]), so nothing a client
//! sent is lost when a destination forwards the event as it came.

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// Every event type the contract names; anything else must start with `custom.`.
/// Matches on it are exhaustive: a new type does not compile until every vendor map
/// (and the schema's description) decides what it becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    SessionStarted,
    PlaybackRequested,
    PlaybackStarted,
    PlaybackPaused,
    PlaybackResumed,
    PlaybackRebufferStarted,
    PlaybackRebufferEnded,
    PlaybackSeekStarted,
    PlaybackSeekEnded,
    PlaybackHeartbeat,
    PlaybackMilestone,
    PlaybackCompleted,
    PlaybackExited,
    PlaybackInterrupted,
    PlaybackError,
    QualityChanged,
    PlaybackRateChanged,
    VolumeChanged,
    PresentationChanged,
    AdBreakStarted,
    AdBreakEnded,
    AdStarted,
    AdCompleted,
    AdQuartile,
    AdSkipped,
    AdClicked,
    AdImpression,
    AdError,
    SessionSummary,
}

impl EventType {
    /// Every type, in the contract's order (the schema lists them so).
    pub const ALL: [EventType; 29] = [
        EventType::SessionStarted,
        EventType::PlaybackRequested,
        EventType::PlaybackStarted,
        EventType::PlaybackPaused,
        EventType::PlaybackResumed,
        EventType::PlaybackRebufferStarted,
        EventType::PlaybackRebufferEnded,
        EventType::PlaybackSeekStarted,
        EventType::PlaybackSeekEnded,
        EventType::PlaybackHeartbeat,
        EventType::PlaybackMilestone,
        EventType::PlaybackCompleted,
        EventType::PlaybackExited,
        EventType::PlaybackInterrupted,
        EventType::PlaybackError,
        EventType::QualityChanged,
        EventType::PlaybackRateChanged,
        EventType::VolumeChanged,
        EventType::PresentationChanged,
        EventType::AdBreakStarted,
        EventType::AdBreakEnded,
        EventType::AdStarted,
        EventType::AdCompleted,
        EventType::AdQuartile,
        EventType::AdSkipped,
        EventType::AdClicked,
        EventType::AdImpression,
        EventType::AdError,
        EventType::SessionSummary,
    ];

    /// The type's name in `player-event/1`.
    pub const fn as_str(self) -> &'static str {
        match self {
            EventType::SessionStarted => "session.started",
            EventType::PlaybackRequested => "playback.requested",
            EventType::PlaybackStarted => "playback.started",
            EventType::PlaybackPaused => "playback.paused",
            EventType::PlaybackResumed => "playback.resumed",
            EventType::PlaybackRebufferStarted => "playback.rebuffer_started",
            EventType::PlaybackRebufferEnded => "playback.rebuffer_ended",
            EventType::PlaybackSeekStarted => "playback.seek_started",
            EventType::PlaybackSeekEnded => "playback.seek_ended",
            EventType::PlaybackHeartbeat => "playback.heartbeat",
            EventType::PlaybackMilestone => "playback.milestone",
            EventType::PlaybackCompleted => "playback.completed",
            EventType::PlaybackExited => "playback.exited",
            EventType::PlaybackInterrupted => "playback.interrupted",
            EventType::PlaybackError => "playback.error",
            EventType::QualityChanged => "quality.changed",
            EventType::PlaybackRateChanged => "playback.rate_changed",
            EventType::VolumeChanged => "volume.changed",
            EventType::PresentationChanged => "presentation.changed",
            EventType::AdBreakStarted => "ad.break_started",
            EventType::AdBreakEnded => "ad.break_ended",
            EventType::AdStarted => "ad.started",
            EventType::AdCompleted => "ad.completed",
            EventType::AdQuartile => "ad.quartile",
            EventType::AdSkipped => "ad.skipped",
            EventType::AdClicked => "ad.clicked",
            EventType::AdImpression => "ad.impression",
            EventType::AdError => "ad.error",
            EventType::SessionSummary => "session.summary",
        }
    }

    /// The contract type of a `type` value; `None` for `custom.*` and unknown names.
    pub fn parse(name: &str) -> Option<EventType> {
        Some(match name {
            "session.started" => EventType::SessionStarted,
            "playback.requested" => EventType::PlaybackRequested,
            "playback.started" => EventType::PlaybackStarted,
            "playback.paused" => EventType::PlaybackPaused,
            "playback.resumed" => EventType::PlaybackResumed,
            "playback.rebuffer_started" => EventType::PlaybackRebufferStarted,
            "playback.rebuffer_ended" => EventType::PlaybackRebufferEnded,
            "playback.seek_started" => EventType::PlaybackSeekStarted,
            "playback.seek_ended" => EventType::PlaybackSeekEnded,
            "playback.heartbeat" => EventType::PlaybackHeartbeat,
            "playback.milestone" => EventType::PlaybackMilestone,
            "playback.completed" => EventType::PlaybackCompleted,
            "playback.exited" => EventType::PlaybackExited,
            "playback.interrupted" => EventType::PlaybackInterrupted,
            "playback.error" => EventType::PlaybackError,
            "quality.changed" => EventType::QualityChanged,
            "playback.rate_changed" => EventType::PlaybackRateChanged,
            "volume.changed" => EventType::VolumeChanged,
            "presentation.changed" => EventType::PresentationChanged,
            "ad.break_started" => EventType::AdBreakStarted,
            "ad.break_ended" => EventType::AdBreakEnded,
            "ad.started" => EventType::AdStarted,
            "ad.completed" => EventType::AdCompleted,
            "ad.quartile" => EventType::AdQuartile,
            "ad.skipped" => EventType::AdSkipped,
            "ad.clicked" => EventType::AdClicked,
            "ad.impression" => EventType::AdImpression,
            "ad.error" => EventType::AdError,
            "session.summary" => EventType::SessionSummary,
            _ => return None,
        })
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

pub const SCHEMA_VERSION: &str = "player-event/1";

/// One `player-event/1` event: what happened in one playback session, with the player's
/// state at that moment. Times and durations are integer milliseconds, bitrates bits per
/// second, volume 0.0-1.0. Unknown fields are accepted and kept (forward compatibility).
//
// `ad`, `error` and `data` are boxed: most events have none of them, and an event
// waits in up to one queue per destination, so its size is the relay's memory.
// `content`, `playback` and `context` are boxed too, though most events have them:
// unboxed, an event was 1.3 KB, copied whole at every move from the parser to its
// `Arc`, and a dead event's allocation kept by the spool's weak references
// (`spool/recent.rs`) was that size.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, JsonSchema)]
#[schemars(title = "player-event/1", extend("allOf" = crate::event::schema::conditional_requirements()))]
pub struct PlayerEvent {
    /// Contract version; `player-event/1` when absent.
    #[schemars(schema_with = "crate::event::schema::schema_version")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Idempotency key: a UUID (v7 recommended), unique per event; retries and replays keep it.
    #[schemars(extend("format" = "uuid"))]
    pub event_id: String,
    /// The event type: one of the contract's types, or `custom.<name>` for an app's own.
    #[schemars(schema_with = "crate::event::schema::event_type")]
    #[serde(rename = "type")]
    pub event_type: String,
    /// Client wall-clock time of the event, RFC 3339 (UTC recommended, e.g. `2026-01-15T10:20:30.123Z`).
    #[schemars(extend("format" = "date-time"))]
    pub timestamp: String,
    /// When the client sent the request carrying the event, by the same clock as
    /// `timestamp` (RFC 3339): with the relay's receive time it gives the device clock's
    /// skew. For `sendBeacon`, which cannot set the `X-Sent-At` header; the header wins
    /// when both are given; a value that is not RFC 3339 is ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<String>,
    /// Per-session counter from 0, one per event, for ordering and gap detection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u64>,
    /// Which playback session the event belongs to.
    pub session: Session,
    /// Who is watching; at least one of `user_id` and `anonymous_id`.
    pub user: User,
    /// What is being watched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Box<Content>>,
    /// Player state at the time of the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub playback: Option<Box<Playback>>,
    /// The ad and its pod; required for `ad.*` events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ad: Option<Box<Ad>>,
    /// What went wrong; required for `*.error` events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Box<PlayerError>>,
    /// Player, app, device, page, locale, user agent, IP and consent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Box<Context>>,
    /// Type-specific values (see each field for the types that carry it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Box<EventData>>,
    /// Free-form custom properties, passed through where the vendor allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<Map<String, Value>>,
    /// Set by the relay (its own receive time, RFC 3339); a client's value is overwritten.
    #[serde(default, skip_serializing)]
    pub received_at: Option<Value>,
}

/// One playback session = one content item plus its ads in one player (CMCD `sid`, a Mux "view").
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, JsonSchema)]
pub struct Session {
    /// The playback session id (non-empty; a UUID recommended).
    #[schemars(length(min = 1))]
    pub id: String,
    /// Lifetime of a player instance; may span several contents (Segment's `session_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub player_session_id: Option<String>,
    /// The app or visit session (GA4's `session_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_session_id: Option<String>,
}

/// Who is watching. At least one of `user_id` and `anonymous_id` must be a non-empty string.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
#[schemars(extend("anyOf" = crate::event::schema::user_any_of()))]
pub struct User {
    /// The known (logged-in) user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// A stable device or browser id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous_id: Option<String>,
}

/// What is being watched.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
pub struct Content {
    /// The content's id in the publisher's catalogue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset_id: Option<String>,
    /// Title of the content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Description of the content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Program or series name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<String>,
    /// Season (a string or a number; kept as text).
    #[schemars(schema_with = "crate::event::schema::string_or_number")]
    #[serde(
        default,
        deserialize_with = "string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub season: Option<String>,
    /// Episode (a string or a number; kept as text).
    #[schemars(schema_with = "crate::event::schema::string_or_number")]
    #[serde(
        default,
        deserialize_with = "string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub episode: Option<String>,
    /// Genre.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub genre: Option<String>,
    /// Publisher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publisher: Option<String>,
    /// Channel or network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Content provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Keywords or tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keywords: Option<Vec<String>>,
    /// First air date (ISO 8601).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub airdate: Option<String>,
    /// Duration in milliseconds; `null` for live or unknown (never Infinity or NaN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Kind of stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_type: Option<StreamType>,
    /// The source URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Delivery format: `hls`, `dash`, `progressive`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streaming_format: Option<String>,
    /// Content language (BCP 47).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// Custom content metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<Map<String, Value>>,
}

impl Content {
    /// Live when the stream says so, or when the duration is unknown.
    pub fn is_live(&self) -> bool {
        match self.stream_type {
            Some(StreamType::Vod) => false,
            Some(_) => true,
            None => self.duration_ms.is_none(),
        }
    }
}

/// Kind of stream.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StreamType {
    /// On demand.
    Vod,
    /// Live, no seeking back.
    Live,
    /// Live with a seekable window.
    LiveDvr,
    /// A linear channel.
    Linear,
}

/// Player state at the time of the event.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
pub struct Playback {
    /// What the player is doing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<PlaybackState>,
    /// Playhead position in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position_ms: Option<u64>,
    /// Buffered media ahead of the playhead, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffer_ms: Option<u64>,
    /// The video rendition (quality) playing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rendition: Option<Rendition>,
    /// Playback rate (1.0 = normal speed).
    #[schemars(range(min = 0.0))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub playback_rate: Option<f64>,
    /// Volume from 0.0 (silent) to 1.0 (full); see `muted`.
    #[schemars(range(min = 0.0, max = 1.0))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<f64>,
    /// Whether the audio is muted (independent of `volume`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub muted: Option<bool>,
    /// How the video is shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presentation_mode: Option<PresentationMode>,
    /// Video frames dropped since the session started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped_frames: Option<u64>,
    /// The CDN serving the media.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cdn: Option<String>,
    /// Whether playback started without a user gesture.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoplay: Option<bool>,
    /// Whether the player is visible (in the viewport of a visible page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visible: Option<bool>,
}

/// What the player is doing.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PlaybackState {
    /// A source is set and playback has not reached its first frame.
    Starting,
    /// Playing.
    Playing,
    /// Paused by the viewer.
    Paused,
    /// Seeking.
    Seeking,
    /// Stalled waiting for data after the first frame.
    Rebuffering,
    /// Reached the end.
    Ended,
    /// Stopped by an error.
    Error,
}

/// How the video is shown.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PresentationMode {
    /// In the page.
    Inline,
    /// Full screen.
    Fullscreen,
    /// Picture in picture.
    Pip,
}

/// A video rendition (quality level).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
pub struct Rendition {
    /// Rendition id in the manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Bitrate in bits per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitrate_bps: Option<u64>,
    /// Width in pixels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    /// Height in pixels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// Frames per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub framerate: Option<f64>,
    /// Codecs string (RFC 6381).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codecs: Option<String>,
    /// Human label, e.g. `720p`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// The ad and its pod.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
pub struct Ad {
    /// Ad id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ad_id: Option<String>,
    /// Creative id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creative_id: Option<String>,
    /// Ad title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Advertiser.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertiser: Option<String>,
    /// Ad system or server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// How the ad is inserted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insertion: Option<AdInsertion>,
    /// Ad duration in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Playhead position within the ad, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position_ms: Option<u64>,
    /// When the ad becomes skippable, in milliseconds from its start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_offset_ms: Option<u64>,
    /// The ad break (pod) the ad belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<AdPod>,
}

/// How the ad is inserted.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AdInsertion {
    /// Client-side ad insertion.
    Csai,
    /// Server-side ad insertion (stitched).
    Ssai,
}

/// An ad break (pod).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
pub struct AdPod {
    /// Pod id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Index of the pod in the content (0-based).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    /// Where the pod plays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<PodPosition>,
    /// Number of ads in the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ad_count: Option<u32>,
    /// 1-based position of the ad inside its pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ad_position: Option<u32>,
}

/// Where an ad break plays.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PodPosition {
    /// Before the content.
    Preroll,
    /// During the content.
    Midroll,
    /// After the content.
    Postroll,
}

/// What went wrong.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
pub struct PlayerError {
    /// Error code (a string or a number; kept as text).
    #[schemars(schema_with = "crate::event::schema::string_or_number")]
    #[serde(
        default,
        deserialize_with = "string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub code: Option<String>,
    /// Error category as the player names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// Human-readable message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Whether playback stopped because of the error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fatal: Option<bool>,
    /// Where the error came from: `player`, `network`, `drm` or `ad`.
    #[schemars(extend("examples" = ["player", "network", "drm", "ad"]))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// HTTP status of the failed request, for network errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// When it happened: `startup` (before the first frame) or `playback` (after).
    #[schemars(extend("examples" = ["startup", "playback"]))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
}

/// Where the event comes from.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
pub struct Context {
    /// The player.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub player: Option<PlayerInfo>,
    /// The app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<Box<AppInfo>>,
    /// The device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<Box<DeviceInfo>>,
    /// The browser's or app's user agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// Client IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// Locale (BCP 47), e.g. `en-GB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// The web page, for web players.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<Box<PageInfo>>,
    /// The viewer's consent choices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent: Option<Consent>,
    /// The gtag.js client id of the page (the `_ga` cookie, `GA1.1.<random>.<time>`, or
    /// just `<random>.<time>`), so GA4 counts a web viewer once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ga_client_id: Option<String>,
    /// The Firebase app instance id (`app_instance_id`), for GA4 app streams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firebase_app_instance_id: Option<String>,
}

/// The player.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
pub struct PlayerInfo {
    /// Player name, e.g. `THEOplayer`, `html5`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Player version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Platform, e.g. `web`, `android`, `ios`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
}

/// The app.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
pub struct AppInfo {
    /// App name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// App version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// App build (a string or a number; kept as text).
    #[schemars(schema_with = "crate::event::schema::string_or_number")]
    #[serde(
        default,
        deserialize_with = "string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub build: Option<String>,
}

/// The device.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
pub struct DeviceInfo {
    /// Device type, e.g. `desktop`, `mobile`, `tv`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub device_type: Option<String>,
    /// Manufacturer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    /// Model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Operating system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_name: Option<String>,
    /// Operating system version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
}

/// The web page.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
pub struct PageInfo {
    /// Page URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Referrer URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referrer: Option<String>,
    /// Page title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

/// The viewer's consent choices.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
pub struct Consent {
    /// Consent to analytics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analytics: Option<bool>,
    /// Consent to advertising.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertising: Option<bool>,
}

/// Type-specific values; which ones a type carries is in each field's description.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
pub struct EventData {
    /// `playback.started`: milliseconds from `playback.requested` to the first frame;
    /// `session.summary`: the same less ad breaks, `null` when it never started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_ms: Option<u64>,
    /// `playback.rebuffer_ended`, `playback.seek_ended`: how long the rebuffer or seek took, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// `playback.seek_started`: position the seek started from, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_ms: Option<u64>,
    /// `playback.seek_started`: position the seek goes to, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_ms: Option<u64>,
    /// `playback.milestone`: the percentage of the content crossed (10, 25, 50, 75 or 90).
    #[schemars(range(max = 100))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u8>,
    /// `playback.exited`: why the viewer left, e.g. `source_change`, `page_hidden`, `destroy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `playback.interrupted`: how playback was interrupted, e.g. `background`, `offline`, `call`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// `quality.changed`: the previous bitrate in bits per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_bitrate_bps: Option<u64>,
    /// `ad.quartile`: 1 (first quartile), 2 (midpoint) or 3 (third quartile).
    #[schemars(range(min = 1, max = 3))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quartile: Option<u8>,
    // `session.summary` (made by the relay, see docs/qoe.md); `startup_ms` above is its
    // startup time too.
    /// `session.summary`: `started`, `start_failure` or `exit_before_start`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<SessionOutcome>,
    /// `session.summary`: a fatal error at or after the first frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub playback_failure: Option<bool>,
    /// `session.summary`: what closed the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_by: Option<SessionEnd>,
    /// `session.summary`: distinct events (by `event_id`) the session had.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<u32>,
    /// `session.summary`: milliseconds from the first `playback.requested` to the last event, less `paused_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watched_ms: Option<u64>,
    /// `session.summary`: milliseconds from the first `playback.started` to the last event, less paused, rebuffering and seeking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub playing_ms: Option<u64>,
    /// `session.summary`: milliseconds paused (`playback.paused` to the next `playback.resumed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_ms: Option<u64>,
    /// `session.summary`: rebuffers after the first frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuffer_count: Option<u32>,
    /// `session.summary`: milliseconds rebuffering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuffer_ms: Option<u64>,
    /// `session.summary`: `rebuffer_ms / watched_ms` (0 when nothing was watched).
    #[schemars(range(min = 0.0, max = 1.0))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuffer_ratio: Option<f64>,
    /// `session.summary`: seeks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seek_count: Option<u32>,
    /// `session.summary`: milliseconds seeking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seek_ms: Option<u64>,
    /// `session.summary`: bitrate averaged over the time spent playing, in bits per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avg_bitrate_bps: Option<u64>,
    /// `session.summary`: `quality.changed` to a higher bitrate than `from_bitrate_bps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitrate_upswitches: Option<u32>,
    /// `session.summary`: `quality.changed` to a lower bitrate than `from_bitrate_bps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitrate_downswitches: Option<u32>,
    /// `session.summary`: ad breaks started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ad_breaks: Option<u32>,
    /// `session.summary`: ads started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ads_started: Option<u32>,
    /// `session.summary`: ads completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ads_completed: Option<u32>,
    /// `session.summary`: `error.code` of the last fatal error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
}

/// How a session went (`session.summary`'s `data.outcome`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionOutcome {
    /// It reached a first frame (`playback.started`).
    Started,
    /// A fatal error came before any first frame.
    StartFailure,
    /// The viewer left before any first frame, without a fatal error.
    ExitBeforeStart,
}

impl SessionOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionOutcome::Started => "started",
            SessionOutcome::StartFailure => "start_failure",
            SessionOutcome::ExitBeforeStart => "exit_before_start",
        }
    }
}

/// What closed a session (`session.summary`'s `data.ended_by`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionEnd {
    /// `playback.completed`.
    Completed,
    /// `playback.exited`.
    Exited,
    /// A fatal `playback.error`.
    Error,
    /// No event for `[qoe] idle_timeout_ms`.
    IdleTimeout,
    /// Closed early to keep within `[qoe] max_sessions`.
    Evicted,
    /// Open when the relay shut down.
    Shutdown,
}

impl SessionEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionEnd::Completed => "completed",
            SessionEnd::Exited => "exited",
            SessionEnd::Error => "error",
            SessionEnd::IdleTimeout => "idle_timeout",
            SessionEnd::Evicted => "evicted",
            SessionEnd::Shutdown => "shutdown",
        }
    }
}

/// Players disagree on whether codes, seasons and builds are numbers or strings; the
/// contract does not care, so both are taken and kept as text.
fn string_or_number<'de, D: Deserializer<'de>>(de: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Text(String),
        Int(i64),
        Float(f64),
    }
    Ok(match Option::<Either>::deserialize(de)? {
        None => None,
        Some(Either::Text(s)) => Some(s),
        Some(Either::Int(n)) => Some(n.to_string()),
        Some(Either::Float(n)) => Some(n.to_string()),
    })
}

#[cfg(test)]
mod event_type_tests {
    use super::EventType;

    #[test]
    fn every_type_reads_back_from_its_name() {
        for ty in EventType::ALL {
            assert_eq!(EventType::parse(ty.as_str()), Some(ty));
        }
        assert_eq!(EventType::parse("custom.chapter"), None);
        assert_eq!(EventType::parse("playback.unknown"), None);
    }
}
