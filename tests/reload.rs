//! Changing routing without a restart: swaps under load, refused files, handover of
//! queued events, restart-only settings, and the real binary's SIGHUP and file watch.
// The real binary and file watching run in real time.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod common;

use common::*;
use playrelay::config;
use serde_json::Value;
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn load(text: &str) -> playrelay::config::Config {
    config::load_str(&with_test_spool(text), Path::new("reload.toml"), &|_| None)
        .unwrap_or_else(|e| panic!("invalid test config:\n{e}"))
}

fn destination(name: &str, url: &str, max_events: usize) -> String {
    destination_waiting(name, url, max_events, 2)
}

fn destination_waiting(name: &str, url: &str, max_events: usize, max_wait_ms: u64) -> String {
    format!(
        "[destinations.{name}]\ntype = \"webhook\"\nendpoint = \"{url}\"\nbatch = {{ max_events = {max_events}, max_wait_ms = {max_wait_ms} }}\n"
    )
}

/// Events with fresh, numbered ids, built from the fixture.
fn numbered_events(start: usize, count: usize) -> Vec<Value> {
    let fixture = fixture_events();
    (start..start + count)
        .map(|n| {
            let mut event = fixture[n % fixture.len()].clone();
            event["event_id"] = Value::String(format!("00000000-0000-4000-8000-{n:012x}"));
            event
        })
        .collect()
}

fn ndjson(events: &[Value]) -> String {
    events.iter().map(|e| e.to_string() + "\n").collect()
}

