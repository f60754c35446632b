//! The spool on NATS JetStream, for a fleet of relays. Ingest publishes each accepted
//! event once per destination it was routed to, on `<prefix>.<destination>.<bucket>`,
//! and answers `2xx` only after the server's publish acknowledgement (`Nats-Msg-Id`
//! makes a retry within `duplicate_window_ms` a no-op). Each destination has one
//! durable pull consumer on its subjects, shared by every relay that has the
//! destination: the relays split its work. A destination's reader pulls as many
//! events as its in-memory window has room for and keeps each one's acknowledger by
//! stream sequence, so settling an event (delivered, dead-lettered, dropped and
//! counted) acknowledges it. The stream keeps an event until every consumer with
//! interest in it has acknowledged it (interest retention).

use super::{Routed, SpoolConfig, SpoolError};
use crate::event::Event;
use crate::telemetry::{DestinationLabel, Metrics};
use async_nats::connection::State;
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::stream::{DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, AckKind};
use serde::{Deserialize, Deserializer};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::Notify;

/// Header carrying the time ingest accepted the event (unix nanoseconds).
const RECEIVED_AT: &str = "Playrelay-Received-At";
/// Header carrying the ingest source's name.
const SOURCE: &str = "Playrelay-Source";
/// Headers carrying the client's address and its send time, when ingest knew them.
const CLIENT_IP: &str = "Playrelay-Client-Ip";
const CLIENT_SENT_AT: &str = "Playrelay-Client-Sent-At";
/// Session buckets in the subject: what a deployment partitions on when one relay must
/// see all of a session's events (docs/scale-out.md).
pub const BUCKETS: u64 = 16;
/// How long past its own expiry a pull may go unanswered.
const PULL_GRACE: Duration = Duration::from_secs(3);
/// How often the consumer's pending counts are read for `/metrics`.
const INFO_EVERY: Duration = Duration::from_secs(2);

pub fn default_url() -> Vec<String> {
    vec!["nats://127.0.0.1:4222".into()]
}
pub fn default_stream() -> String {
    "PLAYER_EVENTS".into()
}
pub fn default_subject_prefix() -> String {
    "playrelay".into()
}
pub fn default_replicas() -> usize {
    1
}
pub fn default_max_age_ms() -> u64 {
    7 * 24 * 3600 * 1000
}
pub fn default_duplicate_window_ms() -> u64 {
    120_000
}
pub fn default_max_ack_pending() -> u32 {
    1_000
}
pub fn default_ack_wait_ms() -> u64 {
    30_000
}
pub fn default_publish_timeout_ms() -> u64 {
    5_000
}
pub fn default_connect_timeout_ms() -> u64 {
    5_000
}

/// `url = "nats://a:4222"` or `url = ["nats://a:4222", "nats://b:4222"]`.
pub fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    })
}

