//! One WatchTasks stream: a task that reads the caller's feed after its position whenever the
//! hub says it may have moved, and sends each change into a bounded buffer that the response
//! drains. The token is checked again before every page read and every second while the stream
//! waits (for changes, or for the reader), so a stream ends when its access token expires or its
//! session is revoked, like any call would be refused, however long a replay takes.
//!
//! A stream's memory is bounded whatever the reader does: a reader that takes nothing for
//! `slow_reader` while events wait for it (blocked in a send, or sitting in the buffer) is cut
//! with RESOURCE_EXHAUSTED `SLOW_READER`, and the events it left are freed at once.

use super::change_of;
use super::feed::{self, Change};
use super::hub::{Subscription, Wake};
use super::token::SyncPosition;
use crate::error::TaskError;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use todo_proto::task::v1::WatchTasksResponse;
use todo_shared::Caller;
use todo_shared::access::caller::Authenticator;
use todo_shared::database::Db;
use todo_shared::server::in_flight::InFlightGuard;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;
use tracing::Instrument;

/// How often a stream re-checks its token, and reads the feed itself while the hub is not polling.
const TICK: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
pub struct WatchSettings {
    /// Events a stream may hold for a client that reads slower than changes come.
    pub buffer: usize,
    /// How long the reader may take nothing while events wait for it before the stream is cut
    /// with RESOURCE_EXHAUSTED `SLOW_READER` (`WATCH_SLOW_READER_SECONDS`).
    pub slow_reader: Duration,
    /// Open streams per user on one instance (`MAX_STREAMS_PER_USER`); one more is refused with
    /// RESOURCE_EXHAUSTED `QUOTA_EXCEEDED`.
    pub max_streams_per_user: usize,
}

/// Everything a stream's task needs.
pub struct Watcher {
    pub pool: Db,
    pub authenticator: Arc<Authenticator>,
    /// The request's `authorization` value, checked again before each read.
    pub authorization: String,
    pub caller: Caller,
    pub subscription: Subscription,
    pub settings: WatchSettings,
}

/// The response stream: the buffered events, unless the task has ended the stream with a
/// status, which goes out at once (ahead of buffered events: the client resumes from the last
/// sync_token it got).
pub struct Events {
    buffer: Arc<Buffer>,
    end: Option<oneshot::Receiver<Status>>,
    done: bool,
    _open: InFlightGuard,
}

/// The events waiting for the reader, shared with the stream's task so that the task can free
/// them when it ends the stream, and a count of those the reader took, which tells the task
/// whether the reader is moving.
struct Buffer {
    /// A std mutex: held only for a poll or a drain, never across an await.
    events: Mutex<mpsc::Receiver<WatchTasksResponse>>,
    taken: AtomicU64,
}

impl Buffer {
    /// Drops whatever the reader has not taken, and refuses more.
    fn free(&self) {
        let mut events = self.events.lock().expect("the buffer's lock is never poisoned: no panics inside");
        events.close();
        while events.try_recv().is_ok() {}
    }
}

impl tokio_stream::Stream for Events {
    type Item = Result<WatchTasksResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(end) = self.end.as_mut() {
            match Pin::new(end).poll(cx) {
                Poll::Ready(Ok(status)) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(status)));
                }
                // The task ended without a status (the client went away): drain what is left.
                Poll::Ready(Err(_)) => self.end = None,
                Poll::Pending => {}
            }
        }
        let mut events = self.buffer.events.lock().expect("the buffer's lock is never poisoned: no panics inside");
        let event = events.poll_recv(cx);
        if let Poll::Ready(Some(_)) = &event {
            self.buffer.taken.fetch_add(1, Ordering::Relaxed);
        }
        event.map(|event| event.map(Ok))
    }
}

/// The client has gone (or the stream ended): the task sees the buffer closed and stops.
impl Drop for Events {
    fn drop(&mut self) {
        self.buffer.free();
    }
}

impl Watcher {
    /// Starts the stream's task at `position` (the last change the client has).
    pub fn start(self, position: SyncPosition, open: InFlightGuard) -> Events {
        let (events_tx, events) = mpsc::channel(self.settings.buffer);
        let buffer = Arc::new(Buffer { events: Mutex::new(events), taken: AtomicU64::new(0) });
        let (end_tx, end) = oneshot::channel();
        // The stream's task stays in the call's span: its log lines carry the request id.
        let span = tracing::Span::current();
        let shared = buffer.clone();
        tokio::spawn(
            async move {
                let mut reader = Reader { events: events_tx, buffer: shared, idle_since: None };
                if let Some(error) = self.run(position, &mut reader).await {
                    // The status goes out ahead of the buffered events, which the client will
                    // never see: free them now rather than when the client goes. Status first,
                    // so that the response never finds the buffer closed before the status is there.
                    let _ = end_tx.send(Status::from(error));
                    reader.buffer.free();
                }
            }
            .instrument(span),
        );
        Events { buffer, end: Some(end), done: false, _open: open }
    }

