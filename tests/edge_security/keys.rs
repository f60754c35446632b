//! Ingest keys, sources and CORS: who may post, as which source, from which origin.

use super::*;

#[tokio::test]
async fn wrong_and_missing_keys_get_401_and_nothing_reaches_a_destination() {
    let web = StandIn::ok().await;
    let tv = StandIn::ok().await;
    let relay = start_relay(&two_sources(&web, &tv, "")).await;
    let addr = relay.local_addr;

    let missing = send(addr, "POST", "/v1/events", &json_post(&[]), events(0..1)).await;
    assert_eq!(missing.status, 401);
    assert!(
        missing.body["error"]
            .as_str()
            .unwrap_or("")
            .starts_with("missing ingest key"),
        "{}",
        missing.body
    );
    let wrong_key = "web-key-0123456789abcdeX";
    let bearer = format!("Bearer {wrong_key}");
    let wrong = send(
        addr,
        "POST",
        "/v1/events",
        &json_post(&[("authorization", &bearer)]),
        events(0..1),
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.body, json!({"error": "unknown ingest key"}));
    let wrong_query = send(
        addr,
        "POST",
        &format!("/v1/events?key={wrong_key}"),
        &json_post(&[]),
        events(0..1),
    )
    .await;
    assert_eq!(wrong_query.status, 401);

    let text = metrics_text(addr).await;
    assert_eq!(
        metric(
            &text,
            "playrelay_ingest_refused_total{reason=\"unauthorized\"}"
        ),
        3.0
    );
    assert_eq!(
        metric(&text, "playrelay_ingest_requests_total{status=\"401\"}"),
        3.0
    );
    assert!(!text.contains(wrong_key) && !text.contains(WEB_KEY));

    // The right key, by each of the three ways, is accepted.
    let bearer = format!("Bearer {WEB_KEY}");
    for (path, headers) in [
        (
            "/v1/events".to_string(),
            json_post(&[("authorization", bearer.as_str())]),
        ),
        (
            "/v1/events".to_string(),
            json_post(&[("x-playrelay-key", WEB_KEY)]),
        ),
        (format!("/v1/events?key={WEB_KEY}"), json_post(&[])),
    ] {
        let answer = send(addr, "POST", &path, &headers, events(0..1)).await;
        assert_eq!(answer.status, 202, "{}", answer.body);
    }
    relay.shutdown().await;
    assert_eq!(web.delivered_events().len(), 3);
    assert!(tv.requests().is_empty());
}

#[tokio::test]
async fn a_key_for_another_source_posts_as_that_source_and_keeps_to_its_origins() {
    let web = StandIn::ok().await;
    let tv = StandIn::ok().await;
    let relay = start_relay(&two_sources(&web, &tv, "")).await;
    let addr = relay.local_addr;
    let bearer = format!("Bearer {TV_KEY}");
    // Event fields cannot steer a request: these are forwarded, not followed.
    let mut sneaky = event(1);
    sneaky["endpoint"] = json!(web.url("/web"));
    sneaky["destination"] = json!("web_hook");
    sneaky["source"] = json!("web");
    let answer = send(
        addr,
        "POST",
        "/v1/events",
        &json_post(&[("authorization", &bearer)]),
        sneaky.to_string(),
    )
    .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    // The tv key from the web player's origin: tv allows no browser origin.
    let answer = send(
        addr,
        "POST",
        "/v1/events",
        &json_post(&[("authorization", &bearer), ("origin", WEB_ORIGIN)]),
        events(2..3),
    )
    .await;
    assert_eq!(answer.status, 403);
    assert_eq!(
        answer.body,
        json!({"error": "origin \"https://player.example.com\" is not allowed to post as source \"tv\""})
    );
    assert!(answer.headers.get("access-control-allow-origin").is_none());
    let text = metrics_text(addr).await;
    assert_eq!(
        metric(
            &text,
            "playrelay_ingest_refused_total{reason=\"origin_not_allowed\"}"
        ),
        1.0
    );
    relay.shutdown().await;
    let delivered = tv.delivered_events();
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0]["event_id"], sneaky["event_id"]);
    assert!(web.requests().is_empty(), "the web route took a tv event");
    assert!(tv.requests().iter().all(|r| r.uri.path() == "/tv"));
}

