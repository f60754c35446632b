//! The QoE metrics of one session, as a pure function of its events (docs/qoe.md has
//! the definitions and their sources).
//!
//! An open session keeps one [`Fact`] per distinct event, 32 bytes, not the event: the
//! metrics need only the type, the time, the order, the player state and the bitrate.
//! [`compute`] sorts and de-duplicates the facts itself, so the same events delivered
//! in any order, any number of times, give the same [`Metrics`].

use crate::event::{Event, PlaybackState, SessionEnd, SessionOutcome};
use xxhash_rust::xxh3::xxh3_64;

/// What an event is, for the metrics; `Other` counts only as an event of the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Requested,
    Started,
    Paused,
    Resumed,
    RebufferStarted,
    RebufferEnded,
    SeekStarted,
    SeekEnded,
    Completed,
    Exited,
    Error,
    QualityChanged,
    AdBreakStarted,
    AdBreakEnded,
    AdStarted,
    AdCompleted,
    Other,
}

impl Kind {
    /// Every kind, by its `u8` value.
    pub const ALL: [Kind; 17] = [
        Kind::Requested,
        Kind::Started,
        Kind::Paused,
        Kind::Resumed,
        Kind::RebufferStarted,
        Kind::RebufferEnded,
        Kind::SeekStarted,
        Kind::SeekEnded,
        Kind::Completed,
        Kind::Exited,
        Kind::Error,
        Kind::QualityChanged,
        Kind::AdBreakStarted,
        Kind::AdBreakEnded,
        Kind::AdStarted,
        Kind::AdCompleted,
        Kind::Other,
    ];

    /// The kind `kind as u8` was made from (a saved session's facts).
    pub fn from_u8(value: u8) -> Option<Kind> {
        Kind::ALL
            .get(usize::from(value))
            .copied()
            .filter(|k| *k as u8 == value)
    }

    /// The kind of an event: by its parsed type when it has one (no string compares).
    pub fn of_event(event: &Event) -> Kind {
        match event.known_type() {
            Some(known) => Kind::of_known(known),
            None => Kind::of(event.event_type()),
        }
    }

    /// [`Kind::of`] a contract type.
    pub fn of_known(event_type: crate::event::EventType) -> Kind {
        use crate::event::EventType as T;
        match event_type {
            T::PlaybackRequested => Kind::Requested,
            T::PlaybackStarted => Kind::Started,
            T::PlaybackPaused => Kind::Paused,
            T::PlaybackResumed => Kind::Resumed,
            T::PlaybackRebufferStarted => Kind::RebufferStarted,
            T::PlaybackRebufferEnded => Kind::RebufferEnded,
            T::PlaybackSeekStarted => Kind::SeekStarted,
            T::PlaybackSeekEnded => Kind::SeekEnded,
            T::PlaybackCompleted => Kind::Completed,
            T::PlaybackExited => Kind::Exited,
            T::PlaybackError => Kind::Error,
            T::QualityChanged => Kind::QualityChanged,
            T::AdBreakStarted => Kind::AdBreakStarted,
            T::AdBreakEnded => Kind::AdBreakEnded,
            T::AdStarted => Kind::AdStarted,
            T::AdCompleted => Kind::AdCompleted,
            _ => Kind::Other,
        }
    }

    pub fn of(event_type: &str) -> Kind {
        match event_type {
            "playback.requested" => Kind::Requested,
            "playback.started" => Kind::Started,
            "playback.paused" => Kind::Paused,
            "playback.resumed" => Kind::Resumed,
            "playback.rebuffer_started" => Kind::RebufferStarted,
            "playback.rebuffer_ended" => Kind::RebufferEnded,
            "playback.seek_started" => Kind::SeekStarted,
            "playback.seek_ended" => Kind::SeekEnded,
            "playback.completed" => Kind::Completed,
            "playback.exited" => Kind::Exited,
            "playback.error" => Kind::Error,
            "quality.changed" => Kind::QualityChanged,
            "ad.break_started" => Kind::AdBreakStarted,
            "ad.break_ended" => Kind::AdBreakEnded,
            "ad.started" => Kind::AdStarted,
            "ad.completed" => Kind::AdCompleted,
            _ => Kind::Other,
        }
    }
}

