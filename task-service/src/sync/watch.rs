//! One WatchTasks stream: a task that reads the caller's feed after its position whenever the
//! hub says it may have moved, and sends each change into a bounded buffer that the response
//! drains. Before every read the token is checked again, so a stream ends when its access token
//! expires or its session is revoked, like any call would be refused.

use super::change_of;
use super::feed::{self, Change};
use super::hub::{Subscription, Wake};
use super::token::SyncPosition;
use crate::error::TaskError;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
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
    /// How long the buffer may stay full before the stream is cut with RESOURCE_EXHAUSTED.
    pub slow_reader: Duration,
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
    events: mpsc::Receiver<WatchTasksResponse>,
    end: Option<oneshot::Receiver<Status>>,
    done: bool,
    _open: InFlightGuard,
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
        self.events.poll_recv(cx).map(|event| event.map(Ok))
    }
}

impl Watcher {
    /// Starts the stream's task at `position` (the last change the client has).
    pub fn start(self, position: SyncPosition, open: InFlightGuard) -> Events {
        let (events_tx, events) = mpsc::channel(self.settings.buffer);
        let (end_tx, end) = oneshot::channel();
        // The stream's task stays in the call's span: its log lines carry the request id.
        let span = tracing::Span::current();
        tokio::spawn(
            async move {
                if let Some(error) = self.run(position, &events_tx).await {
                    let _ = end_tx.send(Status::from(error));
                }
            }
            .instrument(span),
        );
        Events { events, end: Some(end), done: false, _open: open }
    }

    /// Returns the error that ends the stream, or None when the client has gone.
    async fn run(mut self, mut position: SyncPosition, events: &mpsc::Sender<WatchTasksResponse>) -> Option<TaskError> {
        let mut look = true;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.subscription.is_closing() {
                return Some(TaskError::ShuttingDown);
            }
            if look {
                if let Err(e) = self.authenticator.authenticate(Some(&self.authorization)).await {
                    return Some(e.into());
                }
                match self.deliver(&mut position, events).await {
                    Ok(true) => {}
                    Ok(false) => return None,
                    Err(error) => return Some(error),
                }
            }
            tokio::select! {
                _ = events.closed() => return None,
                wake = self.subscription.next() => match wake {
                    Wake::Closing => return Some(TaskError::ShuttingDown),
                    Wake::Changed => look = true,
                },
                _ = tick.tick() => {
                    if let Err(e) = self.authenticator.authenticate(Some(&self.authorization)).await {
                        return Some(e.into());
                    }
                    look = !self.subscription.hub.is_live();
                }
            }
        }
    }

    /// Sends every change after `position`, a page at a time. Ok(false): the client has gone.
    async fn deliver(
        &self,
        position: &mut SyncPosition,
        events: &mpsc::Sender<WatchTasksResponse>,
    ) -> Result<bool, TaskError> {
        let page = self.settings.buffer.clamp(16, 500) as i64;
        // A stop does not wait for a slow reader's buffer.
        let mut closing = self.subscription.hub.closing();
        loop {
            let (feed, changes) = feed::changes_after(&self.pool, &self.caller, position.seq, page).await?;
            // Tombstones this stream still needed were pruned, or the feed started over (TRUNCATE).
            super::check_position(*position, feed)?;
            let full = changes.len() as i64 == page;
            for change in changes {
                let seq = change.seq;
                if let Some(event) = self.event(change, *position) {
                    let send = tokio::time::timeout(self.settings.slow_reader, events.send(event));
                    tokio::select! {
                        sent = send => match sent {
                            Ok(Ok(())) => {}
                            Ok(Err(_)) => return Ok(false),
                            Err(_) => {
                                let WatchSettings { buffer, slow_reader: waited } = self.settings;
                                return Err(TaskError::SlowReader { buffer, waited });
                            }
                        },
                        _ = closing.wait_for(|closing| *closing) => return Err(TaskError::ShuttingDown),
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
