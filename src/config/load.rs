//! Reading routes.toml: parse with spans, substitute `${VAR}`s, read each section on its
//! own so one mistake does not hide the next, then check what types alone cannot.

use super::env::interpolate;
use super::{
    BatchConfig, ConcurrencySetting, Config, DestinationCommon, DestinationConfig, DestinationKind,
    RouteConfig, ServerConfig, SourceConfig, COMMON_KEYS, DESTINATION_TYPES, PROTECTED_FIELDS,
};
use crate::qoe::QoeConfig;
use crate::route::compile_glob;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

/// One problem in a config file, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    /// Dotted path of the key at fault, e.g. `destinations.warehouse.endpoint`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in a config file, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            field: String::new(),
            message: format!("cannot read the config file: {e}"),
        }])
    })?;
    load_str(&text, path, &|name| std::env::var(name).ok())
}

/// Loads a config from text; `env` looks up `${VAR}`s (injectable for tests).
pub fn load_str(
    text: &str,
    file: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let mut cx = Loader {
        text,
        file,
        errors: Vec::new(),
        unset_fields: Vec::new(),
    };
    let (mut root, syntax_errors) = DeTable::parse_recoverable(text);
    for error in syntax_errors {
        cx.toml_error("", &error, None);
    }
    if !cx.errors.is_empty() {
        return Err(cx.finish());
    }
    for (key, value) in root.get_mut().iter_mut() {
        cx.interpolate(key.get_ref(), value, env);
    }
    let config = cx.read_root(root.into_inner());
    match config {
        Some(config) if cx.errors.is_empty() => Ok(config),
        _ => Err(cx.finish()),
    }
}

const UNSET_PREFIX: &str = "environment variable ";

struct Loader<'a> {
    text: &'a str,
    file: &'a Path,
    errors: Vec<ConfigError>,
    /// Fields holding an unset `${VAR}`: that error is the one to report for them, not
    /// what parsing the unreplaced text says after it ("invalid socket address").
    unset_fields: Vec<String>,
}

