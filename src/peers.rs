//! Addresses that have proved themselves: a phone that fetched through its own URL, a
//! technician who logged in, a client with a valid API token. When connections run short,
//! the listeners keep a reserve for these, so that a flood from strangers leaves the phones
//! and the page reachable.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Addresses remembered at most; the oldest go first.
const MAX_KNOWN: usize = 8192;
/// How long an address stays known after it last proved itself.
const KNOWN_FOR: Duration = Duration::from_secs(24 * 3600);

/// The addresses that proved themselves lately.
#[derive(Default)]
pub struct KnownPeers {
    seen: Mutex<HashMap<IpAddr, Instant>>,
}

impl KnownPeers {
    /// Notes that `address` just proved itself.
    pub fn prove(&self, address: IpAddr) {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if seen.len() >= MAX_KNOWN && !seen.contains_key(&address) {
            seen.retain(|_, at| now.duration_since(*at) < KNOWN_FOR);
            if seen.len() >= MAX_KNOWN
                && let Some(oldest) = seen.iter().min_by_key(|(_, at)| **at).map(|(address, _)| *address)
            {
                seen.remove(&oldest);
            }
        }
        seen.insert(address, now);
    }

    /// Whether `address` proved itself within the last day.
    pub fn knows(&self, address: IpAddr) -> bool {
        let seen = self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        seen.get(&address).is_some_and(|at| at.elapsed() < KNOWN_FOR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proven_addresses_are_known_and_the_memory_is_bounded() {
        let peers = KnownPeers::default();
        let phone: IpAddr = "192.0.2.10".parse().unwrap();
        assert!(!peers.knows(phone));
        peers.prove(phone);
        assert!(peers.knows(phone));
        for i in 0..MAX_KNOWN as u32 + 10 {
            peers.prove(IpAddr::from((0x0a00_0000 + i).to_be_bytes()));
        }
        assert!(peers.seen.lock().unwrap().len() <= MAX_KNOWN);
        assert!(!peers.knows(phone), "the oldest went first");
    }
}
