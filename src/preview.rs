//! `playrelay translate`: the exact requests a destination would send for some events,
//! without sending them. Same parser, same batching limits, same plan (privacy rules,
//! skipped types, translator) as the relay's worker.

use crate::config::Config;
use crate::deliver::plan::{Output, Planner};
use crate::dest::file::FileConfig;
use crate::dest::render_request;
use crate::event::{parse_body, BodyFormat, BodyLimits, Event, SessionEnd};
use std::fmt::Write as _;
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    #[error("no destination named {0:?} in the config")]
    UnknownDestination(String),
    #[error("the input is not events: {0}")]
    Input(#[from] crate::event::BodyError),
    #[error(transparent)]
    Build(#[from] crate::dest::BuildError),
}

/// The rendered requests, then one comment line per event left out, and the events
/// the input had that are not valid.
pub fn preview(
    config: &Config,
    destination: &str,
    input: &[u8],
    sent_at: OffsetDateTime,
) -> Result<String, PreviewError> {
    let dest = config
        .destinations
        .get(destination)
        .ok_or_else(|| PreviewError::UnknownDestination(destination.to_string()))?;
    let format = match input.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => BodyFormat::Json,
        _ => BodyFormat::Ndjson,
    };
    let parsed = parse_body(
        input,
        format,
        BodyLimits {
            max_events: usize::MAX,
            json: config.server.json,
        },
        sent_at,
    )?;
    let mut parsed = parsed;
    // As ingest stamps them; there is no request here, so only the events' own
    // `sent_at` can say when the client sent them.
    crate::event::stamp_client(
        &mut parsed.events,
        None,
        &http::HeaderMap::new(),
        &http::Uri::from_static("/"),
    );
    let mut out = String::new();
    for rejection in &parsed.rejected {
        let _ = writeln!(
            out,
            "# input record {} is not valid: {}",
            rejection.index, rejection.error
        );
    }
    let mut events = parsed.events;
    // With `[qoe]` on, the relay also sends each session's summary once it closes: here
    // every session in the input closes at its end, as after its idle timeout.
    events.extend(summaries(config, &events, sent_at));
    let events: Vec<&Event> = events.iter().collect();
    let chunk = dest.common.batch.max_events.max(1);
    // One planner for the whole input, as a destination has one for its life: what its
    // translator remembers across batches (GA4's engagement clock) then shows here too.
    let planner = Planner::new(dest, config.server.hash_salt.as_ref())?;
    let secrets = planner.secrets();
    for (batch_index, batch) in events.chunks(chunk).enumerate() {
        let offset = batch_index * chunk;
        let plan = planner.plan(batch, sent_at);
        match (&plan.output, dest.kind.config::<FileConfig>()) {
            (Output::Lines { body, .. }, Some(file)) => {
                let _ = writeln!(
                    out,
                    "# append to {}\n{}",
                    file.path.display(),
                    String::from_utf8_lossy(body)
                );
            }
            (Output::Lines { .. }, _) => {}
            (Output::Requests(requests), _) => {
                for request in requests {
                    out.push_str(&render_request(request, &secrets));
                }
            }
        }
        for note in &plan.notes {
            let event = batch[note.index];
            let _ = writeln!(
                out,
                "# event {} ({} {}): sent, {}: {}",
                offset + note.index,
                event.event_type(),
                event.event_id(),
                note.reason,
                note.detail
            );
        }
        for refusal in &plan.left_out {
            let event = batch[refusal.index];
            let detail = if refusal.detail.is_empty() {
                String::new()
            } else {
                format!(": {}", refusal.detail)
            };
            let _ = writeln!(
                out,
                "# event {} ({} {}): {}: {}{detail}",
                offset + refusal.index,
                event.event_type(),
                event.event_id(),
                refusal.what(),
                refusal.reason,
            );
        }
    }
    Ok(out)
}

/// The `session.summary` events the relay would emit for the sessions of `events` when
/// `[qoe] enabled = true` (none otherwise), as if each session then went idle.
pub fn summaries(config: &Config, events: &[Event], received_at: OffsetDateTime) -> Vec<Event> {
    if !config.qoe.enabled {
        return Vec::new();
    }
    crate::qoe::summarize_events(events, SessionEnd::IdleTimeout, received_at)
}
