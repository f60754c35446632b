//! Delivery: each destination has its own bounded queue and worker, so a slow or
//! failing vendor never holds up another destination or the ingest response.
//!
//! queue (`Destination::offer`) → batch (`batch.rs`) → plan (`plan.rs`: privacy,
//! skipped types, translate with `crate::dest`) →
//! per request: breaker (`breaker.rs`) → rate limit (`rate_limit.rs`) → concurrency
//! → send with timeout (`http.rs`) → retry (`retry.rs`) → delivered or dead letter
//! (`dead_letter.rs`). A file's lines are appended (`append.rs`) instead of sent.
//!
//! Accounting, per destination, at every moment:
//! `received = sent + dead_lettered + dropped + queue_depth + in_flight`.

mod append;
mod batch;
mod breaker;
mod concurrency;
pub mod dead_letter;
pub mod http;
pub mod plan;
mod queue;
mod rate_limit;
pub mod retry;

pub use self::concurrency::Gauges as ConcurrencyGauges;
pub use self::queue::Settle;

pub use self::breaker::state_name as breaker_state_name;
pub use self::http::{HttpClient, SendError, TlsRoots};
pub use self::plan::{Plan, Planner};

use crate::config::{
    ConcurrencySetting, DestinationConfig, DestinationKind, RateLimitConfig, WhenFull,
};
use crate::dest::{
    redact, render_request, stated_reason, Disposition, Refusal, VendorRequest, Verdict,
};
use crate::event::{format_rfc3339, Event, EventType};
use crate::spool::{Cursor, Lease, Recovered};
use crate::telemetry::{DestinationMetrics, Metrics};
use crate::Clock;
use breaker::Breaker;
use concurrency::{Concurrency, Permit, Signal};
use dead_letter::{Cause, DeadLetter, Reason};
use plan::Output;
use prometheus_client::metrics::counter::Counter;
use rate_limit::RateLimits;
use retry::Backoff;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// How many overflowing events may wait for the dead-letter writer before even they are
/// dropped (counted): ingest never waits on a disk.
const OVERFLOW_CAPACITY: usize = 1_000;

/// The sending side of a destination: what routing hands events to.
pub struct Destination {
    pub name: String,
    queue: mpsc::Sender<Arc<Event>>,
    overflow: Option<mpsc::Sender<Arc<Event>>>,
    pub metrics: Arc<DestinationMetrics>,
    /// `critical = true`: the relay is not ready while this destination cannot deliver.
    pub critical: bool,
    /// Types the destination would only drop, with their `dropped{reason}` counter:
    /// left out here rather than queued, batched and translated for nothing.
    skipped_types: HashMap<EventType, Counter>,
    /// Its place in the disk spool and its reader's generation; `None` with the
    /// memory spool.
    cursor: Option<Arc<Cursor>>,
    generation: u64,
    when_full: WhenFull,
    /// Its JetStream consumer, with the JetStream spool.
    lease: Option<Arc<Lease>>,
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
    async fn requeue(&self, event: Arc<Event>) {
        if self.queue.send(event).await.is_err() {
            // This worker is gone too: nothing can take the event any more.
            self.metrics.queue_depth.dec();
            self.metrics.dropped("reload_lost", 1);
        }
    }
}

/// The controls of a running destination worker.
pub struct Worker {
    pub handle: JoinHandle<()>,
    /// Give the worker its replacement: it stops taking batches and moves its queue there.
    pub handover: oneshot::Sender<Arc<Destination>>,
}

#[derive(Debug, thiserror::Error)]
#[error("destination {name}: {source}")]
pub struct BuildError {
    name: String,
    source: crate::dest::BuildError,
}

/// What a destination needs from the relay around it.
#[derive(Clone)]
pub struct Environment {
    pub client: HttpClient,
    pub metrics: Arc<Metrics>,
    pub clock: Clock,
    /// Set to true to make workers give up at once, dead-lettering what they hold.
    pub abandon: watch::Receiver<bool>,
    /// The dead-letter file of this destination.
    pub dead_letter_path: PathBuf,
    /// Where a `dry_run` destination writes its requests.
    pub dry_run_path: PathBuf,
    /// The key of the destination's `hash_fields`.
    pub hash_salt: Option<crate::config::Secret>,
    /// The destination's cursor in the disk spool, and what it is owed from before a
    /// restart; `None` with the memory spool.
    pub cursor: Option<(Arc<Cursor>, Recovered)>,
    /// The destination's JetStream consumer, with `backend = "jetstream"`.
    pub lease: Option<Arc<Lease>>,
}