/// `Fact::flags`: a fatal `playback.error`.
pub const FATAL: u8 = 1;
/// `Fact::flags`: a `quality.changed` to a higher bitrate than `data.from_bitrate_bps`.
pub const UPSWITCH: u8 = 2;
/// `Fact::flags`: a `quality.changed` to a lower bitrate.
pub const DOWNSWITCH: u8 = 4;
/// `Fact::flags`: the event was in the `playing` state (said, or implied by its type).
pub const PLAYING: u8 = 8;

/// Sequence of an event that has none: after every numbered one, ordered by time.
pub const NO_SEQUENCE: u32 = u32::MAX;

/// What the metrics need of one event (32 bytes), or of a run of events that change
/// nothing but the session's length (see [`add`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fact {
    /// xxh3 of `event_id`: the de-duplication key.
    pub id: u64,
    /// The event's `timestamp`, in ms since the Unix epoch.
    pub at_ms: i64,
    /// `sequence`, saturated at `u32::MAX - 1`; [`NO_SEQUENCE`] when absent.
    pub sequence: u32,
    /// `playback.rendition.bitrate_bps`, saturated; 0 when unknown.
    pub bitrate_bps: u32,
    /// Events folded into this one: sequences `sequence + 1 ..= sequence + run`.
    pub run: u16,
    /// From this event's time to the last folded one's, in ms.
    pub span_ms: u32,
    pub kind: Kind,
    pub flags: u8,
}

impl Fact {
    pub fn of(event: &Event) -> Fact {
        let body = &event.body;
        let kind = Kind::of_event(event);
        let playback = body.playback.as_ref();
        let bitrate = playback
            .and_then(|p| p.rendition.as_ref())
            .and_then(|r| r.bitrate_bps);
        let mut flags = 0;
        let playing = match playback.and_then(|p| p.state) {
            Some(state) => state == PlaybackState::Playing,
            // No state said: the types that only happen while playing imply it.
            None => {
                matches!(kind, Kind::Started | Kind::Resumed | Kind::RebufferEnded)
                    || match event.known_type() {
                        Some(known) => known == crate::event::EventType::PlaybackHeartbeat,
                        None => event.event_type() == "playback.heartbeat",
                    }
            }
        };
        if playing {
            flags |= PLAYING;
        }
        if kind == Kind::Error && body.error.as_ref().and_then(|e| e.fatal) == Some(true) {
            flags |= FATAL;
        }
        if kind == Kind::QualityChanged {
            let from = body.data.as_ref().and_then(|d| d.from_bitrate_bps);
            match (bitrate, from) {
                (Some(to), Some(from)) if to > from => flags |= UPSWITCH,
                (Some(to), Some(from)) if to < from => flags |= DOWNSWITCH,
                _ => {}
            }
        }
        let t = event.timestamp;
        let millis = t.unix_timestamp().saturating_mul(1000) + i64::from(t.millisecond());
        Fact {
            id: xxh3_64(body.event_id.as_bytes()),
            at_ms: millis,
            sequence: body
                .sequence
                .map_or(NO_SEQUENCE, |s| s.min(u64::from(NO_SEQUENCE) - 1) as u32),
            bitrate_bps: bitrate.map_or(0, |b| b.min(u64::from(u32::MAX)) as u32),
            run: 0,
            span_ms: 0,
            kind,
            flags,
        }
    }

    /// The time of the last event this fact stands for.
    pub fn end_ms(&self) -> i64 {
        self.at_ms.saturating_add(i64::from(self.span_ms))
    }

    /// The sequence of the last event this fact stands for.
    pub fn end_sequence(&self) -> u32 {
        self.sequence.saturating_add(u32::from(self.run))
    }

    /// The order of a session's events: `sequence`, then `timestamp` (then the id, so
    /// that ties still sort the same whatever the arrival order).
    pub fn order(&self) -> (u32, i64, u64) {
        (self.sequence, self.at_ms, self.id)
    }

    fn fatal(&self) -> bool {
        self.flags & FATAL != 0
    }
}

