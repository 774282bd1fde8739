//! Response bodies fed a piece at a time by a producer thread: the streamed device lists
//! ([`crate::app::listing`]).

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http::{HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;
use hyper::body::Frame;
use tokio::sync::mpsc;

use crate::app::AppError;

/// The pieces as they come; an error ends the body early, and the client sees a truncated
/// answer rather than a complete-looking one.
struct Streamed(mpsc::Receiver<Result<Bytes, AppError>>);

impl hyper::body::Body for Streamed {
    type Data = Bytes;
    type Error = AppError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, AppError>>> {
        self.0.poll_recv(cx).map(|piece| {
            piece.map(|piece| {
                piece.map(Frame::data).inspect_err(|error| tracing::error!("a streamed list was cut short: {error}"))
            })
        })
    }
}

/// A 200 answer of `content_type` whose body is `pieces`, not to be stored by caches.
pub(super) fn response(pieces: mpsc::Receiver<Result<Bytes, AppError>>, content_type: &'static str) -> Response {
    let mut response = Response::new(axum::body::Body::new(Streamed(pieces)));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
