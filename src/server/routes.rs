//! URL routing: which handler answers which path, on HTTPS and on plain HTTP.
//!
//! Every miss gets the same bare 404, so a scanner cannot tell a wrong token from a wrong
//! file name. Request URLs are never logged: they carry tokens.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower::ServiceExt;

use super::Peer;
use crate::app::App;
use crate::app::fetches::{self, Access, FetchRequest, Fetched};
use crate::pki::Pki;
use crate::token::{Token, TokenKind};

/// What handlers share.
#[derive(Clone)]
pub struct Shared {
    /// The appliance.
    pub app: Arc<App>,
    /// Its TLS identity (for `/ca.crt`).
    pub pki: Arc<Pki>,
    /// Root-image updates, when running from the firmware image.
    pub updates: Option<Arc<crate::update::Updates>>,
}

/// Routes of the HTTPS listener.
pub fn https(shared: Shared) -> Router {
    Router::new()
        .route("/ca.crt", get(ca_certificate))
        .route("/e/{token}/{file}", get(enrollment::<true>))
        .route("/p/{token}/{file}", get(steady::<true>))
        .route("/p/{token}/files/{*path}", get(static_file))
        .route("/{file}", get(tokenless::<true>))
        .fallback(not_found)
        .with_state(shared)
}

/// Routes of the plain-HTTP listener: the CA and secret-free files; device URLs and the LAN
/// window only for devices whose technician consented to plain HTTP. File names may have
/// folders here (a Gigaset base's redirect chain, `42/2/master.bin`).
pub fn http(shared: Shared) -> Router {
    Router::new()
        .route("/ca.crt", get(ca_certificate))
        .route("/e/{token}/{*file}", get(enrollment::<false>))
        .route("/p/{token}/{*file}", get(steady::<false>))
        .route("/{*file}", get(tokenless::<false>))
        .fallback(not_found)
        .with_state(shared)
}

async fn not_found() -> Response {
    StatusCode::NOT_FOUND.into_response()
}

async fn ca_certificate(State(shared): State<Shared>) -> Response {
    let mut response = shared.pki.ca_pem().to_string().into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-x509-ca-cert"));
    response
}

fn user_agent(headers: &HeaderMap) -> &str {
    headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// Decides and renders on the async worker itself: the work is CPU-bound and well under a
/// millisecond (the store lives in RAM); only a phone's first fetch writes to flash, once.
/// Handing each request to a blocking thread cost more than it saved (measured in
/// `benches/fleet.rs`).
fn answer(shared: &Shared, access: Access<'_>, file: &str, peer: Peer, headers: &HeaderMap, secure: bool) -> Response {
    let request = FetchRequest { access, file, ip: peer.ip(), user_agent: user_agent(headers), secure };
    let fetched = fetches::fetch(&shared.app, &request);
    crate::metrics::FETCHES.inc(match &fetched {
        Fetched::File { .. } => "served",
        Fetched::NotFound => "not_found",
        Fetched::Throttled => "throttled",
        Fetched::Failed => "failed",
    });
    match fetched {
        Fetched::File { body, content_type } => {
            let mut response = body.into_response();
            let headers = response.headers_mut();
            if let Ok(value) = HeaderValue::from_str(&content_type) {
                headers.insert(header::CONTENT_TYPE, value);
            }
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Fetched::NotFound => StatusCode::NOT_FOUND.into_response(),
        Fetched::Throttled => StatusCode::TOO_MANY_REQUESTS.into_response(),
        Fetched::Failed => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// `/e/<token>/FILE`, over TLS (`SECURE`) or plain HTTP.
async fn enrollment<const SECURE: bool>(
    State(shared): State<Shared>,
    Extension(peer): Extension<Peer>,
    Path((token, file)): Path<(String, String)>,
    request: Request,
) -> Response {
    answer(&shared, Access::Enrollment(&token), &file, peer, request.headers(), SECURE)
}

/// `/p/<token>/FILE`, over TLS (`SECURE`) or plain HTTP.
async fn steady<const SECURE: bool>(
    State(shared): State<Shared>,
    Extension(peer): Extension<Peer>,
    Path((token, file)): Path<(String, String)>,
    request: Request,
) -> Response {
    answer(&shared, Access::Steady(&token), &file, peer, request.headers(), SECURE)
}

/// `/FILE`, over TLS (`SECURE`) or plain HTTP.
async fn tokenless<const SECURE: bool>(
    State(shared): State<Shared>,
    Extension(peer): Extension<Peer>,
    Path(file): Path<String>,
    request: Request,
) -> Response {
    answer(&shared, Access::Tokenless, &file, peer, request.headers(), SECURE)
}

/// `/p/<steady>/files/<path>`: firmware, logos and ringtones from `<data>/files/`, with
/// Range support; only for a valid steady token.
async fn static_file(
    State(shared): State<Shared>,
    Extension(peer): Extension<Peer>,
    Path((token, _)): Path<(String, String)>,
    request: Request,
) -> Response {
    let ip = peer.ip();
    if shared.app.throttle.is_blocked(ip) {
        return StatusCode::TOO_MANY_REQUESTS.into_response();
    }
    let owner = Token::parse(&token).and_then(|t| shared.app.device_by_token(&t, TokenKind::Steady).ok().flatten());
    let Some(device) = owner else {
        shared.app.throttle.record_miss(ip);
        return StatusCode::NOT_FOUND.into_response();
    };
    // Hand ServeDir the still-encoded rest of the path; it decodes and refuses `..` itself.
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path().splitn(5, '/').nth(4).unwrap_or("").to_string();
    let Ok(uri) = format!("/{path}").parse() else { return StatusCode::NOT_FOUND.into_response() };
    parts.uri = uri;
    // Files only: a folder is not found, never redirected (ServeDir's redirect to `<path>/`
    // would be built from the path without its `/p/<token>/files` prefix, and `//sub`
    // would point off site).
    let files =
        tower_http::services::ServeDir::new(shared.app.data_dir.join("files")).append_index_html_on_directories(false);
    match files.oneshot(Request::from_parts(parts, body)).await {
        Ok(response) => {
            if response.status().is_success() {
                crate::metrics::STATIC_FILES.inc("served");
                tracing::debug!(mac = %device.mac, %ip, file = path, "served a static file");
            }
            response.map(Body::new)
        }
        Err(never) => match never {},
    }
}
