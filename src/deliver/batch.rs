//! Gathering a batch from a destination's queue: as many events as fit the limits, for
//! at most `max_wait` after the first one arrives.

use crate::config::BatchConfig;
use crate::event::Event;
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
