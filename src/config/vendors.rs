//! One table of destination types and their defaults: what a new vendor fills in
//! (besides its own file in `dest/` and its arms in `dest::vendors`).

use super::{BatchConfig, DestinationConfig, RateLimitConfig};
use crate::dest::{BuildError, EventNames, Translate};

/// A destination type's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vendor {
    /// The `type` value in routes.toml.
    pub type_name: &'static str,
    /// `batch.max_events` and `batch.max_bytes` when unset: as large as the vendor
    /// takes in one request, so round trips carry the most events.
    pub batch: (usize, usize),
    /// How far an adaptive limit may climb when `max_concurrency` is unset.
    pub max_concurrency: usize,
    /// The vendor's documented rate limit, applied when `rate_limit` is unset.
    pub rate_limit: Option<RateLimitConfig>,
}

/// Every destination type. Batches: Segment 2,500 events and 480 KB per `/v1/batch`
/// (its own library's cap under the 500 KB limit); a webhook 500 events and 512 KB
/// (under the common 1 MB body limit of web servers); GA4 and Tealium split each batch
/// by client (25) and visitor (10) per request, their batch is what one translation
/// sorts. Concurrency, with round trips of about 100 ms: Segment 100 requests in flight
/// is its documented ~1,000 requests/s; Tealium's 100 events/s is 10 requests of 10 a
/// second, so 8 is plenty; GA4 states no rate but sends at most 25 events of one client
/// per request, so it needs many; a webhook is the user's own server: 128, raise it
/// with `max_concurrency`. Rate limits: Tealium 100 events/s per account, Segment about
/// 1,000 requests/s per workspace.
pub const VENDORS: [Vendor; 5] = [
    Vendor {
        type_name: "webhook",
        batch: (500, 512 * 1024),
        max_concurrency: 128,
        rate_limit: None,
    },
    Vendor {
        type_name: "file",
        batch: (1000, 1 << 20),
        max_concurrency: 1,
        rate_limit: None,
    },
    Vendor {
        type_name: "segment",
        batch: (
            crate::dest::segment::MAX_REQUEST_EVENTS,
            crate::dest::segment::MAX_REQUEST_BYTES,
        ),
        max_concurrency: 100,
        rate_limit: Some(RateLimitConfig {
            requests_per_second: Some(1000),
            events_per_second: None,
            burst: None,
        }),
    },
    Vendor {
        type_name: "ga4",
        batch: (500, 512 * 1024),
        max_concurrency: 256,
        rate_limit: None,
    },
    Vendor {
        type_name: "tealium",
        batch: (100, 512 * 1024),
        max_concurrency: 8,
        rate_limit: Some(RateLimitConfig {
            requests_per_second: None,
            events_per_second: Some(100),
            burst: None,
        }),
    },
];

/// What an unknown type gets (only a webhook-like default: the loader refuses
/// unknown types, so this is never a real destination's).
const FALLBACK: Vendor = VENDORS[0];

/// The defaults of a destination type.
pub fn vendor(type_name: &str) -> &'static Vendor {
    VENDORS
        .iter()
        .find(|v| v.type_name == type_name)
        .unwrap_or(&FALLBACK)
}

/// How far an adaptive limit may climb when `max_concurrency` is unset.
pub fn max_concurrency_default(type_name: &str) -> usize {
    vendor(type_name).max_concurrency
}

impl RateLimitConfig {
    /// The documented vendor limit, if the vendor has one.
    pub fn vendor_default(type_name: &str) -> Option<RateLimitConfig> {
        vendor(type_name).rate_limit
    }
}

impl BatchConfig {
    /// Batch sizes for a vendor when `batch.max_events` / `max_bytes` are unset.
    pub fn vendor_default(type_name: &str) -> BatchConfig {
        let (max_events, max_bytes) = vendor(type_name).batch;
        BatchConfig {
            max_events,
            max_bytes,
            ..BatchConfig::default()
        }
    }
}

/// The translator of an HTTP destination, with its common keys applied.
pub fn build_translator(config: &DestinationConfig) -> Result<Box<dyn Translate>, BuildError> {
    config.kind.translator(
        EventNames::new(config.common.events.clone()),
        config.common.properties,
        config.common.batch.limits(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_names_every_destination_type_once() {
        let names: Vec<&str> = VENDORS.iter().map(|v| v.type_name).collect();
        assert_eq!(names, ["webhook", "file", "segment", "ga4", "tealium"]);
        assert_eq!(
            super::super::DESTINATION_TYPES,
            "webhook, file, segment, ga4 or tealium"
        );
    }
}
