//! The sending side of a destination: what routing offers events to. It never waits:
//! an event is queued, waits on disk in the spool, or is dead-lettered or dropped and
//! counted.

use super::dead_letter::Reason;
use crate::event::{Event, EventType};
use crate::spool::{Cursor, Lease};
use crate::telemetry::DestinationMetrics;
use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc;

/// The sending side of a destination: what routing hands events to.
pub struct Destination {
    pub name: String,
    pub(super) queue: mpsc::Sender<Arc<Event>>,
    pub(super) overflow: Option<mpsc::Sender<Arc<Event>>>,
    pub metrics: Arc<DestinationMetrics>,
    /// `critical = true`: the relay is not ready while this destination cannot deliver.
    pub critical: bool,
    /// Types the destination would only drop, with their `dropped{reason}` counter:
    /// left out here rather than queued, batched and translated for nothing.
    pub(super) skipped_types: HashMap<EventType, Counter>,
    /// Its place in the disk spool and its reader's generation; `None` with the
    /// memory spool.
    pub(super) cursor: Option<Arc<Cursor>>,
    pub(super) generation: u64,
    pub(super) when_full: WhenFull,
    /// Its JetStream consumer, with the JetStream spool.
    pub(super) lease: Option<Arc<Lease>>,
}

impl Drop for Destination {
    fn drop(&mut self) {
        // No more live events: the reader drains the disk backlog and closes the window.
        if let Some(cursor) = &self.cursor {
            cursor.close(self.generation);
        }
        // The reader stops pulling; the window drains.
        if let Some(lease) = &self.lease {
            lease.close(self.generation);
        }
    }
}

impl Destination {
    /// The id spooled records carry for this destination.
    pub fn spool_id(&self) -> Option<u16> {
        self.cursor.as_ref().map(|c| c.id)
    }

    /// `when_full = "block"` and the backlog on disk is past `queue.max_bytes`: ingest
    /// refuses events routed here until it shrinks.
    pub fn blocked(&self) -> bool {
        self.when_full == WhenFull::Block && self.cursor.as_ref().is_some_and(|c| c.over_budget())
    }

    /// Counts an event of a type this destination would only drop (received, dropped
    /// with its reason) and says so: the JetStream spool never publishes those.
    pub fn skip_counted(&self, event: &Event) -> bool {
        match event
            .known_type()
            .and_then(|ty| self.skipped_types.get(&ty))
        {
            Some(dropped) => {
                self.metrics.received.inc();
                dropped.inc();
                true
            }
            None => false,
        }
    }

    /// A spooled event, just made durable: into the window if the destination keeps up,
    /// else it waits on disk for the destination's reader. Never waits.
    pub fn offer_spooled(&self, event: Arc<Event>, bytes: u64) {
        self.metrics.received.inc();
        if let Some(dropped) = event
            .known_type()
            .and_then(|ty| self.skipped_types.get(&ty))
        {
            dropped.inc();
            return;
        }
        if self.cursor.as_ref().is_some_and(|c| c.is_removed()) {
            // Routed by a table from before the destination was removed: its worker
            // still drains the window; past that the event has nowhere to wait.
            if self.queue.try_send(event).is_ok() {
                self.metrics.queue_depth.inc();
            } else {
                self.metrics.dropped(Reason::Removed.as_str(), 1);
            }
            return;
        }
        self.metrics.queue_depth.inc();
        match &self.cursor {
            Some(cursor) => cursor.offer_live(event.spool_seq, event, bytes, &self.queue),
            // Not spooled after all (a destination started without a cursor).
            None => {
                if self.queue.try_send(event).is_err() {
                    self.metrics.queue_depth.dec();
                    self.metrics.dropped(Reason::QueueFull.as_str(), 1);
                }
            }
        }
    }

    /// Queues an event without waiting. When the queue is full the event is
    /// dead-lettered (`when_full = "dead_letter"`) or dropped, and counted either way.
    pub fn offer(&self, event: Arc<Event>) -> bool {
        self.metrics.received.inc();
        if !self.skipped_types.is_empty() {
            if let Some(dropped) = event
                .known_type()
                .and_then(|ty| self.skipped_types.get(&ty))
            {
                dropped.inc();
                return false;
            }
        }
        match self.queue.try_send(event) {
            Ok(()) => {
                self.metrics.queue_depth.inc();
                true
            }
            Err(mpsc::error::TrySendError::Full(event)) => {
                match &self.overflow {
                    Some(overflow) => match overflow.try_send(event) {
                        Ok(()) => {
                            self.metrics.in_flight.inc();
                        }
                        Err(_) => self.metrics.dropped(Reason::QueueFull.as_str(), 1),
                    },
                    None => self.metrics.dropped(Reason::QueueFull.as_str(), 1),
                }
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.metrics.dropped("shutting_down", 1);
                false
            }
        }
    }

    /// Moves an already counted event from a replaced worker's queue into this one;
    /// waits for room rather than lose it.
    pub(super) async fn requeue(&self, event: Arc<Event>) {
        if self.queue.send(event).await.is_err() {
            // This worker is gone too: nothing can take the event any more.
            self.metrics.queue_depth.dec();
            self.metrics.dropped("reload_lost", 1);
        }
    }
}

/// `queue` in a destination's config: how much waits for it, and what happens past that.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Events held in memory for the destination: the whole queue with the memory
    /// spool, the window read ahead of the disk backlog with the disk spool.
    #[serde(default = "defaults::queue_max_events")]
    pub max_events: usize,
    /// The destination's backlog on disk (disk spool): past it, `when_full` decides.
    #[serde(default = "defaults::queue_max_bytes")]
    pub max_bytes: u64,
    /// What happens when the queue (memory) or the backlog (disk) is full.
    #[serde(default)]
    pub when_full: WhenFull,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Written to the dead-letter file, so it can be replayed.
    #[default]
    DeadLetter,
    /// Counted as `dropped{reason="queue_full"}` and gone.
    DropNewest,
    /// Disk spool: the oldest backlog is counted as `dropped{reason="backlog_full"}`.
    DropOldest,
    /// Disk spool: ingest answers 503 with `Retry-After` for events routed here.
    Block,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max_events: defaults::queue_max_events(),
            max_bytes: defaults::queue_max_bytes(),
            when_full: WhenFull::default(),
        }
    }
}

mod defaults {
    /// About 3 KB per queued event: 10,000 is ~30 MB for a destination that stalls.
    pub fn queue_max_events() -> usize {
        10_000
    }
    pub fn queue_max_bytes() -> u64 {
        256 << 20
    }
}
