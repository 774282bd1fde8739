//! Long answers written out a batch at a time: the device list as JSON (API, control socket)
//! and as CSV (the page's export). Memory holds a batch or two of views per answer, never
//! the whole list, and at most [`HEAVY_SLOTS`] such answers are produced at once; more wait
//! their turn for up to [`TURN_WAIT`], and an answer is cut after [`LONG_ANSWER_LIMIT`], so
//! that slow readers cannot hold the turns.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::{App, AppError};

/// Devices per batch: about 100 KB of JSON.
pub const LIST_BATCH: usize = 100;
/// Long answers produced at once, at most.
pub const HEAVY_SLOTS: usize = 2;
/// Batches waiting to be sent, per answer: the producer pauses beyond this.
const QUEUED_BATCHES: usize = 2;
/// How long a long answer waits for its turn before it is refused as busy.
pub const TURN_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// What a long answer that found no turn says.
pub const BUSY: &str = "busy: other device lists are being sent; try again";
/// When to try again after [`BUSY`], in seconds (an HTTP `Retry-After`).
pub const BUSY_RETRY_SECONDS: &str = "10";
/// How long a long answer may take to be read, whole; then it is cut short.
pub const LONG_ANSWER_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

/// What a streamed list is written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListFormat {
    /// A JSON array of [`super::views::DeviceView`], between `open` and `close` (which let
    /// the control socket wrap it in its answer).
    Json {
        /// Written before the array's first element.
        open: &'static str,
        /// Written after the last.
        close: &'static str,
    },
    /// CSV in the import's columns, passwords left out.
    Csv,
}

/// The cap on long answers.
#[derive(Debug)]
pub struct HeavyAnswers(Arc<Semaphore>);

impl Default for HeavyAnswers {
    fn default() -> Self {
        HeavyAnswers(Arc::new(Semaphore::new(HEAVY_SLOTS)))
    }
}

impl HeavyAnswers {
    /// Waits up to [`TURN_WAIT`] for a turn to produce a long answer; the turn ends when the
    /// permit drops. None: every turn stayed taken.
    pub async fn turn(&self) -> Option<OwnedSemaphorePermit> {
        // The semaphore is never closed, so acquiring fails only by the deadline.
        tokio::time::timeout(TURN_WAIT, self.0.clone().acquire_owned()).await.ok()?.ok()
    }
}

/// Produces every device in `format` on a blocking thread, a batch at a time, holding `turn`
/// until done. The receiver gets the pieces in order; an error ends the list early (the
/// reader sees a truncated answer), and a receiver that goes away stops the producer.
pub fn stream_devices(
    app: Arc<App>,
    format: ListFormat,
    turn: OwnedSemaphorePermit,
) -> mpsc::Receiver<Result<Bytes, AppError>> {
    let (sender, receiver) = mpsc::channel(QUEUED_BATCHES);
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        let send = |piece: Result<Bytes, AppError>| sender.blocking_send(piece).is_ok();
        let macs = app.device_macs();
        let opening = match format {
            ListFormat::Json { open, .. } => Bytes::from(format!("{open}[")),
            ListFormat::Csv => Bytes::from(crate::devices::write_csv(std::iter::empty(), false)),
        };
        if !send(Ok(opening)) {
            return;
        }
        let mut first = true;
        for batch in macs.chunks(LIST_BATCH) {
            let piece = match format {
                ListFormat::Json { .. } => app.device_views(batch).map(|views| {
                    let mut out = Vec::with_capacity(views.len() * 1024);
                    for view in &views {
                        if !first {
                            out.push(b',');
                        }
                        first = false;
                        // A view is plain data; serde_json cannot fail on it.
                        serde_json::to_writer(&mut out, view).expect("views serialise to JSON");
                    }
                    Bytes::from(out)
                }),
                ListFormat::Csv => app
                    .devices_of(batch)
                    .map(|devices| Bytes::from(crate::devices::write_csv_rows(devices.iter(), false))),
            };
            let failed = piece.is_err();
            if !send(piece) || failed {
                return;
            }
        }
        if let ListFormat::Json { close, .. } = format {
            send(Ok(Bytes::from(format!("]{close}"))));
        }
    });
    receiver
}
