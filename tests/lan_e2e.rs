//! The appliance follows its LAN address: when the address changes after start (a DHCP
//! lease that arrives late or moves), the server certificate is reissued for it, phones'
//! URLs point at it, the mDNS answers name it, and SIP plug-and-play joins its multicast
//! group on it. In network namespaces of the test's own (needs root and iproute2, as the
//! SIP multicast test does).

mod fleet;

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use fleet::{Appliance, Netns, cli_ok, yealink_subscribe};
use rustls::pki_types::ServerName;

/// How long the appliance may take to notice (it looks every 5 s).
const NOTICE: Duration = Duration::from_secs(30);

/// Runs `work` on a thread inside the appliance's namespace.
fn in_appliance_netns<T: Send + 'static>(netns: &Netns, work: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{}", netns.appliance);
    std::thread::spawn(move || {
        let file = std::fs::File::open(path).expect("namespace file");
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        work()
    })
    .join()
    .expect("namespace thread")
}

/// Whether a TLS handshake with the appliance at `https` succeeds for server name `name`
/// (an IP address), trusting only the appliance's CA: true only if the served certificate
/// covers that address.
fn certificate_covers(netns: &Netns, appliance: &Appliance, name: IpAddr) -> bool {
    let config = appliance.client_config();
    let https = appliance.https;
    in_appliance_netns(netns, move || {
        let Ok(tcp) = std::net::TcpStream::connect_timeout(&https, Duration::from_secs(5)) else { return false };
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let connection = rustls::ClientConnection::new(config, ServerName::IpAddress(name.into())).unwrap();
        let mut tls = rustls::StreamOwned::new(connection, tcp);
        use std::io::Write;
        tls.write_all(b"GET /ca.crt HTTP/1.1\r\nHost: provbox\r\nConnection: close\r\n\r\n").is_ok()
            && tls.flush().is_ok()
            && {
                let mut answer = Vec::new();
                std::io::Read::read_to_end(&mut tls, &mut answer).is_ok() || !answer.is_empty()
            }
    })
}

/// The IPv4 addresses the mDNS responder (on the namespace's loopback) gives for `name`.
fn mdns_addresses(netns: &Netns, responder: SocketAddr, name: &str) -> Vec<std::net::Ipv4Addr> {
    use simple_dns::{CLASS, Name, Packet, Question, TYPE, rdata::RData};
    let mut query = Packet::new_query(77);
    query.questions.push(Question::new(Name::new_unchecked(name), TYPE::A.into(), CLASS::IN.into(), false));
    let query = query.build_bytes_vec().unwrap();
    in_appliance_netns(netns, move || {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        socket.send_to(&query, responder).unwrap();
        let mut buffer = vec![0u8; 9000];
        let Ok((length, _)) = socket.recv_from(&mut buffer) else { return Vec::new() };
        let reply = Packet::parse(&buffer[..length]).unwrap();
        reply
            .answers
            .iter()
            .filter_map(|answer| match &answer.rdata {
                RData::A(a) => Some(std::net::Ipv4Addr::from(a.address)),
                _ => None,
            })
            .collect()
    })
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("iproute2 runs");
    assert!(status.success(), "ip {args:?} failed");
}

/// Waits (bounded) until `condition` holds.
fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < NOTICE {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("not within {NOTICE:?}: {what}");
}

#[test]
fn a_new_lan_address_reaches_the_certificate_the_urls_and_mdns() {
    let netns = Netns::with_veth();
    let dir = tempfile::tempdir().unwrap();
    let data = fleet::data_dir(dir.path());
    cli_ok(&data, &["settings", "set", "sip.server", "pbx.example.com"]);
    let appliance = Appliance::start_in(Some(&netns), "0.0.0.0:0", data, Some(dir), &["--key-type", "ecdsa-p256"]);
    let (name, responder) = appliance.mdns.clone();
    let first: IpAddr = "10.99.0.2".parse().unwrap();
    let second: IpAddr = "10.99.0.3".parse().unwrap();
    assert!(certificate_covers(&netns, &appliance, first), "the first certificate does not cover {first}");
    assert!(!certificate_covers(&netns, &appliance, second));
    let device = appliance.add("805ec0d57d72", "yealink", "T54W");
    assert!(device["enrollment_url"].as_str().unwrap().starts_with("https://10.99.0.2:"), "{device}");

    // The lease moves, as the image's DHCP event script applies it: the old address goes,
    // the new one comes.
    ip(&["-n", &netns.appliance, "addr", "flush", "dev", "v1"]);
    ip(&["-n", &netns.appliance, "addr", "add", "10.99.0.3/24", "dev", "v1"]);
    eventually("the certificate covers the new address", || certificate_covers(&netns, &appliance, second));
    assert!(!certificate_covers(&netns, &appliance, first), "the old address is still in the certificate");
    assert!(appliance.log().contains("the LAN address or host name changed"), "{}", appliance.log());

    // The URLs and the mDNS answers follow in the same step, just after the certificate.
    eventually("phones' URLs name the new address", || {
        appliance.device("805ec0d57d72")["enrollment_url"].as_str().unwrap().starts_with("https://10.99.0.3:")
    });
    let new_only = ["10.99.0.3".parse::<std::net::Ipv4Addr>().unwrap()];
    eventually("mDNS answers with the new address only", || mdns_addresses(&netns, responder, &name) == new_only);
}

/// A board whose lease comes only after provbox started (the image waits 20 s, then starts
/// anyway): with no address at start there was nothing to join the SIP plug-and-play group
/// on, and a booting phone's multicast SUBSCRIBE reaches provbox only once it has joined
/// on the address that came.
#[test]
fn a_late_lease_gets_sip_plug_and_play_on_its_address() {
    let netns = Netns::with_veth();
    ip(&["-n", &netns.appliance, "addr", "flush", "dev", "v1"]);
    let dir = tempfile::tempdir().unwrap();
    let data = fleet::data_dir(dir.path());
    cli_ok(&data, &["settings", "set", "sip.server", "pbx.example.com"]);
    let appliance = Appliance::start_in(Some(&netns), "0.0.0.0:0", data, Some(dir), &["--key-type", "ecdsa-p256"]);
    let mac = "805ec0d57d72";
    appliance.add(mac, "yealink", "T54W");
    ip(&["-n", &netns.appliance, "addr", "add", "10.99.0.2/24", "dev", "v1"]);
    eventually("provbox notices the lease", || appliance.log().contains("the LAN address or host name changed"));

    let socket = netns.phone_socket("10.99.0.1:0".parse().unwrap());
    socket.set_multicast_loop_v4(false).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let port = socket.local_addr().unwrap().port();
    let subscribe = yealink_subscribe(mac, port).replace("127.0.0.1", "10.99.0.1");
    let group = SocketAddr::new(std::net::Ipv4Addr::new(224, 0, 1, 75).into(), appliance.sip.port());
    // A booting phone repeats its SUBSCRIBE; the follower joins within its poll.
    eventually("a multicast SUBSCRIBE is answered on the new address", || {
        socket.send_to(subscribe.as_bytes(), group).unwrap();
        let mut buffer = vec![0u8; 9000];
        match socket.recv_from(&mut buffer) {
            Ok((length, from)) => {
                let answer = String::from_utf8_lossy(&buffer[..length]);
                answer.starts_with("SIP/2.0 200 OK") && from.ip() == "10.99.0.2".parse::<IpAddr>().unwrap()
            }
            Err(_) => false,
        }
    });
}
