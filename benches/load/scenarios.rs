//! Scenarios: what each one runs.

use crate::generator::LoadSpec;
use crate::vendors::{Kind, KINDS};
use std::time::Duration;

pub(crate) struct Scenario {
    pub(crate) id: String,
    pub(crate) title: String,
    /// (destination kind, hung?) per destination.
    pub(crate) destinations: Vec<(Kind, bool)>,
    pub(crate) load: LoadSpec,
    /// `[spool] backend`: "disk" (the default) or "memory".
    pub(crate) spool: &'static str,
    pub(crate) special: Special,
}

/// Vendors that misbehave on purpose in a scenario.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Special {
    /// Slows from its round trip to `SLOW` from 30% to 60% of the load, then recovers.
    pub(crate) slow: Option<Kind>,
    /// Answers 429 (`Retry-After: 1`) to 30% of requests.
    pub(crate) refusing: Option<Kind>,
    /// Held to its rate limit: not waited for after the load; its backlog is reported.
    pub(crate) rate_limited: Option<Kind>,
    /// Room for a backlog of millions: `[spool] max_bytes` and the hung destination's
    /// `queue.max_bytes` raised to 4 GiB, so nothing is shed and the backlog is all on disk.
    pub(crate) big_backlog: bool,
}

pub(crate) const BIG_BACKLOG_BYTES: u64 = 4 << 30;

