//! The `session.summary` event: the envelope of the session's first event (in order)
//! and the session's metrics in `data`. It is built as JSON text and parsed like a
//! client's event, so it is a valid `player-event/1` event by construction.

use super::compact::{self, SeededHash};
use super::metrics::{Fact, Metrics};
use crate::event::{
    Content, Context, Event, EventError, Rfc3339Millis, StreamType, SCHEMA_VERSION,
};
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

/// Every platform label value: the player platforms kept as they are, then `other`
/// and `unknown`.
const PLATFORM_LABELS: [&str; 18] = [
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
    "other",
    "unknown",
];

/// A client's `context.player.platform` as a bounded label value.
pub fn platform_label(platform: Option<&str>) -> &'static str {
    let Some(platform) = platform.filter(|p| !p.is_empty()) else {
        return "unknown";
    };
    PLATFORM_LABELS[..16]
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
///
/// The texts are kept packed (see [`compact::pack`]: object keys as single bytes).
/// `content` and `context` are the same for many viewers (one asset, one player build
/// and browser), so the sessionizer shares one copy of each text between its sessions
/// (see [`Interner`]); `session` is kept without its `id`, which is the session's key,
/// and with `user` in one allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// `session` less its leading `{"id":"…"` (so starting with `,` or `}`), or the whole
    /// object (starting with `{`) should it ever not start with its id; then `user`.
    own: Box<[u8]>,
    /// Where `user` starts in `own`.
    user_at: u32,
    content: Option<Arc<[u8]>>,
    context: Option<Arc<[u8]>>,
    pub source: Option<Arc<str>>,
    /// [`STREAM_TYPES`] and [`PLATFORM_LABELS`] indexes of the labels.
    stream_type: u8,
    platform: u8,
}

/// Metric label values of `content.stream_type`, by index.
const STREAM_TYPES: [&str; 5] = ["vod", "live", "live_dvr", "linear", "unknown"];

/// One shared copy of each (packed) envelope part text that open sessions hold.
/// Entries no session holds any more are swept now and then, at an amortized O(1) per
/// session.
#[derive(Debug)]
pub struct Interner {
    texts: std::collections::HashSet<Arc<[u8]>, SeededHash>,
    /// Sweep when there are more entries than this.
    sweep_at: usize,
    /// The last few `content` and `context` values envelopes were made of, with their
    /// shared texts: a session that opens with one of them takes its text without
    /// serializing, packing and hashing it again (most of the cost of a new session).
    contents: Recent<Content>,
    contexts: Recent<Context>,
}

impl Default for Interner {
    fn default() -> Self {
        Interner {
            texts: std::collections::HashSet::with_hasher(SeededHash::random()),
            sweep_at: 0,
            contents: Recent::default(),
            contexts: Recent::default(),
        }
    }
}

/// Values seen last, with their texts; the oldest is replaced.
#[derive(Debug)]
struct Recent<T> {
    entries: Vec<(T, Arc<[u8]>)>,
    /// The entry replaced next once all are taken.
    next: usize,
}

/// How many values [`Recent`] keeps: viewers of a few contents open sessions in
/// turn, and a miss costs one compare per entry.
const RECENT: usize = 4;

impl<T> Default for Recent<T> {
    fn default() -> Self {
        Recent {
            entries: Vec::new(),
            next: 0,
        }
    }
}

impl<T: PartialEq + Clone> Recent<T> {
    fn get(&self, value: &T) -> Option<Arc<[u8]>> {
        self.entries
            .iter()
            .find(|(held, _)| held == value)
            .map(|(_, text)| text.clone())
    }

    fn put(&mut self, value: &T, text: Arc<[u8]>) {
        if self.entries.len() < RECENT {
            self.entries.push((value.clone(), text));
        } else if let Some(entry) = self.entries.get_mut(self.next) {
            *entry = (value.clone(), text);
        }
        self.next = (self.next + 1) % RECENT;
    }
}

