//! Which destinations an event goes to: routes match on the event type by glob, may
//! sample whole sessions, and an event reaches each destination at most once however
//! many routes pick it.

use crate::event::{Event, EventType};
use globset::{Glob, GlobBuilder, GlobMatcher};
use std::collections::HashMap;
use xxhash_rust::xxh3::xxh3_64;

/// Compiles a type glob; `*` spans dots, so `playback.*` and `*` work as users expect.
pub fn compile_glob(pattern: &str) -> Result<Glob, globset::Error> {
    GlobBuilder::new(pattern)
        .literal_separator(false)
        .backslash_escape(true)
        .build()
}

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("route {route}: bad glob {pattern:?}: {source}")]
    Glob {
        route: String,
        pattern: String,
        source: globset::Error,
    },
    #[error("route {route}: no destination named {destination:?}")]
    UnknownDestination { route: String, destination: String },
}

#[derive(Debug)]
struct CompiledRoute {
    name: String,
    matchers: Vec<GlobMatcher>,
    targets: Vec<usize>,
    /// Sessions whose hash is below this are kept; `None` keeps all.
    sample_below: Option<u64>,
    /// Ingest sources the event must come from; empty: any.
    sources: Vec<String>,
}

/// What routing decided for one event.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Destination indices, each once.
    pub destinations: Vec<usize>,
    /// Indices of routes that matched the type but sampled the session out.
    pub sampled_out: Vec<usize>,
}

#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<CompiledRoute>,
    /// For every contract type, the routes whose globs match it, worked out once so the
    /// per-event path runs no glob; only `custom.*` types are matched per event.
    /// The routes each contract type matches, by `EventType as usize`.
    routes_by_type: Vec<Vec<usize>>,
}

impl RouteTable {
    /// `destinations` maps destination names to their index in the relay.
    pub fn new(
        routes: &[RouteConfig],
        destinations: &HashMap<String, usize>,
    ) -> Result<RouteTable, RouteError> {
        let mut compiled = Vec::with_capacity(routes.len());
        for route in routes {
            let mut matchers = Vec::with_capacity(route.types.len());
            for pattern in &route.types {
                let glob = compile_glob(pattern).map_err(|source| RouteError::Glob {
                    route: route.name.clone(),
                    pattern: pattern.clone(),
                    source,
                })?;
                matchers.push(glob.compile_matcher());
            }
            let mut targets = Vec::with_capacity(route.to.len());
            for name in &route.to {
                let index =
                    *destinations
                        .get(name)
                        .ok_or_else(|| RouteError::UnknownDestination {
                            route: route.name.clone(),
                            destination: name.clone(),
                        })?;
                if !targets.contains(&index) {
                    targets.push(index);
                }
            }
            compiled.push(CompiledRoute {
                name: route.name.clone(),
                matchers,
                targets,
                sample_below: route.sample.map(sample_threshold),
                sources: route.sources.clone(),
            });
        }
        let routes_by_type = EventType::ALL
            .iter()
            .map(|ty| type_matches(&compiled, ty.as_str()))
            .collect();
        Ok(RouteTable {
            routes: compiled,
            routes_by_type,
        })
    }

    pub fn empty() -> RouteTable {
        RouteTable {
            routes: Vec::new(),
            routes_by_type: vec![Vec::new(); EventType::ALL.len()],
        }
    }

    pub fn route_names(&self) -> impl Iterator<Item = &str> {
        self.routes.iter().map(|r| r.name.as_str())
    }

    pub fn decide(&self, event: &Event, decision: &mut Decision) {
        decision.destinations.clear();
        decision.sampled_out.clear();
        let event_type = event.event_type();
        let custom;
        let matching = match event.known_type() {
            Some(ty) => &self.routes_by_type[ty as usize],
            None => {
                custom = type_matches(&self.routes, event_type);
                &custom
            }
        };
        let mut session_hash = None;
        for &index in matching {
            let route = &self.routes[index];
            if !route.sources.is_empty()
                && !event
                    .source
                    .as_deref()
                    .is_some_and(|source| route.sources.iter().any(|s| s == source))
            {
                continue;
            }
            if let Some(below) = route.sample_below {
                let hash =
                    *session_hash.get_or_insert_with(|| xxh3_64(event.body.session.id.as_bytes()));
                if hash >= below {
                    decision.sampled_out.push(index);
                    continue;
                }
            }
            for target in &route.targets {
                if !decision.destinations.contains(target) {
                    decision.destinations.push(*target);
                }
            }
        }
    }
}

/// The indices of the routes whose type globs match `event_type`, in route order.
fn type_matches(routes: &[CompiledRoute], event_type: &str) -> Vec<usize> {
    routes
        .iter()
        .enumerate()
        .filter(|(_, route)| route.matchers.iter().any(|m| m.is_match(event_type)))
        .map(|(index, _)| index)
        .collect()
}

/// Maps a share in 0.0–1.0 to a hash threshold; 1.0 keeps every session.
fn sample_threshold(share: f64) -> u64 {
    if share >= 1.0 {
        u64::MAX
    } else if share <= 0.0 {
        0
    } else {
        (share * u64::MAX as f64) as u64
    }
}

/// One `[[routes]]` entry, as the config loader checked it.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    pub name: String,
    /// Globs on the event type.
    pub types: Vec<String>,
    pub to: Vec<String>,
    /// Share of sessions kept, 0.0–1.0; whole sessions, decided from `session.id`.
    pub sample: Option<f64>,
    /// Ingest sources the event must have come through; empty: any.
    pub sources: Vec<String>,
}

