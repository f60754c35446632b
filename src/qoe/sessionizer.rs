//! Open sessions, keyed by `session.id`, bounded in number, each closed by its own
//! closing event (after a grace for stragglers), by idle time, by eviction or at
//! shutdown. Time is passed in (tokio's `Instant`, pausable in tests); nothing here
//! sleeps or does I/O: [`super::Qoe`] drives it.

use super::metrics::{closing_of, Fact, Kind};
use super::summary::Envelope;
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
    pub fatal_codes: Vec<(u64, Box<str>)>,
    /// A closing event was seen: the deadline is the grace's end, not the idle timeout.
    closing: bool,
    deadline: (Instant, u64),
}

/// A session taken out of the sessionizer, to be summarized.
pub struct Closed {
    pub session_id: Arc<str>,
    pub open: Open,
    /// Why it closed when none of its events closed it.
    pub otherwise: SessionEnd,
}

/// What [`Sessionizer::observe`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// The first event of a session.
    Opened,
    Added,
    /// An `event_id` the session already had.
    Duplicate,
}

pub struct Sessionizer {
    limits: Limits,
    open: HashMap<Arc<str>, Open>,
    /// Every open session by its deadline (the `u64` makes keys unique).
    deadlines: BTreeMap<(Instant, u64), Arc<str>>,
    next_key: u64,
    /// Sessions evicted on the request path, waiting for the emitter.
    evicted: Vec<Closed>,
}

impl Sessionizer {
    pub fn new(limits: Limits) -> Sessionizer {
        Sessionizer {
            limits,
            open: HashMap::new(),
            deadlines: BTreeMap::new(),
            next_key: 0,
            evicted: Vec::new(),
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

    /// When the next session closes, if any is open.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.keys().next().map(|(at, _)| *at)
    }

    /// Whether evicted sessions wait to be summarized.
    pub fn has_evicted(&self) -> bool {
        !self.evicted.is_empty()
    }

    /// Adds an event to its session. `make_envelope` is called only when the event
    /// becomes the session's envelope (its first event in order).
    pub fn observe(&mut self, event: &Event, fact: Fact, now: Instant) -> Observed {
        let limits = self.limits;
        let session_id = event.body.session.id.as_str();
        if let Some(open) = self.open.get_mut(session_id) {
            if open.facts.iter().any(|f| f.id == fact.id) {
                return Observed::Duplicate;
            }
            open.facts.push(fact);
            if fact.kind == Kind::Error && closing_of(&fact).is_some() {
                open.fatal_codes.push((fact.id, error_code(event)));
            }
            if fact.order() < open.envelope.order {
                open.envelope = Envelope::of(event, &fact);
            }
            let deadline = if open.closing {
                open.deadline.0
            } else if closing_of(&fact).is_some() {
                open.closing = true;
                now + limits.end_grace
            } else {
                now + limits.idle_timeout
            };
            let old = open.deadline;
            if deadline != old.0 {
                let key = (deadline, self.next_key);
                self.next_key += 1;
                open.deadline = key;
                if let Some(id) = self.deadlines.remove(&old) {
                    self.deadlines.insert(key, id);
                }
            }
            return Observed::Added;
        }
        if self.open.len() >= limits.max_sessions.max(1) {
            self.evict_one();
        }
        let closing = closing_of(&fact).is_some();
        let deadline = now
            + if closing {
                limits.end_grace
            } else {
                limits.idle_timeout
            };
        let key = (deadline, self.next_key);
        self.next_key += 1;
        let mut fatal_codes = Vec::new();
        if closing && fact.kind == Kind::Error {
            fatal_codes.push((fact.id, error_code(event)));
        }
        let id: Arc<str> = Arc::from(session_id);
        self.deadlines.insert(key, id.clone());
        self.open.insert(
            id,
            Open {
                facts: vec![fact],
                envelope: Envelope::of(event, &fact),
                fatal_codes,
                closing,
                deadline: key,
            },
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
            if let Some(open) = self.open.remove(&id) {
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
        let Some((_, id)) = self.deadlines.pop_first() else {
            return;
        };
        if let Some(open) = self.open.remove(&id) {
            self.evicted.push(Closed {
                session_id: id,
                open,
                otherwise: SessionEnd::Evicted,
            });
        }
    }

    /// Heap bytes held for open sessions, approximately (for the benchmark).
    pub fn approximate_bytes(&self) -> usize {
        let per_entry = std::mem::size_of::<(Arc<str>, Open)>() + 1;
        let deadline_entry = std::mem::size_of::<((Instant, u64), Arc<str>)>();
        self.open
            .iter()
            .map(|(id, open)| {
                per_entry
                    + deadline_entry
                    + 16
                    + id.len()
                    + open.facts.capacity() * std::mem::size_of::<Fact>()
                    + open.envelope.heap_bytes()
                    + open
                        .fatal_codes
                        .iter()
                        .map(|(_, c)| 24 + c.len())
                        .sum::<usize>()
            })
            .sum()
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
