//! An SNTP client (RFC 4330; packet and arithmetic as in RFC 5905): the firmware image's
//! clock. A Raspberry Pi has no real-time clock and Debian's busybox-static has no `ntpd`,
//! so `provbox ntp` (run as root by the image's DHCP event script) asks the lease's NTP
//! servers, steps the clock when it is off, tells the kernel the clock is synchronised (which
//! [`crate::clock::check`] reads), and notes what it did in a status file for the page.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::UdpSocket;

/// The NTP port.
pub const PORT: u16 = 123;
/// Where `provbox ntp` notes its last result on the image, for `provbox serve` to show.
pub const STATUS_FILE: &str = "/run/provbox/ntp";
/// Seconds between the NTP era (1900) and the Unix epoch.
const NTP_TO_UNIX: f64 = 2_208_988_800.0;
/// Longest wait for one server's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for a server name to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Addresses tried per server name.
const ADDRESSES_PER_NAME: usize = 4;
/// An offset below this is left alone: stepping the clock for less is noise.
const STEP_THRESHOLD: f64 = 0.128;
/// How often a synchronised clock is checked again.
const POLL_SYNCHRONISED: Duration = Duration::from_secs(16 * 60);
/// How soon after a failed round the servers are asked again (doubling up to the maximum).
const RETRY_FIRST: Duration = Duration::from_secs(8);
const RETRY_MAX: Duration = Duration::from_secs(5 * 60);

/// Why a server's answer was not used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum NtpError {
    /// Shorter than an NTP header.
    #[error("answer of {0} bytes is too short for NTP")]
    Short(usize),
    /// Not a server's answer (mode 4) in NTP version 3 or 4.
    #[error("not an NTP server answer (version {version}, mode {mode})")]
    NotServer {
        /// The version field.
        version: u8,
        /// The mode field.
        mode: u8,
    },
    /// Stratum 0: a kiss-o'-death, whose code says why (RATE, DENY, ...).
    #[error("server sent kiss-o'-death {0:?}")]
    Kiss(String),
    /// The server says its own clock is not synchronised.
    #[error("server is not synchronised (leap indicator 3 or stratum {0})")]
    Unsynchronised(u8),
    /// The answer does not echo this request's transmit timestamp: stale or forged.
    #[error("answer does not match the request (origin timestamp)")]
    Mismatch,
    /// Network trouble.
    #[error("{0}")]
    Io(String),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// One server's answer, measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Who answered.
    pub server: SocketAddr,
    /// How far the local clock is behind the server's, in seconds (θ of RFC 5905).
    pub offset: f64,
    /// The round trip, less the server's processing time, in seconds (δ).
    pub delay: f64,
    /// The server's stratum.
    pub stratum: u8,
}

/// A client request: version 4, mode 3, and `nonce` as the transmit timestamp, which the
/// server must echo (RFC 9109 has clients send a random one instead of their clock).
pub fn request(nonce: [u8; 8]) -> [u8; 48] {
    let mut packet = [0u8; 48];
    packet[0] = 4 << 3 | 3;
    packet[40..48].copy_from_slice(&nonce);
    packet
}

/// An NTP timestamp as Unix seconds. Era 0 ends in 2036: a timestamp whose top bit is clear
/// is read as era 1 (RFC 4330, section 3).
fn unix_seconds(timestamp: &[u8]) -> f64 {
    let seconds = u32::from_be_bytes([timestamp[0], timestamp[1], timestamp[2], timestamp[3]]);
    let fraction = u32::from_be_bytes([timestamp[4], timestamp[5], timestamp[6], timestamp[7]]);
    let era = if seconds & 0x8000_0000 == 0 { 4_294_967_296.0 } else { 0.0 };
    f64::from(seconds) + era + f64::from(fraction) / 4_294_967_296.0 - NTP_TO_UNIX
}

/// The sample of `answer` to the request carrying `nonce`, sent at local Unix time `sent`
/// and received at `received` (RFC 5905, section 8: θ = ((T2 − T1) + (T3 − T4)) / 2,
/// δ = (T4 − T1) − (T3 − T2)).
pub fn parse(server: SocketAddr, answer: &[u8], nonce: [u8; 8], sent: f64, received: f64) -> Result<Sample, NtpError> {
    if answer.len() < 48 {
        return Err(NtpError::Short(answer.len()));
    }
    let (leap, version, mode, stratum) = (answer[0] >> 6, answer[0] >> 3 & 7, answer[0] & 7, answer[1]);
    if !(3..=4).contains(&version) || mode != 4 {
        return Err(NtpError::NotServer { version, mode });
    }
    if stratum == 0 {
        return Err(NtpError::Kiss(String::from_utf8_lossy(&answer[12..16]).trim_end_matches('\0').to_string()));
    }
    if leap == 3 || stratum > 15 {
        return Err(NtpError::Unsynchronised(stratum));
    }
    if answer[24..32] != nonce {
        return Err(NtpError::Mismatch);
    }
    let (server_received, server_sent) = (unix_seconds(&answer[32..40]), unix_seconds(&answer[40..48]));
    let offset = ((server_received - sent) + (server_sent - received)) / 2.0;
    let delay = (received - sent) - (server_sent - server_received);
    Ok(Sample { server, offset, delay: delay.max(0.0), stratum })
}

