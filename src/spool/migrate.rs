//! A spool written by an earlier release (fjall: a `version` file, `keyspaces/`, `*.jnl`
//! journals) is moved into redb at open, so an upgrade keeps every accepted event and
//! every cursor. The copy is written to a side file, made durable, and renamed into
//! place before the old files are deleted: a crash at any point leaves either the old
//! spool whole (and the move starts again) or the new one whole (and only the old
//! files are left to delete).

use super::store::{chunk_count, open_database, ChunkBuilder, CHUNKS, FILE, META};
use super::SpoolError;
use fjall::{KeyspaceCreateOptions, PersistMode};
use redb::Durability;
use std::path::Path;

/// fjall's keyspaces: chunks of records; before chunks, one record per key; cursors and ids.
const FJALL_CHUNKS: &str = "chunks";
const FJALL_EVENTS: &str = "events";
const FJALL_META: &str = "meta";
const FJALL_KEYSPACES: &str = "keyspaces";
const FJALL_VERSION: &str = "version";
const FJALL_LOCK: &str = "lock";
/// Entries copied per redb transaction: bounds the memory the move takes.
const PER_TRANSACTION: usize = 256;

pub fn from_fjall(dir: &Path, cache_bytes: u64) -> Result<(), SpoolError> {
    if !(dir.join(FJALL_KEYSPACES).is_dir() && dir.join(FJALL_VERSION).is_file()) {
        return Ok(());
    }
    if !dir.join(FILE).exists() {
        let moving = dir.join(format!("{FILE}.moving"));
        if moving.exists() {
            // An earlier move died half-way: the fjall spool is still whole.
            std::fs::remove_file(&moving).map_err(|e| SpoolError::io(&moving, e))?;
        }
        let (records, entries) = copy(dir, &moving, cache_bytes)?;
        std::fs::rename(&moving, dir.join(FILE)).map_err(|e| SpoolError::io(&moving, e))?;
        sync_dir(dir)?;
        tracing::info!(dir = %dir.display(), records, meta_entries = entries, "spool moved from fjall to redb");
    }
    remove_fjall(dir)
}

/// Copies every record and meta entry; returns how many of each.
fn copy(dir: &Path, to: &Path, cache_bytes: u64) -> Result<(u64, u64), SpoolError> {
    let old = fjall::Database::builder(dir)
        .open()
        .map_err(|e| fjall_error(dir, e))?;
    let (new, _) = open_database(to, cache_bytes)?;
    let mut records = 0u64;
    let mut entries = 0u64;
    let mut pending: Vec<(Target, Vec<u8>, Vec<u8>)> = Vec::new();
    let flush = |pending: &mut Vec<(Target, Vec<u8>, Vec<u8>)>, durability| {
        let mut tx = new.begin_write().map_err(SpoolError::engine)?;
        tx.set_durability(durability).map_err(SpoolError::engine)?;
        {
            let mut chunks = tx.open_table(CHUNKS).map_err(SpoolError::engine)?;
            let mut meta = tx.open_table(META).map_err(SpoolError::engine)?;
            for (target, k, v) in pending.drain(..) {
                match target {
                    Target::Chunk(first) => chunks.insert(first, v.as_slice()).map(drop),
                    Target::Meta => meta.insert(k.as_slice(), v.as_slice()).map(drop),
                }
                .map_err(SpoolError::engine)?;
            }
        }
        tx.commit().map_err(SpoolError::engine)
    };
    for (name, kind) in [
        (FJALL_CHUNKS, Kind::Chunks),
        (FJALL_EVENTS, Kind::Records),
        (FJALL_META, Kind::Meta),
    ] {
        if !old.keyspace_exists(name) {
            continue;
        }
        let keyspace = old
            .keyspace(name, KeyspaceCreateOptions::default)
            .map_err(|e| fjall_error(dir, e))?;
        for guard in keyspace.iter() {
            let (k, v) = guard.into_inner().map_err(|e| fjall_error(dir, e))?;
            match kind {
                Kind::Meta => {
                    entries += 1;
                    pending.push((Target::Meta, k.to_vec(), v.to_vec()));
                }
                Kind::Chunks | Kind::Records => {
                    let Some(seq) = seq_of(&k) else { continue };
                    let value = if kind == Kind::Chunks {
                        records += chunk_count(&v);
                        v.to_vec()
                    } else {
                        // The layout before chunks: each record becomes a chunk of one.
                        records += 1;
                        let mut chunk = ChunkBuilder::new(seq);
                        chunk.push(|out| out.extend_from_slice(&v));
                        chunk.finish().1
                    };
                    pending.push((Target::Chunk(seq), Vec::new(), value));
                }
            }
            if pending.len() >= PER_TRANSACTION {
                flush(&mut pending, Durability::None)?;
            }
        }
    }
    flush(&mut pending, Durability::Immediate)?;
    old.persist(PersistMode::SyncAll)
        .map_err(|e| fjall_error(dir, e))?;
    Ok((records, entries))
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chunks,
    Records,
    Meta,
}