#[tokio::test]
async fn twenty_swaps_under_load_lose_and_duplicate_nothing() {
    let a = StandIn::ok().await;
    let b = StandIn::ok().await;
    let c = StandIn::ok().await;
    let server = "[server]\nlisten = \"127.0.0.1:0\"\n";
    let versions = [
        // a and b get everything.
        format!(
            "{server}{}{}[[routes]]\nname = \"all\"\nmatch = {{ types = [\"*\"] }}\nto = [\"a\", \"b\"]\n",
            destination("a", &a.url("/"), 10),
            destination("b", &b.url("/"), 10)
        ),
        // b removed, c added, a changed (rebuilt).
        format!(
            "{server}{}{}[[routes]]\nname = \"all\"\nmatch = {{ types = [\"*\"] }}\nto = [\"a\", \"c\"]\n",
            destination("a", &a.url("/"), 25),
            destination("c", &c.url("/"), 10)
        ),
        // All three, split by type.
        format!(
            "{server}{}{}{}[[routes]]\nname = \"playback\"\nmatch = {{ types = [\"playback.*\"] }}\nto = [\"a\"]\n[[routes]]\nname = \"rest\"\nmatch = {{ types = [\"*\"] }}\nto = [\"b\", \"c\"]\n",
            destination("a", &a.url("/"), 25),
            destination("b", &b.url("/"), 7),
            destination("c", &c.url("/"), 10)
        ),
    ];
    let relay = start_relay(&versions[0]).await;
    let addr = relay.local_addr;
    let reloader = relay.reloader();

    let sent = Arc::new(AtomicUsize::new(0));
    let sender = {
        let sent = sent.clone();
        tokio::spawn(async move {
            for request in 0..300 {
                let events = numbered_events(request * 10, 10);
                let answer = post_ndjson(addr, ndjson(&events)).await;
                assert_eq!(answer.body["accepted"], 10);
                sent.fetch_add(10, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    for swap in 1..=20 {
        // Each swap lands while events are flowing: after the sender's next request.
        let before = sent.load(Ordering::SeqCst);
        wait_until("the sender's next request", Duration::from_secs(10), || {
            sent.load(Ordering::SeqCst) > before
        })
        .await;
        let outcome = reloader.apply(load(&versions[swap % versions.len()])).await;
        assert!(outcome.applied, "swap {swap}: {outcome:?}");
    }
    sender.await.expect("sender");
    let metrics = relay.relay.clone();
    relay.shutdown().await;

    let text = metrics.metrics.encode();
    assert_eq!(
        metric(&text, "playrelay_config_reloads_total{result=\"success\"}"),
        20.0
    );
    let mut seen = HashSet::new();
    for (name, stand_in) in [("a", &a), ("b", &b), ("c", &c)] {
        let delivered = stand_in.delivered_events();
        let counts = id_counts(&delivered);
        assert!(
            counts.values().all(|n| *n == 1),
            "{name} got an event twice"
        );
        let accounts = Accounts::read(&text, name);
        accounts.assert_balanced();
        assert_eq!(
            accounts.sent,
            delivered.len() as f64,
            "{name}: {accounts:?}"
        );
        assert_eq!(
            accounts.dead_lettered + accounts.dropped,
            0.0,
            "{name}: {accounts:?}"
        );
        seen.extend(counts.into_keys());
    }
    // Every version routes every event somewhere: each accepted event arrived.
    assert_eq!(sent.load(Ordering::SeqCst), 3000);
    assert_eq!(seen.len(), 3000);
    assert_eq!(metric(&text, "playrelay_events_unrouted_total"), 0.0);
}

#[tokio::test]
async fn an_invalid_file_keeps_the_old_routing_and_a_later_valid_one_applies() {
    let old_hook = StandIn::ok().await;
    let new_hook = StandIn::ok().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("routes.toml");
    let version = |url: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndead_letter_dir = \"{}\"\n{}[[routes]]\nname = \"all\"\nmatch = {{ types = [\"*\"] }}\nto = [\"hook\"]\n",
            dir.path().display(),
            destination("hook", url, 10)
        )
    };
    std::fs::write(&path, version(&old_hook.url("/"))).expect("write");
    let relay = start_relay(&std::fs::read_to_string(&path).expect("read")).await;
    let reloader = relay.reloader();

    std::fs::write(
        &path,
        version(&new_hook.url("/")).replace("to = [\"hook\"]", "to = [\"hookk\"]"),
    )
    .expect("write");
    let refused = reloader.reload_file(&path).await;
    assert!(!refused.applied);
    assert_eq!(refused.errors.len(), 1, "{refused:?}");
    assert!(
        refused.errors[0].contains("routes.toml:11:"),
        "names the line: {}",
        refused.errors[0]
    );
    assert!(refused.errors[0].contains("routes[0].to[0]"));
    let ready = send(relay.local_addr, "GET", "/readyz", &[], "").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.body["last_reload"]["applied"], false);
    assert!(ready.body["last_reload"]["errors"][0]
        .as_str()
        .unwrap_or("")
        .contains("hookk"));
    let text = relay.relay.metrics.encode();
    assert_eq!(
        metric(&text, "playrelay_config_reloads_total{result=\"failed\"}"),
        1.0
    );
    assert_eq!(metric(&text, "playrelay_config_last_reload_success"), 0.0);

    post_ndjson(relay.local_addr, ndjson(&numbered_events(0, 5))).await;
    assert_eq!(
        old_hook
            .wait_for_events(5, Duration::from_secs(5))
            .await
            .len(),
        5
    );

    std::fs::write(&path, version(&new_hook.url("/"))).expect("write");
    let applied = reloader.reload_file(&path).await;
    assert!(applied.applied, "{applied:?}");
    assert_eq!(applied.rebuilt, vec!["hook".to_string()]);
    post_ndjson(relay.local_addr, ndjson(&numbered_events(5, 5))).await;
    assert_eq!(
        new_hook
            .wait_for_events(5, Duration::from_secs(5))
            .await
            .len(),
        5
    );
    assert_eq!(old_hook.delivered_events().len(), 5);
    let text = relay.relay.metrics.encode();
    assert_eq!(metric(&text, "playrelay_config_last_reload_success"), 1.0);
    relay.shutdown().await;
}

#[tokio::test]
async fn a_rebuilt_destination_takes_its_queued_events_along_and_a_kept_one_keeps_them() {
    let hung = StandIn::start(|_| Reply::Hang).await;
    let fixed = StandIn::ok().await;
    let other_hung = StandIn::start(|_| Reply::Hang).await;
    let dead = tempfile::tempdir().expect("tempdir");
    let version = |moving_url: &str, extra_route: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndrain_timeout_ms = 300\ndead_letter_dir = {dead:?}\n{}concurrency = 1\ntimeout_ms = 60000\n{}concurrency = 1\ntimeout_ms = 60000\n[[routes]]\nname = \"all\"\nmatch = {{ types = [\"*\"] }}\nto = [\"moving\", \"staying\"]\n{extra_route}",
            // A batch waits for its 10 events: with a 2 ms wait, a busy box could send a
            // smaller first batch and leave other than 90 queued.
            destination_waiting("moving", moving_url, 10, 1_000),
            destination_waiting("staying", &other_hung.url("/"), 10, 1_000),
            dead = dead.path().display().to_string(),
        )
    };
    let relay = start_relay(&version(&hung.url("/"), "")).await;
    post_ndjson(relay.local_addr, ndjson(&numbered_events(0, 100))).await;
    // Each hung destination takes one batch of 10; the other 90 stay queued.
    wait_until("90 events queued at both", Duration::from_secs(5), || {
        let text = relay.relay.metrics.encode();
        Accounts::read(&text, "staying").queued == 90.0
            && Accounts::read(&text, "moving").queued == 90.0
    })
    .await;
    let before = Accounts::read(&relay.relay.metrics.encode(), "staying");
    assert_eq!(before.queued, 90.0, "{before:?}");

    // `moving` gets a working endpoint; `staying` is unchanged (a new route is added).
    let outcome = relay
        .reloader()
        .apply(load(&version(
            &fixed.url("/"),
            "[[routes]]\nname = \"errors\"\nmatch = { types = [\"*.error\"] }\nto = [\"staying\"]\n",
        )))
        .await;
    assert_eq!(outcome.rebuilt, vec!["moving".to_string()]);
    assert_eq!(outcome.kept, vec!["staying".to_string()]);
    // The 90 queued events moved to the rebuilt destination and were delivered there;
    // the 10 in the hung request stay with the old worker.
    assert_eq!(
        fixed
            .wait_for_events(90, Duration::from_secs(5))
            .await
            .len(),
        90
    );
    let after = Accounts::read(&relay.relay.metrics.encode(), "staying");
    assert_eq!(
        after.queued, 90.0,
        "kept destination keeps its queue: {after:?}"
    );
    let metrics = relay.relay.clone();
    relay.shutdown().await;
    for name in ["moving", "staying"] {
        Accounts::read(&metrics.metrics.encode(), name).assert_balanced();
    }
}

