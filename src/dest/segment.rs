//! `type = "segment"`: Segment's HTTP Tracking API (`POST /v1/batch`) with the events
//! named and shaped after Segment's Video Spec.
//!
//! Units: positions and lengths in whole seconds (floored), bitrate in kbps (floored),
//! `sound` 0–100 (0 when muted), `total_length` null for live streams.

use super::names::Unnamed;
use super::pack::{
    ad_type, endpoint_base, kbps, post, seconds, sendable, sound, Limits, Packed, Packer, Val,
};
use super::vendors::{self, Vendor, VendorConfig, VendorDefaults, VendorRate};
use super::{
    BatchLimits, BuildError, EventNames, Refusal, Translate, Translation, VendorRequest,
    VendorResponse, Verdict,
};
use crate::event::{format_rfc3339, Event, EventType, PresentationMode, Rfc3339Millis};
use base64::Engine as _;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE};
use http::{HeaderMap, StatusCode};
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::borrow::Cow;
use time::OffsetDateTime;

/// Segment rejects a single event above 32 KB.
pub const MAX_EVENT_BYTES: usize = 32 * 1024;
/// Segment accepts 500 KB per batch; its own libraries stop at 480 KB.
pub const MAX_REQUEST_BYTES: usize = 480 * 1024;
/// Above 2500 events Segment answers 200 and silently drops the rest.
pub const MAX_REQUEST_EVENTS: usize = 2500;

const US_BASE: &str = "https://api.segment.io";
const EU_BASE: &str = "https://events.eu1.segmentapis.com";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SegmentRegion {
    #[default]
    Us,
    Eu,
}

/// Keys of `[destinations.NAME]` for `type = "segment"` (the common keys are elsewhere).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SegmentConfig {
    pub write_key: String,
    /// `us` (default) or `eu`: EU workspaces must use the EU host, or data disappears.
    #[serde(default)]
    pub region: SegmentRegion,
    /// Base URL override (tests, proxies); replaces the region's host.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The workspace's consent category ids (Segment keys `categoryPreferences` by
    /// them) for `context.consent.analytics` and `.advertising`.
    #[serde(default)]
    pub consent_categories: ConsentCategories,
    /// Gzip request bodies (`Content-Encoding: gzip`), as Segment's own server
    /// libraries may; the batch limits apply to the body before compression.
    #[serde(default)]
    pub gzip: bool,
}

/// Segment consent category ids, as configured in the workspace (e.g. OneTrust's
/// `C0002`); default `Analytics` and `Advertising`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConsentCategories {
    #[serde(default = "default_analytics")]
    pub analytics: String,
    #[serde(default = "default_advertising")]
    pub advertising: String,
}

fn default_analytics() -> String {
    "Analytics".into()
}

fn default_advertising() -> String {
    "Advertising".into()
}

