//! mDNS for technicians: `provbox-<last 6 of MAC>.local` resolves to the appliance, and the
//! page is browsable as `_https._tcp`. A small responder (RFC 6762) on the simple-dns wire
//! format: it announces itself at start on the LAN, answers multicast queries for its names,
//! and answers legacy unicast queries (from a port other than 5353) directly.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::time::Duration;

use simple_dns::rdata::{A, AAAA, PTR, RData, SRV, TXT};
use simple_dns::{CLASS, Name, OPCODE, Packet, PacketFlag, QTYPE, ResourceRecord, TYPE};
use tokio::net::UdpSocket;
use tokio::sync::watch;

/// The mDNS group and port.
pub const GROUP: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(224, 0, 0, 251)), 5353);
/// TTL of multicast answers, seconds (RFC 6762 §10 recommends 120 for host records).
const TTL: u32 = 120;
/// TTL of answers to legacy unicast queries (RFC 6762 §6.7: at most 10).
const LEGACY_TTL: u32 = 10;

/// The service type browsed for.
const SERVICE: &str = "_https._tcp.local";

/// What the responder answers for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The appliance's addresses.
    pub addresses: Vec<IpAddr>,
    /// The page's HTTPS port.
    pub https_port: u16,
    /// `provbox-d57d72.local`.
    fqdn: String,
    /// `provbox-d57d72._https._tcp.local`.
    instance: String,
}

impl Identity {
    /// Answers for `host` (without `.local`) at `addresses`, the page on `https_port`.
    pub fn new(host: &str, addresses: Vec<IpAddr>, https_port: u16) -> Identity {
        Identity { addresses, https_port, fqdn: format!("{host}.local"), instance: format!("{host}.{SERVICE}") }
    }

    /// The host name with `.local`.
    pub fn fqdn(&self) -> &str {
        &self.fqdn
    }

    /// `provbox-<last 6 hex digits of the first interface's MAC>`, or `provbox`.
    pub fn host_name() -> String {
        let mac = nix::ifaddrs::getifaddrs().ok().and_then(|mut interfaces| {
            interfaces.find_map(|interface| {
                let link = interface.address?.as_link_addr()?.addr()?;
                (link != [0; 6] && !interface.flags.contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK))
                    .then_some(link)
            })
        });
        match mac {
            Some(mac) => format!("provbox-{}", crate::hex::encode(&mac[3..])),
            None => "provbox".into(),
        }
    }

    /// The records answering a question for `name` and `qtype`, if it is about us, with
    /// `ttl` and the cache-flush bit on unique records when `flush`.
    fn answers(&self, name: &str, qtype: QTYPE, ttl: u32, flush: bool) -> Vec<ResourceRecord<'_>> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let wants = |t: TYPE| qtype == QTYPE::ANY || qtype == QTYPE::TYPE(t);
        let fqdn = || Name::new_unchecked(&self.fqdn);
        let instance = || Name::new_unchecked(&self.instance);
        let mut records = Vec::new();
        if name == self.fqdn.to_ascii_lowercase() {
            for address in &self.addresses {
                let rdata = match address {
                    IpAddr::V4(v4) if wants(TYPE::A) => RData::A(A { address: u32::from(*v4) }),
                    IpAddr::V6(v6) if wants(TYPE::AAAA) => RData::AAAA(AAAA { address: u128::from(*v6) }),
                    _ => continue,
                };
                records.push(ResourceRecord::new(fqdn(), CLASS::IN, ttl, rdata).with_cache_flush(flush));
            }
        } else if name == SERVICE && wants(TYPE::PTR) {
            records.push(ResourceRecord::new(
                Name::new_unchecked(SERVICE),
                CLASS::IN,
                TTL,
                RData::PTR(PTR(instance())),
            ));
        } else if name == self.instance.to_ascii_lowercase() {
            if wants(TYPE::SRV) {
                let srv = SRV { priority: 0, weight: 0, port: self.https_port, target: fqdn() };
                records.push(ResourceRecord::new(instance(), CLASS::IN, ttl, RData::SRV(srv)).with_cache_flush(flush));
            }
            if wants(TYPE::TXT) {
                records.push(
                    ResourceRecord::new(instance(), CLASS::IN, ttl, RData::TXT(TXT::new())).with_cache_flush(flush),
                );
            }
        }
        records
    }

    /// The reply to a query packet, or None when it is not a standard query or asks nothing
    /// about us. Responses (ours looped back, or other responders') are never answered.
    /// `legacy` marks a unicast query from a port other than 5353 (RFC 6762 §6.7): its
    /// reply echoes the id and the questions, with short TTLs and no cache-flush bits; a
    /// multicast reply has id 0 and no questions.
    pub fn reply_to(&self, query: &[u8], legacy: bool) -> Option<Vec<u8>> {
        let packet = Packet::parse(query).ok()?;
        if packet.has_flags(PacketFlag::RESPONSE) || packet.opcode() != OPCODE::StandardQuery {
            return None;
        }
        let (id, ttl) = if legacy { (packet.id(), LEGACY_TTL) } else { (0, TTL) };
        let mut reply = Packet::new_reply(id);
        reply.set_flags(PacketFlag::AUTHORITATIVE_ANSWER);
        for question in &packet.questions {
            reply.answers.extend(self.answers(&question.qname.to_string(), question.qtype, ttl, !legacy));
        }
        if reply.answers.is_empty() {
            return None;
        }
        if legacy {
            reply.questions = packet.questions.clone();
        }
        reply.build_bytes_vec_compressed().ok()
    }

    /// The unsolicited announcement of every record.
    fn announcement(&self) -> Option<Vec<u8>> {
        let mut packet = Packet::new_reply(0);
        packet.set_flags(PacketFlag::AUTHORITATIVE_ANSWER);
        packet.answers.extend(self.answers(&self.fqdn, QTYPE::ANY, TTL, true));
        packet.answers.extend(self.answers(SERVICE, QTYPE::ANY, TTL, true));
        packet.answers.extend(self.answers(&self.instance, QTYPE::ANY, TTL, true));
        packet.build_bytes_vec_compressed().ok()
    }
}

