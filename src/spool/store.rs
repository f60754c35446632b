//! The spool's storage: one fjall database with the events in chunks (key: the position
//! of a chunk's first record, big-endian) and a small `meta` keyspace (destination ids,
//! cursors). fjall keeps its journal and tables checksummed and recovers a torn journal
//! tail at open; our records carry their own checksum too, so a bad one is set aside,
//! never a reason to stop.
//!
//! A chunk holds the consecutive records of one group commit, up to about
//! [`CHUNK_TARGET_BYTES`]: the engine's per-key work (memtable insert, journal entry,
//! index and filter entries at flush, a tombstone and its compaction at reclaim) is then
//! paid per chunk rather than per event, which is most of what a spool costs.
//!
//! `chunk = format (1) | count (u32) | count × (length (u32) | record)`

use super::record;
use super::SpoolError;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Chunks of records (see the module's comment).
const CHUNKS: &str = "chunks";
/// One record per key: the layout before chunks, read once at open and moved into chunks.
const LEGACY_EVENTS: &str = "events";
const META: &str = "meta";
const CHUNK_FORMAT: u8 = 1;
const CHUNK_HEAD: usize = 1 + 4;
/// A chunk is sealed once it holds this much; a request's records never straddle two.
pub const CHUNK_TARGET_BYTES: usize = 64 << 10;
const ID_PREFIX: &[u8] = b"id/";
const CURSOR_PREFIX: &[u8] = b"cursor/";

pub struct Store {
    dir: PathBuf,
    write_buffer_bytes: u64,
    /// `None` between closing a failed database and opening it again.
    inner: RwLock<Option<Arc<Inner>>>,
}

struct Inner {
    db: Database,
    chunks: Keyspace,
    meta: Keyspace,
}

/// One record read back from disk: a view into its chunk, which it shares.
pub struct Scanned {
    pub seq: u64,
    chunk: fjall::UserValue,
    range: std::ops::Range<usize>,
}

impl Scanned {
    pub fn header(&self) -> Result<record::Header<'_>, record::RecordError> {
        record::decode(&self.chunk[self.range.clone()])
    }

    /// The record's size, as the budget counts it.
    pub fn size(&self) -> u64 {
        self.range.len() as u64
    }
}

/// The records of a chunk being written: one group commit's, in position order.
pub struct ChunkBuilder {
    first: u64,
    count: u32,
    bytes: Vec<u8>,
}

/// Where a chunk stood before a request's records: to take them back out.
#[derive(Clone, Copy)]
pub struct ChunkMark {
    count: u32,
    len: usize,
}

impl ChunkBuilder {
    pub fn new(first: u64) -> ChunkBuilder {
        let mut bytes = Vec::with_capacity(CHUNK_TARGET_BYTES + (16 << 10));
        bytes.push(CHUNK_FORMAT);
        bytes.extend_from_slice(&[0; 4]);
        ChunkBuilder {
            first,
            count: 0,
            bytes,
        }
    }