impl Default for ConsentCategories {
    fn default() -> Self {
        ConsentCategories {
            analytics: default_analytics(),
            advertising: default_advertising(),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SegmentError {
    #[error("write_key: must not be empty")]
    EmptyWriteKey,
    #[error("write_key: must not contain control characters")]
    WriteKeyCharacters,
    #[error("endpoint: {0}")]
    Endpoint(String),
    #[error("consent_categories: ids must not be empty and must differ")]
    ConsentCategories,
}

/// Batches as large as one `/v1/batch` takes (2,500 events, 480 KB: its own library's
/// cap under the 500 KB limit); 100 requests in flight of ~100 ms each is its
/// documented ~1,000 requests/s per workspace, which is also its rate limit.
pub static VENDOR: Vendor = Vendor {
    type_name: "segment",
    defaults: VendorDefaults {
        batch: BatchLimits {
            max_events: MAX_REQUEST_EVENTS,
            max_bytes: MAX_REQUEST_BYTES,
        },
        max_concurrency: 100,
        rate_limit: Some(VendorRate {
            requests_per_second: Some(1000),
            events_per_second: None,
        }),
    },
    parse: vendors::parse::<SegmentConfig>,
    example: "write_key = \"segment-write-key\"",
};

impl VendorConfig for SegmentConfig {
    fn translator(
        &self,
        names: EventNames,
        properties: bool,
        limits: BatchLimits,
    ) -> Result<Box<dyn Translate>, BuildError> {
        vendors::boxed(SegmentTranslator::new(self, names, properties, limits))
    }

    fn secrets(&self) -> Vec<(&'static str, String)> {
        vec![("write_key", self.write_key.clone())]
    }
}

pub struct SegmentTranslator {
    categories: ConsentCategories,
    url: String,
    headers: HeaderMap,
    names: EventNames,
    pass_properties: bool,
    limits: Limits,
    secrets: Vec<String>,
    gzip: bool,
}

/// The Video Spec name of each `player-event/1` type; `None` is unmapped on purpose.
pub fn default_name(event_type: &str) -> Option<&'static str> {
    EventType::parse(event_type).and_then(name_of)
}

/// The Video Spec name of each contract type; `None` is unmapped on purpose.
pub fn name_of(event_type: EventType) -> Option<&'static str> {
    Some(match event_type {
        // "When a user presses play": the play intent, before the first frame.
        EventType::PlaybackRequested => "Video Playback Started",
        // The first frame: the content begins playing.
        EventType::PlaybackStarted => "Video Content Started",
        EventType::PlaybackPaused => "Video Playback Paused",
        EventType::PlaybackResumed => "Video Playback Resumed",
        EventType::PlaybackRebufferStarted => "Video Playback Buffer Started",
        EventType::PlaybackRebufferEnded => "Video Playback Buffer Completed",
        EventType::PlaybackSeekStarted => "Video Playback Seek Started",
        EventType::PlaybackSeekEnded => "Video Playback Seek Completed",
        EventType::PlaybackHeartbeat => "Video Content Playing",
        EventType::PlaybackCompleted => "Video Playback Completed",
        EventType::PlaybackExited => "Video Playback Exited",
        EventType::PlaybackInterrupted => "Video Playback Interrupted",
        // The spec has no error event; `method` carries the error.
        EventType::PlaybackError => "Video Playback Interrupted",
        EventType::QualityChanged => "Video Quality Updated",
        EventType::AdBreakStarted => "Video Ad Break Started",
        EventType::AdBreakEnded => "Video Ad Break Completed",
        EventType::AdStarted => "Video Ad Started",
        EventType::AdQuartile => "Video Ad Playing",
        EventType::AdCompleted => "Video Ad Completed",
        EventType::AdSkipped => "Video Ad Skipped",
        EventType::AdClicked => "Video Ad Clicked",
        // The relay's own per-session QoE summary. The Video Spec has no such event; this
        // follows its Object-Action naming with the object its session events use
        // ("Video Playback Started" … "Completed"), so it sits beside them in Segment.
        EventType::SessionSummary => "Video Playback Summarized",
        // No Video Spec counterpart: session.started, playback.milestone,
        // playback.rate_changed, volume.changed, presentation.changed, ad.impression,
        // ad.error. Rename them in the `events` table to send them anyway.
        EventType::SessionStarted
        | EventType::PlaybackMilestone
        | EventType::PlaybackRateChanged
        | EventType::VolumeChanged
        | EventType::PresentationChanged
        | EventType::AdImpression
        | EventType::AdError => return None,
    })
}

impl SegmentTranslator {
    pub fn new(
        config: &SegmentConfig,
        names: EventNames,
        pass_properties: bool,
        limits: BatchLimits,
    ) -> Result<Self, SegmentError> {
        if config.write_key.trim().is_empty() {
            return Err(SegmentError::EmptyWriteKey);
        }
        if config.write_key.chars().any(char::is_control) {
            return Err(SegmentError::WriteKeyCharacters);
        }
        let categories = &config.consent_categories;
        if categories.analytics.is_empty()
            || categories.advertising.is_empty()
            || categories.analytics == categories.advertising
        {
            return Err(SegmentError::ConsentCategories);
        }
        let base = match &config.endpoint {
            Some(endpoint) => endpoint_base(endpoint).map_err(SegmentError::Endpoint)?,
            None => match config.region {
                SegmentRegion::Us => US_BASE,
                SegmentRegion::Eu => EU_BASE,
            },
        };
        let auth = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:", config.write_key).as_bytes());
        let mut headers = HeaderMap::new();
        let mut auth_value = HeaderValue::from_str(&format!("Basic {auth}"))
            .map_err(|_| SegmentError::WriteKeyCharacters)?;
        auth_value.set_sensitive(true);
        headers.insert(AUTHORIZATION, auth_value);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if config.gzip {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        Ok(SegmentTranslator {
            categories: config.consent_categories.clone(),
            url: sendable(format!("{base}/v1/batch")).map_err(SegmentError::Endpoint)?,
            headers,
            names,
            pass_properties,
            limits: Limits {
                max_events: limits.max_events.clamp(1, MAX_REQUEST_EVENTS),
                max_items: MAX_REQUEST_EVENTS,
                max_bytes: limits.max_bytes.min(MAX_REQUEST_BYTES),
            },
            secrets: vec![config.write_key.clone(), auth],
            gzip: config.gzip,
        })
    }

    fn request(&self, packed: Packed) -> VendorRequest {
        post(
            &self.url,
            &self.headers,
            packed.body,
            packed.events,
            self.gzip,
        )
    }
}

impl Translate for SegmentTranslator {
    fn translate(&self, events: &[&Event], sent_at: OffsetDateTime) -> Translation {
        let mut translation = Translation::default();
        const OPEN: &[u8] = b"{\"batch\":[";
        let close = format!("],\"sentAt\":\"{}\"}}", format_rfc3339(sent_at));
        let framing = OPEN.len() + close.len();
        let mut packer = Packer::new(self.limits, close.as_bytes());
        let mut item = Vec::with_capacity(2048);
        for (index, event) in events.iter().enumerate() {
            let name = match resolve_name(&self.names, event) {
                Ok(name) => name,
                Err(unnamed) => {
                    translation.refused.push(Refusal::unnamed(
                        index,
                        event.event_type(),
                        unnamed,
                        "segment",
                    ));
                    continue;
                }
            };
            let user = &event.body.user;
            if non_empty(&user.user_id).is_none() && non_empty(&user.anonymous_id).is_none() {
                translation.refused.push(Refusal::refused(
                    index,
                    "missing_user_id",
                    "segment needs user.user_id or user.anonymous_id",
                ));
                continue;
            }
            item.clear();
            let name = segment_name(event, name);
            let mut largest = 0;
            // Items in the unit: a completion makes two, and Segment's cap counts items.
            let pieces = if closes_content(event, &name) { 2 } else { 1 };
            if pieces == 2 {
                // The spec's lifecycle closes the content before the playback.
                write_item(
                    event,
                    CONTENT_COMPLETED,
                    CONTENT_COMPLETED_ID_SUFFIX,
                    self,
                    &mut item,
                );
                largest = item.len();
                item.push(b',');
            }
            let start = item.len();
            write_item(event, &name, "", self, &mut item);
            largest = largest.max(item.len() - start);
            if largest > MAX_EVENT_BYTES
                || !self.limits.fits_alone(OPEN.len(), item.len(), close.len())
            {
                translation.refused.push(Refusal::refused(
                    index,
                    "oversize",
                    format!(
                        "event is {} bytes; segment takes at most {} per event and {} per request",
                        largest.max(item.len()),
                        MAX_EVENT_BYTES,
                        self.limits.max_bytes
                    ),
                ));
                continue;
            }
            let open = |body: &mut Vec<u8>| {
                // Items run a little larger than the events as sent.
                let estimate: usize = events[index..]
                    .iter()
                    .take(self.limits.max_events)
                    .map(|e| e.raw_json().len() + 256)
                    .sum();
                body.reserve(estimate.min(self.limits.max_bytes) + framing);
                body.extend_from_slice(OPEN);
            };
            if let Some(full) = packer.push(index, &item, pieces, open) {
                translation.requests.push(self.request(full));
            }
        }
        if let Some(last) = packer.finish() {
            translation.requests.push(self.request(last));
        }
        translation
    }

