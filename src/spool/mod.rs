//! The spool: what makes a `202` durable. Ingest hands the accepted, routed events to
//! the spool; a `2xx` goes out only once they are on disk (fsync'd), with one group
//! commit for every request that arrived while the previous commit ran. Each
//! destination then reads from its own cursor, so a slow one builds a backlog on disk,
//! never in memory, and never slows another; space is reclaimed once every
//! destination is past it. `backend = "memory"` keeps events in memory only, for those
//! who choose speed over surviving a crash.

mod committer;
pub mod cursor;
pub mod jetstream;
mod migrate;
mod recent;
pub mod record;
mod store;

pub use jetstream::{JetStreamSpool, Lease};

pub use cursor::Cursor;
pub use store::Scanned;

use crate::deliver::{Destination, WhenFull};
use crate::event::Event;
use crate::telemetry::{DestinationLabel, Metrics};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use store::{SavedCursor, Store};
use tokio::sync::oneshot;

/// `[spool]` in routes.toml.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    #[serde(default)]
    pub backend: Backend,
    /// Where the disk spool lives; one relay process per directory.
    #[serde(default = "default_dir")]
    pub dir: PathBuf,
    /// Disk budget: past it, ingest answers 503 until destinations catch up. With
    /// `backend = "jetstream"`, the stream's `max_bytes`.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Memory for the spool's pages (the newest records, the trees' inner pages).
    /// Larger: a backlog is read back from memory more often; smaller: a smaller relay.
    /// (`write_buffer_bytes`, its name while the spool ran on fjall, still works.)
    #[serde(default = "default_cache_bytes", alias = "write_buffer_bytes")]
    pub cache_bytes: u64,
    /// `backend = "jetstream"`: one or several `nats://` (or `tls://`) servers.
    #[serde(
        default = "jetstream::default_url",
        deserialize_with = "jetstream::one_or_many"
    )]
    pub url: Vec<String>,
    /// Auth, one of: a token; a user and password; a creds file (JWT + nkey seed); an
    /// nkey seed file.
    #[serde(default)]
    pub token: Option<crate::dest::Secret>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<crate::dest::Secret>,
    #[serde(default)]
    pub creds_file: Option<PathBuf>,
    #[serde(default)]
    pub nkey_seed_file: Option<PathBuf>,
    /// TLS: the CA that signed the servers' certificates (PEM), a client certificate
    /// and key for mutual TLS, and whether TLS is required.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
    #[serde(default)]
    pub tls_required: bool,
    /// The stream every relay of the fleet shares.
    #[serde(default = "jetstream::default_stream")]
    pub stream: String,
    /// Subjects are `<subject_prefix>.<destination>.<session bucket>`.
    #[serde(default = "jetstream::default_subject_prefix")]
    pub subject_prefix: String,
    /// Copies of each event in the NATS cluster (1, 3 or 5).
    #[serde(default = "jetstream::default_replicas")]
    pub replicas: usize,
    /// Events older than this leave the stream, delivered or not (0: no limit).
    #[serde(default = "jetstream::default_max_age_ms")]
    pub max_age_ms: u64,
    /// A retry of the same event (same `event_id`) within this window is stored once.
    #[serde(default = "jetstream::default_duplicate_window_ms")]
    pub duplicate_window_ms: u64,
    /// Fleet-wide cap on events handed out and not yet acknowledged, per destination.
    #[serde(default = "jetstream::default_max_ack_pending")]
    pub max_ack_pending: u32,
    /// An event handed to a relay that neither acknowledges it nor says it is still
    /// working on it within this time goes to another relay.
    #[serde(default = "jetstream::default_ack_wait_ms")]
    pub ack_wait_ms: u64,
    /// Ingest answers 503 when the server has not acknowledged within this time.
    #[serde(default = "jetstream::default_publish_timeout_ms")]
    pub publish_timeout_ms: u64,
    /// How long the first connection may take before the relay refuses to start.
    #[serde(default = "jetstream::default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// Accepted events are on disk before the `2xx`; they survive a crash.
    #[default]
    Disk,
    /// Accepted events live in memory: lost if the process dies.
    Memory,
    /// Accepted events are in a NATS JetStream stream (acknowledged by the server, and
    /// replicated when the stream has replicas) before the `2xx`; every relay with the
    /// same stream shares each destination's work.
    #[serde(rename = "jetstream")]
    JetStream,
}

