//! The HTTP server every emulator runs: bind a loopback port, serve a router until a stop switch turns,
//! and report how the server ended.

use std::net::SocketAddr;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::EmulatorError;

/// A server task: its result once it stopped.
pub(crate) type ServerTask = JoinHandle<Result<(), EmulatorError>>;

/// Listen on `addr` (port 0 picks a free one); returns the listener and the address it got.
pub(crate) async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), EmulatorError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| EmulatorError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| EmulatorError::Bind { addr, source })?;
    Ok((listener, local))
}

/// Serve `app` on `listener` until `stop` turns true, then finish gracefully.
pub(crate) fn spawn(listener: TcpListener, app: Router, mut stop: watch::Receiver<bool>) -> ServerTask {
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            })
            .await
            .map_err(EmulatorError::Serve)
    })
}

/// Wait for a server task to end.
pub(crate) async fn join(task: ServerTask) -> Result<(), EmulatorError> {
    match task.await {
        Ok(result) => result,
        Err(join) => Err(EmulatorError::Serve(std::io::Error::other(join.to_string()))),
    }
}