/// Writes what a removed destination was still owed to its dead-letter file, with
/// reason `removed`, and counts it in the destination's accounts.
pub async fn dead_letter_removed(
    name: &str,
    path: PathBuf,
    metrics: &Metrics,
    events: &[Event],
    now: time::OffsetDateTime,
) {
    let metrics = Arc::new(metrics.destination(name));
    let n = events.len() as i64;
    metrics.queue_depth.dec_by(n);
    metrics.in_flight.inc_by(n);
    let settle = Arc::new(Settle::new(metrics.clone(), None));
    let writer = DeadLetter::new(name, path, metrics, Vec::new(), settle);
    let refs: Vec<&Event> = events.iter().collect();
    writer.write(&refs, &Cause::new(Reason::Removed), now).await;
}

/// Starts a destination's worker. Dropping the returned [`Destination`] closes its
/// queue: the worker sends what is left and ends.
pub fn start(
    config: &DestinationConfig,
    env: Environment,
) -> Result<(Arc<Destination>, Worker), BuildError> {
    let planner = Planner::new(config, env.hash_salt.as_ref()).map_err(|source| BuildError {
        name: config.name.clone(),
        source,
    })?;
    let file = match &config.kind {
        DestinationKind::File(file) => Some(append::AppendFile::new(file.path.clone())),
        _ => None,
    };
    let dry_run = config.common.dry_run.then(|| {
        tracing::info!(destination = %config.name, file = %env.dry_run_path.display(), "dry run: requests are written to a file, not sent");
        append::AppendFile::new(env.dry_run_path.clone())
    });
    let secrets = planner.secrets();
    let metrics = Arc::new(env.metrics.destination(&config.name));
    let skipped_types: HashMap<EventType, Counter> = planner
        .skipped()
        .map(|(ty, reason)| (ty, metrics.dropped_counter(reason)))
        .collect();
    let (cursor, recovered) = match &env.cursor {
        Some((cursor, recovered)) => (Some(cursor.clone()), *recovered),
        None => (None, Recovered::default()),
    };
    if cursor.is_some() {
        // Present from the start: "nothing owed" reads 0, not a missing series.
        let label = crate::telemetry::DestinationLabel {
            destination: config.name.clone(),
        };
        let _ = env.metrics.spool.recovered.get_or_create(&label);
        let _ = env.metrics.spool.redelivered.get_or_create(&label);
    }
    if recovered.events > 0 {
        // Owed from before the restart: counted as received again, so the accounts
        // balance from what the spool holds.
        metrics.received.inc_by(recovered.events);
        metrics.queue_depth.inc_by(recovered.events as i64);
        let label = crate::telemetry::DestinationLabel {
            destination: config.name.clone(),
        };
        env.metrics
            .spool
            .recovered
            .get_or_create(&label)
            .inc_by(recovered.events);
        env.metrics
            .spool
            .redelivered
            .get_or_create(&label)
            .inc_by(recovered.redelivered);
        tracing::info!(destination = %config.name, events = recovered.events, redelivered = recovered.redelivered, "resuming from the spool");
    }
    let lease = env.lease.clone();
    let settle = Arc::new(Settle::new(metrics.clone(), cursor.clone()).with_lease(lease.clone()));
    let rate_limit = config
        .common
        .rate_limit
        .or_else(|| RateLimitConfig::vendor_default(config.kind.type_name()));
    let max_in_flight = config.common.max_in_flight(config.kind.type_name());
    let stack = Arc::new(Stack {
        name: config.name.clone(),
        config: config.clone(),
        planner,
        file,
        client: env.client.clone(),
        metrics: metrics.clone(),
        rate_limits: RateLimits::new(rate_limit),
        breaker: Breaker::new(config.common.breaker, metrics.breaker_state.clone()),
        dead_letter: DeadLetter::new(
            &config.name,
            env.dead_letter_path.clone(),
            metrics.clone(),
            secrets.clone(),
            settle.clone(),
        ),
        concurrency: match config.common.concurrency {
            ConcurrencySetting::Fixed(n) => Concurrency::fixed(n, metrics.concurrency.clone()),
            ConcurrencySetting::Adaptive => {
                Concurrency::adaptive(max_in_flight, metrics.concurrency.clone())
            }
        },
        dry_run,
        clock: env.clock.clone(),
        secrets,
        abandon: env.abandon.clone(),
        settle,
        cursor: cursor.clone(),
        metrics_root: env.metrics.clone(),
    });
    let window = if cursor.is_some() || lease.is_some() {
        // The backlog lives on disk: memory holds what the next requests will take.
        config
            .common
            .queue
            .max_events
            .min((2 * config.common.batch.max_events * max_in_flight).max(256))
    } else {
        config.common.queue.max_events
    };
    let (sender, receiver) = mpsc::channel(window);
    let (overflow, overflow_rx) = match (&cursor, config.common.queue.when_full) {
        (None, WhenFull::DeadLetter) => {
            let (tx, rx) = mpsc::channel(OVERFLOW_CAPACITY);
            (Some(tx), Some(rx))
        }
        _ => (None, None),
    };
    let mut generation = 0;
    let reader = cursor.as_ref().map(|cursor| {
        cursor.set_max_bytes(config.common.queue.max_bytes);
        generation = cursor.attach();
        tokio::spawn(queue::read_backlog(
            stack.clone(),
            cursor.clone(),
            sender.clone(),
            generation,
        ))
    });
    let reader = match (&lease, reader) {
        (Some(lease), None) => {
            generation = lease.attach();
            Some(tokio::spawn(queue::read_stream(
                stack.clone(),
                lease.clone(),
                sender.clone(),
                generation,
            )))
        }
        (_, reader) => reader,
    };
    let (handover, handover_rx) = oneshot::channel();
    let handle = tokio::spawn(run_worker(
        stack,
        receiver,
        overflow_rx,
        handover_rx,
        reader,
    ));
    Ok((
        Arc::new(Destination {
            name: config.name.clone(),
            queue: sender,
            overflow,
            metrics,
            critical: config.common.critical,
            skipped_types,
            cursor,
            generation,
            when_full: config.common.queue.when_full,
            lease,
        }),
        Worker { handle, handover },
    ))
}

