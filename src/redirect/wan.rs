//! The WAN side of the redirect clients: one bounded HTTP/1.1 exchange per connection, over
//! rustls with the webpki roots compiled in (the image has no system CA store), plus an
//! optional private CA (`redirect.ca_file`, `backup.copy_ca_file`). Scheduled backup copies
//! use it too. Every failure becomes a [`Failure`] that says
//! what happened in words a technician can act on.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use super::Failure;

/// Largest reply body read; a bigger one is refused (a misdirected download, an attack).
pub const MAX_REPLY_BYTES: usize = 256 * 1024;

/// A configured WAN client.
#[derive(Clone)]
pub struct Wan {
    tls: tokio_rustls::TlsConnector,
    timeout: Duration,
    /// The setting that names the extra CA file, for advice in messages.
    ca_setting: &'static str,
}

/// One request.
#[derive(Clone)]
pub struct WanRequest {
    /// `GET`, `POST`, `PUT`.
    pub method: &'static str,
    /// Absolute `http://` or `https://` URL.
    pub url: String,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
    /// The body (empty for none).
    pub body: Vec<u8>,
}

/// One reply, complete and within [`MAX_REPLY_BYTES`].
#[derive(Debug, Clone)]
pub struct WanReply {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type`, lowercased, or empty.
    pub content_type: String,
    /// `Link` (RFC 8288), or empty: where the next page of a paged list is.
    pub link: String,
    /// The body.
    pub body: Vec<u8>,
}

impl WanReply {
    /// The body as text for messages: the first line of at most 120 characters.
    pub fn excerpt(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let line = text.lines().map(str::trim).find(|line| !line.is_empty()).unwrap_or("");
        line.chars().take(120).collect()
    }
}

impl Wan {
    /// A client trusting the webpki roots and the PEM certificates in `ca_file` (named by
    /// setting `ca_setting`), giving up on each exchange after `timeout`.
    pub fn new(ca_setting: &'static str, ca_file: Option<&Path>, timeout: Duration) -> Result<Wan, Failure> {
        let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        if let Some(path) = ca_file {
            let certificates = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| Failure::retry(format!("{ca_setting} {}: {e}", path.display())))?;
            if certificates.is_empty() {
                return Err(Failure::retry(format!("{ca_setting} {}: no certificate in it", path.display())));
            }
            for certificate in certificates {
                roots.add(certificate).map_err(|e| Failure::retry(format!("{ca_setting} {}: {e}", path.display())))?;
            }
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| Failure::retry(format!("TLS setup: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Wan { tls: tokio_rustls::TlsConnector::from(Arc::new(config)), timeout, ca_setting })
    }

    /// Sends `request` and reads the whole reply, within the timeout.
    pub async fn send(&self, request: WanRequest) -> Result<WanReply, Failure> {
        let seconds = self.timeout.as_secs();
        match tokio::time::timeout(self.timeout, self.exchange(request)).await {
            Ok(result) => result,
            Err(_) => Err(Failure::retry(format!("no complete answer within {seconds} s"))),
        }
    }

    async fn exchange(&self, request: WanRequest) -> Result<WanReply, Failure> {
        let uri: hyper::Uri =
            request.url.parse().map_err(|e| Failure::permanent(format!("bad endpoint URL {}: {e}", request.url)))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(Failure::permanent(format!("endpoint {} is neither http:// nor https://", request.url))),
        };
        let authority =
            uri.authority().ok_or_else(|| Failure::permanent(format!("endpoint {} has no host", request.url)))?;
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| Failure::retry(format!("cannot connect to {host}:{port}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let mut builder = hyper::Request::builder()
            .method(request.method)
            .uri(path)
            .header("host", authority.as_str())
            .header("user-agent", concat!("provbox/", env!("CARGO_PKG_VERSION")))
            .header("connection", "close");
        for (name, value) in &request.headers {
            builder = builder.header(*name, value);
        }
        let http_request = builder
            .body(Full::new(Bytes::from(request.body)))
            .map_err(|e| Failure::permanent(format!("cannot form the request: {e}")))?;
        if https {
            let name = ServerName::try_from(host.clone())
                .map_err(|e| Failure::permanent(format!("endpoint host {host}: {e}")))?;
            let tls = self.tls.connect(name, tcp).await.map_err(|e| tls_failure(&host, &e, self.ca_setting))?;
            exchange_on(tls, http_request).await
        } else {
            exchange_on(tcp, http_request).await
        }
    }
}

async fn exchange_on<S>(stream: S, request: hyper::Request<Full<Bytes>>) -> Result<WanReply, Failure>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| Failure::retry(format!("HTTP handshake failed: {e}")))?;
    let driver = tokio::spawn(connection);
    let response = sender.send_request(request).await.map_err(|e| Failure::retry(format!("no HTTP reply: {e}")));
    let result = match response {
        Ok(response) => {
            let status = response.status().as_u16();
            let header =
                |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            let (content_type, link) = (header("content-type").to_ascii_lowercase(), header("link"));
            match Limited::new(response.into_body(), MAX_REPLY_BYTES).collect().await {
                Ok(body) => Ok(WanReply { status, content_type, link, body: body.to_bytes().to_vec() }),
                Err(error) if error.is::<http_body_util::LengthLimitError>() => {
                    Err(Failure::retry(format!("reply larger than {} KiB; refused", MAX_REPLY_BYTES / 1024)))
                }
                Err(error) => Err(Failure::retry(format!("reply truncated: {error}"))),
            }
        }
        Err(failure) => Err(failure),
    };
    driver.abort();
    result
}

fn tls_failure(host: &str, error: &std::io::Error, ca_setting: &str) -> Failure {
    let text = error.to_string();
    let advice = if text.contains("UnknownIssuer") {
        &format!(" (a private CA? set {ca_setting})")
    } else if text.contains("Expired") || text.contains("NotValidYet") {
        " (is the appliance's clock right?)"
    } else {
        ""
    };
    Failure::retry(format!("TLS with {host} failed: {text}{advice}"))
}
