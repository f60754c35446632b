//! What a destination reads from and acknowledges. Its worker always takes events from
//! an in-memory window (a bounded channel). With the memory spool the window is the
//! whole queue. With the disk spool, ingest fills the window while the destination
//! keeps up; once it is full, the destination's reader here takes the backlog from
//! disk in order, a window at a time, and sheds the oldest by `when_full` when the
//! backlog passes its budget. Every settled event is acknowledged to the cursor.

use super::dead_letter::{Cause, Reason};
use super::Stack;
use super::WhenFull;
use crate::event::Event;
use crate::spool::cursor::ReadAhead;
use crate::spool::jetstream::Pulled;
use crate::spool::{Cursor, Lease, Scanned};
use prometheus_client::metrics::counter::Counter;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Events read from disk per step: bounds what the reader holds beside the window.
const READ_AHEAD: usize = 256;
/// How often a reader waiting for room checks the backlog budget.
const BUDGET_CHECK: Duration = Duration::from_millis(100);

/// Settles events for a destination: they leave `in_flight`, and the spool may forget
/// them once every destination has.
pub struct Settle {
    metrics: Arc<crate::telemetry::DestinationMetrics>,
    cursor: Option<Arc<Cursor>>,
    lease: Option<Arc<Lease>>,
}

impl Settle {
    pub fn new(
        metrics: Arc<crate::telemetry::DestinationMetrics>,
        cursor: Option<Arc<Cursor>>,
    ) -> Settle {
        Settle {
            metrics,
            cursor,
            lease: None,
        }
    }

    /// Settling acknowledges to the destination's JetStream consumer.
    pub fn with_lease(mut self, lease: Option<Arc<Lease>>) -> Settle {
        self.lease = lease;
        self
    }

    pub fn events(&self, events: &[&Event]) {
        self.metrics.in_flight.dec_by(events.len() as i64);
        if let Some(cursor) = &self.cursor {
            cursor.settle(events.iter().map(|e| e.spool_seq));
        }
        if let Some(lease) = &self.lease {
            lease.settle(events.iter().map(|e| e.spool_seq));
        }
    }

    /// Shutdown gave up on these: JetStream hands them to another relay now.
    pub fn give_back(&self, events: &[&Event]) {
        if let Some(lease) = &self.lease {
            lease.give_back(events.iter().map(|e| e.spool_seq));
        }
    }

    pub fn one(&self, event: &Event) {
        self.events(&[event]);
    }

    /// True when a JetStream consumer holds this destination's events.
    pub fn leased(&self) -> bool {
        self.lease.is_some()
    }

    /// True when unsettled events stay in the spool for the next start rather than
    /// being dead-lettered at shutdown.
    pub fn spooled(&self) -> bool {
        self.cursor.is_some() || self.lease.is_some()
    }
}