/// The summary metrics of one session (`session.summary`'s `data`).
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    pub outcome: SessionOutcome,
    pub playback_failure: bool,
    pub ended_by: SessionEnd,
    pub events: u32,
    pub startup_ms: Option<u64>,
    pub watched_ms: u64,
    pub playing_ms: u64,
    pub paused_ms: u64,
    pub rebuffer_count: u32,
    pub rebuffer_ms: u64,
    pub rebuffer_ratio: f64,
    pub seek_count: u32,
    pub seek_ms: u64,
    pub avg_bitrate_bps: Option<u64>,
    pub bitrate_upswitches: u32,
    pub bitrate_downswitches: u32,
    pub ad_breaks: u32,
    pub ads_started: u32,
    pub ads_completed: u32,
    /// [`Fact::id`] of the last fatal error, whose code the session keeps apart.
    pub last_fatal: Option<u64>,
}

/// Adds one event's fact to a session's facts (kept in arrival order); false when the
/// session already has the event.
///
/// An event whose only effect on the metrics is to be one more event and to lengthen
/// the session — a `playback.heartbeat`, milestone, volume change or any other type
/// with no span of its own, in the `playing` state, at the bitrate of the event right
/// before it by `sequence` (consecutive numbers, so nothing can arrive between them),
/// which is playing too — is folded into that event's fact: the time-weighted bitrate
/// is the same with or without it. This keeps a long session's memory proportional to
/// what happened in it, not to its length. A later copy of a folded event is known by
/// its `sequence`, since its id is no longer kept.
pub fn add(facts: &mut Vec<Fact>, fact: Fact) -> bool {
    insert(facts, fact) != Inserted::Duplicate
}

/// Where [`insert`] put a fact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// The session already had the event.
    Duplicate,
    /// Folded into the fact of the event right before it.
    Folded,
    /// A fact of its own, at the end.
    Pushed,
}

/// A session's facts, as [`insert`] reads and changes them: a `Vec<Fact>`, or the
/// sessionizer's compact store.
pub trait FactList {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn get(&self, i: usize) -> Fact;
    /// [`scan`] of the facts.
    fn scan(&self, fact: &Fact) -> Option<Option<usize>>;
    /// Sets `run` and `span_ms` of fact `i` (one more event folded into it).
    fn fold(&mut self, i: usize, run: u16, span_ms: u32);
    fn push(&mut self, fact: Fact);
}

impl FactList for Vec<Fact> {
    fn len(&self) -> usize {
        <[Fact]>::len(self)
    }
    fn get(&self, i: usize) -> Fact {
        self[i]
    }
    fn scan(&self, fact: &Fact) -> Option<Option<usize>> {
        scan(self, |f| (f.id, f.sequence, f.run), fact)
    }
    fn fold(&mut self, i: usize, run: u16, span_ms: u32) {
        self[i].run = run;
        self[i].span_ms = span_ms;
    }
    fn push(&mut self, fact: Fact) {
        if self.len() == self.capacity() {
            // Grow by half, not double: an open session's memory is the relay's.
            self.reserve_exact(self.len() / 2 + 2);
        }
        Vec::push(self, fact);
    }
}

/// What [`insert`] looks for before adding `fact` to `items`, whose `(id, sequence,
/// run)` `key` reads: `None` when the session has the event already (its id, or its
/// sequence within a folded run), else the fact of the event right before it by
/// sequence, if any (the last such in arrival order).
///
/// Every event pays for this over all of its session's facts, so the pass over them
/// all has one test per check and no early exit but a copy; the fact right before,
/// which is the last one when events come in order, is looked for from the end.
#[inline]
pub fn scan<T>(
    items: &[T],
    key: impl Fn(&T) -> (u64, u32, u16),
    fact: &Fact,
) -> Option<Option<usize>> {
    if fact.sequence == NO_SEQUENCE {
        return (!items.iter().any(|item| key(item).0 == fact.id)).then_some(None);
    }
    // `sequence < fact.sequence <= sequence + run` (the sequence of an event folded
    // into that fact) as one unsigned compare: the difference wraps to a huge number
    // when `sequence >= fact.sequence`, and a fact without a sequence (`u32::MAX`)
    // never holds it. In u64, where nothing wraps back into range; `sequence + run`
    // past `u32::MAX` is the same test as the saturated end, as `fact.sequence` is
    // below it.
    let wanted = u64::from(fact.sequence);
    let copy = |(id, sequence, run): (u64, u32, u16)| {
        id == fact.id || wanted.wrapping_sub(u64::from(sequence) + 1) < u64::from(run)
    };
    if items.iter().any(|item| copy(key(item))) {
        return None;
    }
    let before = items.iter().rposition(|item| {
        let (_, sequence, run) = key(item);
        sequence != NO_SEQUENCE
            && sequence.saturating_add(u32::from(run)).checked_add(1) == Some(fact.sequence)
    });
    Some(before)
}

