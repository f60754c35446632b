//! `playrelay translate`: the exact requests a destination would send for some events,
//! without sending them. Same parser, same batching limits, same translator.

use crate::config::{Config, DestinationKind};
use crate::dest::file::encode_lines;
use crate::dest::{build_translator, render_request, Disposition, EventNames, Refusal};
use crate::event::{parse_body, BodyFormat, BodyLimits, Event};
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
    // The destination's privacy rules, as the worker applies them before translating.
    let mut visible = Vec::with_capacity(parsed.events.len());
    let policy = crate::privacy::Policy::new(&dest.common, config.server.hash_salt.as_ref());
    for (index, event) in parsed.events.into_iter().enumerate() {
        let Some(policy) = &policy else {
            visible.push(event);
            continue;
        };
        if !policy.consents(&event) {
            let _ = writeln!(
                out,
                "# event {index} ({} {}): dropped: consent",
                event.event_type(),
                event.event_id()
            );
            continue;
        }
        match policy.apply(&event) {
            Ok(rewritten) => visible.push(rewritten),
            Err(error) => {
                let _ = writeln!(
                    out,
                    "# event {index} ({} {}): dropped: privacy: {error}",
                    event.event_type(),
                    event.event_id()
                );
            }
        }
    }
    let events: Vec<&Event> = visible.iter().collect();
    let chunk = dest.common.batch.max_events.max(1);
    // One translator for the whole input, as a destination has one for its life: what
    // it remembers across batches (GA4's engagement clock) then shows here too.
    let translator = match &dest.kind {
        DestinationKind::File(_) => None,
        _ => Some(build_translator(dest)?),
    };
    for (batch_index, batch) in events.chunks(chunk).enumerate() {
        let offset = batch_index * chunk;
        let refused: Vec<Refusal> = match (&dest.kind, &translator) {
            (DestinationKind::File(file), _) => {
                let names = EventNames::new(dest.common.events.clone());
                let (body, _, refused) = encode_lines(batch, &names, dest.common.properties);
                let _ = writeln!(
                    out,
                    "# append to {}\n{}",
                    file.path.display(),
                    String::from_utf8_lossy(&body)
                );
                refused
            }
            (_, None) => Vec::new(),
            (_, Some(translator)) => {
                let translation = translator.translate(batch, sent_at);
                let secrets = translator.secrets();
                for request in &translation.requests {
                    out.push_str(&render_request(request, &secrets));
                }
                for note in &translation.notes {
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
                translation.refused
            }
        };
        for refusal in refused {
            let event = batch[refusal.index];
            let what = match refusal.disposition {
                Disposition::Dropped => "dropped",
                Disposition::Refused => "refused (dead-lettered)",
            };
            let _ = writeln!(
                out,
                "# event {} ({} {}): {what}: {}: {}",
                offset + refusal.index,
                event.event_type(),
                event.event_id(),
                refusal.reason,
                refusal.detail
            );
        }
    }
    Ok(out)
}