    /// 2xx delivered; 400 (bad JSON, oversize) never retried; 408, 429, 5xx retried;
    /// any other 4xx rejected.
    fn classify(&self, response: &VendorResponse) -> Verdict {
        if response.status == StatusCode::BAD_REQUEST {
            return Verdict::Reject;
        }
        super::default_classify(response.status)
    }

    fn secrets(&self) -> Vec<String> {
        self.secrets.clone()
    }

    fn sends_type(&self, event_type: &str) -> bool {
        resolve_type(&self.names, event_type).is_ok()
    }
}

/// Sent before `Video Playback Completed`, as the Video Spec's lifecycle has it.
pub const CONTENT_COMPLETED: &str = "Video Content Completed";
/// Appended to the event id for the `messageId` of the `Video Content Completed` a
/// `playback.completed` also makes, so Segment does not take it for a duplicate.
pub const CONTENT_COMPLETED_ID_SUFFIX: &str = ":content";
/// What a non-fatal `playback.error` is sent as: the Video Spec has no error event and
/// `Video Playback Interrupted` is "when the playback stops unintentionally".
pub const NON_FATAL_ERROR: &str = "Video Playback Error";

/// Whether this event also closes the content: a `playback.completed` under its
/// default name (a renamed one is sent as the config says, alone).
fn closes_content(event: &Event, name: &str) -> bool {
    event.event_type() == "playback.completed" && name == "Video Playback Completed"
}

/// The default name adjusted to the event: an error that did not stop playback
/// (`error.fatal = false`; absent counts as fatal, as the web connector sends it) is
/// not an interruption.
fn segment_name<'a>(event: &Event, name: Cow<'a, str>) -> Cow<'a, str> {
    let non_fatal = event
        .body
        .error
        .as_ref()
        .is_some_and(|e| e.fatal == Some(false));
    if event.event_type() == "playback.error" && non_fatal && name == "Video Playback Interrupted" {
        Cow::Borrowed(NON_FATAL_ERROR)
    } else {
        name
    }
}

