//! The one LISTEN connection of a server. Every notification (and every
//! reconnect, since notifications sent while disconnected are lost) bumps
//! a watch channel that the stream loops and long polls wait on; they then
//! re-read the table by id range, so the payload carries nothing.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_postgres::{AsyncMessage, NoTls};

use super::CHANNEL;

/// Pause between reconnect attempts while PostgreSQL is away.
const RECONNECT_EVERY: Duration = Duration::from_millis(500);

/// Listens for ever (the task is aborted with the store).
pub(super) async fn run(config: tokio_postgres::Config, wake: Arc<watch::Sender<u64>>) {
    loop {
        match config.connect(NoTls).await {
            Ok((client, mut conn)) => {
                let notified = Arc::clone(&wake);
                let mut driver = tokio::spawn(async move {
                    loop {
                        match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                            Some(Ok(AsyncMessage::Notification(_))) => {
                                notified.send_modify(|n| *n = n.wrapping_add(1));
                            }
                            Some(Ok(_)) => {}
                            Some(Err(e)) => return e.to_string(),
                            None => return "connection closed".to_owned(),
                        }
                    }
                });
                match client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
                    Ok(()) => {
                        tracing::info!(channel = CHANNEL, "listening for appends");
                        // Anything committed while we were not listening.
                        wake.send_modify(|n| *n = n.wrapping_add(1));
                        let reason = (&mut driver).await.unwrap_or_else(|e| e.to_string());
                        tracing::warn!(%reason, "LISTEN connection lost; reconnecting");
                    }
                    Err(e) => {
                        tracing::warn!(error = %super::db_error(&e), "LISTEN failed");
                        driver.abort();
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %super::db_error(&e), "LISTEN connect failed");
            }
        }
        tokio::time::sleep(RECONNECT_EVERY).await;
    }
}
