//! SIP multicast plug-and-play: a booting phone sends `SUBSCRIBE` with
//! `Event: ua-profile;vendor=..;model=..;version=..` to 224.0.1.75:5060. provbox answers
//! 200 OK by unicast to the Via address (honouring `rport` and `received`), then sends a
//! NOTIFY whose `application/url` body is where the phone's configuration is:
//!
//! - a known device with open enrollment: its enrollment URL;
//! - a known device inside its LAN window: the HTTPS tokenless path, which serves it then;
//! - anything else: the phone goes on the phones-seen list and gets the credential-free
//!   bootstrap URL, or no NOTIFY at all when `provision.bootstrap` is `off`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::message::{Builder, Message, StartLine, param};
use super::{Endpoint, Outcome, TIMER_F, random_token};
use crate::mac::Mac;

/// What the responder asks of the appliance.
pub trait Offers: Send + Sync + 'static {
    /// Notes that `mac` speaks SIP at `address`, for check-sync later.
    fn heard(&self, mac: Mac, address: SocketAddr);

    /// The URL to offer `phone`, which announced itself from `ip`; None offers nothing.
    /// Called on a blocking thread: it may touch the store.
    fn offer(&self, phone: &Announcement, ip: IpAddr) -> Result<Option<String>, Box<dyn std::error::Error + Send>>;

    /// Whether `mac` is a device the appliance provisions. Called on a blocking thread.
    fn knows(&self, mac: &Mac) -> bool;
}

/// What a phone says about itself in its PnP subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// Its MAC.
    pub mac: Mac,
    /// `vendor` of the Event header.
    pub vendor: String,
    /// `model`.
    pub model: String,
    /// `version` (firmware).
    pub version: String,
}

/// The MAC in a PnP Request-URI or From header: `sip:MAC%3a805ec0d57d72@...`, with the hex
/// digits possibly separated by `:`, `-` or `%3a`.
pub fn mac_in(text: &str) -> Option<Mac> {
    let lower = text.to_ascii_lowercase();
    let start = lower.find("mac%3a")? + "mac%3a".len();
    let mut digits = String::new();
    let mut rest = &lower[start..];
    while digits.len() < 12 {
        if let Some(after) = rest.strip_prefix("%3a") {
            rest = after;
            continue;
        }
        let c = rest.chars().next()?;
        match c {
            '0'..='9' | 'a'..='f' => digits.push(c),
            ':' | '-' => {}
            _ => return None,
        }
        rest = &rest[1..];
    }
    digits.parse().ok()
}

/// Reads the announcement in a PnP `SUBSCRIBE`, or says why it is not one.
pub fn announcement(request: &Message) -> Result<Announcement, &'static str> {
    let event = request.header("event").ok_or("no Event header")?;
    if !event.split(';').next().is_some_and(|name| name.trim().eq_ignore_ascii_case("ua-profile")) {
        return Err("not a ua-profile subscription");
    }
    let uri = match &request.start {
        StartLine::Request { uri, .. } => uri.as_str(),
        StartLine::Response { .. } => return Err("not a request"),
    };
    let mac =
        mac_in(uri).or_else(|| request.header("from").and_then(mac_in)).ok_or("no MAC in the Request-URI or From")?;
    let field = |name: &str| param(event, name).unwrap_or("").chars().take(32).collect::<String>();
    Ok(Announcement { mac, vendor: field("vendor"), model: field("model"), version: field("version") })
}

/// Where responses to `request` from `source` go (RFC 3261 §18.2.2, RFC 3581): the source
/// address, and the source port with `rport`, else the Via port or 5060.
pub fn response_target(request: &Message, source: SocketAddr) -> SocketAddr {
    let via = request.header("via").unwrap_or("");
    if param(via, "rport").is_some() {
        return source;
    }
    let sent_by = via.split(';').next().unwrap_or("").split_whitespace().nth(1).unwrap_or("");
    let port = sent_by.rsplit_once(':').and_then(|(_, port)| port.parse().ok()).unwrap_or(5060);
    SocketAddr::new(source.ip(), port)
}

