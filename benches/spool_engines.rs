//! fjall against redb on the spool's own workload (issue #10: "measure both on the real
//! workload and choose"). The figures in docs/spool.md ("Why fjall") come from a generic
//! write test; this replays what the committer in src/spool/committer.rs does, with
//! each engine and each record layout, and prints one Markdown table.
//!
//! `cargo bench --bench spool_engines -- [--quick] [--events N] [--max-seconds S] [--dir PATH]`
//!
//! - `--quick`: 50,000 events per run instead of 400,000, 30 s cap per run: a check that it
//!   works, not figures to quote (at G = 64 that is 16 commits: p99 is the slowest one).
//! - `--dir PATH`: where the temporary databases go (default: Cargo's `target/tmp`, on
//!   the same disk as the build). Not tmpfs: an fsync there costs nothing.
//!
//! What one run does (12 runs: engine × layout × G):
//! - Group commits of G requests (G = 1, 8, 64) of 50 events each. Each commit is durable
//!   before the next starts: fjall writes one batch then `persist(SyncData)`; redb commits
//!   one write transaction with `Durability::Immediate`.
//! - Layout `event`: one key per record (the spool on `main`). Layout `chunk`: records
//!   packed into chunks of ~64 KiB, one key per chunk (the `spool-chunks` branch):
//!   `format (1) | count (u32) | count × (len (u32) | record)`, key = big-endian position
//!   of the first record; a chunk is sealed after the request that takes it past 64 KiB,
//!   so a request never straddles two.
//! - Housekeeping as the committer does it: after at least 16 commits and 100 ms, the
//!   cursors (settled 20,000 events behind the head) are saved and everything below them
//!   is deleted, not synced (fjall: a batch without persist; redb: a transaction with
//!   `Durability::None`), at most 50,000 records or 4,096 chunks a pass. Keys to delete
//!   are found by scanning the engine, as the spool does. One last pass at the end.
//! - fjall is opened as src/spool/store.rs opens it: 12 MiB write buffer, 6 MiB
//!   memtables, data blocks uncompressed, 4 MiB cache. redb gets a 16 MiB cache (its
//!   default is 1 GiB), the same memory as fjall's buffer + cache.
//!
//! Records are built here, not with the library's private encoder: each line of
//! tests/fixtures/sessions.ndjson behind a header shaped like src/spool/record.rs's
//! (crc32, version, received_at, 4 destination ids, source, IPv4, send time: 41 bytes).
//! The layout is approximate; the sizes are those of the fixture's events (~960 bytes).
//!
//! Reported per run: events/s over the whole run (housekeeping included), commit p50/p99
//! (from building the batch to durable), process CPU per event (every thread, the
//! engines' background workers included, read from /proc/self/stat after the database is
//! closed), peak RSS of the process during the run (VmHWM after resetting it through
//! /proc/self/clear_refs; "-" where that is not allowed) and the database's size on disk
//! at the end (allocated blocks). Linux only (/proc). On a 2-core machine anything else
//! running halves the figures: the load average is printed before and after.
// A benchmark measures real elapsed time and stamps records with the wall clock.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use anyhow::{bail, Context, Result};
use redb::ReadableTable;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const FIXTURE: &str = include_str!("../tests/fixtures/sessions.ndjson");
/// Events per request: what a batching client (the web connector, wrk's body) sends.
const REQUEST_EVENTS: usize = 50;
/// Requests per group commit.
const GROUPS: [usize; 3] = [1, 8, 64];
/// The cursors settle this many events behind the head.
const TRAIL_EVENTS: u64 = 20_000;
/// The committer's housekeeping rule under load: at least this many commits and this
/// much time since the last pass.
const HOUSEKEEPING_COMMITS: usize = 16;
const HOUSEKEEPING: Duration = Duration::from_millis(100);
/// The committer's caps on one reclaim pass (main / spool-chunks).
const RECLAIM_RECORDS_PER_PASS: usize = 50_000;
const RECLAIM_CHUNKS_PER_PASS: usize = 4_096;
const CHUNK_FORMAT: u8 = 1;
/// Sealed once it holds this much, as the spool did when the engines were compared
/// (docs/spool.md). The spool now seals a chunk before it outgrows one 64 KiB page
/// (`store::CHUNK_MAX_BYTES`), which can only help redb, whose pages that fills; the
/// comparison is kept as it was run.
const CHUNK_TARGET_BYTES: usize = 64 << 10;
/// fjall as src/spool/store.rs opens it (the `write_buffer_bytes` default).
const WRITE_BUFFER_BYTES: u64 = 12 << 20;
const FJALL_CACHE_BYTES: u64 = 4 << 20;
/// redb's cache: fjall's write buffer plus its cache.
const REDB_CACHE_BYTES: usize = 16 << 20;
const DESTINATIONS: [u16; 4] = [1, 2, 3, 4];
const CURSORS: [&str; 4] = ["segment", "ga4", "tealium", "webhook"];
/// Linux's USER_HZ, the unit of /proc/self/stat's CPU times (100 on every common arch).
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Layout {
    /// One key per record.
    Event,
    /// One key per ~64 KiB chunk of records.
    Chunk,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Layout::Event => "event",
            Layout::Chunk => "chunk",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum EngineKind {
    Fjall,
    Redb,
}

impl EngineKind {
    fn name(self) -> &'static str {
        match self {
            EngineKind::Fjall => "fjall 3.1",
            EngineKind::Redb => "redb 4.6",
        }
    }
}