pub(crate) fn scenarios(which: &[String], duration: Duration) -> Vec<Scenario> {
    let four: Vec<(Kind, bool)> = KINDS.iter().map(|k| (*k, false)).collect();
    let batches = LoadSpec {
        connections: 8,
        duration,
        events_per_request: 50,
        rate: None,
    };
    let browser = LoadSpec {
        connections: 64,
        duration,
        events_per_request: 1,
        rate: None,
    };
    let mut out = Vec::new();
    {
        out.push(Scenario {
            id: "1".into(),
            title: "full job: NDJSON x50 -> segment, ga4, tealium, webhook".into(),
            spool: "disk",
            special: Special::default(),
            destinations: four.clone(),
            load: batches,
        });
    }
    {
        out.push(Scenario {
            id: "1-memory".into(),
            title: "scenario 1 with the memory spool (the disk spool's baseline)".into(),
            spool: "memory",
            special: Special::default(),
            destinations: four.clone(),
            load: batches,
        });
    }
    {
        // Many clients at once, as at the edge: group commit covers more requests per
        // fdatasync than 8 connections can offer it.
        let many = LoadSpec {
            connections: 64,
            ..batches
        };
        out.push(Scenario {
            id: "5".into(),
            title: "scenario 1 from 64 connections, disk spool".into(),
            spool: "disk",
            special: Special::default(),
            destinations: four.clone(),
            load: many,
        });
        out.push(Scenario {
            id: "5-memory".into(),
            title: "scenario 1 from 64 connections, memory spool".into(),
            spool: "memory",
            special: Special::default(),
            destinations: four.clone(),
            load: many,
        });
        // The ingest latency the spool adds, as a curve: the 10 ms p99 goal is at 50k, and
        // the lower rates show where the box (relay, stand-ins and load generator sharing
        // two cores) stops keeping the schedule. `--scenarios 5-paced` runs all three.
        for events_per_s in [10_000u32, 25_000, 50_000] {
            let requests_per_s = f64::from(events_per_s) / many.events_per_request as f64;
            out.push(Scenario {
                id: format!("5-paced-{}k", events_per_s / 1_000),
                title: format!(
                    "disk spool paced at {requests_per_s:.0} requests/s x {} = {events_per_s} events/s, {} connections",
                    many.events_per_request, many.connections
                ),
                spool: "disk",
                special: Special::default(),
                destinations: four.clone(),
                load: LoadSpec {
                    rate: Some(requests_per_s),
                    ..many
                },
            });
        }
    }
    {
        // The spool issue's memory figure: a hung vendor owed two million events, all on
        // disk, while the other destination stays current. Paced so the backlog grows
        // steadily; it runs its own 70 s, whatever --duration says.
        out.push(Scenario {
            id: "7-backlog-2m".into(),
            title: "a hung webhook owed 2M events (30,000 events/s for 70 s), segment current"
                .into(),
            spool: "disk",
            special: Special {
                big_backlog: true,
                ..Special::default()
            },
            destinations: vec![(Kind::Segment, false), (Kind::Webhook, true)],
            load: LoadSpec {
                duration: Duration::from_secs(70),
                rate: Some(600.0),
                ..batches
            },
        });
    }
    {
        out.push(Scenario {
            id: "1-paced".into(),
            title: "scenario 1 paced at 2,000 requests/s = the 100,000 events/s target".into(),
            spool: "disk",
            special: Special::default(),
            destinations: four.clone(),
            load: LoadSpec {
                rate: Some(2_000.0),
                ..batches
            },
        });
    }
    {
        let two = vec![(Kind::Segment, false), (Kind::Ga4, false)];
        out.push(Scenario {
            id: "2".into(),
            title: "browser: 1 event/request, 64 connections -> segment, ga4".into(),
            spool: "disk",
            special: Special::default(),
            destinations: two.clone(),
            load: browser,
        });
        out.push(Scenario {
            id: "2-paced".into(),
            title: "browser paced at 15,000 requests/s (half the 30k target)".into(),
            spool: "disk",
            special: Special::default(),
            destinations: two,
            load: LoadSpec {
                rate: Some(15_000.0),
                ..browser
            },
        });
    }
    {
        out.push(Scenario {
            id: "3".into(),
            title: "scenario 1 with the tealium stand-in never answering".into(),
            spool: "disk",
            special: Special::default(),
            destinations: KINDS.iter().map(|k| (*k, *k == Kind::Tealium)).collect(),
            load: batches,
        });
    }
    {
        out.push(Scenario {
            id: "3-paced".into(),
            title: "scenario 3 paced at 2,000 requests/s (100,000 events/s)".into(),
            spool: "disk",
            special: Special::default(),
            destinations: KINDS.iter().map(|k| (*k, *k == Kind::Tealium)).collect(),
            load: LoadSpec {
                rate: Some(2_000.0),
                ..batches
            },
        });
    }
    {
        for n in [1usize, 4, 16] {
            out.push(Scenario {
                id: format!("4-{n}"),
                title: format!("cost growth: scenario 1 with {n} destination(s)"),
                spool: "disk",
                special: Special::default(),
                destinations: (0..n).map(|i| (KINDS[i % 4], false)).collect(),
                load: batches,
            });
        }
    }
    {
        // Round-trip scenarios: meant for `--vendor-latency-ms 100 --vendor-jitter-ms 40
        // --defaults` (`--scenarios rt`).
        let three = vec![
            (Kind::Segment, false),
            (Kind::Ga4, false),
            (Kind::Webhook, false),
        ];
        out.push(Scenario {
            id: "rt-full".into(),
            title: "full job: NDJSON x50 -> segment, ga4, webhook".into(),
            spool: "disk",
            special: Special::default(),
            destinations: three.clone(),
            load: batches,
        });
        out.push(Scenario {
            id: "rt-full-memory".into(),
            title: "rt-full with the memory spool (ingest not bound by disk commits)".into(),
            spool: "memory",
            special: Special::default(),
            destinations: three.clone(),
            load: batches,
        });
        let mut four = three.clone();
        four.push((Kind::Tealium, false));
        out.push(Scenario {
            id: "rt-tealium".into(),
            title: "full job with tealium at its rate limit (backlog on disk)".into(),
            spool: "disk",
            special: Special {
                rate_limited: Some(Kind::Tealium),
                ..Special::default()
            },
            destinations: four,
            load: batches,
        });
        let paced = LoadSpec {
            rate: Some(1_000.0),
            ..batches
        };
        out.push(Scenario {
            id: "rt-slow".into(),
            title: "the webhook slows to 2 s from 30% to 60% of the load, paced at 50,000 events/s"
                .into(),
            spool: "disk",
            special: Special {
                slow: Some(Kind::Webhook),
                ..Special::default()
            },
            destinations: three.clone(),
            load: paced,
        });
        // GA4 leaves heartbeats out (71% of the fixture): once it falls behind, its
        // reader reads the spool back, and a record it would only drop costs it a read.
        out.push(Scenario {
            id: "rt-slow-ga4".into(),
            title: "GA4 slows to 2 s from 30% to 60% of the load, paced at 50,000 events/s".into(),
            spool: "disk",
            special: Special {
                slow: Some(Kind::Ga4),
                ..Special::default()
            },
            destinations: three.clone(),
            load: paced,
        });
        out.push(Scenario {
            id: "rt-429".into(),
            title: "the webhook answers 429 (Retry-After: 1) to 30% of requests, paced at 50,000 events/s"
                .into(),
            spool: "disk",
            special: Special {
                refusing: Some(Kind::Webhook),
                ..Special::default()
            },
            destinations: three.clone(),
            load: paced,
        });
        out.push(Scenario {
            id: "rt-429-10k".into(),
            title:
                "rt-429 paced at 10,000 events/s: a backlog that fits the webhook's 256 MB budget"
                    .into(),
            spool: "disk",
            special: Special {
                refusing: Some(Kind::Webhook),
                ..Special::default()
            },
            destinations: three,
            load: LoadSpec {
                rate: Some(200.0),
                ..batches
            },
        });
    }
    // `--scenarios 1,2-paced` keeps "1" with its variants ("1-paced") and "2-paced".
    out.retain(|s| {
        which.is_empty()
            || which
                .iter()
                .any(|w| s.id == *w || s.id.starts_with(&format!("{w}-")))
    });
    out
}
