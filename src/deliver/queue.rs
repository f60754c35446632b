//! What a destination reads from and acknowledges. Its worker always takes events from
//! an in-memory window (a bounded channel). With the memory spool the window is the
//! whole queue. With the disk spool, ingest fills the window while the destination
//! keeps up; once it is full, the destination's reader here takes the backlog from
//! disk in order, a window at a time, and sheds the oldest by `when_full` when the
//! backlog passes its budget. Every settled event is acknowledged to the cursor.

use super::dead_letter::Cause;
use super::Stack;
use crate::config::WhenFull;
use crate::event::Event;
use crate::spool::cursor::ReadAhead;
use crate::spool::Cursor;
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
}

impl Settle {
    pub fn new(
        metrics: Arc<crate::telemetry::DestinationMetrics>,
        cursor: Option<Arc<Cursor>>,
    ) -> Settle {
        Settle { metrics, cursor }
    }

    pub fn events(&self, events: &[&Event]) {
        self.metrics.in_flight.dec_by(events.len() as i64);
        if let Some(cursor) = &self.cursor {
            cursor.settle(events.iter().map(|e| e.spool_seq));
        }
    }

    pub fn one(&self, event: &Event) {
        self.events(&[event]);
    }

    /// True when unsettled events stay in the spool for the next start rather than
    /// being dead-lettered at shutdown.
    pub fn spooled(&self) -> bool {
        self.cursor.is_some()
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
    let read_back = stack
        .metrics_root
        .spool
        .backlog_read
        .get_or_create(&crate::telemetry::DestinationLabel {
            destination: stack.name.clone(),
        })
        .clone();
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
            let mut shed: Vec<Event> = Vec::new();
            for record in &records {
                let header = match record.header() {
                    Ok(header) => header,
                    Err(error) => {
                        corrupt(&stack, record.seq, &error);
                        continue;
                    }
                };
                if !header.routes_to(cursor.id) {
                    continue;
                }
                let size = record.bytes.len() as u64;
                let mut event = match header.event() {
                    Ok(event) => event,
                    Err(error) => {
                        corrupt(&stack, record.seq, &error);
                        cursor.take_backlog(size);
                        stack.metrics.queue_depth.dec();
                        stack.metrics.dropped("corrupt", 1);
                        continue;
                    }
                };
                event.spool_seq = record.seq;
                // Counted as dropped when it was offered: never queued, so not read.
                if stack.skips(event.event_type()) {
                    continue;
                }
                let permit = loop {
                    if cursor.over_budget() && stack.when_full() != WhenFull::Block {
                        break None;
                    }
                    if cursor.is_removed() {
                        return;
                    }
                    tokio::select! {
                        biased;
                        _ = stack.abandoned() => return,
                        reserved = tokio::time::timeout(BUDGET_CHECK, window.reserve()) => match reserved {
                            Ok(Ok(permit)) => break Some(permit),
                            Ok(Err(_)) => return,
                            Err(_) => continue,
                        },
                    }
                };
                cursor.take_backlog(size);
                match permit {
                    Some(permit) => {
                        // No await between these two: a cancelled reader never leaves
                        // an event handed out that the window did not get.
                        cursor.hand_out(record.seq);
                        permit.send(Arc::new(event));
                        read_back.inc();
                    }
                    None => shed.push(event),
                }
            }
            if !shed.is_empty() {
                shed_oldest(&stack, shed).await;
            }
            cursor.advance(generation, next);
        }
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
            stack.dead_letter(&refs, &Cause::new("backlog_full")).await;
        }
    }
}

fn corrupt(stack: &Stack, seq: u64, error: &dyn std::fmt::Display) {
    tracing::error!(destination = %stack.name, seq, %error, "spool record is corrupt: skipped");
}