/// Binds `address`. For the mDNS port the socket shares 5353 with other responders
/// (SO_REUSEADDR/SO_REUSEPORT) and joins the group on each IPv4 interface in `interfaces`.
pub fn bind(address: SocketAddr, interfaces: &[IpAddr]) -> std::io::Result<UdpSocket> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrStorage, setsockopt, sockopt};
    let family = if address.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let fd: OwnedFd = nix::sys::socket::socket(family, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    setsockopt(&fd, sockopt::ReusePort, &true)?;
    nix::sys::socket::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrStorage::from(address))?;
    let socket = std::net::UdpSocket::from(fd);
    socket.set_nonblocking(true)?;
    let socket = UdpSocket::from_std(socket)?;
    join_group(&socket, interfaces);
    Ok(socket)
}

/// Joins the mDNS group on each IPv4 address in `interfaces` (a LAN socket only).
fn join_group(socket: &UdpSocket, interfaces: &[IpAddr]) {
    if socket.local_addr().is_ok_and(|a| a.ip().is_loopback()) {
        return;
    }
    for interface in interfaces {
        if let IpAddr::V4(v4) = interface
            && let Err(error) = socket.join_multicast_v4(Ipv4Addr::new(224, 0, 0, 251), *v4)
        {
            tracing::warn!("mDNS: cannot join the group on {v4}: {error}");
        }
    }
}