/// Everything a destination's tasks share.
struct Stack {
    name: String,
    config: DestinationConfig,
    /// Privacy rules, skipped types and the translator or file encoding.
    planner: Planner,
    /// The file a `type = "file"` destination appends to.
    file: Option<append::AppendFile>,
    client: HttpClient,
    metrics: Arc<DestinationMetrics>,
    rate_limits: RateLimits,
    breaker: Breaker,
    dead_letter: DeadLetter,
    concurrency: Arc<Concurrency>,
    dry_run: Option<append::AppendFile>,
    clock: Clock,
    secrets: Vec<String>,
    abandon: watch::Receiver<bool>,
    settle: Arc<Settle>,
    cursor: Option<Arc<Cursor>>,
    /// The relay's metrics, for the spool's per-destination series.
    metrics_root: Arc<Metrics>,
}

impl Stack {
    fn skips(&self, event: &Event) -> bool {
        self.planner.skips(event).is_some()
    }

    fn when_full(&self) -> WhenFull {
        self.config.common.queue.when_full
    }

    fn cursor(&self) -> Option<&Arc<Cursor>> {
        self.cursor.as_ref()
    }

    /// Shutdown gave up on these: with the disk spool they stay there and are sent
    /// after the restart; with the memory spool they go to the dead-letter file.
    async fn give_up(&self, events: &[&Event], cause: &Cause) {
        if self.settle.spooled() {
            // Not acknowledged: the spool keeps them for the next start, where they
            // count as backlog again.
            self.metrics.in_flight.dec_by(events.len() as i64);
            self.metrics.queue_depth.inc_by(events.len() as i64);
            self.settle.give_back(events);
            tracing::info!(destination = %self.name, events = events.len(), "shutdown: left in the spool, sent after the restart");
            return;
        }
        self.dead_letter(events, cause).await;
    }

    async fn abandoned(&self) {
        let mut abandon = self.abandon.clone();
        let _ = abandon.wait_for(|abandon| *abandon).await;
    }

    async fn dead_letter(&self, events: &[&Event], cause: &Cause) {
        self.dead_letter.write(events, cause, (self.clock)()).await;
    }
}

