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

/// Why events were given up: the `reason` of a dead-letter record. [`Reason::as_str`]
/// is the one spelling, in dead-letter files, logs and metric labels.
#[derive(Debug, Clone)]
pub enum Reason {
    /// The vendor called the request bad (a 4xx it will not take again).
    Rejected,
    /// Retries ran out (`max_attempts` or `max_elapsed_ms`).
    RetriesExhausted,
    /// The destination's queue was full (`when_full = "dead_letter"`).
    QueueFull,
    /// The disk backlog was past `queue.max_bytes`.
    BacklogFull,
    /// Shutdown gave up waiting on them.
    Shutdown,
    /// The destination was removed by a reload while they were owed.
    Removed,
    /// A `file` destination could not append them.
    WriteFailed,
    /// A `dry_run` destination could not write its request file.
    DryRunWriteFailed,
    /// The request could not even be built (say, a URL the HTTP stack will not take):
    /// not sent, not retried.
    InvalidRequest,
    /// A translator refused the event (`oversize`, `too_old`, `missing_client_id`, …).
    Refused(&'static str),
    /// Read back from a file: a reason this build does not name.
    Other(String),
}

impl Reason {
    pub fn as_str(&self) -> &str {
        match self {
            Reason::Rejected => "rejected",
            Reason::RetriesExhausted => "retries_exhausted",
            Reason::QueueFull => "queue_full",
            Reason::BacklogFull => "backlog_full",
            Reason::Shutdown => "shutdown",
            Reason::Removed => "removed",
            Reason::WriteFailed => "write_failed",
            Reason::DryRunWriteFailed => "dry_run_write_failed",
            Reason::InvalidRequest => "invalid_request",
            Reason::Refused(reason) => reason,
            Reason::Other(reason) => reason,
        }
    }

    /// The reason a record's text names.
    pub fn parse(text: &str) -> Reason {
        const NAMED: [Reason; 9] = [
            Reason::Rejected,
            Reason::RetriesExhausted,
            Reason::QueueFull,
            Reason::BacklogFull,
            Reason::Shutdown,
            Reason::Removed,
            Reason::WriteFailed,
            Reason::DryRunWriteFailed,
            Reason::InvalidRequest,
        ];
        NAMED
            .into_iter()
            .find(|reason| reason.as_str() == text)
            .unwrap_or_else(|| Reason::Other(text.to_string()))
    }
}

impl PartialEq for Reason {
    fn eq(&self, other: &Reason) -> bool {
        self.as_str() == other.as_str()
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Reason {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Reason, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        Ok(Reason::parse(&text))
    }
}

/// Why, and after what, events were given up.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Cause {
    pub reason: Reason,
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
    pub fn new(reason: Reason) -> Cause {
        Cause {
            reason,
            status: None,
            error: None,
            response_excerpt: None,
            attempts: 0,
            first_attempt_at: None,
            last_attempt_at: None,
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
    settle: Arc<super::Settle>,
}

impl DeadLetter {
    pub fn new(
        destination: &str,
        path: PathBuf,
        metrics: Arc<DestinationMetrics>,
        secrets: Vec<String>,
        settle: Arc<super::Settle>,
    ) -> DeadLetter {
        DeadLetter {
            destination: destination.to_string(),
            file: AppendFile::new(path),
            metrics,
            secrets,
            settle,
        }
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Appends one record per event and settles them: `dead_lettered` on success,
    /// `dropped{dead_letter_failed}` otherwise. Either way they leave `in_flight`.
    pub async fn write(&self, events: &[&Event], cause: &Cause, now: OffsetDateTime) {
        let items: Vec<(&Event, &Cause)> = events.iter().map(|e| (*e, cause)).collect();
        self.write_each(&items, now).await;
    }

    /// Like [`DeadLetter::write`], each event with its own cause, in one durable append.
    pub async fn write_each(&self, items: &[(&Event, &Cause)], now: OffsetDateTime) {
        if items.is_empty() {
            return;
        }
        let n = items.len() as u64;
        self.metrics.failed.inc_by(n);
        let dead_lettered_at = format_rfc3339(now);
        let mut body = Vec::with_capacity(items.len() * 1536);
        for (event, cause) in items {
            self.encode(event, cause, &dead_lettered_at, &mut body);
        }
        let reason = &items[0].1.reason;
        match self.file.append(&body, true).await {
            Ok(()) => {
                self.metrics.dead_lettered.inc_by(n);
                tracing::warn!(destination = %self.destination, %reason, status = items[0].1.status, events = n, file = %self.path().display(), "events dead-lettered");
            }
            Err(error) => {
                self.metrics.dropped("dead_letter_failed", n);
                tracing::error!(destination = %self.destination, %reason, events = n, file = %self.path().display(), %error, "cannot write dead letters: events lost");
            }
        }
        let events: Vec<&Event> = items.iter().map(|(e, _)| *e).collect();
        self.settle.events(&events);
    }

    fn encode(&self, event: &Event, cause: &Cause, dead_lettered_at: &str, body: &mut Vec<u8>) {
        #[derive(Serialize)]
        struct Head<'a> {
            dead_lettered_at: &'a str,
            destination: &'a str,
            #[serde(flatten)]
            cause: &'a Cause,
        }
        let mut cause = cause.clone();
        cause.error = cause.error.map(|e| redact(&e, &self.secrets));
        cause.response_excerpt = cause.response_excerpt.map(|e| redact(&e, &self.secrets));
        let head = Head {
            dead_lettered_at,
            destination: &self.destination,
            cause: &cause,
        };
        // Serializing plain strings and numbers cannot fail.
        let head = serde_json::to_vec(&head).unwrap_or_else(|_| b"{}".to_vec());
        body.extend_from_slice(&head[..head.len() - 1]); // reopen the object for the event
        body.extend_from_slice(b",\"event\":");
        event.write_json(body);
        body.extend_from_slice(b"}\n");
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The spellings on disk and in metrics are part of the interface: they never change.
    #[test]
    fn reasons_keep_their_spelling_and_read_back() {
        let cases = [
            (Reason::Rejected, "rejected"),
            (Reason::RetriesExhausted, "retries_exhausted"),
            (Reason::QueueFull, "queue_full"),
            (Reason::BacklogFull, "backlog_full"),
            (Reason::Shutdown, "shutdown"),
            (Reason::Removed, "removed"),
            (Reason::WriteFailed, "write_failed"),
            (Reason::DryRunWriteFailed, "dry_run_write_failed"),
            (Reason::InvalidRequest, "invalid_request"),
            (Reason::Refused("too_old"), "too_old"),
        ];
        for (reason, text) in cases {
            assert_eq!(reason.as_str(), text);
            let json = serde_json::to_string(&Cause::new(reason.clone())).expect("json");
            assert_eq!(json, format!("{{\"reason\":\"{text}\",\"attempts\":0}}"));
            let back: Cause = serde_json::from_str(&json).expect("cause");
            assert_eq!(back.reason, reason);
        }
        assert_eq!(
            Reason::parse("something_new"),
            Reason::Other("something_new".into())
        );
    }
}
