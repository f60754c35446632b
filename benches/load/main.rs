//! End-to-end load benchmark: the release relay as its own process, local vendor
//! stand-ins that count what they receive, and a load generator, all on 127.0.0.1 and
//! all bounded in time. `cargo bench --bench load -- [--quick] [--duration S]
//! [--scenarios 1,2,3,4] [--json out.json]`; see docs/performance.md.
//!
//! Everything but the relay lives in this one process (stand-ins and load generator
//! share a tokio runtime), so the relay's peak RSS and CPU seconds are its own, read
//! from /proc.
//!
//! `vendors` (the stand-ins and what they count), `generator` (the load), `relay` (the
//! relay process), `scenarios` (what each runs), `run` (running one), `output` (table
//! and JSON); this file reads the arguments and runs the chosen scenarios.
// A load benchmark measures real elapsed time and stamps real wall-clock times.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]
// The report is one large `json!`.
#![recursion_limit = "256"]

mod generator;
mod output;
mod relay;
mod run;
mod scenarios;
mod vendors;

use generator::Template;
use output::{machine_state, print_table, report_json};
use relay::relay_binary;
use run::{run_scenario, Options};
use scenarios::scenarios;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use vendors::CONCURRENCY;

struct Args {
    json: Option<PathBuf>,
    duration: Duration,
    settle: Duration,
    scenarios: Vec<String>,
    /// `queue.max_events` of every destination; unset keeps the default (100,000).
    queue: Option<usize>,
    /// Load connections of every scenario; unset keeps each scenario's own.
    connections: Option<usize>,
    options: Options,
}

fn parse_args() -> Args {
    let mut args = Args {
        json: None,
        duration: Duration::from_secs(10),
        settle: Duration::from_secs(30),
        scenarios: Vec::new(),
        queue: None,
        connections: None,
        options: Options {
            vendor_latency: Duration::ZERO,
            vendor_jitter: Duration::ZERO,
            defaults: false,
        },
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--json" => args.json = it.next().map(PathBuf::from),
            "--duration" => {
                let secs: f64 = it.next().and_then(|s| s.parse().ok()).unwrap_or(10.0);
                args.duration = Duration::from_secs_f64(secs);
            }
            "--relay" => {
                if let Some(path) = it.next() {
                    std::env::set_var("PLAYRELAY_BENCH_RELAY", path);
                }
            }
            "--queue" => args.queue = it.next().and_then(|s| s.parse().ok()),
            "--connections" => args.connections = it.next().and_then(|s| s.parse().ok()),
            "--vendor-latency-ms" => {
                let ms = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
                args.options.vendor_latency = Duration::from_millis(ms);
            }
            "--vendor-jitter-ms" => {
                let ms = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
                args.options.vendor_jitter = Duration::from_millis(ms);
            }
            "--defaults" => args.options.defaults = true,
            "--settle" => {
                let secs: f64 = it.next().and_then(|s| s.parse().ok()).unwrap_or(30.0);
                args.settle = Duration::from_secs_f64(secs);
            }
            "--quick" => args.duration = Duration::from_secs(3),
            "--scenarios" => {
                args.scenarios = it
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            }
            // `cargo bench` passes --bench; filters and other flags are not ours.
            _ => {}
        }
    }
    args
}

fn main() {
    let args = parse_args();
    let mut machine = machine_state();
    if let Some(n) = args.queue {
        let _ = write!(machine, "; every destination: queue.max_events = {n}");
    }
    if let Some(n) = args.connections {
        let _ = write!(machine, "; every scenario: {n} connections");
    }
    let o = args.options;
    let _ = write!(
        machine,
        "; vendors answer in {} ± {} ms; {}",
        o.vendor_latency.as_millis(),
        o.vendor_jitter.as_millis(),
        if o.defaults {
            "shipped defaults (only endpoints set)".to_string()
        } else {
            format!("concurrency = {CONCURRENCY}, rate limits lifted")
        }
    );
    eprintln!("{machine}");
    eprintln!("relay: {}", relay_binary());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let template = Arc::new(Template::new());
    let mut reports = Vec::new();
    for mut scenario in scenarios(&args.scenarios, args.duration) {
        if let Some(n) = args.connections {
            scenario.load.connections = n;
        }
        eprintln!("running scenario {}: {}", scenario.id, scenario.title);
        let report = runtime.block_on(run_scenario(
            &scenario,
            template.clone(),
            args.settle,
            args.queue,
            args.options,
        ));
        eprintln!(
            "  accepted {:.0} events/s, delivered {}",
            report.accepted_per_s,
            report
                .destinations
                .iter()
                .map(|d| format!("{} {:.0}/s", d.name, d.events_per_s))
                .collect::<Vec<_>>()
                .join(", ")
        );
        reports.push(report);
    }
    print_table(&reports, &machine);
    if let Some(path) = &args.json {
        let value = report_json(&reports, &machine, args.options);
        let text = serde_json::to_string_pretty(&value).expect("json");
        std::fs::write(path, text).expect("write the JSON report");
        eprintln!("wrote {}", path.display());
    }
    runtime.shutdown_timeout(Duration::from_secs(2));
}
