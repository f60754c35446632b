//! The per-destination privacy rules at the edge: consent, hashed, dropped and
//! anonymized fields.

use super::*;

fn privacy_config(hook: &StandIn, dead_letters: &std::path::Path) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
dead_letter_dir = {:?}
hash_salt = "a-salt-of-at-least-16-bytes"

[destinations.ads]
type = "webhook"
endpoint = "{}"
batch = {{ max_wait_ms = 10 }}
consent = "advertising"
drop_fields = ["properties.email"]
hash_fields = ["user.user_id"]
ip = "anonymize"

[[routes]]
name = "all"
match = {{ types = ["*"] }}
to = ["ads"]
"#,
        dead_letters.display().to_string(),
        hook.url("/ads")
    )
}

#[tokio::test]
async fn consent_false_is_not_sent_and_is_counted_as_dropped() {
    let hook = StandIn::ok().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(&privacy_config(&hook, dir.path())).await;
    let with_consent = |n: usize, consent: Value| {
        let mut e = event(n);
        e["context"] = json!({"consent": consent});
        e
    };
    let body = Value::Array(vec![
        with_consent(0, json!({"advertising": false, "analytics": true})),
        with_consent(1, json!({"advertising": true})),
        event(2),
        with_consent(3, json!({"analytics": false})),
    ]);
    let answer = post_json(relay.local_addr, body.to_string()).await;
    assert_eq!(answer.body, json!({"accepted": 4, "rejected": []}));
    let delivered = hook.wait_for_events(3, Duration::from_secs(5)).await;
    let text = metrics_text(relay.local_addr).await;
    relay.shutdown().await;
    let ids: Vec<&str> = delivered
        .iter()
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(!ids.contains(&event(0)["event_id"].as_str().expect("id")));
    assert_eq!(
        metric(
            &text,
            "playrelay_destination_events_dropped_total{destination=\"ads\",reason=\"consent\"}"
        ),
        1.0
    );
    Accounts::read(&text, "ads").assert_balanced();
}

#[tokio::test]
async fn hashed_dropped_and_anonymized_fields_never_reach_the_destination() {
    use hmac::Mac;
    let hook = StandIn::ok().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(&privacy_config(&hook, dir.path())).await;
    let mut e = event(7);
    e["user"] = json!({"user_id": "alice@example.com"});
    e["properties"] = json!({"email": "alice@example.com", "plan": "gold"});
    e["context"] = json!({"ip": "203.0.113.77"});
    let answer = post_json(relay.local_addr, e.to_string()).await;
    assert_eq!(answer.body, json!({"accepted": 1, "rejected": []}));
    let delivered = hook.wait_for_events(1, Duration::from_secs(5)).await;
    relay.shutdown().await;
    assert_eq!(delivered.len(), 1);
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(b"a-salt-of-at-least-16-bytes").expect("key");
    mac.update(b"alice@example.com");
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let got = &delivered[0];
    assert_eq!(got["user"]["user_id"], expected);
    assert!(got["properties"].get("email").is_none());
    assert_eq!(got["properties"]["plan"], "gold");
    assert_eq!(got["context"]["ip"], "203.0.113.0");
    let raw: Vec<u8> = hook
        .requests()
        .iter()
        .flat_map(|r| r.body.to_vec())
        .collect();
    let raw = String::from_utf8_lossy(&raw);
    assert!(
        !raw.contains("alice") && !raw.contains("203.0.113.77") && !raw.contains("a-salt"),
        "{raw}"
    );
}
