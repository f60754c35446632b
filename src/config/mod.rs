//! `routes.toml`: typed, defaulted, and validated in one place ([`load`]), with every
//! error naming the file, the line and the field.

mod env;
mod load;

pub use load::{load_file, load_str, ConfigError, ConfigErrors};

use crate::dest::file::FileConfig;
use crate::dest::webhook::WebhookConfig;
use crate::dest::{BatchLimits, NameOverride};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where the config came from, for messages.
    pub source: PathBuf,
    pub server: ServerConfig,
    pub destinations: BTreeMap<String, DestinationConfig>,
    pub routes: Vec<RouteConfig>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Largest request body accepted, as sent (compressed or not).
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: usize,
    /// Largest body after gzip decompression.
    #[serde(default = "defaults::max_decompressed_bytes")]
    pub max_decompressed_bytes: usize,
    #[serde(default = "defaults::max_events_per_request")]
    pub max_events_per_request: usize,
    /// How long shutdown waits for queues to drain before giving up on what is left.
    #[serde(default = "defaults::drain_timeout_ms")]
    pub drain_timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DestinationConfig {
    pub name: String,
    pub kind: DestinationKind,
    pub common: DestinationCommon,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DestinationKind {
    Webhook(WebhookConfig),
    File(FileConfig),
}

impl DestinationKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            DestinationKind::Webhook(_) => "webhook",
            DestinationKind::File(_) => "file",
        }
    }
}

/// Keys every destination type takes, whatever its `type`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DestinationCommon {
    /// Per event type: a new name, or `false` to leave the type out.
    #[serde(default)]
    pub events: HashMap<String, NameOverride>,
    /// Pass the event's custom `properties` through where the vendor allows.
    #[serde(default = "defaults::yes")]
    pub properties: bool,
    #[serde(default)]
    pub batch: BatchConfig,
    #[serde(default)]
    pub queue: QueueConfig,
    /// Time allowed for one request, from connect to the end of the answer.
    #[serde(default = "defaults::timeout_ms")]
    pub timeout_ms: u64,
}

/// The keys of [`DestinationCommon`], which are split off before the type's own keys are read.
pub(crate) const COMMON_KEYS: &[&str] = &["events", "properties", "batch", "queue", "timeout_ms"];

#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    #[serde(default = "defaults::batch_max_events")]
    pub max_events: usize,
    #[serde(default = "defaults::batch_max_bytes")]
    pub max_bytes: usize,
    /// How long the first event of a batch may wait for others.
    #[serde(default = "defaults::batch_max_wait_ms")]
    pub max_wait_ms: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_events: defaults::batch_max_events(),
            max_bytes: defaults::batch_max_bytes(),
            max_wait_ms: defaults::batch_max_wait_ms(),
        }
    }
}

impl BatchConfig {
    pub fn limits(&self) -> BatchLimits {
        BatchLimits {
            max_events: self.max_events,
            max_bytes: self.max_bytes,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Events held for the destination before new ones are dropped.
    #[serde(default = "defaults::queue_max_events")]
    pub max_events: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max_events: defaults::queue_max_events(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    pub name: String,
    /// Globs on the event type.
    pub types: Vec<String>,
    pub to: Vec<String>,
    /// Share of sessions kept, 0.0–1.0; whole sessions, decided from `session.id`.
    pub sample: Option<f64>,
}

mod defaults {
    pub fn max_body_bytes() -> usize {
        1 << 20
    }
    pub fn max_decompressed_bytes() -> usize {
        8 << 20
    }
    pub fn max_events_per_request() -> usize {
        1000
    }
    pub fn drain_timeout_ms() -> u64 {
        10_000
    }
    pub fn yes() -> bool {
        true
    }
    pub fn timeout_ms() -> u64 {
        10_000
    }
    pub fn batch_max_events() -> usize {
        100
    }
    pub fn batch_max_bytes() -> usize {
        512 * 1024
    }
    pub fn batch_max_wait_ms() -> u64 {
        1_000
    }
    pub fn queue_max_events() -> usize {
        100_000
    }
}