impl Loader<'_> {
    fn finish(mut self) -> ConfigErrors {
        let unset = std::mem::take(&mut self.unset_fields);
        self.errors
            .retain(|e| e.message.starts_with(UNSET_PREFIX) || !unset.contains(&e.field));
        self.errors.sort_by_key(|e| (e.line, e.column));
        self.errors.dedup();
        ConfigErrors(self.errors)
    }

    fn error_at(&mut self, span: Range<usize>, field: &str, message: impl Into<String>) {
        let (line, column) = line_column(self.text, span.start);
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            field: field.to_string(),
            message: message.into(),
        });
    }

    /// Reports a toml error, naming the deepest key of `table` whose span holds it.
    fn toml_error(&mut self, prefix: &str, error: &toml::de::Error, table: Option<&DeValue>) {
        let span = error.span().unwrap_or(0..0);
        let message = error.message().trim().to_string();
        let mut field = prefix.to_string();
        if let Some(value) = table {
            field = deepest_key(prefix, value, &span);
        }
        if let Some(name) = quoted_after(&message, "missing field `")
            .or_else(|| quoted_after(&message, "unknown field `"))
        {
            if !field.ends_with(&format!(".{name}")) {
                field = join(&field, &name);
            }
        }
        self.error_at(span, &field, message);
    }

    fn interpolate(
        &mut self,
        path: &str,
        value: &mut Spanned<DeValue<'_>>,
        env: &dyn Fn(&str) -> Option<String>,
    ) {
        let span = value.span();
        match value.get_mut() {
            DeValue::String(text) if text.contains('$') => match interpolate(text, env) {
                Ok(replaced) => *text = replaced.into(),
                Err(mut missing) => {
                    missing.sort();
                    missing.dedup();
                    for name in missing {
                        self.error_at(
                            span.clone(),
                            path,
                            format!("{UNSET_PREFIX}{name} is not set (write ${{{name}:-default}} for a default)"),
                        );
                    }
                    self.unset_fields.push(path.to_string());
                }
            },
            DeValue::Array(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    self.interpolate(&format!("{path}[{i}]"), item, env);
                }
            }
            DeValue::Table(table) => {
                for (key, item) in table.iter_mut() {
                    self.interpolate(&join(path, key.get_ref()), item, env);
                }
            }
            _ => {}
        }
    }

    fn read<T: DeserializeOwned>(&mut self, field: &str, value: Spanned<DeValue<'_>>) -> Option<T> {
        let probe = value.get_ref().clone();
        match T::deserialize(ValueDeserializer::from(value)) {
            Ok(parsed) => Some(parsed),
            Err(error) => {
                self.toml_error(field, &error, Some(&probe));
                None
            }
        }
    }

    /// Reads a destination type's own keys.
    fn read_kind<T: DeserializeOwned>(
        &mut self,
        field: &str,
        own: Spanned<DeValue<'_>>,
        kind: fn(T) -> DestinationKind,
    ) -> Option<DestinationKind> {
        self.read::<T>(field, own).map(kind)
    }

    fn read_root(&mut self, root: DeTable<'_>) -> Option<Config> {
        let mut server = None;
        let mut destinations = None;
        let mut routes = None;
        let mut sources = None;
        let mut spool = None;
        let mut qoe = None;
        let mut server_span = 0..0;
        for (key, value) in root {
            match key.get_ref().as_ref() {
                "server" => {
                    server_span = value.span();
                    server = Some(value);
                }
                "destinations" => destinations = Some(value),
                "routes" => routes = Some(value),
                "sources" => sources = Some(value),
                "spool" => spool = Some(value),
                "qoe" => qoe = Some(value),
                other => self.error_at(
                    key.span(),
                    other,
                    "unknown section (expected server, spool, sources, destinations, routes or qoe)",
                ),
            }
        }
        let server: Option<ServerConfig> = match server {
            Some(value) => self.read("server", value),
            None => {
                self.error_at(
                    server_span,
                    "server",
                    "missing [server] section with `listen`",
                );
                None
            }
        };
        // Names count as declared even when their table has errors, so a route that
        // names them does not add a second, misleading error.
        let declared: Vec<String> = match &destinations {
            Some(value) => match value.get_ref() {
                DeValue::Table(table) => {
                    table.iter().map(|(k, _)| k.get_ref().to_string()).collect()
                }
                _ => Vec::new(),
            },
            None => Vec::new(),
        };
        let destinations = match destinations {
            Some(value) => self.read_destinations(value),
            None => BTreeMap::new(),
        };
        let sources = match sources {
            Some(value) => self.read_sources(value),
            None => BTreeMap::new(),
        };
        let source_names: Vec<String> = sources.keys().cloned().collect();
        let routes = match routes {
            Some(value) => self.read_routes(value, &declared, &source_names),
            None => Vec::new(),
        };
        let spool: crate::spool::SpoolConfig = match spool {
            Some(value) => {
                let span = value.span();
                let spool: Option<crate::spool::SpoolConfig> = self.read("spool", value);
                if let Some(spool) = &spool {
                    if let Err((field, message)) = spool.check() {
                        self.error_at(span, &format!("spool.{field}"), &message);
                    }
                }
                spool.unwrap_or_default()
            }
            None => crate::spool::SpoolConfig::default(),
        };
        for (name, destination) in &destinations {
            let when_full = destination.common.queue.when_full;
            use super::WhenFull;
            let wrong = match spool.backend {
                crate::spool::Backend::Disk => (when_full == WhenFull::DropNewest)
                    .then_some("drop_newest applies to the memory spool; with the disk spool the backlog sheds its oldest: use \"drop_oldest\", \"dead_letter\" or \"block\""),
                crate::spool::Backend::Memory => matches!(when_full, WhenFull::DropOldest | WhenFull::Block)
                    .then_some("drop_oldest and block need the disk spool ([spool] backend = \"disk\"); the memory spool takes \"dead_letter\" or \"drop_newest\""),
                // The stream's max_bytes bounds the backlog: past it ingest answers 503.
                crate::spool::Backend::JetStream => None,
            };
            if let Some(message) = wrong {
                let field = format!("destinations.{name}");
                let span = self.find_key_span(&field, "queue").unwrap_or(0..0);
                self.error_at(span, &format!("{field}.queue.when_full"), message);
            }
        }
        let qoe = match qoe {
            Some(value) => {
                let span = value.span();
                let qoe = self.read::<QoeConfig>("qoe", value).unwrap_or_default();
                self.check_qoe(&qoe, span);
                qoe
            }
            None => QoeConfig::default(),
        };
        if let Some(server) = &server {
            self.check_server(server);
            if server.hash_salt.is_none() {
                for (name, destination) in &destinations {
                    if !destination.common.hash_fields.is_empty() {
                        let field = format!("destinations.{name}");
                        let span = self.find_key_span(&field, "hash_fields").unwrap_or(0..0);
                        self.error_at(
                            span,
                            &format!("{field}.hash_fields"),
                            "needs server.hash_salt (e.g. hash_salt = \"${PLAYRELAY_HASH_SALT}\")",
                        );
                    }
                }
            }
        }
        Some(Config {
            source: self.file.to_path_buf(),
            server: server?,
            destinations,
            routes,
            sources,
            spool,
            qoe,
        })
    }

    fn check_qoe(&mut self, qoe: &QoeConfig, span: Range<usize>) {
        let mut problems: Vec<(&str, &str)> = Vec::new();
        if qoe.max_sessions == 0 {
            problems.push(("max_sessions", "must be greater than 0"));
        }
        if qoe.idle_timeout_ms == 0 {
            problems.push(("idle_timeout_ms", "must be greater than 0"));
        }
        if qoe.end_grace_ms > qoe.idle_timeout_ms {
            problems.push(("end_grace_ms", "must be at most qoe.idle_timeout_ms"));
        }
        for (key, message) in problems {
            // At the key when it is written in the section, else at the section.
            let at = self.text[span.start..]
                .find(&format!("\n{key}"))
                .map_or(span.start, |i| span.start + i + 1);
            self.error_at(at..at, &format!("qoe.{key}"), message);
        }
    }

    fn check_server(&mut self, server: &ServerConfig) {
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
            if limit.requests_per_second == 0 || limit.burst == Some(0) {
                problems.push((
                    "per_client_rate_limit",
                    "requests_per_second and burst must be greater than 0".into(),
                ));
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

    fn read_sources(&mut self, value: Spanned<DeValue<'_>>) -> BTreeMap<String, SourceConfig> {
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
                if secret.len() < 16 {
                    self.error_at(
                        k.span(),
                        &format!("{field}.keys[{i}]"),
                        "an ingest key must be at least 16 characters",
                    );
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
                    Err(message) => self.error_at(
                        origin.span(),
                        &format!("{field}.allowed_origins[{i}]"),
                        message,
                    ),
                }
            }
            if let Some(limit) = &raw.rate_limit {
                let l = limit.get_ref();
                if l.requests_per_second == 0 || l.burst == Some(0) {
                    self.error_at(
                        limit.span(),
                        &format!("{field}.rate_limit"),
                        "requests_per_second and burst must be greater than 0",
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

    fn read_destinations(
        &mut self,
        value: Spanned<DeValue<'_>>,
    ) -> BTreeMap<String, DestinationConfig> {
        let span = value.span();
        let DeValue::Table(table) = value.into_inner() else {
            self.error_at(
                span,
                "destinations",
                "must be a table of named destinations",
            );
            return BTreeMap::new();
        };
        let mut out = BTreeMap::new();
        for (key, value) in table {
            let name = key.get_ref().to_string();
            let field = format!("destinations.{name}");
            if !valid_name(&name) {
                self.error_at(
                    key.span(),
                    &field,
                    "destination names use letters, digits, `_` and `-`",
                );
            }
            if let Some(destination) = self.read_destination(&name, &field, value) {
                out.insert(name, destination);
            }
        }
        out
    }

    fn read_destination(
        &mut self,
        name: &str,
        field: &str,
        value: Spanned<DeValue<'_>>,
    ) -> Option<DestinationConfig> {
        let span = value.span();
        let DeValue::Table(table) = value.into_inner() else {
            self.error_at(span, field, "must be a table");
            return None;
        };
        let mut common = DeTable::new();
        let mut own = DeTable::new();
        let mut type_name = None;
        for (key, value) in table {
            let k = key.get_ref().as_ref();
            if k == "type" {
                type_name = Some(value);
            } else if COMMON_KEYS.contains(&k) {
                common.insert(key, value);
            } else {
                own.insert(key, value);
            }
        }
        // Batch sizes left unset take the vendor's (see `BatchConfig::vendor_default`).
        let batch_set = |key: &str| {
            common.iter().any(|(k, v)| {
                k.get_ref().as_ref() == "batch"
                    && matches!(v.get_ref(), DeValue::Table(t) if t.iter().any(|(k, _)| k.get_ref().as_ref() == key))
            })
        };
        let (events_set, bytes_set) = (batch_set("max_events"), batch_set("max_bytes"));
        let common: Option<DestinationCommon> =
            self.read(field, Spanned::new(span.clone(), DeValue::Table(common)));
        let Some(type_value) = type_name else {
            self.error_at(
                span,
                &format!("{field}.type"),
                format!("missing `type` ({DESTINATION_TYPES})"),
            );
            return None;
        };
        let type_span = type_value.span();
        let own = Spanned::new(span, DeValue::Table(own));
        let kind = match type_value.get_ref() {
            DeValue::String(t) if t == "webhook" => {
                self.read_kind(field, own, DestinationKind::Webhook)
            }
            DeValue::String(t) if t == "file" => self.read_kind(field, own, DestinationKind::File),
            DeValue::String(t) if t == "segment" => {
                self.read_kind(field, own, DestinationKind::Segment)
            }
            DeValue::String(t) if t == "ga4" => self.read_kind(field, own, DestinationKind::Ga4),
            DeValue::String(t) if t == "tealium" => {
                self.read_kind(field, own, DestinationKind::Tealium)
            }
            other => {
                self.error_at(
                    type_span.clone(),
                    &format!("{field}.type"),
                    format!(
                        "unknown destination type {}, expected {DESTINATION_TYPES}",
                        show(other)
                    ),
                );
                None
            }
        };
        let (kind, mut common) = (kind?, common?);
        let vendor = BatchConfig::vendor_default(kind.type_name());
        if !events_set {
            common.batch.max_events = vendor.max_events;
        }
        if !bytes_set {
            common.batch.max_bytes = vendor.max_bytes;
        }
        self.check_destination(field, &kind, &common, type_span.clone());
        let destination = DestinationConfig {
            name: name.to_string(),
            kind,
            common,
        };
        // The translators check their own keys; building one here reports those
        // problems now instead of at start-up.
        let is_http = !matches!(destination.kind, DestinationKind::File(_));
        if let Err(error) = crate::dest::build_translator(&destination)
            .map(|_| ())
            .or_else(|e| if is_http { Err(e) } else { Ok(()) })
        {
            let text = error.to_string();
            let (key, message) = text.split_once(": ").unwrap_or(("", text.as_str()));
            // Already reported at its own line by `check_destination`.
            let full = join(field, key);
            if self.errors.iter().any(|e| e.field == full) {
                return Some(destination);
            }
            let key = key.split(['.', '[', ' ']).next().unwrap_or(key);
            let span = self.find_key_span(field, key).unwrap_or(type_span);
            self.error_at(span, &join(field, key), message.to_string());
        }
        Some(destination)
    }

    fn check_destination(
        &mut self,
        field: &str,
        kind: &DestinationKind,
        common: &DestinationCommon,
        at: Range<usize>,
    ) {
        let mut problems = Vec::new();
        if common.batch.max_events == 0 {
            problems.push(("batch.max_events", "must be greater than 0".to_string()));
        }
        if common.batch.max_bytes < 1024 {
            problems.push(("batch.max_bytes", "must be at least 1024".to_string()));
        }
        if common.queue.max_events == 0 {
            problems.push(("queue.max_events", "must be greater than 0".to_string()));
        }
        if common.queue.max_bytes == 0 {
            problems.push(("queue.max_bytes", "must be greater than 0".to_string()));
        }
        if common.timeout_ms == 0 {
            problems.push(("timeout_ms", "must be greater than 0".to_string()));
        }
        if common.concurrency == ConcurrencySetting::Fixed(0) {
            problems.push((
                "concurrency",
                "must be greater than 0, or \"adaptive\"".to_string(),
            ));
        }
        if common.max_concurrency == Some(0) {
            problems.push(("max_concurrency", "must be greater than 0".to_string()));
        }
        if let Some(limit) = &common.rate_limit {
            if limit.requests_per_second == Some(0)
                || limit.events_per_second == Some(0)
                || limit.burst == Some(0)
            {
                problems.push((
                    "rate_limit",
                    "rates and burst must be greater than 0 (leave a key out for no limit)"
                        .to_string(),
                ));
            }
        }
        if common.retry.max_attempts == 0 {
            problems.push((
                "retry.max_attempts",
                "must be at least 1 (1 means no retry)".to_string(),
            ));
        }
        if common.retry.initial_backoff_ms > common.retry.max_backoff_ms {
            problems.push((
                "retry.initial_backoff_ms",
                "must not exceed retry.max_backoff_ms".to_string(),
            ));
        }
        if common.breaker.failure_threshold == 0 || common.breaker.probe_interval_ms == 0 {
            problems.push((
                "breaker",
                "failure_threshold and probe_interval_ms must be greater than 0".to_string(),
            ));
        }
        for (event_type, _) in common.events.iter() {
            if crate::event::EventType::parse(event_type).is_none()
                && !event_type.starts_with("custom.")
            {
                problems.push((
                    "events",
                    format!("{event_type:?} is not a player-event/1 type"),
                ));
            }
        }
        if let DestinationKind::Webhook(webhook) = kind {
            if let Err(message) = check_http_url(&webhook.endpoint) {
                problems.push(("endpoint", message));
            }
            // Each bad `fields` entry at its own line: found by its pointer's text.
            for (key, pointer) in webhook.fields.iter().flatten() {
                if let Some(problem) = crate::dest::webhook::field_problem(key, pointer) {
                    let quoted = toml::Value::String(pointer.clone()).to_string();
                    let span = self
                        .find_after_header(field, &quoted)
                        .or_else(|| self.find_key_span(field, "fields"))
                        .unwrap_or_else(|| at.clone());
                    self.error_at(span, &format!("{field}.fields.{key}"), problem);
                }
            }
            for (header, value) in &webhook.headers {
                if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                    problems.push(("headers", format!("{header:?} is not a valid header name")));
                } else if http::HeaderValue::from_str(value).is_err() {
                    problems.push((
                        "headers",
                        format!("the value of {header} is not a valid header value"),
                    ));
                }
            }
        }
        for (key, secret) in crate::dest::configured_secrets(kind) {
            if !secret.is_empty() && secret.chars().count() < crate::dest::MIN_SECRET_CHARS {
                problems.push((
                    key,
                    format!(
                        "a secret here must be at least {} characters: a shorter one is not a real credential and cannot be told apart from ordinary text",
                        crate::dest::MIN_SECRET_CHARS
                    ),
                ));
            }
        }
        if let DestinationKind::File(file) = kind {
            if file.path.as_os_str().is_empty() {
                problems.push(("path", "must not be empty".to_string()));
            }
        }
        for (key, paths) in [
            ("drop_fields", &common.drop_fields),
            ("hash_fields", &common.hash_fields),
        ] {
            for path in paths {
                if path.is_empty() || path.split('.').any(str::is_empty) {
                    problems.push((key, format!("{path:?} is not a dotted field path")));
                } else if PROTECTED_FIELDS.contains(&path.as_str()) {
                    problems.push((
                        key,
                        format!("{path:?} cannot be removed or rewritten: events need it"),
                    ));
                }
            }
        }
        for (key, message) in problems {
            let span = self.find_key_span(field, key).unwrap_or_else(|| at.clone());
            self.error_at(span, &format!("{field}.{key}"), message);
        }
    }

    /// Finds `text` after the destination's table header (its own or a sub-table's).
    fn find_after_header(&self, field: &str, text: &str) -> Option<Range<usize>> {
        let name = field.strip_prefix("destinations.")?;
        let start = self.text.find(&format!("[destinations.{name}"))?;
        let at = start + self.text[start..].find(text)?;
        Some(at..at)
    }

    /// Finds `key` textually after the destination's table header, for errors found
    /// after the typed read.
    fn find_key_span(&self, field: &str, key: &str) -> Option<Range<usize>> {
        let name = field.strip_prefix("destinations.")?;
        let header = format!("[destinations.{name}]");
        let start = self.text.find(&header)?;
        let leaf = key.split('.').next_back()?;
        let rel = self.text[start..]
            .find(&format!("\n{leaf}"))
            .or_else(|| self.text[start..].find(leaf))?;
        let at = start + rel + 1;
        Some(at..at)
    }

    fn read_routes(
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
            let mut types = Vec::new();
            for (j, pattern) in raw.r#match.get_ref().types.iter().enumerate() {
                match compile_glob(pattern.get_ref()) {
                    Ok(_) => types.push(pattern.get_ref().clone()),
                    Err(e) => self.error_at(
                        pattern.span(),
                        &format!("{field}.match.types[{j}]"),
                        format!("bad glob {:?}: {e}", pattern.get_ref()),
                    ),
                }
            }
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
            if let Some(sample) = &raw.sample {
                let v = *sample.get_ref();
                if !(0.0..=1.0).contains(&v) || v.is_nan() {
                    self.error_at(
                        sample.span(),
                        &format!("{field}.sample"),
                        format!("{v} is outside 0.0-1.0"),
                    );
                }
            }
            out.push(RouteConfig {
                name,
                types,
                to,
                sample: raw.sample.map(|s| s.into_inner()),
                sources: route_sources,
            });
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    #[serde(default)]
    keys: Vec<Spanned<super::Secret>>,
    #[serde(default)]
    allowed_origins: Vec<Spanned<String>>,
    #[serde(default)]
    rate_limit: Option<Spanned<super::IngestRateLimit>>,
}

/// An origin as browsers send it: `scheme://host[:port]`, lower case, no path. `*`: any.
fn normalize_origin(origin: &str) -> Result<String, String> {
    if origin == "*" {
        return Ok(origin.to_string());
    }
    let bad =
        || format!("{origin:?} is not an origin: write scheme://host[:port], no path (or \"*\")");
    let uri: http::Uri = origin.parse().map_err(|_| bad())?;
    let scheme = uri.scheme_str().ok_or_else(bad)?;
    let authority = uri.authority().ok_or_else(bad)?;
    if !matches!(scheme, "http" | "https")
        || origin.ends_with('/')
        || uri
            .path_and_query()
            .is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty())
        || authority.as_str().contains('@')
    {
        return Err(bad());
    }
    Ok(format!(
        "{scheme}://{}",
        authority.as_str().to_ascii_lowercase()
    ))
}

fn check_http_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.host().is_some() => Ok(()),
        _ => Err(format!(
            "{url:?} must be an http:// or https:// URL with a host"
        )),
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The dotted path of the deepest key whose key or value span holds `span`.
fn deepest_key(prefix: &str, value: &DeValue, span: &Range<usize>) -> String {
    if let DeValue::Table(table) = value {
        for (key, item) in table.iter() {
            let key_span = key.span();
            let item_span = item.span();
            let holds =
                |s: &Range<usize>| s.start <= span.start && span.end <= s.end && s != &(0..0);
            if holds(&key_span) {
                return join(prefix, key.get_ref());
            }
            if holds(&item_span) {
                return deepest_key(&join(prefix, key.get_ref()), item.get_ref(), span);
            }
        }
    }
    prefix.to_string()
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn quoted_after(message: &str, marker: &str) -> Option<String> {
    let rest = &message[message.find(marker)? + marker.len()..];
    Some(rest[..rest.find('`')?].to_string())
}

fn show(value: &DeValue) -> String {
    match value {
        DeValue::String(s) => format!("{s:?}"),
        DeValue::Integer(_) | DeValue::Float(_) => "a number".into(),
        DeValue::Boolean(b) => b.to_string(),
        DeValue::Datetime(_) => "a datetime".into(),
        DeValue::Array(_) => "an array".into(),
        DeValue::Table(_) => "a table".into(),
    }
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigErrors> {
        let env = |name: &str| (name == "TOKEN").then(|| "t0k-12345678".to_string());
        load_str(text, Path::new("r.toml"), &env)
    }

    const GOOD: &str = r#"
[server]
listen = "127.0.0.1:8080"

[destinations.warehouse]
type = "webhook"
endpoint = "http://127.0.0.1:9000/events"
headers = { Authorization = "Bearer ${TOKEN}" }
batch = { max_events = 20 }

[destinations.local]
type = "file"
path = "out.ndjson"
events = { "playback.heartbeat" = false, "playback.error" = "failure" }

[[routes]]
name = "everything"
match = { types = ["*"] }
to = ["warehouse", "local"]
sample = 0.25
"#;

    #[test]
    fn good_file_loads_with_defaults_and_env() {
        let config = load(GOOD).expect("valid");
        assert_eq!(config.server.max_body_bytes, 1 << 20);
        assert_eq!(config.server.max_events_per_request, 1000);
        let warehouse = &config.destinations["warehouse"];
        let DestinationKind::Webhook(webhook) = &warehouse.kind else {
            panic!("webhook expected");
        };
        assert_eq!(webhook.headers["Authorization"], "Bearer t0k-12345678");
        assert_eq!(warehouse.common.batch.max_events, 20);
        assert_eq!(warehouse.common.batch.max_wait_ms, 1000);
        assert_eq!(config.routes[0].sample, Some(0.25));
        assert_eq!(config.routes[0].to, vec!["warehouse", "local"]);
    }

    #[test]
    fn env_values_cannot_inject_structure() {
        let env = |_: &str| Some("x\"\n[server]\nlisten = \"0.0.0.0:1\"".to_string());
        let text = GOOD.replace("path = \"out.ndjson\"", "path = \"${TOKEN}\"");
        let text = text.replace("Bearer ${TOKEN}", "Bearer fixed-token");
        let config = load_str(&text, Path::new("r.toml"), &env).expect("valid");
        assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
        let DestinationKind::File(file) = &config.destinations["local"].kind else {
            panic!("file expected");
        };
        assert!(file.path.to_string_lossy().starts_with("x\"\n[server]"));
    }

    #[test]
    fn errors_in_several_sections_are_all_reported_in_line_order() {
        let text = GOOD
            .replace("type = \"file\"", "type = \"filez\"")
            .replace("${TOKEN}", "${MISSING}")
            .replace("sample = 0.25", "sample = 2.0\ncolour = \"red\"");
        let errors = load(&text).expect_err("invalid").0;
        let summary: Vec<(usize, &str)> =
            errors.iter().map(|e| (e.line, e.field.as_str())).collect();
        assert_eq!(
            summary,
            vec![
                (8, "destinations.warehouse.headers.Authorization"),
                (12, "destinations.local.type"),
                (21, "routes[0].colour"),
            ],
            "{}",
            ConfigErrors(errors.clone())
        );
        // serde stops a route at its first problem; the sample error shows once colour is fixed.
        let text = GOOD.replace("sample = 0.25", "sample = 2.0");
        let errors = load(&text).expect_err("invalid").0;
        assert_eq!(errors[0].field, "routes[0].sample");
        assert_eq!(errors[0].line, 20);
    }

    #[test]
    fn concurrency_is_adaptive_by_default_and_batches_are_vendor_sized() {
        use crate::config::ConcurrencySetting;
        let config = load(GOOD).expect("valid");
        let warehouse = &config.destinations["warehouse"].common;
        assert_eq!(warehouse.concurrency, ConcurrencySetting::Adaptive);
        assert_eq!(warehouse.max_in_flight("webhook"), 128);
        // max_events was set; max_bytes takes the webhook's default.
        assert_eq!(warehouse.batch.max_events, 20);
        assert_eq!(warehouse.batch.max_bytes, 512 * 1024);
        let text = GOOD.replace(
            "batch = { max_events = 20 }",
            "concurrency = 6\nmax_concurrency = 9",
        );
        let config = load(&text).expect("valid");
        let warehouse = &config.destinations["warehouse"].common;
        assert_eq!(warehouse.concurrency, ConcurrencySetting::Fixed(6));
        assert_eq!(warehouse.max_in_flight("webhook"), 6);
        assert_eq!(warehouse.batch.max_events, 500);
        let text = GOOD.replace(
            "batch = { max_events = 20 }",
            "concurrency = \"adaptive\"\nmax_concurrency = 9",
        );
        let config = load(&text).expect("valid");
        assert_eq!(
            config.destinations["warehouse"]
                .common
                .max_in_flight("webhook"),
            9
        );
        let segment = GOOD.replace(
            "type = \"webhook\"\nendpoint = \"http://127.0.0.1:9000/events\"\nheaders = { Authorization = \"Bearer ${TOKEN}\" }\nbatch = { max_events = 20 }",
            "type = \"segment\"\nwrite_key = \"segment-write-key\"",
        );
        let config = load(&segment).expect("valid");
        let batch = config.destinations["warehouse"].common.batch;
        assert_eq!((batch.max_events, batch.max_bytes), (2500, 480 * 1024));
    }

    #[test]
    fn bad_concurrency_names_the_field() {
        for (value, expected) in [
            ("\"fast\"", "adaptive"),
            ("0", "greater than 0"),
            ("-3", "adaptive"),
        ] {
            let text = GOOD.replace(
                "batch = { max_events = 20 }",
                &format!("concurrency = {value}"),
            );
            let errors = load(&text).expect_err("invalid").0;
            assert_eq!(
                errors[0].field, "destinations.warehouse.concurrency",
                "{value}"
            );
            assert!(errors[0].to_string().contains(expected), "{}", errors[0]);
        }
        let text = GOOD.replace("batch = { max_events = 20 }", "max_concurrency = 0");
        let errors = load(&text).expect_err("invalid").0;
        assert_eq!(errors[0].field, "destinations.warehouse.max_concurrency");
    }

    #[test]
    fn syntax_errors_are_located() {
        let errors = load("[server\nlisten = 1").expect_err("invalid").0;
        assert_eq!(errors[0].line, 1);
        assert!(
            errors[0].to_string().starts_with("r.toml:1:"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn wrong_types_name_the_nested_field() {
        let text = GOOD.replace(
            "batch = { max_events = 20 }",
            "batch = { max_events = \"many\" }",
        );
        let errors = load(&text).expect_err("invalid").0;
        assert_eq!(errors.len(), 1, "{}", ConfigErrors(errors.clone()));
        assert_eq!(errors[0].field, "destinations.warehouse.batch.max_events");
        assert_eq!(errors[0].line, 9);
    }

    #[test]
    fn missing_server_and_unknown_event_types_are_errors() {
        let errors = load("[destinations]\n").expect_err("invalid").0;
        assert_eq!(errors[0].field, "server");
        let text = GOOD.replace(
            "\"playback.error\" = \"failure\"",
            "\"playback.eror\" = \"failure\"",
        );
        let errors = load(&text).expect_err("invalid").0;
        assert_eq!(errors[0].field, "destinations.local.events");
        assert_eq!(errors[0].line, 14);
    }

    const EDGE: &str = r#"
[server]
listen = "127.0.0.1:8080"
trusted_proxies = ["10.0.0.0/8"]
per_client_rate_limit = { requests_per_second = 5 }
json = { max_depth = 10 }

[sources.web]
keys = ["${TOKEN}-0123456789abcdef"]
allowed_origins = ["https://Player.Example.com"]
rate_limit = { requests_per_second = 50, burst = 100 }

[sources.open]
allowed_origins = ["*"]

[destinations.local]
type = "file"
path = "out.ndjson"
consent = "analytics"
drop_fields = ["properties.email"]
ip = "drop"

[[routes]]
name = "web"
match = { sources = ["web"] }
to = ["local"]
"#;

    #[test]
    fn edge_keys_load_with_defaults() {
        let config = load(EDGE).expect("valid");
        let server = &config.server;
        assert_eq!(server.max_connections, 10_000);
        assert_eq!(server.max_in_flight_requests, 1_024);
        assert_eq!(server.header_read_timeout_ms, 10_000);
        assert_eq!(server.body_read_timeout_ms, 30_000);
        assert_eq!(server.max_header_bytes, 16_384);
        assert_eq!(server.json.max_depth, 10);
        assert_eq!(server.json.max_array_items, 1_000);
        assert_eq!(server.admin_listen, None);
        let web = &config.sources["web"];
        assert_eq!(web.keys[0].expose(), "t0k-12345678-0123456789abcdef");
        assert_eq!(web.allowed_origins, vec!["https://player.example.com"]);
        assert!(config.sources["open"].keys.is_empty());
        assert_eq!(config.routes[0].types, vec!["*"]);
        assert_eq!(config.routes[0].sources, vec!["web"]);
        assert!(
            !format!("{config:?}").contains("t0k"),
            "a key shows in Debug"
        );
    }

    #[test]
    fn edge_mistakes_are_located() {
        let text = EDGE
            .replace("${TOKEN}-0123456789abcdef", "short")
            .replace(
                "https://Player.Example.com",
                "https://player.example.com/path",
            )
            .replace("sources = [\"web\"]", "sources = [\"mobile\"]")
            .replace(
                "drop_fields = [\"properties.email\"]",
                "drop_fields = [\"event_id\"]\nhash_fields = [\"user.user_id\"]",
            )
            .replace(
                "trusted_proxies = [\"10.0.0.0/8\"]",
                "trusted_proxies = [\"10.0.0.0/99\"]",
            );
        let errors = load(&text).expect_err("invalid").0;
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"server.trusted_proxies"), "{fields:?}");
        let text = EDGE
            .replace("${TOKEN}-0123456789abcdef", "short")
            .replace(
                "https://Player.Example.com",
                "https://player.example.com/path",
            )
            .replace("sources = [\"web\"]", "sources = [\"mobile\"]")
            .replace(
                "drop_fields = [\"properties.email\"]",
                "drop_fields = [\"event_id\"]\nhash_fields = [\"user.user_id\"]",
            );
        let errors = load(&text).expect_err("invalid").0;
        let summary: Vec<(usize, &str)> =
            errors.iter().map(|e| (e.line, e.field.as_str())).collect();
        assert_eq!(
            summary,
            vec![
                (9, "sources.web.keys[0]"),
                (10, "sources.web.allowed_origins[0]"),
                (20, "destinations.local.drop_fields"),
                (21, "destinations.local.hash_fields"),
                (26, "routes[0].match.sources[0]"),
            ],
            "{}",
            ConfigErrors(errors.clone())
        );
        let two_open = EDGE.replace("keys = [\"${TOKEN}-0123456789abcdef\"]\n", "");
        let errors = load(&two_open).expect_err("invalid").0;
        assert!(errors[0].message.contains("without a key"), "{}", errors[0]);
        let small = EDGE.replace("json = { max_depth = 10 }", "max_header_bytes = 100");
        let errors = load(&small).expect_err("invalid").0;
        assert_eq!(errors[0].field, "server.max_header_bytes");
        assert_eq!(errors[0].line, 6);
    }

    #[test]
    fn qoe_is_off_by_default_and_its_mistakes_are_located() {
        let config = load(GOOD).expect("valid");
        assert_eq!(config.qoe, QoeConfig::default());
        assert!(!config.qoe.enabled);
        assert_eq!(config.qoe.idle_timeout_ms, 30 * 60 * 1000);
        let on = format!("{GOOD}\n[qoe]\nenabled = true\nmax_sessions = 10\n");
        let config = load(&on).expect("valid");
        assert!(config.qoe.enabled);
        assert_eq!(config.qoe.max_sessions, 10);
        assert_eq!(config.qoe.end_grace_ms, 5_000);
        let bad =
            format!("{GOOD}\n[qoe]\nenabled = true\nmax_sessions = 0\nend_grace_ms = 99999999\n");
        let errors = load(&bad).expect_err("invalid").0;
        let summary: Vec<(usize, &str)> =
            errors.iter().map(|e| (e.line, e.field.as_str())).collect();
        assert_eq!(
            summary,
            vec![(24, "qoe.max_sessions"), (25, "qoe.end_grace_ms")],
            "{}",
            ConfigErrors(errors.clone())
        );
        let unknown = format!("{GOOD}\n[qoe]\nenable = true\n");
        let errors = load(&unknown).expect_err("invalid").0;
        assert_eq!(errors[0].line, 23, "{}", errors[0]);
        assert!(errors[0].to_string().contains("enable"), "{}", errors[0]);
    }
}
