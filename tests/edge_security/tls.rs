//! TLS ingest (HTTP/2 by ALPN) and the admin listener.

use super::*;

#[tokio::test]
async fn tls_ingest_with_a_test_certificate_speaks_http2() {
    let web = StandIn::ok().await;
    let tv = StandIn::ok().await;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let dir = tempfile::tempdir().expect("tempdir");
    let cert_file = dir.path().join("cert.pem");
    let key_file = dir.path().join("key.pem");
    std::fs::write(&cert_file, cert.cert.pem()).expect("write cert");
    std::fs::write(&key_file, cert.key_pair.serialize_pem()).expect("write key");
    let server = format!(
        "tls = {{ cert_file = {:?}, key_file = {:?} }}",
        cert_file.display().to_string(),
        key_file.display().to_string()
    );
    let relay = start_relay(&two_sources(&web, &tv, &server)).await;
    let port = relay.local_addr.port();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).expect("root");
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector);
    let request = http::Request::post(format!("https://localhost:{port}/v1/events"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {WEB_KEY}"))
        .body(http_body_util::Full::new(bytes::Bytes::from(events(0..2))))
        .expect("request");
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .expect("answer in time")
        .expect("TLS request");
    assert_eq!(response.status(), 202);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(
        serde_json::from_slice::<Value>(&body).expect("json"),
        json!({"accepted": 2, "rejected": []})
    );

    // Plain HTTP to the TLS port gets no answer.
    let mut socket = tokio::net::TcpStream::connect(relay.local_addr)
        .await
        .expect("connect");
    socket
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), socket.read_to_end(&mut answer)).await;
    assert!(!String::from_utf8_lossy(&answer).contains("alive"));
    relay.shutdown().await;
    assert_eq!(web.delivered_events().len(), 2);
}

#[tokio::test]
async fn metrics_live_on_the_admin_listener_only_when_it_is_set() {
    let web = StandIn::ok().await;
    let tv = StandIn::ok().await;
    let relay = start_relay(&two_sources(&web, &tv, "admin_listen = \"127.0.0.1:0\"")).await;
    let admin = relay.admin_addr.expect("admin listener");
    assert_eq!(
        send(relay.local_addr, "GET", "/metrics", &[], "")
            .await
            .status,
        404
    );
    assert_eq!(
        send(relay.local_addr, "GET", "/healthz", &[], "")
            .await
            .status,
        200
    );
    let text = metrics_text(admin).await;
    assert!(text.contains("playrelay_events_received_total"), "{text}");
    assert_eq!(
        send(admin, "POST", "/v1/events", &json_post(&[]), events(0..1))
            .await
            .status,
        404
    );
    relay.shutdown().await;
}
