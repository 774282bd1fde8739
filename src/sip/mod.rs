//! SIP on the LAN: the multicast plug-and-play responder that tells booting phones where
//! their configuration is, and check-sync NOTIFYs that make a phone fetch it again.
//!
//! - [`message`]: the strict parser and builder.
//! - [`Endpoint`]: one UDP socket, the receive loop, client transactions with RFC 3261
//!   retransmission timers, and per-source rate limits.
//! - [`pnp`]: answering `SUBSCRIBE` with `Event: ua-profile`.
//! - [`checksync`]: `provbox device reprovision`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

pub mod checksync;
pub mod message;
pub mod pnp;

use message::{Message, StartLine};

/// The SIP plug-and-play multicast group.
pub const PNP_GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 1, 75);
/// RFC 3261 timer T1: the first retransmission interval.
const T1: Duration = Duration::from_millis(500);
/// RFC 3261 timer T2: the longest retransmission interval.
const T2: Duration = Duration::from_secs(4);
/// RFC 3261 timer F: a non-INVITE transaction gives up after 64 × T1.
pub const TIMER_F: Duration = Duration::from_secs(32);
/// Messages a source may send in a burst, and per second after it.
const BURST: f64 = 20.0;
const PER_SECOND: f64 = 10.0;
/// Sources tracked by the rate limiter; beyond it the least recently heard is forgotten.
const MAX_SOURCES: usize = 1024;
/// PnP subscriptions being worked out at once (the offer, read from the store); more are
/// dropped (and counted). A slot is held only until the NOTIFY is first sent, never while
/// its retransmissions wait for an answer, so sources that never answer cannot fill them.
const MAX_ANSWERING: usize = 64;
/// Bytes sent per minute, at most, to an address that has not shown it receives what
/// provbox sends (by answering a request of provbox's): enough for a 200 OK and a NOTIFY or
/// two, so that a spoofed source makes provbox send its victim little more than it was sent.
const UNVERIFIED_BYTES_PER_MINUTE: usize = 2048;
/// How long an address that answered stays verified.
const VERIFIED_FOR: Duration = Duration::from_secs(600);

/// Counters shown in the log and to tests.
#[derive(Debug, Default, Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams that were not SIP.
    pub malformed: u64,
    /// Datagrams dropped by the per-source rate limit.
    pub rate_limited: u64,
    /// PnP subscriptions answered.
    pub subscriptions: u64,
}

#[derive(Default)]
struct Counters {
    malformed: AtomicU64,
    rate_limited: AtomicU64,
    subscriptions: AtomicU64,
}

