//! Secrets from the system's secure random source: URL tokens, passwords, session ids.

use ring::rand::{SecureRandom, SystemRandom};

/// Fills `out` from the system's secure random source.
pub fn fill(out: &mut [u8]) {
    // The kernel's getrandom only fails before the entropy pool is initialised at early
    // boot, long before provbox runs; continuing with predictable secrets would be worse.
    SystemRandom::new().fill(out).expect("the system random source works");
}

/// `N` fresh random bytes.
pub fn bytes<const N: usize>() -> [u8; N] {
    let mut out = [0; N];
    fill(&mut out);
    out
}
