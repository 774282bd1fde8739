//! Page sessions, CSRF tokens and login throttling, all in memory: a restart logs everyone
//! out, which is what an appliance should do.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;

use crate::app::admin::CredentialTag;

/// A session ends after this long without a request.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Sessions kept at once; the least recently used goes first.
const MAX_SESSIONS: usize = 32;
/// Failed logins allowed before delays start, per address and for the account.
const FREE_FAILURES: u32 = 3;
/// Longest lockout after repeated failures.
const MAX_LOCKOUT: Duration = Duration::from_secs(15 * 60);

/// The session cookie's name; `__Host-` makes browsers refuse it from plain HTTP or another
/// path or domain.
pub const COOKIE: &str = "__Host-provbox_session";
/// The account's own delay never exceeds this, so an attacker cannot lock the admin out for
/// long from addresses of their own.
const MAX_ACCOUNT_LOCKOUT: Duration = Duration::from_secs(60);
/// Failures older than this are forgotten.
const FAILURE_MEMORY: Duration = Duration::from_secs(15 * 60);

fn random_hex() -> String {
    crate::hex::encode(&crate::random::bytes::<32>())
}

struct Session {
    csrf: String,
    last_seen: Instant,
    /// The admin password it was opened with: another one in force ends it.
    credential: CredentialTag,
}

/// The logged-in sessions.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// Starts a session opened with the admin password `credential`; returns its cookie value.
    pub fn start(&self, credential: CredentialTag) -> String {
        let id = random_hex();
        let mut map = self.map.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        map.retain(|_, session| now.duration_since(session.last_seen) < IDLE_TIMEOUT);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map.iter().min_by_key(|(_, s)| s.last_seen).map(|(id, _)| id.clone())
        {
            map.remove(&oldest);
        }
        map.insert(id.clone(), Session { csrf: random_hex(), last_seen: now, credential });
        id
    }

    /// Ends every session.
    pub fn end_all(&self) {
        self.map.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clear();
    }

    /// Ends every session opened with another admin password than `current` (it changed,
    /// maybe from the CLI), or every session when no password is set.
    pub fn end_unless(&self, current: Option<CredentialTag>) {
        let mut map = self.map.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        map.retain(|_, session| Some(session.credential) == current);
    }

    /// The CSRF token of a live session `id` (refreshing its idle timer), or None.
    pub fn touch(&self, id: &str) -> Option<String> {
        self.touch_at(id, Instant::now())
    }

    fn touch_at(&self, id: &str, now: Instant) -> Option<String> {
        let mut map = self.map.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let live = map.get(id).is_some_and(|session| now.duration_since(session.last_seen) < IDLE_TIMEOUT);
        if !live {
            map.remove(id);
            return None;
        }
        let session = map.get_mut(id)?;
        session.last_seen = now;
        Some(session.csrf.clone())
    }

    /// Whether `token` is the CSRF token of session `id`, compared in constant time.
    pub fn csrf_ok(&self, id: &str, token: &str) -> bool {
        self.touch(id).is_some_and(|expected| expected.as_bytes().ct_eq(token.as_bytes()).into())
    }

    /// Ends session `id`.
    pub fn end(&self, id: &str) {
        self.map.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(id);
    }
}

#[derive(Clone, Copy)]
struct Failures {
    count: u32,
    until: Instant,
    last: Instant,
}

/// Progressive delays after failed logins, per address and for the one admin account.
pub struct LoginThrottle {
    by_address: Mutex<HashMap<IpAddr, Failures>>,
    account: Mutex<Option<Failures>>,
    /// Failures before the first delay.
    free_failures: u32,
}

impl Default for LoginThrottle {
    /// The page's: a password may be mistyped a few times.
    fn default() -> LoginThrottle {
        LoginThrottle::with_free_failures(FREE_FAILURES)
    }
}

/// The lockout after `count` failures: none for the first `free`, then doubling from 2 s.
fn lockout(count: u32, free: u32) -> Duration {
    if count <= free {
        return Duration::ZERO;
    }
    Duration::from_secs(1u64 << (count - free).min(10)).min(MAX_LOCKOUT)
}

impl LoginThrottle {
    /// A throttle that delays an address only after `free_failures` failures.
    pub fn with_free_failures(free_failures: u32) -> LoginThrottle {
        LoginThrottle { by_address: Mutex::default(), account: Mutex::default(), free_failures }
    }

    /// How long `address` must still wait before trying again, if at all. The account's
    /// delay, which failures from any address arm, does not hold back an address that is
    /// `proven` (it logged in before, see [`crate::peers`]) and has not failed itself:
    /// failures spread over other addresses never lock out the admin's own machine, while an
    /// attacker moving to fresh addresses stays held back.
    pub fn wait(&self, address: IpAddr, now: Instant, proven: bool) -> Option<Duration> {
        let by_address = self.by_address.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let own = by_address.get(&address).copied();
        if own.is_none() && proven {
            return None;
        }
        let account = self.account.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        [own, *account]
            .into_iter()
            .flatten()
            .filter_map(|failures| failures.until.checked_duration_since(now))
            .filter(|wait| !wait.is_zero())
            .max()
    }