/// What the spool needs from an engine.
trait Engine {
    /// Writes `puts` (key, value) in one batch and returns once it is durable.
    fn commit(&mut self, puts: Vec<(u64, Vec<u8>)>) -> Result<()>;
    /// Saves the cursors and deletes what `pick` chooses among the keys from `from` on
    /// (at most `scan` of them), without syncing. Returns the next `from`.
    fn housekeeping(
        &mut self,
        from: u64,
        scan: usize,
        pick: &dyn Fn(&[u64]) -> Picked,
    ) -> Result<u64>;
}

/// The keys a housekeeping pass deletes, and where the next pass starts.
struct Picked {
    delete: Vec<u64>,
    next_from: u64,
}

// ---------------------------------------------------------------------------------------
// fjall, opened as src/spool/store.rs opens it

struct Fjall {
    db: fjall::Database,
    events: fjall::Keyspace,
    meta: fjall::Keyspace,
}

impl Fjall {
    fn open(dir: &Path) -> Result<Fjall> {
        // The write-buffer cap is deprecated ("todo", no replacement yet); the spool uses it.
        #[allow(deprecated)]
        let db = fjall::Database::builder(dir)
            .cache_size(FJALL_CACHE_BYTES)
            .max_write_buffer_size(Some(WRITE_BUFFER_BYTES))
            .open()?;
        let events = db.keyspace("events", || {
            fjall::KeyspaceCreateOptions::default()
                .max_memtable_size(WRITE_BUFFER_BYTES / 2)
                .data_block_compression_policy(fjall::config::CompressionPolicy::disabled())
        })?;
        let meta = db.keyspace("meta", fjall::KeyspaceCreateOptions::default)?;
        Ok(Fjall { db, events, meta })
    }
}

impl Engine for Fjall {
    fn commit(&mut self, puts: Vec<(u64, Vec<u8>)>) -> Result<()> {
        let mut batch = self.db.batch();
        for (key, value) in puts {
            batch.insert(&self.events, key.to_be_bytes(), value);
        }
        batch.commit()?;
        self.db.persist(fjall::PersistMode::SyncData)?;
        Ok(())
    }

    fn housekeeping(
        &mut self,
        from: u64,
        scan: usize,
        pick: &dyn Fn(&[u64]) -> Picked,
    ) -> Result<u64> {
        let mut keys = Vec::new();
        for guard in self.events.range(from.to_be_bytes()..).take(scan) {
            let key = guard.key()?;
            keys.push(u64::from_be_bytes(key[..].try_into()?));
        }
        let picked = pick(&keys);
        let mut batch = self.db.batch();
        for (name, position) in cursor_values(picked.next_from) {
            batch.insert(&self.meta, name, position);
        }
        for key in &picked.delete {
            batch.remove(&self.events, key.to_be_bytes());
        }
        batch.commit()?;
        Ok(picked.next_from)
    }
}

// ---------------------------------------------------------------------------------------
// redb

const REDB_EVENTS: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("events");
const REDB_META: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("meta");

struct Redb {
    db: redb::Database,
}

impl Redb {
    fn open(dir: &Path) -> Result<Redb> {
        let db = redb::Database::builder()
            .set_cache_size(REDB_CACHE_BYTES)
            .create(dir.join("spool.redb"))?;
        Ok(Redb { db })
    }
}

