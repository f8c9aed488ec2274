//! gRPC glue: each service validates nothing itself beyond shape and delegates to the
//! server shell ([`crate::server`]), which asks the pure [`crate::leader`] and carries out
//! its effects, so the rules live in one place.
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

/// The gRPC status a caller sees for a master error: the one place where library errors
/// become statuses. A NotLeader answer carries the leader's address in its details (see
/// [`drover_proto::leader`]); failures of the master's own machinery are INTERNAL. Every
/// message is bounded ([`drover_proto::bound_error_message`]), so that however much of the
/// caller's input it quotes, the error itself reaches the caller.
pub fn status(e: crate::error::MasterError) -> tonic::Status {
    use crate::error::MasterError as E;
    use tonic::Status;
    let e = match e {
        E::InvalidArgument(m) => E::InvalidArgument(drover_proto::bound_error_message(m)),
        E::NotFound(m) => E::NotFound(drover_proto::bound_error_message(m)),
        E::AlreadyExists(m) => E::AlreadyExists(drover_proto::bound_error_message(m)),
        E::FailedPrecondition(m) => E::FailedPrecondition(drover_proto::bound_error_message(m)),
        E::PermissionDenied(m) => E::PermissionDenied(drover_proto::bound_error_message(m)),
        E::ResourceExhausted(m) => E::ResourceExhausted(drover_proto::bound_error_message(m)),
        E::Aborted(m) => E::Aborted(drover_proto::bound_error_message(m)),
        E::Unavailable(m) => E::Unavailable(drover_proto::bound_error_message(m)),
        E::DeadlineExceeded(m) => E::DeadlineExceeded(drover_proto::bound_error_message(m)),
        E::Unimplemented(m) => E::Unimplemented(drover_proto::bound_error_message(m)),
        e => e,
    };
    match e {
        E::InvalidArgument(m) => Status::invalid_argument(m),
        E::NotFound(m) => Status::not_found(m),
        E::AlreadyExists(m) => Status::already_exists(m),
        E::FailedPrecondition(m) => Status::failed_precondition(m),
        E::PermissionDenied(m) => Status::permission_denied(m),
        E::ResourceExhausted(m) => Status::resource_exhausted(m),
        E::Aborted(m) => Status::aborted(m),
        E::Unavailable(m) => Status::unavailable(m),
        E::DeadlineExceeded(m) => Status::deadline_exceeded(m),
        E::Unimplemented(m) => Status::unimplemented(m),
        E::NotLeader { leader } => drover_proto::leader::not_leader_status(leader.as_deref()),
        e @ (E::Internal(_)
        | E::Io { .. }
        | E::Raft { .. }
        | E::Rocks { .. }
        | E::Corrupt(_)
        | E::Incompatible(_)
        | E::Config(_)
        | E::Backup(_)
        | E::Membership(_)
        | E::Grpc { .. }) => Status::internal(drover_proto::bound_error_message(e.to_string())),
    }
}

impl From<crate::error::MasterError> for tonic::Status {
    fn from(e: crate::error::MasterError) -> Self {
        status(e)
    }
}