fn default_dir() -> PathBuf {
    PathBuf::from("playrelay-out/spool")
}

fn default_max_bytes() -> u64 {
    1 << 30
}

fn default_cache_bytes() -> u64 {
    8 << 20
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            backend: Backend::default(),
            dir: default_dir(),
            max_bytes: default_max_bytes(),
            cache_bytes: default_cache_bytes(),
            url: jetstream::default_url(),
            token: None,
            user: None,
            password: None,
            creds_file: None,
            nkey_seed_file: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_required: false,
            stream: jetstream::default_stream(),
            subject_prefix: jetstream::default_subject_prefix(),
            replicas: jetstream::default_replicas(),
            max_age_ms: jetstream::default_max_age_ms(),
            duplicate_window_ms: jetstream::default_duplicate_window_ms(),
            max_ack_pending: jetstream::default_max_ack_pending(),
            ack_wait_ms: jetstream::default_ack_wait_ms(),
            publish_timeout_ms: jetstream::default_publish_timeout_ms(),
            connect_timeout_ms: jetstream::default_connect_timeout_ms(),
        }
    }
}

impl Backend {
    /// Why a destination's `queue.when_full` cannot work with this backend, if it cannot.
    pub fn refuses(self, when_full: WhenFull) -> Option<&'static str> {
        match self {
            Backend::Disk => (when_full == WhenFull::DropNewest)
                .then_some("drop_newest applies to the memory spool; with the disk spool the backlog sheds its oldest: use \"drop_oldest\", \"dead_letter\" or \"block\""),
            Backend::Memory => matches!(when_full, WhenFull::DropOldest | WhenFull::Block)
                .then_some("drop_oldest and block need the disk spool ([spool] backend = \"disk\"); the memory spool takes \"dead_letter\" or \"drop_newest\""),
            // The stream's max_bytes bounds the backlog: past it ingest answers 503.
            Backend::JetStream => None,
        }
    }
}

impl SpoolConfig {
    /// The field and what is wrong with it.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.max_bytes < 1 << 20 {
            return Err(("max_bytes", "must be at least 1048576 (1 MiB)".into()));
        }
        if self.cache_bytes < 4 << 20 {
            return Err(("cache_bytes", "must be at least 4194304 (4 MiB)".into()));
        }
        if self.backend == Backend::Disk && self.dir.as_os_str().is_empty() {
            return Err(("dir", "must not be empty".into()));
        }
        if self.backend == Backend::JetStream {
            jetstream::check(self)?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the spool in {0} is in use by another process (one relay per spool.dir)")]
    Locked(PathBuf),
    #[error("spool storage: {0}")]
    Engine(String),
    #[error("{0}")]
    Unwritable(String),
    #[error("the spool is full ({bytes} bytes held, spool.max_bytes = {max_bytes}): destinations are behind")]
    Full { bytes: u64, max_bytes: u64 },
    #[error("more than {0} destinations have used this spool")]
    TooManyDestinations(usize),
    #[error("the spool has stopped")]
    Closed,
    #[error("NATS JetStream: {0}")]
    JetStream(String),
    #[error("the JetStream stream is full (spool.max_bytes): destinations are behind ({0})")]
    StreamFull(String),
    #[error("the NATS connection is lost: events cannot be made durable")]
    Disconnected,
}

impl SpoolError {
    fn io(path: &Path, source: std::io::Error) -> SpoolError {
        SpoolError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    fn engine(error: impl Into<redb::Error>) -> SpoolError {
        SpoolError::Engine(error.into().to_string())
    }
}

/// An accepted event and the destinations routing chose for it.
pub struct Routed {
    pub event: Event,
    pub to: Vec<Arc<Destination>>,
}

/// The spool a relay runs with: on its own disk, or a JetStream stream shared by a fleet.
#[derive(Clone)]
pub enum Spool {
    Disk(Arc<DiskSpool>),
    JetStream(Arc<JetStreamSpool>),
}

impl Spool {
    /// Makes `items` durable; resolves once they are (or with why they are not).
    pub async fn append(&self, items: Vec<Routed>) -> Result<(), SpoolError> {
        match self {
            Spool::Disk(disk) => disk.append(items).await,
            Spool::JetStream(js) => js.append(items).await,
        }
    }

