//! Waking readers when the log grows, without polling delays.

use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::watch;

/// How long a reader sleeps before looking at the log anyway. Wake-ups make
/// this a safety net only: it covers SQLite writes from another process (the
/// CLI) and NOTIFYs lost while the listener reconnects.
pub const FALLBACK_POLL: Duration = Duration::from_millis(500);

/// A reader's view of the newest known position.
#[derive(Debug, Clone)]
pub struct Wakeups {
    rx: watch::Receiver<i64>,
}

impl Wakeups {
    pub(crate) fn new(rx: watch::Receiver<i64>) -> Self {
        Self { rx }
    }

    /// Waits until the log is known to have grown beyond `position`, or the
    /// fallback interval passed. Returns the newest known position.
    pub async fn wait_beyond(&mut self, position: i64) -> i64 {
        let woke = {
            let wait = self.rx.wait_for(|head| *head > position);
            match tokio::time::timeout(FALLBACK_POLL, wait).await {
                Ok(Ok(head)) => Some(*head),
                _ => None,
            }
        };
        woke.unwrap_or_else(|| *self.rx.borrow())
    }

    /// The newest known position.
    pub fn head(&self) -> i64 {
        *self.rx.borrow()
    }
}

/// Listens for NOTIFYs from appends in any process and feeds them to `head`.
pub(crate) fn spawn_pg_listener(
    url: String,
    head: watch::Sender<i64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            let Err(e) = listen(&url, &head).await;
            tracing::warn!(error = %e, "event notification listener lost; reconnecting");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    })
}

async fn listen(
    url: &str,
    head: &watch::Sender<i64>,
) -> Result<std::convert::Infallible, sqlx::Error> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen(super::NOTIFY_CHANNEL).await?;
    loop {
        let note = listener.recv().await?;
        if let Ok(position) = note.payload().parse::<i64>() {
            head.send_if_modified(|h| {
                if position > *h {
                    *h = position;
                    true
                } else {
                    false
                }
            });
        }
    }
}
