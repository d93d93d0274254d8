//! Accepting HTTP connections under limits, so a flood of slow or idle sockets cannot take the server down.
//!
//! `serve_connections` is the accept loop `server::serve` runs: every connection is served by hyper's
//! HTTP/1.1 server with its timer set, so
//! - a client that does not send a whole request head within [`ConnectionLimits::header_read_timeout`]
//!   (a slowloris, or a socket opened and left silent) is closed, and
//! - the same timer runs between requests on a keep-alive connection, so an idle connection is closed after
//!   that long too;
//! - a request body that sends nothing for that long (`IdleTimeout`: a slowloris on the body) fails, and
//!   the request with it;
//!
//! and at most [`ConnectionLimits::max_connections`] connections are open at once. When a new connection
//! arrives at the cap, the connection idle the longest (no request in flight) is closed to make room, as a
//! keep-alive connection may be closed at any time between requests; when every connection is busy with a
//! request, the new one is closed at once. So `/healthz` answers whatever number of idle sockets clients
//! hold open, and the process never runs out of file descriptors (the default cap, 512, stays under the
//! usual limit of 1024). Running out anyway (`EMFILE`) closes the longest-idle connection too, instead of
//! sleeping on the error.
//!
//! A connection is busy from the moment its request reaches the router until its response body has been
//! sent or dropped (`Busy` rides on the body), so a long SSE stream is never taken for idle.
//!
//! With [`Tls`], each accepted socket does its TLS handshake inside its connection's task, under the same
//! rules: it holds a slot of the cap from the moment it is accepted, it counts as idle (so it is the first
//! to be closed to make room), and a handshake not finished within the header-read timeout closes the
//! socket, so a client that connects and stays silent holds a slot no longer over TLS than without.
//!
//! HTTP/1.1 only: the header-read timer is an HTTP/1 feature, and the OpenAI clients speak HTTP/1.1.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody};
use axum::Router;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::tls::Tls;

/// How many connections, and how slow, the server tolerates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Most connections open at once; past it the longest-idle one is closed, or the new one when all are busy.
    pub max_connections: usize,
    /// A request head must arrive whole within this long; also how long an idle keep-alive connection lives,
    /// and how long a request body may send nothing.
    pub header_read_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 512,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// One open connection, as the accept loop sees it.
struct ConnState {
    /// Requests of this connection now in the router or sending their response body.
    in_flight: AtomicUsize,
    /// When it last started or ended a request (milliseconds since the loop started): the idle order.
    last_active_ms: AtomicU64,
    /// Wakes the connection's task to close it (it checks that it is still idle first).
    close: Notify,
}

impl ConnState {
    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }
}

/// Marks its connection busy while it lives: created when a request reaches the router, dropped with the
/// response body.
struct Busy {
    conn: Arc<ConnState>,
    epoch: Instant,
}

