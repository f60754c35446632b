//! Any `Retry-After` / `X-RateLimit-Reset` value a vendor sends: parsing never panics.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, SystemTime};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    for name in ["retry-after", "x-ratelimit-reset"] {
        let mut headers = HeaderMap::new();
        headers.insert(name, value.clone());
        let _ = playrelay::deliver::retry::vendor_wait(&headers, now);
    }
});
