//! Every destination type in one table, [`VENDORS`]: its `type` name, its defaults, how
//! its keys are read, and (through [`VendorConfig`]) how its config is checked, which
//! secrets it holds and how its translator is built. The loader walks this table, and
//! nothing outside `dest/` matches on a type: the few steps that treat one apart ask
//! for its config type ([`DestinationKind::config`]: a file is written, not sent).
//!
//! A fifth vendor needs exactly this:
//! 1. its own file `dest/<vendor>.rs` holding its config type (serde, `deny_unknown_fields`),
//!    an `impl VendorConfig` for it (`translator`, and `secrets` / `validate` when it
//!    has any) and a `pub static VENDOR: Vendor` with its type name, defaults and the
//!    fewest keys of a working config;
//! 2. `pub mod <vendor>;` in `dest/mod.rs`;
//! 3. `&<vendor>::VENDOR` in [`VENDORS`] below.
//!
//! The loader then reads `type = "<vendor>"` with errors located at file, line and key,
//! fills in the defaults, and refuses what `validate` and `translator` refuse; the test
//! at the end of this file walks the table and checks the new line.

use super::{BatchLimits, BuildError, EventNames, Translate, MIN_SECRET_CHARS};
use serde::de::DeserializeOwned;
use std::any::Any;
use std::fmt;
use std::sync::Arc;
use toml::de::ValueDeserializer;

/// Every destination type, in the order messages list them.
pub static VENDORS: &[&Vendor] = &[
    &super::webhook::VENDOR,
    &super::file::VENDOR,
    &super::segment::VENDOR,
    &super::ga4::VENDOR,
    &super::tealium::VENDOR,
];

/// One destination type, as the rest of the relay knows it.
pub struct Vendor {
    /// The `type` value in routes.toml.
    pub type_name: &'static str,
    pub defaults: VendorDefaults,
    /// Reads the type's own keys (every key but `type` and the common ones); unknown
    /// keys are errors, which the loader locates.
    pub parse: fn(ValueDeserializer<'_>) -> Result<Arc<dyn VendorConfig>, toml::de::Error>,
    /// The fewest own keys of a working destination, as TOML: what the table's test
    /// loads, and a starting point for a reader.
    pub example: &'static str,
}

impl fmt::Debug for Vendor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.type_name)
    }
}

/// What a destination of this type gets for the common keys left unset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VendorDefaults {
    /// `batch.max_events` and `batch.max_bytes`: as large as the vendor takes in one
    /// request, so round trips carry the most events.
    pub batch: BatchLimits,
    /// How far an adaptive limit may climb when `max_concurrency` is unset.
    pub max_concurrency: usize,
    /// The vendor's documented rate limit, applied when `rate_limit` is unset.
    pub rate_limit: Option<VendorRate>,
}

/// A vendor's documented rate, in the units it documents it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VendorRate {
    pub requests_per_second: Option<u32>,
    pub events_per_second: Option<u32>,
}

/// The [`Vendor::parse`] of a config type read by serde.
pub fn parse<T: VendorConfig + DeserializeOwned>(
    de: ValueDeserializer<'_>,
) -> Result<Arc<dyn VendorConfig>, toml::de::Error> {
    Ok(Arc::new(T::deserialize(de)?))
}

/// What [`VendorConfig::translator`] answers for a vendor's own constructor: the
/// translator boxed, its error kept as the vendor's.
pub fn boxed<T, E>(built: Result<T, E>) -> Result<Box<dyn Translate>, BuildError>
where
    T: Translate + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    built
        .map(|t| Box::new(t) as Box<dyn Translate>)
        .map_err(BuildError::vendor)
}

/// A destination type's own keys, once read.
pub trait VendorConfig: Any + DynEq + fmt::Debug + Send + Sync {
    /// The translator of an HTTP destination; a local sink answers
    /// [`BuildError::NotHttp`].
    fn translator(
        &self,
        names: EventNames,
        properties: bool,
        limits: BatchLimits,
    ) -> Result<Box<dyn Translate>, BuildError>;