enum Target {
    Chunk(u64),
    Meta,
}

fn seq_of(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

fn remove_fjall(dir: &Path) -> Result<(), SpoolError> {
    let keyspaces = dir.join(FJALL_KEYSPACES);
    std::fs::remove_dir_all(&keyspaces).map_err(|e| SpoolError::io(&keyspaces, e))?;
    let entries = std::fs::read_dir(dir).map_err(|e| SpoolError::io(dir, e))?;
    for entry in entries {
        let path = entry.map_err(|e| SpoolError::io(dir, e))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name == FJALL_VERSION || name == FJALL_LOCK || name.ends_with(".jnl") {
            std::fs::remove_file(&path).map_err(|e| SpoolError::io(&path, e))?;
        }
    }
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SpoolError::io(dir, e))
}

/// Locked stops the start, as for redb; anything else is a spool that cannot be read,
/// which the caller sets aside.
fn fjall_error(dir: &Path, error: fjall::Error) -> SpoolError {
    match error {
        fjall::Error::Locked => SpoolError::Locked(dir.to_path_buf()),
        fjall::Error::Io(e) => SpoolError::io(dir, e),
        other => SpoolError::Engine(format!("the fjall spool being moved: {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::super::record;
    use super::super::store::Store;
    use super::*;

    use record::fixture_record as record;

    #[test]
    fn a_fjall_spool_is_moved_into_redb_with_its_records_and_cursors() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let db = fjall::Database::builder(dir.path()).open().expect("open");
            // Both layouts fjall spools had: one record per key, and chunks.
            let events = db
                .keyspace(FJALL_EVENTS, KeyspaceCreateOptions::default)
                .expect("keyspace");
            for seq in [3u64, 4] {
                events
                    .insert(seq.to_be_bytes(), record(seq))
                    .expect("insert");
            }
            let chunks = db
                .keyspace(FJALL_CHUNKS, KeyspaceCreateOptions::default)
                .expect("keyspace");
            let mut chunk = ChunkBuilder::new(7);
            for seq in 7..10 {
                let bytes = record(seq);
                chunk.push(|out| out.extend_from_slice(&bytes));
            }
            let (first, bytes) = chunk.finish();
            chunks.insert(first.to_be_bytes(), bytes).expect("insert");
            let meta = db
                .keyspace(FJALL_META, KeyspaceCreateOptions::default)
                .expect("keyspace");
            let mut cursor = 8u64.to_be_bytes().to_vec();
            cursor.extend_from_slice(&9u64.to_be_bytes());
            meta.insert(b"cursor/slow", cursor).expect("insert");
            meta.insert(b"id/slow", 5u16.to_be_bytes()).expect("insert");
            db.persist(PersistMode::SyncAll).expect("persist");
        }
        let (store, aside) = Store::open(dir.path(), 4 << 20).expect("open");
        assert!(aside.is_none());
        let scanned = store.scan(0, 100).expect("scan");
        assert_eq!(
            scanned.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![3, 4, 7, 8, 9]
        );
        for r in &scanned {
            assert!(r.header().expect("whole").routes_to(r.seq as u16));
        }
        assert_eq!(store.head().expect("head"), 10);
        let saved = store.saved_cursor("slow").expect("read").expect("saved");
        assert_eq!((saved.position, saved.handed_through), (8, 9));
        assert_eq!(store.ids().expect("ids"), vec![("slow".to_string(), 5)]);
        assert!(
            !dir.path().join(FJALL_KEYSPACES).exists(),
            "fjall's files are gone"
        );
        assert!(!dir.path().join(FJALL_VERSION).exists());
        drop(store);
        let (again, _) = Store::open(dir.path(), 4 << 20).expect("reopen");
        assert_eq!(again.scan(0, 100).expect("scan").len(), 5, "moved once");
    }

    #[test]
    fn a_move_that_died_half_way_starts_again_from_the_fjall_spool() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let db = fjall::Database::builder(dir.path()).open().expect("open");
            let events = db
                .keyspace(FJALL_EVENTS, KeyspaceCreateOptions::default)
                .expect("keyspace");
            events
                .insert(11u64.to_be_bytes(), record(11))
                .expect("insert");
            db.persist(PersistMode::SyncAll).expect("persist");
        }
        std::fs::write(dir.path().join(format!("{FILE}.moving")), b"half a copy")
            .expect("leftover");
        let (store, aside) = Store::open(dir.path(), 4 << 20).expect("open");
        assert!(aside.is_none(), "the leftover is not a corrupt spool");
        assert_eq!(
            store
                .scan(0, 10)
                .expect("scan")
                .iter()
                .map(|r| r.seq)
                .collect::<Vec<_>>(),
            vec![11]
        );
    }
}
