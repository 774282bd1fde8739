//! A connection's idle limit: a read or a write that makes no progress for this long fails
//! with `TimedOut`, which ends the connection (a client that stopped sending or reading
//! holds no slot). A route that pauses its own reading, such as an upload written to flash
//! as it arrives, may lengthen the limit of its connection through [`IdleLimit`], so that
//! the pause, and the client's TCP window closing meanwhile, do not count against the
//! client.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The idle limit of one connection, shared with its requests (as a request extension).
#[derive(Debug, Clone)]
pub struct IdleLimit(Arc<AtomicU64>);

impl IdleLimit {
    fn new(limit: Duration) -> IdleLimit {
        IdleLimit(Arc::new(AtomicU64::new(millis(limit))))
    }

    /// Lengthens the limit to `limit` for the rest of the connection; never shortens it.
    pub fn extend_to(&self, limit: Duration) {
        self.0.fetch_max(millis(limit), Ordering::Relaxed);
    }

    fn get(&self) -> Duration {
        Duration::from_millis(self.0.load(Ordering::Relaxed))
    }
}

fn millis(limit: Duration) -> u64 {
    u64::try_from(limit.as_millis()).unwrap_or(u64::MAX)
}

/// One direction's wait: since when it has made no progress, and the timer for its end.
struct Wait {
    since: Instant,
    timer: Pin<Box<Sleep>>,
}

/// A stream whose reads and writes fail once they wait longer than its [`IdleLimit`].
pub struct IdleStream<S> {
    inner: S,
    limit: IdleLimit,
    read: Option<Wait>,
    write: Option<Wait>,
}

impl<S> IdleStream<S> {
    /// Wraps `inner` with an idle limit of `limit`; the handle lengthens it.
    pub fn new(inner: S, limit: Duration) -> (IdleStream<S>, IdleLimit) {
        let limit = IdleLimit::new(limit);
        (IdleStream { inner, limit: limit.clone(), read: None, write: None }, limit)
    }
}

/// The outcome of one poll of the inner stream, timed: progress (or an error) ends the
/// wait; a pending poll starts it if it is new, and fails it once it has lasted the limit
/// (read now, so that a lengthened limit counts).
fn watched<T>(
    polled: Poll<std::io::Result<T>>,
    wait: &mut Option<Wait>,
    limit: Duration,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<T>> {
    if polled.is_ready() {
        *wait = None;
        return polled;
    }
    let now = Instant::now();
    let wait = wait.get_or_insert_with(|| Wait { since: now, timer: Box::pin(tokio::time::sleep_until(now + limit)) });
    let deadline = wait.since + limit;
    if wait.timer.deadline() != deadline {
        wait.timer.as_mut().reset(deadline);
    }
    match wait.timer.as_mut().poll(cx) {
        Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no progress for {} s", limit.as_secs()),
        ))),
        Poll::Pending => Poll::Pending,
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleStream<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        watched(polled, &mut this.read, this.limit.get(), cx)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleStream<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, bytes);
        watched(polled, &mut this.write, this.limit.get(), cx)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        watched(polled, &mut this.write, this.limit.get(), cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::IdleStream;

    #[tokio::test(start_paused = true)]
    async fn a_read_waiting_past_the_limit_fails_and_a_lengthened_limit_holds_it_open() {
        let (mut client, server) = tokio::io::duplex(64);
        let (mut stream, _limit) = IdleStream::new(server, Duration::from_secs(30));
        let mut byte = [0u8; 1];
        // Data within the limit: read.
        client.write_all(b"a").await.unwrap();
        stream.read_exact(&mut byte).await.unwrap();
        // Silence past the limit: the read fails, saying why.
        let error = stream.read_exact(&mut byte).await.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
        assert!(error.to_string().contains("no progress for 30 s"), "{error}");
        // Lengthened, a 45 s silence is waited out.
        let (client, server) = tokio::io::duplex(64);
        let (mut stream, limit_two) = IdleStream::new(server, Duration::from_secs(30));
        limit_two.extend_to(Duration::from_secs(60));
        limit_two.extend_to(Duration::from_secs(10)); // never shortened
        let writer = tokio::spawn(async move {
            let mut client = client;
            tokio::time::sleep(Duration::from_secs(45)).await;
            client.write_all(b"b").await.unwrap();
            client
        });
        stream.read_exact(&mut byte).await.unwrap();
        assert_eq!(&byte, b"b");
        drop(writer.await.unwrap());
    }
}