    /// The secrets the config holds, each with the key that holds it, for the length
    /// check at config load (see [`MIN_SECRET_CHARS`]).
    fn secrets(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    /// What the types alone cannot check, found at config load; the translator's own
    /// refusals need not be repeated here.
    fn validate(&self) -> Vec<ConfigProblem> {
        Vec::new()
    }
}

/// Equality through `dyn VendorConfig` (reload compares configs to keep what did not
/// change); implemented for every `PartialEq` type.
pub trait DynEq {
    fn dyn_eq(&self, other: &dyn Any) -> bool;
}

impl<T: PartialEq + Any> DynEq for T {
    fn dyn_eq(&self, other: &dyn Any) -> bool {
        other.downcast_ref::<T>() == Some(self)
    }
}

/// One problem in a destination's keys; the loader adds file, line and the
/// destination's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigProblem {
    /// The key at fault, under the destination's table: `endpoint`, `fields.id`.
    pub key: String,
    pub message: String,
    /// Text that finds the problem's line when its key does not (a `fields` entry by
    /// its pointer, quoted as TOML writes it); the key's first part is the fallback.
    pub near: Option<String>,
}

impl ConfigProblem {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigProblem {
            key: key.into(),
            message: message.into(),
            near: None,
        }
    }
}

/// A destination's own keys, by its `type`.
#[derive(Clone)]
pub struct DestinationKind {
    vendor: &'static Vendor,
    config: Arc<dyn VendorConfig>,
}

impl DestinationKind {
    pub fn new(vendor: &'static Vendor, config: Arc<dyn VendorConfig>) -> Self {
        DestinationKind { vendor, config }
    }

    pub fn vendor(&self) -> &'static Vendor {
        self.vendor
    }

    pub fn type_name(&self) -> &'static str {
        self.vendor.type_name
    }

    /// The config as its own type, for the few steps that treat one type apart
    /// (a file is written, not sent).
    pub fn config<T: VendorConfig>(&self) -> Option<&T> {
        let config: &dyn Any = &*self.config;
        config.downcast_ref::<T>()
    }

    /// The translator of an HTTP destination; a file has none.
    pub fn translator(
        &self,
        names: EventNames,
        properties: bool,
        limits: BatchLimits,
    ) -> Result<Box<dyn Translate>, BuildError> {
        self.config.translator(names, properties, limits)
    }

    /// The secrets the config holds, each with the key that holds it.
    pub fn secrets(&self) -> Vec<(&'static str, String)> {
        self.config.secrets()
    }

    /// The type's own checks, then every secret's length: a secret shorter than
    /// [`MIN_SECRET_CHARS`] could not be told apart from ordinary text when redacting.
    pub fn validate(&self) -> Vec<ConfigProblem> {
        let mut problems = self.config.validate();
        for (key, secret) in self.secrets() {
            if !secret.is_empty() && secret.chars().count() < MIN_SECRET_CHARS {
                problems.push(ConfigProblem::new(
                    key,
                    format!(
                        "a secret here must be at least {MIN_SECRET_CHARS} characters: a shorter one is not a real credential and cannot be told apart from ordinary text"
                    ),
                ));
            }
        }
        problems
    }
}

impl PartialEq for DestinationKind {
    fn eq(&self, other: &Self) -> bool {
        let theirs: &dyn Any = &*other.config;
        std::ptr::eq(self.vendor, other.vendor) && self.config.dyn_eq(theirs)
    }
}

impl fmt::Debug for DestinationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple(self.vendor.type_name)
            .field(&self.config)
            .finish()
    }
}

/// The vendor of a `type` value.
pub fn vendor(type_name: &str) -> Option<&'static Vendor> {
    VENDORS.iter().copied().find(|v| v.type_name == type_name)
}

/// The `type` values, for messages: `a, b or c`.
pub fn type_names() -> String {
    let names: Vec<&str> = VENDORS.iter().map(|v| v.type_name).collect();
    or_list(&names)
}

