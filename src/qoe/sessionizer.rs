//! Open sessions, keyed by `session.id`, bounded in number, each closed by its own
//! closing event (after a grace for stragglers), by idle time, by eviction or at
//! shutdown. Time is passed in (tokio's `Instant`, pausable in tests); nothing here
//! sleeps or does I/O: [`super::Qoe`] drives it.

use super::compact::{Facts, SeededHash};
use super::metrics::{closing_of, insert, Fact, FactList, Inserted, Kind};
use super::summary::{Envelope, Interner};
use crate::event::{Event, SessionEnd};
use std::collections::{BTreeSet, HashMap};
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

/// `error.code` of each fatal error, by [`Fact::id`].
type FatalCodes = Vec<(u64, Box<str>)>;

/// One open session, kept small (see [`super::compact`]): what its summary needs, and
/// when it closes. Times are in nanoseconds since the sessionizer's epoch.
struct Open {
    facts: Facts,
    envelope: Envelope,
    /// Fatal errors are rare: no room is kept for their codes until one comes.
    fatal_codes: Option<Box<FatalCodes>>,
    /// The index in `facts` of the session's first event in order, whose envelope
    /// this is. It always has a fact of its own: only a later event can be folded.
    first: u32,
    /// A closing event was seen: the deadline is the grace's end, not the idle timeout.
    closing: bool,
    /// When the session closes.
    deadline: u64,
    /// Its entry in the deadline index: at or before `deadline`. Moving the entry on
    /// every event would cost a tree update per event; a stale entry is moved when it
    /// comes due instead.
    indexed: u64,
}

/// What a closed session's summary is made of.
#[derive(Debug)]
pub struct Session {
    /// Its facts, in arrival order.
    pub facts: Vec<Fact>,
    pub envelope: Envelope,
    /// `error.code` of each fatal error, by [`Fact::id`].
    pub fatal_codes: Box<[(u64, Box<str>)]>,
}

/// A session taken out of the sessionizer, to be summarized.
#[derive(Debug)]
pub struct Closed {
    pub session_id: Arc<str>,
    pub open: Session,
    /// Why it closed when none of its events closed it.
    pub otherwise: SessionEnd,
}

