//! The HTTP/1.1 connection loop: accepts connections and serves the router on each, with the
//! limits that protect the server from clients that are slow, silent or send absurd heads.
//!
//! `axum::serve` gives hyper no timer, and hyper silently drops its header read timeout
//! without one: a client sending its headers a byte at a time, or connecting and saying
//! nothing, held a connection (and its task and buffers) forever. This loop is `axum::serve`
//! with a timer, a header read timeout (which also closes connections idle between requests),
//! and a cap on the size of the request head. Request bodies are bounded by the API's request
//! timeout (408), not here. With a certificate configured ([`crate::tls`]), each connection
//! first completes a rustls handshake (within 10 s), then is served the same way.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// The largest request head (request line and headers) accepted; larger gets 431.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// The most header fields a request may carry; more gets 431.
pub const MAX_HEADERS: usize = 100;

/// Limits of every connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// How long a client may take to send a request head, and how long a connection may
    /// stay idle between requests.
    pub header_read_timeout: Duration,
}

/// How long a client may take to finish its TLS handshake; a silent one is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` (over TLS when `tls` is given) until `shutdown` is
/// cancelled, then stops accepting and waits for open connections to finish their in-flight
/// requests (idle ones close at once).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: CancellationToken,
) {
    let acceptor = tls.map(TlsAcceptor::from);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS);
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(err) if is_connection_error(&err) => continue,
            Err(err) => {
                // Out of file descriptors or memory: wait rather than spin; connections
                // already open keep being served and free descriptors as they close.
                tracing::error!(error = %err, "failed to accept a connection; retrying in 1 s");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        // Answers are small and latency matters more than packet count.
        let _ = tcp.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let Some(acceptor) = acceptor.clone() else {
            let connection = graceful.watch(builder.serve_connection(TokioIo::new(tcp), service));
            tokio::spawn(async move {
                if let Err(err) = connection.await {
                    tracing::debug!(error = %err, "connection ended with an error");
                }
            });
            continue;
        };
        let (builder, watcher) = (builder.clone(), graceful.watcher());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => {
                    tracing::debug!(error = %err, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!("TLS handshake timed out");
                    return;
                }
            };
            let connection = builder.serve_connection(TokioIo::new(tls), service);
            if let Err(err) = watcher.watch(connection).await {
                tracing::debug!(error = %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Errors of one connection that say nothing about the listener (the same list as
/// `axum::serve`'s).
fn is_connection_error(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}
