//! A mock NTP server for the tests, written from RFC 5905's packet layout (section 7.3):
//! a real UDP socket on 127.0.0.1, answering a bounded number of requests in a thread, and
//! counting them.

#![allow(dead_code)] // Each test binary uses part of it.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds between 1900 and 1970 (RFC 5905, section 6).
pub const NTP_TO_UNIX: f64 = 2_208_988_800.0;

/// The NTP timestamp (RFC 5905, section 6) of a Unix time.
pub fn ntp_timestamp(unix: f64) -> [u8; 8] {
    let ntp = unix + NTP_TO_UNIX;
    let mut bytes = [0u8; 8];
    bytes[..4].copy_from_slice(&((ntp as u64 & 0xffff_ffff) as u32).to_be_bytes());
    bytes[4..].copy_from_slice(&(((ntp - ntp.floor()) * 4_294_967_296.0) as u32).to_be_bytes());
    bytes
}

/// This host's clock as Unix seconds.
pub fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// How the mock server answers.
#[derive(Clone, Copy)]
pub enum Behaviour {
    /// A stratum-2 server whose clock is `ahead` seconds ahead of this host's.
    Ahead(f64),
    /// First a datagram that echoes the wrong origin, then a correct answer 1 h ahead.
    ForgedFirst,
    /// A kiss-o'-death with code RATE.
    Kiss,
    /// Nothing.
    Silent,
}

/// A running mock server.
pub struct MockNtp {
    /// Where it listens.
    pub address: SocketAddr,
    served: Arc<AtomicUsize>,
}

impl MockNtp {
    /// Requests answered (or, when silent, received) so far.
    pub fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

/// A mock NTP server on 127.0.0.1 that handles up to `limit` requests and stops after
/// `idle` without one: bounded in count and time.
pub fn start(behaviour: Behaviour, limit: usize, idle: Duration) -> MockNtp {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(idle)).unwrap();
    let address = socket.local_addr().unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let counter = served.clone();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 512];
        for _ in 0..limit {
            let Ok((length, client)) = socket.recv_from(&mut buffer) else { return };
            counter.fetch_add(1, Ordering::SeqCst);
            // A client request: version 4, mode 3 (RFC 5905, figure 8).
            assert!(length >= 48 && buffer[0] & 7 == 3, "not a client request: {:x?}", &buffer[..length]);
            let received = unix_now();
            let mut answer = [0u8; 48];
            answer[0] = 4 << 3 | 4;
            answer[1] = 2;
            answer[12..16].copy_from_slice(b"GPS\0");
            answer[24..32].copy_from_slice(&buffer[40..48]);
            match behaviour {
                Behaviour::Silent => continue,
                Behaviour::Kiss => {
                    answer[1] = 0;
                    answer[12..16].copy_from_slice(b"RATE");
                }
                Behaviour::Ahead(ahead) => {
                    answer[32..40].copy_from_slice(&ntp_timestamp(received + ahead));
                    answer[40..48].copy_from_slice(&ntp_timestamp(unix_now() + ahead));
                }
                Behaviour::ForgedFirst => {
                    let mut forged = answer;
                    forged[24..32].copy_from_slice(&[0xee; 8]);
                    forged[32..40].copy_from_slice(&ntp_timestamp(received - 86_400.0));
                    forged[40..48].copy_from_slice(&ntp_timestamp(received - 86_400.0));
                    let _ = socket.send_to(&forged, client);
                    answer[32..40].copy_from_slice(&ntp_timestamp(received + 3600.0));
                    answer[40..48].copy_from_slice(&ntp_timestamp(unix_now() + 3600.0));
                }
            }
            let _ = socket.send_to(&answer, client);
        }
    });
    MockNtp { address, served }
}
