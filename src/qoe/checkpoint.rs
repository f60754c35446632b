//! Open sessions saved to a file, so that a crash loses at most the events of the last
//! `checkpoint_interval_ms` instead of every open session.
//!
//! The file: `PRQS`, a version byte, the wall-clock time it was written (ms since the
//! Unix epoch), the sessions, and a CRC32 of everything before it. It is written whole
//! to `<path>.tmp`, fsync'd and renamed over `<path>` (then the directory is fsync'd),
//! so a crash leaves the old file or the new one, never half of one. A file that is
//! not one of ours, of another version, or damaged is moved aside with a warning and
//! the relay starts without it: a bad file never stops a start.

use super::metrics::{Fact, Kind};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const MAGIC: &[u8; 4] = b"PRQS";
pub const VERSION: u8 = 1;
/// Magic, version, time written, session count.
const HEADER: usize = 4 + 1 + 8 + 4;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("not a QoE checkpoint (no PRQS header)")]
    Foreign,
    #[error("checkpoint version {0}; this relay reads version {VERSION}")]
    Version(u8),
    #[error("checksum mismatch (a damaged or torn file)")]
    Checksum,
    #[error("malformed checkpoint ({0})")]
    Malformed(&'static str),
}

/// The start of a checkpoint: header with the time written and the number of sessions
/// (patched by [`finish`]).
pub fn begin(out: &mut Vec<u8>, saved_at_ms: i64) {
    out.clear();
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    put_i64(out, saved_at_ms);
    put_u32(out, 0);
}

/// Sets the session count and appends the CRC.
pub fn finish(out: &mut Vec<u8>, sessions: u32) {
    if out.len() >= HEADER {
        out[HEADER - 4..HEADER].copy_from_slice(&sessions.to_le_bytes());
    }
    let crc = crc32fast::hash(out);
    put_u32(out, crc);
}

/// A checked checkpoint: when it was written and a reader over its sessions.
pub struct Contents<'a> {
    pub saved_at_ms: i64,
    pub sessions: u32,
    pub reader: Reader<'a>,
}

/// Checks magic, version and CRC.
pub fn open(bytes: &[u8]) -> Result<Contents<'_>, CheckpointError> {
    if bytes.len() < 5 || &bytes[..4] != MAGIC {
        return Err(CheckpointError::Foreign);
    }
    if bytes[4] != VERSION {
        return Err(CheckpointError::Version(bytes[4]));
    }
    if bytes.len() < HEADER + 4 {
        return Err(CheckpointError::Checksum);
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let crc = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32fast::hash(body) != crc {
        return Err(CheckpointError::Checksum);
    }
    let mut reader = Reader {
        bytes: &body[5..],
        at: 0,
    };
    let malformed = CheckpointError::Malformed("header");
    let saved_at_ms = reader.i64().ok_or(malformed)?;
    let sessions = reader.u32().ok_or(CheckpointError::Malformed("header"))?;
    Ok(Contents {
        saved_at_ms,
        sessions,
        reader,
    })
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, fsync, rename,
/// fsync of the directory. Blocking: call it off the async workers.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let error = |source| CheckpointError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = temporary(path);
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(error)?;
    let mut file = std::fs::File::create(&tmp).map_err(error)?;
    file.write_all(bytes).map_err(error)?;
    file.sync_all().map_err(error)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(error)?;
    // The rename is durable once the directory is.
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(error)?;
    Ok(())
}

/// Reads the file; `None` when there is none.
pub fn read(path: &Path) -> Result<Option<Vec<u8>>, CheckpointError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CheckpointError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Moves a file that cannot be used aside (`<path>.bad-N`), so it is kept for a look
/// and the next start does not trip on it again. Returns where it went.
pub fn set_aside(path: &Path) -> std::io::Result<PathBuf> {
    for n in 1..1000 {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".bad-{n}"));
        let aside = PathBuf::from(name);
        if !aside.exists() {
            std::fs::rename(path, &aside)?;
            return Ok(aside);
        }
    }
    // A thousand bad files: replace the last rather than keep failing.
    let mut name = path.as_os_str().to_owned();
    name.push(".bad-999");
    let aside = PathBuf::from(name);
    std::fs::rename(path, &aside)?;
    Ok(aside)
}