/// The top Via with `received` and a filled-in `rport`.
fn stamped_via(via: &str, source: SocketAddr) -> String {
    let mut parts: Vec<String> = via.split(';').map(|part| part.trim().to_string()).collect();
    for part in parts.iter_mut().skip(1) {
        if part.eq_ignore_ascii_case("rport") {
            *part = format!("rport={}", source.port());
        }
    }
    parts.retain(|part| !part.to_ascii_lowercase().starts_with("received="));
    parts.push(format!("received={}", source.ip()));
    parts.join(";")
}

/// A response to `request` with `code`, the Vias stamped, and `to_tag` on To.
pub fn response(request: &Message, code: u16, reason: &str, source: SocketAddr, to_tag: &str) -> Builder {
    let mut builder = Builder::response(code, reason);
    for (index, via) in request.header_all("via").enumerate() {
        builder = builder.header("Via", if index == 0 { stamped_via(via, source) } else { via.to_string() });
    }
    let to = request.header("to").unwrap_or("");
    let to = if param(to, "tag").is_some() { to.to_string() } else { format!("{to};tag={to_tag}") };
    builder
        .header("From", request.header("from").unwrap_or(""))
        .header("To", to)
        .header("Call-ID", request.header("call-id").unwrap_or(""))
        .header("CSeq", request.header("cseq").unwrap_or(""))
}