#[tokio::test]
async fn a_listen_change_is_reported_as_needing_a_restart() {
    let hook = StandIn::ok().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndead_letter_dir = {:?}\n{}[[routes]]\nname = \"all\"\nmatch = {{ types = [\"*\"] }}\nto = [\"hook\"]\n",
        dir.path().display().to_string(),
        destination("hook", &hook.url("/"), 10)
    );
    let relay = start_relay(&text).await;
    let outcome = relay
        .reloader()
        .apply(load(&text.replace("127.0.0.1:0", "127.0.0.1:1")))
        .await;
    assert!(outcome.applied);
    assert_eq!(outcome.kept, vec!["hook".to_string()]);
    assert_eq!(outcome.restart_required.len(), 1);
    assert!(outcome.restart_required[0].starts_with("server.listen"));
    let text = relay.relay.metrics.encode();
    assert_eq!(metric(&text, "playrelay_config_restart_required"), 1.0);
    relay.shutdown().await;
}

mod binary {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::process::{Child, Command, Stdio};
    use std::time::Instant;

    const BIN: &str = env!("CARGO_BIN_EXE_playrelay");

    fn config(out: &str) -> String {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[destinations.local]\ntype = \"file\"\npath = \"{out}\"\n[[routes]]\nname = \"all\"\nmatch = {{ types = [\"*\"] }}\nto = [\"local\"]\n"
        )
    }

    /// Starts the binary and waits for the log line `ready_message`; returns the address.
    fn start(dir: &Path, extra: &[&str], ready_message: &'static str) -> (Child, String) {
        let mut child = Command::new(BIN)
            .args(["run", "--config", "routes.toml", "--log-format", "json"])
            .args(extra)
            .current_dir(dir)
            .stderr(Stdio::piped())
            .spawn()
            .expect("start playrelay");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut addr = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let log: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                if log["message"] == "relay ready" {
                    addr = log["listen"].as_str().unwrap_or("").to_string();
                }
                if log["message"] == ready_message {
                    let _ = tx.send(addr.clone());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .inspect_err(|_| {
                let _ = child.kill();
            })
            .expect("relay ready in 20 s");
        (child, addr)
    }

    fn get(addr: &str, path: &str) -> String {
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .expect("send");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("read");
        answer
    }

    fn wait_for_reloads(addr: &str, n: f64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = get(addr, "/metrics");
            if metric(&text, "playrelay_config_reloads_total{result=\"success\"}") >= n {
                return;
            }
            assert!(Instant::now() < deadline, "no reload seen:\n{text}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the relay if a test fails before stopping it, so no process outlives the test.
    struct KillOnDrop(Option<Child>);

    impl KillOnDrop {
        fn id(&self) -> u32 {
            self.0.as_ref().map_or(0, Child::id)
        }
    }

    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            if let Some(mut child) = self.0.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    fn stop(mut guard: KillOnDrop) {
        let Some(mut child) = guard.0.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("relay did not stop");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn sighup_reloads_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("routes.toml"), config("one.ndjson")).expect("write");
        let (child, addr) = start(dir.path(), &["--no-watch"], "relay ready");
        let child = KillOnDrop(Some(child));
        std::fs::write(dir.path().join("routes.toml"), config("two.ndjson")).expect("write");
        let hup = Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(hup.success());
        wait_for_reloads(&addr, 1.0);
        let readyz = get(&addr, "/readyz");
        assert!(readyz.contains("\"rebuilt\":[\"local\"]"), "{readyz}");
        stop(child);
    }

    #[test]
    fn renaming_a_new_file_over_the_config_reloads_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("routes.toml");
        std::fs::write(&path, config("one.ndjson")).expect("write");
        let (child, addr) = start(dir.path(), &[], "watching the config file for changes");
        let child = KillOnDrop(Some(child));
        // What editors do: write elsewhere, then rename over the original.
        let staged = dir.path().join(".routes.toml.swp");
        std::fs::write(&staged, config("two.ndjson")).expect("write");
        std::fs::rename(&staged, &path).expect("rename");
        wait_for_reloads(&addr, 1.0);
        stop(child);
    }
}