async fn run_worker(
    stack: Arc<Stack>,
    mut queue: mpsc::Receiver<Arc<Event>>,
    overflow: Option<mpsc::Receiver<Arc<Event>>>,
    mut handover: oneshot::Receiver<Arc<Destination>>,
    reader: Option<JoinHandle<()>>,
) {
    let mut tasks = JoinSet::new();
    if let Some(overflow) = overflow {
        tasks.spawn(write_overflow(stack.clone(), overflow));
    }
    let mut pending: Vec<Arc<Event>> = Vec::new();
    let mut handover_open = true;
    let mut successor = None;
    loop {
        tokio::select! {
            biased;
            _ = stack.abandoned() => break,
            next = &mut handover, if handover_open => match next {
                Ok(destination) => {
                    successor = Some(destination);
                    break;
                }
                // No reload will replace this destination any more.
                Err(_) => handover_open = false,
            },
            // A new batch is taken only when a request slot is free: the queue, not
            // memory, holds the backlog, and a handover can come at any time. The slot
            // is taken once an event is there, so an idle worker holds none (a retry
            // waiting for a slot is not starved by a worker waiting for events).
            permit = async {
                if pending.is_empty() {
                    if let Some(first) = queue.recv().await {
                        pending.push(first);
                    }
                }
                if pending.is_empty() {
                    return None; // closed and drained
                }
                let permit = stack.concurrency.acquire().await;
                batch::next_batch(&mut queue, &stack.config.common.batch, &mut pending).await;
                Some(permit)
            } => {
                if pending.is_empty() {
                    break; // closed and drained
                }
                let batch = std::mem::take(&mut pending);
                let n = batch.len() as i64;
                stack.metrics.queue_depth.dec_by(n);
                stack.metrics.in_flight.inc_by(n);
                dispatch(&stack, batch, &mut tasks, permit).await;
            }
        }
    }
    // The window is being emptied: the reader must not fill it again.
    if let Some(reader) = reader {
        reader.abort();
    }
    match successor {
        // A reload rebuilt this destination: what is queued moves to the new one, until
        // the last request that saw the old routing is done. Requests in flight finish here.
        Some(next) => {
            for event in pending.drain(..) {
                next.requeue(event).await;
            }
            while let Some(event) = queue.recv().await {
                next.requeue(event).await;
            }
        }
        // Shutdown gave up waiting: what is still queued goes to the dead-letter file.
        None => {
            queue.close();
            while let Ok(event) = queue.try_recv() {
                pending.push(event);
            }
            if !pending.is_empty() {
                stack.metrics.queue_depth.dec_by(pending.len() as i64);
                stack.metrics.in_flight.inc_by(pending.len() as i64);
                let refs: Vec<&Event> = pending.iter().map(|e| e.as_ref()).collect();
                stack.give_up(&refs, &Cause::new(Reason::Shutdown)).await;
            }
        }
    }
    while let Some(result) = tasks.join_next().await {
        if let Err(error) = result {
            tracing::error!(destination = %stack.name, %error, "delivery task failed");
        }
    }
}

/// Events that found the queue full, written to the dead-letter file off the ingest path.
async fn write_overflow(stack: Arc<Stack>, mut overflow: mpsc::Receiver<Arc<Event>>) {
    let mut buffer = Vec::new();
    while overflow.recv_many(&mut buffer, 1000).await > 0 {
        let refs: Vec<&Event> = buffer.iter().map(|e| e.as_ref()).collect();
        stack
            .dead_letter(&refs, &Cause::new(Reason::QueueFull))
            .await;
        buffer.clear();
    }
}

/// Plans a batch (privacy, skipped types, translation) and starts its requests, each
/// under the concurrency limit; a file's lines are appended here.
async fn dispatch(
    stack: &Arc<Stack>,
    batch: Vec<Arc<Event>>,
    tasks: &mut JoinSet<()>,
    mut permit: Option<Permit>,
) {
    // Dead letters keep the events as received; the plan holds what the destination sees.
    let originals: Vec<&Event> = batch.iter().map(|e| e.as_ref()).collect();
    let plan = stack.planner.plan(&originals, (stack.clock)());
    settle_refusals(stack, &originals, &plan.left_out).await;
    for note in &plan.notes {
        stack.metrics.dropped_params(note.reason, note.count as u64);
    }
    let requests = match plan.output {
        Output::Requests(requests) => requests,
        Output::Lines { body, events } => {
            let written: Vec<&Event> = events.iter().map(|i| originals[*i]).collect();
            if written.is_empty() {
                return;
            }
            let Some(file) = &stack.file else {
                return;
            };
            match file.append(&body, false).await {
                Ok(()) => {
                    stack.metrics.sent.inc_by(written.len() as u64);
                    stack.settle.events(&written);
                }
                Err(error) => {
                    let mut cause = Cause::new(Reason::WriteFailed);
                    cause.error = Some(error.to_string());
                    cause.attempts = 1;
                    stack.dead_letter(&written, &cause).await;
                }
            }
            return;
        }
    };
    for request in requests {
        let held: Vec<Arc<Event>> = request.events.iter().map(|i| batch[*i].clone()).collect();
        let stack = stack.clone();
        // The first request uses the slot the worker waited for; others wait their turn.
        let permit = permit.take();
        tasks.spawn(async move { deliver(&stack, request, held, permit).await });
    }
    // Reap finished tasks so the set stays small.
    while tasks.try_join_next().is_some() {}
}

