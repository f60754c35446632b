//! Running one scenario: stand-ins, the relay, the load, the wait for deliveries, and
//! what the relay and the stand-ins say afterwards.

use crate::generator::{run_load, LoadSpec, Template};
use crate::relay::{free_addr, get_from, RelayProcess};
use crate::scenarios::{Scenario, BIG_BACKLOG_BYTES};
use crate::vendors::{Behaviour, Kind, StandIn};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Options of the whole run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    pub(crate) vendor_latency: Duration,
    pub(crate) vendor_jitter: Duration,
    /// Shipped defaults: only the endpoints are set.
    pub(crate) defaults: bool,
}

pub(crate) struct DestinationReport {
    pub(crate) name: String,
    pub(crate) kind: Kind,
    pub(crate) hung: bool,
    pub(crate) expected: u64,
    pub(crate) delivered: u64,
    pub(crate) requests: u64,
    pub(crate) events_per_s: f64,
    pub(crate) e2e_p50_ms: Option<f64>,
    pub(crate) e2e_p99_ms: Option<f64>,
    /// From the relay's metrics: dead-lettered and dropped (not `unmapped`) events.
    pub(crate) losses: Vec<(String, u64)>,
    /// Events delivered by 5 s after the load's end.
    pub(crate) within_5s: u64,
    /// Requests the stand-in answered 429 on purpose.
    pub(crate) refused: u64,
    /// From the relay's metrics at the end: events still queued (on disk or in memory).
    pub(crate) backlog: u64,
    /// Events read back from the disk spool (and parsed again) because the destination
    /// fell out of its in-memory window.
    pub(crate) read_back: u64,
    /// Of those, the ones still in memory, so not parsed again.
    pub(crate) recalled: u64,
    /// (seconds since the load started, adaptive limit, average round trip s).
    pub(crate) concurrency: Vec<(f64, f64, f64)>,
}

pub(crate) struct Report {
    pub(crate) id: String,
    pub(crate) title: String,
    pub(crate) load: LoadSpec,
    pub(crate) requests: u64,
    pub(crate) failed_requests: u64,
    pub(crate) accepted: u64,
    pub(crate) load_seconds: f64,
    pub(crate) accepted_per_s: f64,
    pub(crate) requests_per_s: f64,
    pub(crate) ingest_p50_ms: f64,
    pub(crate) ingest_p99_ms: f64,
    pub(crate) destinations: Vec<DestinationReport>,
    pub(crate) all_delivered: bool,
    pub(crate) drain_seconds: f64,
    pub(crate) peak_rss_mb: f64,
    pub(crate) cpu_seconds: f64,
    /// This process's (stand-ins and load generator) over the same time as `cpu_seconds`.
    pub(crate) harness_cpu_seconds: f64,
    /// When the slowing vendor was slow, seconds since the load started.
    pub(crate) slow_window: Option<(f64, f64)>,
}

pub(crate) fn quantile_us(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() as f64) * q).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1] as f64 / 1000.0
}