/// The local clock as Unix seconds.
fn local_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Asks `server` once.
pub async fn query(server: SocketAddr) -> Result<Sample, NtpError> {
    let bind: SocketAddr =
        if server.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
    let io = |e: std::io::Error| NtpError::Io(e.to_string());
    let socket = UdpSocket::bind(bind).await.map_err(io)?;
    socket.connect(server).await.map_err(io)?;
    let mut nonce = [0u8; 8];
    crate::random::fill(&mut nonce);
    let sent = local_now();
    socket.send(&request(nonce)).await.map_err(io)?;
    let mut buffer = [0u8; 512];
    let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
    // Datagrams that are not the answer (stale, forged) are skipped until the deadline.
    loop {
        let length = match tokio::time::timeout_at(deadline, socket.recv(&mut buffer)).await {
            Err(_) => return Err(NtpError::Timeout(ANSWER_TIMEOUT)),
            Ok(received) => received.map_err(io)?,
        };
        match parse(server, &buffer[..length], nonce, sent, local_now()) {
            Err(NtpError::Mismatch) => continue,
            result => return result,
        }
    }
}

/// `host`, `host:port` or `[v6]:port` as socket addresses (at most [`ADDRESSES_PER_NAME`]).
pub async fn resolve(server: &str) -> Result<Vec<SocketAddr>, NtpError> {
    let spec = if server.parse::<SocketAddr>().is_ok()
        || server.rsplit_once(':').is_some_and(|(host, port)| !host.contains(':') && port.parse::<u16>().is_ok())
    {
        server.to_string()
    } else if server.contains(':') {
        format!("[{server}]:{PORT}")
    } else {
        format!("{server}:{PORT}")
    };
    match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(spec)).await {
        Err(_) => Err(NtpError::Timeout(RESOLVE_TIMEOUT)),
        Ok(Err(error)) => Err(NtpError::Io(format!("cannot resolve {server}: {error}"))),
        Ok(Ok(addresses)) => Ok(addresses.take(ADDRESSES_PER_NAME).collect()),
    }
}

/// One round: every address of every server asked once; the answer with the shortest round
/// trip wins (RFC 5905's clock filter, reduced to one round).
pub async fn best_sample(servers: &[String]) -> Result<Sample, String> {
    let mut errors = Vec::new();
    let mut best: Option<Sample> = None;
    for server in servers {
        let addresses = match resolve(server).await {
            Ok(addresses) => addresses,
            Err(error) => {
                errors.push(format!("{server}: {error}"));
                continue;
            }
        };
        for address in addresses {
            match query(address).await {
                Ok(sample) if best.is_none_or(|b| sample.delay < b.delay) => best = Some(sample),
                Ok(_) => {}
                Err(error) => errors.push(format!("{address}: {error}")),
            }
        }
    }
    best.ok_or_else(|| if errors.is_empty() { "no NTP servers".to_string() } else { errors.join("; ") })
}

/// What the last round did, as the status file holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// When (Unix time, after any step).
    pub at: u64,
    /// The sample used, if a server answered.
    pub sample: Option<Sample>,
    /// Whether the clock was stepped.
    pub stepped: bool,
    /// Why no sample was used.
    pub error: Option<String>,
}

impl Status {
    /// `key=value` lines.
    fn to_text(&self) -> String {
        let mut text = format!("at={}\n", self.at);
        if let Some(sample) = &self.sample {
            text += &format!(
                "server={}\noffset={:+.3}\ndelay={:.3}\nstratum={}\nstepped={}\n",
                sample.server, sample.offset, sample.delay, sample.stratum, self.stepped
            );
        }
        if let Some(error) = &self.error {
            text += &format!("error={}\n", error.replace('\n', " "));
        }
        text
    }

