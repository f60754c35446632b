//! The spool's storage: one redb database (`spool.redb` in the spool's directory) with
//! the events in chunks (key: the position of a chunk's first record) and a small `meta`
//! table (destination ids, cursors). redb is a copy-on-write B-tree: a commit never
//! overwrites what the previous one left, and its commit slots are checksummed, so a
//! crash mid-commit falls back to the last complete one at open. Our records carry
//! their own checksum too, so a bad one is set aside, never a reason to stop.
//!
//! A chunk holds consecutive records of one group commit, up to [`CHUNK_MAX_BYTES`]:
//! the engine's per-key work (tree insert, page writes, the deletion at reclaim) is then
//! paid per chunk rather than per event, which is most of what a spool costs.
//!
//! `chunk = format (1) | count (u32) | count × (length (u32) | record)`
//!
//! redb over fjall (both measured on this workload, `docs/spool.md`): with chunks it
//! writes 1.4× the events per second at a third of the CPU, and its commit latency has
//! no compaction tail (p99 2 ms against 28). A spool written by fjall is moved over at
//! open (`migrate.rs`).

use super::migrate;
use super::recent::Recent;
use super::record;
use super::SpoolError;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Chunks of records (see the module's comment).
pub(super) const CHUNKS: TableDefinition<u64, &[u8]> = TableDefinition::new("chunks");
pub(super) const META: TableDefinition<&[u8], &[u8]> = TableDefinition::new("meta");
/// The database file inside the spool's directory.
pub(super) const FILE: &str = "spool.redb";
const CHUNK_FORMAT: u8 = 1;
const CHUNK_HEAD: usize = 1 + 4;
/// The largest chunk: with its key and redb's leaf header (16 bytes) it fills one 64 KiB
/// page. redb gives a large value a page of its own, rounded up to a power of two, so a
/// chunk just over this would take (and write, checksum and read back) 128 KiB.
pub const CHUNK_MAX_BYTES: usize = (64 << 10) - LEAF_OVERHEAD;
/// redb's leaf holding one pair of a `u64` key and a `&[u8]` value: a 4-byte header, the
/// value's 4-byte end offset and the key.
const LEAF_OVERHEAD: usize = 4 + 4 + 8;
pub(super) const ID_PREFIX: &[u8] = b"id/";
const CURSOR_PREFIX: &[u8] = b"cursor/";

pub struct Store {
    dir: PathBuf,
    cache_bytes: u64,
    /// `None` between closing a failed database and opening it again.
    inner: RwLock<Option<Arc<Database>>>,
    /// The file was not closed cleanly: redb checked it and went back to its last
    /// complete commit.
    repaired: bool,
    /// The events committed last, for readers to take rather than parse again.
    recent: Recent,
}

/// One record read back from disk: a view into its chunk, which it shares.
pub struct Scanned {
    pub seq: u64,
    chunk: Arc<[u8]>,
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

/// The records of a chunk being written, in position order.
pub struct ChunkBuilder {
    first: u64,
    count: u32,
    bytes: Vec<u8>,
}

impl ChunkBuilder {
    pub fn new(first: u64) -> ChunkBuilder {
        // Room for the record that overflows it before it moves on: no reallocation.
        let mut bytes = Vec::with_capacity(CHUNK_MAX_BYTES + (16 << 10));
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

    /// Moves the last record out into a chunk of its own, which follows this one.
    fn split_last(&mut self, at: usize) -> ChunkBuilder {
        let mut next = ChunkBuilder::new(self.next_seq() - 1);
        next.bytes.extend_from_slice(&self.bytes[at..]);
        next.count = 1;
        self.bytes.truncate(at);
        self.count -= 1;
        next
    }

    fn rollback(&mut self, count: u32, len: usize) {
        self.count = count;
        self.bytes.truncate(len);
    }

    pub(super) fn finish(mut self) -> (u64, Vec<u8>) {
        self.bytes[1..CHUNK_HEAD].copy_from_slice(&self.count.to_be_bytes());
        (self.first, self.bytes)
    }
}

/// The records of one group commit, cut into chunks of at most [`CHUNK_MAX_BYTES`] (a
/// record larger than that gets a chunk of its own). A request's records may straddle
/// two chunks: what matters to the engine is that each fills its page.
pub struct GroupChunks {
    sealed: Vec<ChunkBuilder>,
    open: ChunkBuilder,
}

/// Where a group stood before a request's records: to take them back out.
#[derive(Clone, Copy)]
pub struct GroupMark {
    sealed: usize,
    count: u32,
    len: usize,
}

impl GroupChunks {
    pub fn new(first: u64) -> GroupChunks {
        GroupChunks {
            sealed: Vec::new(),
            open: ChunkBuilder::new(first),
        }
    }

    /// The position the next record gets.
    pub fn next_seq(&self) -> u64 {
        self.open.next_seq()
    }

    /// Appends the record `write` produces; returns its size.
    pub fn push(&mut self, write: impl FnOnce(&mut Vec<u8>)) -> u64 {
        let at = self.open.bytes.len();
        let size = self.open.push(write);
        if self.open.bytes.len() > CHUNK_MAX_BYTES && self.open.count > 1 {
            let next = self.open.split_last(at);
            self.sealed.push(std::mem::replace(&mut self.open, next));
        }
        size
    }

    pub fn mark(&self) -> GroupMark {
        GroupMark {
            sealed: self.sealed.len(),
            count: self.open.count,
            len: self.open.bytes.len(),
        }
    }

    pub fn rollback(&mut self, mark: GroupMark) {
        if self.sealed.len() > mark.sealed {
            // The chunk that was open at the mark has been sealed since: reopen it.
            let mut later = self.sealed.split_off(mark.sealed);
            self.open = later.swap_remove(0);
        }
        self.open.rollback(mark.count, mark.len);
    }

    /// The chunks, in position order (none when the group holds no record).
    pub fn into_chunks(self) -> impl Iterator<Item = ChunkBuilder> {
        self.sealed
            .into_iter()
            .chain(std::iter::once(self.open))
            .filter(|chunk| !chunk.is_empty())
    }
}

/// How many records a chunk says it holds (0 for one too short to say).
pub(super) fn chunk_count(chunk: &[u8]) -> u64 {
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
fn split_chunk(first: u64, chunk: &Arc<[u8]>, from: u64, out: &mut Vec<Scanned>, limit: usize) {
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

impl Store {
    /// Opens (or creates) the spool in `dir`. A spool that cannot be opened is moved
    /// aside, said loudly, and a fresh one started: a corrupt file must never keep the
    /// relay from starting (and so from taking events) again and again.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<(Store, Option<PathBuf>), SpoolError> {
        std::fs::create_dir_all(dir).map_err(|e| SpoolError::io(dir, e))?;
        match Store::open_in(dir, cache_bytes) {
            Ok(store) => Ok((store, None)),
            Err(error @ (SpoolError::Locked(_) | SpoolError::Io { .. })) => Err(error),
            Err(error) => {
                let aside = aside_name(dir);
                tracing::error!(dir = %dir.display(), aside = %aside.display(), %error, "the spool cannot be opened: moving it aside and starting an empty one; its events can be inspected there");
                std::fs::rename(dir, &aside).map_err(|e| SpoolError::io(dir, e))?;
                std::fs::create_dir_all(dir).map_err(|e| SpoolError::io(dir, e))?;
                Ok((Store::open_in(dir, cache_bytes)?, Some(aside)))
            }
        }
    }

    fn open_in(dir: &Path, cache_bytes: u64) -> Result<Store, SpoolError> {
        migrate::from_fjall(dir, cache_bytes)?;
        let (db, repaired) = open_database(&dir.join(FILE), cache_bytes)?;
        Ok(Store {
            dir: dir.to_path_buf(),
            cache_bytes,
            inner: RwLock::new(Some(Arc::new(db))),
            repaired,
            recent: Recent::default(),
        })
    }

    pub fn recent(&self) -> &Recent {
        &self.recent
    }

    /// Whether the spool had not been closed cleanly (a crash, a power loss) and was
    /// brought back to its last complete commit at open.
    pub fn was_repaired(&self) -> bool {
        self.repaired
    }

    fn db(&self) -> Result<Arc<Database>, SpoolError> {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| SpoolError::Engine("the spool is being reopened".into()))
    }

    /// After a failed write redb refuses every later one (it cannot know what reached
    /// the disk): close the database and open it again, which goes back to the last
    /// complete commit. Fails (to be tried again later) while the disk is still unwell,
    /// or while a reader still holds the old handle.
    pub fn reopen(&self) -> Result<(), SpoolError> {
        let mut guard = self.inner.write().unwrap_or_else(|p| p.into_inner());
        *guard = None;
        let (db, _) = open_database(&self.dir.join(FILE), self.cache_bytes)?;
        *guard = Some(Arc::new(db));
        Ok(())
    }

    /// The position after the last record (1 for an empty spool: 0 means "none").
    pub fn head(&self) -> Result<u64, SpoolError> {
        let db = self.db()?;
        let tx = db.begin_read().map_err(SpoolError::engine)?;
        let chunks = tx.open_table(CHUNKS).map_err(SpoolError::engine)?;
        let last = chunks.last().map_err(SpoolError::engine)?;
        Ok(last.map_or(1, |(key, chunk)| {
            key.value() + chunk_count(chunk.value()).max(1)
        }))
    }

    /// Up to `limit` records from position `from` on.
    pub fn scan(&self, from: u64, limit: usize) -> Result<Vec<Scanned>, SpoolError> {
        let mut out = Vec::new();
        let db = self.db()?;
        let tx = db.begin_read().map_err(SpoolError::engine)?;
        let chunks = tx.open_table(CHUNKS).map_err(SpoolError::engine)?;
        let start = chunk_holding(&chunks, from)?;
        for entry in chunks.range(start..).map_err(SpoolError::engine)? {
            if out.len() >= limit {
                break;
            }
            let (first, chunk) = entry.map_err(SpoolError::engine)?;
            // One copy per chunk, shared by its records: the read transaction ends here.
            let chunk: Arc<[u8]> = Arc::from(chunk.value());
            split_chunk(first.value(), &chunk, from, &mut out, limit);
        }
        Ok(out)
    }

    pub fn ids(&self) -> Result<Vec<(String, u16)>, SpoolError> {
        let mut out = Vec::new();
        for (k, v) in self.meta_with_prefix(ID_PREFIX)? {
            let name = String::from_utf8_lossy(&k[ID_PREFIX.len()..]).into_owned();
            if let Ok(bytes) = <[u8; 2]>::try_from(&v[..]) {
                out.push((name, u16::from_be_bytes(bytes)));
            }
        }
        Ok(out)
    }

    pub fn saved_cursor(&self, name: &str) -> Result<Option<SavedCursor>, SpoolError> {
        let db = self.db()?;
        let tx = db.begin_read().map_err(SpoolError::engine)?;
        let meta = tx.open_table(META).map_err(SpoolError::engine)?;
        let value = meta
            .get(cursor_key(name).as_slice())
            .map_err(SpoolError::engine)?;
        Ok(value.and_then(|v| {
            let bytes: [u8; 16] = v.value().try_into().ok()?;
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
        Ok(self
            .meta_with_prefix(CURSOR_PREFIX)?
            .into_iter()
            .map(|(k, _)| String::from_utf8_lossy(&k[CURSOR_PREFIX.len()..]).into_owned())
            .collect())
    }

    fn meta_with_prefix(&self, prefix: &[u8]) -> Result<Vec<MetaEntry>, SpoolError> {
        let db = self.db()?;
        let tx = db.begin_read().map_err(SpoolError::engine)?;
        let meta = tx.open_table(META).map_err(SpoolError::engine)?;
        let mut out = Vec::new();
        for entry in meta.range(prefix..).map_err(SpoolError::engine)? {
            let (k, v) = entry.map_err(SpoolError::engine)?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push((k.value().to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }

    pub fn batch(&self) -> Result<Batch, SpoolError> {
        Ok(Batch {
            db: self.db()?,
            ops: Vec::new(),
        })
    }

    /// Makes every commit so far durable: one fsync.
    pub fn sync(&self) -> Result<(), SpoolError> {
        self.batch()?.commit_durable()
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
        let db = self.db()?;
        let tx = db.begin_read().map_err(SpoolError::engine)?;
        let chunks = tx.open_table(CHUNKS).map_err(SpoolError::engine)?;
        let start = chunk_holding(&chunks, from)?;
        let mut starts = Vec::new();
        // One more than asked: a chunk ends where the next begins.
        for entry in chunks
            .range(start..)
            .map_err(SpoolError::engine)?
            .take(limit + 1)
        {
            let seq = entry.map_err(SpoolError::engine)?.0.value();
            starts.push(seq);
            if seq >= below {
                break;
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

    /// The database file's size: what the spool takes on disk, freed pages included
    /// (redb reuses them, and gives the end of the file back as it frees up).
    pub fn disk_bytes(&self) -> u64 {
        std::fs::metadata(self.dir.join(FILE)).map_or(0, |m| m.len())
    }
}

/// Where the chunk that holds position `from` starts (at or before it; `from` itself
/// when no chunk starts that early).
fn chunk_holding(chunks: &redb::ReadOnlyTable<u64, &[u8]>, from: u64) -> Result<u64, SpoolError> {
    match chunks
        .range(..=from)
        .map_err(SpoolError::engine)?
        .next_back()
    {
        Some(entry) => Ok(entry.map_err(SpoolError::engine)?.0.value()),
        None => Ok(from),
    }
}

/// A key of the `meta` table and its value.
type MetaEntry = (Vec<u8>, Vec<u8>);

enum Op {
    PutChunk(u64, Vec<u8>),
    RemoveChunk(u64),
    PutMeta(Vec<u8>, Vec<u8>),
    RemoveMeta(Vec<u8>),
}

/// Writes gathered in memory and applied in one transaction: the write lock is held
/// only while they are applied, not while a group is being encoded.
pub struct Batch {
    db: Arc<Database>,
    ops: Vec<Op>,
}

impl Batch {
    pub fn insert_chunk(&mut self, chunk: ChunkBuilder) {
        if chunk.is_empty() {
            return;
        }
        let (first, bytes) = chunk.finish();
        self.ops.push(Op::PutChunk(first, bytes));
    }

    /// Deletes the chunk that starts at `first`.
    pub fn remove_chunk(&mut self, first: u64) {
        self.ops.push(Op::RemoveChunk(first));
    }

    pub fn save_id(&mut self, name: &str, id: u16) {
        let mut k = ID_PREFIX.to_vec();
        k.extend_from_slice(name.as_bytes());
        self.ops.push(Op::PutMeta(k, id.to_be_bytes().to_vec()));
    }

    pub fn save_cursor(&mut self, name: &str, saved: SavedCursor) {
        let mut v = Vec::with_capacity(16);
        v.extend_from_slice(&saved.position.to_be_bytes());
        v.extend_from_slice(&saved.handed_through.to_be_bytes());
        self.ops.push(Op::PutMeta(cursor_key(name), v));
    }

    pub fn forget_cursor(&mut self, name: &str) {
        self.ops.push(Op::RemoveMeta(cursor_key(name)));
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Applies the writes; they reach the disk with the next durable commit (a process
    /// that dies before it loses them: use this only for what a crash may lose, such as
    /// a cursor's progress, which only means a redelivery).
    pub fn commit(self) -> Result<(), SpoolError> {
        self.apply(Durability::None)
    }

    /// Applies the writes and makes them, and every commit before, durable: one fsync.
    pub fn commit_durable(self) -> Result<(), SpoolError> {
        self.apply(Durability::Immediate)
    }

    fn apply(self, durability: Durability) -> Result<(), SpoolError> {
        let mut tx = self.db.begin_write().map_err(SpoolError::engine)?;
        tx.set_durability(durability).map_err(SpoolError::engine)?;
        {
            let mut chunks = tx.open_table(CHUNKS).map_err(SpoolError::engine)?;
            let mut meta = tx.open_table(META).map_err(SpoolError::engine)?;
            for op in &self.ops {
                match op {
                    Op::PutChunk(first, bytes) => chunks.insert(first, bytes.as_slice()).map(drop),
                    Op::RemoveChunk(first) => chunks.remove(first).map(drop),
                    Op::PutMeta(k, v) => meta.insert(k.as_slice(), v.as_slice()).map(drop),
                    Op::RemoveMeta(k) => meta.remove(k.as_slice()).map(drop),
                }
                .map_err(SpoolError::engine)?;
            }
        }
        tx.commit().map_err(SpoolError::engine)
    }
}

fn cursor_key(name: &str) -> Vec<u8> {
    let mut k = CURSOR_PREFIX.to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

/// Opens (or creates) the database file. Every page's checksum is verified at open, so
/// a file damaged on disk is refused (and set aside by the caller) instead of trusted:
/// redb says an unchecked open of an altered file may panic, and a panic at start is a
/// crash loop. The check reads the whole file, which a restart after a crash does anyway.
/// Also says whether the file needed a repair (it was not closed cleanly).
pub(super) fn open_database(path: &Path, cache_bytes: u64) -> Result<(Database, bool), SpoolError> {
    let repaired = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = repaired.clone();
    let opened = std::panic::catch_unwind(|| {
        Database::builder()
            .set_cache_size(usize::try_from(cache_bytes).unwrap_or(usize::MAX))
            .set_check_integrity_on_open(true)
            .set_repair_callback(move |_| flag.store(true, std::sync::atomic::Ordering::Relaxed))
            .create(path)
    });
    match opened {
        Ok(Ok(db)) => {
            create_tables(&db)?;
            Ok((db, repaired.load(std::sync::atomic::Ordering::Relaxed)))
        }
        Ok(Err(error)) => Err(classify_open_error(path, error)),
        Err(_) => Err(SpoolError::Engine(format!(
            "{}: the storage engine failed while opening it",
            path.display()
        ))),
    }
}

/// Readers open the tables without creating them: a new file gets them here.
fn create_tables(db: &Database) -> Result<(), SpoolError> {
    let tx = db.begin_write().map_err(SpoolError::engine)?;
    tx.open_table(CHUNKS).map_err(SpoolError::engine)?;
    tx.open_table(META).map_err(SpoolError::engine)?;
    tx.commit().map_err(SpoolError::engine)
}

/// Locked and plain I/O errors stop the start (another relay has the spool, or the disk
/// is unwell: moving the spool aside would hide events); anything else is corruption.
fn classify_open_error(path: &Path, error: redb::DatabaseError) -> SpoolError {
    match error {
        redb::DatabaseError::DatabaseAlreadyOpen => {
            SpoolError::Locked(path.parent().unwrap_or(path).to_path_buf())
        }
        redb::DatabaseError::Storage(redb::StorageError::Io(e)) => SpoolError::io(path, e),
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

    use record::fixture_record as record;
    use redb::ReadableTableMetadata;

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
        let value: Arc<[u8]> = Arc::from(bytes);
        let mut out = Vec::new();
        split_chunk(first, &value, 0, &mut out, 100);
        assert_eq!(out.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![10, 11]);
        assert!(out[0].header().is_ok());
        assert!(out[1].header().is_err(), "the cut record is corrupt");
        let mut garbage = Vec::new();
        split_chunk(5, &Arc::from(vec![9u8, 9, 9]), 0, &mut garbage, 100);
        assert_eq!(
            garbage.len(),
            1,
            "an unknown chunk format is one corrupt record"
        );
        assert!(garbage[0].header().is_err());
    }

    /// The chunks of a group whose records are `sizes` bytes each, from position 1.
    fn group_of(sizes: impl IntoIterator<Item = usize>) -> GroupChunks {
        let mut group = GroupChunks::new(1);
        for size in sizes {
            group.push(|out| out.resize(out.len() + size, 7));
        }
        group
    }

    /// Each chunk as (first position, records, bytes).
    fn shape(group: GroupChunks) -> Vec<(u64, u64, usize)> {
        group
            .into_chunks()
            .map(|chunk| {
                let (first, bytes) = chunk.finish();
                (first, chunk_count(&bytes), bytes.len())
            })
            .collect()
    }

    #[test]
    fn a_group_is_cut_into_chunks_that_each_fill_one_page_and_follow_on() {
        let chunks = shape(group_of(std::iter::repeat_n(1_000, 200)));
        let mut next = 1;
        for (i, &(first, count, bytes)) in chunks.iter().enumerate() {
            assert_eq!(first, next, "chunk {i} starts where the last ended");
            assert!(bytes <= CHUNK_MAX_BYTES, "chunk {i} holds {bytes} bytes");
            if i + 1 < chunks.len() {
                assert!(
                    bytes + 4 + 1_000 > CHUNK_MAX_BYTES,
                    "chunk {i} was sealed with room for another record"
                );
            }
            next += count;
        }
        assert_eq!(next, 201, "every record, once");

        let huge = shape(group_of([1_000, CHUNK_MAX_BYTES + 10, 1_000]));
        assert_eq!(
            huge.iter().map(|c| (c.0, c.1)).collect::<Vec<_>>(),
            vec![(1, 1), (2, 1), (3, 1)],
            "a record larger than a page gets a chunk of its own"
        );
    }

    #[test]
    fn a_refused_request_is_taken_back_out_even_across_a_chunk_boundary() {
        let mut group = group_of(std::iter::repeat_n(1_000, 60));
        let mark = group.mark();
        for _ in 0..100 {
            group.push(|out| out.resize(out.len() + 1_000, 9));
        }
        group.rollback(mark);
        assert_eq!(group.next_seq(), 61);
        group.push(|out| out.resize(out.len() + 1_000, 7));
        let expected = shape(group_of(std::iter::repeat_n(1_000, 61)));
        assert_eq!(
            shape(group),
            expected,
            "as if the refused request never came"
        );
    }

    #[test]
    fn a_full_group_leaves_no_page_mostly_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let mut batch = store.batch().expect("batch");
        let mut seq = 1;
        // Records of about an event's size: the group fills 30 pages.
        let group = {
            let mut group = GroupChunks::new(1);
            while group.mark().sealed < 30 {
                let bytes = record(seq);
                let mut padded = bytes.clone();
                padded.resize(700, b' ');
                group.push(|out| out.extend_from_slice(&padded));
                seq += 1;
            }
            group
        };
        for chunk in group.into_chunks() {
            batch.insert_chunk(chunk);
        }
        batch.commit_durable().expect("commit");
        let db = store.db().expect("db");
        let tx = db.begin_read().expect("read");
        let stats = tx
            .open_table(CHUNKS)
            .expect("table")
            .stats()
            .expect("stats");
        // A chunk just over 64 KiB would take a 128 KiB page, half of it empty.
        assert!(
            stats.fragmented_bytes() * 20 < stats.stored_bytes(),
            "{} bytes of pages unused for {} stored",
            stats.fragmented_bytes(),
            stats.stored_bytes()
        );
        assert_eq!(
            store.scan(1, usize::MAX).expect("scan").len() as u64,
            seq - 1
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]
        /// Requests of any sizes, some refused: the chunks hold exactly the accepted
        /// records, in order, at consecutive positions, each chunk within a page unless
        /// it is one record too large for one.
        #[test]
        fn any_group_reads_back_exactly_its_accepted_records(
            requests in proptest::collection::vec(
                (
                    proptest::collection::vec(
                        proptest::prop_oneof![
                            9 => 0usize..2_000,
                            1 => (CHUNK_MAX_BYTES - 40)..(CHUNK_MAX_BYTES + 40),
                        ],
                        0..40,
                    ),
                    proptest::bool::ANY,
                ),
                0..12,
            )
        ) {
            let mut group = GroupChunks::new(1);
            let mut expected: Vec<Vec<u8>> = Vec::new();
            for (n, (sizes, accepted)) in requests.iter().enumerate() {
                let mark = group.mark();
                let mut these = Vec::new();
                for (i, size) in sizes.iter().enumerate() {
                    let bytes = vec![(n * 31 + i) as u8; *size];
                    group.push(|out| out.extend_from_slice(&bytes));
                    these.push(bytes);
                }
                if *accepted {
                    expected.extend(these);
                } else {
                    group.rollback(mark);
                }
            }
            proptest::prop_assert_eq!(group.next_seq(), 1 + expected.len() as u64);
            let mut read = Vec::new();
            let mut at = 1;
            for chunk in group.into_chunks() {
                let (first, bytes) = chunk.finish();
                let count = chunk_count(&bytes);
                proptest::prop_assert_eq!(first, at);
                proptest::prop_assert!(count > 0);
                proptest::prop_assert!(bytes.len() <= CHUNK_MAX_BYTES || count == 1);
                let chunk: Arc<[u8]> = Arc::from(bytes);
                let mut records = Vec::new();
                split_chunk(first, &chunk, 0, &mut records, usize::MAX);
                read.extend(records.iter().map(|r| chunk[r.range.clone()].to_vec()));
                at += count;
            }
            proptest::prop_assert_eq!(read, expected);
        }
    }
}
