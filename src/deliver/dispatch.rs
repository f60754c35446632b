//! A batch, planned, becomes requests: each starts under the concurrency limit and is
//! followed to its end by [`super::attempt::deliver`]; what the plan left out is
//! counted or dead-lettered, and a file's lines are appended here.

use super::attempt::deliver;
use super::concurrency::Permit;
use super::dead_letter::{Cause, Reason};
use super::plan::Output;
use super::Stack;
use crate::dest::{Disposition, Refusal};
use crate::event::Event;
use std::sync::Arc;
use tokio::task::JoinSet;

/// Plans a batch (privacy, skipped types, translation) and starts its requests, each
/// under the concurrency limit; a file's lines are appended here.
pub(super) async fn dispatch(
    stack: &Arc<Stack>,
    batch: Vec<Arc<Event>>,
    tasks: &mut JoinSet<()>,
    mut permit: Option<Permit>,
) {
    // Dead letters keep the events as received; the plan holds what the destination sees.
    let originals: Vec<&Event> = batch.iter().map(|e| e.as_ref()).collect();
    let plan = stack.planner.plan(&originals, (stack.clock)());
    settle_refusals(stack, &originals, &plan.left_out).await;
    for note in &plan.notes {
        stack.metrics.dropped_params(note.reason, note.count as u64);
    }
    let requests = match plan.output {
        Output::Requests(requests) => requests,
        Output::Lines { body, events } => {
            let written: Vec<&Event> = events.iter().map(|i| originals[*i]).collect();
            if written.is_empty() {
                return;
            }
            let Some(file) = &stack.file else {
                return;
            };
            match file.append(&body, false).await {
                Ok(()) => {
                    stack.metrics.sent.inc_by(written.len() as u64);
                    stack.settle.events(&written);
                }
                Err(error) => {
                    let mut cause = Cause::new(Reason::WriteFailed);
                    cause.error = Some(error.to_string());
                    cause.attempts = 1;
                    stack.dead_letter(&written, &cause).await;
                }
            }
            return;
        }
    };
    for request in requests {
        let held: Vec<Arc<Event>> = request.events.iter().map(|i| batch[*i].clone()).collect();
        let stack = stack.clone();
        // The first request uses the slot the worker waited for; others wait their turn.
        let permit = permit.take();
        tasks.spawn(async move { deliver(&stack, request, held, permit).await });
    }
    // Reap finished tasks so the set stays small.
    while tasks.try_join_next().is_some() {}
}

async fn settle_refusals(stack: &Stack, events: &[&Event], refused: &[Refusal]) {
    let mut causes = Vec::new();
    for refusal in refused {
        match refusal.disposition {
            Disposition::Dropped => {
                if refusal.reason == "privacy" {
                    tracing::warn!(destination = %stack.name, event_id = %events[refusal.index].event_id(), error = %refusal.detail, "event left out by the privacy rules");
                }
                stack.metrics.dropped(refusal.reason, 1);
                stack.settle.one(events[refusal.index]);
            }
            Disposition::Refused => {
                let mut cause = Cause::new(Reason::Refused(refusal.reason));
                cause.error = Some(refusal.detail.clone());
                causes.push((events[refusal.index], cause));
            }
        }
    }
    // One durable append for the whole batch's refusals, not one sync per event.
    let items: Vec<(&Event, &Cause)> = causes.iter().map(|(e, c)| (*e, c)).collect();
    stack.dead_letter.write_each(&items, (stack.clock)()).await;
}