fn temporary(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

pub fn put_u8(out: &mut Vec<u8>, v: u8) {
    out.push(v);
}

pub fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub fn put_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u32(out, u32::try_from(s.len()).unwrap_or(u32::MAX));
    out.extend_from_slice(&s.as_bytes()[..s.len().min(u32::MAX as usize)]);
}

pub fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => {
            put_u8(out, 1);
            put_str(out, s);
        }
        None => put_u8(out, 0),
    }
}

pub fn put_fact(out: &mut Vec<u8>, f: &Fact) {
    put_u64(out, f.id);
    put_i64(out, f.at_ms);
    put_u32(out, f.sequence);
    put_u32(out, f.bitrate_bps);
    put_u16(out, f.run);
    put_u32(out, f.span_ms);
    put_u8(out, f.kind as u8);
    put_u8(out, f.flags);
}

/// Reads what the `put_*` functions wrote; `None` past the end or on a bad value.
pub struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let out = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(out)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    pub fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    pub fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_le_bytes)
    }

    pub fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }

    pub fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }

    pub fn i64(&mut self) -> Option<i64> {
        self.array().map(i64::from_le_bytes)
    }

    pub fn str(&mut self) -> Option<&'a str> {
        let n = usize::try_from(self.u32()?).ok()?;
        std::str::from_utf8(self.take(n)?).ok()
    }

    pub fn opt_str(&mut self) -> Option<Option<&'a str>> {
        match self.u8()? {
            0 => Some(None),
            1 => self.str().map(Some),
            _ => None,
        }
    }

    pub fn fact(&mut self) -> Option<Fact> {
        Some(Fact {
            id: self.u64()?,
            at_ms: self.i64()?,
            sequence: self.u32()?,
            bitrate_bps: self.u32()?,
            run: self.u16()?,
            span_ms: self.u32()?,
            kind: Kind::from_u8(self.u8()?)?,
            flags: self.u8()?,
        })
    }

    /// Whether everything was read.
    pub fn is_done(&self) -> bool {
        self.at == self.bytes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_reads_back_and_damage_or_a_foreign_file_is_refused() {
        let mut out = Vec::new();
        begin(&mut out, 1_234);
        put_str(&mut out, "session");
        put_opt_str(&mut out, None);
        let fact = Fact {
            id: 7,
            at_ms: -5,
            sequence: 3,
            bitrate_bps: 9,
            run: 2,
            span_ms: 11,
            kind: Kind::AdCompleted,
            flags: 8,
        };
        put_fact(&mut out, &fact);
        finish(&mut out, 1);
        let mut contents = open(&out).expect("reads");
        assert_eq!((contents.saved_at_ms, contents.sessions), (1_234, 1));
        assert_eq!(contents.reader.str(), Some("session"));
        assert_eq!(contents.reader.opt_str(), Some(None));
        assert_eq!(contents.reader.fact(), Some(fact));
        assert!(contents.reader.is_done());

        let mut torn = out.clone();
        torn.truncate(out.len() - 3);
        assert!(matches!(open(&torn), Err(CheckpointError::Checksum)));
        let mut flipped = out.clone();
        flipped[20] ^= 1;
        assert!(matches!(open(&flipped), Err(CheckpointError::Checksum)));
        let mut newer = out.clone();
        newer[4] = VERSION + 1;
        assert!(matches!(open(&newer), Err(CheckpointError::Version(_))));
        assert!(matches!(
            open(b"{\"not\":\"ours\"}"),
            Err(CheckpointError::Foreign)
        ));
        assert!(matches!(open(b""), Err(CheckpointError::Foreign)));
    }
}