/// Token buckets per source address.
#[derive(Default)]
struct RateLimiter {
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl RateLimiter {
    fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        if self.buckets.len() >= MAX_SOURCES
            && !self.buckets.contains_key(&source)
            && let Some(oldest) = self.buckets.iter().min_by_key(|(_, (_, seen))| *seen).map(|(ip, _)| *ip)
        {
            // A flood of (spoofed) sources must not lock real phones out.
            self.buckets.remove(&oldest);
        }
        let (tokens, seen) = self.buckets.entry(source).or_insert((BURST, now));
        *tokens = (*tokens + now.duration_since(*seen).as_secs_f64() * PER_SECOND).min(BURST);
        *seen = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One SIP UDP socket with its receive loop and client transactions.
pub struct Endpoint {
    socket: UdpSocket,
    transactions: Mutex<HashMap<String, mpsc::Sender<Message>>>,
    limiter: Mutex<RateLimiter>,
    counters: Counters,
    /// Bounds the subscriptions answered at once.
    answering: Arc<tokio::sync::Semaphore>,
    /// Addresses with a NOTIFY in flight: one at a time per address, so a spoofed flood
    /// cannot make provbox send a retransmission series to each.
    notifying: Mutex<std::collections::HashSet<IpAddr>>,
    /// Responses to recent subscriptions by branch: a retransmitted SUBSCRIBE gets the same
    /// answer again, not a second dialog.
    answered: Mutex<HashMap<String, (Instant, Vec<u8>)>>,
    /// What each address may still be sent: verified ones without limit, others within
    /// [`UNVERIFIED_BYTES_PER_MINUTE`].
    budgets: Mutex<Budgets>,
}

/// Bytes sent per destination address, and the addresses that proved they receive.
#[derive(Default)]
struct Budgets {
    /// Start of the current minute and bytes sent in it, per unverified address.
    sent: HashMap<IpAddr, (Instant, usize)>,
    /// When each verified address last answered.
    verified: HashMap<IpAddr, Instant>,
}

impl Budgets {
    /// Whether `bytes` more may go to `ip` now; counts them if so.
    fn spend(&mut self, ip: IpAddr, bytes: usize, now: Instant) -> bool {
        if self.verified.get(&ip).is_some_and(|at| now.duration_since(*at) < VERIFIED_FOR) {
            return true;
        }
        if self.sent.len() >= MAX_SOURCES && !self.sent.contains_key(&ip) {
            self.sent.retain(|_, (start, _)| now.duration_since(*start) < Duration::from_secs(60));
            if self.sent.len() >= MAX_SOURCES {
                return false;
            }
        }
        let (start, used) = self.sent.entry(ip).or_insert((now, 0));
        if now.duration_since(*start) >= Duration::from_secs(60) {
            (*start, *used) = (now, 0);
        }
        if *used + bytes > UNVERIFIED_BYTES_PER_MINUTE {
            return false;
        }
        *used += bytes;
        true
    }

    /// Notes that `ip` answered a request of ours: it receives what it is sent.
    fn verify(&mut self, ip: IpAddr, now: Instant) {
        if self.verified.len() >= MAX_SOURCES && !self.verified.contains_key(&ip) {
            self.verified.retain(|_, at| now.duration_since(*at) < VERIFIED_FOR);
            if self.verified.len() >= MAX_SOURCES {
                return;
            }
        }
        self.verified.insert(ip, now);
        self.sent.remove(&ip);
    }
}

/// How a client transaction ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A final response.
    Answered(Message),
    /// No final response before the deadline.
    TimedOut,
    /// The request could not be sent.
    SendFailed(String),
}

impl Endpoint {
    /// Binds `address`; on a non-loopback address joins the PnP group on every LAN address
    /// in `interfaces` (IPv4).
    pub async fn bind(address: SocketAddr, interfaces: &[IpAddr]) -> std::io::Result<Arc<Endpoint>> {
        let socket = UdpSocket::bind(address).await?;
        let endpoint = Arc::new(Endpoint {
            socket,
            transactions: Mutex::default(),
            limiter: Mutex::default(),
            counters: Counters::default(),
            answering: Arc::new(tokio::sync::Semaphore::new(MAX_ANSWERING)),
            notifying: Mutex::default(),
            answered: Mutex::default(),
            budgets: Mutex::default(),
        });
        endpoint.join_pnp_group(interfaces);
        Ok(endpoint)
    }

