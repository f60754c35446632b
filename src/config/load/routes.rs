//! `[[routes]]`: names, globs, sources, sampling and targets.

use super::*;
use crate::route::RouteConfigError;

impl Loader<'_> {
    pub(super) fn read_routes(
        &mut self,
        value: Spanned<DeValue<'_>>,
        declared: &[String],
        sources: &[String],
    ) -> Vec<RouteConfig> {
        let span = value.span();
        let DeValue::Array(items) = value.into_inner() else {
            self.error_at(span, "routes", "must be an array of tables: [[routes]]");
            return Vec::new();
        };
        let mut out: Vec<RouteConfig> = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            let field = format!("routes[{i}]");
            let Some(raw) = self.read::<RawRoute>(&field, item) else {
                continue;
            };
            let name = raw.name.get_ref().clone();
            if out.iter().any(|r| r.name == name) {
                self.error_at(
                    raw.name.span(),
                    &format!("{field}.name"),
                    format!("route name {name:?} is used twice"),
                );
            }
            let mut types: Vec<String> = raw
                .r#match
                .get_ref()
                .types
                .iter()
                .map(|pattern| pattern.get_ref().clone())
                .collect();
            let mut route_sources = Vec::new();
            for (j, source) in raw.r#match.get_ref().sources.iter().enumerate() {
                if sources.contains(source.get_ref()) {
                    route_sources.push(source.get_ref().clone());
                } else {
                    self.error_at(
                        source.span(),
                        &format!("{field}.match.sources[{j}]"),
                        format!(
                            "no source named {:?} (defined: {})",
                            source.get_ref(),
                            if sources.is_empty() {
                                "none".to_string()
                            } else {
                                sources.join(", ")
                            }
                        ),
                    );
                }
            }
            if raw.r#match.get_ref().types.is_empty() {
                if raw.r#match.get_ref().sources.is_empty() {
                    self.error_at(
                        raw.r#match.span(),
                        &format!("{field}.match.types"),
                        "must name at least one type glob (\"*\" for all) or a source",
                    );
                } else {
                    types.push("*".to_string());
                }
            }
            let mut to = Vec::new();
            for (j, target) in raw.to.iter().enumerate() {
                if !declared.contains(target.get_ref()) {
                    let known: Vec<&str> = declared.iter().map(String::as_str).collect();
                    self.error_at(
                        target.span(),
                        &format!("{field}.to[{j}]"),
                        format!(
                            "no destination named {:?} (defined: {})",
                            target.get_ref(),
                            if known.is_empty() {
                                "none".to_string()
                            } else {
                                known.join(", ")
                            }
                        ),
                    );
                } else if !to.contains(target.get_ref()) {
                    to.push(target.get_ref().clone());
                }
            }
            let route = RouteConfig {
                name,
                types,
                to,
                sample: raw.sample.as_ref().map(|s| *s.get_ref()),
                sources: route_sources,
            };
            // The route's own checks, each at the value at fault.
            for problem in route.validate() {
                let (span, key) = match &problem {
                    RouteConfigError::Glob { index, .. } => (
                        raw.r#match.get_ref().types.get(*index).map(Spanned::span),
                        format!("match.types[{index}]"),
                    ),
                    RouteConfigError::Sample(_) => {
                        (raw.sample.as_ref().map(Spanned::span), "sample".into())
                    }
                };
                let span = span.unwrap_or_else(|| raw.r#match.span());
                self.error_at(span, &format!("{field}.{key}"), problem.to_string());
            }
            out.push(route);
        }
        out
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: Spanned<String>,
    r#match: Spanned<RawMatch>,
    to: Vec<Spanned<String>>,
    #[serde(default)]
    sample: Option<Spanned<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    #[serde(default)]
    types: Vec<Spanned<String>>,
    /// Sources the event came through; empty: any.
    #[serde(default)]
    sources: Vec<Spanned<String>>,
}
