//! `[destinations.NAME]`: the common keys, each type's own, and what types alone cannot check.

use super::*;
use crate::dest::{vendors, BuildError};

impl Loader<'_> {
    pub(super) fn read_destinations(
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

    pub(super) fn read_destination(
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
        // Batch sizes left unset take the vendor's (see `VendorDefaults`).
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
                format!("missing `type` ({})", vendors::type_names()),
            );
            return None;
        };
        let type_span = type_value.span();
        let own = Spanned::new(span, DeValue::Table(own));
        let vendor = match type_value.get_ref() {
            DeValue::String(t) => vendors::vendor(t),
            _ => None,
        };
        let kind = match vendor {
            Some(vendor) => self
                .read_with(field, own, vendor.parse)
                .map(|config| DestinationKind::new(vendor, config)),
            None => {
                self.error_at(
                    type_span.clone(),
                    &format!("{field}.type"),
                    format!(
                        "unknown destination type {}, expected {}",
                        show(type_value.get_ref()),
                        vendors::type_names()
                    ),
                );
                None
            }
        };
        let (kind, mut common) = (kind?, common?);
        let defaults = kind.vendor().defaults;
        if !events_set {
            common.batch.max_events = defaults.batch.max_events;
        }
        if !bytes_set {
            common.batch.max_bytes = defaults.batch.max_bytes;
        }
        self.check_destination(field, &kind, &common, type_span.clone());
        // Left unset, the vendor's documented rate limit and concurrency cap apply:
        // filled in here, so delivery reads its settings and no vendor table.
        if common.rate_limit.is_none() {
            common.rate_limit = defaults.rate_limit.map(RateLimitConfig::from);
        }
        if common.max_concurrency.is_none() {
            common.max_concurrency = Some(defaults.max_concurrency);
        }
        let destination = DestinationConfig {
            name: name.to_string(),
            kind,
            common,
        };
        // The translators check their own keys; building one here reports those
        // problems now instead of at start-up.
        // A file has no translator to build; nothing else answers `NotHttp`.
        if let Err(error) = destination.translator().map(|_| ()).or_else(|e| match e {
            BuildError::NotHttp(_) => Ok(()),
            e => Err(e),
        }) {
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

    pub(super) fn check_destination(
        &mut self,
        field: &str,
        kind: &DestinationKind,
        common: &DestinationCommon,
        at: Range<usize>,
    ) {
        // The common keys' checks, then the type's own, each at its key (or the text
        // it names).
        for problem in common.validate().into_iter().chain(kind.validate()) {
            let span = match &problem.near {
                Some(text) => {
                    let first = problem.key.split('.').next().unwrap_or(&problem.key);
                    self.find_after_header(field, text)
                        .or_else(|| self.find_key_span(field, first))
                }
                None => self.find_key_span(field, &problem.key),
            };
            let span = span.unwrap_or_else(|| at.clone());
            self.error_at(span, &join(field, &problem.key), problem.message);
        }
    }
}
