//! A destination's place in the disk spool. Events reach the destination's in-memory
//! window live while it keeps up; once the window is full the destination is *behind*
//! and its reader takes the backlog from disk, in order, until it catches up.
//! An event is acknowledged once delivered, dead-lettered or dropped and counted; the
//! position below which everything is acknowledged is what survives a restart.

use super::store::{Scanned, Store};
use crate::event::Event;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{mpsc, Notify};

pub struct Cursor {
    pub name: String,
    /// The id records carry for this destination.
    pub id: u16,
    store: Arc<Store>,
    state: Mutex<State>,
    /// Wakes the reader when the destination falls behind.
    wake: Notify,
    /// Bytes of the backlog on disk that the destination has not taken yet.
    backlog_bytes: AtomicU64,
    max_bytes: AtomicU64,
    removed: AtomicBool,
}

struct State {
    /// True while the destination's window is full and its reader serves it from disk.
    behind: bool,
    /// Every event below this position was handed to the destination or is not its.
    read_pos: u64,
    /// Handed to the destination and not yet settled.
    outstanding: BTreeSet<u64>,
    /// The highest position ever handed over, for counting redeliveries after a crash.
    handed_through: u64,
    /// Bumped by each new reader, so a replaced worker's reader stops.
    generation: u64,
    /// The generation whose destination was dropped: its reader drains the disk
    /// backlog, then closes the window.
    closed_generation: u64,
}

/// What a reader found on disk.
pub enum ReadAhead {
    Records(Vec<Scanned>, u64),
    /// Nothing left on disk: the destination is live again.
    CaughtUp,
    /// Another reader took over.
    Superseded,
}

impl Cursor {
    pub(super) fn new(
        name: &str,
        id: u16,
        store: Arc<Store>,
        position: u64,
        behind: bool,
    ) -> Cursor {
        Cursor {
            name: name.to_string(),
            id,
            store,
            state: Mutex::new(State {
                behind,
                read_pos: position,
                outstanding: BTreeSet::new(),
                handed_through: position.saturating_sub(1),
                generation: 0,
                closed_generation: 0,
            }),
            wake: Notify::new(),
            backlog_bytes: AtomicU64::new(0),
            max_bytes: AtomicU64::new(u64::MAX),
            removed: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain numbers behind: still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Everything below this position is settled; (position, highest handed over).
    pub fn position(&self) -> (u64, u64) {
        let state = self.lock();
        let low = state
            .outstanding
            .first()
            .copied()
            .unwrap_or(state.read_pos)
            .min(state.read_pos);
        (low, state.handed_through)
    }

    pub fn set_max_bytes(&self, max_bytes: u64) {
        self.max_bytes.store(max_bytes, Ordering::Relaxed);
    }

    pub fn over_budget(&self) -> bool {
        self.backlog_bytes.load(Ordering::Relaxed) > self.max_bytes.load(Ordering::Relaxed)
    }

    pub fn backlog_bytes(&self) -> u64 {
        self.backlog_bytes.load(Ordering::Relaxed)
    }

    pub(super) fn add_backlog(&self, bytes: u64) {
        self.backlog_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn take_backlog(&self, bytes: u64) {
        let _ = self
            .backlog_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(bytes))
            });
    }