impl Closed {
    fn of(session_id: Arc<str>, open: Open, otherwise: SessionEnd) -> Closed {
        let Open {
            facts,
            envelope,
            fatal_codes,
            ..
        } = open;
        Closed {
            session_id,
            open: Session {
                facts: facts.to_vec(),
                envelope,
                fatal_codes: fatal_codes.map_or_else(Box::default, |c| c.into_boxed_slice()),
            },
            otherwise,
        }
    }
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

/// A session id that is a UUID in its canonical text (lowercase, hyphenated; the
/// schema recommends UUIDs), kept as its 16 bytes: in the table's slot, instead of
/// a 52-byte allocation of its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Uuid([u8; 16]);

impl Uuid {
    /// `None` for anything but a canonical UUID, so that [`Key::text`] gives the id back
    /// exactly. Every event pays for this, so it is a table look-up per digit and one
    /// check at the end, not a branch per character.
    fn parse(id: &str) -> Option<Uuid> {
        let text: &[u8; 36] = id.as_bytes().try_into().ok()?;
        if text[8] != b'-' || text[13] != b'-' || text[18] != b'-' || text[23] != b'-' {
            return None;
        }
        // Where each byte's two hex digits start.
        const AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
        let mut out = [0u8; 16];
        let mut bad = 0u8;
        for (byte, at) in out.iter_mut().zip(AT) {
            let (high, low) = (
                HEX_DIGIT[usize::from(text[at])],
                HEX_DIGIT[usize::from(text[at + 1])],
            );
            bad |= high | low;
            *byte = high << 4 | low;
        }
        (bad & NOT_HEX == 0).then_some(Uuid(out))
    }
}

/// [`HEX_DIGIT`] of a byte that is not a lowercase hex digit.
const NOT_HEX: u8 = 0x80;

/// The value of each lowercase hex digit, [`NOT_HEX`] for any other byte.
const HEX_DIGIT: [u8; 256] = {
    let mut table = [NOT_HEX; 256];
    let mut i = 0;
    while i < 16 {
        table[b"0123456789abcdef"[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// A key of a [`Table`]: the session id, as it can be given back.
trait Key: std::hash::Hash + Eq + Ord + Clone {
    fn text(&self) -> Arc<str>;
}

impl Key for Arc<str> {
    fn text(&self) -> Arc<str> {
        self.clone()
    }
}

impl Key for Uuid {
    fn text(&self) -> Arc<str> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = String::with_capacity(36);
        for (i, byte) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                text.push('-');
            }
            text.push(char::from(HEX[usize::from(byte >> 4)]));
            text.push(char::from(HEX[usize::from(byte & 15)]));
        }
        Arc::from(text)
    }
}

/// The open sessions of one kind of key, and their deadline index.
struct Table<K> {
    /// Boxed: the table's slots stay small, and its spare slots cost little.
    open: HashMap<K, Box<Open>, SeededHash>,
    /// Every open session by a time at or before its deadline (see [`Open::indexed`]);
    /// the key makes entries unique.
    deadlines: BTreeSet<(u64, K)>,
}

/// What [`Table::pop`] did with the first entry of a deadline index.
enum Popped {
    /// Its session is not due: the entry moved to the session's deadline.
    Moved,
    /// Its session, taken out.
    Taken(Arc<str>, Box<Open>),
}

impl<K: Key> Table<K> {
    fn new(hash: SeededHash) -> Table<K> {
        Table {
            open: HashMap::with_hasher(hash),
            deadlines: BTreeSet::new(),
        }
    }

    fn first(&self) -> Option<u64> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    fn insert(&mut self, key: K, open: Box<Open>) {
        self.deadlines.insert((open.indexed, key.clone()));
        self.open.insert(key, open);
    }

    /// Moves the session's index entry to its deadline (which came sooner).
    fn reindex(&mut self, key: &K) {
        if let Some(open) = self.open.get_mut(key) {
            self.deadlines.remove(&(open.indexed, key.clone()));
            open.indexed = open.deadline;
            self.deadlines.insert((open.indexed, key.clone()));
        }
    }

    /// Pops the first index entry: takes its session out if `due(entry time,
    /// deadline)`, else moves the entry to the deadline. `None` when there is no entry
    /// or it names no session.
    fn pop(&mut self, due: impl Fn(u64, u64) -> bool) -> Option<Popped> {
        let (at, key) = self.deadlines.pop_first()?;
        let open = self.open.get_mut(&key)?;
        if !due(at, open.deadline) {
            open.indexed = open.deadline;
            self.deadlines.insert((open.indexed, key));
            return Some(Popped::Moved);
        }
        let open = self.open.remove(&key)?;
        Some(Popped::Taken(key.text(), open))
    }

    fn drain(&mut self, out: &mut Vec<Closed>, otherwise: SessionEnd) {
        self.deadlines.clear();
        out.extend(
            self.open
                .drain()
                .map(|(key, open)| Closed::of(key.text(), *open, otherwise)),
        );
    }

    /// Heap bytes of the table and the index (their entries, not the sessions).
    fn heap_bytes(&self) -> (usize, usize) {
        let slot = std::mem::size_of::<(K, Box<Open>)>() + 1;
        let entry = std::mem::size_of::<(u64, K)>();
        (
            self.open.capacity() * slot,
            // B-tree leaves appended to on the right end up a little over half full.
            self.deadlines.len() * entry * 11 / 6,
        )
    }
}

/// Which table.
#[derive(Clone, Copy)]
enum Which {
    Uuids,
    Texts,
}

pub struct Sessionizer {
    limits: Limits,
    /// Where the sessions' times count from: 8 bytes a time instead of an `Instant`'s 16.
    epoch: Instant,
    /// Sessions whose id is a UUID, and the others.
    uuids: Table<Uuid>,
    texts: Table<Arc<str>>,
    /// The envelope texts open sessions share.
    interner: Interner,
    /// Sessions evicted on the request path, waiting for the emitter.
    evicted: Vec<Closed>,
    /// Counts changes, so an unchanged sessionizer is not saved again.
    generation: u64,
    /// An index entry came before every other since [`Sessionizer::take_sooner`]: the
    /// next deadline moved up, and whoever sleeps until it must wake.
    sooner: bool,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Adds an event to an open session; says what it did and whether the session's
/// index entry must move (to its grace's end, sooner than the entry).
fn add(
    open: &mut Open,
    event: &Event,
    fact: Fact,
    now: u64,
    limits: Limits,
    interner: &mut Interner,
) -> (Observed, bool) {
    let inserted = insert(&mut open.facts, fact);
    if inserted == Inserted::Duplicate {
        return (Observed::Duplicate, false);
    }
    let closes = closing_of(&fact).is_some();
    if closes && fact.kind == Kind::Error {
        open.fatal_codes
            .get_or_insert_with(Box::default)
            .push((fact.id, error_code(event)));
    }
    if inserted == Inserted::Pushed && fact.order() < open.facts.get(open.first as usize).order() {
        open.envelope = Envelope::interned(event, interner);
        open.first = index(open.facts.len() - 1);
    }
    if open.closing {
        // Stragglers do not extend the grace.
        return (Observed::Added, false);
    }
    if !closes {
        open.deadline = now.saturating_add(nanos(limits.idle_timeout));
        return (Observed::Added, false);
    }
    open.closing = true;
    open.deadline = now.saturating_add(nanos(limits.end_grace));
    (Observed::Closing, open.deadline < open.indexed)
}

impl Sessionizer {
    pub fn new(limits: Limits) -> Sessionizer {
        let hash = SeededHash::random();
        Sessionizer {
            limits,
            epoch: Instant::now(),
            uuids: Table::new(hash),
            texts: Table::new(hash),
            interner: Interner::default(),
            evicted: Vec::new(),
            generation: 0,
            sooner: false,
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// New settings: open sessions stay; beyond a lower `max_sessions` the soonest to
    /// close are evicted. New timeouts apply from each session's next event.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
        while self.len() > self.limits.max_sessions.max(1) {
            if !self.evict_one() {
                break;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.uuids.open.len() + self.texts.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `at` as a sessionizer time.
    fn time(&self, at: Instant) -> u64 {
        nanos(at.saturating_duration_since(self.epoch))
    }

    fn instant(&self, time: u64) -> Instant {
        self.epoch + Duration::from_nanos(time)
    }

    /// The table whose first index entry is the soonest, and that entry's time.
    fn soonest(&self) -> Option<(u64, Which)> {
        match (self.uuids.first(), self.texts.first()) {
            (Some(u), Some(t)) if t < u => Some((t, Which::Texts)),
            (Some(u), _) => Some((u, Which::Uuids)),
            (None, Some(t)) => Some((t, Which::Texts)),
            (None, None) => None,
        }
    }

    fn pop(&mut self, which: Which, due: impl Fn(u64, u64) -> bool) -> Option<Popped> {
        match which {
            Which::Uuids => self.uuids.pop(due),
            Which::Texts => self.texts.pop(due),
        }
    }

    /// When the next session may close (never later than it does), if any is open.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.soonest().map(|(at, _)| self.instant(at))
    }

    /// Before an index entry at `time` is made: whether it comes first.
    fn note_entry(&mut self, time: u64) {
        self.sooner |= self.soonest().is_none_or(|(first, _)| time < first);
    }

    /// Whether the next deadline moved up (an entry came before all the others) since
    /// the last call: cheaper than comparing [`Sessionizer::next_deadline`] before and
    /// after every request, which costs two index look-ups an event.
    pub fn take_sooner(&mut self) -> bool {
        std::mem::take(&mut self.sooner)
    }

    /// Whether evicted sessions wait to be summarized.
    pub fn has_evicted(&self) -> bool {
        !self.evicted.is_empty()
    }

    /// Adds an event to its session, opening the session with it if needed.
    pub fn observe(&mut self, event: &Event, fact: Fact, now: Instant) -> Observed {
        let limits = self.limits;
        let now = self.time(now);
        let session_id = event.body.session.id.as_str();
        let uuid = Uuid::parse(session_id);
        let open = match &uuid {
            Some(uuid) => self.uuids.open.get_mut(uuid),
            None => self.texts.open.get_mut(session_id),
        };
        if let Some(open) = open {
            let (observed, reindex) = add(open, event, fact, now, limits, &mut self.interner);
            if observed == Observed::Duplicate {
                return observed;
            }
            self.generation += 1;
            if reindex {
                let deadline = open.deadline;
                self.note_entry(deadline);
                match &uuid {
                    Some(uuid) => self.uuids.reindex(uuid),
                    None => {
                        let key = self.texts.open.get_key_value(session_id);
                        if let Some(key) = key.map(|(key, _)| key.clone()) {
                            self.texts.reindex(&key);
                        }
                    }
                }
            }
            return observed;
        }
        self.generation += 1;
        if self.len() >= limits.max_sessions.max(1) {
            self.evict_one();
        }
        let closes = closing_of(&fact).is_some();
        let deadline = now.saturating_add(nanos(if closes {
            limits.end_grace
        } else {
            limits.idle_timeout
        }));
        let fatal_codes = (closes && fact.kind == Kind::Error)
            .then(|| Box::new(vec![(fact.id, error_code(event))]));
        let mut facts = Facts::new();
        facts.push(fact);
        let open = Box::new(Open {
            facts,
            envelope: Envelope::interned(event, &mut self.interner),
            fatal_codes,
            first: 0,
            closing: closes,
            deadline,
            indexed: deadline,
        });
        self.note_entry(deadline);
        match uuid {
            Some(uuid) => self.uuids.insert(uuid, open),
            None => self.texts.insert(Arc::from(session_id), open),
        }
        Observed::Opened
    }

    /// Takes out the sessions whose deadline has passed (and those evicted meanwhile).
    pub fn expire(&mut self, now: Instant) -> Vec<Closed> {
        let now = self.time(now);
        let mut out = std::mem::take(&mut self.evicted);
        while let Some((at, which)) = self.soonest() {
            if at > now {
                break;
            }
            // Events came since the entry was made: it moves to the real deadline.
            if let Some(Popped::Taken(id, open)) = self.pop(which, |_, deadline| deadline <= now) {
                self.generation += 1;
                out.push(Closed::of(id, *open, SessionEnd::IdleTimeout));
            }
        }
        out
    }

    /// Takes out every session: the relay is stopping.
    pub fn drain(&mut self) -> Vec<Closed> {
        let mut out = std::mem::take(&mut self.evicted);
        self.generation += 1;
        self.uuids.drain(&mut out, SessionEnd::Shutdown);
        self.texts.drain(&mut out, SessionEnd::Shutdown);
        out
    }

    /// Makes room: the session closest to its deadline goes (one in its grace first,
    /// then the longest idle), summarized like any other. False when none is open.
    fn evict_one(&mut self) -> bool {
        while let Some((_, which)) = self.soonest() {
            // A stale entry is put at its real deadline, and the next one looked at.
            if let Some(Popped::Taken(id, open)) = self.pop(which, |at, deadline| deadline <= at) {
                self.generation += 1;
                self.evicted
                    .push(Closed::of(id, *open, SessionEnd::Evicted));
                return true;
            }
        }
        false
    }

    /// A number that changes whenever the open sessions do.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Every open session with its id.
    fn sessions(&self) -> impl Iterator<Item = (Arc<str>, &Open)> {
        let uuids = self.uuids.open.iter().map(|(k, o)| (k.text(), &**o));
        let texts = self.texts.open.iter().map(|(k, o)| (k.clone(), &**o));
        uuids.chain(texts)
    }

    /// Appends every open session to a checkpoint (see [`super::checkpoint`]) and
    /// returns how many: its id, facts, envelope, fatal codes, whether it is in its
    /// grace, and how long until it closes from `now`.
    pub fn save(&self, now: Instant, out: &mut Vec<u8>) -> u32 {
        use super::checkpoint::*;
        let now = self.time(now);
        let mut n = 0u32;
        for (id, open) in self.sessions() {
            put_str(out, &id);
            put_u8(out, u8::from(open.closing));
            let left = Duration::from_nanos(open.deadline.saturating_sub(now));
            put_u64(out, u64::try_from(left.as_millis()).unwrap_or(u64::MAX));
            put_u32(out, open.facts.len() as u32);
            for fact in open.facts.to_vec() {
                put_fact(out, &fact);
            }
            let first = open.facts.get(open.first as usize);
            open.envelope.save(first.order(), out);
            let codes = open.fatal_codes.as_deref().map_or(&[][..], |c| &c[..]);
            put_u32(out, codes.len() as u32);
            for (fact_id, code) in codes {
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
        let now = self.time(now);
        let mut restored = 0;
        for _ in 0..sessions {
            let id = r.str()?;
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
            let (order, envelope) = Envelope::restore(r, &mut self.interner)?;
            let codes = r.u32()? as usize;
            let mut fatal_codes = Vec::with_capacity(codes.min(16));
            for _ in 0..codes {
                fatal_codes.push((r.u64()?, Box::<str>::from(r.str()?)));
            }
            // The envelope's event, else the first in order.
            let first = facts
                .iter()
                .position(|f| f.order() == order)
                .or_else(|| (0..facts.len()).min_by_key(|i| facts[*i].order()))?;
            let uuid = Uuid::parse(id);
            let open = match &uuid {
                Some(uuid) => self.uuids.open.contains_key(uuid),
                None => self.texts.open.contains_key(id),
            };
            if open {
                continue;
            }
            if self.len() >= self.limits.max_sessions.max(1) {
                self.evict_one();
            }
            let deadline = now.saturating_add(nanos(left));
            let open = Box::new(Open {
                facts: Facts::from(facts),
                envelope,
                fatal_codes: (!fatal_codes.is_empty()).then(|| Box::new(fatal_codes)),
                first: index(first),
                closing,
                deadline,
                indexed: deadline,
            });
            match uuid {
                Some(uuid) => self.uuids.insert(uuid, open),
                None => self.texts.insert(Arc::from(id), open),
            }
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
        let (uuid_table, uuid_index) = self.uuids.heap_bytes();
        let (text_table, text_index) = self.texts.heap_bytes();
        let mut m = MemoryUse {
            sessions: self.len(),
            table: uuid_table + text_table,
            deadlines: uuid_index + text_index,
            shared_texts: self.interner.heap_bytes(),
            ids: self.texts.open.keys().map(|id| 16 + id.len()).sum(),
            ..MemoryUse::default()
        };
        let opens = self.uuids.open.values().chain(self.texts.open.values());
        for open in opens {
            m.states += std::mem::size_of::<Open>();
            let (facts, spare) = open.facts.heap_bytes();
            m.facts += facts;
            m.spare_facts += spare;
            m.own_texts += open.envelope.heap_bytes();
            m.fatal_codes += open.fatal_codes.as_ref().map_or(0, |codes| {
                24 + codes.iter().map(|(_, c)| 24 + c.len()).sum::<usize>()
            });
        }
        m
    }
}

/// A fact's index as an [`Open::first`]: a session has far fewer than 2^32 facts (the
/// events of one request body are a few thousand at most, and folding keeps runs in one).
fn index(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
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

    #[test]
    fn canonical_uuids_are_kept_as_16_bytes_and_give_their_text_back() {
        let id = "a6a3a450-6513-470e-a69e-0d37f2a74de4";
        let uuid = Uuid::parse(id).expect("a uuid");
        assert_eq!(&*uuid.text(), id);
        for other in [
            "A6A3A450-6513-470E-A69E-0D37F2A74DE4",
            "a6a3a450651347 0ea69e0d37f2a74de4xx",
            "a6a3a450-6513-470e-a69e-0d37f2a74de",
            "a6a3a450-6513-470e-a69e_0d37f2a74de4",
            "g6a3a450-6513-470e-a69e-0d37f2a74de4",
            "",
        ] {
            assert_eq!(Uuid::parse(other), None, "{other}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn uuid_and_other_ids_close_in_deadline_order_with_their_own_ids() {
        let mut s = Sessionizer::new(limits());
        let uuid = "0b1e5d7c-0000-4000-8000-00000000000a";
        let upper = "0B1E5D7C-0000-4000-8000-00000000000A";
        observe(&mut s, &event(uuid, 0, "playback.requested"));
        tokio::time::advance(Duration::from_secs(1)).await;
        observe(&mut s, &event(upper, 1, "playback.requested"));
        tokio::time::advance(Duration::from_secs(1)).await;
        observe(&mut s, &event("plain", 2, "playback.requested"));
        assert_eq!(s.len(), 3);
        assert_eq!(
            observe(&mut s, &event(uuid, 0, "playback.requested")),
            Observed::Duplicate
        );
        // The UUID session ends: it now closes first, after the grace.
        assert_eq!(
            observe(&mut s, &event(uuid, 3, "playback.completed")),
            Observed::Closing
        );
        assert_eq!(
            s.next_deadline(),
            Some(Instant::now() + Duration::from_secs(5))
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        let closed = s.expire(Instant::now());
        assert_eq!(ids(&closed), vec![(uuid, SessionEnd::IdleTimeout)]);
        assert_eq!(closed[0].open.facts.len(), 2);
        tokio::time::advance(Duration::from_secs(55)).await;
        let closed = s.expire(Instant::now());
        assert_eq!(
            ids(&closed),
            vec![
                (upper, SessionEnd::IdleTimeout),
                ("plain", SessionEnd::IdleTimeout)
            ]
        );
        assert!(s.is_empty());
    }
}
