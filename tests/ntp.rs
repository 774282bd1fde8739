//! The SNTP client against NTP servers on loopback: tests/ntp_mock, written from RFC 5905's
//! packet layout (a server whose clock is an hour ahead, one that forges, one that sends a
//! kiss-o'-death, one that never answers), and, with `--ignored` (scripts/test-image),
//! chrony's chronyd, an independent NTP implementation, serving the host's clock.

mod ntp_mock;

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ntp_mock::Behaviour;
use provbox::ntp::{self, NtpError};

/// A mock server for one test: a few requests, stopping after 10 s without one.
fn mock_server(behaviour: Behaviour, limit: usize) -> SocketAddr {
    ntp_mock::start(behaviour, limit, Duration::from_secs(10)).address
}

#[tokio::test]
async fn the_offset_of_a_server_an_hour_ahead_is_an_hour() {
    let server = mock_server(Behaviour::Ahead(3600.0), 1);
    let sample = ntp::query(server).await.unwrap();
    assert!((sample.offset - 3600.0).abs() < 0.05, "{sample:?}");
    assert!(sample.delay < 0.5, "{sample:?}");
    assert_eq!((sample.server, sample.stratum), (server, 2));
}

#[tokio::test]
async fn a_forged_answer_is_skipped_for_the_real_one() {
    let server = mock_server(Behaviour::ForgedFirst, 1);
    let sample = ntp::query(server).await.unwrap();
    assert!((sample.offset - 3600.0).abs() < 0.05, "the forged answer (a day behind) was used: {sample:?}");
}

#[tokio::test]
async fn a_kiss_o_death_and_silence_are_errors_with_reasons() {
    let kiss = mock_server(Behaviour::Kiss, 1);
    assert_eq!(ntp::query(kiss).await, Err(NtpError::Kiss("RATE".into())));
    let silent = mock_server(Behaviour::Silent, 1);
    let started = Instant::now();
    assert!(matches!(ntp::query(silent).await, Err(NtpError::Timeout(_))));
    assert!(started.elapsed() < Duration::from_secs(5), "the wait is bounded");
}

#[tokio::test]
async fn the_shortest_round_trip_wins_and_failures_are_named() {
    let good = mock_server(Behaviour::Ahead(-120.0), 1);
    let kiss = mock_server(Behaviour::Kiss, 2);
    let silent = mock_server(Behaviour::Silent, 2);
    let servers = vec![kiss.to_string(), good.to_string(), silent.to_string()];
    let sample = ntp::best_sample(&servers).await.unwrap();
    assert_eq!(sample.server, good);
    assert!((sample.offset + 120.0).abs() < 0.05, "{sample:?}");

    let error = ntp::best_sample(&[kiss.to_string(), silent.to_string()]).await.unwrap_err();
    assert!(error.contains("RATE") && error.contains(&format!("{silent}: no answer")), "{error}");
}

#[tokio::test]
async fn server_names_take_the_default_port() {
    assert_eq!(ntp::resolve("127.0.0.1").await.unwrap(), vec!["127.0.0.1:123".parse::<SocketAddr>().unwrap()]);
    assert_eq!(ntp::resolve("127.0.0.1:4123").await.unwrap(), vec!["127.0.0.1:4123".parse::<SocketAddr>().unwrap()]);
    assert_eq!(ntp::resolve("::1").await.unwrap(), vec!["[::1]:123".parse::<SocketAddr>().unwrap()]);
    assert_eq!(ntp::resolve("[::1]:4123").await.unwrap(), vec!["[::1]:4123".parse::<SocketAddr>().unwrap()]);
}

/// chronyd, serving its local clock at stratum 8 on a loopback port (`PROVBOX_CHRONYD`:
/// the binary, unpacked from Debian's chrony package by scripts/test-image; it never sets
/// this host's clock, `-x`, and talks to no other server).
struct Chronyd {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Chronyd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chronyd(port: u16) -> Chronyd {
    let binary = PathBuf::from(std::env::var_os("PROVBOX_CHRONYD").expect("PROVBOX_CHRONYD names chronyd"));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("chrony.conf");
    std::fs::write(
        &config,
        format!(
            "port {port}\nbindaddress 127.0.0.1\nallow 127.0.0.1\nlocal stratum 8\ncmdport 0\npidfile {}\ndriftfile {}\n",
            dir.path().join("chronyd.pid").display(),
            dir.path().join("drift").display()
        ),
    )
    .unwrap();
    let child = Command::new(binary)
        .args(["-d", "-x", "-u", "root", "-f"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("chronyd runs");
    Chronyd { child, _dir: dir }
}

#[tokio::test]
#[ignore = "needs chronyd: scripts/test-image"]
async fn chronyd_s_answers_read_as_this_host_s_time() {
    let port = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _server = chronyd(port);
    let address: SocketAddr = ([127, 0, 0, 1], port).into();
    // chronyd takes a moment to bind; bounded retries.
    let mut last = None;
    for _ in 0..50 {
        match ntp::query(address).await {
            Ok(sample) => {
                last = Some(Ok(sample));
                break;
            }
            Err(error) => last = Some(Err(error)),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let sample = last.unwrap().unwrap_or_else(|e| panic!("chronyd did not answer: {e}"));
    // Same host, same clock: the offset is the measurement's noise.
    assert!(sample.offset.abs() < 0.05, "{sample:?}");
    assert!(sample.delay < 0.5, "{sample:?}");
    // `local stratum 8` serves stratum 8.
    assert_eq!(sample.stratum, 8, "{sample:?}");
}