    /// Reads a status file; `None` when there is none or it is not one.
    pub fn read(path: &Path) -> Option<Status> {
        let text = std::fs::read_to_string(path).ok()?;
        let value = |key: &str| text.lines().find_map(|l| l.strip_prefix(key).and_then(|l| l.strip_prefix('=')));
        let sample = match (value("server"), value("offset"), value("delay"), value("stratum")) {
            (Some(server), Some(offset), Some(delay), Some(stratum)) => Some(Sample {
                server: server.parse().ok()?,
                offset: offset.parse().ok()?,
                delay: delay.parse().ok()?,
                stratum: stratum.parse().ok()?,
            }),
            _ => None,
        };
        Some(Status {
            at: value("at")?.parse().ok()?,
            sample,
            stepped: value("stepped") == Some("true"),
            error: value("error").map(String::from),
        })
    }

    /// One line for people: where the time came from and when, or why it did not.
    pub fn describe(&self) -> String {
        match (&self.sample, &self.error) {
            (Some(sample), _) => format!(
                "from {} (stratum {}) at {}, offset {:+.3} s{}",
                sample.server,
                sample.stratum,
                crate::clock::date_time(self.at),
                sample.offset,
                if self.stepped { ", clock stepped" } else { "" }
            ),
            (None, Some(error)) => format!("no NTP answer at {}: {error}", crate::clock::date_time(self.at)),
            (None, None) => format!("no NTP answer at {}", crate::clock::date_time(self.at)),
        }
    }
}

/// The clock's state for people (the System page, `redirect status`): why WAN calls wait,
/// or whether NTP synchronised it, and from where when `provbox ntp` noted it.
pub fn clock_state(now: u64) -> String {
    if let Err(reason) = crate::clock::check(now) {
        return reason;
    }
    let noted = Status::read(Path::new(STATUS_FILE)).map(|s| s.describe());
    match (crate::clock::ntp_synchronised(), noted) {
        (true, Some(noted)) => format!("synchronised by NTP: {noted}"),
        (true, None) => "synchronised by NTP".to_string(),
        (false, Some(noted)) => format!("not synchronised by NTP ({noted}); reads later than this build"),
        (false, None) => "not synchronised by NTP; reads later than this build".to_string(),
    }
}

/// Writes `status` to `path` whole (a temporary file renamed over it), readable by all.
fn write_status(path: &Path, status: &Status) {
    let temporary = path.with_extension("new");
    let _ = std::fs::remove_file(&temporary);
    let written = std::fs::write(&temporary, status.to_text()).and_then(|()| std::fs::rename(&temporary, path));
    if let Err(error) = written {
        tracing::warn!("cannot write the NTP status {}: {error}", path.display());
    }
}

/// One round against `servers`: the clock is stepped when it is off by more than
/// [`STEP_THRESHOLD`] and marked synchronised for the kernel. Needs `CAP_SYS_TIME`.
pub async fn synchronise(servers: &[String]) -> Status {
    match best_sample(servers).await {
        Err(error) => Status { at: crate::clock::now(), sample: None, stepped: false, error: Some(error) },
        Ok(sample) => {
            let stepped = sample.offset.abs() > STEP_THRESHOLD;
            let result = if stepped { crate::clock::step(sample.offset) } else { Ok(()) }
                .and_then(|()| crate::clock::mark_synchronised(sample.delay / 2.0));
            match result {
                Ok(()) => Status { at: crate::clock::now(), sample: Some(sample), stepped, error: None },
                Err(error) => Status {
                    at: crate::clock::now(),
                    sample: Some(sample),
                    stepped: false,
                    error: Some(format!("cannot set the clock: {error}")),
                },
            }
        }
    }
}