    /// Returns the error that ends the stream, or None when the client has gone.
    async fn run(mut self, mut position: SyncPosition, reader: &mut Reader) -> Option<TaskError> {
        let mut look = true;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.subscription.is_closing() {
                return Some(TaskError::ShuttingDown);
            }
            if look {
                match self.deliver(&mut position, reader, &mut tick).await {
                    Ok(true) => {}
                    Ok(false) => return None,
                    Err(error) => return Some(error),
                }
            }
            tokio::select! {
                _ = reader.events.closed() => return None,
                wake = self.subscription.next() => match wake {
                    Wake::Closing => return Some(TaskError::ShuttingDown),
                    Wake::Changed => look = true,
                },
                _ = tick.tick() => {
                    if let Err(e) = self.still_allowed(reader).await {
                        return Some(e);
                    }
                    look = !self.subscription.hub.is_live();
                }
            }
        }
    }

    /// The checks made every second and before every page: the token still verifies and its
    /// session is live, and the reader is not stuck with events waiting for it.
    async fn still_allowed(&self, reader: &mut Reader) -> Result<(), TaskError> {
        // An open stream is work: it keeps the revocation list live (it checks its session
        // every second) as calls do.
        self.pool.activity().touch();
        self.authenticator.authenticate(Some(&self.authorization)).await?;
        reader.check_moving(self.settings)
    }

    /// Sends every change after `position`, a page at a time. Ok(false): the client has gone.
    async fn deliver(
        &self,
        position: &mut SyncPosition,
        reader: &mut Reader,
        tick: &mut tokio::time::Interval,
    ) -> Result<bool, TaskError> {
        let page = self.settings.buffer.clamp(16, 500) as i64;
        // A stop does not wait for a slow reader's buffer.
        let mut closing = self.subscription.hub.closing();
        loop {
            // Before each page: a long replay to a slow reader must not outlive its token.
            self.still_allowed(reader).await?;
            let (feed, changes) = feed::changes_after(&self.pool, &self.caller, position.seq, page).await?;
            // Tombstones this stream still needed were pruned, or the feed started over (TRUNCATE).
            super::check_position(*position, feed)?;
            let full = changes.len() as i64 == page;
            for change in changes {
                let seq = change.seq;
                if let Some(event) = self.event(change, *position) {
                    // `reserve` rather than `send`: a tick may interrupt the wait for room
                    // without losing the event.
                    loop {
                        tokio::select! {
                            permit = reader.events.reserve() => match permit {
                                Ok(permit) => {
                                    permit.send(event);
                                    break;
                                }
                                Err(_) => return Ok(false),
                            },
                            _ = closing.wait_for(|closing| *closing) => return Err(TaskError::ShuttingDown),
                            _ = tick.tick() => {}
                        }
                        // Only a tick gets here: the reader has had a second to make room.
                        self.still_allowed(reader).await?;
                    }
                }
                position.seq = seq;
            }
            if !full {
                return Ok(true);
            }
        }
    }

    fn event(&self, change: Change, position: SyncPosition) -> Option<WatchTasksResponse> {
        let at = SyncPosition { seq: change.seq, ..position };
        change_of(change, position.seq, self.caller.user_id).map(|(change_type, task)| WatchTasksResponse {
            change_type: change_type.into(),
            task: Some(task),
            sync_token: super::token::encode(self.caller.user_id, at),
        })
    }
}

/// The stream's side of the buffer, and since when the reader has taken nothing while events
/// waited for it.
struct Reader {
    events: mpsc::Sender<WatchTasksResponse>,
    buffer: Arc<Buffer>,
    /// When the reader was first seen idle with events waiting, and how many it had taken then.
    idle_since: Option<(Instant, u64)>,
}

impl Reader {
    /// `SlowReader` once the reader has taken nothing for `slow_reader` while events waited for
    /// it, whether the task is blocked on a full buffer or has nothing more to send.
    fn check_moving(&mut self, settings: WatchSettings) -> Result<(), TaskError> {
        let waiting = self.events.capacity() < self.events.max_capacity();
        let taken = self.buffer.taken.load(Ordering::Relaxed);
        match self.idle_since {
            Some((since, at)) if waiting && at == taken => {
                if since.elapsed() >= settings.slow_reader {
                    return Err(TaskError::SlowReader { buffer: settings.buffer, waited: settings.slow_reader });
                }
            }
            _ => self.idle_since = waiting.then(|| (Instant::now(), taken)),
        }
        Ok(())
    }
}
