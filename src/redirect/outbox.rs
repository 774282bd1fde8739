//! The rules of the durable outbox of redirect work: the retry backoff, which queued items
//! travel together in one call, and the worker's wake-up. The queue itself is store records
//! ([`OutboxItem`]); the appliance plans and delivers them (`crate::app::redirect`).

use std::collections::HashSet;
use std::time::Duration;

use tokio::sync::{Mutex as AsyncMutex, MutexGuard as AsyncMutexGuard, Notify};

use crate::clock::now;
use crate::mac::Mac;
use crate::store::records::{Device, Enrollment, OutboxAction, OutboxItem};

/// First retry delay; it doubles per attempt.
const BACKOFF_BASE: u64 = 30;
/// Longest retry delay.
pub const BACKOFF_CAP: u64 = 3600;
/// Longest the worker sleeps with nothing due, in case the clock jumped.
pub const IDLE_WAKE: Duration = Duration::from_secs(300);
/// How often a worker waiting for the clock looks again.
pub const CLOCK_RECHECK: Duration = Duration::from_secs(60);
/// Pause after a pass failed on the store.
pub const ERROR_PAUSE: Duration = Duration::from_secs(60);

/// The worker's shared parts.
#[derive(Default)]
pub struct Redirector {
    /// One delivery pass at a time: the worker's and `redirect sync`'s never overlap, so no
    /// item is sent twice at once.
    pass: AsyncMutex<()>,
    /// Wakes the worker when work is queued.
    wake: Notify,
}

impl Redirector {
    /// Tells the worker there is new work.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Waits until [`Redirector::wake`] is called.
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Waits for any other delivery pass to end; the pass lasts while the guard lives.
    pub async fn pass(&self) -> AsyncMutexGuard<'_, ()> {
        self.pass.lock().await
    }
}

/// The delay before retry number `attempts` (1-based): 30 s doubling up to an hour, with
/// jitter taking it down to half at random so that a fleet does not retry in lockstep.
pub fn backoff(attempts: u32) -> u64 {
    let full = BACKOFF_BASE.saturating_mul(1u64 << attempts.saturating_sub(1).min(20)).min(BACKOFF_CAP);
    full / 2 + rand::random::<u64>() % (full / 2 + 1)
}

/// How an action is shown.
pub fn action_name(action: &OutboxAction) -> &'static str {
    match action {
        OutboxAction::Register { take_over: false, .. } => "register",
        OutboxAction::Register { take_over: true, .. } => "register (override)",
        OutboxAction::Deregister => "deregister",
    }
}

/// Whether `device` may still enroll (not locked).
pub fn is_open(device: &Device) -> bool {
    !matches!(device.enrollment, Enrollment::Locked { .. })
}

/// Why redirect work is being planned for a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// The device changed: register a new enrollment URL, deregister a closed enrollment.
    Change,
    /// Also register an open device the service does not hold (new credentials, a fixed
    /// failure, the device switched back on).
    Reconcile,
    /// Also register again what the service holds (the base URL changed).
    Reregister,
}

/// The registration at the head of `queue` and the following due registrations for the
/// same service that may go with it: one per MAC, none behind an earlier item of its MAC,
/// at most `limit`.
pub fn batch_from(
    queue: &[(u64, OutboxItem)],
    limit: usize,
    all: bool,
    blocked: &HashSet<Mac>,
) -> Vec<(u64, OutboxItem)> {
    let Some((first_position, first)) = queue.first() else { return Vec::new() };
    let mut batch = vec![(*first_position, first.clone())];
    let mut macs: HashSet<Mac> = HashSet::from([first.mac]);
    for (position, item) in &queue[1..] {
        if batch.len() >= limit {
            break;
        }
        let joins = item.service == first.service
            && matches!(item.action, OutboxAction::Register { .. })
            && (all || item.not_before <= now())
            && !blocked.contains(&item.mac)
            && !macs.contains(&item.mac);
        macs.insert(item.mac);
        if joins {
            batch.push((*position, item.clone()));
        }
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_an_hour() {
        for _ in 0..200 {
            let first = backoff(1);
            assert!((15..=30).contains(&first), "{first}");
            let third = backoff(3);
            assert!((60..=120).contains(&third), "{third}");
            let late = backoff(40);
            assert!((BACKOFF_CAP / 2..=BACKOFF_CAP).contains(&late), "{late}");
        }
    }
}