/// The config's name, else the default table, else `custom.<name>` sent as `<name>`.
fn resolve_name<'a>(names: &'a EventNames, event: &'a Event) -> Result<Cow<'a, str>, Unnamed> {
    resolve_type(names, event.event_type())
}

fn resolve_type<'a>(names: &'a EventNames, ty: &'a str) -> Result<Cow<'a, str>, Unnamed> {
    names.resolve_custom(ty, default_name(ty), Cow::Borrowed)
}

fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

/// The Video Spec properties of one event, in a fixed order, then the custom
/// properties (when they pass) whose keys the spec properties do not already use.
struct Properties<'a> {
    fields: Vec<(&'static str, Val<'a>)>,
    custom: Option<&'a Map<String, Value>>,
}

impl Serialize for Properties<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for (k, v) in &self.fields {
            map.serialize_entry(k, v)?;
        }
        if let Some(custom) = self.custom {
            for (k, v) in custom {
                if !self.fields.iter().any(|(known, _)| known == k) {
                    map.serialize_entry(k, v)?;
                }
            }
        }
        map.end()
    }
}

fn properties<'a>(event: &'a Event, name: &str, pass_properties: bool) -> Properties<'a> {
    let body = &event.body;
    let mut f: Vec<(&'static str, Val<'a>)> = Vec::with_capacity(32);
    let session_id = body
        .session
        .player_session_id
        .as_deref()
        .unwrap_or(&body.session.id);
    f.push(("session_id", Val::Str(session_id)));
    let content = body.content.as_ref();
    let playback = body.playback.as_ref();
    let is_ad_event = event.event_type().starts_with("ad.");
    if let Some(c) = content {
        if let Some(v) = &c.asset_id {
            f.push(("content_asset_id", Val::Str(v)));
            // Playback events carry the spec's plural too: the contents of the playback.
            if name.starts_with("Video Playback") {
                f.push(("content_asset_ids", Val::Strs(std::slice::from_ref(v))));
            }
        }
    }
    if let Some(ad) = &body.ad {
        if let Some(v) = &ad.ad_id {
            f.push(("ad_asset_id", Val::Str(v)));
        }
        if let Some(pod) = &ad.pod {
            if let Some(v) = &pod.id {
                f.push(("ad_pod_id", Val::Str(v)));
            }
            if let Some(p) = pod.position {
                f.push(("ad_type", Val::Str(ad_type(p))));
            }
        }
    }
    let live = content.is_none_or(|c| c.is_live());
    if is_ad_event {
        // Ad events carry the Video Spec's ad properties: position and length in the ad.
        if let Some(ad) = &body.ad {
            if let Some(v) = &ad.ad_id {
                f.push(("asset_id", Val::Str(v)));
            }
            if let Some(pod) = &ad.pod {
                if let Some(v) = &pod.id {
                    f.push(("pod_id", Val::Str(v)));
                }
                if let Some(v) = pod.ad_position {
                    f.push(("pod_position", Val::U(v.into())));
                }
                if let Some(v) = pod.ad_count {
                    f.push(("pod_length", Val::U(v.into())));
                }
                if let Some(p) = pod.position {
                    f.push(("type", Val::Str(ad_type(p))));
                }
            }
            if let Some(v) = &ad.title {
                f.push(("title", Val::Str(v)));
            }
            if let Some(v) = &ad.advertiser {
                f.push(("publisher", Val::Str(v)));
            }
            if let Some(v) = ad.position_ms {
                f.push(("position", Val::U(seconds(v))));
            }
            if let Some(v) = ad.duration_ms {
                f.push(("total_length", Val::U(seconds(v))));
            }
            if let Some(i) = ad.insertion {
                // SSAI ads are stitched into the stream ("linear"); CSAI ads load apart.
                let load = match i {
                    crate::event::AdInsertion::Ssai => "linear",
                    crate::event::AdInsertion::Csai => "dynamic",
                };
                f.push(("load_type", Val::Str(load)));
            }
        }
    } else {
        if let Some(v) = playback.and_then(|p| p.position_ms) {
            f.push(("position", Val::U(seconds(v))));
        }
        match content.and_then(|c| c.duration_ms) {
            Some(d) if !live => f.push(("total_length", Val::U(seconds(d)))),
            _ => f.push(("total_length", Val::Null)),
        }
        if let Some(c) = content {
            if let Some(v) = &c.asset_id {
                f.push(("asset_id", Val::Str(v)));
            }
            if let Some(v) = &c.title {
                f.push(("title", Val::Str(v)));
            }
            let text = [
                ("description", &c.description),
                ("program", &c.program),
                ("season", &c.season),
                ("episode", &c.episode),
                ("genre", &c.genre),
                ("publisher", &c.publisher),
                ("channel", &c.channel),
                ("airdate", &c.airdate),
            ];
            for (k, v) in text {
                if let Some(v) = v {
                    f.push((k, Val::Str(v)));
                }
            }
            if let Some(v) = &c.keywords {
                f.push(("keywords", Val::Strs(v)));
            }
        }
    }
    f.push(("livestream", Val::B(live)));
    if let Some(p) = playback {
        if let Some(r) = &p.rendition {
            if let Some(v) = r.bitrate_bps {
                f.push(("bitrate", Val::U(kbps(v))));
            }
            if let Some(v) = r.framerate {
                f.push(("framerate", Val::F(v)));
            }
            if let Some(v) = &r.label {
                f.push(("quality", Val::Str(v)));
            }
        }
        if let Some(v) = sound(p.volume, p.muted) {
            f.push(("sound", Val::U(v)));
        }
        if let Some(m) = p.presentation_mode {
            f.push(("full_screen", Val::B(m == PresentationMode::Fullscreen)));
        }
        if let Some(v) = p.dropped_frames {
            f.push(("droppedFrames", Val::U(v)));
        }
    }
    if let Some(v) = body
        .context
        .as_ref()
        .and_then(|c| c.player.as_ref())
        .and_then(|p| p.name.as_deref())
    {
        f.push(("video_player", Val::Str(v)));
    }
    if let Some(d) = &body.data {
        // Sub-second durations keep their milliseconds; the key names the unit.
        if let Some(v) = d.startup_ms {
            f.push(("startup_time_ms", Val::U(v)));
        }
        if let Some(v) = d.duration_ms {
            f.push(("duration_ms", Val::U(v)));
        }
        if let Some(v) = d.to_ms {
            f.push(("seek_position", Val::U(seconds(v))));
        }
        if let Some(v) = d.from_ms {
            // Seek Started: `position` is where the seek came from.
            if let Some(slot) = f.iter_mut().find(|(k, _)| *k == "position") {
                slot.1 = Val::U(seconds(v));
            } else {
                f.push(("position", Val::U(seconds(v))));
            }
        }
        if let Some(v) = d.quartile {
            f.push(("quartile", Val::U(v.into())));
        }
        if let Some(v) = d.percent {
            f.push(("percent", Val::U(v.into())));
        }
        if let Some(v) = &d.reason {
            f.push(("reason", Val::Str(v)));
        }
        if let Some(v) = &d.method {
            f.push(("method", Val::Str(v)));
        }
        if let Some(v) = d.from_bitrate_bps {
            f.push(("previous_bitrate", Val::U(kbps(v))));
        }
    }
    if event.event_type() == crate::qoe::summary::SUMMARY_TYPE {
        if let Some(d) = &body.data {
            summary_properties(d, &mut f);
        }
    }
    if let Some(e) = &body.error {
        // Errors travel as Video Playback Interrupted with `method` = the error.
        if !f.iter().any(|(k, _)| *k == "method") {
            f.push(("method", Val::Text(error_method(e))));
        }
        let text = [
            ("error_code", &e.code),
            ("error_category", &e.category),
            ("error_message", &e.message),
            ("error_source", &e.source),
            ("error_phase", &e.phase),
        ];
        for (k, v) in text {
            if let Some(v) = v {
                f.push((k, Val::Str(v)));
            }
        }
        if let Some(v) = e.fatal {
            f.push(("error_fatal", Val::B(v)));
        }
        if let Some(v) = e.http_status {
            f.push(("error_http_status", Val::U(v.into())));
        }
    }
    Properties {
        fields: f,
        custom: if pass_properties {
            body.properties.as_ref()
        } else {
            None
        },
    }
}

