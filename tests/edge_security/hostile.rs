//! Hostile input: every malformed or oversized body gets a clean 4xx and nothing
//! reaches a destination.

use super::*;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(data).expect("gzip");
    encoder.finish().expect("gzip")
}

#[tokio::test]
async fn hostile_input_gets_a_clean_4xx_and_nothing_is_delivered() {
    let web = StandIn::ok().await;
    let tv = StandIn::ok().await;
    let server = "json = { max_depth = 8, max_string_bytes = 1024, max_fields = 64, max_array_items = 100 }\nmax_events_per_request = 50";
    let relay = start_relay(&two_sources(&web, &tv, server)).await;
    let addr = relay.local_addr;
    let with = |extra: Value| {
        let mut e = event(1);
        if let (Value::Object(m), Value::Object(x)) = (&mut e, extra) {
            m.extend(x);
        }
        e.to_string()
    };
    let deep = format!("{}{}{}", "{\"a\":".repeat(20), "1", "}".repeat(20));
    let many_fields: serde_json::Map<String, Value> =
        (0..100).map(|i| (format!("f{i}"), json!(i))).collect();
    let mut invalid_utf8 = with(json!({"properties": {"x": "AB"}})).into_bytes();
    let at = invalid_utf8
        .windows(2)
        .position(|w| w == b"AB")
        .expect("marker");
    invalid_utf8[at] = 0xff;
    let duplicate = with(json!({})).replacen("\"type\":", "\"type\":\"ad.started\",\"type\":", 1);
    let huge_tiny_array = format!("[{}]", vec!["0"; 200_000].join(","));
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "deep nesting",
            with(json!({"properties": serde_json::from_str::<Value>(&deep).expect("deep")}))
                .into_bytes(),
            400,
            "max_depth",
        ),
        (
            "long string",
            with(json!({"properties": {"x": "y".repeat(5000)}})).into_bytes(),
            400,
            "max_string_bytes",
        ),
        (
            "too many fields",
            with(json!({"properties": many_fields})).into_bytes(),
            400,
            "max_fields",
        ),
        (
            "huge nested array",
            with(json!({"properties": {"x": vec![0; 5000]}})).into_bytes(),
            400,
            "max_array_items",
        ),
        (
            "huge array of tiny events",
            huge_tiny_array.into_bytes(),
            413,
            "more than 50 events",
        ),
        (
            "too many events",
            events(0..51).into_bytes(),
            413,
            "more than 50 events",
        ),
        (
            "duplicate keys",
            duplicate.into_bytes(),
            400,
            "duplicate key \"type\"",
        ),
        ("invalid utf-8", invalid_utf8, 400, "not valid JSON"),
        (
            "number out of range",
            with(json!({}))
                .replacen("{", "{\"big\":1e999,", 1)
                .into_bytes(),
            400,
            "number out of range",
        ),
        (
            "recursion bomb",
            "[".repeat(100_000).into_bytes(),
            400,
            "max_depth",
        ),
    ];
    let key = [
        ("x-playrelay-key", WEB_KEY),
        ("content-type", "application/json"),
    ];
    for (name, body, status, needle) in cases {
        let answer = send(addr, "POST", "/v1/events", &key, body).await;
        assert_eq!(answer.status, status, "{name}: {}", answer.body);
        let error = answer.body["error"].as_str().unwrap_or_default();
        assert!(error.contains(needle), "{name}: {error}");
    }
    // A number too big for its typed field rejects that event only.
    let negative = with(json!({"playback": {"position_ms": -1}}));
    let answer = send(addr, "POST", "/v1/events", &key, negative).await;
    assert_eq!(answer.status, 202);
    assert_eq!(answer.body["accepted"], 0);
    assert!(answer.body["rejected"][0]["error"]
        .as_str()
        .unwrap_or_default()
        .starts_with("playback.position_ms"));
    // A gzip bomb: 1 KB-ish that inflates past the cap.
    let bomb = gzip(&vec![b' '; 9 << 20]);
    assert!(bomb.len() < 64 * 1024);
    let answer = send(
        addr,
        "POST",
        "/v1/events",
        &[key[0], key[1], ("content-encoding", "gzip")],
        bomb,
    )
    .await;
    assert_eq!(answer.status, 413, "{}", answer.body);
    assert!(answer.body["error"]
        .as_str()
        .unwrap_or_default()
        .contains("inflates"));
    // Headers larger than max_header_bytes (default 16 KiB).
    let big = "x".repeat(40_000);
    let answer = send(
        addr,
        "POST",
        "/v1/events",
        &[key[0], key[1], ("x-big", &big)],
        events(0..1),
    )
    .await;
    assert_eq!(answer.status, 431);

    let text = metrics_text(addr).await;
    assert_eq!(
        metric(
            &text,
            "playrelay_ingest_refused_total{reason=\"limit_exceeded\"}"
        ),
        9.0
    );
    relay.shutdown().await;
    assert!(
        web.requests().is_empty(),
        "hostile input reached a destination"
    );
}
