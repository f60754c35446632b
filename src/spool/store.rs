//! The spool's storage: one fjall database with the events (key: position, big-endian)
//! and a small `meta` keyspace (destination ids, cursors). fjall keeps its journal and
//! tables checksummed and recovers a torn journal tail at open; our records carry
//! their own checksum too, so a bad one is set aside, never a reason to stop.

use super::record;
use super::SpoolError;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

const EVENTS: &str = "events";
const META: &str = "meta";
const ID_PREFIX: &[u8] = b"id/";
const CURSOR_PREFIX: &[u8] = b"cursor/";

pub struct Store {
    dir: PathBuf,
    /// `None` between closing a failed database and opening it again.
    inner: RwLock<Option<Arc<Inner>>>,
}

struct Inner {
    db: Database,
    events: Keyspace,
    meta: Keyspace,
}

/// One record read back from disk.
pub struct Scanned {
    pub seq: u64,
    pub bytes: fjall::UserValue,
}

impl Scanned {
    pub fn header(&self) -> Result<record::Header<'_>, record::RecordError> {
        record::decode(&self.bytes)
    }
}

/// What a cursor left on disk: its position and the highest position it handed over.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SavedCursor {
    pub position: u64,
    pub handed_through: u64,
}

fn key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

fn seq_of(key: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = key.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

impl Store {
    /// Opens (or creates) the spool in `dir`. A spool that cannot be opened is moved
    /// aside, said loudly, and a fresh one started: a corrupt file must never keep the
    /// relay from starting (and so from taking events) again and again.
    pub fn open(dir: &Path) -> Result<(Store, Option<PathBuf>), SpoolError> {
        std::fs::create_dir_all(dir).map_err(|e| SpoolError::io(dir, e))?;
        match Store::open_in(dir) {
            Ok(store) => Ok((store, None)),
            Err(error @ (SpoolError::Locked(_) | SpoolError::Io { .. })) => Err(error),
            Err(error) => {
                let aside = aside_name(dir);
                tracing::error!(dir = %dir.display(), aside = %aside.display(), %error, "the spool cannot be opened: moving it aside and starting an empty one; its events can be inspected there");
                std::fs::rename(dir, &aside).map_err(|e| SpoolError::io(dir, e))?;
                std::fs::create_dir_all(dir).map_err(|e| SpoolError::io(dir, e))?;
                Ok((Store::open_in(dir)?, Some(aside)))
            }
        }
    }

    fn open_in(dir: &Path) -> Result<Store, SpoolError> {
        Ok(Store {
            dir: dir.to_path_buf(),
            inner: RwLock::new(Some(Arc::new(Store::open_inner(dir)?))),
        })
    }

    fn inner(&self) -> Result<Arc<Inner>, SpoolError> {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| SpoolError::Engine("the spool is being reopened".into()))
    }

    /// After a failed write fjall refuses every later one (it cannot know what reached
    /// the disk): close the database and open it again, which replays its journal.
    /// Fails (to be tried again later) while the disk is still unwell.
    pub fn reopen(&self) -> Result<(), SpoolError> {
        let mut guard = self.inner.write().unwrap_or_else(|p| p.into_inner());
        *guard = None;
        *guard = Some(Arc::new(Store::open_inner(&self.dir)?));
        Ok(())
    }

    fn open_inner(dir: &Path) -> Result<Inner, SpoolError> {
        // Small memtables and cache: the spool is a queue read soon after it is
        // written, and the relay's memory must stay flat however large the backlog.
        // (fjall marks the write-buffer cap deprecated, "todo", with no replacement yet.)
        #[allow(deprecated)]
        let db = Database::builder(dir)
            .cache_size(8 << 20)
            .max_write_buffer_size(Some(12 << 20))
            .open()
            .map_err(|e| classify_open_error(dir, e))?;
        // Records live milliseconds to minutes: compressing them costs CPU on every
        // flush for disk the budget does not count anyway.
        let options = || {
            KeyspaceCreateOptions::default()
                .max_memtable_size(4 << 20)
                .data_block_compression_policy(fjall::config::CompressionPolicy::disabled())
        };
        let events = db.keyspace(EVENTS, options).map_err(SpoolError::engine)?;
        let meta = db
            .keyspace(META, KeyspaceCreateOptions::default)
            .map_err(SpoolError::engine)?;
        Ok(Inner { db, events, meta })
    }

    /// The position after the last record (1 for an empty spool: 0 means "none").
    pub fn head(&self) -> Result<u64, SpoolError> {
        match self.inner()?.events.last_key_value() {
            Some(guard) => {
                let key = guard.key().map_err(SpoolError::engine)?;
                Ok(seq_of(&key).map_or(1, |s| s + 1))
            }
            None => Ok(1),
        }
    }

    /// Up to `limit` records from position `from` on.
    pub fn scan(&self, from: u64, limit: usize) -> Result<Vec<Scanned>, SpoolError> {
        let mut out = Vec::new();
        let inner = self.inner()?;
        for guard in inner.events.range(key(from)..).take(limit) {
            let (k, v) = guard.into_inner().map_err(SpoolError::engine)?;
            if let Some(seq) = seq_of(&k) {
                out.push(Scanned { seq, bytes: v });
            }
        }
        Ok(out)
    }

    pub fn ids(&self) -> Result<Vec<(String, u16)>, SpoolError> {
        let mut out = Vec::new();
        let inner = self.inner()?;
        for guard in inner.meta.prefix(ID_PREFIX) {
            let (k, v) = guard.into_inner().map_err(SpoolError::engine)?;
            let name = String::from_utf8_lossy(&k[ID_PREFIX.len()..]).into_owned();
            if let Ok(bytes) = <[u8; 2]>::try_from(&v[..]) {
                out.push((name, u16::from_be_bytes(bytes)));
            }
        }
        Ok(out)
    }

    pub fn saved_cursor(&self, name: &str) -> Result<Option<SavedCursor>, SpoolError> {
        let value = self
            .inner()?
            .meta
            .get(cursor_key(name))
            .map_err(SpoolError::engine)?;
        Ok(value.and_then(|v| {
            let bytes: [u8; 16] = v[..].try_into().ok()?;
            let mut position = [0u8; 8];
            let mut handed = [0u8; 8];
            position.copy_from_slice(&bytes[..8]);
            handed.copy_from_slice(&bytes[8..]);
            Some(SavedCursor {
                position: u64::from_be_bytes(position),
                handed_through: u64::from_be_bytes(handed),
            })
        }))
    }

    /// Names with a saved cursor.
    pub fn cursor_names(&self) -> Result<Vec<String>, SpoolError> {
        let mut out = Vec::new();
        let inner = self.inner()?;
        for guard in inner.meta.prefix(CURSOR_PREFIX) {
            let k = guard.key().map_err(SpoolError::engine)?;
            out.push(String::from_utf8_lossy(&k[CURSOR_PREFIX.len()..]).into_owned());
        }
        Ok(out)
    }

    pub fn batch(&self) -> Result<Batch, SpoolError> {
        let inner = self.inner()?;
        Ok(Batch {
            batch: inner.db.batch(),
            inner,
        })
    }

    /// Makes every committed batch durable: one fdatasync for the whole group.
    pub fn sync(&self) -> Result<(), SpoolError> {
        self.inner()?
            .db
            .persist(PersistMode::SyncData)
            .map_err(SpoolError::engine)
    }

    /// Positions below `below`, oldest first, at most `limit`.
    pub fn keys_below(&self, from: u64, below: u64, limit: usize) -> Result<Vec<u64>, SpoolError> {
        let mut out = Vec::new();
        if from >= below {
            return Ok(out);
        }
        let inner = self.inner()?;
        for guard in inner.events.range(key(from)..key(below)).take(limit) {
            let k = guard.key().map_err(SpoolError::engine)?;
            if let Some(seq) = seq_of(&k) {
                out.push(seq);
            }
        }
        Ok(out)
    }

    pub fn disk_bytes(&self) -> u64 {
        self.inner()
            .ok()
            .and_then(|inner| inner.db.disk_space().ok())
            .unwrap_or(0)
    }
}