/// [`scan`] as it was written first, one pass with every check in turn: what the fast
/// form is tested against.
#[cfg(test)]
pub(crate) fn scan_reference<T>(
    items: &[T],
    key: impl Fn(&T) -> (u64, u32, u16),
    fact: &Fact,
) -> Option<Option<usize>> {
    let numbered = fact.sequence != NO_SEQUENCE;
    let mut before = None;
    for (i, item) in items.iter().enumerate().rev() {
        let (id, sequence, run) = key(item);
        if id == fact.id {
            return None;
        }
        if numbered && sequence != NO_SEQUENCE {
            let end = sequence.saturating_add(u32::from(run));
            // A copy of an event folded into this fact.
            if run > 0 && sequence < fact.sequence && fact.sequence <= end {
                return None;
            }
            if before.is_none() && end.checked_add(1) == Some(fact.sequence) {
                before = Some(i);
            }
        }
    }
    Some(before)
}

/// [`add`] on any [`FactList`], saying where the fact went.
pub fn insert<L: FactList + ?Sized>(facts: &mut L, fact: Fact) -> Inserted {
    let Some(before) = facts.scan(&fact) else {
        return Inserted::Duplicate;
    };
    let foldable = fact.kind == Kind::Other && fact.flags == PLAYING && fact.run == 0;
    if let Some(i) = before.filter(|_| foldable) {
        let previous = facts.get(i);
        let span = fact.at_ms.checked_sub(previous.at_ms).map(u32::try_from);
        if previous.flags & PLAYING != 0
            && previous.bitrate_bps == fact.bitrate_bps
            && previous.run < u16::MAX
            && fact.at_ms >= previous.end_ms()
        {
            if let Some(Ok(span)) = span {
                facts.fold(i, previous.run + 1, span);
                return Inserted::Folded;
            }
        }
    }
    facts.push(fact);
    Inserted::Pushed
}

/// Sorts `facts` into the session's order and removes repeated event ids.
pub fn normalize(facts: &mut Vec<Fact>) {
    facts.sort_unstable_by_key(Fact::order);
    // The same event_id twice: a retry, whatever its sequence or timestamp says. Keep
    // the first in order, so the result does not depend on which copy came first.
    let mut seen = std::collections::HashSet::with_capacity(facts.len());
    facts.retain(|f| seen.insert(f.id));
}

/// The closing reason a session's own events give: the first `playback.completed`,
/// `playback.exited` or fatal error in order.
pub fn closing(facts: &[Fact]) -> Option<SessionEnd> {
    facts.iter().find_map(closing_of)
}

/// The closing reason one event gives, if any.
pub fn closing_of(fact: &Fact) -> Option<SessionEnd> {
    match fact.kind {
        Kind::Completed => Some(SessionEnd::Completed),
        Kind::Exited => Some(SessionEnd::Exited),
        Kind::Error if fact.fatal() => Some(SessionEnd::Error),
        _ => None,
    }
}

/// Half-open spans of time `[from, to)` in ms.
type Spans = Vec<(i64, i64)>;

/// The metrics of a session from its facts (any order, repeats allowed). `otherwise`
/// is the `ended_by` when no event closed it (idle timeout, eviction, shutdown).
pub fn compute(facts: &[Fact], otherwise: SessionEnd) -> Metrics {
    let mut facts = facts.to_vec();
    normalize(&mut facts);
    compute_sorted(&facts, otherwise)
}

