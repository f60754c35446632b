//! Open sessions, keyed by `session.id`, bounded in number, each closed by its own
//! closing event (after a grace for stragglers), by idle time, by eviction or at
//! shutdown. Time is passed in (tokio's `Instant`, pausable in tests); nothing here
//! sleeps or does I/O: [`super::Qoe`] drives it.

use super::metrics::{add, closing_of, Fact, Kind};
use super::summary::{Envelope, Interner};
use crate::event::{Event, SessionEnd};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The `[qoe]` settings the sessionizer works with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_sessions: usize,
    pub idle_timeout: Duration,
    pub end_grace: Duration,
}

/// One open session: what its summary needs, and when it closes.
pub struct Open {
    pub facts: Vec<Fact>,
    pub envelope: Envelope,
    /// `error.code` of each fatal error, by [`Fact::id`]; fatal errors are rare.
    pub fatal_codes: Box<[(u64, Box<str>)]>,
    /// A closing event was seen: the deadline is the grace's end, not the idle timeout.
    closing: bool,
    /// When the session closes.
    deadline: Instant,
    /// Its entry in the deadline index: at or before `deadline`. Moving the entry on
    /// every event would cost a tree update per event; a stale entry is moved when it
    /// comes due instead.
    key: (Instant, u64),
}

/// A session taken out of the sessionizer, to be summarized.
pub struct Closed {
    pub session_id: Arc<str>,
    pub open: Box<Open>,
    /// Why it closed when none of its events closed it.
    pub otherwise: SessionEnd,
}

/// What [`Sessionizer::observe`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// The first event of a session.
    Opened,
    Added,
    /// A closing event: the session now closes sooner (after the grace).
    Closing,
    /// An `event_id` the session already had.
    Duplicate,
}

pub struct Sessionizer {
    limits: Limits,
    /// Boxed: the table's slots stay small, and its spare slots cost little.
    open: HashMap<Arc<str>, Box<Open>>,
    /// The envelope texts open sessions share.
    interner: Interner,
    /// Every open session by a time at or before its deadline (the `u64` makes keys
    /// unique); see [`Open::key`].
    deadlines: BTreeMap<(Instant, u64), Arc<str>>,
    next_key: u64,
    /// Sessions evicted on the request path, waiting for the emitter.
    evicted: Vec<Closed>,
    /// Counts changes, so an unchanged sessionizer is not saved again.
    generation: u64,
}

impl Sessionizer {
    pub fn new(limits: Limits) -> Sessionizer {
        Sessionizer {
            limits,
            open: HashMap::new(),
            interner: Interner::default(),
            deadlines: BTreeMap::new(),
            next_key: 0,
            evicted: Vec::new(),
            generation: 0,
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// New settings: open sessions stay; beyond a lower `max_sessions` the soonest to
    /// close are evicted. New timeouts apply from each session's next event.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
        while self.open.len() > self.limits.max_sessions.max(1) {
            self.evict_one();
        }
    }

    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// When the next session may close (never later than it does), if any is open.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.keys().next().map(|(at, _)| *at)
    }

    /// Whether evicted sessions wait to be summarized.
    pub fn has_evicted(&self) -> bool {
        !self.evicted.is_empty()
    }

    fn new_key(&mut self, at: Instant) -> (Instant, u64) {
        self.next_key += 1;
        (at, self.next_key)
    }