    /// Why the spool cannot take events right now, if it cannot.
    pub fn unhealthy(&self) -> Option<String> {
        match self {
            Spool::Disk(disk) => disk.unhealthy(),
            Spool::JetStream(js) => js.unhealthy(),
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Spool::Disk(_) => "disk",
            Spool::JetStream(_) => "jetstream",
        }
    }

    pub fn disk(&self) -> Option<&DiskSpool> {
        match self {
            Spool::Disk(disk) => Some(disk),
            Spool::JetStream(_) => None,
        }
    }

    pub fn jetstream(&self) -> Option<&Arc<JetStreamSpool>> {
        match self {
            Spool::Disk(_) => None,
            Spool::JetStream(js) => Some(js),
        }
    }

    /// The last step of shutdown.
    pub async fn close(&self) {
        match self {
            Spool::Disk(disk) => disk.close().await,
            Spool::JetStream(js) => js.close().await,
        }
    }
}

/// The disk spool. Cheap to share; the committer thread owns the writing.
pub struct DiskSpool {
    store: Arc<Store>,
    commands: Mutex<Option<std::sync::mpsc::Sender<committer::Command>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    shared: Arc<Shared>,
}

/// What ingest, the committer and the destinations share.
struct Shared {
    cursors: Mutex<Registry>,
    next_seq: AtomicU64,
    /// Bytes of records held (committed and not yet reclaimed), and how many.
    bytes: AtomicU64,
    records: AtomicU64,
    max_bytes: u64,
    /// The last write error, until a commit succeeds again.
    failure: Mutex<Option<String>>,
    metrics: Arc<Metrics>,
    clock: crate::Clock,
}

#[derive(Default)]
struct Registry {
    cursors: HashMap<String, Arc<Cursor>>,
    ids: HashMap<String, u16>,
    /// What each recovered cursor was still owed at start: (events, bytes, redelivered).
    recovered: HashMap<String, (u64, u64, u64)>,
}

/// What a destination takes over from the spool at start.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Recovered {
    pub events: u64,
    pub bytes: u64,
    pub redelivered: u64,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.cursors.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn failure_text(&self) -> String {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| "the spool cannot write".into())
    }

    fn set_failure(&self, failure: Option<String>) {
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = failure;
    }
}

impl DiskSpool {
    /// Opens the spool, finds what each destination is still owed, and starts the
    /// committer.
    pub fn open(
        config: &SpoolConfig,
        metrics: Arc<Metrics>,
        clock: crate::Clock,
    ) -> Result<DiskSpool, SpoolError> {
        let (store, aside) = Store::open(&config.dir, config.cache_bytes)?;
        if let Some(aside) = aside {
            metrics.spool.corrupt_records.inc();
            tracing::error!(aside = %aside.display(), "the previous spool was set aside");
        }
        if store.was_repaired() {
            metrics.spool.repairs.inc();
            tracing::warn!(dir = %config.dir.display(), "the spool was not closed cleanly: checked, and back at its last complete commit (what that commit's 2xx covered is all there)");
        }
        let store = Arc::new(store);
        let head = store.head()?;
        let mut registry = Registry::default();
        for (name, id) in store.ids()? {
            registry.ids.insert(name, id);
        }
        let mut saved = Vec::new();
        for name in store.cursor_names()? {
            let Some(cursor) = store.saved_cursor(&name)? else {
                continue;
            };
            let Some(id) = registry.ids.get(&name).copied() else {
                continue;
            };
            saved.push((name, id, cursor));
        }
        let (bytes, records, first) = recover(&store, head, &saved, &mut registry, &metrics)?;
        for (name, id, position) in saved {
            let cursor = Arc::new(Cursor::new(
                &name,
                id,
                store.clone(),
                position.position,
                true,
            ));
            if let Some((_, backlog, _)) = registry.recovered.get(&name) {
                cursor.add_backlog(*backlog);
            }
            registry.cursors.insert(name, cursor);
        }
        metrics.spool.bytes.set(bytes as i64);
        let shared = Arc::new(Shared {
            cursors: Mutex::new(registry),
            next_seq: AtomicU64::new(head),
            bytes: AtomicU64::new(bytes),
            records: AtomicU64::new(records),
            max_bytes: config.max_bytes,
            failure: Mutex::new(None),
            metrics,
            clock,
        });
        let (commands, receiver) = std::sync::mpsc::channel();
        let thread = committer::spawn(store.clone(), shared.clone(), receiver, first)
            .map_err(|e| SpoolError::io(&config.dir, e))?;
        tracing::info!(dir = %config.dir.display(), head, bytes, "spool open");
        Ok(DiskSpool {
            store,
            commands: Mutex::new(Some(commands)),
            thread: Mutex::new(Some(thread)),
            shared,
        })
    }

