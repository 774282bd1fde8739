//! The HTTPS and HTTP listeners: accept loops with a connection cap, a cap per address and a
//! reserve for addresses that proved themselves, TLS handshake, read, write and header
//! timeouts, a header size limit, keep-alive, and graceful shutdown.

pub mod idle;
pub mod routes;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::peers::KnownPeers;

/// The client's socket address, attached to each request by the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

impl Peer {
    /// The client's address as shown and throttled: IPv4-mapped IPv6 as plain IPv4.
    pub fn ip(&self) -> IpAddr {
        match self.0.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        }
    }
}

/// Limits that keep one slow or hostile client from hurting the others.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once per listener; more are closed at accept.
    pub max_connections: usize,
    /// Connections one address may hold at once per listener, well below the total.
    pub max_per_address: usize,
    /// Of `max_connections`, the last this many go only to addresses that proved themselves
    /// ([`KnownPeers`]): phones that fetched through their URL, the page, API clients.
    pub reserve: usize,
    /// New connections a second, all unproven addresses together, that a listener takes (a
    /// TLS handshake costs a signature, so a flood of strangers' handshakes would starve
    /// the phones of CPU); proven addresses are not counted. Twice this may come at once.
    pub strangers_per_second: u32,
    /// Time allowed for the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time allowed for a request's headers to arrive (slowloris).
    pub header_timeout: Duration,
    /// Time allowed for a request's body to arrive in full (uploads have their own).
    pub body_timeout: Duration,
    /// A read or write that makes no progress this long ends the connection; also the
    /// keep-alive idle limit.
    pub io_timeout: Duration,
    /// Largest request head in bytes; larger gets 431.
    pub max_header_bytes: usize,
    /// Time in-flight requests get to finish at shutdown.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 512,
            max_per_address: 32,
            reserve: 64,
            strangers_per_second: 100,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            io_timeout: Duration::from_secs(30),
            max_header_bytes: 16 * 1024,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// One listener: its socket, its routes and, for HTTPS, its TLS acceptor.
pub struct Listener {
    /// The bound socket.
    pub socket: TcpListener,
    /// Its routes.
    pub router: Router,
    /// TLS, or None for plain HTTP.
    pub tls: Option<TlsAcceptor>,
}

/// Serves `listeners` until `shutdown` turns true, then lets in-flight requests finish for
/// up to [`Limits::drain_timeout`]. `known` are the addresses the reserve is kept for.
pub async fn serve(
    listeners: Vec<Listener>,
    limits: Limits,
    known: Arc<KnownPeers>,
    mut shutdown: watch::Receiver<bool>,
) {
    let graceful = Arc::new(GracefulShutdown::new());
    let mut loops = tokio::task::JoinSet::new();
    for listener in listeners {
        loops.spawn(accept_loop(listener, limits, known.clone(), graceful.clone(), shutdown.clone()));
    }
    let _ = shutdown.wait_for(|stop| *stop).await;
    while loops.join_next().await.is_some() {}
    // The accept loops have ended, so this is the last reference.
    let Some(graceful) = Arc::into_inner(graceful) else { return };
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown()).await.is_err() {
        tracing::warn!("some connections did not finish within the drain timeout");
    }
}

/// Connections open per address on one listener.
#[derive(Default)]
struct PerAddress(Mutex<HashMap<IpAddr, usize>>);

/// One connection of an address, counted while it lives.
struct AddressSlot {
    counts: Arc<PerAddress>,
    address: IpAddr,
}

impl PerAddress {
    /// Counts a connection of `address`, unless it already holds `limit`.
    fn admit(counts: &Arc<PerAddress>, address: IpAddr, limit: usize) -> Option<AddressSlot> {
        let mut open = counts.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = open.entry(address).or_default();
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(AddressSlot { counts: counts.clone(), address })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.counts.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = open.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.address);
            }
        }
    }
}

async fn accept_loop(
    listener: Listener,
    limits: Limits,
    known: Arc<KnownPeers>,
    graceful: Arc<GracefulShutdown>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_address = Arc::new(PerAddress::default());
    let rate = f64::from(limits.strangers_per_second);
    // A token bucket for strangers' new connections: (tokens, last refill), and how many it
    // turned away (logged now and then, not per connection).
    let mut strangers = (2.0 * rate, std::time::Instant::now());
    let mut strangers_refused: u64 = 0;
    loop {
        let accepted = tokio::select! {
            accepted = listener.socket.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!("accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let address = Peer(peer).ip();
        let available = slots.available_permits();
        if available == 0 {
            tracing::warn!(%peer, "connection cap reached; closing");
            continue;
        }
        let proven = known.knows(address);
        if !proven {
            let now = std::time::Instant::now();
            strangers.0 = (strangers.0 + now.duration_since(strangers.1).as_secs_f64() * rate).min(2.0 * rate);
            strangers.1 = now;
            if strangers.0 < 1.0 {
                strangers_refused += 1;
                if strangers_refused % 100 == 1 {
                    tracing::warn!(%peer, "new connections from unproven addresses run over {rate} a second; closing \
                                   ({strangers_refused} so far)");
                }
                continue;
            }
            strangers.0 -= 1.0;
        }
        if available <= limits.reserve && !proven {
            tracing::warn!(%peer, "connections run short: the rest are kept for known phones and the page; closing");
            continue;
        }
        let Some(address_slot) = PerAddress::admit(&per_address, address, limits.max_per_address) else {
            tracing::warn!(%peer, "this address holds {} connections already; closing", limits.max_per_address);
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection cap reached; closing");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (stream, idle) = idle::IdleStream::new(tcp, limits.io_timeout);
        let router = listener.router.clone();
        let tls = listener.tls.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _slots = (slot, address_slot);
            let stream = Box::pin(stream);
            match tls {
                Some(acceptor) => match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls_stream)) => {
                        crate::metrics::TLS_HANDSHAKES.inc("ok");
                        serve_connection(tls_stream, router, peer, idle, limits, watcher).await
                    }
                    Ok(Err(error)) => {
                        crate::metrics::TLS_HANDSHAKES.inc("failed");
                        tracing::debug!(%peer, "TLS handshake failed: {error}")
                    }
                    Err(_) => {
                        crate::metrics::TLS_HANDSHAKES.inc("failed");
                        tracing::debug!(%peer, "TLS handshake timed out")
                    }
                },
                None => serve_connection(stream, router, peer, idle, limits, watcher).await,
            }
        });
    }
}

async fn serve_connection<S>(
    stream: S,
    router: Router,
    peer: SocketAddr,
    idle: idle::IdleLimit,
    limits: Limits,
    watcher: Watcher,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = router.map_request(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(Peer(peer));
        request.extensions_mut().insert(idle.clone());
        request
    });
    let service = TowerToHyperService::new(service.map_err(|never: Infallible| match never {}));
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    if let Err(error) = watcher.watch(connection).await {
        tracing::debug!(%peer, "connection ended: {error}");
    }
}