    /// Counts an attempt from `address` as failed. Call it before checking the password
    /// and [`LoginThrottle::succeeded`] after a success, so attempts made in parallel are
    /// all counted. The account's own delay grows at half the rate and stops at a minute,
    /// so an attacker spread over many addresses slows down without locking the admin out.
    pub fn failed(&self, address: IpAddr, now: Instant) {
        let forget = |failures: &mut Failures| {
            if now.duration_since(failures.last) > FAILURE_MEMORY {
                failures.count = 0;
            }
        };
        let mut by_address = self.by_address.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if by_address.len() >= 4096 {
            by_address.retain(|_, failures| now.duration_since(failures.last) < FAILURE_MEMORY);
        }
        let entry = by_address.entry(address).or_insert(Failures { count: 0, until: now, last: now });
        forget(entry);
        entry.count += 1;
        entry.until = now + lockout(entry.count, self.free_failures);
        entry.last = now;
        let mut account = self.account.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut failures = account.unwrap_or(Failures { count: 0, until: now, last: now });
        forget(&mut failures);
        failures.count += 1;
        failures.until = now + lockout(failures.count / 2, self.free_failures).min(MAX_ACCOUNT_LOCKOUT);
        failures.last = now;
        *account = Some(failures);
    }

    /// Forgets the failures of `address` after a successful login.
    pub fn succeeded(&self, address: IpAddr) {
        self.by_address.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&address);
        *self.account.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_slow_down_progressively() {
        let throttle = LoginThrottle::default();
        let start = Instant::now();
        let address: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..3 {
            throttle.failed(address, start);
        }
        assert_eq!(throttle.wait(address, start, false), None, "three free tries");
        throttle.failed(address, start);
        assert_eq!(throttle.wait(address, start, false), Some(Duration::from_secs(2)));
        throttle.failed(address, start);
        assert_eq!(throttle.wait(address, start, false), Some(Duration::from_secs(4)));
        assert_eq!(throttle.wait(address, start + Duration::from_secs(5), false), None);
        throttle.succeeded(address);
        assert_eq!(throttle.wait(address, start, false), None);
    }

    #[test]
    fn failures_elsewhere_never_hold_back_a_proven_address() {
        let throttle = LoginThrottle::default();
        let start = Instant::now();
        for host in 1..=6u8 {
            let attacker = IpAddr::from([192, 0, 2, host]);
            for _ in 0..3 {
                throttle.failed(attacker, start);
            }
        }
        let attacker: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(throttle.wait(attacker, start, false).is_some(), "the account's delay holds back failing addresses");
        let fresh: IpAddr = "192.0.2.77".parse().unwrap();
        assert!(throttle.wait(fresh, start, false).is_some(), "and fresh ones: moving on does not help an attacker");
        let admin: IpAddr = "192.0.2.99".parse().unwrap();
        assert_eq!(throttle.wait(admin, start, true), None, "the admin's machine is not held back");
        throttle.failed(admin, start);
        throttle.failed(admin, start);
        throttle.failed(admin, start);
        throttle.failed(admin, start);
        assert!(throttle.wait(admin, start, true).is_some(), "until it fails itself");
    }

    #[test]
    fn sessions_carry_csrf_and_end() {
        let sessions = Sessions::default();
        let id = sessions.start(CredentialTag::for_tests(1));
        let csrf = sessions.touch(&id).unwrap();
        assert!(sessions.csrf_ok(&id, &csrf));
        assert!(!sessions.csrf_ok(&id, "forged"));
        assert!(!sessions.csrf_ok("unknown", &csrf));
        sessions.end(&id);
        assert!(sessions.touch(&id).is_none());
    }

    #[test]
    fn a_session_ends_when_another_password_is_in_force() {
        let sessions = Sessions::default();
        let (old, new) = (CredentialTag::for_tests(1), CredentialTag::for_tests(2));
        let before = sessions.start(old);
        let after = sessions.start(new);
        sessions.end_unless(Some(new));
        assert!(sessions.touch(&before).is_none());
        assert!(sessions.touch(&after).is_some());
        sessions.end_unless(None);
        assert!(sessions.touch(&after).is_none());
    }

    #[test]
    fn idle_sessions_expire_and_use_keeps_them() {
        let sessions = Sessions::default();
        let id = sessions.start(CredentialTag::for_tests(1));
        let start = Instant::now();
        assert!(sessions.touch_at(&id, start + IDLE_TIMEOUT / 2).is_some(), "in use: still alive");
        assert!(sessions.touch_at(&id, start + IDLE_TIMEOUT).is_some(), "the last use restarted the timer");
        assert!(sessions.touch_at(&id, start + IDLE_TIMEOUT * 2 + Duration::from_secs(1)).is_none(), "idle too long");
        assert!(sessions.touch(&id).is_none(), "and gone for good");
    }
}
