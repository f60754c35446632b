//! `routes.toml`: typed, defaulted, and validated in one place ([`load`]), with every
//! error naming the file, the line and the field.

mod env;
mod load;

pub use load::{load_file, load_str, ConfigError, ConfigErrors};

// Each component owns its settings; the config only gathers them.
use crate::deliver::DestinationConfig;
use crate::dest::Secret;
use crate::ingest::config::{Cidr, InboundTls, IngestRateLimit, SourceConfig};
use crate::route::RouteConfig;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where the config came from, for messages.
    pub source: PathBuf,
    pub server: ServerConfig,
    pub destinations: BTreeMap<String, DestinationConfig>,
    pub routes: Vec<RouteConfig>,
    /// `[sources.NAME]`: ingest keys, allowed origins, rate limits. Empty: open ingest.
    pub sources: BTreeMap<String, SourceConfig>,
    /// `[spool]`: where accepted events wait for their destinations.
    pub spool: crate::spool::SpoolConfig,
    /// `[qoe]`: per-session QoE and `session.summary` events.
    pub qoe: crate::qoe::QoeConfig,
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
    /// After SIGTERM, how long `/readyz` says 503 while ingest still answers, so load
    /// balancers take the relay out of rotation before it stops taking events.
    #[serde(default)]
    pub shutdown_grace_ms: u64,
    /// Where events that will not be delivered are written, one file per destination.
    #[serde(default = "defaults::dead_letter_dir")]
    pub dead_letter_dir: PathBuf,
    /// Where `dry_run` destinations write the requests they would send.
    #[serde(default = "defaults::dry_run_dir")]
    pub dry_run_dir: PathBuf,
    /// Trusted roots for outbound TLS.
    #[serde(default)]
    pub tls_roots: crate::deliver::TlsRoots,
    /// Where `/metrics` is served instead of `listen`; unset: on `listen`.
    #[serde(default)]
    pub admin_listen: Option<SocketAddr>,
    /// Peers whose `X-Forwarded-For` is believed (load balancers, CDNs).
    #[serde(default)]
    pub trusted_proxies: Vec<Cidr>,
    /// Open client connections at once; more wait in the kernel's backlog.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    /// Ingest requests handled at once; more get 503 with `Retry-After`.
    #[serde(default = "defaults::max_in_flight_requests")]
    pub max_in_flight_requests: usize,
    /// Time a client has to send a request's headers (and a TLS handshake).
    #[serde(default = "defaults::header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// Time a client has to send a request's body.
    #[serde(default = "defaults::body_read_timeout_ms")]
    pub body_read_timeout_ms: u64,
    /// Largest request head (request line and headers); at least 8192.
    #[serde(default = "defaults::max_header_bytes")]
    pub max_header_bytes: usize,
    /// Serve HTTPS with these files.
    #[serde(default)]
    pub tls: Option<InboundTls>,
    /// Requests per second per client address (IPv6: per /64).
    #[serde(default)]
    pub per_client_rate_limit: Option<IngestRateLimit>,
    /// Limits on the shape of the JSON of each request.
    #[serde(default)]
    pub json: crate::event::JsonLimits,
    /// The key of `hash_fields` (HMAC-SHA-256); take it from the environment.
    #[serde(default)]
    pub hash_salt: Option<Secret>,
}

impl Config {
    /// The most requests any destination may have in flight: what the shared
    /// client's keep-alive pool is sized to.
    pub fn max_in_flight(&self) -> usize {
        self.destinations
            .values()
            .map(|d| d.common.max_in_flight())
            .max()
            .unwrap_or(1)
    }
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
    pub fn dead_letter_dir() -> std::path::PathBuf {
        "playrelay-out/dead-letter".into()
    }
    pub fn dry_run_dir() -> std::path::PathBuf {
        "playrelay-out/dry-run".into()
    }
    pub fn max_connections() -> usize {
        10_000
    }
    pub fn max_in_flight_requests() -> usize {
        1_024
    }
    pub fn header_read_timeout_ms() -> u64 {
        10_000
    }
    pub fn body_read_timeout_ms() -> u64 {
        30_000
    }
    pub fn max_header_bytes() -> usize {
        16 * 1024
    }
}