fn token_ok(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The `[spool]` fields of `backend = "jetstream"`: field and what is wrong.
pub fn check(config: &SpoolConfig) -> Result<(), (&'static str, String)> {
    if config.url.is_empty() {
        return Err(("url", "needs at least one nats:// server".into()));
    }
    for url in &config.url {
        let scheme_ok = ["nats://", "tls://", "ws://", "wss://"]
            .iter()
            .any(|s| url.starts_with(s));
        if !scheme_ok {
            return Err((
                "url",
                format!("{url:?}: expected nats://host:port (or tls://)"),
            ));
        }
    }
    if !token_ok(&config.stream) {
        return Err((
            "stream",
            "stream names use letters, digits, `_` and `-`".into(),
        ));
    }
    if config.subject_prefix.is_empty()
        || !config.subject_prefix.split('.').all(token_ok)
        || config.subject_prefix.len() > 200
    {
        return Err((
            "subject_prefix",
            "dot-separated tokens of letters, digits, `_` and `-` (no wildcards)".into(),
        ));
    }
    if ![1, 3, 5].contains(&config.replicas) {
        return Err(("replicas", "must be 1, 3 or 5".into()));
    }
    if config.user.is_some() != config.password.is_some() {
        return Err(("password", "user and password go together".into()));
    }
    let methods = [
        config.token.is_some(),
        config.user.is_some(),
        config.creds_file.is_some(),
        config.nkey_seed_file.is_some(),
    ];
    if methods.iter().filter(|m| **m).count() > 1 {
        return Err((
            "token",
            "choose one of token, user/password, creds_file, nkey_seed_file".into(),
        ));
    }
    if config.tls_cert_file.is_some() != config.tls_key_file.is_some() {
        return Err((
            "tls_key_file",
            "tls_cert_file and tls_key_file go together".into(),
        ));
    }
    if config.max_ack_pending == 0 {
        return Err(("max_ack_pending", "must be at least 1".into()));
    }
    if config.ack_wait_ms < 1_000 {
        return Err(("ack_wait_ms", "must be at least 1000".into()));
    }
    if config.duplicate_window_ms < 1_000 {
        return Err(("duplicate_window_ms", "must be at least 1000".into()));
    }
    if config.max_age_ms != 0 && config.duplicate_window_ms > config.max_age_ms {
        return Err((
            "duplicate_window_ms",
            "must not be longer than max_age_ms".into(),
        ));
    }
    if config.publish_timeout_ms == 0 || config.connect_timeout_ms == 0 {
        return Err(("publish_timeout_ms", "timeouts must be above 0".into()));
    }
    Ok(())
}

fn js_error(what: &str, error: impl std::fmt::Display) -> SpoolError {
    SpoolError::JetStream(format!("{what}: {error}"))
}

/// The shared stream, its consumers and the relay's connection to them.
pub struct JetStreamSpool {
    client: async_nats::Client,
    context: jetstream::Context,
    config: SpoolConfig,
    leases: Mutex<HashMap<String, Arc<Lease>>>,
    metrics: Arc<Metrics>,
    connected: Arc<AtomicBool>,
}

impl JetStreamSpool {
    /// Connects, checks that the server offers JetStream, and creates or updates the
    /// stream. A server that is unreachable or has no JetStream stops the start here.
    pub async fn open(
        config: &SpoolConfig,
        metrics: Arc<Metrics>,
    ) -> Result<JetStreamSpool, SpoolError> {
        let servers = config.url.join(", ");
        let mut options = async_nats::ConnectOptions::new()
            .name("playrelay")
            .connection_timeout(Duration::from_millis(config.connect_timeout_ms))
            .max_reconnects(None)
            .require_tls(config.tls_required);
        if let Some(token) = &config.token {
            options = options.token(token.expose().to_string());
        }
        if let (Some(user), Some(password)) = (&config.user, &config.password) {
            options = options.user_and_password(user.clone(), password.expose().to_string());
        }
        if let Some(path) = &config.creds_file {
            options = options
                .credentials_file(path)
                .await
                .map_err(|e| js_error(&format!("creds_file {}", path.display()), e))?;
        }
        if let Some(path) = &config.nkey_seed_file {
            let seed = std::fs::read_to_string(path)
                .map_err(|e| js_error(&format!("nkey_seed_file {}", path.display()), e))?;
            options = options.nkey(seed.trim().to_string());
        }
        if let Some(ca) = &config.tls_ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&config.tls_cert_file, &config.tls_key_file) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        let urls: Vec<async_nats::ServerAddr> = config
            .url
            .iter()
            .map(|u| u.parse())
            .collect::<Result<_, _>>()
            .map_err(|e| js_error(&format!("url {servers}"), e))?;
        let client = options
            .connect(urls.as_slice())
            .await
            .map_err(|e| js_error(&format!("cannot connect to {servers}"), e))?;
        let context = jetstream::ContextBuilder::new()
            .timeout(Duration::from_millis(config.publish_timeout_ms))
            .build(client.clone());
        check_jetstream(&client, &servers).await?;
        let stream = stream_config(config);
        context
            .get_or_create_stream(stream.clone())
            .await
            .map_err(|e| js_error(&format!("cannot create stream {}", config.stream), e))?;
        context
            .update_stream(stream)
            .await
            .map_err(|e| js_error(&format!("cannot update stream {}", config.stream), e))?;
        tracing::info!(servers = %servers, stream = %config.stream, replicas = config.replicas, "spool on NATS JetStream");
        let connected = Arc::new(AtomicBool::new(true));
        metrics.spool.nats_connected.set(1);
        tokio::spawn(watch_connection(
            client.clone(),
            connected.clone(),
            metrics.clone(),
        ));
        Ok(JetStreamSpool {
            client,
            context,
            config: config.clone(),
            leases: Mutex::new(HashMap::new()),
            metrics,
            connected,
        })
    }

    fn consumer_config(&self, name: &str) -> pull::Config {
        pull::Config {
            durable_name: Some(durable_name(name)),
            description: Some(format!("playrelay destination {name}")),
            filter_subject: format!("{}.{name}.>", self.config.subject_prefix),
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_millis(self.config.ack_wait_ms),
            max_deliver: -1,
            max_ack_pending: i64::from(self.config.max_ack_pending),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        }
    }

    /// The destination's consumer, created or updated on the server; the same lease
    /// across reloads, so a rebuilt worker acknowledges what the old one handed out.
    pub async fn lease(&self, name: &str) -> Result<Arc<Lease>, SpoolError> {
        let stream = self
            .context
            .get_stream(&self.config.stream)
            .await
            .map_err(|e| js_error(&format!("stream {}", self.config.stream), e))?;
        let consumer: PullConsumer = stream
            .create_consumer(self.consumer_config(name))
            .await
            .map_err(|e| js_error(&format!("consumer for destination {name}"), e))?;
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(lease) = leases.get(name) {
            return Ok(lease.clone());
        }
        let lease = Arc::new(Lease {
            name: name.to_string(),
            consumer,
            held: Mutex::new(HashMap::new()),
            client: self.client.clone(),
            generation: AtomicU64::new(0),
            closed_generation: AtomicU64::new(0),
            removed: AtomicBool::new(false),
            wake: Notify::new(),
            ack_wait: Duration::from_millis(self.config.ack_wait_ms),
            metrics: self.metrics.clone(),
            readers: AtomicU64::new(0),
        });
        tokio::spawn(keep_alive(Arc::downgrade(&lease)));
        leases.insert(name.to_string(), lease.clone());
        Ok(lease)
    }

    /// Publishes each event once per destination and waits for every acknowledgement.
    pub async fn append(&self, items: Vec<Routed>) -> Result<(), SpoolError> {
        if !self.connected.load(Ordering::Acquire) {
            return Err(SpoolError::Disconnected);
        }
        let mut acks = Vec::new();
        for item in &items {
            let event = &item.event;
            let bucket = xxhash_rust::xxh3::xxh3_64(event.body.session.id.as_bytes()) % BUCKETS;
            let received_at = event.received_at.unix_timestamp_nanos().to_string();
            let payload = bytes::Bytes::copy_from_slice(event.raw_json().as_bytes());
            for destination in &item.to {
                // Types the destination would only drop are counted here, never published.
                if destination.skip_counted(event) {
                    continue;
                }
                let headers = headers_for(event, &destination.name, &received_at);
                let subject = format!(
                    "{}.{}.{bucket:02}",
                    self.config.subject_prefix, destination.name
                );
                let ack = self
                    .context
                    .publish_with_headers(subject, headers, payload.clone())
                    .await
                    .map_err(|e| self.publish_failed(e))?;
                acks.push(ack);
            }
        }
        for ack in acks {
            let ack = ack.await.map_err(|e| self.publish_failed(e))?;
            self.metrics.spool.committed_events.inc();
            if ack.duplicate {
                self.metrics.spool.duplicates.inc();
            }
        }
        Ok(())
    }

    fn publish_failed(&self, error: impl std::fmt::Display) -> SpoolError {
        self.metrics.spool.write_errors.inc();
        if self.client.connection_state() != State::Connected {
            return SpoolError::Disconnected;
        }
        let text = error.to_string();
        // JetStream's "maximum bytes exceeded" (10077): the stream is at max_bytes.
        if text.contains("10077") || text.contains("maximum bytes exceeded") {
            return SpoolError::StreamFull(text);
        }
        js_error("publish not acknowledged", text)
    }

    pub fn unhealthy(&self) -> Option<String> {
        (!self.connected.load(Ordering::Acquire)).then(|| SpoolError::Disconnected.to_string())
    }

    /// A removed destination: once its last worker settled what it held, the events
    /// still in its consumer are returned (for the dead-letter file, reason `removed`)
    /// by `drain`, and the consumer is deleted by `delete`.
    pub fn retired(&self, name: &str) -> Option<Arc<Lease>> {
        let lease = self
            .leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)?;
        lease.removed.store(true, Ordering::Release);
        lease.wake.notify_waiters();
        Some(lease)
    }

    pub async fn delete_consumer(&self, name: &str) -> Result<(), SpoolError> {
        let stream = self
            .context
            .get_stream(&self.config.stream)
            .await
            .map_err(|e| js_error(&format!("stream {}", self.config.stream), e))?;
        stream
            .delete_consumer(&durable_name(name))
            .await
            .map_err(|e| js_error(&format!("deleting the consumer of {name}"), e))?;
        Ok(())
    }

    /// Sends what is buffered (acknowledgements, naks) before the process ends.
    pub async fn close(&self) {
        if let Err(error) = tokio::time::timeout(Duration::from_secs(2), self.client.flush()).await
        {
            tracing::warn!(%error, "NATS flush at shutdown timed out");
        }
    }
}

