//! `[destinations.NAME]`: the common keys, each type's own, and what types alone cannot check.

use super::*;

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
        // Left unset, the vendor's documented rate limit and concurrency cap apply:
        // filled in here, so delivery reads its settings and no vendor table.
        let type_name = kind.type_name();
        if common.rate_limit.is_none() {
            common.rate_limit = RateLimitConfig::vendor_default(type_name);
        }
        if common.max_concurrency.is_none() {
            common.max_concurrency = Some(super::super::max_concurrency_default(type_name));
        }
        let destination = DestinationConfig {
            name: name.to_string(),
            kind,
            common,
        };
        // The translators check their own keys; building one here reports those
        // problems now instead of at start-up.
        let is_http = !matches!(destination.kind, DestinationKind::File(_));
        if let Err(error) = super::super::build_translator(&destination)
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

    pub(super) fn check_destination(
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
        for (key, secret) in kind.secrets() {
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
