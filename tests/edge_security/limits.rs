//! Per-client and per-key rate limits, slow clients, and the in-flight request cap.

use super::*;

#[tokio::test]
async fn a_client_over_its_rate_limit_gets_429_while_another_client_is_unaffected() {
    let web = StandIn::ok().await;
    let tv = StandIn::ok().await;
    let server = "trusted_proxies = [\"127.0.0.1/32\"]\nper_client_rate_limit = { requests_per_second = 1, burst = 2 }";
    let relay = start_relay(&two_sources(&web, &tv, server)).await;
    let addr = relay.local_addr;
    let post = |xff: &'static str, n: usize| async move {
        let headers = [
            ("content-type", "application/json"),
            ("x-playrelay-key", WEB_KEY),
            ("x-forwarded-for", xff),
        ];
        send(addr, "POST", "/v1/events", &headers, events(n..n + 1)).await
    };
    assert_eq!(post("203.0.113.5", 0).await.status, 202);
    assert_eq!(post("203.0.113.5", 1).await.status, 202);
    let limited = post("203.0.113.5", 2).await;
    assert_eq!(limited.status, 429);
    let retry: u64 = limited.headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    assert!(
        limited.body["error"]
            .as_str()
            .unwrap_or("")
            .contains("rate limit"),
        "{}",
        limited.body
    );
    // Another client behind the same proxy has its own budget.
    assert_eq!(post("198.51.100.7", 3).await.status, 202);
    let text = metrics_text(addr).await;
    assert_eq!(
        metric(
            &text,
            "playrelay_ingest_refused_total{reason=\"rate_limited_client\"}"
        ),
        1.0
    );
    relay.shutdown().await;
    let ids: Vec<Value> = web
        .delivered_events()
        .iter()
        .map(|e| e["event_id"].clone())
        .collect();
    assert_eq!(
        ids.len(),
        3,
        "the refused request's event must not be delivered"
    );
    assert!(!ids.contains(&event(2)["event_id"]));
}

#[tokio::test]
async fn a_key_over_its_rate_limit_gets_429_while_other_keys_are_unaffected() {
    let web = StandIn::ok().await;
    let tv = StandIn::ok().await;
    let toml = two_sources(&web, &tv, "").replace(
        &format!("keys = [\"{TV_KEY}\"]"),
        &format!("keys = [\"{TV_KEY}\"]\nrate_limit = {{ requests_per_second = 1, burst = 1 }}"),
    );
    let relay = start_relay(&toml).await;
    let addr = relay.local_addr;
    let tv_post = json_post(&[("x-playrelay-key", TV_KEY)]);
    assert_eq!(
        send(addr, "POST", "/v1/events", &tv_post, events(0..1))
            .await
            .status,
        202
    );
    let limited = send(addr, "POST", "/v1/events", &tv_post, events(1..2)).await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.headers["retry-after"], "1");
    let web_post = json_post(&[("x-playrelay-key", WEB_KEY)]);
    assert_eq!(
        send(addr, "POST", "/v1/events", &web_post, events(2..3))
            .await
            .status,
        202
    );
    relay.shutdown().await;
    assert_eq!(tv.delivered_events().len(), 1);
    assert_eq!(web.delivered_events().len(), 1);
}

#[tokio::test]
async fn a_slow_loris_client_is_cut_off_and_a_slow_body_gets_408() {
    let web = StandIn::ok().await;
    let tv = StandIn::ok().await;
    let server = "header_read_timeout_ms = 300\nbody_read_timeout_ms = 300";
    let relay = start_relay(&two_sources(&web, &tv, server)).await;
    let addr = relay.local_addr;

    let started = Instant::now();
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    socket
        .write_all(b"POST /v1/events HTTP/1.1\r\nHost: relay\r\n")
        .await
        .expect("write");
    let mut closed = false;
    for i in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if socket
            .write_all(format!("X-Slow-{i}: x\r\n").as_bytes())
            .await
            .is_err()
        {
            closed = true;
            break;
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(1), socket.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            _ => {}
        }
    }
    let elapsed = started.elapsed();
    assert!(
        closed,
        "the relay kept a slow-loris connection open for {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_millis(1500),
        "cut off only after {elapsed:?}"
    );

    // Headers in time, then a body that never finishes.
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: relay\r\nX-Playrelay-Key: {WEB_KEY}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n[{{\"event_id\":"
    );
    socket.write_all(head.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), socket.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "no answer to a stalled body within 3 s");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_read_timeout_ms"), "{answer}");
    let text = metrics_text(addr).await;
    assert_eq!(
        metric(
            &text,
            "playrelay_ingest_refused_total{reason=\"body_timeout\"}"
        ),
        1.0
    );
    relay.shutdown().await;
    assert!(web.requests().is_empty());
}

#[tokio::test]
async fn past_the_in_flight_cap_requests_get_503_with_retry_after() {
    let web = StandIn::ok().await;
    let tv = StandIn::ok().await;
    let server = "max_in_flight_requests = 1\nbody_read_timeout_ms = 2000";
    let relay = start_relay(&two_sources(&web, &tv, server)).await;
    let addr = relay.local_addr;
    // One request holds the only slot while its body trickles in.
    let mut slow = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: relay\r\nX-Playrelay-Key: {WEB_KEY}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n["
    );
    slow.write_all(head.as_bytes()).await.expect("write");
    // Wait until it holds the slot: a keyless probe is refused 401 (after the slot check,
    // delivering nothing) while the slot is free, and 503 once it is taken.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let probe = send(addr, "POST", "/v1/events", &json_post(&[]), events(0..1)).await;
        if probe.status == 503 {
            break;
        }
        assert_eq!(probe.status, 401, "{}", probe.body);
        assert!(
            Instant::now() < deadline,
            "the slow request never held the slot"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let busy = send(
        addr,
        "POST",
        "/v1/events",
        &json_post(&[("x-playrelay-key", WEB_KEY)]),
        events(0..1),
    )
    .await;
    assert_eq!(busy.status, 503, "{}", busy.body);
    assert_eq!(busy.headers["retry-after"], "1");
    assert!(busy.body["error"]
        .as_str()
        .unwrap_or_default()
        .contains("too many requests"));
    drop(slow);
    // The slot is free again once the slow request is gone.
    let deadline = Instant::now() + Duration::from_secs(3);
    let status = loop {
        let answer = send(
            addr,
            "POST",
            "/v1/events",
            &json_post(&[("x-playrelay-key", WEB_KEY)]),
            events(1..2),
        )
        .await;
        if answer.status != 503 || Instant::now() > deadline {
            break answer.status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, 202);
    let text = metrics_text(addr).await;
    assert!(
        metric(
            &text,
            "playrelay_ingest_refused_total{reason=\"overloaded\"}"
        ) >= 1.0
    );
    relay.shutdown().await;
    assert_eq!(web.delivered_events().len(), 1);
}
