//! A destination's worker: [`start`] builds what its tasks share ([`Stack`]) and runs
//! the loop that takes batches from the queue, hands them to [`super::dispatch`], and on
//! a reload or shutdown moves or gives up what is left.

use super::append;
use super::batch;
use super::breaker::Breaker;
use super::concurrency::Concurrency;
use super::dead_letter::{Cause, DeadLetter, Reason};
use super::destination::Destination;
use super::dispatch::dispatch;
use super::plan::Planner;
use super::queue::{self, Settle};
use super::rate_limit::RateLimits;
use super::DestinationConfig;
use super::{ConcurrencySetting, HttpClient, WhenFull};
use crate::dest::file::FileConfig;
use crate::event::{Event, EventType};
use crate::spool::{Cursor, Lease, Recovered};
use crate::telemetry::{DestinationMetrics, Metrics};
use crate::Clock;
use prometheus_client::metrics::counter::Counter;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

/// How many overflowing events may wait for the dead-letter writer before even they are
/// dropped (counted): ingest never waits on a disk.
const OVERFLOW_CAPACITY: usize = 1_000;

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
    pub hash_salt: Option<crate::dest::Secret>,
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
    Ok(start_planned(config, planner, env))
}

/// [`start`] with the planner already built.
fn start_planned(
    config: &DestinationConfig,
    planner: Planner,
    env: Environment,
) -> (Arc<Destination>, Worker) {
    let file = config
        .kind
        .config::<FileConfig>()
        .map(|file| append::AppendFile::new(file.path.clone()));
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
    let max_in_flight = config.common.max_in_flight();
    let stack = Arc::new(Stack {
        name: config.name.clone(),
        config: config.clone(),
        planner,
        file,
        client: env.client.clone(),
        metrics: metrics.clone(),
        rate_limits: RateLimits::new(config.common.rate_limit),
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
    (
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
    )
}

/// Everything a destination's tasks share.
pub(super) struct Stack {
    pub(super) name: String,
    pub(super) config: DestinationConfig,
    /// Privacy rules, skipped types and the translator or file encoding.
    pub(super) planner: Planner,
    /// The file a `type = "file"` destination appends to.
    pub(super) file: Option<append::AppendFile>,
    pub(super) client: HttpClient,
    pub(super) metrics: Arc<DestinationMetrics>,
    pub(super) rate_limits: RateLimits,
    pub(super) breaker: Breaker,
    pub(super) dead_letter: DeadLetter,
    pub(super) concurrency: Arc<Concurrency>,
    pub(super) dry_run: Option<append::AppendFile>,
    pub(super) clock: Clock,
    pub(super) secrets: Vec<String>,
    pub(super) abandon: watch::Receiver<bool>,
    pub(super) settle: Arc<Settle>,
    pub(super) cursor: Option<Arc<Cursor>>,
    /// The relay's metrics, for the spool's per-destination series.
    pub(super) metrics_root: Arc<Metrics>,
}

impl Stack {
    /// Why the destination would only drop `event` (unmapped, disabled), if it would.
    pub(super) fn skips(&self, event: &Event) -> Option<&'static str> {
        self.planner.skips(event)
    }

    pub(super) fn when_full(&self) -> WhenFull {
        self.config.common.queue.when_full
    }

    pub(super) fn cursor(&self) -> Option<&Arc<Cursor>> {
        self.cursor.as_ref()
    }

    /// Shutdown gave up on these: with the disk spool they stay there and are sent
    /// after the restart; with the memory spool they go to the dead-letter file.
    pub(super) async fn give_up(&self, events: &[&Event], cause: &Cause) {
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

    pub(super) fn is_abandoned(&self) -> bool {
        *self.abandon.borrow()
    }

    pub(super) async fn abandoned(&self) {
        let mut abandon = self.abandon.clone();
        let _ = abandon.wait_for(|abandon| *abandon).await;
    }

    pub(super) async fn dead_letter(&self, events: &[&Event], cause: &Cause) {
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
    // The window is being emptied: the reader must not fill it again. A JetStream
    // reader stops by itself once its lease is closed and gives back what its last pull
    // brought; it gets that long before it is cut short.
    if let Some(mut reader) = reader {
        if stack.settle.leased() {
            let _ = tokio::time::timeout(super::queue::READER_STOP, &mut reader).await;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use crate::deliver::TlsRoots;
    use crate::dest::{Translate, Translation, VendorResponse, Verdict};
    use std::path::Path;
    use time::OffsetDateTime;

    /// A translator whose requests the HTTP stack cannot build. No config makes one
    /// (the endpoints are checked at load), so a wrapper stands in for a translator
    /// with such a bug: the real one's requests, with a `<` in their URL.
    struct Unbuildable(Box<dyn Translate>);

    impl Translate for Unbuildable {
        fn translate(&self, events: &[&Event], sent_at: OffsetDateTime) -> Translation {
            let mut translation = self.0.translate(events, sent_at);
            for request in &mut translation.requests {
                request.url.push_str("/<batch>");
            }
            translation
        }

        fn classify(&self, response: &VendorResponse) -> Verdict {
            self.0.classify(response)
        }
    }

    fn event(n: u8) -> Arc<Event> {
        let json = format!(
            r#"{{"event_id":"0190f6d2-7c3a-7b1e-9a1e-3f2c8d1e4b{n:02x}","type":"playback.paused","timestamp":"2026-01-15T10:20:30.123Z","session":{{"id":"s1"}},"user":{{"anonymous_id":"a-1"}}}}"#
        );
        let raw: Box<serde_json::value::RawValue> = serde_json::from_str(&json).expect("json");
        Arc::new(Event::from_json(&raw, OffsetDateTime::UNIX_EPOCH).expect("valid"))
    }

    /// A request that could not be built never reached the vendor: it is dead-lettered
    /// as `invalid_request` after one attempt, not retried, and not held against the
    /// breaker, which stays closed however many such requests fail.
    #[tokio::test]
    async fn a_request_that_cannot_be_built_is_neither_retried_nor_held_against_the_breaker() {
        let vendor = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listener");
        let port = vendor.local_addr().expect("address").port();
        let dir = tempfile::tempdir().expect("tempdir");
        let toml = format!(
            r#"
[server]
listen = "127.0.0.1:0"
[destinations.vendor]
type = "segment"
write_key = "wk-0123456789"
endpoint = "http://127.0.0.1:{port}"
batch = {{ max_events = 1, max_wait_ms = 1 }}
breaker = {{ failure_threshold = 2, probe_interval_ms = 60000 }}
retry = {{ max_attempts = 6, initial_backoff_ms = 5, max_backoff_ms = 40 }}
[[routes]]
name = "all"
match = {{ types = ["*"] }}
to = ["vendor"]
"#
        );
        let config = config::load_str(&toml, Path::new("t.toml"), &|_| None).expect("config");
        let destination = &config.destinations["vendor"];
        let translator = destination.translator().expect("translator");
        let planner = Planner::with_translator("vendor", Box::new(Unbuildable(translator)));
        let metrics = Arc::new(Metrics::new());
        let (_abandon, abandon) = watch::channel(false);
        let dead_letters = dir.path().join("vendor.ndjson");
        let env = Environment {
            client: HttpClient::new(TlsRoots::Webpki, 1).expect("client"),
            metrics: metrics.clone(),
            clock: crate::system_clock(),
            abandon,
            dead_letter_path: dead_letters.clone(),
            dry_run_path: dir.path().join("vendor.http"),
            hash_salt: None,
            cursor: None,
            lease: None,
        };
        let (handle, worker) = start_planned(destination, planner, env);
        for n in 0..5 {
            assert!(handle.offer(event(n)));
        }
        let accounts = handle.metrics.clone();
        drop(handle);
        drop(worker.handover);
        worker.handle.await.expect("worker");
        assert_eq!(accounts.dead_lettered.get(), 5);
        assert_eq!(accounts.sent.get(), 0);
        assert_eq!(accounts.retries.get(), 0);
        assert_eq!(
            accounts.breaker_state.get(),
            0,
            "closed after five failures"
        );
        let text = std::fs::read_to_string(&dead_letters).expect("dead letters");
        let records: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).expect("record"))
            .collect();
        assert_eq!(records.len(), 5);
        for record in &records {
            assert_eq!(record["reason"], "invalid_request", "{record}");
            assert_eq!(record["attempts"], 1, "{record}");
            let error = record["error"].as_str().unwrap_or_default();
            assert!(error.starts_with("invalid request: "), "{record}");
        }
        // Nothing ever connected to the vendor.
        let connected = futures_util::FutureExt::now_or_never(vendor.accept());
        assert!(connected.is_none(), "a request reached the vendor");
    }
}
