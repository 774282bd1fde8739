//! A small, strict SIP message parser and builder (RFC 3261 §7, §20): start line, headers
//! with compact forms and case-insensitive names, folding, and Content-Length. Everything
//! provbox reads from the network goes through [`parse`]; malformed input is a
//! [`ParseError`], never a panic.

use std::fmt;

/// Largest datagram handled.
pub const MAX_MESSAGE: usize = 8192;
/// Most header fields accepted.
const MAX_HEADERS: usize = 64;

/// The first line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    /// `METHOD uri SIP/2.0`.
    Request {
        /// `SUBSCRIBE`, `NOTIFY`, ...
        method: String,
        /// The Request-URI.
        uri: String,
    },
    /// `SIP/2.0 code reason`.
    Response {
        /// Status code.
        code: u16,
        /// Reason phrase.
        reason: String,
    },
}

/// A parsed SIP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Request or status line.
    pub start: StartLine,
    /// Headers in order, names in full lowercase form (`v` becomes `via`).
    pub headers: Vec<(String, String)>,
    /// The body, exactly Content-Length bytes.
    pub body: Vec<u8>,
}

/// Why a datagram is not a SIP message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed SIP message: {0}")]
pub struct ParseError(pub String);

fn bad<T>(what: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError(what.into()))
}

/// The full name of a compact header form (RFC 3261 §7.3.3, RFC 3265 for `o` and `u`).
fn full_name(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    let full = match lower.as_str() {
        "i" => "call-id",
        "m" => "contact",
        "e" => "content-encoding",
        "l" => "content-length",
        "c" => "content-type",
        "f" => "from",
        "s" => "subject",
        "k" => "supported",
        "t" => "to",
        "v" => "via",
        "o" => "event",
        "u" => "allow-events",
        _ => return lower,
    };
    full.to_string()
}

fn is_token(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
}

/// Parses one datagram.
pub fn parse(datagram: &[u8]) -> Result<Message, ParseError> {
    if datagram.len() > MAX_MESSAGE {
        return bad(format!("{} bytes, more than {MAX_MESSAGE}", datagram.len()));
    }
    let split = datagram
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| ParseError("no blank line after the headers".into()))?;
    let head = std::str::from_utf8(&datagram[..split]).map_err(|_| ParseError("headers are not UTF-8".into()))?;
    let rest = &datagram[split + 4..];
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let start = parse_start(first)?;
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in lines {
        if line.starts_with(' ') || line.starts_with('\t') {
            // Folded continuation of the previous header.
            let Some((_, value)) = headers.last_mut() else { return bad("continuation line before any header") };
            value.push(' ');
            value.push_str(line.trim());
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            return bad(format!("header line without a colon: {line:?}"));
        };
        let name = name.trim_end();
        if !is_token(name) {
            return bad(format!("bad header name {name:?}"));
        }
        if headers.len() >= MAX_HEADERS {
            return bad(format!("more than {MAX_HEADERS} headers"));
        }
        headers.push((full_name(name), value.trim().to_string()));
    }
    let declared = headers.iter().find(|(n, _)| n == "content-length").map(|(_, v)| v.as_str());
    let body = match declared {
        // On UDP a missing Content-Length means the rest of the datagram (RFC 3261 §18.3).
        None => rest.to_vec(),
        Some(text) => {
            let length: usize =
                text.parse().map_err(|_| ParseError(format!("Content-Length {text:?} is not a number")))?;
            if length > rest.len() {
                return bad(format!("Content-Length {length} but only {} body bytes", rest.len()));
            }
            rest[..length].to_vec()
        }
    };
    let message = Message { start, headers, body };
    if let StartLine::Request { .. } = message.start {
        for required in ["via", "from", "to", "call-id", "cseq"] {
            if message.header(required).is_none() {
                return bad(format!("request without {required}"));
            }
        }
    }
    Ok(message)
}

fn parse_start(line: &str) -> Result<StartLine, ParseError> {
    if let Some(rest) = line.strip_prefix("SIP/2.0 ") {
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        let code: u16 = code.parse().map_err(|_| ParseError(format!("bad status code {code:?}")))?;
        if !(100..=699).contains(&code) {
            return bad(format!("status code {code} out of range"));
        }
        return Ok(StartLine::Response { code, reason: reason.to_string() });
    }
    let mut parts = line.split(' ');
    let (Some(method), Some(uri), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return bad(format!("bad request line {line:?}"));
    };
    if version != "SIP/2.0" || !is_token(method) || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return bad(format!("bad request line {line:?}"));
    }
    if !uri.contains(':') {
        return bad(format!("bad Request-URI {uri:?}"));
    }
    Ok(StartLine::Request { method: method.to_string(), uri: uri.to_string() })
}