    /// The cursor of destination `name`: its saved one, or a new one at the head.
    pub fn cursor(&self, name: &str, max_bytes: u64) -> Result<Arc<Cursor>, SpoolError> {
        let mut registry = self.shared.lock();
        if let Some(cursor) = registry.cursors.get(name) {
            cursor.set_max_bytes(max_bytes);
            return Ok(cursor.clone());
        }
        let id = match registry.ids.get(name) {
            Some(id) => *id,
            None => {
                let next = registry
                    .ids
                    .values()
                    .max()
                    .map_or(Some(0), |m| m.checked_add(1));
                let Some(id) = next else {
                    return Err(SpoolError::TooManyDestinations(u16::MAX as usize));
                };
                let mut batch = self.store.batch()?;
                batch.save_id(name, id);
                batch.commit()?;
                registry.ids.insert(name.to_string(), id);
                id
            }
        };
        let head = self.shared.next_seq.load(Ordering::Acquire);
        let cursor = Arc::new(Cursor::new(name, id, self.store.clone(), head, false));
        cursor.set_max_bytes(max_bytes);
        registry.cursors.insert(name.to_string(), cursor.clone());
        Ok(cursor)
    }

    /// What destination `name` was still owed when the spool opened (once).
    pub fn take_recovered(&self, name: &str) -> Recovered {
        let mut registry = self.shared.lock();
        match registry.recovered.remove(name) {
            Some((events, bytes, redelivered)) => Recovered {
                events,
                bytes,
                redelivered,
            },
            None => Recovered::default(),
        }
    }

    /// Names of destinations with a cursor.
    pub fn cursor_names(&self) -> Vec<String> {
        self.shared.lock().cursors.keys().cloned().collect()
    }

    /// A destination is gone: its backlog on disk, returned for dead-lettering, no
    /// longer holds space, and its cursor is forgotten.
    pub fn retire(&self, name: &str) -> Result<Vec<Event>, SpoolError> {
        let Some(cursor) = self.shared.lock().cursors.get(name).cloned() else {
            return Ok(Vec::new());
        };
        cursor.mark_removed();
        // Registered until its backlog is read: its position keeps the records it is
        // owed from being reclaimed while they are read.
        let owed = self.owed_to(&cursor);
        self.shared.lock().cursors.remove(name);
        let owed = owed?;
        let mut batch = self.store.batch()?;
        batch.forget_cursor(name);
        batch.commit()?;
        self.shared
            .metrics
            .spool
            .backlog_bytes
            .get_or_create(&DestinationLabel {
                destination: name.to_string(),
            })
            .set(0);
        Ok(owed)
    }

    /// A removed destination's unread backlog, read from disk.
    fn owed_to(&self, cursor: &Cursor) -> Result<Vec<Event>, SpoolError> {
        // What was handed out is the old worker's to settle; the rest is owed.
        let mut from = cursor.unread_from();
        let mut owed = Vec::new();
        loop {
            let records = self.store.scan(from, 1024)?;
            let Some(last) = records.last() else { break };
            from = last.seq + 1;
            for record in &records {
                match record.header() {
                    Ok(header) if header.routes_to(cursor.id) => match header.event() {
                        Ok(mut event) => {
                            event.spool_seq = record.seq;
                            owed.push(event);
                        }
                        Err(error) => self.corrupt(record.seq, &error),
                    },
                    Ok(_) => {}
                    Err(error) => self.corrupt(record.seq, &error),
                }
            }
        }
        Ok(owed)
    }