/// What is wrong with a route's values; the loader adds file, line and field.
#[derive(Debug, thiserror::Error)]
pub enum RouteConfigError {
    /// `types[index]` is not a glob.
    #[error("bad glob {pattern:?}: {source}")]
    Glob {
        index: usize,
        pattern: String,
        source: globset::Error,
    },
    #[error("{0} is outside 0.0-1.0")]
    Sample(f64),
}

impl RouteConfig {
    /// What the types alone cannot check: every glob compiles, the sample is a share.
    pub fn validate(&self) -> Vec<RouteConfigError> {
        let mut problems = Vec::new();
        for (index, pattern) in self.types.iter().enumerate() {
            if let Err(source) = compile_glob(pattern) {
                problems.push(RouteConfigError::Glob {
                    index,
                    pattern: pattern.clone(),
                    source,
                });
            }
        }
        if let Some(v) = self.sample {
            if !(0.0..=1.0).contains(&v) || v.is_nan() {
                problems.push(RouteConfigError::Sample(v));
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;
    use time::OffsetDateTime;

    #[test]
    fn validate_names_each_bad_glob_by_index_and_a_sample_outside_a_share() {
        let route = RouteConfig {
            name: "r".into(),
            types: vec!["playback.*".into(), "ad.[".into()],
            to: vec!["d".into()],
            sample: Some(1.5),
            sources: Vec::new(),
        };
        let problems = route.validate();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            matches!(&problems[0], RouteConfigError::Glob { index: 1, pattern, .. } if pattern == "ad.["),
            "{problems:?}"
        );
        assert!(problems[0].to_string().starts_with("bad glob \"ad.[\": "));
        assert_eq!(problems[1].to_string(), "1.5 is outside 0.0-1.0");
        let nan = RouteConfig {
            types: vec!["*".into()],
            sample: Some(f64::NAN),
            ..route
        };
        assert_eq!(nan.validate().len(), 1, "NaN is no share");
    }

    fn event(event_type: &str, session: &str) -> Event {
        let text = format!(
            r#"{{"event_id":"0190f6d2-7c3a-7b1e-9a1e-3f2c8d1e4b55","type":"{event_type}","timestamp":"2026-01-15T10:20:30.123Z","session":{{"id":"{session}"}},"user":{{"anonymous_id":"a"}},"ad":{{}}}}"#
        );
        let raw: Box<RawValue> = serde_json::from_str(&text).expect("json");
        Event::from_json(&raw, OffsetDateTime::UNIX_EPOCH).expect("valid")
    }

    fn route(name: &str, types: &[&str], to: &[&str], sample: Option<f64>) -> RouteConfig {
        RouteConfig {
            name: name.into(),
            types: types.iter().map(|s| s.to_string()).collect(),
            to: to.iter().map(|s| s.to_string()).collect(),
            sample,
            sources: Vec::new(),
        }
    }

    fn table(routes: &[RouteConfig]) -> RouteTable {
        let names = HashMap::from([("a".to_string(), 0), ("b".to_string(), 1)]);
        RouteTable::new(routes, &names).expect("valid routes")
    }

    #[test]
    fn globs_match_types_and_destinations_are_deduplicated() {
        let custom = table(&[route("chapters", &["custom.chapter_*"], &["b"], None)]);
        let table = table(&[
            route("all", &["*"], &["a"], None),
            route("playback", &["playback.*"], &["a", "b"], None),
        ]);
        let mut d = Decision::default();
        table.decide(&event("playback.paused", "s"), &mut d);
        assert_eq!(d.destinations, vec![0, 1]);
        table.decide(&event("ad.started", "s"), &mut d);
        assert_eq!(d.destinations, vec![0]);
        // Types outside the contract's list are matched per event.
        custom.decide(&event("custom.chapter_viewed", "s"), &mut d);
        assert_eq!(d.destinations, vec![1]);
        custom.decide(&event("custom.other", "s"), &mut d);
        assert!(d.destinations.is_empty());
    }

    #[test]
    fn sampling_keeps_or_drops_whole_sessions() {
        let table = table(&[route("half", &["*"], &["a"], Some(0.5))]);
        let mut kept = 0;
        for session in 0..1000 {
            let session = format!("session-{session}");
            let mut first = Decision::default();
            table.decide(&event("playback.paused", &session), &mut first);
            let mut second = Decision::default();
            table.decide(&event("ad.started", &session), &mut second);
            assert_eq!(first.destinations, second.destinations, "session split");
            kept += first.destinations.len();
        }
        assert!((400..600).contains(&kept), "kept {kept} of 1000");
    }

    #[test]
    fn source_routes_take_only_their_sources_events() {
        let mut web_only = route("web", &["*"], &["a"], None);
        web_only.sources = vec!["web".into()];
        let table = table(&[web_only, route("all", &["*"], &["b"], None)]);
        let mut d = Decision::default();
        let mut event = event("playback.paused", "s");
        table.decide(&event, &mut d);
        assert_eq!(d.destinations, vec![1], "no source: only the catch-all");
        event.source = Some("tv".into());
        table.decide(&event, &mut d);
        assert_eq!(d.destinations, vec![1]);
        event.source = Some("web".into());
        table.decide(&event, &mut d);
        assert_eq!(d.destinations, vec![0, 1]);
    }

    #[test]
    fn zero_sample_keeps_nothing_and_one_keeps_all() {
        let none = table(&[route("none", &["*"], &["a"], Some(0.0))]);
        let all = table(&[route("all", &["*"], &["a"], Some(1.0))]);
        let mut d = Decision::default();
        none.decide(&event("playback.paused", "x"), &mut d);
        assert!(d.destinations.is_empty());
        assert_eq!(d.sampled_out, vec![0]);
        all.decide(&event("playback.paused", "x"), &mut d);
        assert_eq!(d.destinations, vec![0]);
    }
}
