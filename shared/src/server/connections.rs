//! The connections a server takes: at most `MAX_CONNECTIONS` open at once, and each must have
//! finished its TLS handshake and sent the start of its first HTTP request within
//! `HANDSHAKE_TIMEOUT_SECONDS` of being accepted, or it is closed.
//!
//! Why here and not in tonic: tonic bounds a TLS handshake (`ServerTlsConfig::timeout`) but not
//! the HTTP/2 connection preface after it, nor the number of connections; a client that connects
//! and sends nothing would hold a task and a file descriptor for ever, and with a connection limit
//! such clients would fill it. The preface deadline has to sit above TLS (below it the handshake's
//! own bytes would count), so the TLS handshake is done here too, with the same rustls tonic uses.
//! After the first bytes the HTTP layers take over: HTTP/2 keep-alive pings (30 s, answered within
//! 10 s) close a dead peer, and hyper's header read timeout (30 s) bounds an HTTP/1 request.

use crate::env::{ConfigError, Env, seconds, whole};
use futures_util::{Stream, StreamExt};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};

/// The length of the HTTP/2 client connection preface (RFC 9113 section 3.4); an HTTP/1 request
/// line (gRPC-Web) is at least as long.
const PREFACE_BYTES: usize = 24;

/// How many connections a server holds and how soon each must start speaking HTTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// `MAX_CONNECTIONS` (default 4,096): connections open at once, TLS handshakes included.
    /// One more is closed as soon as it is accepted; clients see UNAVAILABLE and retry.
    pub max_connections: usize,
    /// `HANDSHAKE_TIMEOUT_SECONDS` (default 10): from accept to the end of the TLS handshake and
    /// the first 24 bytes of HTTP.
    pub handshake_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self { max_connections: 4096, handshake_timeout: Duration::from_secs(10) }
    }
}

impl ConnectionLimits {
    /// `MAX_CONNECTIONS` (1..=1,000,000) and `HANDSHAKE_TIMEOUT_SECONDS` (1..=300) from `env`.
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let default = Self::default();
        Ok(Self {
            max_connections: whole(
                env,
                "MAX_CONNECTIONS",
                default.max_connections as u64,
                1..=1_000_000,
                "connections",
            )? as usize,
            handshake_timeout: seconds(env, "HANDSHAKE_TIMEOUT_SECONDS", 10, 1..=300)?,
        })
    }
}

/// Connections open and refused since start, for `/metrics`.
#[derive(Debug)]
pub struct ConnectionCounts {
    open: Arc<Semaphore>,
    max: usize,
    refused: AtomicU64,
}

impl ConnectionCounts {
    /// Connections held now (handshakes included).
    pub fn open(&self) -> usize {
        self.max - self.open.available_permits()
    }

    /// Connections closed at accept because `MAX_CONNECTIONS` were open.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// The slots a server's connections take, shared with the metrics.
pub fn counts(limits: ConnectionLimits) -> Arc<ConnectionCounts> {
    Arc::new(ConnectionCounts {
        open: Arc::new(Semaphore::new(limits.max_connections)),
        max: limits.max_connections,
        refused: AtomicU64::new(0),
    })
}

/// The connections accepted on `listener` (TCP_NODELAY, TCP keep-alive after 60 s idle), each
/// holding one of `counts`' slots until it closes, with its TLS handshake (when `tls` is set)
/// done on its own task. Connections over the limit, failed handshakes and handshakes past the
/// timeout are closed and never yielded; the stream ends only when it is dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: ConnectionLimits,
    counts: Arc<ConnectionCounts>,
) -> impl Stream<Item = Result<Connection, io::Error>> + Send + 'static {
    // TCP_NODELAY: a response goes out as several writes (headers, data, trailers), and Nagle
    // would hold the last ones for the peer's delayed ACK (about 40 ms).
    let accepted = TcpIncoming::from(listener).with_nodelay(Some(true)).with_keepalive(Some(Duration::from_secs(60)));
    accepted
        .filter_map(move |accepted| {
            let counts = counts.clone();
            async move {
                match accepted {
                    Ok(tcp) => match counts.open.clone().try_acquire_owned() {
                        Ok(slot) => Some((tcp, slot)),
                        Err(_) => {
                            counts.refused.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(peer = ?tcp.peer_addr().ok(), "connection closed: MAX_CONNECTIONS are open");
                            None
                        }
                    },
                    Err(e) => {
                        // Out of file descriptors and the like: pause instead of spinning.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        None
                    }
                }
            }
        })
        .map(move |(tcp, slot)| tokio::spawn(handshake(tcp, slot, tls.clone(), limits.handshake_timeout)))
        .buffer_unordered(limits.max_connections)
        .filter_map(|done| async move {
            match done {
                Ok(Ok(connection)) => Some(Ok(connection)),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "connection closed before its first request");
                    None
                }
                Err(_) => None, // the handshake task was cancelled: the runtime is stopping
            }
        })
}

async fn handshake(
    tcp: TcpStream,
    slot: OwnedSemaphorePermit,
    tls: Option<TlsAcceptor>,
    timeout: Duration,
) -> io::Result<Connection> {
    let deadline = Instant::now() + timeout;
    let info = tcp.connect_info();
    let io: Box<dyn Io> = match tls {
        None => Box::new(tcp),
        Some(acceptor) => Box::new(tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await.map_err(|_| {
            io::Error::new(io::ErrorKind::TimedOut, "no TLS handshake within HANDSHAKE_TIMEOUT_SECONDS")
        })??),
    };
    Ok(Connection { io, info, _slot: slot, first_bytes: Some(Box::pin(tokio::time::sleep_until(deadline))), read: 0 })
}

/// What a connection reads and writes through: the TCP stream, or TLS over it.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// One accepted connection: its slot is given back when it is dropped, and its reads fail with
/// TimedOut if its first 24 bytes have not come by the deadline.
pub struct Connection {
    io: Box<dyn Io>,
    info: TcpConnectInfo,
    _slot: OwnedSemaphorePermit,
    /// Until the first bytes have come.
    first_bytes: Option<Pin<Box<Sleep>>>,
    read: usize,
}

impl Connected for Connection {
    /// The TCP addresses, as for a plain `TcpStream`, so `Request::remote_addr` works with or
    /// without TLS.
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for Connection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Some(deadline) = self.first_bytes.as_mut() {
            if let Poll::Ready(Ok(())) = polled {
                self.read += buf.filled().len() - before;
                if self.read >= PREFACE_BYTES {
                    self.first_bytes = None;
                }
            } else if polled.is_pending() && deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no HTTP request within HANDSHAKE_TIMEOUT_SECONDS",
                )));
            }
        }
        polled
    }
}

impl AsyncWrite for Connection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings() {
        let env: &[(&str, &str)] = &[];
        assert_eq!(ConnectionLimits::from_env(&env).unwrap(), ConnectionLimits::default());
        let env: &[(&str, &str)] = &[("MAX_CONNECTIONS", "0")];
        assert_eq!(ConnectionLimits::from_env(&env).unwrap_err().var, "MAX_CONNECTIONS");
        let env: &[(&str, &str)] = &[("HANDSHAKE_TIMEOUT_SECONDS", "0")];
        assert_eq!(ConnectionLimits::from_env(&env).unwrap_err().var, "HANDSHAKE_TIMEOUT_SECONDS");
    }
}