/// `session.summary`'s metrics, named as in `data` but with the unit the Video Spec's
/// other properties use: durations as `*_time_ms` (like `startup_time_ms`), the bitrate
/// in kbps like `bitrate`.
fn summary_properties<'a>(d: &'a crate::event::EventData, f: &mut Vec<(&'static str, Val<'a>)>) {
    if let Some(v) = d.outcome {
        f.push(("outcome", Val::Str(v.as_str())));
    }
    if let Some(v) = d.playback_failure {
        f.push(("playback_failure", Val::B(v)));
    }
    if let Some(v) = d.ended_by {
        f.push(("ended_by", Val::Str(v.as_str())));
    }
    let counts = [
        ("session_events", d.events),
        ("rebuffer_count", d.rebuffer_count),
        ("seek_count", d.seek_count),
        ("bitrate_upswitches", d.bitrate_upswitches),
        ("bitrate_downswitches", d.bitrate_downswitches),
        ("ad_breaks", d.ad_breaks),
        ("ads_started", d.ads_started),
        ("ads_completed", d.ads_completed),
    ];
    let times = [
        ("watched_time_ms", d.watched_ms),
        ("playing_time_ms", d.playing_ms),
        ("paused_time_ms", d.paused_ms),
        ("rebuffer_time_ms", d.rebuffer_ms),
        ("seek_time_ms", d.seek_ms),
    ];
    for (k, v) in times {
        if let Some(v) = v {
            f.push((k, Val::U(v)));
        }
    }
    for (k, v) in counts {
        if let Some(v) = v {
            f.push((k, Val::U(v.into())));
        }
    }
    if let Some(v) = d.rebuffer_ratio {
        f.push(("rebuffer_ratio", Val::F(v)));
    }
    // The average of the time played; null when it never played.
    f.push((
        "average_bitrate",
        d.avg_bitrate_bps.map_or(Val::Null, |v| Val::U(kbps(v))),
    ));
    if let Some(v) = &d.error_code {
        f.push(("error_code", Val::Str(v)));
    }
}

