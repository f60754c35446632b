//! `playrelay test`: routing files kept in git get tests, like `vector test`. A cases
//! file holds input events and what must happen to each: which destinations receive it,
//! and values the translated vendor body must contain (JSON pointers).
//!
//! ```toml
//! sent_at = "2026-11-01T21:00:00Z"       # optional send time (GA4 refuses events > 72 h old)
//!
//! [[cases]]
//! name = "a pause reaches Segment with its position"
//! event = '''{"event_id": "…", "type": "playback.paused", …}'''
//! expect.destinations = ["local", "segment"]          # exactly these receive it
//! expect.values.segment = { "/batch/0/event" = "Video Playback Paused" }
//! ```
//!
//! Each destination's fate comes from the same plan the relay's worker follows
//! ([`crate::deliver::Planner`]): its privacy rules, the types it never sends, then its
//! translator. With `[qoe] enabled = true`, a case's events (`event` and any earlier
//! `events` of the session) also make the session's `session.summary`, which
//! `expect.summary.destinations` and `expect.summary.values` check the same way.

use crate::config::Config;
use crate::deliver::plan::{Output, Planner};
use crate::deliver::DestinationConfig;
use crate::dest::webhook::WebhookConfig;
use crate::event::Event;
use crate::route::{Decision, RouteTable};
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CasesFile {
    #[serde(default)]
    sent_at: Option<String>,
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    /// JSON text, or a TOML table of the same shape: the event `expect` checks.
    #[serde(default)]
    event: Option<EventInput>,
    /// More events of the case's sessions (before `event`), for their summaries.
    #[serde(default)]
    events: Vec<EventInput>,
    #[serde(default)]
    sent_at: Option<String>,
    expect: Expect,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum EventInput {
    Json(String),
    Table(Value),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    /// Exactly the destinations that must receive the event.
    #[serde(default)]
    destinations: Option<Vec<String>>,
    /// Per destination: JSON pointer → value, in the body it would send.
    #[serde(default)]
    values: BTreeMap<String, BTreeMap<String, Value>>,
    /// The same, for the `session.summary` of the case's events (`[qoe] enabled = true`).
    #[serde(default)]
    summary: Option<Outcome>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Outcome {
    #[serde(default)]
    destinations: Option<Vec<String>>,
    #[serde(default)]
    values: BTreeMap<String, BTreeMap<String, Value>>,
}

#[derive(Debug, thiserror::Error)]
pub enum CasesError {
    #[error("{file}: {message}")]
    Read { file: String, message: String },
    #[error(transparent)]
    Route(#[from] crate::route::RouteError),
}

/// The outcome: a readable report, and how many cases failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CasesReport {
    pub text: String,
    pub passed: usize,
    pub failed: usize,
}

pub fn run_file(config: &Config, path: &Path) -> Result<CasesReport, CasesError> {
    let text = std::fs::read_to_string(path).map_err(|e| CasesError::Read {
        file: path.display().to_string(),
        message: e.to_string(),
    })?;
    run(config, &text, path)
}

pub fn run(config: &Config, text: &str, path: &Path) -> Result<CasesReport, CasesError> {
    let file: CasesFile = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
            .unwrap_or(0);
        CasesError::Read {
            file: format!("{}:{line}", path.display()),
            message: e.message().to_string(),
        }
    })?;
    let mut index = HashMap::new();
    let names: Vec<&String> = config.destinations.keys().collect();
    for (i, name) in names.iter().enumerate() {
        index.insert((*name).clone(), i);
    }
    let table = RouteTable::new(&config.routes, &index)?;
    let mut report = CasesReport {
        text: String::new(),
        passed: 0,
        failed: 0,
    };
    for case in &file.cases {
        let problems = match check(config, &table, &names, case, file.sent_at.as_deref()) {
            Ok(problems) => problems,
            Err(problem) => vec![problem],
        };
        if problems.is_empty() {
            report.passed += 1;
            let _ = writeln!(report.text, "ok    {}", case.name);
        } else {
            report.failed += 1;
            let _ = writeln!(report.text, "FAIL  {}", case.name);
            for problem in problems {
                let _ = writeln!(report.text, "      {problem}");
            }
        }
    }
    let _ = writeln!(
        report.text,
        "{} passed, {} failed",
        report.passed, report.failed
    );
    Ok(report)
}

/// What one destination would do with the event.
enum Fate {
    Received(Value),
    LeftOut(String),
}

fn check(
    config: &Config,
    table: &RouteTable,
    names: &[&String],
    case: &Case,
    default_sent_at: Option<&str>,
) -> Result<Vec<String>, String> {
    let sent_at = match case.sent_at.as_deref().or(default_sent_at) {
        Some(text) => OffsetDateTime::parse(text, &Rfc3339)
            .map_err(|e| format!("sent_at {text:?} is not RFC 3339: {e}"))?,
        None => crate::system_clock()(),
    };
    let mut session = Vec::with_capacity(case.events.len() + 1);
    for (i, input) in case.events.iter().enumerate() {
        session.push(parse(input, sent_at).map_err(|e| format!("events[{i}]: {e}"))?);
    }
    let event = match &case.event {
        Some(input) => {
            let event = parse(input, sent_at)?;
            session.push(event.clone());
            Some(event)
        }
        None => None,
    };
    let mut problems = Vec::new();
    let expect = &case.expect;
    match &event {
        Some(event) => problems.extend(check_outcome(
            config,
            table,
            names,
            event,
            sent_at,
            expect.destinations.as_deref(),
            &expect.values,
            "",
        )?),
        None if expect.destinations.is_some() || !expect.values.is_empty() => problems.push(
            "expect.destinations and expect.values check `event`, which the case does not have"
                .into(),
        ),
        None => {}
    }
    if let Some(summary) = &expect.summary {
        let mut summaries = crate::preview::summaries(config, &session, sent_at);
        if !config.qoe.enabled {
            problems.push(
                "summary: [qoe] is not enabled in the config, so no session.summary is sent".into(),
            );
        } else if summaries.len() != 1 {
            problems.push(format!(
                "summary: the case's events make {} session summaries; expect.summary needs exactly one",
                summaries.len()
            ));
        } else {
            let summary_event = summaries.remove(0);
            problems.extend(check_outcome(
                config,
                table,
                names,
                &summary_event,
                sent_at,
                summary.destinations.as_deref(),
                &summary.values,
                "summary: ",
            )?);
        }
    }
    Ok(problems)
}