/// The account's JetStream info: no answer means the server runs without JetStream.
async fn check_jetstream(client: &async_nats::Client, servers: &str) -> Result<(), SpoolError> {
    let no_jetstream = || {
        SpoolError::JetStream(format!(
            "the NATS server at {servers} does not offer JetStream (run nats-server with -js, or enable JetStream for this account)"
        ))
    };
    let answer = client
        .request("$JS.API.INFO", bytes::Bytes::new())
        .await
        .map_err(|e| match e.kind() {
            async_nats::RequestErrorKind::NoResponders => no_jetstream(),
            _ => js_error(&format!("asking {servers} for JetStream"), e),
        })?;
    let info: serde_json::Value = serde_json::from_slice(&answer.payload)
        .map_err(|e| js_error("JetStream account info", e))?;
    if let Some(error) = info.get("error") {
        return Err(SpoolError::JetStream(format!(
            "the NATS server at {servers} refuses JetStream for this account: {error}"
        )));
    }
    Ok(())
}

pub fn durable_name(destination: &str) -> String {
    format!("playrelay-{destination}")
}

fn stream_config(config: &SpoolConfig) -> jetstream::stream::Config {
    jetstream::stream::Config {
        name: config.stream.clone(),
        description: Some("playrelay: accepted player events, per destination".into()),
        subjects: vec![format!("{}.>", config.subject_prefix)],
        retention: RetentionPolicy::Interest,
        discard: DiscardPolicy::New,
        storage: StorageType::File,
        num_replicas: config.replicas,
        max_bytes: i64::try_from(config.max_bytes).unwrap_or(i64::MAX),
        max_age: Duration::from_millis(config.max_age_ms),
        duplicate_window: Duration::from_millis(config.duplicate_window_ms),
        ..Default::default()
    }
}