/// Reads `metric{destination="…"} value` lines of one metric into a map.
pub(crate) fn per_destination(text: &str, metric: &str) -> BTreeMap<String, f64> {
    let prefix = format!("{metric}{{destination=\"");
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(&prefix)?;
            let (name, value) = rest.split_once("\"} ")?;
            Some((name.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

pub(crate) async fn run_scenario(
    scenario: &Scenario,
    template: Arc<Template>,
    settle: Duration,
    queue: Option<usize>,
    options: Options,
) -> Report {
    let epoch = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut stand_ins = Vec::new();
    let mut per_kind = [0usize; 4];
    for (kind, hang) in &scenario.destinations {
        per_kind[kind.index()] += 1;
        let name = format!("{}_{}", kind.name(), per_kind[kind.index()]);
        let behaviour = Behaviour {
            hold: options.vendor_latency,
            jitter: options.vendor_jitter,
            refuse_share: if scenario.special.refusing == Some(*kind) {
                0.3
            } else {
                0.0
            },
        };
        stand_ins.push(StandIn::start(&name, *kind, *hang, epoch, behaviour).await);
    }
    let addr = free_addr();
    let spool_budget = if scenario.special.big_backlog {
        format!("max_bytes = {BIG_BACKLOG_BYTES}\n")
    } else {
        String::new()
    };
    let mut toml = format!(
        "[spool]\nbackend = \"{}\"\ndir = \"{}\"\n{spool_budget}\n[server]\nlisten = \"{addr}\"\ndrain_timeout_ms = 1000\ndead_letter_dir = \"{}\"\ndry_run_dir = \"{}\"\n\n",
        scenario.spool,
        dir.path().join("spool").display(),
        dir.path().join("dead-letter").display(),
        dir.path().join("dry-run").display()
    );
    for s in &stand_ins {
        toml.push_str(
            &s.kind
                .toml(&s.name, &s.base(), s.hang, queue, options.defaults),
        );
        if scenario.special.big_backlog && s.hang && queue.is_none() {
            let _ = writeln!(toml, "queue = {{ max_bytes = {BIG_BACKLOG_BYTES} }}\n");
        }
    }
    let names: Vec<String> = stand_ins
        .iter()
        .map(|s| format!("\"{}\"", s.name))
        .collect();
    let _ = write!(
        toml,
        "[[routes]]\nname = \"everything\"\nmatch = {{ types = [\"*\"] }}\nto = [{}]\n",
        names.join(", ")
    );
    let config = dir.path().join("routes.toml");
    std::fs::write(&config, &toml).expect("write routes.toml");
    let mut relay = RelayProcess::start(&config, addr, &dir.path().join("relay.log"));
    if !relay.wait_ready(Duration::from_secs(20)).await {
        let log = std::fs::read_to_string(dir.path().join("relay.log")).unwrap_or_default();
        relay.stop().await;
        panic!("the relay did not become ready:\n{log}\n{toml}");
    }
    let cpu_before = relay.cpu_seconds();
    // The stand-ins and the generator take CPU from the relay on a small box: say how much.
    let harness_cpu = || crate::relay::cpu_seconds("/proc/self/stat", relay.clk_tck);
    let harness_before = harness_cpu();
    let load_start = epoch.elapsed();
    if let Some(kind) = scenario.special.slow {
        let at =
            |share: f64| (load_start + scenario.load.duration.mul_f64(share)).as_nanos() as u64;
        for s in stand_ins.iter().filter(|s| s.kind == kind) {
            s.slow_from_ns.store(at(0.3), Ordering::Relaxed);
            s.slow_to_ns.store(at(0.6), Ordering::Relaxed);
        }
    }
    // The adaptive limit and round trip of every destination, every 200 ms.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        let metrics_addr = relay.addr;
        tokio::spawn(async move {
            let mut series: BTreeMap<String, Vec<(f64, f64, f64)>> = BTreeMap::new();
            let started = Instant::now();
            while sampling.load(Ordering::Relaxed) {
                if let Some(text) = get_from(metrics_addr, "/metrics").await {
                    let text = String::from_utf8_lossy(&text);
                    let limits = per_destination(&text, "playrelay_destination_concurrency_limit");
                    let rtts = per_destination(&text, "playrelay_destination_rtt_seconds");
                    let t = started.elapsed().as_secs_f64();
                    for (name, limit) in limits {
                        let rtt = rtts.get(&name).copied().unwrap_or(0.0);
                        series.entry(name).or_default().push((t, limit, rtt));
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            series
        })
    };
    let mut load = run_load(addr, scenario.load, template).await;
    let load_end = Instant::now();
    // Delivery: wait until every healthy stand-in has what it must get, or nothing has
    // arrived for 3 s, or the settle time is over.
    let deadline = load_end + settle;
    let mut last_total = 0;
    let mut last_progress = Instant::now();
    loop {
        if load_end.elapsed() >= Duration::from_secs(5) {
            for s in &stand_ins {
                let _ = s.within_5s.compare_exchange(
                    u64::MAX,
                    s.events.load(Ordering::Relaxed),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
        }
        let done = stand_ins
            .iter()
            .filter(|s| !s.hang && scenario.special.rate_limited != Some(s.kind))
            .all(|s| s.events.load(Ordering::Relaxed) >= load.expected[s.kind.index()]);
        let total: u64 = stand_ins
            .iter()
            .map(|s| s.events.load(Ordering::Relaxed))
            .sum();
        if total != last_total {
            last_total = total;
            last_progress = Instant::now();
        }
        // A refusing vendor's last requests may sit out several `Retry-After`s in a row.
        let quiet = if scenario.special.refusing.is_some() {
            Duration::from_secs(10)
        } else {
            Duration::from_secs(3)
        };
        if done || Instant::now() >= deadline || last_progress.elapsed() > quiet {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain_seconds = load_end.elapsed().as_secs_f64();
    let cpu_seconds = relay.cpu_seconds() - cpu_before;
    let harness_cpu_seconds = harness_cpu() - harness_before;
    let peak_rss_mb = relay.peak_rss_mb();
    let mut losses = relay.losses().await;
    let final_metrics = relay
        .get("/metrics")
        .await
        .map(|t| String::from_utf8_lossy(&t).into_owned())
        .unwrap_or_default();
    let backlogs = per_destination(&final_metrics, "playrelay_destination_queue_depth");
    let read_backs = per_destination(&final_metrics, "playrelay_destination_backlog_read_total");
    let recalls = per_destination(
        &final_metrics,
        "playrelay_destination_backlog_recalled_total",
    );
    sampling.store(false, Ordering::Relaxed);
    let mut series = sampler.await.unwrap_or_default();
    relay.stop().await;

    load.latencies_us.sort_unstable();
    let load_seconds = load.elapsed.as_secs_f64();
    let destinations: Vec<DestinationReport> = stand_ins
        .iter()
        .map(|s| {
            let delivered = s.events.load(Ordering::Relaxed);
            let last = Duration::from_nanos(s.last_ns.load(Ordering::Relaxed));
            let window = last.saturating_sub(load_start).as_secs_f64();
            DestinationReport {
                name: s.name.clone(),
                kind: s.kind,
                hung: s.hang,
                expected: load.expected[s.kind.index()],
                delivered,
                requests: s.requests.load(Ordering::Relaxed),
                events_per_s: if window > 0.0 {
                    delivered as f64 / window
                } else {
                    0.0
                },
                e2e_p50_ms: s.latency.quantile_ms(0.50),
                e2e_p99_ms: s.latency.quantile_ms(0.99),
                losses: losses.remove(&s.name).unwrap_or_default(),
                within_5s: match s.within_5s.load(Ordering::Relaxed) {
                    // Everything arrived before 5 s had passed.
                    u64::MAX => delivered,
                    n => n,
                },
                refused: s.refused.load(Ordering::Relaxed),
                backlog: backlogs.get(&s.name).copied().unwrap_or(0.0) as u64,
                read_back: read_backs.get(&s.name).copied().unwrap_or(0.0) as u64,
                recalled: recalls.get(&s.name).copied().unwrap_or(0.0) as u64,
                concurrency: series.remove(&s.name).unwrap_or_default(),
            }
        })
        .collect();
    let all_delivered = destinations
        .iter()
        .filter(|d| !d.hung && scenario.special.rate_limited != Some(d.kind))
        .all(|d| d.delivered == d.expected);
    Report {
        id: scenario.id.clone(),
        title: scenario.title.clone(),
        load: scenario.load,
        requests: load.requests,
        failed_requests: load.failed_requests,
        accepted: load.accepted,
        load_seconds,
        accepted_per_s: load.accepted as f64 / load_seconds,
        requests_per_s: load.requests as f64 / load_seconds,
        ingest_p50_ms: quantile_us(&load.latencies_us, 0.50),
        ingest_p99_ms: quantile_us(&load.latencies_us, 0.99),
        destinations,
        all_delivered,
        drain_seconds,
        peak_rss_mb,
        cpu_seconds,
        harness_cpu_seconds,
        slow_window: scenario.special.slow.map(|_| {
            let d = scenario.load.duration.as_secs_f64();
            (0.3 * d, 0.6 * d)
        }),
    }
}