/// [`compute`] over facts already [`normalize`]d.
pub fn compute_sorted(facts: &[Fact], otherwise: SessionEnd) -> Metrics {
    let first = |kind: Kind| facts.iter().position(|f| f.kind == kind);
    let requested = first(Kind::Requested);
    let started = first(Kind::Started);
    let fatal_positions = || facts.iter().enumerate().filter(|(_, f)| f.fatal());
    let last_fatal = facts.iter().rev().find(|f| f.fatal()).map(|f| f.id);
    let outcome = if started.is_some() {
        SessionOutcome::Started
    } else if last_fatal.is_some() {
        SessionOutcome::StartFailure
    } else {
        SessionOutcome::ExitBeforeStart
    };
    let playback_failure = started.is_some_and(|s| fatal_positions().any(|(i, _)| i >= s));
    let last_at = facts.last().map_or(0, Fact::end_ms);
    // Watching begins at the play request (or the first frame when no request was sent).
    let begin = requested.or(started).map(|i| facts[i].at_ms);
    let window = begin.map(|b| (b, last_at.max(b)));

    let paused = pairs(facts, Kind::Paused, Kind::Resumed, last_at);
    let rebuffers = pairs(facts, Kind::RebufferStarted, Kind::RebufferEnded, last_at);
    let seeks = pairs(facts, Kind::SeekStarted, Kind::SeekEnded, last_at);
    let clip = |spans: &Spans| match window {
        Some((from, to)) => intersect(spans, &[(from, to)]),
        None => Vec::new(),
    };
    let paused_in = union(clip(&paused));
    let seeks_in = union(clip(&seeks));
    // Waiting for data while seeking or paused is the seek's or the pause's, not a stall.
    let not_stalls = union([seeks_in.clone(), paused_in.clone()].concat());
    let rebuffer_in = minus(&union(clip(&rebuffers)), &not_stalls);
    let paused_ms = measure(&paused_in);
    let watched_ms = window.map_or(0, |(from, to)| span_ms(from, to).saturating_sub(paused_ms));
    let rebuffer_ms = measure(&rebuffer_in);
    // A rebuffer counts when some of it is a stall (outside seeks and pauses).
    let rebuffer_count = rebuffers
        .iter()
        .filter(|span| measure(&minus(&clip(&vec![**span]), &not_stalls)) > 0)
        .count() as u32;
    let rebuffer_ratio = if watched_ms == 0 {
        0.0
    } else {
        (rebuffer_ms as f64 / watched_ms as f64).clamp(0.0, 1.0)
    };
    let playing_ms = match started {
        Some(s) => {
            // Within the watched window, even when clocks put the first frame before
            // the request.
            let from = facts[s].at_ms.max(begin.unwrap_or(i64::MIN));
            let to = last_at.max(from);
            let stopped =
                union([paused_in.clone(), rebuffer_in.clone(), seeks_in.clone()].concat());
            span_ms(from, to).saturating_sub(measure(&intersect(&stopped, &[(from, to)])))
        }
        None => 0,
    };
    let startup_ms = match (requested, started) {
        (Some(r), Some(s)) if r < s => {
            let (from, to) = (facts[r].at_ms, facts[s].at_ms.max(facts[r].at_ms));
            let ads = pairs(&facts[r..=s], Kind::AdBreakStarted, Kind::AdBreakEnded, to);
            let in_ads = measure(&intersect(&union(ads), &[(from, to)]));
            Some(span_ms(from, to).saturating_sub(in_ads))
        }
        _ => None,
    };
    // Time-weighted bitrate: each stretch from a playing event to the next one counts at
    // the rendition the earlier event reports.
    // A folded run counts its own stretches (its times only go forward), then the one
    // from its last event to the next.
    let (mut weighted, mut weight) = (0u128, 0u128);
    for (i, a) in facts.iter().enumerate() {
        if a.flags & PLAYING != 0 && a.bitrate_bps > 0 {
            let next = facts.get(i + 1).map_or(0, |b| span_ms(a.end_ms(), b.at_ms));
            let ms = u128::from(a.span_ms) + u128::from(next);
            weighted += ms * u128::from(a.bitrate_bps);
            weight += ms;
        }
    }
    let avg_bitrate_bps = (weight > 0).then(|| (weighted / weight) as u64);
    let count = |kind: Kind| facts.iter().filter(|f| f.kind == kind).count() as u32;
    let flagged = |flag: u8| facts.iter().filter(|f| f.flags & flag != 0).count() as u32;
    Metrics {
        outcome,
        playback_failure,
        ended_by: closing(facts).unwrap_or(otherwise),
        events: facts.iter().map(|f| 1 + u32::from(f.run)).sum(),
        startup_ms,
        watched_ms,
        playing_ms,
        paused_ms,
        rebuffer_count,
        rebuffer_ms,
        rebuffer_ratio,
        seek_count: seeks.len() as u32,
        seek_ms: measure(&seeks_in),
        avg_bitrate_bps,
        bitrate_upswitches: flagged(UPSWITCH),
        bitrate_downswitches: flagged(DOWNSWITCH),
        ad_breaks: count(Kind::AdBreakStarted),
        ads_started: count(Kind::AdStarted),
        ads_completed: count(Kind::AdCompleted),
        last_fatal,
    }
}

