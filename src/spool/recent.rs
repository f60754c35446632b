//! The most recently committed events, by position, as weak references. A destination
//! reading its backlog back from disk takes an event from here while anything else
//! still holds it (another destination's window or request, or another reader), and
//! parses the record only when nothing does. Several destinations that fall behind
//! together then parse each event once between them, not once each: re-parsing is
//! what a read-back costs, and what kept a destination behind once it fell behind.
//!
//! Weak references hold no event alive, but a dead event's allocation stays until its
//! slot lets go. So each new entry also clears the slots 64, 1,024 and half a turn
//! behind it when their events are gone: most events die once delivered, within a
//! few dozen positions, and the ring then costs its [`SLOTS`] × 16 bytes and little else.

use crate::event::Event;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// Positions remembered: a power of two.
pub const SLOTS: usize = 1 << 14;
/// How far behind a new entry the slots are that it clears if their events are gone.
const SWEEP: [u64; 3] = [64, 1024, SLOTS as u64 / 2];

pub struct Recent {
    slots: Mutex<Vec<(u64, Weak<Event>)>>,
}

impl Default for Recent {
    fn default() -> Self {
        Recent {
            slots: Mutex::new(vec![(0, Weak::new()); SLOTS]),
        }
    }
}

impl Recent {
    fn lock(&self) -> MutexGuard<'_, Vec<(u64, Weak<Event>)>> {
        // A panic while holding this lock leaves weak references behind: still usable.
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers events at their spool positions, under one lock: a group commit's
    /// worth, or one event read back.
    pub fn remember<'a>(&self, events: impl IntoIterator<Item = &'a Arc<Event>>) {
        let mut slots = self.lock();
        for event in events {
            let seq = event.spool_seq;
            slots[slot(seq)] = (seq, Arc::downgrade(event));
            for distance in SWEEP {
                let behind = &mut slots[slot(seq.wrapping_sub(distance))];
                if behind.1.strong_count() == 0 {
                    *behind = (0, Weak::new());
                }
            }
        }
    }

    /// The event at `seq`, if something still holds it.
    pub fn recall(&self, seq: u64) -> Option<Arc<Event>> {
        let slots = self.lock();
        let (at, event) = &slots[slot(seq)];
        // An empty slot is (0, nothing): no position matches it and upgrades.
        (*at == seq).then(|| event.upgrade()).flatten()
    }
}

fn slot(seq: u64) -> usize {
    (seq & (SLOTS as u64 - 1)) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;
    use time::OffsetDateTime;

    fn event(n: u64) -> Arc<Event> {
        let json = format!(
            r#"{{"event_id":"0190f6d2-7c3a-7b1e-9a1e-{n:012x}","type":"playback.paused","timestamp":"2026-01-15T10:20:30.123Z","session":{{"id":"s1"}},"user":{{"anonymous_id":"a-1"}}}}"#
        );
        let raw: Box<RawValue> = serde_json::from_str(&json).expect("json");
        let mut event = Event::from_json(&raw, OffsetDateTime::UNIX_EPOCH).expect("valid");
        event.spool_seq = n;
        Arc::new(event)
    }

    #[test]
    fn an_event_is_recalled_while_held_and_not_after() {
        let recent = Recent::default();
        let held = event(7);
        recent.remember([&held]);
        let recalled = recent.recall(7).expect("held elsewhere");
        assert!(Arc::ptr_eq(&held, &recalled));
        assert!(recent.recall(8).is_none(), "never remembered");
        drop((held, recalled));
        assert!(recent.recall(7).is_none(), "nothing holds it any more");
    }

    #[test]
    fn a_slot_taken_by_a_later_position_does_not_answer_for_the_earlier_one() {
        let recent = Recent::default();
        let first = event(3);
        let later = event(3 + SLOTS as u64);
        recent.remember([&first]);
        recent.remember([&later]);
        assert!(recent.recall(3).is_none());
        assert!(Arc::ptr_eq(
            &recent.recall(3 + SLOTS as u64).expect("held"),
            &later
        ));
    }

    #[test]
    fn dead_entries_behind_a_new_one_are_cleared_and_live_ones_kept() {
        for distance in SWEEP {
            let recent = Recent::default();
            let kept = event(1);
            recent.remember([&kept]);
            recent.remember([&event(2)]); // dropped at once
            recent.remember([&event(1 + distance)]);
            recent.remember([&event(2 + distance)]);
            let slots = recent.lock();
            assert_eq!(slots[1].0, 1, "still held: kept ({distance})");
            assert_eq!(slots[2].0, 0, "gone: its slot was cleared ({distance})");
            assert!(slots[2].1.upgrade().is_none());
        }
    }
}
