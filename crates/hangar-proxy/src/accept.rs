//! The accept step every listener shares (the edge's workers, the API,
//! the admin port): accept, back off on errors that are not about one
//! connection, and admit under the listener's connection caps.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hangar_core::admission::{Admission, Admitted};
use tokio::net::{TcpListener, TcpStream};

/// Pause after an accept error that is not about one connection (out of
/// file descriptors), so the loop does not spin.
pub(crate) const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// The next connection `admission` lets in: one over a cap is closed at
/// once (dropped), and accepting goes on. `listener_name` names the
/// listener in logs. Cancel-safe: dropping the future loses no admitted
/// connection.
pub async fn accept_admitted(
    listener: &TcpListener,
    admission: &Arc<Admission>,
    listener_name: &str,
) -> (TcpStream, SocketAddr, Admitted) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => match admission.admit(peer.ip()) {
                Ok(admitted) => return (stream, peer, admitted),
                Err(why) => {
                    tracing::debug!(%peer, ?why, "{listener_name} connection refused: over its cap");
                }
            },
            Err(err) => {
                tracing::warn!(%err, "{listener_name} accept failed");
                if !is_per_connection_error(&err) {
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            }
        }
    }
}

/// Errors that concern only the connection being accepted: retry at once.
/// Anything else (EMFILE, ENFILE, ENOMEM, ENOBUFS, …) gets a short back-off.
fn is_per_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}
