//! Reading routes.toml: parse with spans, substitute `${VAR}`s, read each section on its
//! own so one mistake does not hide the next, then check what types alone cannot.

use super::env::interpolate;
use super::{Config, ServerConfig};
use crate::deliver::{DestinationCommon, DestinationConfig, RateLimitConfig, COMMON_KEYS};
use crate::dest::DestinationKind;
use crate::ingest::config::SourceConfig;
use crate::qoe::QoeConfig;
use crate::route::RouteConfig;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

mod destinations;
mod routes;
mod server;
#[cfg(test)]
mod tests;

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
        self.read_with(field, value, |de| T::deserialize(de))
    }

    /// Reads `value` with `parse`, each error located at the deepest key that holds it.
    fn read_with<T>(
        &mut self,
        field: &str,
        value: Spanned<DeValue<'_>>,
        parse: impl FnOnce(ValueDeserializer<'_>) -> Result<T, toml::de::Error>,
    ) -> Option<T> {
        let probe = value.get_ref().clone();
        match parse(ValueDeserializer::from(value)) {
            Ok(parsed) => Some(parsed),
            Err(error) => {
                self.toml_error(field, &error, Some(&probe));
                None
            }
        }
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
            if let Some(message) = spool.backend.refuses(when_full) {
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