impl Busy {
    fn new(conn: Arc<ConnState>, epoch: Instant) -> Self {
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        conn.last_active_ms.store(millis_since(epoch), Ordering::Relaxed);
        Self { conn, epoch }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.conn
            .last_active_ms
            .store(millis_since(self.epoch), Ordering::Relaxed);
        self.conn.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

fn millis_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_millis() as u64
}

/// The open connections, keyed by an id of the accept loop's.
#[derive(Default)]
struct Table {
    open: HashMap<u64, Arc<ConnState>>,
}

impl Table {
    /// Remove and wake the connection idle the longest; false when every connection is busy.
    fn evict_idlest(&mut self) -> bool {
        let idlest = self
            .open
            .iter()
            .filter(|(_, c)| c.is_idle())
            .min_by_key(|(_, c)| c.last_active_ms.load(Ordering::Relaxed))
            .map(|(id, _)| *id);
        match idlest.and_then(|id| self.open.remove(&id)) {
            Some(conn) => {
                conn.close.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Serve `app` on `listener` under `limits` (over TLS when `tls` is given) until `stop` turns true; then
/// stop accepting, let every connection finish its request in flight (idle ones close at once), and return
/// when all are closed.
pub(crate) async fn serve_connections(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    tls: Option<Tls>,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let acceptor = tls.as_ref().map(Tls::acceptor);
    let epoch = Instant::now();
    let table = Arc::new(Mutex::new(Table::default()));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let mut tasks = JoinSet::new();
    let mut next_id = 0u64;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(err) if is_per_connection(&err) => continue,
            Err(err) => {
                // Out of file descriptors (or memory): free one by closing the idlest connection, and give
                // its task a moment to run; never sleep a whole second as a plain accept loop would.
                let freed = lock(&table).evict_idlest();
                tracing::warn!(cause = %err, freed_idle_connection = freed, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(if freed { 1 } else { 50 })).await;
                continue;
            }
        };
        {
            let mut table = lock(&table);
            if table.open.len() >= limits.max_connections && !table.evict_idlest() {
                tracing::debug!(
                    max_connections = limits.max_connections,
                    "every connection is busy; closing a new one"
                );
                drop(stream);
                continue;
            }
        }
        next_id += 1;
        let conn = Arc::new(ConnState {
            in_flight: AtomicUsize::new(0),
            last_active_ms: AtomicU64::new(millis_since(epoch)),
            close: Notify::new(),
        });
        lock(&table).open.insert(next_id, conn.clone());
        tasks.spawn(serve_one(
            stream,
            app.clone(),
            http.clone(),
            Connection {
                id: next_id,
                conn,
                epoch,
                table: table.clone(),
                body_idle: limits.header_read_timeout,
            },
            acceptor.clone(),
            stop.clone(),
        ));
    }
    drop(listener);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// What one connection's task needs to account for itself.
struct Connection {
    id: u64,
    conn: Arc<ConnState>,
    epoch: Instant,
    table: Arc<Mutex<Table>>,
    /// How long a request body may send nothing before it fails.
    body_idle: Duration,
}

/// One accepted socket: its TLS handshake when `acceptor` is given, then HTTP; it leaves the table when
/// it closes, whichever way.
async fn serve_one(
    stream: TcpStream,
    app: Router,
    http: hyper::server::conn::http1::Builder,
    connection: Connection,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let (id, table) = (connection.id, connection.table.clone());
    match acceptor {
        None => serve_http(stream, app, http, connection, stop).await,
        Some(acceptor) => {
            let conn = connection.conn.clone();
            // The handshake is bounded like a request head; the connection is idle meanwhile, so eviction
            // and shutdown close it too.
            let handshake = tokio::time::timeout(connection.body_idle, acceptor.accept(stream));
            let stream = tokio::select! {
                result = handshake => match result {
                    Ok(Ok(stream)) => Some(stream),
                    Ok(Err(err)) => {
                        tracing::debug!(cause = %err, "TLS handshake failed");
                        None
                    }
                    Err(_elapsed) => {
                        tracing::debug!("TLS handshake not finished within the header-read timeout");
                        None
                    }
                },
                () = conn.close.notified() => None,
                _ = stop.wait_for(|s| *s) => None,
            };
            if let Some(stream) = stream {
                serve_http(stream, app, http, connection, stop).await;
            }
        }
    }
    lock(&table).open.remove(&id);
}

/// HTTP/1.1 on one connection until it ends, it is closed to make room, or the server stops.
async fn serve_http<S>(
    stream: S,
    app: Router,
    http: hyper::server::conn::http1::Builder,
    connection: Connection,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Connection {
        id,
        conn,
        epoch,
        table,
        body_idle,
    } = connection;
    let tracked = conn.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let busy = Busy::new(tracked.clone(), epoch);
        let app = app.clone();
        async move {
            let request = request.map(|body| Body::new(IdleTimeout::new(body, body_idle)));
            let response = app
                .oneshot(request)
                .await
                .unwrap_or_else(|never: Infallible| match never {});
            // The connection stays busy until the body is sent or dropped (a stream may run for minutes).
            Ok::<_, Infallible>(response.map(move |body| {
                Body::new(body.map_frame(move |frame| {
                    let _busy = &busy;
                    frame
                }))
            }))
        }
    });
    let served = http.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(served);
    let mut draining = false;
    loop {
        tokio::select! {
            result = served.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(cause = %err, "connection ended with an error");
                }
                break;
            }
            () = conn.close.notified() => {
                if conn.is_idle() {
                    tracing::debug!("closing an idle connection to make room for a new one");
                    break;
                }
                // A request arrived between the choice and now: keep serving it, and count it again.
                lock(&table).open.insert(id, conn.clone());
            }
            _ = stop.wait_for(|s| *s), if !draining => {
                // Finishes the request in flight, then closes; an idle connection closes at once.
                served.as_mut().graceful_shutdown();
                draining = true;
            }
        }
    }
}

/// A request body that fails when no frame arrives for `idle` (from the request head on, then from frame
/// to frame), so a client cannot hold a connection busy by sending its body a byte now and then forever.
struct IdleTimeout {
    inner: Incoming,
    idle: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl IdleTimeout {
    fn new(inner: Incoming, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }
}

impl HttpBody for IdleTimeout {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let next = tokio::time::Instant::now() + this.idle;
                this.deadline.as_mut().reset(next);
                Poll::Ready(frame.map(|result| result.map_err(Into::into)))
            }
            Poll::Pending if this.deadline.as_mut().poll(cx).is_ready() => Poll::Ready(Some(Err(format!(
                "the request body sent nothing for {} s",
                this.idle.as_secs_f64()
            )
            .into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Errors of one pending connection (it went away before we accepted it): accept the next.
fn is_per_connection(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

/// The table is only held for a few map operations and never across an await, so a poisoned lock (a
/// panic inside one of them) leaves it consistent enough to go on.
fn lock(table: &Mutex<Table>) -> std::sync::MutexGuard<'_, Table> {
    table.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