async fn settle_refusals(stack: &Stack, events: &[&Event], refused: &[Refusal]) {
    let mut causes = Vec::new();
    for refusal in refused {
        match refusal.disposition {
            Disposition::Dropped => {
                if refusal.reason == "privacy" {
                    tracing::warn!(destination = %stack.name, event_id = %events[refusal.index].event_id(), error = %refusal.detail, "event left out by the privacy rules");
                }
                stack.metrics.dropped(refusal.reason, 1);
                stack.settle.one(events[refusal.index]);
            }
            Disposition::Refused => {
                let mut cause = Cause::new(Reason::Refused(refusal.reason));
                cause.error = Some(refusal.detail.clone());
                causes.push((events[refusal.index], cause));
            }
        }
    }
    // One durable append for the whole batch's refusals, not one sync per event.
    let items: Vec<(&Event, &Cause)> = causes.iter().map(|(e, c)| (*e, c)).collect();
    stack.dead_letter.write_each(&items, (stack.clock)()).await;
}

/// One request through breaker, rate limit, timeout and retries, to a settled end:
/// delivered, or dead-lettered with why.
async fn deliver(
    stack: &Stack,
    request: VendorRequest,
    events: Vec<Arc<Event>>,
    permit: Option<Permit>,
) {
    let Some(translator) = stack.planner.translator() else {
        return;
    };
    let refs: Vec<&Event> = events.iter().map(|e| e.as_ref()).collect();
    let n = refs.len() as u64;
    if let Some(dry_run) = &stack.dry_run {
        let text = render_request(&request, &stack.secrets);
        match dry_run.append(text.as_bytes(), false).await {
            Ok(()) => {
                stack.metrics.sent.inc_by(n);
                stack.settle.events(&refs);
            }
            Err(error) => {
                let mut cause = Cause::new(Reason::DryRunWriteFailed);
                cause.error = Some(error.to_string());
                stack.dead_letter(&refs, &cause).await;
            }
        }
        return;
    }
    let permit = match permit {
        Some(permit) => Some(permit),
        None => tokio::select! {
            permit = stack.concurrency.acquire() => Some(permit),
            _ = stack.abandoned() => {
                stack.give_up(&refs, &Cause::new(Reason::Shutdown)).await;
                return;
            }
        },
    };
    // Held while the request is at the vendor; given back while a retry waits, so a
    // slot means a request in flight, not one sleeping out a `Retry-After`.
    let mut permit = permit;
    let seed = xxhash_rust::xxh3::xxh3_64(refs[0].event_id().as_bytes());
    let mut backoff = Backoff::new(stack.config.common.retry, seed);
    let started = Instant::now();
    // Kept as a time, formatted only if the events end up dead-lettered.
    let first_attempt_at = (stack.clock)();
    let mut attempt = 0u32;
    // Attempts that use up `max_attempts`: a 429 that names its wait (`Retry-After`,
    // `X-RateLimit-Reset`) is the vendor pacing us, not a failure; `max_elapsed_ms`
    // still bounds how long such a request is retried.
    let mut counted = 0u32;
    let shutdown = |attempts: u32, error: Option<&str>| Cause {
        attempts,
        error: error.map(str::to_string),
        ..Cause::new(Reason::Shutdown)
    };
    loop {
        let admitted = async {
            stack.breaker.admit().await;
            stack.rate_limits.admit(refs.len()).await;
        };
        tokio::select! {
            _ = admitted => {}
            _ = stack.abandoned() => {
                stack.give_up(&refs, &shutdown(attempt, None)).await;
                return;
            }
        }
        attempt += 1;
        stack.metrics.requests.inc();
        let sent_at = Instant::now();
        let outcome = tokio::select! {
            outcome = stack.client.send(&request, stack.config.common.timeout_ms) => outcome,
            _ = stack.abandoned() => {
                let error = "shutdown timed out while the request was in flight";
                stack.give_up(&refs, &shutdown(attempt, Some(error))).await;
                return;
            }
        };
        let round_trip = sent_at.elapsed();
        stack
            .metrics
            .request_duration
            .observe(round_trip.as_secs_f64());
        // A request that could not be built never left: no round trip, no vendor health.
        let unsent = matches!(&outcome, Err(error) if !error.retryable());
        if !unsent {
            stack.concurrency.record(match &outcome {
                Ok(response) if matches!(response.status.as_u16(), 429 | 503) => {
                    Signal::BackPressure
                }
                Err(SendError::Timeout(_)) => Signal::BackPressure,
                _ => Signal::Answered(round_trip),
            });
        }
        // Delivered is the common case: everything below it is the failure path.
        let (verdict, mut cause, vendor_wait) = match outcome {
            Ok(response) => {
                stack.metrics.response(response.status.as_str());
                let verdict = translator.classify(&response);
                if verdict == Verdict::Delivered {
                    stack.breaker.success();
                    for finding in translator.findings(&response) {
                        stack.metrics.findings.inc();
                        tracing::warn!(destination = %stack.name, %finding, "vendor reported a problem");
                    }
                    stack.metrics.sent.inc_by(n);
                    stack.settle.events(&refs);
                    return;
                }
                let cause = Cause {
                    status: Some(response.status.as_u16()),
                    error: stated_reason(&response),
                    response_excerpt: Some(excerpt(&response.body)),
                    ..Cause::new(Reason::RetriesExhausted)
                };
                let wait = retry::vendor_wait(&response.headers, (stack.clock)().into());
                (verdict, cause, wait)
            }
            Err(error) => {
                stack.metrics.response(error.label());
                let cause = Cause {
                    error: Some(error.to_string()),
                    ..Cause::new(Reason::RetriesExhausted)
                };
                (Verdict::Retry, cause, None)
            }
        };
        cause.attempts = attempt;
        cause.first_attempt_at = Some(format_rfc3339(first_attempt_at));
        let last_attempt_at = format_rfc3339((stack.clock)());
        let summary = match (cause.status, &cause.error) {
            (Some(status), Some(error)) => format!("HTTP {status}: {error}"),
            (Some(status), None) => format!("HTTP {status}"),
            (None, Some(error)) => error.clone(),
            (None, None) => "request failed".to_string(),
        };
        // Vendor text and error chains can quote the request: redacted as dead letters are.
        stack
            .metrics
            .note_error(redact(&summary, &stack.secrets), last_attempt_at.clone());
        cause.last_attempt_at = Some(last_attempt_at);
        let url = || redact(&request.url, &stack.secrets);
        if unsent {
            stack.breaker.release();
            tracing::warn!(destination = %stack.name, url = %url(), error = ?cause.error, "the request could not be built: not sent, not retried");
            cause.reason = Reason::InvalidRequest;
            stack.dead_letter(&refs, &cause).await;
            return;
        }
        if verdict == Verdict::Reject {
            // The vendor answered: it is up, the request is what is wrong.
            stack.breaker.success();
            tracing::warn!(destination = %stack.name, url = %url(), status = cause.status, error = ?cause.error, "vendor rejected the request: not retried");
            cause.reason = Reason::Rejected;
            stack.dead_letter(&refs, &cause).await;
            return;
        }
        stack.breaker.failure();
        if !(cause.status == Some(429) && vendor_wait.is_some()) {
            counted += 1;
        }
        match backoff.next_wait(counted, started.elapsed(), vendor_wait) {
            Some(wait) => {
                tracing::debug!(destination = %stack.name, url = %url(), attempt, wait_ms = wait.as_millis() as u64, status = cause.status, error = ?cause.error, "retrying");
                stack.metrics.retries.inc();
                drop(permit.take());
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stack.abandoned() => {
                        cause.reason = Reason::Shutdown;
                        stack.give_up(&refs, &cause).await;
                        return;
                    }
                }
                tokio::select! {
                    slot = stack.concurrency.acquire() => permit = Some(slot),
                    _ = stack.abandoned() => {
                        cause.reason = Reason::Shutdown;
                        stack.give_up(&refs, &cause).await;
                        return;
                    }
                }
            }
            None => {
                cause.reason = Reason::RetriesExhausted;
                stack.dead_letter(&refs, &cause).await;
                return;
            }
        }
    }
}

/// The start of a vendor's answer, for dead letters and logs.
fn excerpt(body: &[u8]) -> String {
    let cut = body.len().min(512);
    String::from_utf8_lossy(&body[..cut]).replace(['\n', '\r'], " ")
}