    /// Adds an event to its session, opening the session with it if needed.
    pub fn observe(&mut self, event: &Event, fact: Fact, now: Instant) -> Observed {
        let limits = self.limits;
        let session_id = event.body.session.id.as_str();
        let closes = closing_of(&fact).is_some();
        if let Some(open) = self.open.get_mut(session_id) {
            if !add(&mut open.facts, fact) {
                return Observed::Duplicate;
            }
            self.generation += 1;
            if closes && fact.kind == Kind::Error {
                let mut codes = std::mem::take(&mut open.fatal_codes).into_vec();
                codes.push((fact.id, error_code(event)));
                open.fatal_codes = codes.into_boxed_slice();
            }
            if fact.order() < open.envelope.order {
                open.envelope = Envelope::interned(event, &fact, &mut self.interner);
            }
            if open.closing {
                // Stragglers do not extend the grace.
                return Observed::Added;
            }
            if !closes {
                open.deadline = now + limits.idle_timeout;
                return Observed::Added;
            }
            open.closing = true;
            open.deadline = now + limits.end_grace;
            if open.deadline < open.key.0 {
                let old = open.key;
                self.next_key += 1;
                let key = (open.deadline, self.next_key);
                open.key = key;
                if let Some(id) = self.deadlines.remove(&old) {
                    self.deadlines.insert(key, id);
                }
            }
            return Observed::Closing;
        }
        self.generation += 1;
        if self.open.len() >= limits.max_sessions.max(1) {
            self.evict_one();
        }
        let deadline = now
            + if closes {
                limits.end_grace
            } else {
                limits.idle_timeout
            };
        let key = self.new_key(deadline);
        let fatal_codes: Box<[(u64, Box<str>)]> = if closes && fact.kind == Kind::Error {
            Box::new([(fact.id, error_code(event))])
        } else {
            Box::new([])
        };
        let id: Arc<str> = Arc::from(session_id);
        self.deadlines.insert(key, id.clone());
        self.open.insert(
            id,
            Box::new(Open {
                facts: vec![fact],
                envelope: Envelope::interned(event, &fact, &mut self.interner),
                fatal_codes,
                closing: closes,
                deadline,
                key,
            }),
        );
        Observed::Opened
    }

