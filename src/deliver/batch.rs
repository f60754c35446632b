//! Gathering a batch from a destination's queue: as many events as fit the limits, for
//! at most `max_wait` after the first one arrives.

use crate::event::Event;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Waits for the first event, then gathers more into `batch` until a limit or the wait
/// is reached. Cancel-safe: events already taken stay in `batch`, which the caller owns.
/// Leaves `batch` empty only when the queue is closed and empty.
pub async fn next_batch(
    queue: &mut mpsc::Receiver<Arc<Event>>,
    limits: &BatchConfig,
    batch: &mut Vec<Arc<Event>>,
) {
    if batch.is_empty() {
        let Some(first) = queue.recv().await else {
            return;
        };
        batch.push(first);
    }
    let mut bytes: usize = batch.iter().map(|e| estimated_size(e)).sum();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(limits.max_wait_ms);
    while batch.len() < limits.max_events && bytes < limits.max_bytes {
        // Take what is already queued without waiting on the timer.
        let next = match queue.try_recv() {
            Ok(event) => Some(event),
            Err(mpsc::error::TryRecvError::Disconnected) => None,
            Err(mpsc::error::TryRecvError::Empty) => {
                tokio::time::timeout_at(deadline, queue.recv())
                    .await
                    .ok()
                    .flatten()
            }
        };
        let Some(event) = next else { break };
        bytes += estimated_size(&event);
        batch.push(event);
    }
}

/// The event's size as the client sent it: close to what most destinations send.
fn estimated_size(event: &Event) -> usize {
    event.raw_json().len() + 40
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    #[serde(default = "defaults::batch_max_events")]
    pub max_events: usize,
    #[serde(default = "defaults::batch_max_bytes")]
    pub max_bytes: usize,
    /// How long the first event of a batch may wait for others.
    #[serde(default = "defaults::batch_max_wait_ms")]
    pub max_wait_ms: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_events: defaults::batch_max_events(),
            max_bytes: defaults::batch_max_bytes(),
            max_wait_ms: defaults::batch_max_wait_ms(),
        }
    }
}

impl BatchConfig {
    /// What translators must respect when they split a batch into vendor requests.
    pub fn limits(&self) -> crate::dest::BatchLimits {
        crate::dest::BatchLimits {
            max_events: self.max_events,
            max_bytes: self.max_bytes,
        }
    }
}

mod defaults {
    pub fn batch_max_events() -> usize {
        100
    }
    pub fn batch_max_bytes() -> usize {
        512 * 1024
    }
    pub fn batch_max_wait_ms() -> u64 {
        1_000
    }
}
