//! [`Outbox`]: how a subsystem sends its requests into the agent loop without knowing the
//! loop's event type.
//!
//! Each subsystem that asks the agent loop something (the disk watcher, the garbage
//! collector, the gRPC services) owns its request enum; the loop's `Event` wraps each of
//! them (`Event::Disk(disk::Request)`, …) and implements `From` for it. The subsystem gets
//! an `Outbox<its Request>` built from the loop's sender, so it never imports the agent
//! loop (no import circle), and its tests can hand it a channel of its own requests.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;

type SendFuture = Pin<Box<dyn Future<Output = bool> + Send>>;

/// A sender of `R`s into a queue of any type that `R` converts into.
pub struct Outbox<R> {
    send: Arc<dyn Fn(R) -> SendFuture + Send + Sync>,
}

impl<R> Clone for Outbox<R> {
    fn clone(&self) -> Self {
        Outbox {
            send: self.send.clone(),
        }
    }
}

impl<R> std::fmt::Debug for Outbox<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Outbox")
    }
}

impl<R: Send + 'static> Outbox<R> {
    /// Sends into `queue`, converting each request on the way.
    pub fn new<E>(queue: mpsc::Sender<E>) -> Self
    where
        E: From<R> + Send + 'static,
    {
        Outbox {
            send: Arc::new(move |request: R| {
                let queue = queue.clone();
                Box::pin(async move { queue.send(E::from(request)).await.is_ok() })
            }),
        }
    }

    /// Queues `request`, waiting for room; false once the receiving loop has stopped.
    pub async fn send(&self, request: R) -> bool {
        (self.send)(request).await
    }
}