    /// Takes out the sessions whose deadline has passed (and those evicted meanwhile).
    pub fn expire(&mut self, now: Instant) -> Vec<Closed> {
        let mut out = std::mem::take(&mut self.evicted);
        while let Some(entry) = self.deadlines.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let id = entry.remove();
            let Some(open) = self.open.get(&id) else {
                continue;
            };
            if open.deadline > now {
                // Events came since the entry was made: it moves to the real deadline.
                let deadline = open.deadline;
                let key = self.new_key(deadline);
                if let Some(open) = self.open.get_mut(&id) {
                    open.key = key;
                }
                self.deadlines.insert(key, id);
                continue;
            }
            if let Some(open) = self.open.remove(&id) {
                self.generation += 1;
                out.push(Closed {
                    session_id: id,
                    open,
                    otherwise: SessionEnd::IdleTimeout,
                });
            }
        }
        out
    }

    /// Takes out every session: the relay is stopping.
    pub fn drain(&mut self) -> Vec<Closed> {
        let mut out = std::mem::take(&mut self.evicted);
        self.generation += 1;
        self.deadlines.clear();
        out.extend(self.open.drain().map(|(id, open)| Closed {
            session_id: id,
            open,
            otherwise: SessionEnd::Shutdown,
        }));
        out
    }

    /// Makes room: the session closest to its deadline goes (one in its grace first,
    /// then the longest idle), summarized like any other.
    fn evict_one(&mut self) {
        while let Some((key, id)) = self.deadlines.pop_first() {
            let Some(open) = self.open.get(&id) else {
                continue;
            };
            if open.deadline > key.0 {
                // A stale entry: put it at its real deadline and look again.
                let key = self.new_key(open.deadline);
                if let Some(open) = self.open.get_mut(&id) {
                    open.key = key;
                }
                self.deadlines.insert(key, id);
                continue;
            }
            if let Some(open) = self.open.remove(&id) {
                self.generation += 1;
                self.evicted.push(Closed {
                    session_id: id,
                    open,
                    otherwise: SessionEnd::Evicted,
                });
            }
            return;
        }
    }

    /// A number that changes whenever the open sessions do.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Appends every open session to a checkpoint (see [`super::checkpoint`]) and
    /// returns how many: its id, facts, envelope, fatal codes, whether it is in its
    /// grace, and how long until it closes from `now`.
    pub fn save(&self, now: Instant, out: &mut Vec<u8>) -> u32 {
        use super::checkpoint::*;
        let mut n = 0u32;
        for (id, open) in &self.open {
            put_str(out, id);
            put_u8(out, u8::from(open.closing));
            let left = open.deadline.saturating_duration_since(now);
            put_u64(out, u64::try_from(left.as_millis()).unwrap_or(u64::MAX));
            put_u32(out, open.facts.len() as u32);
            for fact in &open.facts {
                put_fact(out, fact);
            }
            open.envelope.save(out);
            put_u32(out, open.fatal_codes.len() as u32);
            for (fact_id, code) in open.fatal_codes.iter() {
                put_u64(out, *fact_id);
                put_str(out, code);
            }
            n += 1;
        }
        n
    }

    /// Opens the sessions of a checkpoint that [`Sessionizer::save`] wrote, `down` after
    /// it was written: each closes when it would have, less `down` (at once if that has
    /// passed). A session already open here is left as it is. Returns how many were
    /// restored, or `None` when the bytes are malformed (sessions read before the bad
    /// one are kept).
    pub fn restore(
        &mut self,
        r: &mut super::checkpoint::Reader<'_>,
        sessions: u32,
        now: Instant,
        down: Duration,
    ) -> Option<usize> {
        let mut restored = 0;
        for _ in 0..sessions {
            let id: Arc<str> = Arc::from(r.str()?);
            let closing = match r.u8()? {
                0 => false,
                1 => true,
                _ => return None,
            };
            let left = Duration::from_millis(r.u64()?).saturating_sub(down);
            let n = r.u32()? as usize;
            let mut facts = Vec::with_capacity(n.min(1 << 16));
            for _ in 0..n {
                facts.push(r.fact()?);
            }
            let envelope = Envelope::restore(r, &mut self.interner)?;
            let codes = r.u32()? as usize;
            let mut fatal_codes = Vec::with_capacity(codes.min(16));
            for _ in 0..codes {
                fatal_codes.push((r.u64()?, Box::<str>::from(r.str()?)));
            }
            if self.open.contains_key(&id) {
                continue;
            }
            if self.open.len() >= self.limits.max_sessions.max(1) {
                self.evict_one();
            }
            let deadline = now + left;
            let key = self.new_key(deadline);
            self.deadlines.insert(key, id.clone());
            self.open.insert(
                id,
                Box::new(Open {
                    facts,
                    envelope,
                    fatal_codes: fatal_codes.into_boxed_slice(),
                    closing,
                    deadline,
                    key,
                }),
            );
            self.generation += 1;
            restored += 1;
        }
        Some(restored)
    }

    /// Heap bytes held for open sessions, approximately (the benchmark measures the
    /// real figure next to it).
    pub fn approximate_bytes(&self) -> usize {
        self.memory().total()
    }

    /// Where the heap bytes held for open sessions go, approximately.
    pub fn memory(&self) -> MemoryUse {
        let slot = std::mem::size_of::<(Arc<str>, Box<Open>)>() + 1;
        let deadline_entry = std::mem::size_of::<((Instant, u64), Arc<str>)>();
        let mut m = MemoryUse {
            sessions: self.open.len(),
            table: self.open.capacity() * slot,
            // B-tree leaves appended to on the right end up a little over half full.
            deadlines: self.deadlines.len() * deadline_entry * 11 / 6,
            shared_texts: self.interner.heap_bytes(),
            ..MemoryUse::default()
        };
        for (id, open) in &self.open {
            m.states += std::mem::size_of::<Open>();
            m.ids += 16 + id.len();
            m.facts += open.facts.len() * std::mem::size_of::<Fact>();
            m.spare_facts +=
                (open.facts.capacity() - open.facts.len()) * std::mem::size_of::<Fact>();
            m.own_texts += open.envelope.heap_bytes();
            m.fatal_codes += open
                .fatal_codes
                .iter()
                .map(|(_, c)| 24 + c.len())
                .sum::<usize>();
        }
        m
    }
}

/// Heap bytes held for open sessions, by part (see [`Sessionizer::memory`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryUse {
    pub sessions: usize,
    /// The session table's slots, spare ones included.
    pub table: usize,
    /// Each session's boxed state.
    pub states: usize,
    /// Session ids (with their reference counts).
    pub ids: usize,
    /// The deadline index.
    pub deadlines: usize,
    pub facts: usize,
    /// Room for facts to come.
    pub spare_facts: usize,
    /// Envelope texts a session holds alone (`session`, `user`).
    pub own_texts: usize,
    /// The interner's table and the shared texts (`content`, `context`).
    pub shared_texts: usize,
    pub fatal_codes: usize,
}