/// `error: <code> <message>`, with whatever parts the player gave.
fn error_method(e: &crate::event::PlayerError) -> String {
    let mut out = String::from("error");
    let mut sep = ": ";
    for part in [&e.code, &e.message].into_iter().flatten() {
        out.push_str(sep);
        out.push_str(part);
        sep = " ";
    }
    out
}

#[derive(Serialize)]
struct Item<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    event: &'a str,
    #[serde(rename = "messageId")]
    message_id: Cow<'a, str>,
    /// On the relay's clock (device skew corrected, see `Event::corrected_timestamp`).
    timestamp: Rfc3339Millis,
    /// The device's own time.
    #[serde(rename = "originalTimestamp")]
    original_timestamp: Rfc3339Millis,
    #[serde(rename = "userId", skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
    #[serde(rename = "anonymousId", skip_serializing_if = "Option::is_none")]
    anonymous_id: Option<&'a str>,
    properties: Properties<'a>,
    context: SegmentContext<'a>,
}

#[derive(Serialize)]
struct SegmentContext<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    locale: Option<&'a str>,
    #[serde(rename = "userAgent", skip_serializing_if = "Option::is_none")]
    user_agent: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ip: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    app: Option<&'a crate::event::AppInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<SegmentDevice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    os: Option<SegmentOs<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    page: Option<&'a crate::event::PageInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    consent: Option<SegmentConsent<'a>>,
    library: Library,
}