/// `to - from` in ms, 0 when the clock went backwards.
fn span_ms(from: i64, to: i64) -> u64 {
    u64::try_from(to.saturating_sub(from)).unwrap_or(0)
}

/// Each `open` event to the next `close` event, in order; a repeated `open` while open
/// is the same span, a `close` with nothing open is ignored, and a span still open at
/// the end runs to `end`.
fn pairs(facts: &[Fact], open: Kind, close: Kind, end: i64) -> Spans {
    let mut spans = Vec::new();
    let mut since: Option<i64> = None;
    for f in facts {
        if f.kind == open && since.is_none() {
            since = Some(f.at_ms);
        } else if f.kind == close {
            if let Some(from) = since.take() {
                spans.push((from, f.at_ms.max(from)));
            }
        }
    }
    if let Some(from) = since {
        spans.push((from, end.max(from)));
    }
    spans
}

/// The spans merged: sorted, non-overlapping, non-empty.
fn union(mut spans: Spans) -> Spans {
    spans.retain(|(a, b)| a < b);
    spans.sort_unstable();
    let mut out: Spans = Vec::with_capacity(spans.len());
    for (a, b) in spans {
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// Where `a` and `b` overlap (`b` merged; `a` any spans).
fn intersect(a: &[(i64, i64)], b: &[(i64, i64)]) -> Spans {
    let mut out = Vec::new();
    for &(a0, a1) in a {
        for &(b0, b1) in b {
            let (from, to) = (a0.max(b0), a1.min(b1));
            if from < to {
                out.push((from, to));
            }
        }
    }
    out
}

/// `a` less `b`, both merged.
fn minus(a: &[(i64, i64)], b: &[(i64, i64)]) -> Spans {
    let mut out = Vec::new();
    for &(mut from, to) in a {
        for &(b0, b1) in b {
            if b1 <= from || b0 >= to {
                continue;
            }
            if b0 > from {
                out.push((from, b0));
            }
            from = from.max(b1);
        }
        if from < to {
            out.push((from, to));
        }
    }
    out
}

fn measure(spans: &[(i64, i64)]) -> u64 {
    spans.iter().map(|&(a, b)| span_ms(a, b)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fact(sequence: u32, at_ms: i64, kind: Kind, flags: u8, bitrate_bps: u32) -> Fact {
        Fact {
            id: u64::from(sequence) + 1,
            at_ms,
            sequence,
            bitrate_bps,
            run: 0,
            span_ms: 0,
            kind,
            flags,
        }
    }

    #[test]
    fn heartbeats_that_change_nothing_fold_and_their_copies_are_known() {
        let p = PLAYING;
        let mut facts = Vec::new();
        assert!(add(&mut facts, fact(0, 0, Kind::Requested, 0, 0)));
        assert!(add(&mut facts, fact(1, 1_000, Kind::Started, p, 1_000)));
        for n in 2..10 {
            assert!(add(
                &mut facts,
                fact(n, i64::from(n) * 10_000, Kind::Other, p, 1_000)
            ));
        }
        // Another bitrate, or not playing: kept apart.
        assert!(add(&mut facts, fact(10, 100_000, Kind::Other, p, 2_000)));
        assert!(add(&mut facts, fact(11, 110_000, Kind::Other, 0, 2_000)));
        assert_eq!(facts.len(), 4);
        assert_eq!((facts[1].run, facts[1].span_ms), (8, 89_000));
        assert!(
            !add(&mut facts, fact(5, 50_000, Kind::Other, p, 1_000)),
            "a copy"
        );
        let m = compute(&facts, SessionEnd::IdleTimeout);
        assert_eq!(m.events, 12);
        assert_eq!(m.watched_ms, 110_000);
    }

    #[test]
    fn the_fast_scan_finds_what_the_first_one_did() {
        // Small ids and sequences so that copies, folded runs and ties are common, and
        // the extremes where an end saturates or a fact has no sequence.
        let sequences = [0, 1, 2, 3, 5, 8, u32::MAX - 2, u32::MAX - 1, NO_SEQUENCE];
        let runs = [0, 0, 1, 2, 3, u16::MAX];
        let mut rng = fastrand::Rng::with_seed(14);
        let random_fact = |rng: &mut fastrand::Rng| Fact {
            id: rng.u64(0..12),
            sequence: if rng.u8(..) < 200 {
                rng.u32(0..12)
            } else {
                sequences[rng.usize(..sequences.len())]
            },
            run: runs[rng.usize(..runs.len())],
            ..fact(0, 0, Kind::Other, 0, 0)
        };
        let (mut duplicates, mut befores) = (0, 0);
        for _ in 0..20_000 {
            let items: Vec<Fact> = (0..rng.usize(0..14))
                .map(|_| random_fact(&mut rng))
                .collect();
            let wanted = random_fact(&mut rng);
            let key = |f: &Fact| (f.id, f.sequence, f.run);
            let expected = scan_reference(&items, key, &wanted);
            assert_eq!(scan(&items, key, &wanted), expected, "{items:?} {wanted:?}");
            duplicates += usize::from(expected.is_none());
            befores += usize::from(matches!(expected, Some(Some(_))));
        }
        // Both answers came up often enough for the comparison to mean something.
        assert!(
            duplicates > 2_000 && befores > 500,
            "{duplicates} {befores}"
        );
    }

    #[test]
    fn spans_merge_intersect_and_subtract() {
        assert_eq!(
            union(vec![(5, 9), (0, 3), (2, 4), (7, 7)]),
            vec![(0, 4), (5, 9)]
        );
        assert_eq!(
            intersect(&[(0, 10)], &[(2, 4), (8, 12)]),
            vec![(2, 4), (8, 10)]
        );
        assert_eq!(minus(&[(0, 10)], &[(2, 4), (8, 12)]), vec![(0, 2), (4, 8)]);
        assert_eq!(measure(&[(0, 2), (4, 8)]), 6);
    }

    #[test]
    fn a_plain_session_adds_up() {
        let p = PLAYING;
        let facts = [
            fact(0, 0, Kind::Other, 0, 0),
            fact(1, 1_000, Kind::Requested, 0, 0),
            fact(2, 1_500, Kind::Started, p, 1_000_000),
            fact(3, 11_500, Kind::Paused, 0, 1_000_000),
            fact(4, 13_500, Kind::Resumed, p, 2_000_000),
            fact(5, 21_500, Kind::Completed, 0, 2_000_000),
        ];
        let m = compute(&facts, SessionEnd::IdleTimeout);
        assert_eq!(m.outcome, SessionOutcome::Started);
        assert_eq!(m.ended_by, SessionEnd::Completed);
        assert_eq!(m.startup_ms, Some(500));
        assert_eq!(m.paused_ms, 2_000);
        assert_eq!(m.watched_ms, 20_500 - 2_000);
        assert_eq!(m.playing_ms, 20_000 - 2_000);
        // 10 s at 1 Mbps, 2 s paused at 1 Mbps (not playing), 8 s at 2 Mbps.
        assert_eq!(
            m.avg_bitrate_bps,
            Some((10 * 1_000_000 + 8 * 2_000_000) / 18)
        );
        assert_eq!(m.events, 6);
    }

    #[test]
    fn the_kind_of_a_parsed_type_is_the_kind_of_its_name() {
        for ty in crate::event::EventType::ALL {
            assert_eq!(Kind::of_known(ty), Kind::of(ty.as_str()), "{ty:?}");
        }
    }

    #[test]
    fn every_kind_comes_back_from_its_u8() {
        for kind in Kind::ALL {
            assert_eq!(Kind::from_u8(kind as u8), Some(kind));
        }
        assert_eq!(Kind::from_u8(Kind::ALL.len() as u8), None);
    }

    #[test]
    fn a_fact_is_32_bytes() {
        assert_eq!(std::mem::size_of::<Fact>(), 32);
    }
}
