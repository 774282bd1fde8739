//! The wall clock on a board without a real-time clock. It boots at 1970 until NTP answers,
//! and WAN TLS cannot validate certificates then. provbox notes the time in the store,
//! restores it at boot (when it may set the clock), and refuses WAN calls with a clear
//! "clock not set" while the time reads earlier than the day this binary was built, or,
//! after a restore, until NTP has synchronised it: a restored time lags by the downtime,
//! enough for signed requests (Hawk, X-Ca) to be refused as stale.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::store::records::{Db, Txn};

/// The current Unix time (0 if the clock reads before 1970).
pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Set when this process set the clock from the store: the time is approximate.
static RESTORED: AtomicBool = AtomicBool::new(false);

/// How far the stored time may lag before it is noted again, in seconds: 30 minutes keeps
/// flash writes to about 50 small records a day.
const NOTE_EVERY: u64 = 30 * 60;

/// When this binary was built (Unix time): no correct clock reads earlier.
pub fn build_time() -> u64 {
    env!("PROVBOX_BUILD_TIME").parse().unwrap_or(0)
}

/// `Ok` when `now` can be right; otherwise why WAN calls wait.
pub fn check(now: u64) -> Result<(), String> {
    let floor = build_time();
    if now < floor {
        return Err(format!(
            "clock not set: it reads {}, before this build ({}); WAN calls wait for NTP",
            date(now),
            date(floor)
        ));
    }
    if RESTORED.load(Ordering::Relaxed) {
        if !ntp_synchronised() {
            return Err("clock restored from the last known time, not yet synchronised; WAN calls wait for NTP".into());
        }
        RESTORED.store(false, Ordering::Relaxed);
    }
    Ok(())
}

/// Whether the kernel says an NTP client has synchronised the clock.
// The read-only adjtimex call is one of the crate's few FFI edges.
#[allow(unsafe_code)]
pub fn ntp_synchronised() -> bool {
    // SAFETY: timex is plain integers, for which all zeroes is a valid value.
    let mut timex: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: with modes = 0 adjtimex only reads the kernel's clock state into `timex`,
    // which outlives the call; it keeps no pointer to it.
    let state = unsafe { libc::adjtimex(&mut timex) };
    state != -1 && state != libc::TIME_ERROR && timex.status & libc::STA_UNSYNC == 0
}

/// Steps the clock by `offset` seconds (positive: forward). Needs `CAP_SYS_TIME`.
pub fn step(offset: f64) -> Result<(), String> {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME).map_err(|e| e.desc().to_string())?;
    let target = now.tv_sec() as f64 + now.tv_nsec() as f64 / 1e9 + offset;
    if !(0.0..1e11).contains(&target) {
        return Err(format!("offset {offset:+.3} s gives no plausible time"));
    }
    // A time this system's time_t cannot hold is not set.
    let whole = target.floor() as u64;
    let seconds = whole.try_into().map_err(|_| format!("{} does not fit time_t", date(whole)))?;
    // Below 10^9, so it fits every c_long.
    let nanoseconds = ((target - target.floor()) * 1e9).min(999_999_999.0) as i32;
    let time = nix::sys::time::TimeSpec::new(seconds, libc::c_long::from(nanoseconds));
    nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, time).map_err(|e| e.desc().to_string())
}

