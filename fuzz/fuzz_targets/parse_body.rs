//! Bytes into the ingest parser, as JSON and as NDJSON, with tight shape limits: it
//! must never panic, and never accept more events than the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use playrelay::event::{parse_body, BodyFormat, BodyLimits, JsonLimits};

fuzz_target!(|data: &[u8]| {
    let limits = BodyLimits {
        max_events: 20,
        json: JsonLimits {
            max_depth: 8,
            max_string_bytes: 256,
            max_fields: 16,
            max_array_items: 16,
        },
    };
    for format in [BodyFormat::Json, BodyFormat::Ndjson] {
        if let Ok(parsed) = parse_body(data, format, limits, time::OffsetDateTime::UNIX_EPOCH) {
            assert!(parsed.events.len() + parsed.rejected.len() <= 20);
        }
    }
});