impl Interner {
    /// The shared copy of `text`.
    pub fn intern(&mut self, text: &[u8]) -> Arc<[u8]> {
        if let Some(shared) = self.texts.get(text) {
            return shared.clone();
        }
        if self.texts.len() >= self.sweep_at {
            self.sweep();
        }
        let shared: Arc<[u8]> = Arc::from(text);
        self.texts.insert(shared.clone());
        shared
    }

    /// The shared packed text of a `content`.
    fn content(&mut self, content: &Content) -> Arc<[u8]> {
        // Equal values serialize to equal text, except in `custom`: its JSON numbers
        // can be equal and written differently (`0.0`, `-0.0`), so it is left out.
        let exact = content.custom.is_none();
        if let Some(text) = exact.then(|| self.contents.get(content)).flatten() {
            return text;
        }
        let text = self.intern(&packed_json(content));
        if exact {
            self.contents.put(content, text.clone());
        }
        text
    }

    /// The shared packed text of a `context` (strings and booleans only: equal values
    /// are equal text).
    fn context(&mut self, context: &Context) -> Arc<[u8]> {
        if let Some(text) = self.contexts.get(context) {
            return text;
        }
        let text = self.intern(&packed_json(context));
        self.contexts.put(context, text.clone());
        text
    }

    /// Drops the texts nothing else holds.
    pub fn sweep(&mut self) {
        self.texts.retain(|t| Arc::strong_count(t) > 1);
        self.sweep_at = self.texts.len() * 2 + 64;
    }

    pub fn len(&self) -> usize {
        self.texts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }

    /// Heap bytes of the table and its texts, approximately.
    pub fn heap_bytes(&self) -> usize {
        self.texts.capacity() * (std::mem::size_of::<Arc<[u8]>>() + 1)
            + self.texts.iter().map(|t| 16 + t.len()).sum::<usize>()
    }
}

fn to_json<T: Serialize>(value: &T) -> String {
    // Plain structs of strings and numbers: serializing cannot fail.
    serde_json::to_string(value).unwrap_or_else(|_| "{}".into())
}

/// A value's JSON text, packed.
fn packed_json<T: Serialize>(value: &T) -> Vec<u8> {
    let text = to_json(value);
    let mut packed = Vec::with_capacity(text.len());
    compact::pack(&text, &mut packed);
    packed
}

/// `{"id":<id>` as serde_json writes it, the start of a `session` object.
fn session_prefix(id: &str) -> String {
    format!("{{\"id\":{}", to_json(&id))
}

/// `session` less `{"id":<id>` as serde_json writes it, when it starts so (see
/// [`Envelope::own`]). An id with nothing to escape is written as it is between
/// quotes, which is compared in place; any other goes through serde_json.
fn without_id<'a>(session: &'a str, id: &str) -> Option<&'a str> {
    let plain = !id.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\');
    if !plain {
        return session.strip_prefix(&session_prefix(id));
    }
    session
        .strip_prefix("{\"id\":\"")?
        .strip_prefix(id)?
        .strip_prefix('"')
}

/// The order of the event an envelope is from (see [`Fact::order`]).
pub type Order = (u32, i64, u64);

impl Envelope {
    /// The envelope of `event`, with its own copies of every part.
    pub fn of(event: &Event) -> Envelope {
        Envelope::build(event, None)
    }

    /// The envelope of `event`, sharing `content` and `context` through `interner`.
    pub fn interned(event: &Event, interner: &mut Interner) -> Envelope {
        Envelope::build(event, Some(interner))
    }

