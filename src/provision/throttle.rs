//! Per-address throttling of token misses: a client that guesses URLs gets 429s.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Misses allowed per address within one window.
pub const MISS_LIMIT: u32 = 20;
/// The window.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at most; older windows are pruned first.
const TRACKED: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    misses: u32,
}

/// The throttled unit: an IPv4 address, or an IPv6 /64 (one host may own a whole /64).
fn unit(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            let segments = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(segments[0], segments[1], segments[2], segments[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// Counts misses per client address.
#[derive(Debug, Default)]
pub struct Throttle {
    windows: Mutex<HashMap<IpAddr, Window>>,
}

impl Throttle {
    /// Whether `ip` has used up its misses for the current window.
    pub fn is_blocked(&self, ip: IpAddr) -> bool {
        let ip = unit(ip);
        let windows = self.windows.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        windows.get(&ip).is_some_and(|w| w.started.elapsed() < WINDOW && w.misses >= MISS_LIMIT)
    }

    /// Counts a miss by `ip`; returns true when this miss reaches the limit, so the caller
    /// logs it once per window.
    pub fn record_miss(&self, ip: IpAddr) -> bool {
        let ip = unit(ip);
        let mut windows = self.windows.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if windows.len() >= TRACKED && !windows.contains_key(&ip) {
            windows.retain(|_, w| w.started.elapsed() < WINDOW);
            if windows.len() >= TRACKED {
                // Under a flood from many addresses, forget the oldest half.
                let mut starts: Vec<Instant> = windows.values().map(|w| w.started).collect();
                starts.sort();
                let cutoff = starts[starts.len() / 2];
                windows.retain(|_, w| w.started > cutoff);
            }
        }
        let now = Instant::now();
        let window = windows.entry(ip).or_insert(Window { started: now, misses: 0 });
        if window.started.elapsed() >= WINDOW {
            *window = Window { started: now, misses: 0 };
        }
        window.misses = window.misses.saturating_add(1);
        window.misses == MISS_LIMIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_the_limit_per_address() {
        let throttle = Throttle::default();
        let scanner: IpAddr = "10.0.0.9".parse().unwrap();
        let phone: IpAddr = "10.0.0.10".parse().unwrap();
        let reached: Vec<bool> = (0..MISS_LIMIT).map(|_| throttle.record_miss(scanner)).collect();
        assert_eq!(reached.iter().filter(|r| **r).count(), 1);
        assert!(reached[MISS_LIMIT as usize - 1]);
        assert!(throttle.is_blocked(scanner));
        assert!(!throttle.is_blocked(phone));
    }

    #[test]
    fn an_ipv6_scanner_cannot_hop_addresses_within_its_64() {
        let throttle = Throttle::default();
        for i in 0..MISS_LIMIT {
            throttle.record_miss(format!("2001:db8:1:2::{i:x}").parse().unwrap());
        }
        assert!(throttle.is_blocked("2001:db8:1:2:ffff::1".parse().unwrap()));
        assert!(!throttle.is_blocked("2001:db8:1:3::1".parse().unwrap()));
    }

    #[test]
    fn tracking_stays_bounded_under_a_spoofed_flood() {
        let throttle = Throttle::default();
        for i in 0..(TRACKED as u32 * 2) {
            throttle.record_miss(IpAddr::from(i.to_be_bytes()));
        }
        assert!(throttle.windows.lock().unwrap().len() <= TRACKED);
    }
}
