//! Output: the table, the JSON report and the machine state.

use crate::relay::relay_binary;
use crate::run::{Options, Report};
use crate::vendors::CONCURRENCY;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::process::Command;

pub(crate) fn fmt_ms(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.1}"),
        _ => "-".into(),
    }
}

pub(crate) fn print_table(reports: &[Report], machine: &str) {
    println!("\n{machine}\n");
    println!(
        "| scenario | accepted ev/s | req/s | ingest p50/p99 ms | destination | delivered ev/s | delivered/expected | e2e p50/p99 ms | peak RSS MB | CPU s |"
    );
    println!("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|");
    for r in reports {
        for (i, d) in r.destinations.iter().enumerate() {
            let head = if i == 0 {
                format!(
                    "| {} | {:.0} | {:.0} | {:.2} / {:.2} |",
                    r.id, r.accepted_per_s, r.requests_per_s, r.ingest_p50_ms, r.ingest_p99_ms
                )
            } else {
                "| | | | |".to_string()
            };
            let mut check = if d.hung {
                format!("{} / hung", d.delivered)
            } else if d.delivered == d.expected {
                format!("{} / {} ok", d.delivered, d.expected)
            } else {
                format!("{} / {} MISSING", d.delivered, d.expected)
            };
            if d.expected > 0 && !d.hung {
                let _ = write!(
                    check,
                    "; {:.1}% in 5 s",
                    100.0 * d.within_5s as f64 / d.expected as f64
                );
            }
            if d.backlog > 0 {
                let _ = write!(check, "; backlog {}", d.backlog);
            }
            if d.read_back > 0 {
                let _ = write!(
                    check,
                    "; read back from disk {} ({} of them still in memory)",
                    d.read_back, d.recalled
                );
            }
            if d.refused > 0 {
                let _ = write!(check, "; 429s {}", d.refused);
            }
            if let Some(peak) = d.concurrency.iter().map(|c| c.1).reduce(f64::max) {
                let _ = write!(check, "; limit ≤ {peak:.0}");
            }
            for (what, n) in &d.losses {
                let _ = write!(check, " ({what} {n})");
            }
            let tail = if i == 0 {
                format!("{:.1} | {:.2} |", r.peak_rss_mb, r.cpu_seconds)
            } else {
                " | |".to_string()
            };
            println!(
                "{head} {} | {:.0} | {check} | {} / {} | {tail}",
                d.name,
                d.events_per_s,
                fmt_ms(d.e2e_p50_ms),
                fmt_ms(d.e2e_p99_ms)
            );
        }
    }
    println!();
    for r in reports {
        println!(
            "scenario {}: {} — {} requests ({} failed), {} events accepted in {:.1} s, delivery finished {:.1} s after the load; CPU per accepted event: relay {:.1} µs, stand-ins and load generator {:.1} µs",
            r.id, r.title, r.requests, r.failed_requests, r.accepted, r.load_seconds, r.drain_seconds,
            per_event(r.cpu_seconds, r.accepted), per_event(r.harness_cpu_seconds, r.accepted)
        );
    }
}

pub(crate) fn report_json(reports: &[Report], machine: &str, options: Options) -> Value {
    json!({
        "machine": machine,
        "relay": relay_binary(),
        "destination_concurrency": if options.defaults { json!("shipped defaults") } else { json!(CONCURRENCY) },
        "vendor_latency_ms": options.vendor_latency.as_millis() as u64,
        "vendor_jitter_ms": options.vendor_jitter.as_millis() as u64,
        "scenarios": reports.iter().map(|r| json!({
            "id": r.id,
            "title": r.title,
            "connections": r.load.connections,
            "events_per_request": r.load.events_per_request,
            "paced_requests_per_second": r.load.rate,
            "load_seconds": r.load_seconds,
            "requests": r.requests,
            "failed_requests": r.failed_requests,
            "events_accepted": r.accepted,
            "accepted_events_per_second": r.accepted_per_s,
            "requests_per_second": r.requests_per_s,
            "ingest_latency_ms": {"p50": r.ingest_p50_ms, "p99": r.ingest_p99_ms},
            "all_delivered": r.all_delivered,
            "delivery_finished_after_load_seconds": r.drain_seconds,
            "relay_peak_rss_mb": r.peak_rss_mb,
            "relay_cpu_seconds": r.cpu_seconds,
            "slow_window_seconds": r.slow_window.map(|(a, b)| json!([a, b])),
            "relay_cpu_us_per_event": if r.accepted > 0 { r.cpu_seconds * 1e6 / r.accepted as f64 } else { 0.0 },
            "harness_cpu_seconds": r.harness_cpu_seconds,
            "harness_cpu_us_per_event": if r.accepted > 0 { r.harness_cpu_seconds * 1e6 / r.accepted as f64 } else { 0.0 },
            "destinations": r.destinations.iter().map(|d| json!({
                "name": d.name,
                "type": d.kind.name(),
                "hung": d.hung,
                "expected_events": d.expected,
                "delivered_events": d.delivered,
                "requests_received": d.requests,
                "relay_losses": d.losses.iter().map(|(k, v)| json!({"what": k, "events": v})).collect::<Vec<_>>(),
                "delivered_events_per_second": d.events_per_s,
                "delivered_within_5s_of_load_end": d.within_5s,
                "delivered_share_within_5s": if d.expected > 0 { d.within_5s as f64 / d.expected as f64 } else { 1.0 },
                "refused_on_purpose_429": d.refused,
                "backlog_at_end": d.backlog,
                "read_back_from_disk": d.read_back,
                "read_back_recalled": d.recalled,
                "concurrency_series": d.concurrency.iter().map(|(t, l, r)| json!([t, l, r])).collect::<Vec<_>>(),
                "e2e_latency_ms": {"p50": d.e2e_p50_ms, "p99": d.e2e_p99_ms},
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

pub(crate) fn machine_state() -> String {
    let run = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    format!(
        "machine: {cpus} CPUs ({model}); before the run: {}",
        run("uptime", &[])
    )
}

fn per_event(seconds: f64, events: u64) -> f64 {
    if events == 0 {
        return 0.0;
    }
    seconds * 1e6 / events as f64
}