pub struct Batch {
    inner: Arc<Inner>,
    batch: fjall::OwnedWriteBatch,
}

impl Batch {
    pub fn insert_event(&mut self, seq: u64, bytes: Vec<u8>) {
        self.batch.insert(&self.inner.events, key(seq), bytes);
    }

    pub fn remove_event(&mut self, seq: u64) {
        self.batch.remove(&self.inner.events, key(seq));
    }

    pub fn save_id(&mut self, name: &str, id: u16) {
        let mut k = ID_PREFIX.to_vec();
        k.extend_from_slice(name.as_bytes());
        self.batch
            .insert(&self.inner.meta, k, id.to_be_bytes().to_vec());
    }

    pub fn save_cursor(&mut self, name: &str, saved: SavedCursor) {
        let mut v = Vec::with_capacity(16);
        v.extend_from_slice(&saved.position.to_be_bytes());
        v.extend_from_slice(&saved.handed_through.to_be_bytes());
        self.batch.insert(&self.inner.meta, cursor_key(name), v);
    }

    pub fn forget_cursor(&mut self, name: &str) {
        self.batch.remove(&self.inner.meta, cursor_key(name));
    }

    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    pub fn commit(self) -> Result<(), SpoolError> {
        self.batch.commit().map_err(SpoolError::engine)
    }
}

fn cursor_key(name: &str) -> Vec<u8> {
    let mut k = CURSOR_PREFIX.to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

/// Locked and plain I/O errors stop the start (another relay has the spool, or the disk
/// is unwell: moving the spool aside would hide events); anything else is corruption.
fn classify_open_error(dir: &Path, error: fjall::Error) -> SpoolError {
    match error {
        fjall::Error::Locked => SpoolError::Locked(dir.to_path_buf()),
        fjall::Error::Io(e) => SpoolError::io(dir, e),
        other => SpoolError::engine(other),
    }
}

fn aside_name(dir: &Path) -> PathBuf {
    let mut n = 1;
    loop {
        let candidate = PathBuf::from(format!("{}.corrupt-{n}", dir.display()));
        if !candidate.exists() {
            return candidate;
        }
        n += 1;
    }
}