#[tokio::test]
async fn preflight_answers_an_allowed_origin_and_refuses_another() {
    let web = StandIn::ok().await;
    let tv = StandIn::ok().await;
    let relay = start_relay(&two_sources(&web, &tv, "")).await;
    let addr = relay.local_addr;
    let allowed = send(
        addr,
        "OPTIONS",
        "/v1/events",
        &[
            ("origin", WEB_ORIGIN),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "content-type, authorization",
            ),
        ],
        "",
    )
    .await;
    assert_eq!(allowed.status, 204);
    let h = &allowed.headers;
    assert_eq!(h["access-control-allow-origin"], WEB_ORIGIN);
    assert!(h["access-control-allow-methods"]
        .to_str()
        .expect("ascii")
        .contains("POST"));
    assert!(h["access-control-allow-headers"]
        .to_str()
        .expect("ascii")
        .contains("authorization"));
    assert!(h["vary"].to_str().expect("ascii").contains("origin"));

    let refused = send(
        addr,
        "OPTIONS",
        "/v1/events",
        &[
            ("origin", "https://evil.example"),
            ("access-control-request-method", "POST"),
        ],
        "",
    )
    .await;
    assert_eq!(refused.status, 403);
    assert_eq!(
        refused.body,
        json!({"error": "origin \"https://evil.example\" is not allowed"})
    );
    assert!(refused.headers.get("access-control-allow-origin").is_none());
    // An allowed origin with the tv key in the URL: tv allows no origin.
    let other_source = send(
        addr,
        "OPTIONS",
        &format!("/v1/events?key={TV_KEY}"),
        &[
            ("origin", WEB_ORIGIN),
            ("access-control-request-method", "POST"),
        ],
        "",
    )
    .await;
    assert_eq!(other_source.status, 403);
    // The real request from the allowed origin can read its answer.
    let post = send(
        addr,
        "POST",
        "/v1/events",
        &json_post(&[
            ("authorization", &format!("Bearer {WEB_KEY}")),
            ("origin", WEB_ORIGIN),
        ]),
        events(0..1),
    )
    .await;
    assert_eq!(post.status, 202);
    assert_eq!(post.headers["access-control-allow-origin"], WEB_ORIGIN);
    let text = metrics_text(addr).await;
    assert_eq!(
        metric(&text, "playrelay_ingest_refused_total{reason=\"cors\"}"),
        2.0
    );
    relay.shutdown().await;
    assert_eq!(web.delivered_events().len(), 1);
}

#[tokio::test]
async fn send_beacon_text_plain_with_key_in_the_query_is_accepted() {
    let web = StandIn::ok().await;
    let tv = StandIn::ok().await;
    let relay = start_relay(&two_sources(&web, &tv, "")).await;
    let addr = relay.local_addr;
    let path = format!("/v1/events?key={WEB_KEY}");
    let beacon = [
        ("content-type", "text/plain;charset=UTF-8"),
        ("origin", WEB_ORIGIN),
    ];
    let array = send(addr, "POST", &path, &beacon, events(0..2)).await;
    assert_eq!(array.status, 202, "{}", array.body);
    assert_eq!(array.body, json!({"accepted": 2, "rejected": []}));
    assert_eq!(array.headers["access-control-allow-origin"], WEB_ORIGIN);
    let ndjson = format!("{}\n{}\n", event(2), event(3));
    let lines = send(addr, "POST", &path, &beacon, ndjson).await;
    assert_eq!(lines.body, json!({"accepted": 2, "rejected": []}));
    let single = send(
        addr,
        "POST",
        &path,
        &beacon,
        serde_json::to_string_pretty(&event(4)).expect("json"),
    )
    .await;
    assert_eq!(single.body, json!({"accepted": 1, "rejected": []}));
    relay.shutdown().await;
    assert_eq!(web.delivered_events().len(), 5);
}
