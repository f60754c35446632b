//! The relay process.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// The relay under test: the release build of this checkout, unless `--relay PATH`
/// names another binary (e.g. an older build, for before/after figures).
const RELAY: &str = env!("CARGO_BIN_EXE_playrelay");

pub(crate) fn relay_binary() -> String {
    std::env::var("PLAYRELAY_BENCH_RELAY").unwrap_or_else(|_| RELAY.to_string())
}

pub(crate) struct RelayProcess {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
    pub(crate) clk_tck: f64,
}

impl RelayProcess {
    pub(crate) fn start(config: &Path, addr: SocketAddr, log: &Path) -> RelayProcess {
        let stderr = std::fs::File::create(log).expect("relay log");
        let child = Command::new(relay_binary())
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start the relay");
        let clk_tck = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0);
        RelayProcess {
            child,
            addr,
            clk_tck,
        }
    }

    pub(crate) async fn wait_ready(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                eprintln!("relay exited early: {status}");
                return false;
            }
            if let Ok(stream) = TcpStream::connect(self.addr).await {
                if let Ok((mut sender, conn)) = http1::handshake(TokioIo::new(stream)).await {
                    tokio::spawn(conn);
                    let request = hyper::Request::get(format!("http://{}/readyz", self.addr))
                        .header(hyper::header::HOST, "127.0.0.1")
                        .body(Full::new(Bytes::new()))
                        .expect("request");
                    if let Ok(r) = sender.send_request(request).await {
                        if r.status() == 200 {
                            return true;
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    pub(crate) async fn get(&self, path: &str) -> Option<Bytes> {
        get_from(self.addr, path).await
    }
}

pub(crate) async fn get_from(addr: SocketAddr, path: &str) -> Option<Bytes> {
    {
        let stream = TcpStream::connect(addr).await.ok()?;
        let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await.ok()?;
        tokio::spawn(conn);
        let request = hyper::Request::get(format!("http://{addr}{path}"))
            .header(hyper::header::HOST, "127.0.0.1")
            .body(Full::new(Bytes::new()))
            .ok()?;
        let response = tokio::time::timeout(Duration::from_secs(5), sender.send_request(request))
            .await
            .ok()?
            .ok()?;
        Some(response.into_body().collect().await.ok()?.to_bytes())
    }
}

impl RelayProcess {
    /// Per destination, what the relay says it did not deliver: dead-lettered events
    /// and drops other than `unmapped` (which the expected counts already leave out).
    pub(crate) async fn losses(&self) -> BTreeMap<String, Vec<(String, u64)>> {
        let text = self.get("/metrics").await.unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let label = |line: &str, key: &str| {
            let start = line.find(&format!("{key}=\""))? + key.len() + 2;
            let end = line[start..].find('"')? + start;
            Some(line[start..end].to_string())
        };
        let mut out: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
        for line in text.lines() {
            let what = if line.starts_with("playrelay_destination_events_dead_lettered_total{") {
                "dead_lettered".to_string()
            } else if line.starts_with("playrelay_destination_events_dropped_total{") {
                match label(line, "reason") {
                    Some(reason) if reason != "unmapped" => format!("dropped:{reason}"),
                    _ => continue,
                }
            } else {
                continue;
            };
            let value = line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0) as u64;
            if let (Some(destination), true) = (label(line, "destination"), value > 0) {
                out.entry(destination).or_default().push((what, value));
            }
        }
        out
    }

    /// User plus system CPU seconds so far.
    pub(crate) fn cpu_seconds(&self) -> f64 {
        cpu_seconds(&format!("/proc/{}/stat", self.child.id()), self.clk_tck)
    }

    /// Peak resident set size (VmHWM), MB.
    pub(crate) fn peak_rss_mb(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(0.0)
    }

    pub(crate) async fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// User plus system CPU seconds of the process whose `/proc/<pid>/stat` is `stat_path`.
pub(crate) fn cpu_seconds(stat_path: &str, clk_tck: f64) -> f64 {
    let stat = std::fs::read_to_string(stat_path).unwrap_or_default();
    // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / clk_tck
}
