//! The real binary: `validate`, and `run` stopped by SIGTERM.
// The real binary in another process runs in real time.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_playrelay");

#[test]
fn validate_accepts_the_shipped_routes_file() {
    let out = Command::new(BIN)
        .args([
            "validate",
            concat!(env!("CARGO_MANIFEST_DIR"), "/routes.toml"),
        ])
        .output()
        .expect("run playrelay");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
}

#[test]
fn validate_prints_every_error_with_its_line_and_exits_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("routes.toml");
    std::fs::write(
        &path,
        r#"[server]
listen = "127.0.0.1:8080"

[destinations.warehouse]
type = "webhook"
endpoint = "http://127.0.0.1:9000/events"
headers = { Authorization = "Bearer ${PLAYRELAY_TEST_UNSET_TOKEN}" }
timeout_msec = 5

[[routes]]
name = "everything"
match = { types = ["playback.[", "*"] }
to = ["warehouse", "nowhere"]
"#,
    )
    .expect("write config");
    let out = Command::new(BIN)
        .arg("validate")
        .arg(&path)
        .env_remove("PLAYRELAY_TEST_UNSET_TOKEN")
        .output()
        .expect("run playrelay");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = path.display().to_string();
    for (line, field, words) in [
        (
            7,
            "destinations.warehouse.headers.Authorization",
            "PLAYRELAY_TEST_UNSET_TOKEN is not set",
        ),
        (8, "destinations.warehouse.timeout_msec", "unknown field"),
        (12, "routes[0].match.types[0]", "bad glob"),
        (13, "routes[0].to[1]", "no destination named \"nowhere\""),
    ] {
        let expected = format!("{file}:{line}:");
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&expected) && l.contains(field) && l.contains(words)),
            "missing {expected} {field} {words} in:\n{stderr}"
        );
    }
    assert!(stderr.contains("4 error(s)"), "{stderr}");
}

#[test]
fn run_serves_until_sigterm_then_drains_and_exits_0() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("routes.toml");
    std::fs::write(
        &config,
        r#"[server]
listen = "127.0.0.1:0"
[destinations.local]
type = "file"
path = "out/events.ndjson"
[[routes]]
name = "all"
match = { types = ["*"] }
to = ["local"]
"#,
    )
    .expect("write config");
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .args(["--log-format", "json"])
        .current_dir(dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start playrelay");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr = loop {
        assert!(Instant::now() < deadline, "relay did not get ready");
        let line = lines.next().expect("relay log line").expect("utf8 log");
        let log: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
        if log["message"] == "relay ready" {
            break log["listen"].as_str().expect("listen field").to_string();
        }
    };
    let mut stream = std::net::TcpStream::connect(&addr).expect("connect");
    let body = common::FIXTURE;
    write!(
        stream,
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut stream, &mut answer).expect("answer");
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "relay did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}");
    let written = std::fs::read_to_string(dir.path().join("out/events.ndjson")).expect("output");
    assert_eq!(written.lines().count(), 708);
}

#[test]
fn test_command_passes_the_shipped_cases_and_shows_a_readable_diff_on_failure() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(BIN)
        .args([
            "test",
            "--config",
            &format!("{root}/routes.toml"),
            &format!("{root}/routes.test.toml"),
        ])
        .output()
        .expect("run playrelay");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("4 passed, 0 failed"), "{stdout}");

    let dir = tempfile::tempdir().expect("tempdir");
    let cases = dir.path().join("cases.toml");
    let shipped = std::fs::read_to_string(format!("{root}/routes.test.toml")).expect("cases");
    let broken = shipped
        .replacen("\"Video Playback Paused\"", "\"Video Paused\"", 1)
        .replacen(
            "expect.destinations = [\"local\", \"segment\", \"warehouse\"]",
            "expect.destinations = [\"local\", \"segment\", \"tealium\", \"warehouse\"]",
            1,
        );
    std::fs::write(&cases, broken).expect("write");
    let out = Command::new(BIN)
        .args(["test", "--config", &format!("{root}/routes.toml")])
        .arg(&cases)
        .output()
        .expect("run playrelay");
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "segment /batch/0/event: expected \"Video Paused\", got \"Video Playback Paused\""
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("destinations: expected [local, segment, tealium, warehouse], got [local, segment, warehouse]"),
        "{stdout}"
    );
    assert!(
        stdout.contains("tealium: routed but left out (disabled)")
            || stdout.contains("tealium: routed but dropped"),
        "{stdout}"
    );
    assert!(stdout.contains("2 passed, 2 failed"), "{stdout}");
}