/// Announces `identity` on a LAN socket: RFC 6762 §8.3, at least two announcements, one
/// second apart.
async fn announce(socket: &UdpSocket, identity: &Identity) {
    let on_lan = socket.local_addr().is_ok_and(|a| !a.ip().is_loopback());
    if on_lan && let Some(announcement) = identity.announcement() {
        for _ in 0..2 {
            let _ = socket.send_to(&announcement, GROUP).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Answers queries as the latest `identity` until `stopped`; on a LAN socket announces the
/// records first and again whenever the identity changes (a new DHCP lease), joining the
/// group on new addresses.
pub async fn run(socket: UdpSocket, mut identity: watch::Receiver<Identity>, mut stopped: watch::Receiver<bool>) {
    let on_lan = socket.local_addr().is_ok_and(|a| !a.ip().is_loopback());
    let mut current = identity.borrow_and_update().clone();
    let mut following = true;
    announce(&socket, &current).await;
    let mut buffer = vec![0u8; 9000];
    let mut recent = RecentAnswers::default();
    loop {
        let received = tokio::select! {
            received = socket.recv_from(&mut buffer) => Some(received),
            changed = identity.changed(), if following => {
                // Once the sender is gone, answers stay as the last identity.
                following = changed.is_ok();
                None
            }
            _ = stopped.wait_for(|stop| *stop) => return,
        };
        let Some(received) = received else {
            if !following {
                continue;
            }
            let next = identity.borrow_and_update().clone();
            let added: Vec<IpAddr> =
                next.addresses.iter().filter(|a| !current.addresses.contains(a)).copied().collect();
            join_group(&socket, &added);
            current = next;
            announce(&socket, &current).await;
            continue;
        };
        let Ok((length, source)) = received else { continue };
        // Queries from port 5353 get the multicast answer; others (legacy unicast) a direct one.
        let legacy = source.port() != 5353 || !on_lan;
        let Some(reply) = current.reply_to(&buffer[..length], legacy) else { continue };
        let target = if legacy { source } else { GROUP };
        if recent.first_in_a_second(target, &reply, std::time::Instant::now()) {
            let _ = socket.send_to(&reply, target).await;
        }
    }
}

/// Answers sent lately, so that the same answer goes to the same place at most once a
/// second (RFC 6762 §6 for multicast; for legacy unicast too, so that repeated questions
/// from a spoofed source do not make the responder an amplifier).
#[derive(Default)]
struct RecentAnswers {
    sent: std::collections::HashMap<(SocketAddr, u64), std::time::Instant>,
}

/// Distinct answers remembered at most.
const MAX_RECENT_ANSWERS: usize = 1024;

impl RecentAnswers {
    /// Whether `reply` may go to `target` now (not sent there within a second); if so, it
    /// counts as sent. The reply's ID (its first two bytes) does not make it another answer.
    fn first_in_a_second(&mut self, target: SocketAddr, reply: &[u8], now: std::time::Instant) -> bool {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        reply.get(2..).unwrap_or_default().hash(&mut hasher);
        let key = (target, hasher.finish());
        if self.sent.get(&key).is_some_and(|at| now.duration_since(*at) < Duration::from_secs(1)) {
            return false;
        }
        if self.sent.len() >= MAX_RECENT_ANSWERS {
            self.sent.retain(|_, at| now.duration_since(*at) < Duration::from_secs(1));
            if self.sent.len() >= MAX_RECENT_ANSWERS {
                return false;
            }
        }
        self.sent.insert(key, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_answer_goes_to_the_same_place_once_a_second() {
        let mut recent = RecentAnswers::default();
        let start = std::time::Instant::now();
        let asker: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        assert!(recent.first_in_a_second(asker, b"\x00\x01answer", start));
        assert!(!recent.first_in_a_second(asker, b"\x00\x02answer", start), "another ID, the same answer");
        assert!(recent.first_in_a_second(GROUP, b"\x00\x01answer", start), "another place");
        assert!(recent.first_in_a_second(asker, b"\x00\x03answer", start + Duration::from_millis(1001)));
    }

    #[test]
    fn answers_host_and_service_queries_only() {
        let identity =
            Identity::new("provbox-d57d72", vec!["192.0.2.10".parse().unwrap(), "2001:db8::10".parse().unwrap()], 8443);
        let mut query = Packet::new_query(7);
        query.questions.push(simple_dns::Question::new(
            Name::new_unchecked("PROVBOX-D57D72.local"),
            TYPE::A.into(),
            CLASS::IN.into(),
            false,
        ));
        let bytes = identity.reply_to(&query.build_bytes_vec().unwrap(), true).unwrap();
        let reply = Packet::parse(&bytes).unwrap();
        assert_eq!(reply.id(), 7);
        assert_eq!(reply.answers.len(), 1, "only the A record");
        assert_eq!(reply.answers[0].rdata, RData::A(A { address: u32::from(Ipv4Addr::new(192, 0, 2, 10)) }));
        assert!(reply.answers[0].ttl <= 10 && !reply.answers[0].cache_flush, "legacy unicast: short TTL, no flush");
        assert_eq!(reply.questions.len(), 1, "legacy unicast echoes the question");
        let multicast = identity.reply_to(&query.build_bytes_vec().unwrap(), false).unwrap();
        let multicast = Packet::parse(&multicast).unwrap();
        assert_eq!((multicast.id(), multicast.questions.len()), (0, 0));
        assert!(multicast.answers[0].cache_flush);
        // A response, such as our own looped back, is never answered: no storm.
        assert!(identity.reply_to(&bytes, false).is_none());

        let mut browse = Packet::new_query(8);
        browse.questions.push(simple_dns::Question::new(
            Name::new_unchecked("_https._tcp.local"),
            TYPE::PTR.into(),
            CLASS::IN.into(),
            false,
        ));
        assert!(identity.reply_to(&browse.build_bytes_vec().unwrap(), false).is_some());

        let mut other = Packet::new_query(9);
        other.questions.push(simple_dns::Question::new(
            Name::new_unchecked("printer.local"),
            TYPE::A.into(),
            CLASS::IN.into(),
            false,
        ));
        assert!(identity.reply_to(&other.build_bytes_vec().unwrap(), false).is_none());
        assert!(identity.reply_to(b"\x00garbage", false).is_none());
    }
}
