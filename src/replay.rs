//! `playrelay replay`: dead letters sent again through a destination's normal delivery
//! stack, each event keeping its `event_id` and `received_at`.

use crate::config::Config;
use crate::deliver::dead_letter::read_records;
use crate::deliver::{self, HttpClient};
use crate::event::Event;
use crate::telemetry::Metrics;
use crate::Clock;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::watch;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    pub records: usize,
    pub delivered: u64,
    /// Failed again: written to `failed_again_file`.
    pub dead_lettered: u64,
    /// Left out by the destination's own rules (unmapped, disabled), or lost.
    pub dropped: u64,
    /// Records whose event no longer passes validation; left in the input file.
    pub invalid: Vec<String>,
    pub failed_again_file: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("no destination named {0:?} in the config")]
    UnknownDestination(String),
    #[error("{0}")]
    Read(String),
    #[error("cannot remove the previous {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] deliver::http::TlsSetupError),
    #[error(transparent)]
    Build(#[from] deliver::BuildError),
}

pub async fn replay(
    config: &Config,
    destination: &str,
    file: &Path,
    clock: Clock,
) -> Result<ReplayReport, ReplayError> {
    let mut dest_config = config
        .destinations
        .get(destination)
        .cloned()
        .ok_or_else(|| ReplayError::UnknownDestination(destination.to_string()))?;
    let records = read_records(file).map_err(ReplayError::Read)?;
    let mut events = Vec::with_capacity(records.len());
    let mut invalid = Vec::new();
    for (line, record) in records.iter().enumerate() {
        let received_at = serde_json::from_str::<serde_json::Value>(record.event.get())
            .ok()
            .and_then(|v| v["received_at"].as_str().map(str::to_string))
            .and_then(|s| OffsetDateTime::parse(&s, &Rfc3339).ok())
            .unwrap_or_else(|| clock());
        match Event::from_json(&record.event, received_at) {
            Ok(event) => events.push(Arc::new(event)),
            Err(error) => invalid.push(format!("{}:{}: {error}", file.display(), line + 1)),
        }
    }
    // Everything is offered at once: the queue must hold it all.
    dest_config.common.queue.max_events =
        dest_config.common.queue.max_events.max(events.len().max(1));
    let failed_again_file = failed_again_path(file);
    // This run's failures only: a file left by an earlier run of the same input would
    // otherwise be appended to, and replaying it would send those records twice.
    match std::fs::remove_file(&failed_again_file) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            return Err(ReplayError::Io {
                path: failed_again_file,
                source: error,
            })
        }
        _ => {}
    }
    let metrics = Arc::new(Metrics::new());
    let (_abandon, abandon_rx) = watch::channel(false);
    let env = deliver::Environment {
        client: HttpClient::new(config.server.tls_roots, config.max_in_flight())?,
        metrics: metrics.clone(),
        clock,
        abandon: abandon_rx,
        dead_letter_path: failed_again_file.clone(),
        dry_run_path: config
            .server
            .dry_run_dir
            .join(format!("{destination}.http")),
        hash_salt: config.server.hash_salt.clone(),
        // A replay sends what a file holds and writes what fails to another file.
        cursor: None,
        lease: None,
    };
    let (handle, worker) = deliver::start(&dest_config, env)?;
    for event in events {
        handle.offer(event);
    }
    let dest_metrics = handle.metrics.clone();
    drop(handle);
    drop(worker.handover);
    if let Err(error) = worker.handle.await {
        tracing::error!(%error, "replay worker failed");
    }
    Ok(ReplayReport {
        records: records.len(),
        delivered: dest_metrics.sent.get(),
        dead_lettered: dest_metrics.dead_lettered.get(),
        dropped: dest_metrics.received.get()
            - dest_metrics.sent.get()
            - dest_metrics.dead_lettered.get(),
        invalid,
        failed_again_file,
    })
}

/// `x/warehouse.ndjson` → `x/warehouse.failed-again.ndjson`.
fn failed_again_path(file: &Path) -> PathBuf {
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "dead-letter".into());
    file.with_file_name(format!("{stem}.failed-again.ndjson"))
}