    /// Joins the PnP group on each IPv4 address in `interfaces` (a LAN socket only): at
    /// start, and for each address a later DHCP lease brings.
    pub fn join_pnp_group(&self, interfaces: &[IpAddr]) {
        if self.local_addr().is_ok_and(|bound| bound.ip().is_loopback()) {
            return;
        }
        for interface in interfaces {
            if let IpAddr::V4(v4) = interface
                && let Err(error) = self.socket.join_multicast_v4(PNP_GROUP, *v4)
            {
                tracing::warn!("SIP PnP: cannot join {PNP_GROUP} on {v4}: {error}");
            }
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        Stats {
            malformed: self.counters.malformed.load(Ordering::Relaxed),
            rate_limited: self.counters.rate_limited.load(Ordering::Relaxed),
            subscriptions: self.counters.subscriptions.load(Ordering::Relaxed),
        }
    }

    /// The address this host uses toward `peer` (for Via and Contact): the bound address, or
    /// for a wildcard bind the route's source address. No packet is sent.
    pub fn address_toward(&self, peer: SocketAddr) -> SocketAddr {
        let bound = self.local_addr().unwrap_or_else(|_| SocketAddr::from((Ipv4Addr::UNSPECIFIED, 5060)));
        if !bound.ip().is_unspecified() {
            return bound;
        }
        let probe = std::net::UdpSocket::bind(SocketAddr::new(bound.ip(), 0))
            .and_then(|socket| socket.connect(peer).and_then(|()| socket.local_addr()));
        SocketAddr::new(probe.map_or(bound.ip(), |local| local.ip()), bound.port())
    }

    /// Sends one datagram: to an address that has not shown it receives what provbox sends,
    /// only within its byte budget (a spoofed source must not turn provbox into an
    /// amplifier). Returns false, sending nothing, when the budget is spent.
    pub async fn send_to(&self, bytes: &[u8], target: SocketAddr) -> std::io::Result<bool> {
        let allowed =
            self.budgets.lock().is_ok_and(|mut budgets| budgets.spend(target.ip(), bytes.len(), Instant::now()));
        if !allowed {
            return Ok(false);
        }
        self.socket.send_to(bytes, target).await.map(|_| true)
    }

    /// Receives until `stopped`: responses go to their transactions, PnP subscriptions to
    /// [`pnp::answer`]; anything malformed is dropped and counted.
    pub async fn run(self: Arc<Self>, offers: Option<Arc<dyn pnp::Offers>>, mut stopped: watch::Receiver<bool>) {
        let mut buffer = vec![0u8; message::MAX_MESSAGE + 1];
        loop {
            let received = tokio::select! {
                received = self.socket.recv_from(&mut buffer) => received,
                _ = stopped.wait_for(|stop| *stop) => return,
            };
            let Ok((length, source)) = received else { continue };
            let allowed =
                self.limiter.lock().map(|mut limiter| limiter.allow(source.ip(), Instant::now())).unwrap_or(false);
            if !allowed {
                if self.counters.rate_limited.fetch_add(1, Ordering::Relaxed).is_multiple_of(100) {
                    tracing::warn!(%source, "SIP: rate limit reached; dropping");
                }
                continue;
            }
            let message = match message::parse(&buffer[..length]) {
                Ok(message) => message,
                Err(error) => {
                    self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%source, "SIP: dropped: {error}");
                    continue;
                }
            };
            match &message.start {
                StartLine::Response { .. } => self.deliver_response(message, source),
                StartLine::Request { method, .. } if method == "SUBSCRIBE" => {
                    let Some(offers) = &offers else { continue };
                    if self.resend_answer(&message, source).await {
                        continue;
                    }
                    let Ok(permit) = self.answering.clone().try_acquire_owned() else {
                        self.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    self.counters.subscriptions.fetch_add(1, Ordering::Relaxed);
                    let (endpoint, offers) = (self.clone(), offers.clone());
                    tokio::spawn(pnp::answer(endpoint, offers, message, source, permit));
                }
                StartLine::Request { method, .. } => tracing::debug!(%source, method, "SIP: request ignored"),
            }
        }
    }

    /// Sends the cached answer again if `request` is a retransmission; returns whether it was.
    async fn resend_answer(&self, request: &Message, source: SocketAddr) -> bool {
        let Some(branch) = request.branch() else { return false };
        let cached =
            self.answered.lock().ok().and_then(|answered| answered.get(branch).map(|(_, bytes)| bytes.clone()));
        match cached {
            Some(bytes) => {
                let _ = self.send_to(&bytes, pnp::response_target(request, source)).await;
                true
            }
            None => false,
        }
    }

    /// Remembers the answer to the subscription with `branch` for timer F.
    pub(crate) fn remember_answer(&self, branch: &str, bytes: &[u8]) {
        if let Ok(mut answered) = self.answered.lock() {
            let now = Instant::now();
            answered.retain(|_, (at, _)| now.duration_since(*at) < TIMER_F);
            if answered.len() < MAX_SOURCES {
                answered.insert(branch.to_string(), (now, bytes.to_vec()));
            }
        }
    }

    /// Claims the right to send a NOTIFY to `ip`; false while one is in flight there.
    pub(crate) fn claim_notify(&self, ip: IpAddr) -> bool {
        self.notifying.lock().is_ok_and(|mut notifying| notifying.insert(ip))
    }

    /// Releases the claim of [`Endpoint::claim_notify`].
    pub(crate) fn release_notify(&self, ip: IpAddr) {
        if let Ok(mut notifying) = self.notifying.lock() {
            notifying.remove(&ip);
        }
    }

    fn deliver_response(&self, response: Message, source: SocketAddr) {
        let Some(branch) = response.branch().map(str::to_string) else { return };
        let sender = self.transactions.lock().ok().and_then(|t| t.get(&branch).cloned());
        if let Some(sender) = sender {
            // It answered a request of ours, so it receives what it is sent.
            if let Ok(mut budgets) = self.budgets.lock() {
                budgets.verify(source.ip(), Instant::now());
            }
            let _ = sender.try_send(response);
        }
    }

    /// Runs a non-INVITE client transaction: sends `request` (whose top Via carries
    /// `branch`) to `target`, retransmitting at T1 doubling to T2, until a final response or
    /// `deadline` (at most timer F). Each send is within `target`'s byte budget (see
    /// [`Endpoint::send_to`]): to an address that never answers, retransmissions stop when
    /// it is spent.
    pub async fn transaction(&self, request: &[u8], branch: &str, target: SocketAddr, deadline: Duration) -> Outcome {
        let (sender, mut responses) = mpsc::channel(8);
        if let Ok(mut transactions) = self.transactions.lock() {
            transactions.insert(branch.to_string(), sender);
        }
        let outcome = async {
            let end = tokio::time::Instant::now() + deadline.min(TIMER_F);
            let mut interval = T1;
            loop {
                match self.send_to(request, target).await {
                    Ok(true) => {}
                    // Nothing more may go there this minute: as good as no answer.
                    Ok(false) => return Outcome::TimedOut,
                    Err(error) => return Outcome::SendFailed(error.to_string()),
                }
                let next = (tokio::time::Instant::now() + interval).min(end);
                loop {
                    match tokio::time::timeout_at(next, responses.recv()).await {
                        Ok(Some(response)) => match response.start {
                            StartLine::Response { code, .. } if code >= 200 => return Outcome::Answered(response),
                            // A provisional answer: the request arrived; retransmit at T2.
                            _ => interval = T2,
                        },
                        Ok(None) => return Outcome::TimedOut,
                        Err(_) => break,
                    }
                }
                if tokio::time::Instant::now() >= end {
                    return Outcome::TimedOut;
                }
                interval = (interval * 2).min(T2);
            }
        }
        .await;
        if let Ok(mut transactions) = self.transactions.lock() {
            transactions.remove(branch);
        }
        outcome
    }
}

/// A fresh RFC 3261 branch (`z9hG4bK` magic cookie) or tag.
pub fn random_token(prefix: &str) -> String {
    format!("{prefix}{}", crate::hex::encode(&rand::random::<[u8; 8]>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unverified_addresses_get_a_byte_budget_and_verified_ones_none() {
        let mut budgets = Budgets::default();
        let start = Instant::now();
        let victim: IpAddr = "192.0.2.9".parse().unwrap();
        let sent = (0..10).filter(|_| budgets.spend(victim, 600, start)).count();
        assert_eq!(sent, UNVERIFIED_BYTES_PER_MINUTE / 600);
        assert!(budgets.spend(victim, 600, start + Duration::from_secs(61)), "a new minute, a new budget");
        budgets.verify(victim, start);
        assert!((0..100).all(|_| budgets.spend(victim, 600, start)), "a verified address is not limited");
    }

    #[test]
    fn a_source_gets_a_burst_then_a_steady_rate() {
        let mut limiter = RateLimiter::default();
        let start = Instant::now();
        let source: IpAddr = "192.0.2.9".parse().unwrap();
        let allowed = (0..100).filter(|_| limiter.allow(source, start)).count();
        assert_eq!(allowed, BURST as usize);
        assert!(limiter.allow(source, start + Duration::from_millis(150)), "refilled at 10/s");
        assert!(limiter.allow("192.0.2.10".parse().unwrap(), start), "other sources unaffected");
    }
}