fn or_list(names: &[&str]) -> String {
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => names.concat(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn read(vendor: &Vendor, text: &str) -> Result<Arc<dyn VendorConfig>, toml::de::Error> {
        let table = toml::de::DeTable::parse(text).expect("toml");
        let value = toml::Spanned::new(0..text.len(), toml::de::DeValue::Table(table.into_inner()));
        (vendor.parse)(ValueDeserializer::from(value))
    }

    /// Written so that a new vendor's line needs no change here.
    #[test]
    fn the_table_names_every_destination_type_once() {
        for shipped in ["webhook", "file", "segment", "ga4", "tealium"] {
            assert!(vendor(shipped).is_some(), "{shipped} left the table");
        }
        assert!(type_names().starts_with("webhook, file, segment, ga4"));
        assert_eq!(or_list(&["a", "b", "c"]), "a, b or c");
        assert_eq!(or_list(&["a"]), "a");
        for (i, v) in VENDORS.iter().enumerate() {
            assert!(
                !VENDORS[..i].iter().any(|w| w.type_name == v.type_name),
                "{} twice",
                v.type_name
            );
            assert!(std::ptr::eq(vendor(v.type_name).expect("found"), *v));
        }
        assert!(vendor("filez").is_none());
    }

    #[test]
    fn every_vendor_has_usable_defaults() {
        for v in VENDORS {
            let d = v.defaults;
            assert!(d.batch.max_events > 0, "{}", v.type_name);
            assert!(d.batch.max_bytes >= 1024, "{}", v.type_name);
            assert!(d.max_concurrency > 0, "{}", v.type_name);
            if let Some(rate) = d.rate_limit {
                assert!(
                    rate.requests_per_second.is_some() || rate.events_per_second.is_some(),
                    "{}: a rate limit without a rate",
                    v.type_name
                );
                assert_ne!(rate.requests_per_second, Some(0), "{}", v.type_name);
                assert_ne!(rate.events_per_second, Some(0), "{}", v.type_name);
            }
        }
    }

    /// Each example parses, passes its checks, and builds a translator (a file: is
    /// refused as not HTTP, and nothing else refuses that).
    #[test]
    fn every_vendor_reads_its_example_and_builds_a_translator() {
        for v in VENDORS {
            let config = read(v, v.example).unwrap_or_else(|e| panic!("{}: {e}", v.type_name));
            let kind = DestinationKind::new(v, config);
            assert_eq!(kind.type_name(), v.type_name);
            assert_eq!(kind.validate(), Vec::new(), "{}", v.type_name);
            assert_eq!(kind, kind.clone(), "{}", v.type_name);
            let built = kind.translator(EventNames::new(HashMap::new()), true, v.defaults.batch);
            match (v.type_name, built) {
                ("file", Err(BuildError::NotHttp("file"))) => {}
                (_, Ok(_)) if v.type_name != "file" => {}
                (name, Err(e)) => panic!("{name}: {e}"),
                (name, Ok(_)) => panic!("{name}: a translator for a file"),
            }
        }
    }

    #[test]
    fn every_vendor_refuses_an_unknown_key() {
        for v in VENDORS {
            let text = format!("{}\ncolour = \"red\"\n", v.example);
            let error = read(v, &text).expect_err(v.type_name);
            assert!(
                error.message().contains("unknown field `colour`"),
                "{}: {}",
                v.type_name,
                error.message()
            );
        }
    }

    #[test]
    fn kinds_of_different_types_or_keys_differ() {
        let webhook = vendor("webhook").expect("webhook");
        let a = DestinationKind::new(webhook, read(webhook, webhook.example).expect("a"));
        let other = format!("{}\ngzip = true\n", webhook.example);
        let b = DestinationKind::new(webhook, read(webhook, &other).expect("b"));
        assert_ne!(a, b);
        let file = vendor("file").expect("file");
        let c = DestinationKind::new(file, read(file, file.example).expect("c"));
        assert_ne!(a, c);
    }
}