#[tokio::test]
async fn rotated_ingest_keys_apply_on_reload() {
    let hook = StandIn::ok().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let version = |key: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndead_letter_dir = {:?}\n[sources.web]\nkeys = [\"{key}\"]\n{}[[routes]]\nname = \"all\"\nmatch = {{ types = [\"*\"] }}\nto = [\"hook\"]\n",
            dir.path().display().to_string(),
            destination("hook", &hook.url("/"), 10)
        )
    };
    let relay = start_relay(&version("old-key-0123456789")).await;
    let post = |key: &'static str| {
        let addr = relay.local_addr;
        async move {
            send(
                addr,
                "POST",
                "/v1/events",
                &[
                    ("content-type", "application/x-ndjson"),
                    ("x-playrelay-key", key),
                ],
                ndjson(&numbered_events(0, 1)),
            )
            .await
            .status
        }
    };
    assert_eq!(post("old-key-0123456789").await, 202);
    let outcome = relay
        .reloader()
        .apply(load(&version("new-key-0123456789")))
        .await;
    assert!(outcome.applied);
    assert_eq!(outcome.kept, vec!["hook".to_string()]);
    assert_eq!(post("old-key-0123456789").await, 401);
    assert_eq!(post("new-key-0123456789").await, 202);
    relay.shutdown().await;
}