    /// The position the next record gets.
    pub fn next_seq(&self) -> u64 {
        self.first + u64::from(self.count)
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn is_full(&self) -> bool {
        self.bytes.len() >= CHUNK_TARGET_BYTES
    }

    pub fn mark(&self) -> ChunkMark {
        ChunkMark {
            count: self.count,
            len: self.bytes.len(),
        }
    }

    pub fn rollback(&mut self, mark: ChunkMark) {
        self.count = mark.count;
        self.bytes.truncate(mark.len);
    }

    /// Appends the record `write` produces; returns its size.
    pub fn push(&mut self, write: impl FnOnce(&mut Vec<u8>)) -> u64 {
        let at = self.bytes.len();
        self.bytes.extend_from_slice(&[0; 4]);
        write(&mut self.bytes);
        let len = self.bytes.len() - at - 4;
        // A record is one event's JSON plus a small header: far below 4 GiB.
        let len32 = u32::try_from(len).unwrap_or(u32::MAX);
        self.bytes[at..at + 4].copy_from_slice(&len32.to_be_bytes());
        self.count += 1;
        len as u64
    }

    fn finish(mut self) -> (u64, Vec<u8>) {
        self.bytes[1..CHUNK_HEAD].copy_from_slice(&self.count.to_be_bytes());
        (self.first, self.bytes)
    }
}

/// How many records a chunk says it holds (0 for one too short to say).
fn chunk_count(chunk: &[u8]) -> u64 {
    match chunk.get(1..CHUNK_HEAD) {
        Some(count) if chunk[0] == CHUNK_FORMAT => {
            u64::from(u32::from_be_bytes([count[0], count[1], count[2], count[3]]))
        }
        _ => 0,
    }
}

/// The records of the chunk at `first`, each as a view into it. Records whose framing
/// is broken come back with an empty view, so that decoding them fails and they are
/// counted as corrupt where they are read, like a record whose checksum fails.
fn split_chunk(
    first: u64,
    chunk: &fjall::UserValue,
    from: u64,
    out: &mut Vec<Scanned>,
    limit: usize,
) {
    let count = chunk_count(chunk);
    let mut at = CHUNK_HEAD;
    let mut broken = chunk.first() != Some(&CHUNK_FORMAT);
    for i in 0..count.max(u64::from(broken)) {
        let seq = first + i;
        let range = if broken {
            0..0
        } else {
            match chunk.get(at..at + 4) {
                Some(len) => {
                    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
                    let start = at + 4;
                    if start + len <= chunk.len() {
                        at = start + len;
                        start..start + len
                    } else {
                        broken = true;
                        0..0
                    }
                }
                None => {
                    broken = true;
                    0..0
                }
            }
        };
        if seq < from {
            continue;
        }
        if out.len() >= limit {
            return;
        }
        out.push(Scanned {
            seq,
            chunk: chunk.clone(),
            range,
        });
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
    pub fn open(
        dir: &Path,
        write_buffer_bytes: u64,
    ) -> Result<(Store, Option<PathBuf>), SpoolError> {
        std::fs::create_dir_all(dir).map_err(|e| SpoolError::io(dir, e))?;
        match Store::open_in(dir, write_buffer_bytes) {
            Ok(store) => Ok((store, None)),
            Err(error @ (SpoolError::Locked(_) | SpoolError::Io { .. })) => Err(error),
            Err(error) => {
                let aside = aside_name(dir);
                tracing::error!(dir = %dir.display(), aside = %aside.display(), %error, "the spool cannot be opened: moving it aside and starting an empty one; its events can be inspected there");
                std::fs::rename(dir, &aside).map_err(|e| SpoolError::io(dir, e))?;
                std::fs::create_dir_all(dir).map_err(|e| SpoolError::io(dir, e))?;
                Ok((Store::open_in(dir, write_buffer_bytes)?, Some(aside)))
            }
        }
    }

    fn open_in(dir: &Path, write_buffer_bytes: u64) -> Result<Store, SpoolError> {
        Ok(Store {
            dir: dir.to_path_buf(),
            write_buffer_bytes,
            inner: RwLock::new(Some(Arc::new(Store::open_inner(dir, write_buffer_bytes)?))),
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
        *guard = Some(Arc::new(Store::open_inner(
            &self.dir,
            self.write_buffer_bytes,
        )?));
        Ok(())
    }

    fn open_inner(dir: &Path, write_buffer_bytes: u64) -> Result<Inner, SpoolError> {
        // Memory is bounded by the write buffer (memtables) and a small cache, however
        // large the backlog; two memtables fit the buffer, so one fills while the other
        // is written out. (fjall marks the write-buffer cap deprecated, "todo", with no
        // replacement yet.)
        #[allow(deprecated)]
        let db = Database::builder(dir)
            .cache_size(4 << 20)
            .max_write_buffer_size(Some(write_buffer_bytes))
            .open()
            .map_err(|e| classify_open_error(dir, e))?;
        // Records live milliseconds to minutes: compressing them costs CPU on every
        // flush for disk the budget does not count anyway.
        let options = || {
            KeyspaceCreateOptions::default()
                .max_memtable_size(write_buffer_bytes / 2)
                .data_block_compression_policy(fjall::config::CompressionPolicy::disabled())
        };
        let chunks = db.keyspace(CHUNKS, options).map_err(SpoolError::engine)?;
        let meta = db
            .keyspace(META, KeyspaceCreateOptions::default)
            .map_err(SpoolError::engine)?;
        let inner = Inner { db, chunks, meta };
        migrate_legacy(&inner)?;
        Ok(inner)
    }

    /// The position after the last record (1 for an empty spool: 0 means "none").
    pub fn head(&self) -> Result<u64, SpoolError> {
        match self.inner()?.chunks.last_key_value() {
            Some(guard) => {
                let (key, chunk) = guard.into_inner().map_err(SpoolError::engine)?;
                Ok(seq_of(&key).map_or(1, |s| s + chunk_count(&chunk).max(1)))
            }
            None => Ok(1),
        }
    }

    /// Up to `limit` records from position `from` on.
    pub fn scan(&self, from: u64, limit: usize) -> Result<Vec<Scanned>, SpoolError> {
        let mut out = Vec::new();
        let inner = self.inner()?;
        // The chunk that holds `from` starts at or before it.
        let start = match inner.chunks.range(..=key(from)).next_back() {
            Some(guard) => guard.key().map_err(SpoolError::engine)?.to_vec(),
            None => key(from).to_vec(),
        };
        for guard in inner.chunks.range(start..) {
            if out.len() >= limit {
                break;
            }
            let (k, chunk) = guard.into_inner().map_err(SpoolError::engine)?;
            if let Some(first) = seq_of(&k) {
                split_chunk(first, &chunk, from, &mut out, limit);
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

    /// Chunks wholly below `below` (every record in them is), oldest first, at most
    /// `limit`, as the range of positions each holds. `head` is where the last one ends.
    pub fn chunks_below(
        &self,
        from: u64,
        below: u64,
        head: u64,
        limit: usize,
    ) -> Result<Vec<std::ops::Range<u64>>, SpoolError> {
        let mut out = Vec::new();
        if from >= below {
            return Ok(out);
        }
        let inner = self.inner()?;
        // From the chunk that holds `from`, should `from` not be where one starts.
        let start = match inner.chunks.range(..=key(from)).next_back() {
            Some(guard) => guard.key().map_err(SpoolError::engine)?.to_vec(),
            None => key(from).to_vec(),
        };
        let mut starts = Vec::new();
        // One more than asked: a chunk ends where the next begins.
        for guard in inner.chunks.range(start..).take(limit + 1) {
            let k = guard.key().map_err(SpoolError::engine)?;
            match seq_of(&k) {
                Some(seq) if seq < below => starts.push(seq),
                Some(seq) => {
                    starts.push(seq);
                    break;
                }
                None => {}
            }
        }
        for pair in starts.windows(2) {
            if pair[1] <= below {
                out.push(pair[0]..pair[1]);
            }
        }
        if let Some(&last) = starts.last() {
            if last < below && head <= below && starts.len() <= limit {
                out.push(last..head);
            }
        }
        out.truncate(limit);
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
    pub fn insert_chunk(&mut self, chunk: ChunkBuilder) {
        if chunk.is_empty() {
            return;
        }
        let (first, bytes) = chunk.finish();
        self.batch.insert(&self.inner.chunks, key(first), bytes);
    }

    /// Deletes the chunk that starts at `first`.
    pub fn remove_chunk(&mut self, first: u64) {
        self.batch.remove(&self.inner.chunks, key(first));
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

/// A spool written before chunks keeps one record per key in `events`: each becomes a
/// chunk of one at its own position, in batches, and the old keyspace is deleted. Done
/// once, at open; a crash midway only means some records are moved again (the same
/// keys, the same values).
fn migrate_legacy(inner: &Inner) -> Result<(), SpoolError> {
    if !inner.db.keyspace_exists(LEGACY_EVENTS) {
        return Ok(());
    }
    let legacy = inner
        .db
        .keyspace(LEGACY_EVENTS, KeyspaceCreateOptions::default)
        .map_err(SpoolError::engine)?;
    let mut moved = 0u64;
    let mut batch = inner.db.batch();
    for guard in legacy.iter() {
        let (k, v) = guard.into_inner().map_err(SpoolError::engine)?;
        let Some(seq) = seq_of(&k) else { continue };
        let mut chunk = ChunkBuilder::new(seq);
        chunk.push(|out| out.extend_from_slice(&v));
        let (first, bytes) = chunk.finish();
        batch.insert(&inner.chunks, key(first), bytes);
        moved += 1;
        if batch.len() >= 4096 {
            batch.commit().map_err(SpoolError::engine)?;
            batch = inner.db.batch();
        }
    }
    batch.commit().map_err(SpoolError::engine)?;
    inner
        .db
        .persist(PersistMode::SyncData)
        .map_err(SpoolError::engine)?;
    inner
        .db
        .delete_keyspace(legacy)
        .map_err(SpoolError::engine)?;
    tracing::info!(records = moved, "spool records moved into chunks");
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64) -> Vec<u8> {
        let mut out = Vec::new();
        record::encode(&record::fixture_event(seq), &[seq as u16], &mut out);
        out
    }

    fn open(dir: &Path) -> Store {
        Store::open(dir, 4 << 20).expect("open").0
    }

    /// Writes chunks of the given sizes, one after another from position 1.
    fn write_chunks(store: &Store, sizes: &[u64]) {
        let mut batch = store.batch().expect("batch");
        let mut next = 1;
        for size in sizes {
            let mut chunk = ChunkBuilder::new(next);
            for seq in next..next + size {
                let bytes = record(seq);
                chunk.push(|out| out.extend_from_slice(&bytes));
            }
            next += size;
            batch.insert_chunk(chunk);
        }
        batch.commit().expect("commit");
    }

    #[test]
    fn records_are_read_back_one_by_one_from_any_position_inside_a_chunk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        write_chunks(&store, &[3, 1, 4]);
        assert_eq!(store.head().expect("head"), 9);
        let seqs = |from, limit| -> Vec<u64> {
            store
                .scan(from, limit)
                .expect("scan")
                .iter()
                .map(|r| r.seq)
                .collect()
        };
        assert_eq!(seqs(1, 100), (1..9).collect::<Vec<_>>());
        assert_eq!(
            seqs(2, 3),
            vec![2, 3, 4],
            "from inside the first chunk, across the second"
        );
        assert_eq!(seqs(6, 100), vec![6, 7, 8]);
        assert_eq!(seqs(9, 100), Vec::<u64>::new());
        for scanned in store.scan(1, 100).expect("scan") {
            assert_eq!(scanned.size(), record(scanned.seq).len() as u64);
            let header = scanned.header().expect("a whole record");
            assert!(
                header.routes_to(scanned.seq as u16),
                "its own bytes, not a neighbour's"
            );
        }
    }

    #[test]
    fn only_chunks_wholly_below_the_lowest_cursor_are_reclaimable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        write_chunks(&store, &[3, 1, 4]); // 1..4, 4..5, 5..9
        let head = store.head().expect("head");
        let below = |from, low, limit| store.chunks_below(from, low, head, limit).expect("list");
        assert_eq!(
            below(1, 3, 10),
            Vec::<std::ops::Range<u64>>::new(),
            "3 is inside the first"
        );
        assert_eq!(below(1, 4, 10), vec![1..4]);
        assert_eq!(
            below(1, 8, 10),
            vec![1..4, 4..5],
            "the last ends at the head"
        );
        assert_eq!(below(1, 9, 10), vec![1..4, 4..5, 5..9]);
        assert_eq!(below(1, 9, 2), vec![1..4, 4..5], "at most the limit");
        assert_eq!(
            below(2, 9, 10),
            vec![1..4, 4..5, 5..9],
            "from inside a chunk: that chunk too"
        );
    }

    #[test]
    fn a_chunk_with_broken_framing_gives_records_that_fail_to_decode_not_a_panic() {
        let mut chunk = ChunkBuilder::new(10);
        let good = record(10);
        chunk.push(|out| out.extend_from_slice(&good));
        chunk.push(|out| out.extend_from_slice(&record(11)));
        let (first, mut bytes) = chunk.finish();
        // Cut the second record short: its length now overruns the chunk.
        bytes.truncate(bytes.len() - 5);
        let value = fjall::UserValue::from(bytes);
        let mut out = Vec::new();
        split_chunk(first, &value, 0, &mut out, 100);
        assert_eq!(out.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![10, 11]);
        assert!(out[0].header().is_ok());
        assert!(out[1].header().is_err(), "the cut record is corrupt");
        let mut garbage = Vec::new();
        split_chunk(
            5,
            &fjall::UserValue::from(vec![9u8, 9, 9]),
            0,
            &mut garbage,
            100,
        );
        assert_eq!(
            garbage.len(),
            1,
            "an unknown chunk format is one corrupt record"
        );
        assert!(garbage[0].header().is_err());
    }

    #[test]
    fn a_spool_written_one_record_per_key_is_moved_into_chunks_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            // The layout before chunks: keyspace `events`, one record per position.
            let db = Database::builder(dir.path()).open().expect("open");
            let events = db
                .keyspace(LEGACY_EVENTS, KeyspaceCreateOptions::default)
                .expect("keyspace");
            for seq in [7u64, 8, 12] {
                events.insert(key(seq), record(seq)).expect("insert");
            }
            db.persist(PersistMode::SyncAll).expect("persist");
        }
        let store = open(dir.path());
        let scanned = store.scan(0, 100).expect("scan");
        assert_eq!(
            scanned.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![7, 8, 12]
        );
        for r in &scanned {
            assert!(r.header().expect("whole").routes_to(r.seq as u16));
        }
        assert_eq!(store.head().expect("head"), 13);
        drop(store);
        let again = open(dir.path());
        assert_eq!(again.scan(0, 100).expect("scan").len(), 3, "moved once");
    }
}