    pub(super) fn mark_removed(&self) {
        self.removed.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    /// Hands a just-committed event to the destination's window if it is live and has
    /// room; otherwise the destination is behind and its reader will find the event on
    /// disk. Called in commit order.
    pub fn offer_live(
        &self,
        seq: u64,
        event: Arc<Event>,
        bytes: u64,
        window: &mpsc::Sender<Arc<Event>>,
    ) {
        let mut state = self.lock();
        if !state.behind {
            match window.try_send(event) {
                Ok(()) => {
                    state.outstanding.insert(seq);
                    state.read_pos = seq + 1;
                    state.handed_through = state.handed_through.max(seq);
                    return;
                }
                Err(_) => {
                    state.behind = true;
                    state.read_pos = seq;
                }
            }
        }
        drop(state);
        self.add_backlog(bytes);
        self.wake.notify_one();
    }

    /// After a commit: a live destination is past every committed event, its or not.
    pub(super) fn passed(&self, next_seq: u64) {
        let mut state = self.lock();
        if !state.behind && state.read_pos < next_seq {
            state.read_pos = next_seq;
        }
    }

    /// Starts a reader for a (new or rebuilt) worker: the previous reader stops, and
    /// this one checks the disk before the destination counts as live again.
    pub fn attach(&self) -> u64 {
        let mut state = self.lock();
        state.generation += 1;
        state.behind = true;
        drop(state);
        self.wake.notify_one();
        self.lock().generation
    }

    /// Waits until the destination is behind, closed or removed; false once this
    /// reader is replaced.
    pub async fn wait_behind(&self, generation: u64) -> bool {
        loop {
            let notified = self.wake.notified();
            {
                let state = self.lock();
                if state.generation != generation {
                    return false;
                }
                if state.behind || state.closed_generation == generation || self.is_removed() {
                    return true;
                }
            }
            notified.await;
        }
    }

    /// The destination of `generation` takes no more live events (shutdown, removal).
    pub fn close(&self, generation: u64) {
        self.lock().closed_generation = generation;
        self.wake.notify_one();
    }

    pub fn is_closed(&self, generation: u64) -> bool {
        self.lock().closed_generation == generation
    }

    /// Where the destination's unread backlog starts: what a removed one still owes.
    pub fn unread_from(&self) -> u64 {
        self.lock().read_pos
    }

    /// The next records on disk from the read position, or the news that there are
    /// none: then, checked again while offers wait, the destination is live.
    pub fn read_ahead(
        &self,
        generation: u64,
        limit: usize,
    ) -> Result<ReadAhead, super::SpoolError> {
        let from = {
            let state = self.lock();
            if state.generation != generation {
                return Ok(ReadAhead::Superseded);
            }
            state.read_pos
        };
        let records = self.store.scan(from, limit)?;
        if let Some(last) = records.last() {
            let next = last.seq + 1;
            return Ok(ReadAhead::Records(records, next));
        }
        let mut state = self.lock();
        if state.generation != generation {
            return Ok(ReadAhead::Superseded);
        }
        // Offers take this lock after their commit: nothing can be committed and
        // skipped between this look and going live.
        let again = self.store.scan(state.read_pos, 1)?;
        if again.is_empty() {
            state.behind = false;
            return Ok(ReadAhead::CaughtUp);
        }
        Ok(ReadAhead::Records(Vec::new(), state.read_pos))
    }

    /// The event at `seq` as it was committed or last read back, if anything still
    /// holds it (see `recent.rs`); else the caller parses the record.
    pub fn recall(&self, seq: u64) -> Option<Arc<Event>> {
        self.store.recent().recall(seq)
    }

    /// Remembers an event read back from disk, for the other readers.
    pub fn remember(&self, event: &Arc<Event>) {
        self.store.recent().remember([event]);
    }

    /// The reader of `generation` is about to hand `seq` to the destination; false when
    /// another reader took over (a rebuilt worker's), which then reads from here on, or
    /// the destination was removed (the removal dead-letters what is unread).
    /// Moving the read position with each event, not per chunk, is what keeps a reader
    /// replaced mid-chunk from leaving events for its successor to send again.
    pub fn hand_out(&self, generation: u64, seq: u64) -> bool {
        self.take(generation, seq, true)
    }

    /// The reader of `generation` sheds `seq` (the backlog passed its budget): the
    /// event is outstanding, as a handed-out one is, until the shedding settles it, so
    /// neither a reader that takes over nor a restart skips it unsettled. Not counted
    /// as handed out: a restart before it is shed reads it again, but it was never sent.
    /// False, as for [`Cursor::pass_over`], when another reader took over or the
    /// destination was removed (the removal dead-letters what is unread).
    pub fn hold(&self, generation: u64, seq: u64) -> bool {
        self.take(generation, seq, false)
    }

    fn take(&self, generation: u64, seq: u64, handed: bool) -> bool {
        let mut state = self.lock();
        // Removal read under the lock, as in `pass_over`: a record `retire` counted as
        // unread is the removal's to dead-letter, never also this reader's to send.
        if state.generation != generation || self.is_removed() {
            return false;
        }
        state.outstanding.insert(seq);
        if handed {
            state.handed_through = state.handed_through.max(seq);
        }
        if state.read_pos <= seq {
            state.read_pos = seq + 1;
        }
        true
    }

    /// The reader of `generation` settled `seq` itself (dropped it, or found it
    /// corrupt): the read position moves past it as `hand_out` moves it, so a reader
    /// that takes over, or the read of a removed destination's backlog, never settles
    /// it again. False when another reader took over or the destination was removed:
    /// then the record is theirs, and this reader must not count it.
    pub fn pass_over(&self, generation: u64, seq: u64) -> bool {
        let mut state = self.lock();
        // Read under the lock: `retire` marks the cursor removed before it takes the
        // lock to read the position its owed records start from.
        if state.generation != generation || self.is_removed() {
            return false;
        }
        if state.read_pos <= seq {
            state.read_pos = seq + 1;
        }
        true
    }

    pub fn is_current(&self, generation: u64) -> bool {
        self.lock().generation == generation
    }

    /// The reader has dealt with everything below `next`.
    pub fn advance(&self, generation: u64, next: u64) {
        let mut state = self.lock();
        if state.generation == generation && state.read_pos < next {
            state.read_pos = next;
        }
    }

    /// Acknowledges settled events.
    pub fn settle(&self, seqs: impl Iterator<Item = u64>) {
        let mut state = self.lock();
        for seq in seqs {
            state.outstanding.remove(&seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::record;
    use crate::spool::store::ChunkBuilder;

    fn event(seq: u64) -> Arc<Event> {
        Arc::new(record::fixture_event(seq))
    }

    fn store_with(seqs: std::ops::Range<u64>, id: u16) -> (tempfile::TempDir, Arc<Store>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = Store::open(&dir.path().join("spool"), 4 << 20).expect("open");
        let mut batch = store.batch().expect("batch");
        let mut chunk = ChunkBuilder::new(seqs.start);
        for seq in seqs {
            chunk.push(|out| record::encode(&event(seq), &[id], out));
        }
        batch.insert_chunk(chunk);
        batch.commit().expect("commit");
        (dir, Arc::new(store))
    }

    /// A cursor at position 1 over records `seqs` (all routed to it), with its first
    /// reader attached: the spool's directory, the cursor and that reader's generation.
    fn attached(seqs: std::ops::Range<u64>, behind: bool) -> (tempfile::TempDir, Cursor, u64) {
        let (dir, store) = store_with(seqs, 0);
        let cursor = Cursor::new("d", 0, store, 1, behind);
        let generation = cursor.attach();
        (dir, cursor, generation)
    }

    #[test]
    fn a_full_window_puts_the_destination_behind_until_its_reader_catches_up() {
        let (_dir, cursor, generation) = attached(1..6, false);
        // attach() checks the disk first: nothing below position 1 is unread.
        let (window, mut taken) = mpsc::channel(2);
        assert!(matches!(
            cursor.read_ahead(generation, 10),
            Ok(ReadAhead::Records(ref r, 6)) if r.len() == 5
        ));
        for seq in 1..6 {
            assert!(cursor.hand_out(generation, seq));
        }
        cursor.advance(generation, 6);
        assert!(matches!(
            cursor.read_ahead(generation, 10),
            Ok(ReadAhead::CaughtUp)
        ));
        // Live again: the window takes two, the third finds it full.
        for seq in 6..9 {
            cursor.offer_live(seq, event(seq), 100, &window);
        }
        assert_eq!(cursor.backlog_bytes(), 100, "the third waits on disk");
        assert_eq!(cursor.position(), (1, 7));
        cursor.settle(1..6);
        assert_eq!(cursor.position().0, 6, "settled up to the window");
        let first = taken.try_recv().expect("in the window");
        cursor.settle(std::iter::once(first.spool_seq));
        assert_eq!(cursor.position().0, 7);
    }

    #[test]
    fn a_record_the_reader_settles_itself_is_passed_over_for_its_successor() {
        let (_dir, cursor, old) = attached(1..4, true);
        assert!(cursor.pass_over(old, 1));
        assert_eq!(cursor.unread_from(), 2, "the next reader starts after it");
        let new = cursor.attach();
        assert!(
            !cursor.pass_over(old, 2),
            "a replaced reader counts nothing"
        );
        assert_eq!(cursor.unread_from(), 2);
        assert!(matches!(
            cursor.read_ahead(new, 10),
            Ok(ReadAhead::Records(ref r, 4)) if r.first().map(|r| r.seq) == Some(2)
        ));
        cursor.mark_removed();
        assert!(
            !cursor.pass_over(new, 2),
            "a removed destination's records are the removal's to settle"
        );
        assert_eq!(cursor.unread_from(), 2);
    }

    #[test]
    fn an_event_being_shed_holds_the_position_until_settled_and_is_not_counted_handed_out() {
        let (_dir, cursor, old) = attached(1..5, true);
        assert!(cursor.hand_out(old, 1));
        assert!(cursor.hold(old, 2), "shed past the budget");
        // A reload replaces the reader before record 2 is dead-lettered: the successor
        // starts past both, and the held one keeps the saved position at or below it,
        // so a restart reads it again rather than skip it unsettled.
        let new = cursor.attach();
        assert_eq!(cursor.unread_from(), 3);
        assert_eq!(cursor.position(), (1, 1), "held: owed, never handed out");
        assert!(!cursor.hold(old, 3), "a replaced reader holds nothing");
        assert!(!cursor.hand_out(old, 3), "nor hands anything out");
        cursor.settle(std::iter::once(1));
        assert_eq!(cursor.position(), (2, 1), "the held record still holds it");
        cursor.settle(std::iter::once(2));
        assert_eq!(cursor.position().0, 3, "settled once shed");
        cursor.mark_removed();
        assert!(
            !cursor.hold(new, 3) && !cursor.hand_out(new, 3),
            "a removed destination's unread records are the removal's to settle"
        );
        assert_eq!(cursor.unread_from(), 3);
    }

    #[test]
    fn a_replaced_reader_stops() {
        let (_dir, cursor, old) = attached(1..3, true);
        let new = cursor.attach();
        assert!(matches!(
            cursor.read_ahead(old, 10),
            Ok(ReadAhead::Superseded)
        ));
        assert!(matches!(
            cursor.read_ahead(new, 10),
            Ok(ReadAhead::Records(_, 3))
        ));
    }
}
