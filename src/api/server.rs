//! The listener: TLS handshakes with a deadline, client identities attached to each request,
//! HTTP/1.1 with a header-read timeout, and a graceful stop on SIGTERM or SIGINT that lets
//! in-flight requests finish and flushes the audit log before exiting.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use super::crl::refresh_crls;
use super::identity::{ClientIdentity, Unidentified};
use super::public::public_router;
use super::reload::reload;
use super::routes::{ops_router, router};
use super::service::Service;

/// Serves until SIGTERM or SIGINT; returns once in-flight requests are done (or the grace
/// period is over) and the ledger and audit log are flushed.
pub async fn serve(service: Service, tls_config: rustls::ServerConfig) -> std::io::Result<()> {
    let listener = TcpListener::bind(service.server.listen).await?;
    let service = Arc::new(service);
    let acceptor = TlsAcceptor::from(Arc::new(tls_config));
    let graceful = GracefulShutdown::new();
    let app = router(service.clone());
    if let Some(tail) = &service.discarded_audit_tail {
        // Never acknowledged, so nothing issued is lost; but an operator should know.
        service
            .audit_service_event(
                "audit.torn_tail_discarded",
                json!({ "bytes": tail.bytes, "saved_to": tail.saved_to.display().to_string() }),
            )
            .await;
    }
    service
        .audit_service_event(
            "service.started",
            json!({
                "listen": listener.local_addr()?.to_string(),
                "issuers": service.settings().issuers.keys().collect::<Vec<_>>(),
                "profiles": service.settings().profiles.keys().collect::<Vec<_>>(),
                "clients": service.settings().policy.clients().count(),
                "version": env!("CARGO_PKG_VERSION"),
            }),
        )
        .await;
    let checkpoint_schedule = service.checkpoints.as_ref().map(|_| {
        let service = service.clone();
        tokio::spawn(async move {
            if let Some(checkpoints) = &service.checkpoints {
                checkpoints.run(&service.pool, &service.recorder).await;
            }
        })
    });
    refresh_crls(&service).await;
    service.warn_expiring_issuers();
    let crl_schedule = {
        let service = service.clone();
        tokio::spawn(async move {
            let mut every_minute = tokio::time::interval(std::time::Duration::from_secs(60));
            every_minute.tick().await;
            for minute in 1u64.. {
                every_minute.tick().await;
                refresh_crls(&service).await;
                if minute % 60 == 0 {
                    service.warn_expiring_issuers();
                }
            }
        })
    };
    let header_timeout = service.server.header_read_timeout.duration();
    let ops = match service.server.ops_listen {
        Some(address) => Some(
            start_plain(
                address,
                ops_router(service.clone()),
                header_timeout,
                "operations",
            )
            .await?,
        ),
        None => None,
    };
    let public = match &service.fixed.public {
        Some(config) => Some(
            start_plain(
                config.listen,
                public_router(service.clone(), config),
                header_timeout,
                "public",
            )
            .await?,
        ),
        None => None,
    };
    // Every handler is installed before the "serving" line, for the same reason as StopSignals.
    let mut stop_signals = StopSignals::install()?;
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    let reload_on_sighup = {
        let service = service.clone();
        tokio::spawn(async move {
            let Ok(mut hangups) = hangups else {
                tracing::error!("cannot listen for SIGHUP; use `hsmca reload`");
                return;
            };
            while hangups.recv().await.is_some() {
                // The verdict is logged and audited by `reload`.
                let _ = reload(&service, "SIGHUP").await;
            }
        })
    };
    tracing::info!(listen = %listener.local_addr()?, "hsmca serving");
    // The line operators and tests wait for.
    println!("hsmca: serving on https://{}", listener.local_addr()?);

    let mut stop = std::pin::pin!(stop_signals.recv());
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(connection) => connection,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    continue;
                }
            },
            signal = &mut stop => {
                tracing::info!(signal, "stopping: no new connections, finishing in-flight requests");
                break;
            }
        };
        let connection = handle(
            stream,
            peer,
            acceptor.clone(),
            service.clone(),
            app.clone(),
            graceful.watcher(),
        );
        tokio::spawn(connection);
    }
    drop(listener);
    crl_schedule.abort();
    reload_on_sighup.abort();
    if let Some(ops) = ops {
        ops.abort();
    }
    if let Some(public) = public {
        public.abort();
    }
    let grace = service.server.shutdown_grace.duration();
    let finished = tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_ok();
    if !finished {
        tracing::warn!(
            grace_seconds = grace.as_secs(),
            "grace period over; closing connections still open"
        );
    }
    service
        .audit_service_event("service.stopped", json!({ "drained": finished }))
        .await;
    if let (Some(schedule), Some(checkpoints)) = (checkpoint_schedule, &service.checkpoints) {
        schedule.abort();
        // The last checkpoint covers the stop record: nothing of this run is left unwitnessed.
        checkpoints
            .checkpoint(&service.pool, &service.recorder)
            .await;
    }
    // Writes what is queued, then stops the writer: the audit log is complete on exit.
    service.recorder.shutdown();
    Ok(())
}

async fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    service: Arc<Service>,
    app: axum::Router,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let _ = stream.set_nodelay(true);
    let handshake_deadline = service.server.header_read_timeout.duration();
    let tls = match tokio::time::timeout(handshake_deadline, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            refused_handshake(&service, peer, &error).await;
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let identity = {
        let (_, connection) = tls.get_ref();
        match connection
            .peer_certificates()
            .and_then(|chain| chain.first())
        {
            Some(certificate) => {
                ClientIdentity::of_certificate(certificate.as_ref(), service.server.client_identity)
            }
            None => ClientIdentity::Unidentified(Unidentified::NoCertificate),
        }
    };
    let service_fn =
        hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(identity.clone());
            app.clone().oneshot(request.map(axum::body::Body::new))
        });
    let connection = http1(service.server.header_read_timeout.duration())
        .serve_connection(TokioIo::new(tls), service_fn);
    if let Err(error) = watcher.watch(connection).await {
        tracing::debug!(%peer, %error, "connection ended with an error");
    }
}

/// Binds a plain-HTTP listener (operations, public) to `address`, says where it listens on
/// the line operators and tests read, as the API listener does, and serves `app` on it until
/// the returned task is aborted.
async fn start_plain(
    address: SocketAddr,
    app: axum::Router,
    header_timeout: Duration,
    name: &'static str,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(address).await?;
    println!("hsmca: {name} on http://{}", listener.local_addr()?);
    Ok(tokio::spawn(serve_plain(
        listener,
        app,
        header_timeout,
        name,
    )))
}

/// Serves `app` over plain HTTP/1.1 on `listener`, with the API's header-read timeout, so a
/// client that opens connections and sends nothing holds none of them for long.
async fn serve_plain(
    listener: TcpListener,
    app: axum::Router,
    header_timeout: Duration,
    name: &'static str,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(connection) => connection,
            Err(error) => {
                tracing::warn!(%error, listener = name, "accept failed");
                continue;
            }
        };
        let app = app.clone();
        tokio::spawn(async move {
            let service_fn = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| {
                    app.clone().oneshot(request.map(axum::body::Body::new))
                },
            );
            if let Err(error) = http1(header_timeout)
                .serve_connection(TokioIo::new(stream), service_fn)
                .await
            {
                tracing::debug!(%peer, %error, listener = name, "connection ended with an error");
            }
        });
    }
}

/// HTTP/1.1 with keep-alive and a deadline for each request's headers: every listener's.
fn http1(header_timeout: Duration) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    builder
}

/// A handshake refused for the client's certificate is audited; other handshake failures
/// (scanners, wrong protocol) are only logged.
async fn refused_handshake(service: &Service, peer: SocketAddr, error: &std::io::Error) {
    let reason = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .and_then(|tls_error| match tls_error {
            rustls::Error::NoCertificatesPresented => {
                Some("no client certificate presented".to_string())
            }
            rustls::Error::InvalidCertificate(why) => {
                Some(format!("client certificate refused: {why:?}"))
            }
            _ => None,
        });
    let Some(reason) = reason else {
        tracing::debug!(%peer, %error, "TLS handshake failed");
        return;
    };
    tracing::info!(%peer, %reason, "TLS client refused");
    service.metrics.count_tls_refusal();
    let details = json!({ "peer": peer.to_string(), "reason": reason });
    if let Err(error) = service
        .audit("tls.refused", &peer.ip().to_string(), details)
        .await
    {
        tracing::error!(error = %error.message, "cannot audit a refused TLS client");
    }
}

/// SIGTERM and SIGINT, caught from the moment this is made: it must exist before anyone is
/// told the service is up, or an early SIGTERM kills it without draining or auditing.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves with the signal's name on SIGTERM or SIGINT.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