#[test]
fn translate_into_a_reader_that_stops_early_exits_quietly() {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut child = Command::new(BIN)
        .args([
            "translate",
            "--config",
            &format!("{root}/routes.toml"),
            "--destination",
            "segment",
            "--sent-at",
            "2026-11-01T19:00:00Z",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start playrelay");
    let mut stdin = child.stdin.take().expect("stdin");
    // Far more output than a pipe buffers (64 KiB), so the write after `head` left fails.
    let writer = std::thread::spawn(move || {
        for _ in 0..4 {
            stdin.write_all(common::FIXTURE.as_bytes()).expect("feed");
        }
    });
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("first line");
    assert!(!first.is_empty(), "translate printed nothing");
    // The reader (like `head -1`) is gone: stdout is dropped here.
    writer.join().expect("writer");
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.trim().is_empty(), "not quiet: {stderr}");
}

#[test]
fn replay_twice_leaves_only_the_last_runs_failures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("routes.toml");
    std::fs::write(
        &config,
        format!(
            r#"[server]
listen = "127.0.0.1:0"
[destinations.warehouse]
type = "webhook"
endpoint = "http://127.0.0.1:{}/events"
retry = {{ max_attempts = 1 }}
[[routes]]
name = "all"
match = {{ types = ["*"] }}
to = ["warehouse"]
"#,
            common::closed_port()
        ),
    )
    .expect("write config");
    let dead = dir.path().join("warehouse.ndjson");
    let records: String = common::FIXTURE
        .lines()
        .take(5)
        .map(|event| {
            format!(
                r#"{{"dead_lettered_at":"2026-11-01T19:00:00Z","destination":"warehouse","reason":"unreachable","attempts":1,"event":{event}}}"#
            ) + "\n"
        })
        .collect();
    std::fs::write(&dead, records).expect("write dead letters");
    let failed_again = dir.path().join("warehouse.failed-again.ndjson");
    for run in 1..=2 {
        let out = Command::new(BIN)
            .args(["replay", "--config"])
            .arg(&config)
            .args(["--destination", "warehouse"])
            .arg(&dead)
            .current_dir(dir.path())
            .output()
            .expect("run playrelay");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "run {run}: {stdout}");
        assert!(stdout.contains("5 failed again"), "run {run}: {stdout}");
        let lines = std::fs::read_to_string(&failed_again).expect("failed-again file");
        assert_eq!(lines.lines().count(), 5, "run {run}: {lines}");
    }
    assert_eq!(
        std::fs::read_to_string(&dead)
            .expect("input")
            .lines()
            .count(),
        5,
        "the input file is left as it was"
    );
}

#[test]
fn validate_reports_an_unset_variable_once_per_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("routes.toml");
    std::fs::write(
        &path,
        r#"[server]
listen = "${PLAYRELAY_TEST_UNSET_LISTEN}"

[destinations.warehouse]
type = "webhook"
endpoint = "${PLAYRELAY_TEST_UNSET_URL}"
headers = { Authorization = "${PLAYRELAY_TEST_UNSET_TOKEN} ${PLAYRELAY_TEST_UNSET_TOKEN}" }

[[routes]]
name = "everything"
match = { types = ["*"] }
to = ["warehouse"]
"#,
    )
    .expect("write config");
    let out = Command::new(BIN)
        .arg("validate")
        .arg(&path)
        .env_remove("PLAYRELAY_TEST_UNSET_LISTEN")
        .env_remove("PLAYRELAY_TEST_UNSET_URL")
        .env_remove("PLAYRELAY_TEST_UNSET_TOKEN")
        .output()
        .expect("run playrelay");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for name in [
        "PLAYRELAY_TEST_UNSET_LISTEN",
        "PLAYRELAY_TEST_UNSET_URL",
        "PLAYRELAY_TEST_UNSET_TOKEN",
    ] {
        assert_eq!(
            stderr.matches(&format!("{name} is not set")).count(),
            1,
            "{name}:\n{stderr}"
        );
    }
    assert!(stderr.contains("3 error(s)"), "{stderr}");
}

