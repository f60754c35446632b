//! The real binary: `validate`, and `run` stopped by SIGTERM.

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
