//! The one writer of the spool: group commit. Requests that arrive while a commit runs
//! wait for the next one, so under load one fdatasync covers many requests; alone, a
//! request waits for exactly one. After each commit the events go to their
//! destinations in commit order. Between commits: cursors are saved and the records
//! every destination is past are deleted.

use super::record;
use super::store::{GroupChunks, SavedCursor, Store};
use super::{Routed, Shared, SpoolError};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

pub enum Command {
    Append {
        items: Vec<Routed>,
        reply: oneshot::Sender<Result<(), SpoolError>>,
    },
}

/// At most this many events in one group commit: bounds the latency of the first.
const MAX_GROUP_EVENTS: usize = 10_000;
/// How often cursors are saved and space reclaimed when ingest is idle.
const HOUSEKEEPING: Duration = Duration::from_millis(100);
/// Chunks deleted per housekeeping pass, so a large reclaim never stalls commits.
const RECLAIM_CHUNKS_PER_PASS: usize = 4_096;

pub fn spawn(
    store: Arc<Store>,
    shared: Arc<Shared>,
    commands: Receiver<Command>,
    first: u64,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("playrelay-spool".into())
        .spawn(move || {
            let mut committer = Committer {
                store,
                shared,
                reclaimed_from: first,
                saved: HashMap::new(),
                failed: false,
            };
            committer.run(commands);
        })
}

struct Committer {
    store: Arc<Store>,
    shared: Arc<Shared>,
    /// Every record below this is deleted.
    reclaimed_from: u64,
    saved: HashMap<String, SavedCursor>,
    /// A write failed: the database must be reopened before the next one.
    failed: bool,
}

impl Committer {
    /// Reopens the database after a failed write; true when it is usable again.
    fn recover(&mut self) -> bool {
        if !self.failed {
            return true;
        }
        match self.store.reopen().and_then(|()| self.store.head()) {
            Ok(head) => {
                // A batch whose sync failed may still have reached the disk: never
                // reuse its positions.
                let next = self.shared.next_seq.load(Ordering::Acquire).max(head);
                self.shared.next_seq.store(next, Ordering::Release);
                self.failed = false;
                self.saved.clear();
                self.shared.set_failure(None);
                tracing::info!("the spool is writable again");
                true
            }
            Err(error) => {
                self.shared
                    .set_failure(Some(format!("cannot write to the spool ({error})")));
                false
            }
        }
    }

    fn fail(&mut self, message: String, replies: Vec<oneshot::Sender<Result<(), SpoolError>>>) {
        self.failed = true;
        self.shared.metrics.spool.write_errors.inc();
        tracing::error!(error = %message, "spool commit failed: ingest answers 503 until the spool can write again");
        self.shared.set_failure(Some(message.clone()));
        for reply in replies {
            let _ = reply.send(Err(SpoolError::Unwritable(message.clone())));
        }
    }