/// Answers one subscription received from `source`, holding `slot` (one of the endpoint's
/// few) only until the NOTIFY is first sent. A known device's NOTIFY is retransmitted until
/// it is answered (RFC 3261, within the destination's byte budget); an unknown MAC's, which
/// anyone can announce from a spoofed address, is sent once.
pub async fn answer(
    endpoint: Arc<Endpoint>,
    offers: Arc<dyn Offers>,
    request: Message,
    source: SocketAddr,
    slot: tokio::sync::OwnedSemaphorePermit,
) {
    let target = response_target(&request, source);
    let tag = random_token("");
    let phone = match announcement(&request) {
        Ok(phone) => phone,
        Err(why) => {
            let (code, reason) = if why.contains("Event") || why.contains("ua-profile") {
                (489, "Bad Event")
            } else {
                (400, "Missing MAC")
            };
            tracing::info!(%source, "SIP PnP: {why}; answered {code}");
            let _ = endpoint.send_to(&response(&request, code, reason, source, &tag).body(None, b""), target).await;
            return;
        }
    };
    let local = endpoint.address_toward(target);
    let ok = response(&request, 200, "OK", source, &tag)
        .header("Contact", format!("<sip:provbox@{local}>"))
        .header("Expires", 0)
        .body(None, b"");
    if let Some(branch) = request.branch() {
        endpoint.remember_answer(branch, &ok);
    }
    match endpoint.send_to(&ok, target).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::info!(%target, "SIP PnP: this address's byte budget is spent; not answering");
            return;
        }
        Err(error) => {
            tracing::warn!(%target, "SIP PnP: cannot answer: {error}");
            return;
        }
    }
    offers.heard(phone.mac, target);
    let offer = {
        let phone = phone.clone();
        tokio::task::spawn_blocking(move || {
            let known = offers.knows(&phone.mac);
            offers.offer(&phone, target.ip()).map(|url| url.map(|url| (url, known)))
        })
        .await
    };
    let (url, known) = match offer {
        Ok(Ok(Some(offered))) => offered,
        Ok(Ok(None)) => {
            tracing::info!(mac = %phone.mac, model = phone.model, "SIP PnP: answered; no URL offered (provision.bootstrap is off)");
            return;
        }
        Ok(Err(error)) => {
            tracing::error!(mac = %phone.mac, "SIP PnP: {error}");
            return;
        }
        Err(_) => return,
    };
    let contact = request.header("contact").or(request.header("from")).unwrap_or("");
    let uri =
        contact.split(['<', '>']).find(|part| part.starts_with("sip:")).unwrap_or("sip:phone@invalid").to_string();
    let branch = random_token("z9hG4bK");
    let to_without_tag = request.header("to").unwrap_or("").split(';').next().unwrap_or("").to_string();
    let notify = Builder::request("NOTIFY", &uri)
        .header("Via", format!("SIP/2.0/UDP {local};branch={branch};rport"))
        .header("Max-Forwards", 70)
        .header("From", format!("{to_without_tag};tag={tag}"))
        .header("To", request.header("from").unwrap_or(""))
        .header("Call-ID", request.header("call-id").unwrap_or(""))
        .header("CSeq", "1 NOTIFY")
        .header("Contact", format!("<sip:provbox@{local}>"))
        .header("Event", request.header("event").unwrap_or("ua-profile"))
        .header("Subscription-State", "terminated;reason=timeout")
        .body(Some("application/url"), url.as_bytes());
    drop(slot);
    if !known {
        // Sent once: an unknown MAC proves nothing about the address it came from.
        if let Err(error) = endpoint.send_to(&notify, target).await {
            tracing::warn!(mac = %phone.mac, "SIP PnP: NOTIFY not sent: {error}");
        }
        tracing::info!(mac = %phone.mac, model = phone.model, "SIP PnP: bootstrap URL sent once (unknown phone)");
        return;
    }
    // One NOTIFY series at a time per address.
    if !endpoint.claim_notify(target.ip()) {
        tracing::info!(mac = %phone.mac, %target, "SIP PnP: a NOTIFY to this address is in flight; not sending another");
        return;
    }
    let outcome = endpoint.transaction(&notify, &branch, target, TIMER_F).await;
    endpoint.release_notify(target.ip());
    // The log names the MAC, never the URL: it may carry an enrollment token.
    match outcome {
        Outcome::Answered(reply) => {
            let code = match reply.start {
                StartLine::Response { code, .. } => code,
                StartLine::Request { .. } => 0,
            };
            tracing::info!(mac = %phone.mac, model = phone.model, code, "SIP PnP: provisioning URL sent");
        }
        Outcome::TimedOut => tracing::warn!(mac = %phone.mac, "SIP PnP: the phone never confirmed the NOTIFY"),
        Outcome::SendFailed(error) => tracing::warn!(mac = %phone.mac, "SIP PnP: NOTIFY not sent: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::parse;

    fn subscribe(uri: &str, via: &str) -> Message {
        let text = format!(
            "SUBSCRIBE {uri} SIP/2.0\r\nVia: {via}\r\nFrom: <sip:anonymous@x>;tag=1\r\nTo: <{uri}>\r\n\
             Call-ID: c\r\nCSeq: 1 SUBSCRIBE\r\nEvent: ua-profile;vendor=\"Snom\";model=\"D785\";version=\"10.1\"\r\n\
             Content-Length: 0\r\n\r\n"
        );
        parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn macs_are_found_in_every_vendor_spelling() {
        assert_eq!(mac_in("sip:MAC%3a805ec0d57d72@224.0.1.75").unwrap().to_string(), "805ec0d57d72");
        assert_eq!(mac_in("sip:MAC%3A000413922D24@224.0.1.75").unwrap().to_string(), "000413922d24");
        assert_eq!(mac_in("<sip:MAC%3a00%3a04%3af2%3aaa%3abb%3acc@x>").unwrap().to_string(), "0004f2aabbcc");
        assert_eq!(mac_in("sip:MAC%3a80-5e-c0-d5-7d-72@x").unwrap().to_string(), "805ec0d57d72");
        assert!(mac_in("sip:MAC%3a805ec0@x").is_none());
        assert!(mac_in("sip:user@x").is_none());
        assert!(mac_in("sip:MAC%3a%3a%3a").is_none());
    }

    #[test]
    fn responses_go_where_rfc_3581_says() {
        let source: SocketAddr = "192.0.2.20:40000".parse().unwrap();
        let with_rport =
            subscribe("sip:MAC%3a000413922d24@224.0.1.75", "SIP/2.0/UDP 10.9.9.9:5062;branch=z9hG4bKa;rport");
        assert_eq!(response_target(&with_rport, source), source);
        let without = subscribe("sip:MAC%3a000413922d24@224.0.1.75", "SIP/2.0/UDP 10.9.9.9:5062;branch=z9hG4bKa");
        assert_eq!(response_target(&without, source), "192.0.2.20:5062".parse().unwrap());
        let stamped = parse(&response(&with_rport, 200, "OK", source, "t").body(None, b"")).unwrap();
        let via = stamped.header("via").unwrap();
        assert!(via.contains(";rport=40000") && via.ends_with(";received=192.0.2.20"), "{via}");
        assert_eq!(param(stamped.header("to").unwrap(), "tag"), Some("t"));
        let phone = announcement(&with_rport).unwrap();
        assert_eq!((phone.vendor.as_str(), phone.model.as_str(), phone.version.as_str()), ("Snom", "D785", "10.1"));
    }
}
