//! `[server]`, `[qoe]` and `[sources]`: the edge's settings, keys and origins.

use super::*;
use crate::ingest::config::{check_key, normalize_origin};

impl Loader<'_> {
    pub(super) fn check_qoe(&mut self, qoe: &QoeConfig, span: Range<usize>) {
        for (key, message) in qoe.problems() {
            // At the key when it is written in the section, else at the section.
            let at = self.text[span.start..]
                .find(&format!("\n{key}"))
                .map_or(span.start, |i| span.start + i + 1);
            self.error_at(at..at, &format!("qoe.{key}"), message);
        }
    }

    pub(super) fn check_server(&mut self, server: &ServerConfig) {
        // Spans are gone once typed; these are rare mistakes, reported at the section.
        let line = self.text.find("[server]").unwrap_or(0);
        if server.max_body_bytes == 0 {
            self.error_at(
                line..line,
                "server.max_body_bytes",
                "must be greater than 0",
            );
        }
        if server.max_events_per_request == 0 {
            self.error_at(
                line..line,
                "server.max_events_per_request",
                "must be greater than 0",
            );
        }
        if server.max_decompressed_bytes < server.max_body_bytes {
            self.error_at(
                line..line,
                "server.max_decompressed_bytes",
                "must be at least server.max_body_bytes",
            );
        }
        let mut problems: Vec<(&str, String)> = Vec::new();
        let positive = [
            ("max_connections", server.max_connections as u64),
            (
                "max_in_flight_requests",
                server.max_in_flight_requests as u64,
            ),
            ("header_read_timeout_ms", server.header_read_timeout_ms),
            ("body_read_timeout_ms", server.body_read_timeout_ms),
            ("json.max_depth", server.json.max_depth as u64),
            ("json.max_string_bytes", server.json.max_string_bytes as u64),
            ("json.max_fields", server.json.max_fields as u64),
            ("json.max_array_items", server.json.max_array_items as u64),
        ];
        for (key, value) in positive {
            if value == 0 {
                problems.push((key, "must be greater than 0".into()));
            }
        }
        if server.json.max_depth > 100 {
            problems.push(("json.max_depth", "must be at most 100".into()));
        }
        if server.max_header_bytes < 8192 {
            problems.push(("max_header_bytes", "must be at least 8192".into()));
        }
        if let Some(limit) = &server.per_client_rate_limit {
            if let Err(error) = limit.validate() {
                problems.push(("per_client_rate_limit", error.to_string()));
            }
        }
        if let Some(tls) = &server.tls {
            for (key, path) in [
                ("tls.cert_file", &tls.cert_file),
                ("tls.key_file", &tls.key_file),
            ] {
                if let Err(e) = std::fs::metadata(path) {
                    problems.push((key, format!("cannot read {}: {e}", path.display())));
                }
            }
        }
        if let Some(salt) = &server.hash_salt {
            if salt.expose().len() < 16 {
                problems.push(("hash_salt", "must be at least 16 bytes".into()));
            }
        }
        for (key, message) in problems {
            let leaf = key.split('.').next_back().unwrap_or(key);
            let at = self.text[line..]
                .find(&format!("\n{leaf}"))
                .or_else(|| self.text[line..].find(leaf))
                .map_or(line, |i| line + i + 1);
            self.error_at(at..at, &format!("server.{key}"), message);
        }
    }

    pub(super) fn read_sources(
        &mut self,
        value: Spanned<DeValue<'_>>,
    ) -> BTreeMap<String, SourceConfig> {
        let span = value.span();
        let DeValue::Table(table) = value.into_inner() else {
            self.error_at(span, "sources", "must be a table of named sources");
            return BTreeMap::new();
        };
        let mut out = BTreeMap::new();
        let mut keyless: Option<String> = None;
        let mut seen_keys: Vec<(String, String)> = Vec::new();
        for (key, value) in table {
            let name = key.get_ref().to_string();
            let field = format!("sources.{name}");
            if !valid_name(&name) {
                self.error_at(
                    key.span(),
                    &field,
                    "source names use letters, digits, `_` and `-`",
                );
            }
            let Some(raw) = self.read::<RawSource>(&field, value) else {
                continue;
            };
            for (i, k) in raw.keys.iter().enumerate() {
                let secret = k.get_ref().expose();
                if let Err(error) = check_key(secret) {
                    self.error_at(k.span(), &format!("{field}.keys[{i}]"), error.to_string());
                } else if let Some((other, _)) =
                    seen_keys.iter().find(|(_, seen)| seen.as_str() == secret)
                {
                    self.error_at(
                        k.span(),
                        &format!("{field}.keys[{i}]"),
                        format!(
                            "this key is also a key of source {other:?}: a key names one source"
                        ),
                    );
                } else {
                    seen_keys.push((name.clone(), secret.to_string()));
                }
            }
            if raw.keys.is_empty() {
                if let Some(other) = &keyless {
                    self.error_at(
                        key.span(),
                        &format!("{field}.keys"),
                        format!("source {other:?} already takes requests without a key; give this one keys"),
                    );
                }
                keyless = Some(name.clone());
            }
            let mut origins = Vec::new();
            for (i, origin) in raw.allowed_origins.iter().enumerate() {
                match normalize_origin(origin.get_ref()) {
                    Ok(o) => origins.push(o),
                    Err(error) => self.error_at(
                        origin.span(),
                        &format!("{field}.allowed_origins[{i}]"),
                        error.to_string(),
                    ),
                }
            }
            if let Some(limit) = &raw.rate_limit {
                if let Err(error) = limit.get_ref().validate() {
                    self.error_at(
                        limit.span(),
                        &format!("{field}.rate_limit"),
                        error.to_string(),
                    );
                }
            }
            out.insert(
                name,
                SourceConfig {
                    keys: raw.keys.into_iter().map(Spanned::into_inner).collect(),
                    allowed_origins: origins,
                    rate_limit: raw.rate_limit.map(Spanned::into_inner),
                },
            );
        }
        out
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    #[serde(default)]
    keys: Vec<Spanned<crate::dest::Secret>>,
    #[serde(default)]
    allowed_origins: Vec<Spanned<String>>,
    #[serde(default)]
    rate_limit: Option<Spanned<crate::ingest::config::IngestRateLimit>>,
}