impl Engine for Redb {
    fn commit(&mut self, puts: Vec<(u64, Vec<u8>)>) -> Result<()> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(redb::Durability::Immediate)?;
        {
            let mut table = tx.open_table(REDB_EVENTS)?;
            for (key, value) in &puts {
                table.insert(key, value.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn housekeeping(
        &mut self,
        from: u64,
        scan: usize,
        pick: &dyn Fn(&[u64]) -> Picked,
    ) -> Result<u64> {
        let mut tx = self.db.begin_write()?;
        // No sync, as the spool's housekeeping: the next durable commit carries it.
        tx.set_durability(redb::Durability::None)?;
        let next_from;
        {
            let mut events = tx.open_table(REDB_EVENTS)?;
            let mut keys = Vec::new();
            for entry in events.range(from..)?.take(scan) {
                keys.push(entry?.0.value());
            }
            let picked = pick(&keys);
            for key in &picked.delete {
                events.remove(key)?;
            }
            let mut meta = tx.open_table(REDB_META)?;
            for (name, position) in cursor_values(picked.next_from) {
                meta.insert(name.as_slice(), position.as_slice())?;
            }
            next_from = picked.next_from;
        }
        tx.commit()?;
        Ok(next_from)
    }
}

/// The cursor entries the spool saves in its `meta` keyspace: name → position, handed through.
fn cursor_values(position: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
    CURSORS
        .iter()
        .map(|name| {
            let mut value = position.to_be_bytes().to_vec();
            value.extend_from_slice(&position.to_be_bytes());
            ([b"cursor/".as_slice(), name.as_bytes()].concat(), value)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Records and chunks

/// One record shaped like src/spool/record.rs's, for the event `json`.
fn encode(json: &[u8], received_at_ns: i64, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]); // crc32
    out.push(1); // version
    out.extend_from_slice(&received_at_ns.to_be_bytes());
    out.push(DESTINATIONS.len() as u8);
    for id in DESTINATIONS {
        out.extend_from_slice(&id.to_be_bytes());
    }
    let source = b"web";
    out.extend_from_slice(&(source.len() as u16).to_be_bytes());
    out.extend_from_slice(source);
    out.push(4); // client IPv4
    out.extend_from_slice(&[192, 0, 2, 7]);
    out.push(1); // client send time
    out.extend_from_slice(&(received_at_ns - 150_000_000).to_be_bytes());
    out.extend_from_slice(json);
    let crc = crc32fast::hash(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_be_bytes());
}

/// A chunk being filled, as `ChunkBuilder` on the spool-chunks branch.
struct Chunk {
    first: u64,
    count: u32,
    bytes: Vec<u8>,
}

impl Chunk {
    fn new(first: u64) -> Chunk {
        let mut bytes = Vec::with_capacity(CHUNK_TARGET_BYTES + (16 << 10));
        bytes.push(CHUNK_FORMAT);
        bytes.extend_from_slice(&[0; 4]);
        Chunk {
            first,
            count: 0,
            bytes,
        }
    }

    fn push(&mut self, json: &[u8], received_at_ns: i64) {
        let at = self.bytes.len();
        self.bytes.extend_from_slice(&[0; 4]);
        encode(json, received_at_ns, &mut self.bytes);
        let len = (self.bytes.len() - at - 4) as u32;
        self.bytes[at..at + 4].copy_from_slice(&len.to_be_bytes());
        self.count += 1;
    }

    fn finish(mut self) -> (u64, Vec<u8>) {
        self.bytes[1..5].copy_from_slice(&self.count.to_be_bytes());
        (self.first, self.bytes)
    }
}

/// The next group commit: `requests` × 50 events from `seq` on, as (key, value) pairs.
fn build_group(
    layout: Layout,
    lines: &[&[u8]],
    seq: &mut u64,
    requests: usize,
) -> Vec<(u64, Vec<u8>)> {
    let now_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    let line = |seq: u64| lines[(seq as usize) % lines.len()];
    let mut puts = Vec::new();
    match layout {
        Layout::Event => {
            for _ in 0..requests * REQUEST_EVENTS {
                let json = line(*seq);
                let mut record = Vec::with_capacity(json.len() + 64);
                encode(json, now_ns, &mut record);
                puts.push((*seq, record));
                *seq += 1;
            }
        }
        Layout::Chunk => {
            let mut chunk = Chunk::new(*seq);
            for _ in 0..requests {
                for _ in 0..REQUEST_EVENTS {
                    chunk.push(line(*seq), now_ns);
                    *seq += 1;
                }
                if chunk.bytes.len() >= CHUNK_TARGET_BYTES {
                    puts.push(std::mem::replace(&mut chunk, Chunk::new(*seq)).finish());
                }
            }
            if chunk.count > 0 {
                puts.push(chunk.finish());
            }
        }
    }
    puts
}

/// What to delete when the cursors are all at `below` and the next position is `head`,
/// given the keys from `from` on (as the committer's `keys_below` / `chunks_below`).
fn pick(layout: Layout, keys: &[u64], from: u64, below: u64, head: u64) -> Picked {
    match layout {
        Layout::Event => {
            let delete: Vec<u64> = keys
                .iter()
                .copied()
                .filter(|&k| k < below)
                .take(RECLAIM_RECORDS_PER_PASS)
                .collect();
            let next_from = delete.last().map_or(from.max(below), |last| last + 1);
            Picked { delete, next_from }
        }
        Layout::Chunk => {
            // A chunk ends where the next begins (the last one, at the head).
            let mut delete = Vec::new();
            let mut next_from = from;
            for (i, &start) in keys.iter().enumerate() {
                let end = keys.get(i + 1).copied().unwrap_or(head);
                if start >= below || end > below || delete.len() == RECLAIM_CHUNKS_PER_PASS {
                    break;
                }
                delete.push(start);
                next_from = end;
            }
            Picked { delete, next_from }
        }
    }
}

// ---------------------------------------------------------------------------------------
// One run

struct Outcome {
    engine: EngineKind,
    layout: Layout,
    requests: usize,
    events: u64,
    commits: usize,
    seconds: f64,
    commit_ms: Vec<f64>,
    cpu_seconds: f64,
    peak_rss: Option<u64>,
    disk_bytes: u64,
    passes: usize,
    stopped_early: bool,
}

fn run(
    engine_kind: EngineKind,
    layout: Layout,
    requests: usize,
    opts: &Options,
    lines: &[&[u8]],
    dir: &Path,
) -> Result<Outcome> {
    std::fs::create_dir_all(dir)?;
    let reset_peak = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let cpu_before = cpu_seconds()?;
    let mut engine: Box<dyn Engine> = match engine_kind {
        EngineKind::Fjall => Box::new(Fjall::open(dir)?),
        EngineKind::Redb => Box::new(Redb::open(dir)?),
    };
    let scan = match layout {
        Layout::Event => RECLAIM_RECORDS_PER_PASS,
        // One more than the cap: a chunk ends where the next begins.
        Layout::Chunk => RECLAIM_CHUNKS_PER_PASS + 1,
    };
    let mut seq = 1u64;
    let mut reclaimed_from = 1u64;
    let mut commit_ms = Vec::new();
    let mut passes = 0;
    let mut since_housekeeping = 0;
    let started = Instant::now();
    let mut last_housekeeping = started;
    let mut stopped_early = false;
    let housekeeping = |engine: &mut Box<dyn Engine>, head: u64, from: u64| -> Result<u64> {
        let below = head.saturating_sub(TRAIL_EVENTS).max(1);
        engine.housekeeping(from, scan, &|keys| pick(layout, keys, from, below, head))
    };
    while seq - 1 < opts.events {
        if started.elapsed() >= opts.max_run {
            stopped_early = true;
            break;
        }
        let at = Instant::now();
        let puts = build_group(layout, lines, &mut seq, requests);
        engine.commit(puts)?;
        commit_ms.push(at.elapsed().as_secs_f64() * 1e3);
        since_housekeeping += 1;
        if since_housekeeping >= HOUSEKEEPING_COMMITS && last_housekeeping.elapsed() >= HOUSEKEEPING
        {
            reclaimed_from = housekeeping(&mut engine, seq, reclaimed_from)?;
            passes += 1;
            since_housekeeping = 0;
            last_housekeeping = Instant::now();
        }
    }
    housekeeping(&mut engine, seq, reclaimed_from)?;
    passes += 1;
    let seconds = started.elapsed().as_secs_f64();
    let disk_bytes = disk_bytes(dir);
    // Closing waits for the engine's background threads: their CPU is counted.
    drop(engine);
    let cpu_seconds = cpu_seconds()? - cpu_before;
    let peak_rss = if reset_peak { peak_rss() } else { None };
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(Outcome {
        engine: engine_kind,
        layout,
        requests,
        events: seq - 1,
        commits: commit_ms.len(),
        seconds,
        commit_ms,
        cpu_seconds,
        peak_rss,
        disk_bytes,
        passes,
        stopped_early,
    })
}

/// User + system CPU of the whole process (every thread, living or exited).
fn cpu_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').context("/proc/self/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(ticks as f64 / CLOCK_TICKS_PER_SECOND)
}

/// Peak resident set since the last reset, in bytes.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Bytes allocated on disk under `dir`.
fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.blocks() * 512;
            }
        }
    }
    total
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