    fn build(event: &Event, mut interner: Option<&mut Interner>) -> Envelope {
        let body = &event.body;
        let session = to_json(&body.session);
        let session = without_id(&session, &body.session.id).unwrap_or(&session);
        let user = to_json(&body.user);
        let mut own = Vec::with_capacity(session.len() + user.len());
        compact::pack(session, &mut own);
        let user_at = own.len();
        compact::pack(&user, &mut own);
        let content = body
            .content
            .as_ref()
            .map(|content| match interner.as_deref_mut() {
                Some(interner) => interner.content(content),
                None => Arc::from(packed_json(content)),
            });
        let context = body.context.as_ref().map(|context| match interner {
            Some(interner) => interner.context(context),
            None => Arc::from(packed_json(context)),
        });
        let stream_type = stream_type_label(body.content.as_ref().and_then(|c| c.stream_type));
        let platform = platform_label(
            body.context
                .as_ref()
                .and_then(|c| c.player.as_ref())
                .and_then(|p| p.platform.as_deref()),
        );
        Envelope {
            // Request bodies are far below 4 GiB.
            user_at: u32::try_from(user_at).unwrap_or(u32::MAX),
            own: own.into_boxed_slice(),
            content,
            context,
            source: event.source.clone(),
            stream_type: label_index(&STREAM_TYPES, stream_type),
            platform: label_index(&PLATFORM_LABELS, platform),
        }
    }

    /// The packed `session` and `user` texts.
    fn parts(&self) -> (&[u8], &[u8]) {
        self.own
            .split_at((self.user_at as usize).min(self.own.len()))
    }

    pub fn labels(&self) -> Labels {
        Labels {
            stream_type: STREAM_TYPES
                .get(usize::from(self.stream_type))
                .copied()
                .unwrap_or("unknown"),
            platform: PLATFORM_LABELS
                .get(usize::from(self.platform))
                .copied()
                .unwrap_or("unknown"),
        }
    }

    /// The members `"session":…,"user":…[,"content":…][,"context":…]` of the summary,
    /// as one JSON object of the four would have them.
    pub fn write_members(&self, session_id: &str, out: &mut String) {
        let (session, user) = self.parts();
        out.push_str("\"session\":");
        let at = out.len();
        compact::unpack(session, out);
        if !out[at..].starts_with('{') {
            out.insert_str(at, &session_prefix(session_id));
        }
        out.push_str(",\"user\":");
        compact::unpack(user, out);
        if let Some(content) = &self.content {
            out.push_str(",\"content\":");
            compact::unpack(content, out);
        }
        if let Some(context) = &self.context {
            out.push_str(",\"context\":");
            compact::unpack(context, out);
        }
    }

    /// Appends the envelope, from the event of order `order`, to a checkpoint (see
    /// [`super::checkpoint`]). The texts are written unpacked, so the file does not
    /// depend on how they are packed.
    pub fn save(&self, order: Order, out: &mut Vec<u8>) {
        use super::checkpoint::*;
        let (session, user) = self.parts();
        put_u32(out, order.0);
        put_i64(out, order.1);
        put_u64(out, order.2);
        put_str(out, &compact::unpacked_text(session));
        put_str(out, &compact::unpacked_text(user));
        let text = |t: &Option<Arc<[u8]>>| t.as_deref().map(compact::unpacked_text);
        put_opt_str(out, text(&self.content).as_deref());
        put_opt_str(out, text(&self.context).as_deref());
        put_opt_str(out, self.source.as_deref());
        put_u8(out, self.stream_type);
        put_u8(out, self.platform);
    }

    /// An envelope [`Envelope::save`] wrote and its event's order; `None` when the bytes
    /// are not one.
    pub fn restore(
        r: &mut super::checkpoint::Reader<'_>,
        interner: &mut Interner,
    ) -> Option<(Order, Envelope)> {
        let order = (r.u32()?, r.i64()?, r.u64()?);
        let mut own = Vec::new();
        compact::pack(r.str()?, &mut own);
        let user_at = u32::try_from(own.len()).ok()?;
        compact::pack(r.str()?, &mut own);
        let mut shared = |text: Option<&str>| {
            text.map(|text| {
                let mut packed = Vec::with_capacity(text.len());
                compact::pack(text, &mut packed);
                interner.intern(&packed)
            })
        };
        let content = shared(r.opt_str()?);
        let context = shared(r.opt_str()?);
        let envelope = Envelope {
            own: own.into_boxed_slice(),
            user_at,
            content,
            context,
            source: r.opt_str()?.map(Arc::from),
            stream_type: r.u8()?,
            platform: r.u8()?,
        };
        Some((order, envelope))
    }

