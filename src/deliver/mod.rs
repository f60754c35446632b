//! Delivery: each destination has its own bounded queue and worker, so a slow or
//! failing vendor never holds up another destination or the ingest response.
//!
//! queue (`Destination::offer`) → batch (`batch.rs`) → translate (`crate::dest`) →
//! send (`http.rs`, or the file sink in `file.rs`) → metrics.

mod batch;
mod file;
pub mod http;

pub use self::http::{HttpClient, TlsRoots};

use crate::config::{DestinationConfig, DestinationKind};
use crate::dest::webhook::{WebhookError, WebhookTranslator};
use crate::dest::{redact, Disposition, EventNames, Refusal, Translate, Verdict};
use crate::event::Event;
use crate::telemetry::{DestinationMetrics, Metrics};
use crate::Clock;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// The sending side of a destination: what routing hands events to.
pub struct Destination {
    pub name: String,
    queue: mpsc::Sender<Arc<Event>>,
    pub metrics: Arc<DestinationMetrics>,
}

impl Destination {
    /// Queues an event without waiting. A full queue drops the newest event, counted.
    pub fn offer(&self, event: Arc<Event>) -> bool {
        self.metrics.received.inc();
        match self.queue.try_send(event) {
            Ok(()) => {
                self.metrics.queue_depth.inc();
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.dropped("queue_full", 1);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.metrics.dropped("shutting_down", 1);
                false
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("destination {name}: {source}")]
    Webhook { name: String, source: WebhookError },
}

/// Starts a destination's worker. Dropping every clone of the returned [`Destination`]
/// closes its queue: the worker sends what is left and ends. Setting `abandon` to true
/// makes it give up at once, counting what it still holds as dropped.
pub fn start(
    config: &DestinationConfig,
    client: &HttpClient,
    metrics: &Metrics,
    clock: Clock,
    abandon: watch::Receiver<bool>,
) -> Result<(Destination, JoinHandle<()>), BuildError> {
    let names = EventNames::new(config.common.events.clone());
    let sink = match &config.kind {
        DestinationKind::Webhook(webhook) => Sink::Http {
            translator: Box::new(
                WebhookTranslator::new(
                    webhook,
                    names,
                    config.common.properties,
                    config.common.batch.limits(),
                )
                .map_err(|source| BuildError::Webhook {
                    name: config.name.clone(),
                    source,
                })?,
            ),
            client: client.clone(),
        },
        DestinationKind::File(file) => Sink::File(file::FileSink::new(
            &file.path,
            names,
            config.common.properties,
        )),
    };
    let (sender, receiver) = mpsc::channel(config.common.queue.max_events);
    let metrics = Arc::new(metrics.destination(&config.name));
    let worker = Worker {
        config: config.clone(),
        sink,
        metrics: metrics.clone(),
        queue: receiver,
        clock,
        abandon,
    };
    let handle = tokio::spawn(worker.run());
    Ok((
        Destination {
            name: config.name.clone(),
            queue: sender,
            metrics,
        },
        handle,
    ))
}

enum Sink {
    Http {
        translator: Box<dyn Translate>,
        client: HttpClient,
    },
    File(file::FileSink),
}

struct Worker {
    config: DestinationConfig,
    sink: Sink,
    metrics: Arc<DestinationMetrics>,
    queue: mpsc::Receiver<Arc<Event>>,
    clock: Clock,
    abandon: watch::Receiver<bool>,
}

impl Worker {
    async fn run(mut self) {
        let mut abandon = self.abandon.clone();
        loop {
            let batch = tokio::select! {
                batch = batch::next_batch(&mut self.queue, &self.config.common.batch) => batch,
                _ = abandon.wait_for(|abandon| *abandon) => break,
            };
            if batch.is_empty() {
                return; // queue closed and drained
            }
            let n = batch.len() as i64;
            self.metrics.queue_depth.dec_by(n);
            self.metrics.in_flight.inc_by(n);
            tokio::select! {
                _ = self.process(&batch) => {}
                _ = abandon.wait_for(|abandon| *abandon) => {
                    // Settled parts of the batch already left in_flight.
                    let unsettled = self.metrics.in_flight.get().max(0) as u64;
                    self.metrics.in_flight.set(0);
                    self.metrics.dropped("shutdown_timeout", unsettled);
                    break;
                }
            }
        }
        self.abandon_queue();
    }

    /// Counts what is still queued as dropped once shutdown stops waiting for it.
    fn abandon_queue(&mut self) {
        self.queue.close();
        let mut left = 0;
        while self.queue.try_recv().is_ok() {
            left += 1;
        }
        self.metrics.queue_depth.dec_by(left as i64);
        if left > 0 {
            self.metrics.dropped("shutdown_timeout", left);
            tracing::warn!(destination = %self.config.name, events = left, "shutdown timed out: queued events dropped");
        }
    }

    async fn process(&mut self, batch: &[Arc<Event>]) {
        let events: Vec<&Event> = batch.iter().map(|e| e.as_ref()).collect();
        match &mut self.sink {
            Sink::Http { translator, client } => {
                let translation = translator.translate(&events, (self.clock)());
                settle_refusals(&self.metrics, &self.config.name, &translation.refused);
                for request in &translation.requests {
                    let n = request.events.len() as u64;
                    self.metrics.requests.inc();
                    let secrets = translator.secrets();
                    let url = redact(&request.url, &secrets);
                    let outcome = client.send(request, self.config.common.timeout_ms).await;
                    match outcome {
                        Ok(response) => match translator.classify(&response) {
                            Verdict::Delivered => {
                                for finding in translator.findings(&response) {
                                    tracing::warn!(destination = %self.config.name, %finding, "vendor reported a problem");
                                }
                                self.metrics.sent.inc_by(n);
                            }
                            verdict => {
                                let excerpt = redact(&excerpt(&response.body), &secrets);
                                tracing::warn!(destination = %self.config.name, %url, status = response.status.as_u16(), ?verdict, %excerpt, events = n, "vendor did not accept the request");
                                self.metrics.failed.inc_by(n);
                            }
                        },
                        Err(error) => {
                            let error = redact(&error.to_string(), &secrets);
                            tracing::warn!(destination = %self.config.name, %url, %error, events = n, "request failed");
                            self.metrics.failed.inc_by(n);
                        }
                    }
                    self.metrics.in_flight.dec_by(n as i64);
                }
            }
            Sink::File(sink) => {
                let (written, refused) = sink.write(&events).await;
                settle_refusals(&self.metrics, &self.config.name, &refused);
                match written {
                    Ok(n) => {
                        self.metrics.sent.inc_by(n);
                    }
                    Err((n, error)) => {
                        tracing::warn!(destination = %self.config.name, %error, events = n, "file write failed");
                        self.metrics.failed.inc_by(n);
                    }
                }
                self.metrics
                    .in_flight
                    .dec_by((events.len() - refused.len()) as i64);
            }
        }
    }
}

fn settle_refusals(metrics: &DestinationMetrics, destination: &str, refused: &[Refusal]) {
    for refusal in refused {
        match refusal.disposition {
            Disposition::Dropped => metrics.dropped(refusal.reason, 1),
            Disposition::Refused => {
                tracing::warn!(destination, reason = refusal.reason, detail = %refusal.detail, "event cannot be sent to this vendor");
                metrics.failed.inc();
            }
        }
        metrics.in_flight.dec();
    }
}

/// The start of a vendor's answer, for logs.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(512)]);
    text.replace(['\n', '\r'], " ")
}