/// Keeps the clock synchronised from `servers`, noting each round in `status_path`; runs
/// until the process is stopped. `once` makes one round and returns whether it worked.
pub async fn run(servers: &[String], status_path: Option<&Path>, once: bool) -> bool {
    let mut retry = RETRY_FIRST;
    loop {
        let status = synchronise(servers).await;
        match (&status.sample, &status.error) {
            (Some(sample), None) => tracing::info!(
                server = %sample.server, offset = sample.offset, delay = sample.delay, stepped = status.stepped,
                "clock synchronised by NTP"
            ),
            (_, error) => tracing::warn!("NTP: {}", error.as_deref().unwrap_or("no answer")),
        }
        if let Some(path) = status_path {
            write_status(path, &status);
        }
        let worked = status.error.is_none();
        if once {
            return worked;
        }
        let pause = if worked {
            retry = RETRY_FIRST;
            POLL_SYNCHRONISED
        } else {
            let pause = retry;
            retry = (retry * 2).min(RETRY_MAX);
            pause
        };
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server answer as RFC 5905 lays it out: LI 0, VN 4, mode 4, stratum 2, the client's
    /// transmit timestamp echoed as origin, then receive and transmit timestamps.
    fn answer(nonce: [u8; 8], receive_unix: f64, transmit_unix: f64) -> [u8; 48] {
        let timestamp = |unix: f64| {
            let ntp = unix + NTP_TO_UNIX;
            let seconds = (ntp as u64 & 0xffff_ffff) as u32;
            let fraction = ((ntp - ntp.floor()) * 4_294_967_296.0) as u32;
            let mut bytes = [0u8; 8];
            bytes[..4].copy_from_slice(&seconds.to_be_bytes());
            bytes[4..].copy_from_slice(&fraction.to_be_bytes());
            bytes
        };
        let mut packet = [0u8; 48];
        packet[0] = 4 << 3 | 4;
        packet[1] = 2;
        packet[24..32].copy_from_slice(&nonce);
        packet[32..40].copy_from_slice(&timestamp(receive_unix));
        packet[40..48].copy_from_slice(&timestamp(transmit_unix));
        packet
    }

    fn server() -> SocketAddr {
        "127.0.0.1:123".parse().unwrap()
    }

    #[test]
    fn the_request_is_a_version_4_client_packet_carrying_the_nonce() {
        let packet = request([1, 2, 3, 4, 5, 6, 7, 8]);
        // RFC 5905 figure 8: LI 0, VN 4, Mode 3 is 0x23.
        assert_eq!(packet[0], 0x23);
        assert_eq!(&packet[40..], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(packet[1..40].iter().all(|b| *b == 0));
    }

    #[test]
    fn offset_and_delay_follow_rfc_5905() {
        // RFC 5905 section 8 with T1 = 100, T2 = 3700.25, T3 = 3700.5, T4 = 101:
        // θ = ((3700.25 − 100) + (3700.5 − 101)) / 2 = 3599.875, δ = (101 − 100) − 0.25.
        let nonce = [9; 8];
        let base = 1_800_000_000.0;
        let sample =
            parse(server(), &answer(nonce, base + 3700.25, base + 3700.5), nonce, base + 100.0, base + 101.0).unwrap();
        assert!((sample.offset - 3599.875).abs() < 1e-3, "{sample:?}");
        assert!((sample.delay - 0.75).abs() < 1e-3, "{sample:?}");
        assert_eq!(sample.stratum, 2);
    }

    #[test]
    fn bad_answers_are_refused_with_a_reason() {
        let nonce = [7; 8];
        let now = 1_800_000_000.0;
        let good = answer(nonce, now, now);
        assert_eq!(parse(server(), &good[..40], nonce, now, now), Err(NtpError::Short(40)));
        assert_eq!(parse(server(), &good, [8; 8], now, now), Err(NtpError::Mismatch));
        let mut client = good;
        client[0] = 4 << 3 | 3;
        assert_eq!(parse(server(), &client, nonce, now, now), Err(NtpError::NotServer { version: 4, mode: 3 }));
        let mut kiss = good;
        kiss[1] = 0;
        kiss[12..16].copy_from_slice(b"RATE");
        assert_eq!(parse(server(), &kiss, nonce, now, now), Err(NtpError::Kiss("RATE".into())));
        let mut alarm = good;
        alarm[0] |= 3 << 6;
        assert_eq!(parse(server(), &alarm, nonce, now, now), Err(NtpError::Unsynchronised(2)));
    }

    #[test]
    fn timestamps_after_2036_are_read_in_the_next_era() {
        // 2040-01-01 is 2,208,988,800 + 2,208,988,800 s after 1900: past 2^32, so era 1.
        let unix_2040 = 2_208_988_800.0;
        let ntp = (unix_2040 + NTP_TO_UNIX) as u64 - (1u64 << 32);
        let mut timestamp = [0u8; 8];
        timestamp[..4].copy_from_slice(&(ntp as u32).to_be_bytes());
        assert_eq!(unix_seconds(&timestamp), unix_2040);
    }

    #[test]
    fn the_status_file_reads_back() {
        let status = Status {
            at: 1_800_000_000,
            sample: Some(Sample { server: server(), offset: 3600.25, delay: 0.004, stratum: 2 }),
            stepped: true,
            error: None,
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ntp");
        write_status(&path, &status);
        let read = Status::read(&path).unwrap();
        assert_eq!((read.at, read.stepped, read.error.as_deref()), (status.at, true, None));
        assert!((read.sample.unwrap().offset - 3600.25).abs() < 1e-3);
        assert!(read.describe().starts_with("from 127.0.0.1:123 (stratum 2) at "), "{}", read.describe());
    }
}