// ---------------------------------------------------------------------------------------
// Command line and report

struct Options {
    events: u64,
    max_run: Duration,
    dir: PathBuf,
    quick: bool,
}

fn options() -> Result<Options> {
    let mut opts = Options {
        events: 400_000,
        max_run: Duration::from_secs(120),
        dir: PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
        quick: false,
    };
    let mut args = std::env::args().skip(1);
    let mut events = None;
    let mut max_run = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => opts.quick = true,
            "--events" => events = Some(args.next().context("--events N")?.parse()?),
            "--max-seconds" => {
                max_run = Some(Duration::from_secs(
                    args.next().context("--max-seconds S")?.parse()?,
                ))
            }
            "--dir" => opts.dir = PathBuf::from(args.next().context("--dir PATH")?),
            // `cargo bench` passes this to every bench.
            "--bench" => {}
            other => bail!(
                "unknown argument {other}: [--quick] [--events N] [--max-seconds S] [--dir PATH]"
            ),
        }
    }
    if opts.quick {
        opts.events = 50_000;
        opts.max_run = Duration::from_secs(30);
    }
    opts.events = events.unwrap_or(opts.events);
    opts.max_run = max_run.unwrap_or(opts.max_run);
    Ok(opts)
}

fn main() -> Result<()> {
    let opts = options()?;
    let lines: Vec<&[u8]> = FIXTURE
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::as_bytes)
        .collect();
    let mut sample = Vec::new();
    for line in &lines {
        encode(line, 0, &mut sample);
    }
    let record_bytes = sample.len() / lines.len();
    std::fs::create_dir_all(&opts.dir)?;
    let root = tempfile::Builder::new()
        .prefix("spool-engines-")
        .tempdir_in(&opts.dir)
        .with_context(|| format!("a temporary directory in {}", opts.dir.display()))?;
    let load_before = load_average();
    eprintln!(
        "spool_engines: {} events per run, {} runs, records ~{record_bytes} bytes, in {}, load average {load_before}",
        opts.events,
        GROUPS.len() * 4,
        root.path().display()
    );
    let mut outcomes = Vec::new();
    for requests in GROUPS {
        for engine in [EngineKind::Fjall, EngineKind::Redb] {
            for layout in [Layout::Event, Layout::Chunk] {
                let dir = root.path().join(format!(
                    "{}-{}-{requests}",
                    engine.name().replace(' ', "-"),
                    layout.name()
                ));
                let outcome =
                    run(engine, layout, requests, &opts, &lines, &dir).with_context(|| {
                        format!("{} / {} / G={requests}", engine.name(), layout.name())
                    })?;
                eprintln!(
                    "  {} {} G={requests}: {:.0} events/s",
                    engine.name(),
                    layout.name(),
                    outcome.events as f64 / outcome.seconds
                );
                outcomes.push(outcome);
            }
        }
    }
    let load_after = load_average();
    print!(
        "{}",
        report(&opts, record_bytes, &load_before, &load_after, &outcomes)
    );
    Ok(())
}