/// Secrets are refused when too short to be real, and hidden by position: a webhook's
/// `?token=` and URL password never print, and hiding them leaves the rest of the URL
/// as it was.
#[test]
fn translate_hides_url_secrets_by_position_and_validate_refuses_short_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let short = dir.path().join("short.toml");
    std::fs::write(
        &short,
        r#"[server]
listen = "127.0.0.1:8080"

[destinations.ga4]
type = "ga4"
measurement_id = "G-1"
api_secret = "s"

[destinations.hook]
type = "webhook"
endpoint = "https://hooks.example.com/in?token=abc"
"#,
    )
    .expect("write config");
    let out = Command::new(BIN)
        .arg("validate")
        .arg(&short)
        .output()
        .expect("run playrelay");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = short.display().to_string();
    for (line, field) in [
        (7, "destinations.ga4.api_secret"),
        (11, "destinations.hook.endpoint"),
    ] {
        let expected = format!("{file}:{line}:");
        assert!(
            stderr.lines().any(|l| l.starts_with(&expected)
                && l.contains(field)
                && l.contains("at least 8 characters")),
            "missing {expected} {field} in:\n{stderr}"
        );
    }

    let config = dir.path().join("routes.toml");
    std::fs::write(
        &config,
        r#"[server]
listen = "127.0.0.1:8080"

[destinations.hook]
type = "webhook"
endpoint = "https://relay:pa55word-1@hooks.example.com/in?token=tok-123456789&team=video"
headers = { "X-Api-Key" = "key-0123456789", "X-Team" = "video" }
"#,
    )
    .expect("write config");
    let mut child = Command::new(BIN)
        .args(["translate", "--config"])
        .arg(&config)
        .args(["--destination", "hook", "--sent-at", "2026-11-01T19:00:00Z"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start playrelay");
    let first = common::FIXTURE.lines().next().expect("a fixture event");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(first.as_bytes())
        .expect("feed");
    let out = child.wait_with_output().expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("POST https://relay:***@hooks.example.com/in?token=***&team=video\n"),
        "{stdout}"
    );
    assert!(stdout.contains("x-api-key: ***\n"), "{stdout}");
    assert!(stdout.contains("x-team: video\n"), "{stdout}");
    for secret in ["pa55word-1", "tok-123456789", "key-0123456789"] {
        assert!(!stdout.contains(secret), "{secret} shown in:\n{stdout}");
    }
}

/// A webhook's `fields` are JSON pointers checked at load: each bad one is reported
/// at its own line; an envelope needs a JSON array body; a signing secret is a secret.
#[test]
fn validate_reports_bad_webhook_fields_at_their_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("routes.toml");
    std::fs::write(
        &path,
        r#"[server]
listen = "127.0.0.1:8080"

[destinations.hook]
type = "webhook"
endpoint = "https://hooks.example.com/in"
encoding = "ndjson"
envelope = true
signing_secret = "short"

[destinations.hook.fields]
id = "/event_id"
position = "playback/position_ms"
odd = "/a~2b"
"#,
    )
    .expect("write config");
    let out = Command::new(BIN)
        .arg("validate")
        .arg(&path)
        .output()
        .expect("run playrelay");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = path.display().to_string();
    for (line, field, words) in [
        (8, "destinations.hook.envelope", "json_array"),
        (
            9,
            "destinations.hook.signing_secret",
            "at least 8 characters",
        ),
        (13, "destinations.hook.fields.position", "must start with /"),
        (14, "destinations.hook.fields.odd", "~0"),
    ] {
        let expected = format!("{file}:{line}:");
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&expected) && l.contains(field) && l.contains(words)),
            "missing {expected} {field} {words} in:\n{stderr}"
        );
    }
    assert!(stderr.contains("4 error(s)"), "{stderr}");
}