/// Feeds the window from the disk backlog whenever the destination is behind. Once
/// the destination is dropped (shutdown) it drains the backlog and then closes the
/// window by letting go of it; it stops at once when shutdown gives up, when the
/// destination is removed, or when a rebuilt worker's reader takes over.
pub async fn read_backlog(
    stack: Arc<Stack>,
    cursor: Arc<Cursor>,
    window: mpsc::Sender<Arc<Event>>,
    generation: u64,
) {
    let label = crate::telemetry::DestinationLabel {
        destination: stack.name.clone(),
    };
    let spool_metrics = &stack.metrics_root.spool;
    let reader = Reader {
        read_back: spool_metrics.backlog_read.get_or_create(&label).clone(),
        recalled: spool_metrics.backlog_recalled.get_or_create(&label).clone(),
        stack: stack.clone(),
        cursor: cursor.clone(),
        window,
        generation,
    };
    loop {
        tokio::select! {
            biased;
            _ = stack.abandoned() => return,
            behind = cursor.wait_behind(generation) => if !behind {
                return;
            },
        }
        if cursor.is_removed() {
            return;
        }
        loop {
            let (records, next) = match cursor.read_ahead(generation, READ_AHEAD) {
                Ok(ReadAhead::Records(records, next)) => (records, next),
                Ok(ReadAhead::CaughtUp) => {
                    if cursor.is_closed(generation) {
                        return;
                    }
                    break;
                }
                Ok(ReadAhead::Superseded) => return,
                Err(error) => {
                    tracing::error!(destination = %stack.name, %error, "cannot read the spool: retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            // Events shed past the budget are held by the cursor until they are
            // dead-lettered or dropped, whatever ends this chunk's reading, the reader's
            // cancellation included (see `Shedding`).
            let mut shed = Shedding::new(&stack);
            let read_on = reader.read(&records, &mut shed).await;
            if let Some(shedding) = shed.start() {
                let _ = shedding.await;
            }
            if !read_on {
                return;
            }
            cursor.advance(generation, next);
        }
    }
}

/// One destination's backlog reader, as of one generation.
struct Reader {
    stack: Arc<Stack>,
    cursor: Arc<Cursor>,
    window: mpsc::Sender<Arc<Event>>,
    generation: u64,
    read_back: Counter,
    recalled: Counter,
}

impl Reader {
    /// Hands `records` to the window in order, or to `shed` past the budget. False
    /// when the reader must stop: replaced, removed, its window closed, or shutdown
    /// gave up.
    async fn read(&self, records: &[Scanned], shed: &mut Shedding) -> bool {
        let (stack, cursor, generation) = (&self.stack, &self.cursor, self.generation);
        for record in records {
            let header = match record.header() {
                Ok(header) => header,
                Err(error) => {
                    corrupt(stack, record.seq, &error);
                    continue;
                }
            };
            if !header.routes_to(cursor.id) {
                continue;
            }
            let size = record.size();
            let event = match cursor.recall(record.seq) {
                Some(event) => {
                    self.recalled.inc();
                    event
                }
                None => match header.event() {
                    Ok(mut event) => {
                        event.spool_seq = record.seq;
                        let event = Arc::new(event);
                        cursor.remember(&event);
                        event
                    }
                    Err(error) => {
                        if !drop_read(stack, cursor, generation, record.seq, size, "corrupt") {
                            return false;
                        }
                        corrupt(stack, record.seq, &error);
                        continue;
                    }
                },
            };
            // A type the destination leaves out is kept out of its records when they
            // are written. One that names it anyway was counted as backlog, by its
            // offer or by the recovery after a restart: written before types were
            // kept out, or left out by a reload since. It is settled here as dropped.
            if let Some(reason) = stack.skips(&event) {
                if !drop_read(stack, cursor, generation, record.seq, size, reason) {
                    return false;
                }
                continue;
            }
            let permit = loop {
                if cursor.over_budget() && stack.when_full() != WhenFull::Block {
                    break None;
                }
                // Checked each round: a reader waiting for room that a reload replaced
                // stops, and sheds what it holds, before its worker goes.
                if cursor.is_removed() || !cursor.is_current(generation) {
                    return false;
                }
                tokio::select! {
                    biased;
                    _ = stack.abandoned() => return false,
                    reserved = tokio::time::timeout(BUDGET_CHECK, self.window.reserve()) => match reserved {
                        Ok(Ok(permit)) => break Some(permit),
                        Ok(Err(_)) => return false,
                        Err(_) => continue,
                    },
                }
            };
            match permit {
                Some(permit) => {
                    // No await between these two: a cancelled reader never leaves an
                    // event handed out that the window did not get.
                    if !cursor.hand_out(generation, record.seq) {
                        return false;
                    }
                    permit.send(event);
                    self.read_back.inc();
                }
                None => {
                    if !cursor.hold(generation, record.seq) {
                        return false;
                    }
                    shed.events.push(Arc::unwrap_or_clone(event));
                }
            }
            // Only once the record is this reader's: one taken over is the next
            // reader's to take out of the backlog.
            cursor.take_backlog(size);
        }
        true
    }
}

/// Settles a record the reader read as dropped for `reason`: past it goes the read
/// position, out of the backlog and the queue it goes, and the drop is counted. False,
/// with nothing counted, when the record is no longer this reader's (it was replaced,
/// or the destination removed).
fn drop_read(
    stack: &Stack,
    cursor: &Cursor,
    generation: u64,
    seq: u64,
    size: u64,
    reason: &'static str,
) -> bool {
    if !cursor.pass_over(generation, seq) {
        return false;
    }
    cursor.take_backlog(size);
    stack.metrics.queue_depth.dec();
    stack.metrics.dropped(reason, 1);
    true
}

/// How long an idle reader's pull waits for the next event on the server.
const PULL_WAIT: Duration = Duration::from_secs(1);
/// How long a closing destination waits for its JetStream reader's last pull.
pub const READER_STOP: Duration = Duration::from_secs(2);

/// Feeds the window from the destination's JetStream consumer, taking no more than
/// the window has room for, so the rest stays on the server for the other relays.
/// Stops when the destination is dropped (shutdown), rebuilt or removed, handing back
/// what it pulled and could not pass on.
pub async fn read_stream(
    stack: Arc<Stack>,
    lease: Arc<Lease>,
    window: mpsc::Sender<Arc<Event>>,
    generation: u64,
) {
    let _running = lease.reader();
    while lease.is_current(generation) {
        let room = loop {
            let room = window.capacity();
            if room > 0 {
                break room.min(READ_AHEAD);
            }
            tokio::select! {
                biased;
                _ = stack.abandoned() => return,
                _ = lease.ended(generation) => return,
                reserved = window.reserve() => match reserved {
                    Ok(permit) => drop(permit),
                    Err(_) => return,
                },
            }
        };
        // What is there now; when nothing is, wait on the server for the next one.
        let mut pulled = lease.pull(room, None).await;
        if matches!(&pulled, Ok(p) if p.is_empty()) {
            // Not cut short when the destination closes: what the server already sent
            // a dropped pull would wait out ack_wait before another relay got it. It
            // ends by itself within PULL_WAIT; what it brought is given back below.
            pulled = lease.pull(1, Some(PULL_WAIT)).await;
        }
        let pulled = match pulled {
            Ok(pulled) => pulled,
            Err(error) => {
                tracing::error!(destination = %stack.name, %error, "cannot pull from JetStream: retrying in 1 s");
                tokio::select! {
                    _ = stack.abandoned() => return,
                    _ = lease.ended(generation) => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
        };
        let mut events = Vec::with_capacity(pulled.len());
        for pulled in pulled {
            match pulled {
                Pulled::Event(event) => events.push(*event),
                Pulled::Corrupt(error) => {
                    stack.metrics.received.inc();
                    stack.metrics.dropped("corrupt", 1);
                    tracing::error!(destination = %stack.name, %error, "unreadable event in the stream: terminated");
                }
            }
        }
        if !lease.is_current(generation) || stack.is_abandoned() {
            lease.give_back(events.iter().map(|e| e.spool_seq));
            return;
        }
        let mut events = events.into_iter();
        while let Some(event) = events.next() {
            // Counted before the send: the worker may take it at once.
            stack.metrics.queue_depth.inc();
            let refused = match window.try_send(Arc::new(event)) {
                Ok(()) => None,
                Err(mpsc::error::TrySendError::Closed(event)) => Some(event),
                // A rebuilt worker's queue moved in meanwhile: wait for room.
                Err(mpsc::error::TrySendError::Full(event)) => tokio::select! {
                    biased;
                    _ = stack.abandoned() => Some(event),
                    sent = window.send(event.clone()) => sent.err().map(|e| e.0),
                },
            };
            match refused {
                None => {
                    stack.metrics.received.inc();
                }
                Some(event) => {
                    stack.metrics.queue_depth.dec();
                    let rest = std::iter::once(event.spool_seq).chain(events.map(|e| e.spool_seq));
                    lease.give_back(rest);
                    return;
                }
            }
        }
    }
}

/// Events a reader sheds, held by its cursor until they are settled. They are shed in
/// a task of their own, which a cancelled reader (its worker aborts it on a reload or
/// when shutdown gives up) does not cut short; a reader dropped while holding some
/// starts that task as it goes.
struct Shedding {
    stack: Arc<Stack>,
    events: Vec<Event>,
}

impl Shedding {
    fn new(stack: &Arc<Stack>) -> Shedding {
        Shedding {
            stack: stack.clone(),
            events: Vec::new(),
        }
    }

    /// Starts shedding what is held, if anything is.
    fn start(&mut self) -> Option<tokio::task::JoinHandle<()>> {
        if self.events.is_empty() {
            return None;
        }
        // Outside a runtime (it is going away) the cursor still holds them: the saved
        // position stays at or below them, and the next start reads them again.
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let events = std::mem::take(&mut self.events);
        let stack = self.stack.clone();
        Some(runtime.spawn(async move { shed_oldest(&stack, events).await }))
    }
}

impl Drop for Shedding {
    fn drop(&mut self) {
        let _ = self.start();
    }
}

/// The backlog passed `queue.max_bytes`: its oldest events go to the dead-letter file
/// (`when_full = "dead_letter"`, replayable) or are dropped and counted.
async fn shed_oldest(stack: &Stack, events: Vec<Event>) {
    let n = events.len() as i64;
    stack.metrics.queue_depth.dec_by(n);
    match stack.when_full() {
        WhenFull::DropOldest | WhenFull::DropNewest => {
            stack.metrics.dropped("backlog_full", n as u64);
            if let Some(cursor) = stack.cursor() {
                cursor.settle(events.iter().map(|e| e.spool_seq));
            }
            tracing::warn!(destination = %stack.name, events = n, "backlog over queue.max_bytes: oldest events dropped");
        }
        WhenFull::DeadLetter | WhenFull::Block => {
            stack.metrics.in_flight.inc_by(n);
            let refs: Vec<&Event> = events.iter().collect();
            stack
                .dead_letter(&refs, &Cause::new(Reason::BacklogFull))
                .await;
        }
    }
}

fn corrupt(stack: &Stack, seq: u64, error: &dyn std::fmt::Display) {
    stack.metrics_root.spool.corrupt_records.inc();
    tracing::error!(destination = %stack.name, seq, %error, "spool record is corrupt: skipped");
}
