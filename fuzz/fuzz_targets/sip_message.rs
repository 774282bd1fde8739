//! Everything provbox reads off the SIP socket: the message parser, the PnP announcement
//! and MAC extraction, the response-target and response-building paths, and mDNS queries.
//! None of it may panic on any datagram.
#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use provbox::mdns::Identity;
use provbox::sip::message::parse;
use provbox::sip::pnp::{announcement, mac_in, response, response_target};

fuzz_target!(|data: &[u8]| {
    let source: SocketAddr = "192.0.2.20:5060".parse().expect("literal address");
    if let Ok(message) = parse(data) {
        let _ = announcement(&message);
        let _ = message.cseq();
        let _ = message.branch();
        let _ = response_target(&message, source);
        let bytes = response(&message, 200, "OK", source, "tag").body(None, b"");
        // What provbox writes must parse back.
        assert!(parse(&bytes).is_ok() || message.header("via").is_none());
    }
    let _ = mac_in(&String::from_utf8_lossy(data));
    let identity = Identity::new("provbox-d57d72", vec!["192.0.2.10".parse().expect("literal address")], 8443);
    let _ = identity.reply_to(data, true);
    let _ = identity.reply_to(data, false);
});
