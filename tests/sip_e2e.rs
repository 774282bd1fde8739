//! SIP on the LAN, end to end: a real provbox process and SIP peers written here that speak
//! real SIP over UDP on loopback, as Yealink, Snom and Poly phones do; check-sync NOTIFYs
//! to a SIP endpoint the test runs; and an mDNS query for the appliance's name.

mod fleet;

use std::net::SocketAddr;
use std::time::Duration;

use fleet::{Appliance, Connection, Netns, Phone, cli, cli_ok, yealink_subscribe};
use tokio::net::UdpSocket;

/// A SIP peer on loopback.
struct Peer {
    socket: UdpSocket,
}

impl Peer {
    async fn new() -> Peer {
        Peer { socket: UdpSocket::bind("127.0.0.1:0").await.unwrap() }
    }

    fn port(&self) -> u16 {
        self.socket.local_addr().unwrap().port()
    }

    async fn send(&self, text: &str, to: SocketAddr) {
        self.socket.send_to(text.as_bytes(), to).await.unwrap();
    }

    /// The next datagram, or None after `wait`.
    async fn receive(&self, wait: Duration) -> Option<(String, SocketAddr)> {
        let mut buffer = vec![0u8; 9000];
        let (length, from) = tokio::time::timeout(wait, self.socket.recv_from(&mut buffer)).await.ok()?.ok()?;
        Some((String::from_utf8_lossy(&buffer[..length]).into_owned(), from))
    }

    /// A 200 OK to `request`, echoing its transaction headers.
    async fn answer(&self, request: &str, code: &str, to: SocketAddr) {
        let mut reply = format!("SIP/2.0 {code}\r\n");
        for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
            reply += &format!("{name}: {}\r\n", header(request, name).unwrap());
        }
        reply += "Content-Length: 0\r\n\r\n";
        self.send(&reply, to).await;
    }
}

/// A header's value, by full or compact name, case-insensitively.
fn header(message: &str, name: &str) -> Option<String> {
    let compact = match name.to_ascii_lowercase().as_str() {
        "via" => "v",
        "from" => "f",
        "to" => "t",
        "call-id" => "i",
        "content-type" => "c",
        "event" => "o",
        _ => "",
    };
    message.split("\r\n\r\n").next()?.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        let key = key.trim();
        (key.eq_ignore_ascii_case(name) || key.eq_ignore_ascii_case(compact)).then(|| value.trim().to_string())
    })
}

