//! Response bodies fed a piece at a time by a producer thread: the streamed device lists
//! ([`crate::app::listing`]).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http::{HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;
use hyper::body::Frame;
use tokio::sync::mpsc;

use crate::app::AppError;
use crate::app::listing::LONG_ANSWER_LIMIT;

/// The pieces as they come; an error, or reading for longer than [`LONG_ANSWER_LIMIT`], ends
/// the body early, and the client sees a truncated answer rather than a complete-looking one.
struct Streamed {
    pieces: mpsc::Receiver<Result<Bytes, AppError>>,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl hyper::body::Body for Streamed {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            tracing::warn!("a streamed list was cut short: not read within {LONG_ANSWER_LIMIT:?}");
            return Poll::Ready(Some(Err(std::io::Error::other("not read in time"))));
        }
        self.pieces.poll_recv(cx).map(|piece| {
            piece.map(|piece| {
                piece.map(Frame::data).map_err(|error| {
                    tracing::error!("a streamed list was cut short: {error}");
                    std::io::Error::other(error.to_string())
                })
            })
        })
    }
}

/// A 200 answer of `content_type` whose body is `pieces`, not to be stored by caches.
pub(super) fn response(pieces: mpsc::Receiver<Result<Bytes, AppError>>, content_type: &'static str) -> Response {
    let body = Streamed { pieces, deadline: Box::pin(tokio::time::sleep(LONG_ANSWER_LIMIT)) };
    let mut response = Response::new(axum::body::Body::new(body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