impl Message {
    /// The first value of header `name` (full lowercase name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Every value of header `name`, in order.
    pub fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers.iter().filter(move |(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The method of a request.
    pub fn method(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The `CSeq` number and method.
    pub fn cseq(&self) -> Option<(u32, &str)> {
        let (number, method) = self.header("cseq")?.split_once(' ')?;
        Some((number.trim().parse().ok()?, method.trim()))
    }

    /// The `branch` parameter of the top Via.
    pub fn branch(&self) -> Option<&str> {
        param(self.header("via")?, "branch")
    }
}

/// The value of `;name=value` (or `Some("")` for a bare `;name`) in a header value.
/// Quotes around the value are removed.
pub fn param<'a>(value: &'a str, name: &str) -> Option<&'a str> {
    value.split(';').skip(1).find_map(|part| {
        let (key, val) = part.split_once('=').map_or((part, ""), |(k, v)| (k, v));
        key.trim().eq_ignore_ascii_case(name).then(|| val.trim().trim_matches('"'))
    })
}

/// A message being written: start line, headers, body; Content-Length is added.
pub struct Builder {
    text: String,
}

impl Builder {
    /// A request.
    pub fn request(method: &str, uri: &str) -> Builder {
        Builder { text: format!("{method} {uri} SIP/2.0\r\n") }
    }

    /// A response.
    pub fn response(code: u16, reason: &str) -> Builder {
        Builder { text: format!("SIP/2.0 {code} {reason}\r\n") }
    }

    /// Adds a header. Values never contain line breaks: they are replaced by spaces.
    pub fn header(mut self, name: &str, value: impl fmt::Display) -> Builder {
        let value = value.to_string().replace(['\r', '\n'], " ");
        self.text.push_str(&format!("{name}: {value}\r\n"));
        self
    }

    /// Finishes with `body` and its Content-Length.
    pub fn body(self, content_type: Option<&str>, body: &[u8]) -> Vec<u8> {
        let mut builder = self;
        if let Some(content_type) = content_type {
            builder = builder.header("Content-Type", content_type);
        }
        let mut out = builder.header("Content-Length", body.len()).text.into_bytes();
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUBSCRIBE: &str = "SUBSCRIBE sip:MAC%3a805ec0d57d72@224.0.1.75 SIP/2.0\r\n\
        v: SIP/2.0/UDP 192.0.2.20:5060;branch=z9hG4bK1;rport\r\n\
        From: <sip:MAC%3a805ec0d57d72@224.0.1.75>;tag=a1\r\n\
        t: <sip:MAC%3a805ec0d57d72@224.0.1.75>\r\n\
        CALL-ID: c1@192.0.2.20\r\n\
        CSeq: 1 SUBSCRIBE\r\n\
        o: ua-profile;profile-type=\"device\";vendor=\"Yealink\";model=\"T54W\";\r\n \
         version=\"96.86.0.1\"\r\n\
        l: 4\r\n\r\nbodyEXTRA";

    #[test]
    fn compact_forms_folding_and_content_length() {
        let message = parse(SUBSCRIBE.as_bytes()).unwrap();
        assert_eq!(message.method(), Some("SUBSCRIBE"));
        assert_eq!(message.header("call-id"), Some("c1@192.0.2.20"));
        assert_eq!(message.branch(), Some("z9hG4bK1"));
        let event = message.header("event").unwrap();
        assert_eq!(param(event, "model"), Some("T54W"));
        assert_eq!(param(event, "version"), Some("96.86.0.1"), "folded line joined");
        assert_eq!(message.body, b"body", "the body is Content-Length bytes");
        assert_eq!(message.cseq(), Some((1, "SUBSCRIBE")));
        assert_eq!(param(message.header("via").unwrap(), "rport"), Some(""));
    }

    #[test]
    fn malformed_messages_are_errors() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "blank line"),
            (b"SUBSCRIBE sip:x SIP/2.0\r\nVia: x\r\n", "blank line"),
            (b"SUBSCRIBE sip:x SIP/3.0\r\n\r\n", "request line"),
            (b"SUBSCRIBE sip:x SIP/2.0\r\nVia x\r\n\r\n", "colon"),
            (b"SUBSCRIBE sip:x SIP/2.0\r\nVia: x\r\n\r\n", "without from"),
            (b"SIP/2.0 99 Nope\r\n\r\n", "out of range"),
            (b"SIP/2.0 200 OK\r\nContent-Length: 10\r\n\r\nshort", "only 5 body bytes"),
            (b"SIP/2.0 200 OK\r\nContent-Length: -1\r\n\r\n", "not a number"),
            (b"SIP/2.0 200 OK\r\n continuation\r\n\r\n", "continuation"),
            (b"\xff\xfe\r\n\r\n", "UTF-8"),
        ];
        for (datagram, reason) in cases {
            let error = parse(datagram).unwrap_err();
            assert!(error.0.contains(reason), "{:?}: {error}", String::from_utf8_lossy(datagram));
        }
        let many = format!("SIP/2.0 200 OK\r\n{}\r\n", "X-A: 1\r\n".repeat(65));
        assert!(parse(many.as_bytes()).unwrap_err().0.contains("more than 64"));
    }

    #[test]
    fn built_messages_parse_back() {
        let bytes = Builder::request("NOTIFY", "sip:phone@192.0.2.20:5060")
            .header("Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKx")
            .header("From", "<sip:provbox@192.0.2.1>;tag=p")
            .header("To", "<sip:phone@192.0.2.20>")
            .header("Call-ID", "n1")
            .header("CSeq", "1 NOTIFY")
            .header("Event", "check-sync;reboot=false\r\nInjected: yes")
            .body(Some("application/url"), b"https://192.0.2.1:8443/");
        let message = parse(&bytes).unwrap();
        assert_eq!(message.header("event"), Some("check-sync;reboot=false  Injected: yes"));
        assert_eq!(message.header("injected"), None, "no header injection");
        assert_eq!(message.body, b"https://192.0.2.1:8443/");
    }
}
