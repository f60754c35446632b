//! The loader's tests: good files, and every mistake located.

use super::*;
use crate::dest::file::FileConfig;
use crate::dest::webhook::WebhookConfig;

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
    let Some(webhook) = warehouse.kind.config::<WebhookConfig>() else {
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
    let Some(file) = config.destinations["local"].kind.config::<FileConfig>() else {
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
    let summary: Vec<(usize, &str)> = errors.iter().map(|e| (e.line, e.field.as_str())).collect();
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
    use crate::deliver::ConcurrencySetting;
    let config = load(GOOD).expect("valid");
    let warehouse = &config.destinations["warehouse"].common;
    assert_eq!(warehouse.concurrency, ConcurrencySetting::Adaptive);
    assert_eq!(warehouse.max_in_flight(), 128);
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
    assert_eq!(warehouse.max_in_flight(), 6);
    assert_eq!(warehouse.batch.max_events, 500);
    let text = GOOD.replace(
        "batch = { max_events = 20 }",
        "concurrency = \"adaptive\"\nmax_concurrency = 9",
    );
    let config = load(&text).expect("valid");
    assert_eq!(config.destinations["warehouse"].common.max_in_flight(), 9);
    let segment = GOOD.replace(
            "type = \"webhook\"\nendpoint = \"http://127.0.0.1:9000/events\"\nheaders = { Authorization = \"Bearer ${TOKEN}\" }\nbatch = { max_events = 20 }",
            "type = \"segment\"\nwrite_key = \"segment-write-key\"",
        );
    let config = load(&segment).expect("valid");
    let common = &config.destinations["warehouse"].common;
    assert_eq!(
        (common.batch.max_events, common.batch.max_bytes),
        (2500, 480 * 1024)
    );
    // The vendor's rate limit and concurrency cap, filled in for delivery.
    assert_eq!(common.max_concurrency, Some(100));
    assert_eq!(
        common.rate_limit.and_then(|r| r.requests_per_second),
        Some(1000)
    );
    let mine = segment.replace(
        "write_key = \"segment-write-key\"",
        "write_key = \"segment-write-key\"\nrate_limit = { events_per_second = 5 }",
    );
    let config = load(&mine).expect("valid");
    let limit = config.destinations["warehouse"].common.rate_limit;
    assert_eq!(limit.and_then(|r| r.events_per_second), Some(5));
    assert_eq!(limit.and_then(|r| r.requests_per_second), None);
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
    let summary: Vec<(usize, &str)> = errors.iter().map(|e| (e.line, e.field.as_str())).collect();
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
    let bad = format!("{GOOD}\n[qoe]\nenabled = true\nmax_sessions = 0\nend_grace_ms = 99999999\n");
    let errors = load(&bad).expect_err("invalid").0;
    let summary: Vec<(usize, &str)> = errors.iter().map(|e| (e.line, e.field.as_str())).collect();
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

/// A vendor endpoint the HTTP client would refuse is refused here, at its own line,
/// rather than by every request the destination builds.
#[test]
fn vendor_endpoints_the_client_cannot_send_to_name_their_line() {
    for (vendor, keys) in [
        ("segment", "write_key = \"wk-0123456789\""),
        (
            "ga4",
            "measurement_id = \"G-1\"\napi_secret = \"api-secret-1\"",
        ),
        ("tealium", "account = \"acme\"\nprofile = \"main\""),
    ] {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[destinations.vendor]\ntype = \"{vendor}\"\n{keys}\nendpoint = \"http://127.0.0.1:9/v1/<batch>\"\n"
        );
        let errors = load(&text).expect_err(vendor).0;
        assert_eq!(errors.len(), 1, "{vendor}: {errors:?}");
        let error = &errors[0];
        assert_eq!(error.field, "destinations.vendor.endpoint", "{vendor}");
        assert_eq!(error.line, 6 + keys.lines().count(), "{vendor}: {error}");
        assert!(error.message.contains("is not a URL"), "{vendor}: {error}");
    }
}