/// `playrelay test` follows the plan the relay's worker follows: an event the
/// destination's consent rule drops is left out, a `drop_fields` field is not in the
/// body, and with `[qoe]` on, a case's session makes the `session.summary` the relay
/// would send. (Before the one plan, the first two passed for deliveries the relay drops.)
#[test]
fn test_command_applies_privacy_rules_and_plans_session_summaries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("routes.toml");
    std::fs::write(
        &config,
        r#"[server]
listen = "127.0.0.1:0"

[qoe]
enabled = true

[destinations.hook]
type = "webhook"
endpoint = "http://127.0.0.1:9/events"
consent = "analytics"
drop_fields = ["properties.email"]

[[routes]]
name = "everything"
match = { types = ["*"] }
to = ["hook"]
"#,
    )
    .expect("write config");
    let event = |id: &str, ty: &str, ms: u32, extra: &str| {
        format!(
            r#"{{"event_id": "0190f6d2-7c3a-7b1e-9a1e-3f2c8d1e4b{id}", "type": "{ty}", "timestamp": "2026-11-01T19:00:{:02}.{:03}Z", "session": {{"id": "s-1"}}, "user": {{"anonymous_id": "a-1"}}{extra}}}"#,
            ms / 1000,
            ms % 1000
        )
    };
    let cases = dir.path().join("cases.toml");
    let refused = event(
        "01",
        "playback.paused",
        0,
        r#", "context": {"consent": {"analytics": false}}"#,
    );
    let private = event(
        "02",
        "playback.paused",
        0,
        r#", "properties": {"email": "a@example.com", "plan": "gold"}"#,
    );
    let started = event("03", "playback.requested", 0, "");
    let playing = event("04", "playback.started", 1500, "");
    let ended = event("05", "playback.completed", 9000, "");
    std::fs::write(
        &cases,
        format!(
            r#"sent_at = "2026-11-01T21:00:00Z"

[[cases]]
name = "no consent, yet expected at the hook"
event = '{refused}'
expect.destinations = ["hook"]

[[cases]]
name = "a dropped field, yet expected in the body"
event = '{private}'
expect.values.hook = {{ "/properties/email" = "a@example.com" }}

[[cases]]
name = "what the rules let through"
event = '{private}'
expect.destinations = ["hook"]
expect.values.hook = {{ "/properties/plan" = "gold" }}

[[cases]]
name = "a session's summary"
events = ['{started}', '{playing}']
event = '{ended}'
expect.destinations = ["hook"]
expect.summary.destinations = ["hook"]
expect.summary.values.hook = {{ "/type" = "session.summary", "/session/id" = "s-1", "/data/events" = 3, "/data/startup_ms" = 1500, "/data/ended_by" = "completed" }}
"#
        ),
    )
    .expect("write cases");
    let out = Command::new(BIN)
        .arg("test")
        .arg("--config")
        .arg(&config)
        .arg(&cases)
        .output()
        .expect("run playrelay");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(
            "FAIL  no consent, yet expected at the hook\n      destinations: expected [hook], got none\n        hook: routed but left out (consent)\n"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "FAIL  a dropped field, yet expected in the body\n      hook /properties/email: expected \"a@example.com\", but the body has no such value\n"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("ok    what the rules let through\n"),
        "{stdout}"
    );
    assert!(stdout.contains("ok    a session's summary\n"), "{stdout}");
    assert!(stdout.contains("2 passed, 2 failed"), "{stdout}");
}

