//! gRPC glue: each service validates nothing itself beyond shape and delegates to
//! [`crate::leader`], so the rules live in one place.
//!
//! - [`scheduler`]: the scheduler API (frameworks).
//! - [`agent`]: the agent↔master stream.
//! - [`operator`]: inspection and operations.
//! - [`peer`]: Raft messages between masters, and a read-only view of Raft progress.
//! - [`testing`]: test-only calls, served only with the hidden `--enable-test-commands`.

pub mod agent;
pub mod operator;
pub mod peer;
pub mod scheduler;
pub mod testing;

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc;

/// A receiver stream that runs a callback when the client goes away (tonic drops the
/// response stream when the call ends), so disconnections are noticed at once.
pub struct GuardedStream<T> {
    rx: mpsc::Receiver<T>,
    on_drop: Option<Box<dyn FnOnce() + Send>>,
}

impl<T> GuardedStream<T> {
    pub fn new(rx: mpsc::Receiver<T>, on_drop: impl FnOnce() + Send + 'static) -> Self {
        Self {
            rx,
            on_drop: Some(Box::new(on_drop)),
        }
    }
}

impl<T> Stream for GuardedStream<T> {
    type Item = T;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.rx.poll_recv(cx)
    }
}

impl<T> Drop for GuardedStream<T> {
    fn drop(&mut self) {
        if let Some(f) = self.on_drop.take() {
            f();
        }
    }
}