    /// Heap bytes this envelope holds by itself (shared parts are counted by the
    /// [`Interner`]).
    pub fn heap_bytes(&self) -> usize {
        self.own.len()
    }
}

fn label_index(labels: &[&str], label: &str) -> u8 {
    labels
        .iter()
        .position(|l| *l == label)
        .and_then(|i| u8::try_from(i).ok())
        .unwrap_or(u8::MAX)
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
    let mut members = String::with_capacity(1024);
    envelope.write_members(session_id, &mut members);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn event(session_id: &str, content: &str, context: &str) -> Event {
        let text = format!(
            r#"{{"event_id":"00000000-0000-4000-8000-000000000001","type":"playback.started","timestamp":"2026-11-01T19:00:00.000Z","session":{{"id":{},"app_session_id":"app"}},"user":{{"anonymous_id":"a"}}{content}{context}}}"#,
            to_json(&session_id)
        );
        let raw: Box<RawValue> = serde_json::from_str(&text).expect("json");
        Event::from_json(&raw, OffsetDateTime::UNIX_EPOCH).expect("valid")
    }

    #[test]
    fn shared_envelopes_are_the_envelopes_of_their_events() {
        let contents = [
            "",
            r#","content":{"asset_id":"a","url":"https://cdn/a.m3u8","stream_type":"vod"}"#,
            r#","content":{"asset_id":"b","url":"https://cdn/b.m3u8"}"#,
            r#","content":{"asset_id":"a","keywords":["x","y"]}"#,
            // Equal as values, written differently: never taken for one another.
            r#","content":{"asset_id":"a","custom":{"n":0.0}}"#,
            r#","content":{"asset_id":"a","custom":{"n":-0.0}}"#,
        ];
        let contexts = [
            "",
            r#","context":{"player":{"name":"p","platform":"web"},"locale":"fr-FR"}"#,
            r#","context":{"player":{"name":"p","platform":"web"},"locale":"de-DE"}"#,
            r#","context":{"player":{"name":"p","platform":"ios"},"consent":{"analytics":false}}"#,
            r#","context":{"user_agent":"Mozilla/5.0 (X11)","consent":{"analytics":true}}"#,
            r#","context":{"user_agent":"Mozilla/5.0 (X11) v2"}"#,
        ];
        let ids = [
            "s-1",
            "s\"2",
            "s\\3",
            "0b1e5d7c-0000-4000-8000-00000000000a",
        ];
        let mut rng = fastrand::Rng::with_seed(3);
        let mut interner = Interner::default();
        for _ in 0..400 {
            let id = ids[rng.usize(..ids.len())];
            let e = event(
                id,
                contents[rng.usize(..contents.len())],
                contexts[rng.usize(..contexts.len())],
            );
            let shared = Envelope::interned(&e, &mut interner);
            assert_eq!(shared, Envelope::of(&e));
            let mut members = String::new();
            shared.write_members(id, &mut members);
            let value: serde_json::Value =
                serde_json::from_str(&format!("{{{members}}}")).expect("members are JSON");
            assert_eq!(value["session"], serde_json::json!(&e.body.session));
            assert_eq!(value["content"], serde_json::json!(&e.body.content));
            assert_eq!(
                members.contains("-0.0"),
                e.raw_json().contains("-0.0"),
                "{members}"
            );
        }
        // One shared copy of each text, however many envelopes were made.
        assert!(
            interner.len() <= contents.len() + contexts.len(),
            "{}",
            interner.len()
        );
    }
}
