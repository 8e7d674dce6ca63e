//! Wake-ups when another host changes the catalog: LISTEN on a connection of its own.
//!
//! A notification is only a wake-up carrying the newest change seq; the change log is
//! the truth. A host listens first, then reads its snapshot, then on every wake-up reads
//! `changes_since(last applied)`: nothing committed after the snapshot can be missed.
//! When the listening connection drops (server restart, network cut), [`ChangeListener::next`]
//! returns `None`: the caller listens again and re-reads `changes_since` its last seq,
//! since notifications sent while nobody listened are not kept by PostgreSQL.

use std::future::poll_fn;

use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client};

use super::error::{CatalogDbError, describe, sql};
use super::{CHANNEL, Options, Target};

/// Notifications of new change seqs (see the module docs).
pub struct ChangeListener {
    seqs: mpsc::Receiver<u64>,
    // Kept so the session, and with it the LISTEN, stays open.
    _client: Client,
    task: tokio::task::JoinHandle<()>,
}

/// How many wake-ups may wait unread. When full, one more is dropped: harmless, since a
/// wake-up only says "read the log", and the reader reads it all from its last seq.
const PENDING: usize = 1024;

/// Opens a connection of its own to `url` and listens on [`CHANNEL`].
pub async fn listen(url: &str, options: Options) -> Result<ChangeListener, CatalogDbError> {
    let target = Target::parse(url, options)?;
    let (client, mut connection) = target.connect().await?;
    let (tx, seqs) = mpsc::channel(PENDING);
    let server = target.server.clone();
    // The connection must be polled for the LISTEN to be answered, so the task starts
    // first; it hands each notification on and ends when the connection does.
    let task = tokio::spawn(async move {
        loop {
            match poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if let Ok(seq) = n.payload().parse::<u64>() {
                        let _ = tx.try_send(seq);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!(
                        "catalog database {server}: listening connection lost: {}",
                        describe(&e)
                    );
                    return;
                }
                None => return,
            }
        }
    });
    let listen = format!("LISTEN {CHANNEL}");
    match tokio::time::timeout(options.op_timeout, client.batch_execute(&listen)).await {
        Ok(r) => r.map_err(sql(&target.server, format!("LISTEN {CHANNEL}")))?,
        Err(_) => {
            task.abort();
            return Err(CatalogDbError::Timeout {
                server: target.server.clone(),
                step: format!("LISTEN {CHANNEL}"),
                after: options.op_timeout,
            });
        }
    }
    Ok(ChangeListener {
        seqs,
        _client: client,
        task,
    })
}

impl ChangeListener {
    /// The next change seq notified; `None` once the connection is gone (listen again,
    /// then read `changes_since` the last seq applied).
    pub async fn next(&mut self) -> Option<u64> {
        self.seqs.recv().await
    }
}

impl Drop for ChangeListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}
