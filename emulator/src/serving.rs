//! Serving an emulator's router on its listener until told to stop, shared by the emulators.

use std::io;
use std::net::SocketAddr;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Listen on `addr` (port 0 picks a free one); the listener and the address it got.
pub(crate) async fn bind(addr: SocketAddr) -> io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Serve `app` on `listener` until `stop` turns true, then finish the open requests (graceful).
pub(crate) fn spawn(listener: TcpListener, app: Router, mut stop: watch::Receiver<bool>) -> JoinHandle<io::Result<()>> {
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            })
            .await
    })
}

/// Wait for a server task from [`spawn`].
pub(crate) async fn join(server: JoinHandle<io::Result<()>>) -> io::Result<()> {
    match server.await {
        Ok(result) => result,
        Err(join) => Err(io::Error::other(join.to_string())),
    }
}