impl MemoryUse {
    pub fn total(&self) -> usize {
        self.table
            + self.states
            + self.ids
            + self.deadlines
            + self.facts
            + self.spare_facts
            + self.own_texts
            + self.shared_texts
            + self.fatal_codes
    }

    /// Each part per open session, as `name bytes` pairs.
    pub fn per_session(&self) -> Vec<(&'static str, f64)> {
        let n = self.sessions.max(1) as f64;
        [
            ("table", self.table),
            ("state", self.states),
            ("id", self.ids),
            ("deadline", self.deadlines),
            ("facts", self.facts),
            ("spare facts", self.spare_facts),
            ("own texts", self.own_texts),
            ("shared texts", self.shared_texts),
            ("fatal codes", self.fatal_codes),
        ]
        .into_iter()
        .map(|(name, bytes)| (name, bytes as f64 / n))
        .collect()
    }
}

fn error_code(event: &Event) -> Box<str> {
    event
        .body
        .error
        .as_ref()
        .and_then(|e| e.code.as_deref())
        .unwrap_or("")
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn event(session: &str, n: u32, ty: &str) -> Event {
        let extra = if ty == "playback.error" {
            r#","error":{"code":"E1","fatal":true}"#
        } else {
            ""
        };
        let text = format!(
            r#"{{"event_id":"00000000-0000-4000-8000-{n:012}","type":"{ty}","timestamp":"2026-11-01T19:00:{:02}.000Z","sequence":{n},"session":{{"id":"{session}"}},"user":{{"anonymous_id":"a"}}{extra}}}"#,
            n % 60
        );
        let raw: Box<RawValue> = serde_json::from_str(&text).expect("json");
        Event::from_json(&raw, time::OffsetDateTime::UNIX_EPOCH).expect("valid")
    }

    fn limits() -> Limits {
        Limits {
            max_sessions: 3,
            idle_timeout: Duration::from_secs(60),
            end_grace: Duration::from_secs(5),
        }
    }

    fn observe(s: &mut Sessionizer, e: &Event) -> Observed {
        s.observe(e, Fact::of(e), Instant::now())
    }

    fn ids(closed: &[Closed]) -> Vec<(&str, SessionEnd)> {
        closed
            .iter()
            .map(|c| (&*c.session_id, c.otherwise))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_session_closes_after_the_idle_timeout_not_before() {
        let mut s = Sessionizer::new(limits());
        observe(&mut s, &event("a", 0, "playback.requested"));
        tokio::time::advance(Duration::from_secs(40)).await;
        // An event restarts the idle clock.
        observe(&mut s, &event("a", 1, "playback.started"));
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(s.expire(Instant::now()).is_empty());
        assert_eq!(
            s.next_deadline(),
            Some(Instant::now() + Duration::from_secs(1))
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        let closed = s.expire(Instant::now());
        assert_eq!(ids(&closed), vec![("a", SessionEnd::IdleTimeout)]);
        assert_eq!(closed[0].open.facts.len(), 2);
        assert!(s.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn stragglers_within_the_grace_join_the_session_and_duplicates_do_not() {
        let mut s = Sessionizer::new(limits());
        observe(&mut s, &event("a", 0, "playback.requested"));
        observe(&mut s, &event("a", 2, "playback.completed"));
        tokio::time::advance(Duration::from_secs(3)).await;
        // A late event and a retry of one already seen, inside the grace.
        assert_eq!(
            observe(&mut s, &event("a", 1, "playback.started")),
            Observed::Added
        );
        assert_eq!(
            observe(&mut s, &event("a", 2, "playback.completed")),
            Observed::Duplicate
        );
        tokio::time::advance(Duration::from_millis(1_999)).await;
        assert!(
            s.expire(Instant::now()).is_empty(),
            "stragglers do not extend the grace"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        let closed = s.expire(Instant::now());
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].open.facts.len(), 3);
        let m = super::super::metrics::compute(&closed[0].open.facts, closed[0].otherwise);
        assert_eq!(m.ended_by, SessionEnd::Completed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fatal_error_closes_with_its_code_after_the_grace() {
        let mut s = Sessionizer::new(limits());
        observe(&mut s, &event("a", 0, "playback.requested"));
        observe(&mut s, &event("a", 1, "playback.error"));
        tokio::time::advance(Duration::from_secs(5)).await;
        let closed = s.expire(Instant::now());
        assert_eq!(closed.len(), 1);
        assert_eq!(&*closed[0].open.fatal_codes[0].1, "E1");
    }

    #[tokio::test(start_paused = true)]
    async fn beyond_max_sessions_the_soonest_to_close_is_evicted_and_kept_for_its_summary() {
        let mut s = Sessionizer::new(limits());
        observe(&mut s, &event("a", 0, "playback.requested"));
        tokio::time::advance(Duration::from_secs(1)).await;
        observe(&mut s, &event("b", 1, "playback.requested"));
        tokio::time::advance(Duration::from_secs(1)).await;
        observe(&mut s, &event("c", 2, "playback.requested"));
        tokio::time::advance(Duration::from_secs(1)).await;
        // `a` is touched again, so `b` is now the longest idle.
        observe(&mut s, &event("a", 3, "playback.started"));
        assert!(!s.has_evicted());
        observe(&mut s, &event("d", 4, "playback.requested"));
        assert_eq!(s.len(), 3);
        assert!(s.has_evicted());
        let closed = s.expire(Instant::now());
        assert_eq!(ids(&closed), vec![("b", SessionEnd::Evicted)]);
        // A lower limit on reload evicts down to it.
        s.set_limits(Limits {
            max_sessions: 1,
            ..limits()
        });
        let closed = s.expire(Instant::now());
        assert_eq!(
            ids(&closed),
            vec![("c", SessionEnd::Evicted), ("a", SessionEnd::Evicted)]
        );
        assert_eq!(s.len(), 1);
        let rest = s.drain();
        assert_eq!(ids(&rest), vec![("d", SessionEnd::Shutdown)]);
    }

    #[tokio::test(start_paused = true)]
    async fn saved_sessions_come_back_whole_with_their_deadlines_less_the_time_down() {
        let mut s = Sessionizer::new(limits());
        observe(&mut s, &event("idle", 0, "playback.requested"));
        observe(&mut s, &event("idle", 1, "playback.started"));
        observe(&mut s, &event("ending", 2, "playback.requested"));
        observe(&mut s, &event("ending", 3, "playback.error"));
        tokio::time::advance(Duration::from_secs(1)).await;
        let mut out = Vec::new();
        super::super::checkpoint::begin(&mut out, 0);
        let n = s.save(Instant::now(), &mut out);
        super::super::checkpoint::finish(&mut out, n);
        assert_eq!(n, 2);

        // Down for 20 s: `idle` has 59 - 20 s left, `ending` (4 s of grace left) is due.
        let mut back = Sessionizer::new(limits());
        let mut contents = super::super::checkpoint::open(&out).expect("reads");
        let restored = back.restore(
            &mut contents.reader,
            contents.sessions,
            Instant::now(),
            Duration::from_secs(20),
        );
        assert_eq!(restored, Some(2));
        assert!(contents.reader.is_done());
        // A copy of a saved event is still a copy.
        assert_eq!(
            observe(&mut back, &event("idle", 1, "playback.started")),
            Observed::Duplicate
        );
        let closed = back.expire(Instant::now());
        assert_eq!(ids(&closed), vec![("ending", SessionEnd::IdleTimeout)]);
        assert_eq!(&*closed[0].open.fatal_codes[0].1, "E1");
        let m = super::super::metrics::compute(&closed[0].open.facts, closed[0].otherwise);
        assert_eq!(m.ended_by, SessionEnd::Error);
        tokio::time::advance(Duration::from_millis(38_999)).await;
        assert!(back.expire(Instant::now()).is_empty());
        tokio::time::advance(Duration::from_millis(1)).await;
        let closed = back.expire(Instant::now());
        assert_eq!(ids(&closed), vec![("idle", SessionEnd::IdleTimeout)]);
        let before = s.drain();
        let idle = before
            .iter()
            .find(|c| &*c.session_id == "idle")
            .expect("idle");
        assert_eq!(closed[0].open.facts, idle.open.facts);
        assert_eq!(closed[0].open.envelope, idle.open.envelope);
    }
}
