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

    #[test]
    fn a_fact_is_32_bytes() {
        assert_eq!(std::mem::size_of::<Fact>(), 32);
    }
}