/// Keeps `/readyz`, ingest and `/metrics` told whether the connection is up.
async fn watch_connection(
    client: async_nats::Client,
    connected: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
) {
    let mut was = true;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = client.connection_state() == State::Connected;
        if now != was {
            if now {
                tracing::info!("NATS connection restored");
            } else {
                tracing::error!("NATS connection lost: ingest answers 503 until it is back");
            }
            was = now;
        }
        connected.store(now, Ordering::Release);
        metrics.spool.nats_connected.set(i64::from(now));
    }
}

/// One destination's consumer as this relay holds it: the acknowledgers of the events
/// it handed out, by stream sequence.
pub struct Lease {
    pub name: String,
    consumer: PullConsumer,
    held: Mutex<HashMap<u64, async_nats::Subject>>,
    client: async_nats::Client,
    generation: AtomicU64,
    closed_generation: AtomicU64,
    removed: AtomicBool,
    wake: Notify,
    ack_wait: Duration,
    metrics: Arc<Metrics>,
    /// Readers still running (a stopped one may be handing back its last pull).
    readers: AtomicU64,
}

/// Counts a running reader while it lives.
pub struct ReaderGuard(Arc<Lease>);

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        self.0.readers.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a reader pulled.
pub enum Pulled {
    Event(Box<Event>),
    /// Unreadable: terminated on the server, counted by the caller.
    Corrupt(String),
}