fn body(message: &str) -> &str {
    message.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

/// A Snom-style one: uppercase MAC, compact header forms, no rport (the Via port counts).
fn snom_subscribe(mac: &str, port: u16) -> String {
    let upper = mac.to_uppercase();
    format!(
        "SUBSCRIBE sip:MAC%3A{upper}@224.0.1.75 SIP/2.0\r\n\
         v: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKsnom1\r\n\
         f: <sip:MAC%3A{upper}@224.0.1.75>;tag=s1\r\n\
         t: <sip:MAC%3A{upper}@224.0.1.75>\r\n\
         i: snom-{mac}\r\n\
         CSeq: 1 SUBSCRIBE\r\n\
         o: ua-profile;profile-type=\"device\";vendor=\"snom\";model=\"snomD785\";version=\"10.1.33.33\"\r\n\
         l: 0\r\n\r\n"
    )
}

/// A Poly-style one: the MAC only in From, lowercase header names.
fn poly_subscribe(mac: &str, port: u16) -> String {
    format!(
        "SUBSCRIBE sip:224.0.1.75 SIP/2.0\r\n\
         via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKpoly1;rport\r\n\
         from: <sip:MAC%3a{mac}@127.0.0.1>;tag=p1\r\n\
         to: <sip:224.0.1.75>\r\n\
         call-id: poly-{mac}\r\n\
         cseq: 10 SUBSCRIBE\r\n\
         event: ua-profile;profile-type=\"device\";vendor=\"Polycom\";model=\"VVX400\";version=\"6.4.0\"\r\n\
         content-length: 0\r\n\r\n"
    )
}

const WAIT: Duration = Duration::from_secs(5);

/// Sends `subscribe`, expects the 200 and then the NOTIFY; answers the NOTIFY and returns it.
async fn pnp(appliance: &Appliance, peer: &Peer, subscribe: &str) -> String {
    peer.send(subscribe, appliance.sip).await;
    let (ok, _) = peer.receive(WAIT).await.expect("a 200 OK");
    assert!(ok.starts_with("SIP/2.0 200 OK\r\n"), "{ok}");
    assert_eq!(header(&ok, "Call-ID"), header(subscribe, "Call-ID"));
    let via = header(&ok, "Via").unwrap();
    assert!(via.contains("received=127.0.0.1"), "{via}");
    let (notify, from) = peer.receive(WAIT).await.expect("a NOTIFY");
    assert!(notify.starts_with("NOTIFY sip:"), "{notify}");
    assert_eq!(header(&notify, "Content-Type").as_deref(), Some("application/url"));
    assert_eq!(header(&notify, "Subscription-State").as_deref(), Some("terminated;reason=timeout"));
    assert_eq!(header(&notify, "Event"), header(subscribe, "Event"), "the same Event header");
    assert_eq!(header(&notify, "Call-ID"), header(subscribe, "Call-ID"));
    peer.answer(&notify, "200 OK", from).await;
    notify
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pnp_subscriptions_get_the_enrollment_url_or_the_bootstrap() {
    let appliance = Appliance::start();
    let peer = Peer::new().await;

    // A known Yealink with open enrollment: its enrollment URL.
    let yealink = "805ec0d57d72";
    let device = appliance.add(yealink, "yealink", "T54W");
    let notify = pnp(&appliance, &peer, &yealink_subscribe(yealink, peer.port())).await;
    assert_eq!(body(&notify), device["enrollment_url"].as_str().unwrap());
    assert!(!appliance.log().contains("/e/"), "the log never carries enrollment URLs");

    // An unknown Snom (compact headers, no rport): the bootstrap URL, and it is listed as seen.
    let notify = pnp(&appliance, &peer, &snom_subscribe("000413922d24", peer.port())).await;
    assert_eq!(body(&notify), format!("http://{}/", bootstrap_host(&device, appliance.http)));
    let seen = cli_ok(&appliance.data, &["device", "seen"]);
    assert!(seen.contains("000413922d24") && seen.contains("snomD785"), "{seen}");

    // A Poly with its MAC only in From, inside a LAN window after enrollment closed: the
    // HTTPS tokenless path.
    let poly = "0004f2aabbcc";
    appliance.add(poly, "polycom", "VVX400");
    let phone = Phone::poly(poly);
    appliance.enroll(&phone).await;
    cli_ok(&appliance.data, &["device", "lan-window", poly, "--minutes", "5"]);
    let notify = pnp(&appliance, &peer, &poly_subscribe(poly, peer.port())).await;
    let base = device["enrollment_url"].as_str().unwrap().split("e/").next().unwrap().to_string();
    assert_eq!(body(&notify), base);

    // With provision.bootstrap off, an unknown phone gets its 200 and nothing else.
    cli_ok(&appliance.data, &["settings", "set", "provision.bootstrap", "off"]);
    peer.send(&yealink_subscribe("805ec0aaaaaa", peer.port()), appliance.sip).await;
    let (ok, _) = peer.receive(WAIT).await.unwrap();
    assert!(ok.starts_with("SIP/2.0 200 OK"));
    assert!(peer.receive(Duration::from_millis(1500)).await.is_none(), "no NOTIFY");
}

/// The host:port of the bootstrap URL: the enrollment URL's host with the HTTP port.
fn bootstrap_host(device: &serde_json::Value, http: SocketAddr) -> String {
    let url = device["enrollment_url"].as_str().unwrap();
    let host = url.trim_start_matches("https://").split('/').next().unwrap();
    let host = host.rsplit_once(':').map_or(host, |(host, _)| host);
    format!("{host}:{}", http.port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notify_is_retransmitted_until_answered() {
    let appliance = Appliance::start();
    let peer = Peer::new().await;
    let mac = "805ec0d57d72";
    appliance.add(mac, "yealink", "T54W");
    let subscribe = yealink_subscribe(mac, peer.port());
    peer.send(&subscribe, appliance.sip).await;
    peer.receive(WAIT).await.expect("200 OK");
    let (first, _) = peer.receive(WAIT).await.expect("NOTIFY");
    let started = std::time::Instant::now();
    // Not answered: timer E resends it after T1 (500 ms), then 1 s.
    let (second, from) = peer.receive(Duration::from_secs(2)).await.expect("a retransmission");
    let gap = started.elapsed();
    assert!(gap >= Duration::from_millis(350) && gap <= Duration::from_millis(1500), "T1 retransmission after {gap:?}");
    assert_eq!(second, first, "the same request, same branch");
    peer.answer(&second, "200 OK", from).await;
    assert!(peer.receive(Duration::from_secs(3)).await.is_none(), "answered: no more retransmissions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_datagrams_are_dropped_and_counted() {
    let appliance = Appliance::start();
    let peer = Peer::new().await;
    for junk in [
        "garbage".to_string(),
        "SUBSCRIBE sip:x SIP/2.0\r\nVia: x\r\n\r\n".into(),
        "SUBSCRIBE sip:MAC%3a805ec0d57d72@x SIP/2.0\r\nContent-Length: 99\r\n\r\n".into(),
        "\u{0}\u{1}\u{2}".into(),
    ] {
        peer.send(&junk, appliance.sip).await;
    }
    assert!(peer.receive(Duration::from_millis(500)).await.is_none(), "nothing answers junk");
    assert!(appliance.wait_for_log("SIP: dropped: malformed SIP message"));
    // A subscription for another event gets 489; a SUBSCRIBE without a MAC gets 400.
    let other_event = yealink_subscribe("805ec0d57d72", peer.port()).replace("Event: ua-profile", "Event: presence");
    peer.send(&other_event, appliance.sip).await;
    assert!(peer.receive(WAIT).await.unwrap().0.starts_with("SIP/2.0 489 Bad Event"));
    let no_mac = yealink_subscribe("805ec0d57d72", peer.port()).replace("MAC%3a", "nomac");
    peer.send(&no_mac, appliance.sip).await;
    assert!(peer.receive(WAIT).await.unwrap().0.starts_with("SIP/2.0 400"));
    // Still serving.
    appliance.add("805ec0d57d72", "yealink", "T54W");
    pnp(&appliance, &peer, &yealink_subscribe("805ec0d57d72", peer.port())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_source_is_rate_limited() {
    let appliance = Appliance::start();
    let peer = Peer::new().await;
    let mac = "805ec0d57d72";
    appliance.add(mac, "yealink", "T54W");
    cli_ok(&appliance.data, &["settings", "set", "provision.bootstrap", "off"]);
    for i in 0..200 {
        let subscribe = yealink_subscribe(&format!("805ec0aa{i:04x}"), peer.port());
        peer.send(&subscribe, appliance.sip).await;
    }
    let (mut answers, mut bytes) = (0, 0);
    while let Some((answer, _)) = peer.receive(Duration::from_millis(700)).await {
        answers += 1;
        bytes += answer.len();
        assert!(answers <= 200);
    }
    // 20 pass the rate limit; a source that never answered a request of provbox's is sent
    // no more than its byte budget (2 KiB a minute) of them.
    assert!((1..=20).contains(&answers) && bytes <= 2048, "{answers} of 200 answered, {bytes} bytes");
    assert!(appliance.wait_for_log("SIP: rate limit reached"));
    assert!(appliance.wait_for_log("byte budget is spent"));
}

/// Spoofed SUBSCRIBEs (sources that never answer) cannot silence PnP: the answer slots are
/// held only until a NOTIFY is first sent, so a real phone announcing itself right after 64
/// of them still gets its NOTIFY at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconfirmed_subscriptions_cannot_take_the_answer_slots() {
    let appliance = Appliance::start();
    let mac = "805ec0d57d72";
    appliance.add(mac, "yealink", "T54W");
    let mut spoofed = Vec::new();
    for host in 2..66u8 {
        let victim = Peer { socket: UdpSocket::bind((std::net::Ipv4Addr::new(127, 0, 1, host), 0)).await.unwrap() };
        let known = format!("805ec0d57d{:02x}", host); // known MACs keep their NOTIFY going longest
        appliance.add(&known, "yealink", "T54W");
        let subscribe = yealink_subscribe(&known, victim.port()).replace("127.0.0.1", &format!("127.0.1.{host}"));
        victim.send(&subscribe, appliance.sip).await;
        spoofed.push(victim);
    }
    let phone = Peer::new().await;
    let started = std::time::Instant::now();
    let notify = pnp(&appliance, &phone, &yealink_subscribe(mac, phone.port())).await;
    assert!(body(&notify).contains("/e/"), "{notify}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

/// One spoofed SUBSCRIBE makes provbox send its victim little more than it was sent: the
/// victim never answers, so what goes there is bounded by its byte budget, and an unknown
/// MAC's NOTIFY is not retransmitted at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoofed_subscribe_is_not_amplified() {
    let appliance = Appliance::start();
    appliance.add("805ec0d57d72", "yealink", "T54W");
    for mac in ["805ec0d57d72", "805ec0aaaaaa"] {
        let victim = Peer::new().await;
        let subscribe = yealink_subscribe(mac, victim.port());
        victim.send(&subscribe, appliance.sip).await;
        let mut received = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(6);
        while std::time::Instant::now() < deadline {
            match victim.receive(Duration::from_millis(500)).await {
                Some((datagram, _)) => received += datagram.len(),
                None => continue,
            }
        }
        let factor = received as f64 / subscribe.len() as f64;
        assert!(received <= 2048, "{mac}: {received} bytes to the victim");
        assert!(factor < 5.0, "{mac}: amplified {factor:.1} times");
    }
}

/// A phone that did PnP from `peer`, so provbox knows its SIP address.
async fn known_phone(appliance: &Appliance, peer: &Peer, mac: &str, vendor: &str, model: &str) {
    appliance.add(mac, vendor, model);
    pnp(appliance, peer, &yealink_subscribe(mac, peer.port())).await;
}

/// Runs `device reprovision` while `peer` answers the NOTIFY with `code` (or not at all);
/// returns the CLI's result and the NOTIFY seen.
async fn reprovision(
    appliance: &Appliance,
    peer: &Peer,
    mac: &str,
    code: Option<&str>,
) -> ((bool, String, String), String) {
    let data = appliance.data.clone();
    let mac_owned = mac.to_string();
    let command =
        tokio::task::spawn_blocking(move || cli(&data, &["device", "reprovision", &mac_owned, "--wait", "2"]));
    let (notify, from) = peer.receive(WAIT).await.expect("a check-sync NOTIFY");
    if let Some(code) = code {
        peer.answer(&notify, code, from).await;
    }
    (command.await.unwrap(), notify)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_sync_notifies_carry_the_vendor_event_and_answers_are_explained() {
    let appliance = Appliance::start();
    let peer = Peer::new().await;
    let mac = "805ec0d57d72";
    known_phone(&appliance, &peer, mac, "yealink", "T54W").await;
    let phone = Phone::yealink(mac);
    appliance.enroll(&phone).await;
    cli_ok(&appliance.data, &["device", "override", mac, "features.dnd.enable", "1"]);
    assert_eq!(appliance.device(mac)["config"], "pending");

    // The phone answers and fetches: only then is it reported done.
    let steady = Appliance::path_of(appliance.device(mac)["steady_url"].as_str().unwrap());
    let data = appliance.data.clone();
    let command = tokio::task::spawn_blocking(move || cli(&data, &["device", "reprovision", mac, "--wait", "3"]));
    let (notify, from) = peer.receive(WAIT).await.expect("a check-sync NOTIFY");
    peer.answer(&notify, "200 OK", from).await;
    let mut connection = Connection::open(appliance.client_config(), appliance.https, None).await.unwrap();
    phone.boot(&mut connection, &steady).await;
    let (ok, out, err) = command.await.unwrap();
    assert!(ok, "{err}");
    assert!(notify.starts_with(&format!("NOTIFY sip:{mac}@127.0.0.1:{} SIP/2.0", peer.port())), "{notify}");
    assert_eq!(header(&notify, "Event").as_deref(), Some("check-sync;reboot=false"));
    assert!(out.contains("fetched its configuration"), "{out}");
    assert_eq!(appliance.device(mac)["config"], "current");
    // An answer without a fetch is not reported as done.
    let ((ok, _, err), _) = reprovision(&appliance, &peer, mac, Some("200 OK")).await;
    assert!(!ok && err.contains("has not fetched its configuration"), "{err}");

    let ((ok, _, err), _) = reprovision(&appliance, &peer, mac, Some("403 Forbidden")).await;
    assert!(!ok && err.contains("trusts only its registrar") && err.contains("advice: "), "{err}");
    let ((ok, _, err), _) = reprovision(&appliance, &peer, mac, Some("481 Subscription does not exist")).await;
    assert!(!ok && err.contains("481") && err.contains("through the phone's registration"), "{err}");
    let ((ok, _, err), _) = reprovision(&appliance, &peer, mac, None).await;
    assert!(!ok && err.contains("no answer within 2 s"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_sync_events_follow_the_vendor() {
    let appliance = Appliance::start();
    for (mac, vendor, model, event) in [
        ("000b828aa872", "grandstream", "GXP2135", "resync"),
        ("0004f2aabbcc", "polycom", "VVX400", "check-sync"),
        ("000413922d24", "snom", "D785", "check-sync;reboot=false"),
        ("0c383e07e16c", "fanvil", "X4U", "check-sync"),
        ("00562b043615", "cisco", "CP-8841-3PCC", "resync"),
    ] {
        let peer = Peer::new().await;
        known_phone(&appliance, &peer, mac, vendor, model).await;
        let ((ok, _, err), notify) = reprovision(&appliance, &peer, mac, Some("489 Bad Event")).await;
        assert_eq!(header(&notify, "Event").as_deref(), Some(event), "{vendor}");
        assert!(!ok && err.contains("489") && err.contains(event), "{vendor}: {err}");
    }
    // A phone never heard from has no address.
    appliance.add("805ec0000009", "yealink", "T54W");
    let (ok, _, err) = cli(&appliance.data, &["device", "reprovision", "805ec0000009"]);
    assert!(!ok && err.contains("has not contacted the appliance yet"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mdns_answers_with_the_appliances_address() {
    use simple_dns::{CLASS, Name, Packet, Question, TYPE, rdata::RData};
    let appliance = Appliance::start();
    let device = appliance.add("805ec0d57d72", "yealink", "T54W");
    let (name, responder) = appliance.mdns.clone();
    assert!(regex_lite::Regex::new(r"^provbox(-[0-9a-f]{6})?\.local$").unwrap().is_match(&name), "{name}");
    let peer = Peer::new().await;
    let mut query = Packet::new_query(4242);
    query.questions.push(Question::new(Name::new_unchecked(&name), TYPE::A.into(), CLASS::IN.into(), false));
    peer.socket.send_to(&query.build_bytes_vec().unwrap(), responder).await.unwrap();
    let mut buffer = vec![0u8; 9000];
    let (length, _) = tokio::time::timeout(WAIT, peer.socket.recv_from(&mut buffer)).await.unwrap().unwrap();
    let reply = Packet::parse(&buffer[..length]).unwrap();
    assert_eq!(reply.id(), 4242);
    let expected: std::net::Ipv4Addr =
        bootstrap_host(&device, appliance.http).split(':').next().unwrap().parse().unwrap();
    let addresses: Vec<std::net::Ipv4Addr> = reply
        .answers
        .iter()
        .filter_map(|answer| match &answer.rdata {
            RData::A(a) => Some(std::net::Ipv4Addr::from(a.address)),
            _ => None,
        })
        .collect();
    assert!(addresses.contains(&expected), "{addresses:?} should hold {expected}, the address phones are given");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multicast_subscribe_reaches_the_responder_in_a_network_namespace() {
    // Namespaces of the test's own: the phone multicasts to 224.0.1.75 the way a booting
    // phone does; provbox, on the other end of the veth pair, has joined the group there.
    let netns = Netns::with_veth();
    let dir = tempfile::tempdir().unwrap();
    let data = fleet::data_dir(dir.path());
    cli_ok(&data, &["settings", "set", "sip.server", "pbx.example.com"]);
    let appliance = Appliance::start_in(Some(&netns), "0.0.0.0:0", data, Some(dir), &["--key-type", "ecdsa-p256"]);
    let mac = "805ec0d57d72";
    let device = appliance.add(mac, "yealink", "T54W");
    let socket = netns.phone_socket("10.99.0.1:0".parse().unwrap());
    socket.set_multicast_loop_v4(false).unwrap();
    socket.set_nonblocking(true).unwrap();
    let peer = Peer { socket: UdpSocket::from_std(socket).unwrap() };
    let group = SocketAddr::new(std::net::Ipv4Addr::new(224, 0, 1, 75).into(), appliance.sip.port());
    let subscribe = yealink_subscribe(mac, peer.port()).replace("127.0.0.1", "10.99.0.1");
    peer.send(&subscribe, group).await;
    let (ok, from) = peer.receive(WAIT).await.expect("a unicast 200 OK to the multicast SUBSCRIBE");
    assert!(ok.starts_with("SIP/2.0 200 OK"), "{ok}");
    assert!(!from.ip().is_multicast());
    let (notify, from) = peer.receive(WAIT).await.expect("a NOTIFY");
    assert_eq!(body(&notify), device["enrollment_url"].as_str().unwrap());
    peer.answer(&notify, "200 OK", from).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retransmitted_subscribe_gets_the_same_answer_not_a_second_dialog() {
    let appliance = Appliance::start();
    let peer = Peer::new().await;
    let mac = "805ec0d57d72";
    appliance.add(mac, "yealink", "T54W");
    let subscribe = yealink_subscribe(mac, peer.port());
    peer.send(&subscribe, appliance.sip).await;
    let (first, _) = peer.receive(WAIT).await.expect("200 OK");
    let (notify, from) = peer.receive(WAIT).await.expect("NOTIFY");
    // The phone did not hear the 200 and sends the SUBSCRIBE again (same branch).
    peer.send(&subscribe, appliance.sip).await;
    let mut again = None;
    for _ in 0..3 {
        let (message, _) = peer.receive(WAIT).await.expect("an answer");
        if message.starts_with("SIP/2.0 200") {
            again = Some(message);
            break;
        }
        assert_eq!(header(&message, "Via"), header(&notify, "Via"), "only the same NOTIFY, retransmitted");
    }
    let again = again.expect("the 200 OK again");
    let tag =
        |message: &str, name: &str| header(message, name).and_then(|v| v.split("tag=").nth(1).map(str::to_string));
    assert_eq!(tag(&again, "To"), tag(&first, "To"), "the same dialog");
    assert_eq!(tag(&notify, "From"), tag(&first, "To"), "the NOTIFY belongs to that dialog");
    peer.answer(&notify, "200 OK", from).await;
}

/// A stolen phone: after `device rekey`, a LAN host announcing the phone's MAC over SIP PnP
/// is not handed the new enrollment URL (which would carry the SIP password): enrollment
/// stays locked until a technician unlocks it, and nothing is registered with the redirect
/// service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_rekey_announcing_the_mac_gets_no_enrollment_url() {
    let appliance = Appliance::start();
    let peer = Peer::new().await;
    let mac = "805ec0d57d72";
    appliance.add(mac, "yealink", "T54W");
    cli_ok(&appliance.data, &["device", "rekey", mac]);
    let device = appliance.device(mac);
    assert_eq!(device["enrollment"]["state"], "locked");
    assert_ne!(device["redirect"]["state"], "pending", "{device}");
    peer.send(&yealink_subscribe(mac, peer.port()), appliance.sip).await;
    let (ok, _) = peer.receive(WAIT).await.expect("a 200 OK");
    assert!(ok.starts_with("SIP/2.0 200 OK"), "{ok}");
    // At most the secret-free bootstrap URL; never an enrollment URL.
    if let Some((notify, from)) = peer.receive(Duration::from_millis(1500)).await {
        assert!(!body(&notify).contains("/e/"), "an enrollment URL for a rekeyed phone: {notify}");
        peer.answer(&notify, "200 OK", from).await;
    }
    // Once unlocked for the phone in hand, PnP gives it the new enrollment URL.
    cli_ok(&appliance.data, &["device", "unlock", mac]);
    let reopened = appliance.device(mac);
    let peer = Peer::new().await;
    // The phone in hand: a new transaction and dialog (a SUBSCRIBE with the first one's
    // branch is its retransmission, answered as before).
    let subscribe = yealink_subscribe(mac, peer.port())
        .replace("Call-ID: pnp-", "Call-ID: pnp-again-")
        .replace("branch=z9hG4bK", "branch=z9hG4bKagain");
    let notify = pnp(&appliance, &peer, &subscribe).await;
    assert_eq!(body(&notify), reopened["enrollment_url"].as_str().unwrap());
}

/// "Reprovision now" cannot be hijacked: a host that announces a known phone's MAC over SIP
/// PnP from another address is not sent the NOTIFY (it goes to the address the phone last
/// fetched from through its URL), and an answer that is not followed by a fetch is never
/// reported as done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_announcing_a_phones_mac_does_not_get_its_check_sync() {
    let appliance = Appliance::start();
    let mac = "805ec0d57d72";
    appliance.add(mac, "yealink", "T54W");
    let phone = Phone::yealink(mac);
    appliance.enroll(&phone).await; // from 127.0.0.1, through its URL
    let impostor = Peer { socket: UdpSocket::bind("127.0.0.9:0").await.unwrap() };
    let subscribe = yealink_subscribe(mac, impostor.port()).replace("127.0.0.1", "127.0.0.9");
    impostor.send(&subscribe, appliance.sip).await;
    let (ok, _) = impostor.receive(WAIT).await.expect("a 200 OK");
    assert!(ok.starts_with("SIP/2.0 200 OK"), "{ok}");
    if let Some((notify, from)) = impostor.receive(Duration::from_millis(1500)).await {
        impostor.answer(&notify, "200 OK", from).await;
    }
    let (ok, _, err) = cli(&appliance.data, &["device", "reprovision", mac, "--wait", "1"]);
    assert!(!ok, "reported done though the phone got nothing");
    assert!(err.contains("127.0.0.1:5060"), "sent to where the phone fetched from: {err}");
    let stray = impostor.receive(Duration::from_millis(500)).await;
    assert!(stray.is_none_or(|(message, _)| !message.contains("check-sync")), "the impostor got the check-sync");
}
