//! The hot path's stages run a fixed number of times, for counting instructions with
//! callgrind: counts repeat exactly for the same binary, where timings on a shared
//! two-core box move by ±20%. `scripts/instructions.sh` runs each stage twice, with
//! no rounds and with some, and prints the difference per event, so the setup (config,
//! fixture, binary start) drops out.
//!
//! `instructions <stage> <rounds>`; stages: `parse` (a 50-event NDJSON body through
//! `parse_body`, limits pre-scan included), `translate:<vendor>` (the fixture's first
//! 100 events through the vendor's translator, less the types it leaves out, as the
//! relay never hands it those; vendors `segment`, `ga4`, `tealium`, `webhook`).
//! Prints the number of events one round handles.

#[path = "common/hot_path.rs"]
mod hot_path;

use playrelay::event::{parse_body, BodyFormat, BodyLimits};
use std::hint::black_box;
use std::process::ExitCode;

const PARSE_EVENTS: usize = 50;
const TRANSLATE_EVENTS: usize = 100;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(stage), Some(rounds)) = (
        args.first(),
        args.get(1).and_then(|r| r.parse::<usize>().ok()),
    ) else {
        eprintln!("usage: instructions <parse|translate:VENDOR> <rounds>");
        return ExitCode::FAILURE;
    };
    // Fixed, so that the translators' output (and so their instructions) repeats.
    let now = time::macros::datetime!(2026-11-01 18:45:00 UTC);
    match stage.split_once(':') {
        None if stage == "parse" => {
            let body = hot_path::ndjson(PARSE_EVENTS);
            for _ in 0..rounds {
                let parsed = parse_body(
                    black_box(body.as_bytes()),
                    BodyFormat::Ndjson,
                    BodyLimits::new(1000),
                    now,
                );
                black_box(parsed).ok();
            }
            println!("{PARSE_EVENTS}");
        }
        Some(("translate", vendor)) => {
            let config = hot_path::config();
            let Some(translator) = config
                .destinations
                .get(vendor)
                .and_then(|d| d.translator().ok())
            else {
                eprintln!("no translator for {vendor:?}: segment, ga4, tealium or webhook");
                return ExitCode::FAILURE;
            };
            let batch = hot_path::batch(TRANSLATE_EVENTS, now);
            let refs: Vec<_> = batch
                .iter()
                .filter(|e| translator.sends_type(e.event_type()))
                .collect();
            for _ in 0..rounds {
                black_box(translator.translate(black_box(&refs), now));
            }
            println!("{}", refs.len());
        }
        _ => {
            eprintln!("unknown stage {stage:?}: parse or translate:VENDOR");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