impl Lease {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<u64, async_nats::Subject>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new reader for a (new or rebuilt) worker; the previous one stops.
    pub fn attach(&self) -> u64 {
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.wake.notify_waiters();
        generation
    }

    pub fn is_current(&self, generation: u64) -> bool {
        self.generation.load(Ordering::Acquire) == generation
            && self.closed_generation.load(Ordering::Acquire) != generation
            && !self.removed.load(Ordering::Acquire)
    }

    /// The worker of `generation` takes no more events (shutdown, reload).
    pub fn close(&self, generation: u64) {
        self.closed_generation.store(generation, Ordering::Release);
        self.wake.notify_waiters();
    }

    /// Resolves when `generation` is no longer current.
    pub async fn ended(&self, generation: u64) {
        loop {
            let notified = self.wake.notified();
            if !self.is_current(generation) {
                return;
            }
            notified.await;
        }
    }

    /// Held for as long as a reader runs.
    pub fn reader(self: &Arc<Self>) -> ReaderGuard {
        self.readers.fetch_add(1, Ordering::AcqRel);
        ReaderGuard(self.clone())
    }

    pub fn readers(&self) -> u64 {
        self.readers.load(Ordering::Acquire)
    }

    /// Pulls up to `max` events, waiting at most `wait`; each one is held until
    /// settled or given back.
    /// Without `wait`, takes only what the server has at once.
    pub async fn pull(
        &self,
        max: usize,
        wait: Option<Duration>,
    ) -> Result<Vec<Pulled>, SpoolError> {
        use futures_util::StreamExt;
        let batch = match wait {
            Some(wait) => {
                self.consumer
                    .batch()
                    .max_messages(max)
                    .expires(wait)
                    .messages()
                    .await
            }
            None => self.consumer.fetch().max_messages(max).messages().await,
        };
        let mut batch = batch.map_err(|e| js_error(&format!("pulling for {}", self.name), e))?;
        // A pull request lost with a connection (a node failing over) is never answered:
        // give up on it rather than wait for ever.
        let deadline = tokio::time::Instant::now() + wait.unwrap_or(Duration::ZERO) + PULL_GRACE;
        let mut out = Vec::new();
        // Held only once the pull is complete; a pull cancelled half-way gives back
        // what it had received, so another relay takes it at once, not after ack_wait.
        let mut replies = Unheld {
            replies: Vec::new(),
            client: self.client.clone(),
            name: self.name.clone(),
        };
        while let Ok(Some(message)) = tokio::time::timeout_at(deadline, batch.next()).await {
            let message = match message {
                Ok(message) => message,
                Err(error) => {
                    if out.is_empty() {
                        return Err(js_error(&format!("pulling for {}", self.name), error));
                    }
                    break;
                }
            };
            let (seq, delivered) = match message.info() {
                Ok(info) => (info.stream_sequence, info.delivered),
                Err(error) => {
                    tracing::warn!(destination = %self.name, %error, "a message without JetStream metadata: ignored");
                    continue;
                }
            };
            if delivered > 1 {
                self.metrics
                    .spool
                    .redelivered
                    .get_or_create(&DestinationLabel {
                        destination: self.name.clone(),
                    })
                    .inc();
            }
            let Some(reply) = message.message.reply.clone() else {
                continue;
            };
            match decode(&message.message) {
                Ok(mut event) => {
                    event.spool_seq = seq;
                    replies.replies.push((seq, reply));
                    out.push(Pulled::Event(Box::new(event)));
                }
                Err(error) => {
                    let client = self.client.clone();
                    tokio::spawn(async move {
                        let _ = client.publish(reply, AckKind::Term.into()).await;
                    });
                    out.push(Pulled::Corrupt(error));
                }
            }
        }
        self.held().extend(std::mem::take(&mut replies.replies));
        Ok(out)
    }