/// Tells the kernel that the clock is synchronised, within `error` seconds, as an NTP
/// daemon does: clears `STA_UNSYNC` and sets the maximum and estimated error. The kernel
/// sets `STA_UNSYNC` again by itself once the error it accrues passes 16 s, so the caller
/// repeats this at each successful poll. Needs `CAP_SYS_TIME`.
// adjtimex is one of the crate's few FFI edges.
#[allow(unsafe_code)]
pub fn mark_synchronised(error: f64) -> Result<(), String> {
    // SAFETY: timex is plain integers, for which all zeroes is a valid value.
    let mut timex: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: modes = 0 only reads the clock state into `timex`, which outlives the call.
    if unsafe { libc::adjtimex(&mut timex) } == -1 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    let microseconds = (error.abs() * 1e6).clamp(1.0, 16e6) as libc::c_long;
    timex.modes =
        libc::ADJ_STATUS as libc::c_uint | libc::ADJ_MAXERROR as libc::c_uint | libc::ADJ_ESTERROR as libc::c_uint;
    timex.status &= !libc::STA_UNSYNC;
    timex.maxerror = microseconds;
    timex.esterror = microseconds;
    // SAFETY: `timex` is initialised and outlives the call; the kernel copies from it and
    // keeps no pointer.
    if unsafe { libc::adjtimex(&mut timex) } == -1 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    Ok(())
}

/// `YYYY-MM-DD` of a Unix time (proleptic Gregorian, UTC).
pub fn date(unix: u64) -> String {
    // Howard Hinnant's days-to-civil algorithm.
    let days = (unix / 86_400) as i64 + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// `YYYY-MM-DD HH:MM UTC` of a Unix time, for people.
pub fn date_time(unix: u64) -> String {
    let minutes = unix % 86_400 / 60;
    format!("{} {:02}:{:02} UTC", date(unix), minutes / 60, minutes % 60)
}

/// What [`restore`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restored {
    /// The clock was already at or past the stored time.
    Unneeded,
    /// The clock was set forward to the stored time.
    SetTo(u64),
    /// The clock is behind but could not be set (not root, or no `CAP_SYS_TIME`).
    Refused(String),
}

/// Sets the system clock forward if it reads earlier than the stored last-known time, or
/// than this build (a board without a real-time clock boots at 1970: certificates made
/// then would expire in 1980).
pub fn restore(last_known: Option<u64>, now: u64) -> Restored {
    let Some(at) = restore_target(last_known, now) else { return Restored::Unneeded };
    // time_t is 32 bits on armv7 musl: a time it cannot hold is not set.
    let Ok(seconds) = at.try_into() else {
        return Restored::Refused(format!("{} does not fit this system's time_t", date(at)));
    };
    let time = nix::sys::time::TimeSpec::new(seconds, 0);
    match nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, time) {
        Ok(()) => {
            RESTORED.store(true, Ordering::Relaxed);
            Restored::SetTo(at)
        }
        Err(errno) => Restored::Refused(errno.desc().to_string()),
    }
}

/// The time to set the clock to, if `now` is behind the last known time or the build.
fn restore_target(last_known: Option<u64>, now: u64) -> Option<u64> {
    Some(last_known.unwrap_or(0).max(build_time())).filter(|at| *at > now)
}

/// Notes `now` in `db` when it is plausible and the stored time lags by `NOTE_EVERY`.
pub fn note(db: &mut Db<crate::store::backend::AnyFlash>, now: u64) -> Result<(), crate::store::records::DbError> {
    if check(now).is_err() {
        return Ok(());
    }
    let stored = db.last_known_time()?.unwrap_or(0);
    if now >= stored + NOTE_EVERY {
        let mut txn = Txn::new();
        txn.set_last_known_time(now);
        db.commit(&txn)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(951_782_400), "2000-02-29");
        assert_eq!(date(1_795_392_000), "2026-11-23");
    }

    #[test]
    fn a_clock_before_the_build_is_not_set() {
        let error = check(0).unwrap_err();
        assert!(error.starts_with("clock not set: it reads 1970-01-01, before this build"), "{error}");
        assert!(check(build_time()).is_ok());
        let build = build_time();
        assert_eq!(restore_target(None, 5), Some(build), "a 1970 clock goes to the build time");
        assert_eq!(restore_target(Some(build + 60), 5), Some(build + 60), "or to the last known time");
        assert_eq!(restore_target(Some(build + 60), build + 61), None);
        assert_eq!(restore_target(None, build + 1), None);
    }
}