/// `translate` with `[qoe]` on shows the `session.summary` of each session in the
/// input after its events, planned like them (here: left out by a consent rule).
#[test]
fn translate_adds_the_summaries_of_the_input_sessions_when_qoe_is_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("routes.toml");
    let write = |qoe: bool| {
        std::fs::write(
            &config,
            format!(
                r#"[server]
listen = "127.0.0.1:0"

[qoe]
enabled = {qoe}

[destinations.hook]
type = "webhook"
endpoint = "http://127.0.0.1:9/events"
consent = "advertising"
batch = {{ max_events = 1 }}

[[routes]]
name = "everything"
match = {{ types = ["*"] }}
to = ["hook"]
"#
            ),
        )
        .expect("write config");
    };
    let input = concat!(
        r#"{"event_id": "0190f6d2-7c3a-7b1e-9a1e-3f2c8d1e4b01", "type": "playback.requested", "timestamp": "2026-11-01T19:00:00.000Z", "session": {"id": "s-1"}, "user": {"anonymous_id": "a-1"}}"#,
        "\n",
        r#"{"event_id": "0190f6d2-7c3a-7b1e-9a1e-3f2c8d1e4b02", "type": "playback.paused", "timestamp": "2026-11-01T19:00:01.000Z", "session": {"id": "s-2"}, "user": {"anonymous_id": "a-2"}, "context": {"consent": {"advertising": false}}}"#,
        "\n",
    );
    let run = || {
        let mut child = Command::new(BIN)
            .arg("translate")
            .arg("--config")
            .arg(&config)
            .args(["--destination", "hook", "--sent-at", "2026-11-01T21:00:00Z"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run playrelay");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write");
        let out = child.wait_with_output().expect("output");
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    write(false);
    let off = run();
    assert_eq!(
        off.matches("POST http://127.0.0.1:9/events").count(),
        1,
        "{off}"
    );
    assert!(!off.contains("session.summary"), "{off}");
    assert!(
        off.contains(
            "# event 1 (playback.paused 0190f6d2-7c3a-7b1e-9a1e-3f2c8d1e4b02): dropped: consent\n"
        ),
        "{off}"
    );
    write(true);
    let on = run();
    // Each session's summary: s-1's is sent, s-2's carries its first event's context,
    // so the consent rule leaves it out too.
    assert_eq!(
        on.matches("POST http://127.0.0.1:9/events").count(),
        2,
        "{on}"
    );
    assert_eq!(
        on.matches("\"type\":\"session.summary\"").count(),
        1,
        "{on}"
    );
    assert!(on.contains("\"ended_by\":\"idle_timeout\""), "{on}");
    assert!(
        on.contains("(session.summary ") && on.contains("): dropped: consent\n"),
        "{on}"
    );
}

/// A vendor `endpoint` the HTTP client would refuse (a `<` in it) or that would lose
/// the vendor's path (a query) is refused at load, at its line, for each vendor. (Such
/// an endpoint used to load and make every request fail as `invalid_request`; that
/// path, for a translator bug, is tested in `deliver::worker`.)
#[test]
fn validate_refuses_vendor_endpoints_the_client_cannot_send_to() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("routes.toml");
    std::fs::write(
        &path,
        r#"[server]
listen = "127.0.0.1:8080"

[destinations.segment]
type = "segment"
write_key = "wk-0123456789"
endpoint = "http://127.0.0.1:9/v1/<batch>"

[destinations.ga4]
type = "ga4"
measurement_id = "G-1"
api_secret = "api-secret-1"
endpoint = "http://127.0.0.1:9 /"

[destinations.tealium]
type = "tealium"
account = "acme"
profile = "main"
endpoint = "https://collect.example/?account=acme"
"#,
    )
    .expect("write config");
    let out = Command::new(BIN)
        .arg("validate")
        .arg(&path)
        .output()
        .expect("run playrelay");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = path.display().to_string();
    for (line, field, words) in [
        (7, "destinations.segment.endpoint", "is not a URL"),
        (13, "destinations.ga4.endpoint", "is not a URL"),
        (19, "destinations.tealium.endpoint", "query or fragment"),
    ] {
        let expected = format!("{file}:{line}:");
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&expected) && l.contains(field) && l.contains(words)),
            "missing {expected} {field} {words} in:\n{stderr}"
        );
    }
    assert!(stderr.contains("3 error(s)"), "{stderr}");
}