    fn take(&self, seqs: impl Iterator<Item = u64>) -> Vec<async_nats::Subject> {
        let mut held = self.held();
        seqs.filter_map(|seq| held.remove(&seq)).collect()
    }

    /// Delivered, dead-lettered or dropped and counted: the stream may forget them.
    pub fn settle(&self, seqs: impl Iterator<Item = u64>) {
        self.send(seqs, AckKind::Ack);
    }

    /// Not done here (shutdown, a reader that stopped): another relay takes them.
    pub fn give_back(&self, seqs: impl Iterator<Item = u64>) {
        self.send(seqs, AckKind::Nak(None));
    }

    fn send(&self, seqs: impl Iterator<Item = u64>, kind: AckKind) {
        let replies = self.take(seqs);
        if replies.is_empty() {
            return;
        }
        let name = self.name.clone();
        let client = self.client.clone();
        let body: bytes::Bytes = kind.into();
        tokio::spawn(async move {
            for reply in replies {
                if let Err(error) = client.publish(reply, body.clone()).await {
                    // Not acknowledged: the server sends it again after ack_wait.
                    tracing::warn!(destination = %name, %error, "acknowledgement not sent");
                }
            }
        });
    }

    /// What the consumer still has for the fleet: (not yet handed out, handed out and
    /// not acknowledged).
    pub async fn pending(&self) -> Result<(u64, u64), SpoolError> {
        let info = self
            .consumer
            .get_info()
            .await
            .map_err(|e| js_error(&format!("consumer of {}", self.name), e))?;
        Ok((info.num_pending, info.num_ack_pending as u64))
    }
}

/// Messages a pull has received but not yet handed to its caller: if the pull is
/// dropped half-way (its reader aborted at shutdown), they are given back.
struct Unheld {
    replies: Vec<(u64, async_nats::Subject)>,
    client: async_nats::Client,
    name: String,
}

impl Drop for Unheld {
    fn drop(&mut self) {
        if self.replies.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let replies = std::mem::take(&mut self.replies);
        let client = self.client.clone();
        let name = self.name.clone();
        runtime.spawn(async move {
            let body: bytes::Bytes = AckKind::Nak(None).into();
            for (_, reply) in replies {
                if let Err(error) = client.publish(reply, body.clone()).await {
                    tracing::warn!(destination = %name, %error, "a cut-short pull's event not given back: it returns after ack_wait");
                }
            }
        });
    }
}

/// The event a message carries, as ingest accepted it.
/// The relay's own fields of an event travel in headers; the payload is the JSON the
/// client sent, as the disk spool's record keeps it.
fn headers_for(event: &Event, destination: &str, received_at: &str) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "Nats-Msg-Id",
        format!("{}:{destination}", event.event_id()).as_str(),
    );
    headers.insert(RECEIVED_AT, received_at);
    if let Some(source) = &event.source {
        headers.insert(SOURCE, source.as_ref());
    }
    if let Some(ip) = event.client_ip {
        headers.insert(CLIENT_IP, ip.to_string().as_str());
    }
    if let Some(at) = event.client_sent_at {
        headers.insert(
            CLIENT_SENT_AT,
            at.unix_timestamp_nanos().to_string().as_str(),
        );
    }
    headers
}