/// Segment's consent object: `context.consent.categoryPreferences`.
#[derive(Serialize)]
struct SegmentConsent<'a> {
    #[serde(rename = "categoryPreferences")]
    category_preferences: CategoryPreferences<'a>,
}

/// The choices the event has, keyed by the workspace's category ids.
struct CategoryPreferences<'a> {
    categories: &'a ConsentCategories,
    analytics: Option<bool>,
    advertising: Option<bool>,
}

impl Serialize for CategoryPreferences<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        if let Some(v) = self.analytics {
            map.serialize_entry(&self.categories.analytics, &v)?;
        }
        if let Some(v) = self.advertising {
            map.serialize_entry(&self.categories.advertising, &v)?;
        }
        map.end()
    }
}

#[derive(Serialize)]
struct SegmentDevice<'a> {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    device_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    manufacturer: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
}

#[derive(Serialize)]
struct SegmentOs<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<&'a str>,
}

#[derive(Serialize)]
struct Library {
    name: &'static str,
    version: &'static str,
}

fn write_item(
    event: &Event,
    name: &str,
    id_suffix: &str,
    translator: &SegmentTranslator,
    out: &mut Vec<u8>,
) {
    let pass_properties = translator.pass_properties;
    let body = &event.body;
    let ctx = body.context.as_ref();
    let device = ctx.and_then(|c| c.device.as_ref());
    let item = Item {
        kind: "track",
        event: name,
        message_id: if id_suffix.is_empty() {
            Cow::Borrowed(&body.event_id)
        } else {
            Cow::Owned(format!("{}{id_suffix}", body.event_id))
        },
        timestamp: Rfc3339Millis(event.corrected_timestamp()),
        original_timestamp: Rfc3339Millis(event.timestamp),
        user_id: non_empty(&body.user.user_id),
        anonymous_id: non_empty(&body.user.anonymous_id),
        properties: properties(event, name, pass_properties),
        context: SegmentContext {
            locale: ctx.and_then(|c| c.locale.as_deref()),
            user_agent: ctx.and_then(|c| c.user_agent.as_deref()),
            // The player's own, else the address the relay saw (after the
            // destination's `ip` rule, like the player's).
            ip: ctx
                .and_then(|c| c.ip.as_deref())
                .map(Cow::Borrowed)
                .or_else(|| event.client_ip.map(|ip| Cow::Owned(ip.to_string()))),
            app: ctx.and_then(|c| c.app.as_deref()),
            device: device.map(|d| SegmentDevice {
                device_type: d.device_type.as_deref(),
                manufacturer: d.manufacturer.as_deref(),
                model: d.model.as_deref(),
            }),
            os: device
                .filter(|d| d.os_name.is_some() || d.os_version.is_some())
                .map(|d| SegmentOs {
                    name: d.os_name.as_deref(),
                    version: d.os_version.as_deref(),
                }),
            page: ctx.and_then(|c| c.page.as_deref()),
            consent: ctx
                .and_then(|c| c.consent.as_ref())
                .filter(|c| c.analytics.is_some() || c.advertising.is_some())
                .map(|c| SegmentConsent {
                    category_preferences: CategoryPreferences {
                        categories: &translator.categories,
                        analytics: c.analytics,
                        advertising: c.advertising,
                    },
                }),
            library: Library {
                name: "playrelay",
                version: env!("CARGO_PKG_VERSION"),
            },
        },
    };
    // Serializing into a Vec only fails on a map with non-string keys, which this has not.
    let mut ser = serde_json::Serializer::new(&mut *out);
    let _ = item.serialize(&mut ser);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn config_errors_name_the_field() {
        let limits = BatchLimits {
            max_events: 100,
            max_bytes: 1 << 20,
        };
        let mut config = SegmentConfig {
            write_key: " ".into(),
            region: SegmentRegion::Us,
            endpoint: None,
            consent_categories: ConsentCategories::default(),
            gzip: false,
        };
        let err = SegmentTranslator::new(&config, EventNames::default(), false, limits)
            .err()
            .map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("write_key: must not be empty"));
        config.write_key = "k".into();
        config.endpoint = Some("ftp://x".into());
        let err = SegmentTranslator::new(&config, EventNames::default(), false, limits)
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("endpoint: \"ftp://x\" is not an http:// or https:// URL")
        );
    }

    #[test]
    fn region_picks_the_host_and_auth_has_the_colon() {
        let config: SegmentConfig =
            serde_json::from_str(r#"{"write_key":"abc","region":"eu"}"#).expect("config");
        let limits = BatchLimits {
            max_events: 10_000,
            max_bytes: 10 << 20,
        };
        let t =
            SegmentTranslator::new(&config, EventNames::default(), false, limits).expect("valid");
        assert_eq!(t.url, "https://events.eu1.segmentapis.com/v1/batch");
        assert_eq!(t.limits.max_events, MAX_REQUEST_EVENTS);
        assert_eq!(t.limits.max_bytes, MAX_REQUEST_BYTES);
        // base64("abc:")
        assert_eq!(t.secrets(), vec!["abc".to_string(), "YWJjOg==".to_string()]);
        let bad: Result<SegmentConfig, _> =
            serde_json::from_str(r#"{"write_key":"abc","writekey":"x"}"#);
        assert!(bad.is_err());
    }

    #[test]
    fn classify_never_retries_400() {
        let t = SegmentTranslator::new(
            &SegmentConfig {
                write_key: "k".into(),
                region: SegmentRegion::Us,
                endpoint: Some("http://127.0.0.1:9/".into()),
                consent_categories: ConsentCategories::default(),
                gzip: false,
            },
            EventNames::default(),
            false,
            BatchLimits {
                max_events: 10,
                max_bytes: 1000,
            },
        )
        .expect("valid");
        assert_eq!(t.url, "http://127.0.0.1:9/v1/batch");
        let verdict = |code: u16| {
            t.classify(&VendorResponse {
                status: StatusCode::from_u16(code).expect("status"),
                headers: HeaderMap::new(),
                body: Bytes::new(),
            })
        };
        assert_eq!(verdict(200), Verdict::Delivered);
        assert_eq!(verdict(400), Verdict::Reject);
        assert_eq!(verdict(401), Verdict::Reject);
        assert_eq!(verdict(408), Verdict::Retry);
        assert_eq!(verdict(429), Verdict::Retry);
        assert_eq!(verdict(503), Verdict::Retry);
    }
}
