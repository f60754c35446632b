//! One request through breaker, rate limit, timeout and retries, to a settled end.

use super::concurrency::{Permit, Signal};
use super::dead_letter::{Cause, Reason};
use super::retry::{self, Backoff};
use super::{SendError, Stack};
use crate::dest::{redact, render_request, stated_reason, VendorRequest, Verdict};
use crate::event::{format_rfc3339, Event};
use std::sync::Arc;
use tokio::time::Instant;

/// delivered, or dead-lettered with why.
pub(super) async fn deliver(
    stack: &Stack,
    request: VendorRequest,
    events: Vec<Arc<Event>>,
    permit: Option<Permit>,
) {
    let Some(translator) = stack.planner.translator() else {
        return;
    };
    let refs: Vec<&Event> = events.iter().map(|e| e.as_ref()).collect();
    let n = refs.len() as u64;
    if let Some(dry_run) = &stack.dry_run {
        let text = render_request(&request, &stack.secrets);
        match dry_run.append(text.as_bytes(), false).await {
            Ok(()) => {
                stack.metrics.sent.inc_by(n);
                stack.settle.events(&refs);
            }
            Err(error) => {
                let mut cause = Cause::new(Reason::DryRunWriteFailed);
                cause.error = Some(error.to_string());
                stack.dead_letter(&refs, &cause).await;
            }
        }
        return;
    }
    let permit = match permit {
        Some(permit) => Some(permit),
        None => tokio::select! {
            permit = stack.concurrency.acquire() => Some(permit),
            _ = stack.abandoned() => {
                stack.give_up(&refs, &Cause::new(Reason::Shutdown)).await;
                return;
            }
        },
    };
    // Held while the request is at the vendor; given back while a retry waits, so a
    // slot means a request in flight, not one sleeping out a `Retry-After`.
    let mut permit = permit;
    let seed = xxhash_rust::xxh3::xxh3_64(refs[0].event_id().as_bytes());
    let mut backoff = Backoff::new(stack.config.common.retry, seed);
    let started = Instant::now();
    // Kept as a time, formatted only if the events end up dead-lettered.
    let first_attempt_at = (stack.clock)();
    let mut attempt = 0u32;
    // Attempts that use up `max_attempts`: a 429 that names its wait (`Retry-After`,
    // `X-RateLimit-Reset`) is the vendor pacing us, not a failure; `max_elapsed_ms`
    // still bounds how long such a request is retried.
    let mut counted = 0u32;
    let shutdown = |attempts: u32, error: Option<&str>| Cause {
        attempts,
        error: error.map(str::to_string),
        ..Cause::new(Reason::Shutdown)
    };
    loop {
        let admitted = async {
            stack.breaker.admit().await;
            stack.rate_limits.admit(refs.len()).await;
        };
        tokio::select! {
            _ = admitted => {}
            _ = stack.abandoned() => {
                stack.give_up(&refs, &shutdown(attempt, None)).await;
                return;
            }
        }
        attempt += 1;
        stack.metrics.requests.inc();
        let sent_at = Instant::now();
        let outcome = tokio::select! {
            outcome = stack.client.send(&request, stack.config.common.timeout_ms) => outcome,
            _ = stack.abandoned() => {
                let error = "shutdown timed out while the request was in flight";
                stack.give_up(&refs, &shutdown(attempt, Some(error))).await;
                return;
            }
        };
        let round_trip = sent_at.elapsed();
        stack
            .metrics
            .request_duration
            .observe(round_trip.as_secs_f64());
        // A request that could not be built never left: no round trip, no vendor health.
        let unsent = matches!(&outcome, Err(error) if !error.retryable());
        if !unsent {
            stack.concurrency.record(match &outcome {
                Ok(response) if matches!(response.status.as_u16(), 429 | 503) => {
                    Signal::BackPressure
                }
                Err(SendError::Timeout(_)) => Signal::BackPressure,
                _ => Signal::Answered(round_trip),
            });
        }
        // Delivered is the common case: everything below it is the failure path.
        let (verdict, mut cause, vendor_wait) = match outcome {
            Ok(response) => {
                stack.metrics.response(response.status.as_str());
                let verdict = translator.classify(&response);
                if verdict == Verdict::Delivered {
                    stack.breaker.success();
                    for finding in translator.findings(&response) {
                        stack.metrics.findings.inc();
                        tracing::warn!(destination = %stack.name, %finding, "vendor reported a problem");
                    }
                    stack.metrics.sent.inc_by(n);
                    stack.settle.events(&refs);
                    return;
                }
                let cause = Cause {
                    status: Some(response.status.as_u16()),
                    error: stated_reason(&response),
                    response_excerpt: Some(excerpt(&response.body)),
                    ..Cause::new(Reason::RetriesExhausted)
                };
                let wait = retry::vendor_wait(&response.headers, (stack.clock)().into());
                (verdict, cause, wait)
            }
            Err(error) => {
                stack.metrics.response(error.label());
                let cause = Cause {
                    error: Some(error.to_string()),
                    ..Cause::new(Reason::RetriesExhausted)
                };
                (Verdict::Retry, cause, None)
            }
        };
        cause.attempts = attempt;
        cause.first_attempt_at = Some(format_rfc3339(first_attempt_at));
        let last_attempt_at = format_rfc3339((stack.clock)());
        let summary = match (cause.status, &cause.error) {
            (Some(status), Some(error)) => format!("HTTP {status}: {error}"),
            (Some(status), None) => format!("HTTP {status}"),
            (None, Some(error)) => error.clone(),
            (None, None) => "request failed".to_string(),
        };
        // Vendor text and error chains can quote the request: redacted as dead letters are.
        stack
            .metrics
            .note_error(redact(&summary, &stack.secrets), last_attempt_at.clone());
        cause.last_attempt_at = Some(last_attempt_at);
        let url = || redact(&request.url, &stack.secrets);
        if unsent {
            stack.breaker.release();
            tracing::warn!(destination = %stack.name, url = %url(), error = ?cause.error, "the request could not be built: not sent, not retried");
            cause.reason = Reason::InvalidRequest;
            stack.dead_letter(&refs, &cause).await;
            return;
        }
        if verdict == Verdict::Reject {
            // The vendor answered: it is up, the request is what is wrong.
            stack.breaker.success();
            tracing::warn!(destination = %stack.name, url = %url(), status = cause.status, error = ?cause.error, "vendor rejected the request: not retried");
            cause.reason = Reason::Rejected;
            stack.dead_letter(&refs, &cause).await;
            return;
        }
        stack.breaker.failure();
        if !(cause.status == Some(429) && vendor_wait.is_some()) {
            counted += 1;
        }
        match backoff.next_wait(counted, started.elapsed(), vendor_wait) {
            Some(wait) => {
                tracing::debug!(destination = %stack.name, url = %url(), attempt, wait_ms = wait.as_millis() as u64, status = cause.status, error = ?cause.error, "retrying");
                stack.metrics.retries.inc();
                drop(permit.take());
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stack.abandoned() => {
                        cause.reason = Reason::Shutdown;
                        stack.give_up(&refs, &cause).await;
                        return;
                    }
                }
                tokio::select! {
                    slot = stack.concurrency.acquire() => permit = Some(slot),
                    _ = stack.abandoned() => {
                        cause.reason = Reason::Shutdown;
                        stack.give_up(&refs, &cause).await;
                        return;
                    }
                }
            }
            None => {
                cause.reason = Reason::RetriesExhausted;
                stack.dead_letter(&refs, &cause).await;
                return;
            }
        }
    }
}

/// The start of a vendor's answer, for dead letters and logs.
fn excerpt(body: &[u8]) -> String {
    let cut = body.len().min(512);
    String::from_utf8_lossy(&body[..cut]).replace(['\n', '\r'], " ")
}