    // A plain thread's pacing, outside tokio's clock (which tests may pause).
    #[allow(clippy::disallowed_types, clippy::disallowed_methods)]
    fn run(&mut self, commands: Receiver<Command>) {
        let mut since_housekeeping = 0usize;
        let mut last_housekeeping = std::time::Instant::now();
        loop {
            let first = match commands.recv_timeout(HOUSEKEEPING) {
                Ok(command) => command,
                Err(RecvTimeoutError::Timeout) => {
                    // Idle: no group commit will carry the cursors to disk, so this does.
                    self.housekeeping(true);
                    since_housekeeping = 0;
                    last_housekeeping = std::time::Instant::now();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut group = vec![first];
            let mut events = group_events(&group);
            while events < MAX_GROUP_EVENTS {
                match commands.try_recv() {
                    Ok(command) => {
                        events += group_events(std::slice::from_ref(&command));
                        group.push(command);
                    }
                    Err(_) => break,
                }
            }
            self.commit(group);
            since_housekeeping += 1;
            // Under load commits never time out: housekeep every so often.
            if since_housekeeping >= 16 && last_housekeeping.elapsed() >= HOUSEKEEPING {
                self.housekeeping(false);
                since_housekeeping = 0;
                last_housekeeping = std::time::Instant::now();
            }
        }
        // Shutdown: the destinations have settled what they could; save where they are.
        self.housekeeping(true);
        if let Err(error) = self.store.sync() {
            tracing::error!(%error, "cannot sync the spool at shutdown");
        }
    }

    fn commit(&mut self, group: Vec<Command>) {
        #[allow(clippy::disallowed_types, clippy::disallowed_methods)]
        // A plain thread, outside tokio's clock: real time is what this measures.
        let started = std::time::Instant::now();
        if !self.recover() {
            let message = self.shared.failure_text();
            let replies = group
                .into_iter()
                .map(|Command::Append { reply, .. }| reply)
                .collect();
            self.fail(message, replies);
            return;
        }
        let mut batch = match self.store.batch() {
            Ok(batch) => batch,
            Err(error) => {
                let replies = group
                    .into_iter()
                    .map(|Command::Append { reply, .. }| reply)
                    .collect();
                self.fail(format!("cannot write to the spool ({error})"), replies);
                return;
            }
        };
        let first_seq = self.shared.next_seq.load(Ordering::Acquire);
        let mut chunks = GroupChunks::new(first_seq);
        let mut accepted = Vec::with_capacity(group.len());
        let mut refused = Vec::new();
        let mut group_bytes = 0u64;
        let held = self.shared.bytes.load(Ordering::Relaxed);
        for command in group {
            let Command::Append { items, reply } = command;
            let mark = chunks.mark();
            let mut request_bytes = 0u64;
            let mut sizes = Vec::with_capacity(items.len());
            for item in &items {
                let ids: Vec<u16> = item
                    .to
                    .iter()
                    .filter(|d| !d.leaves_out(&item.event))
                    .filter_map(|d| d.spool_id())
                    .collect();
                let seq = chunks.next_seq();
                // Encoded straight into the chunk the batch takes: no second copy.
                let size = chunks.push(|out| record::encode(&item.event, &ids, out));
                request_bytes += size;
                sizes.push((seq, size));
            }
            if held + group_bytes + request_bytes > self.shared.max_bytes {
                chunks.rollback(mark);
                refused.push((
                    reply,
                    SpoolError::Full {
                        bytes: held + group_bytes,
                        max_bytes: self.shared.max_bytes,
                    },
                ));
                continue;
            }
            group_bytes += request_bytes;
            accepted.push((items, sizes, reply));
        }
        let seq = chunks.next_seq();
        for chunk in chunks.into_chunks() {
            batch.insert_chunk(chunk);
        }
        for (reply, error) in refused {
            let _ = reply.send(Err(error));
        }
        if accepted.is_empty() {
            return;
        }
        let mut committed = Vec::with_capacity((seq - first_seq) as usize);
        let mut replies = Vec::with_capacity(accepted.len());
        for (items, sizes, reply) in accepted {
            for (item, (event_seq, size)) in items.into_iter().zip(sizes) {
                let mut event = item.event;
                event.spool_seq = event_seq;
                committed.push((Arc::new(event), size, item.to));
            }
            replies.push(reply);
        }
        // Remembered (under one lock) before the commit makes their records readable: a
        // reader that is behind finds them here rather than parsing them again. If the
        // commit fails, nothing holds them and the weak references lead nowhere.
        self.store
            .recent()
            .remember(committed.iter().map(|(event, _, _)| event));
        let written = batch.commit_durable();
        if let Err(error) = written {
            self.fail(format!("cannot write to the spool ({error})"), replies);
            return;
        }
        let metrics = &self.shared.metrics.spool;
        self.shared.next_seq.store(seq, Ordering::Release);
        self.shared.bytes.fetch_add(group_bytes, Ordering::Relaxed);
        self.shared
            .records
            .fetch_add(seq - first_seq, Ordering::Relaxed);
        metrics.commits.inc();
        metrics.committed_events.inc_by(seq - first_seq);
        metrics
            .commit_duration
            .observe(started.elapsed().as_secs_f64());
        metrics
            .bytes
            .set(self.shared.bytes.load(Ordering::Relaxed) as i64);
        for (event, size, to) in &committed {
            for destination in to {
                destination.offer_spooled(event.clone(), *size);
            }
        }
        // Answered once handed to the destinations, not before: what a client sees
        // accepted is already counted as received (and its drops as dropped) when it
        // hears so.
        for reply in replies {
            let _ = reply.send(Ok(()));
        }
        let cursors: Vec<_> = self.shared.lock().cursors.values().cloned().collect();
        for cursor in cursors {
            cursor.passed(seq);
        }
    }

    /// Saves moved cursors and deletes what every destination is past. Not `durable`:
    /// the next group commit's fsync carries it; a crash before that only means a
    /// redelivery.
    fn housekeeping(&mut self, durable: bool) {
        if !self.recover() {
            return;
        }
        let cursors: Vec<_> = self.shared.lock().cursors.values().cloned().collect();
        let head = self.shared.next_seq.load(Ordering::Acquire);
        let Ok(mut batch) = self.store.batch() else {
            return;
        };
        let mut low = head;
        for cursor in &cursors {
            let (position, handed_through) = cursor.position();
            low = low.min(position);
            let saved = SavedCursor {
                position,
                handed_through,
            };
            if self.saved.get(&cursor.name) != Some(&saved) {
                batch.save_cursor(&cursor.name, saved);
                self.saved.insert(cursor.name.clone(), saved);
            }
            self.shared
                .metrics
                .spool
                .backlog_bytes
                .get_or_create(&crate::telemetry::DestinationLabel {
                    destination: cursor.name.clone(),
                })
                .set(cursor.backlog_bytes() as i64);
        }
        self.saved
            .retain(|name, _| cursors.iter().any(|c| &c.name == name));
        let mut freed = 0u64;
        match self
            .store
            .chunks_below(self.reclaimed_from, low, head, RECLAIM_CHUNKS_PER_PASS)
        {
            Ok(chunks) => {
                let mut n = 0u64;
                for chunk in &chunks {
                    batch.remove_chunk(chunk.start);
                    n += chunk.end - chunk.start;
                }
                // Sizes by the average record: reading each chunk back to weigh it
                // cost more than the deletion itself.
                let records = self.shared.records.load(Ordering::Relaxed).max(1);
                let held = self.shared.bytes.load(Ordering::Relaxed);
                let n = n.min(records);
                freed = held / records * n;
                let _ =
                    self.shared
                        .records
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                            Some(r.saturating_sub(n))
                        });
                if let Some(last) = chunks.last() {
                    self.reclaimed_from = last.end;
                }
            }
            Err(error) => tracing::warn!(%error, "cannot list spool chunks to reclaim"),
        }
        if batch.is_empty() {
            self.report_oldest();
            return;
        }
        let committed = if durable {
            batch.commit_durable()
        } else {
            batch.commit()
        };
        match committed {
            Ok(()) => {
                let _ = self
                    .shared
                    .bytes
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                        Some(b.saturating_sub(freed))
                    });
            }
            Err(error) => {
                tracing::warn!(%error, "cannot save spool cursors");
                self.saved.clear();
            }
        }
        self.report_oldest();
    }

    fn report_oldest(&self) {
        let metrics = &self.shared.metrics.spool;
        metrics
            .bytes
            .set(self.shared.bytes.load(Ordering::Relaxed) as i64);
        metrics.disk_bytes.set(self.store.disk_bytes() as i64);
        let age = match self.store.scan(self.reclaimed_from, 1) {
            Ok(records) => records
                .first()
                .and_then(|r| r.header().ok())
                .and_then(|h| h.received_at().ok())
                .map(|at| ((self.shared.clock)() - at).whole_seconds().max(0))
                .unwrap_or(0),
            Err(_) => 0,
        };
        metrics.oldest_event_age_seconds.set(age);
    }
}

fn group_events(group: &[Command]) -> usize {
    group
        .iter()
        .map(|Command::Append { items, .. }| items.len())
        .sum()
}
