//! The accept loop: a cap on open connections, an optional TLS handshake (bounded by
//! the header timeout), HTTP/1.1 with a header read timeout and a header size cap, or
//! HTTP/2 (by ALPN or prior knowledge), and graceful shutdown.

use crate::telemetry::Metrics;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// What the accept loop enforces.
#[derive(Clone)]
pub struct ServeOptions {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub tls: Option<TlsAcceptor>,
    pub metrics: Arc<Metrics>,
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets requests in flight
/// finish (the caller bounds how long).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let connections = Arc::new(Semaphore::new(options.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        // hyper's buffer holds the request head; it refuses less than 8 KiB.
        .max_buf_size(options.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(options.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(options.header_read_timeout))
        .keep_alive_timeout(options.header_read_timeout);
    tokio::pin!(shutdown);
    loop {
        // At the cap, stop accepting: new clients wait in the kernel's backlog.
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => permit,
            _ = &mut shutdown => break,
        };
        let Ok(permit) = permit else { break };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off, do not spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = app.clone().map_request(
            move |mut request: axum::extract::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            },
        );
        let service = TowerToHyperService::new(service);
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let options = options.clone();
        tokio::spawn(async move {
            let _permit = permit;
            options.metrics.ingest_open_connections.inc();
            let result = match &options.tls {
                None => {
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    watcher.watch(connection.into_owned()).await
                }
                Some(acceptor) => {
                    match tokio::time::timeout(options.header_read_timeout, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(tls)) => {
                            let connection = builder.serve_connection(TokioIo::new(tls), service);
                            watcher.watch(connection.into_owned()).await
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, %error, "TLS handshake failed");
                            options.metrics.connection_error("tls_handshake");
                            Ok(())
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            options.metrics.connection_error("tls_handshake_timeout");
                            Ok(())
                        }
                    }
                }
            };
            if let Err(error) = result {
                let reason = match error.downcast_ref::<hyper::Error>() {
                    Some(e) if e.is_timeout() => "header_timeout",
                    Some(e) if e.is_parse_too_large() => "header_too_large",
                    Some(e) if e.is_parse() => "bad_request",
                    _ => "io",
                };
                options.metrics.connection_error(reason);
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
            options.metrics.ingest_open_connections.dec();
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
