//! Dead letters: every event that will not be delivered is appended, with why, to
//! `dead_letter_dir/<destination>.ndjson`. A record is durable (written and synced)
//! before the event counts as dead-lettered; if even that fails, the event is counted
//! as `dropped{reason="dead_letter_failed"}` and logged.

use super::append::AppendFile;
use crate::dest::redact;
use crate::event::{format_rfc3339, Event};
use crate::telemetry::DestinationMetrics;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use time::OffsetDateTime;

/// Why, and after what, events were given up.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Cause {
    /// `rejected`, `retries_exhausted`, `queue_full`, `shutdown`, or a translator's reason
    /// (`oversize`, `too_old`, `missing_client_id`, …).
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The vendor's stated reason (`X-Error`) or the transport error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The start of the vendor's answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_excerpt: Option<String>,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_attempt_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_at: Option<String>,
}

impl Cause {
    pub fn new(reason: impl Into<String>) -> Cause {
        Cause {
            reason: reason.into(),
            ..Cause::default()
        }
    }
}

/// One line of a dead-letter file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub dead_lettered_at: String,
    pub destination: String,
    #[serde(flatten)]
    pub cause: Cause,
    /// The normalized event as received, `received_at` included.
    pub event: Box<serde_json::value::RawValue>,
}

pub struct DeadLetter {
    destination: String,
    file: AppendFile,
    metrics: Arc<DestinationMetrics>,
    secrets: Vec<String>,
}

impl DeadLetter {
    pub fn new(
        destination: &str,
        path: PathBuf,
        metrics: Arc<DestinationMetrics>,
        secrets: Vec<String>,
    ) -> DeadLetter {
        DeadLetter {
            destination: destination.to_string(),
            file: AppendFile::new(path),
            metrics,
            secrets,
        }
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Appends one record per event and settles them: `dead_lettered` on success,
    /// `dropped{dead_letter_failed}` otherwise. Either way they leave `in_flight`.
    pub async fn write(&self, events: &[&Event], cause: &Cause, now: OffsetDateTime) {
        if events.is_empty() {
            return;
        }
        let n = events.len() as u64;
        let mut cause = cause.clone();
        cause.error = cause.error.map(|e| redact(&e, &self.secrets));
        cause.response_excerpt = cause.response_excerpt.map(|e| redact(&e, &self.secrets));
        self.metrics.failed.inc_by(n);
        let body = self.encode(events, &cause, now);
        match self.file.append(&body, true).await {
            Ok(()) => {
                self.metrics.dead_lettered.inc_by(n);
                tracing::warn!(destination = %self.destination, reason = %cause.reason, status = cause.status, events = n, file = %self.path().display(), "events dead-lettered");
            }
            Err(error) => {
                self.metrics.dropped("dead_letter_failed", n);
                tracing::error!(destination = %self.destination, reason = %cause.reason, events = n, file = %self.path().display(), %error, "cannot write dead letters: events lost");
            }
        }
        self.metrics.in_flight.dec_by(n as i64);
    }

    fn encode(&self, events: &[&Event], cause: &Cause, now: OffsetDateTime) -> Vec<u8> {
        #[derive(Serialize)]
        struct Head<'a> {
            dead_lettered_at: String,
            destination: &'a str,
            #[serde(flatten)]
            cause: &'a Cause,
        }
        let head = Head {
            dead_lettered_at: format_rfc3339(now),
            destination: &self.destination,
            cause,
        };
        // Serializing plain strings and numbers cannot fail.
        let head = serde_json::to_vec(&head).unwrap_or_else(|_| b"{}".to_vec());
        let head = &head[..head.len() - 1]; // reopen the object to add the event
        let mut body = Vec::with_capacity(events.len() * (head.len() + 1024));
        for event in events {
            body.extend_from_slice(head);
            body.extend_from_slice(b",\"event\":");
            event.write_json(&mut body);
            body.extend_from_slice(b"}\n");
        }
        body
    }
}

/// Reads a dead-letter file back: the records, or the first line that is not one.
pub fn read_records(path: &Path) -> Result<Vec<Record>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line).map_err(|e| {
                format!(
                    "{}:{}: not a dead-letter record: {e}",
                    path.display(),
                    i + 1
                )
            })
        })
        .collect()
}