fn decode(message: &async_nats::Message) -> Result<Event, String> {
    decode_parts(message.headers.as_ref(), &message.payload)
}

fn decode_parts(headers: Option<&async_nats::HeaderMap>, payload: &[u8]) -> Result<Event, String> {
    let header = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
    let time = |name: &str| {
        header(name)
            .and_then(|v| v.parse::<i128>().ok())
            .and_then(|ns| OffsetDateTime::from_unix_timestamp_nanos(ns).ok())
    };
    let received_at =
        time(RECEIVED_AT).ok_or_else(|| format!("missing or bad {RECEIVED_AT} header"))?;
    let text = std::str::from_utf8(payload).map_err(|_| "payload is not UTF-8".to_string())?;
    let mut event = Event::restore(text, received_at).map_err(|e| e.to_string())?;
    if let Some(source) = header(SOURCE) {
        event.source = Some(source.into());
    }
    event.client_ip = header(CLIENT_IP).and_then(|v| v.parse().ok());
    event.client_sent_at = time(CLIENT_SENT_AT);
    Ok(event)
}

/// While events are held: tells the server they are still being worked on (so a long
/// retry does not hand them to another relay), and reads the consumer's pending counts
/// for `/metrics`. Ends with the lease.
async fn keep_alive(lease: Weak<Lease>) {
    let mut last_info = tokio::time::Instant::now() - INFO_EVERY;
    loop {
        let every = match lease.upgrade() {
            Some(lease) => {
                let replies: Vec<async_nats::Subject> = lease.held().values().cloned().collect();
                let body: bytes::Bytes = AckKind::Progress.into();
                for reply in replies {
                    let _ = lease.client.publish(reply, body.clone()).await;
                }
                if last_info.elapsed() >= INFO_EVERY && !lease.removed.load(Ordering::Acquire) {
                    last_info = tokio::time::Instant::now();
                    if let Ok((pending, ack_pending)) = lease.pending().await {
                        let label = DestinationLabel {
                            destination: lease.name.clone(),
                        };
                        let spool = &lease.metrics.spool;
                        spool
                            .stream_pending
                            .get_or_create(&label)
                            .set(pending as i64);
                        spool
                            .stream_ack_pending
                            .get_or_create(&label)
                            .set(ack_pending as i64);
                    }
                }
                (lease.ack_wait / 3).min(INFO_EVERY)
            }
            None => return,
        };
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn the_relay_fields_of_an_event_survive_the_stream() {
        let text = include_str!("../../tests/fixtures/sessions.ndjson")
            .lines()
            .next()
            .expect("a fixture line");
        let mut event =
            Event::restore(text, datetime!(2026-03-01 12:00:00.123456789 UTC)).expect("valid");
        event.source = Some("web".into());
        event.client_ip = Some("2001:db8::7".parse().expect("ip"));
        event.client_sent_at = Some(datetime!(2026-03-01 11:59:59.5 UTC));
        let received_at = event.received_at.unix_timestamp_nanos().to_string();
        let headers = headers_for(&event, "ga4", &received_at);
        assert_eq!(
            headers.get("Nats-Msg-Id").map(|v| v.as_str().to_string()),
            Some(format!("{}:ga4", event.event_id()))
        );
        let back = decode_parts(Some(&headers), event.raw_json().as_bytes()).expect("decodes");
        assert_eq!(back.raw_json(), event.raw_json());
        assert_eq!(back.received_at, event.received_at);
        assert_eq!(back.source, event.source);
        assert_eq!(back.client_ip, event.client_ip);
        assert_eq!(back.client_sent_at, event.client_sent_at);

        event.client_ip = None;
        event.client_sent_at = None;
        let headers = headers_for(&event, "ga4", &received_at);
        let back = decode_parts(Some(&headers), event.raw_json().as_bytes()).expect("decodes");
        assert_eq!((back.client_ip, back.client_sent_at), (None, None));
        assert!(decode_parts(None, event.raw_json().as_bytes()).is_err());
    }
}