fn report(
    opts: &Options,
    record_bytes: usize,
    load_before: &str,
    load_after: &str,
    outcomes: &[Outcome],
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## Spool engines: {} events per run{}, records ~{record_bytes} B, {} events per request, cursors {TRAIL_EVENTS} behind the head",
        opts.events,
        if opts.quick { " (--quick: a check, not figures)" } else { "" },
        REQUEST_EVENTS
    );
    let _ = writeln!(
        out,
        "Load average before: {load_before}; after: {load_after}.\n"
    );
    let _ = writeln!(
        out,
        "| engine | layout | G (requests/commit) | events/commit | events/s | commit p50 ms | commit p99 ms | CPU µs/event | peak RSS MB | disk MB at end | commits | reclaim passes |"
    );
    let _ = writeln!(
        out,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for o in outcomes {
        let mut sorted = o.commit_ms.clone();
        sorted.sort_by(f64::total_cmp);
        let events_per_second = o.events as f64 / o.seconds;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.0}{} | {:.2} | {:.2} | {:.2} | {} | {:.1} | {} | {} |",
            o.engine.name(),
            o.layout.name(),
            o.requests,
            o.requests * REQUEST_EVENTS,
            events_per_second,
            if o.stopped_early {
                format!(" (stopped at {} events)", o.events)
            } else {
                String::new()
            },
            percentile(&sorted, 50.0),
            percentile(&sorted, 99.0),
            o.cpu_seconds / o.events as f64 * 1e6,
            o.peak_rss
                .map_or("-".to_string(), |b| format!("{:.0}", b as f64 / 1e6)),
            o.disk_bytes as f64 / 1e6,
            o.commits,
            o.passes,
        );
    }
    out
}