    pub fn corrupt(&self, seq: u64, error: &dyn std::fmt::Display) {
        self.shared.metrics.spool.corrupt_records.inc();
        tracing::error!(seq, %error, "spool record is corrupt: skipped");
    }

    /// Makes `items` durable, then hands them to their destinations. Resolves once
    /// they are on disk (or with why they are not).
    pub async fn append(&self, items: Vec<Routed>) -> Result<(), SpoolError> {
        let held = self.shared.bytes.load(Ordering::Relaxed);
        if held >= self.shared.max_bytes {
            return Err(SpoolError::Full {
                bytes: held,
                max_bytes: self.shared.max_bytes,
            });
        }
        let (reply, answer) = oneshot::channel();
        {
            let commands = self.commands.lock().unwrap_or_else(|p| p.into_inner());
            let Some(commands) = commands.as_ref() else {
                return Err(SpoolError::Closed);
            };
            commands
                .send(committer::Command::Append { items, reply })
                .map_err(|_| SpoolError::Closed)?;
        }
        answer.await.map_err(|_| SpoolError::Closed)?
    }

    /// Why the spool cannot take events right now, if it cannot.
    pub fn unhealthy(&self) -> Option<String> {
        if let Some(failure) = self
            .shared
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Some(failure);
        }
        let held = self.shared.bytes.load(Ordering::Relaxed);
        (held >= self.shared.max_bytes).then(|| {
            SpoolError::Full {
                bytes: held,
                max_bytes: self.shared.max_bytes,
            }
            .to_string()
        })
    }

    /// Saves every cursor and stops the committer: the last step of shutdown.
    pub async fn close(&self) {
        let sender = self
            .commands
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        drop(sender);
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            let joined = tokio::task::spawn_blocking(move || thread.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                tracing::error!("the spool committer ended with a panic");
            }
        }
    }
}

/// Counts what each saved cursor is still owed: one pass over the records from the
/// lowest cursor. Returns the bytes held and the first record's position.
fn recover(
    store: &Store,
    head: u64,
    saved: &[(String, u16, SavedCursor)],
    registry: &mut Registry,
    metrics: &Metrics,
) -> Result<(u64, u64, u64), SpoolError> {
    let mut bytes = 0u64;
    let mut count = 0u64;
    let mut first = head;
    let mut from = 0u64;
    loop {
        let records = store.scan(from, 4096)?;
        let Some(last) = records.last() else { break };
        from = last.seq + 1;
        for record in &records {
            first = first.min(record.seq);
            let size = record.size();
            bytes += size;
            count += 1;
            let header = match record.header() {
                Ok(header) => header,
                Err(error) => {
                    metrics.spool.corrupt_records.inc();
                    tracing::error!(seq = record.seq, %error, "spool record is corrupt: skipped");
                    continue;
                }
            };
            for (name, id, cursor) in saved {
                if record.seq >= cursor.position && header.routes_to(*id) {
                    let owed = registry.recovered.entry(name.clone()).or_default();
                    owed.0 += 1;
                    owed.1 += size;
                    if record.seq <= cursor.handed_through {
                        owed.2 += 1;
                    }
                }
            }
        }
    }
    Ok((bytes, count, first))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each backend sheds load its own way; `dead_letter` works with all of them.
    #[test]
    fn each_backend_refuses_the_when_full_it_cannot_honour() {
        use WhenFull::{Block, DeadLetter, DropNewest, DropOldest};
        let refused = |backend: Backend| -> Vec<WhenFull> {
            [DeadLetter, DropNewest, DropOldest, Block]
                .into_iter()
                .filter(|w| backend.refuses(*w).is_some())
                .collect()
        };
        assert_eq!(refused(Backend::Disk), [DropNewest]);
        assert_eq!(refused(Backend::Memory), [DropOldest, Block]);
        assert_eq!(refused(Backend::JetStream), []);
    }
}