fn parse(input: &EventInput, sent_at: OffsetDateTime) -> Result<Event, String> {
    let json = match input {
        EventInput::Json(text) => text.clone(),
        EventInput::Table(value) => value.to_string(),
    };
    let raw: Box<serde_json::value::RawValue> =
        serde_json::from_str(&json).map_err(|e| format!("event is not JSON: {e}"))?;
    Event::from_json(&raw, sent_at).map_err(|e| format!("event is not valid: {e}"))
}

/// Routes one event and plans it at each destination it reaches; the problems found
/// against what the case expects, each starting with `prefix`.
#[allow(clippy::too_many_arguments)]
fn check_outcome(
    config: &Config,
    table: &RouteTable,
    names: &[&String],
    event: &Event,
    sent_at: OffsetDateTime,
    destinations: Option<&[String]>,
    values: &BTreeMap<String, BTreeMap<String, Value>>,
    prefix: &str,
) -> Result<Vec<String>, String> {
    let mut decision = Decision::default();
    table.decide(event, &mut decision);
    let mut fates = BTreeMap::new();
    for index in &decision.destinations {
        let name = names[*index];
        fates.insert(
            name.clone(),
            fate(config, &config.destinations[name], event, sent_at)?,
        );
    }
    let mut problems = Vec::new();
    if let Some(expected) = destinations {
        let mut expected = expected.to_vec();
        expected.sort();
        let got: Vec<String> = fates
            .iter()
            .filter(|(_, fate)| matches!(fate, Fate::Received(_)))
            .map(|(name, _)| name.clone())
            .collect();
        if got != expected {
            problems.push(format!(
                "{prefix}destinations: expected {}, got {}",
                list(&expected),
                list(&got)
            ));
            for (name, fate) in &fates {
                if let Fate::LeftOut(why) = fate {
                    problems.push(format!("  {prefix}{name}: routed but {why}"));
                }
            }
            if decision.destinations.is_empty() {
                problems.push(format!("  {prefix}no route matched the event"));
            }
        }
    }
    for (destination, values) in values {
        let body = match fates.get(destination) {
            Some(Fate::Received(body)) => body,
            Some(Fate::LeftOut(why)) => {
                problems.push(format!("{prefix}{destination}: {why}"));
                continue;
            }
            None => {
                problems.push(format!("{prefix}{destination}: does not receive the event"));
                continue;
            }
        };
        for (pointer, expected) in values {
            match body.pointer(pointer) {
                Some(got) if same(got, expected) => {}
                Some(got) => problems.push(format!(
                    "{prefix}{destination} {pointer}: expected {expected}, got {got}"
                )),
                None => problems.push(format!(
                    "{prefix}{destination} {pointer}: expected {expected}, but the body has no such value"
                )),
            }
        }
    }
    Ok(problems)
}

/// What the destination does with the event, by the plan its worker follows.
fn fate(
    config: &Config,
    destination: &DestinationConfig,
    event: &Event,
    sent_at: OffsetDateTime,
) -> Result<Fate, String> {
    let planner =
        Planner::new(destination, config.server.hash_salt.as_ref()).map_err(|e| e.to_string())?;
    let plan = planner.plan(&[event], sent_at);
    if let Some(refusal) = plan.left_out.first() {
        return Ok(Fate::LeftOut(if refusal.detail.is_empty() {
            format!("left out ({})", refusal.reason)
        } else {
            format!("left out ({}): {}", refusal.reason, refusal.detail)
        }));
    }
    let mut body = match plan.output {
        Output::Lines { body, .. } => body,
        Output::Requests(requests) => {
            let Some(request) = requests.first() else {
                return Ok(Fate::LeftOut("no request built".into()));
            };
            let mut body = request.body.to_vec();
            if request
                .headers
                .get(http::header::CONTENT_ENCODING)
                .is_some_and(|v| v.as_bytes() == b"gzip")
            {
                let mut plain = Vec::new();
                let mut decoder = flate2::read::GzDecoder::new(&body[..]);
                if std::io::Read::read_to_end(&mut decoder, &mut plain).is_ok() {
                    body = plain;
                }
            }
            body
        }
    };
    if body.last() == Some(&b'\n') {
        body.pop();
    }
    let mut value: Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        // NDJSON bodies and files: one event, one line.
        Err(_) => serde_json::from_slice(body.split(|b| *b == b'\n').next().unwrap_or(&[]))
            .unwrap_or(Value::Null),
    };
    // A JSON-array webhook body holds one event here: let pointers start at the event.
    let webhook = destination.kind.config::<WebhookConfig>().is_some();
    if let (true, Value::Array(items)) = (webhook, &mut value) {
        if items.len() == 1 {
            value = items.remove(0);
        }
    }
    Ok(Fate::Received(value))
}

/// Numbers compare by value (278 = 278.0); everything else exactly.
fn same(got: &Value, expected: &Value) -> bool {
    match (got.as_f64(), expected.as_f64()) {
        (Some(a), Some(b)) => a == b,
        _ => got == expected,
    }
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        format!("[{}]", names.join(", "))
    }
}
