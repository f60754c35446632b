//! The real relay binary as a child process, for tests that kill it (SIGKILL) or read
//! its memory. Killed when dropped, so no process outlives a failed test.
// The child runs in real time; nothing here reads the relay's clock.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use serde_json::Value;
use std::path::Path;
use std::time::Duration;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_playrelay");

/// The real relay as a child process; killed (SIGKILL) when dropped.
pub struct Relay {
    pub child: Child,
    pub addr: String,
}

impl Relay {
    pub fn start(dir: &Path, config: &str) -> Relay {
        std::fs::create_dir_all(dir).expect("relay dir");
        std::fs::write(dir.join("routes.toml"), config).expect("write config");
        let mut child = Command::new(BIN)
            .args(["run", "--config", "routes.toml", "--log-format", "json"])
            .current_dir(dir)
            .stderr(Stdio::piped())
            .spawn()
            .expect("start playrelay");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let log: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                if log["message"] == "relay ready" {
                    let _ = tx.send(log["listen"].as_str().unwrap_or("").to_string());
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!("relay not ready in 30 s");
            }
        };
        Relay { child, addr }
    }

    pub fn kill(mut self) {
        // `Child::kill` is SIGKILL: no drain, no cursor saved, no goodbye.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn get(&self, path: &str) -> String {
        let mut stream = std::net::TcpStream::connect(&self.addr).expect("connect");
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .expect("send");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("read");
        answer
    }

    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
