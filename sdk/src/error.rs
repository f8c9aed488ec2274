//! The SDK's one error type.

use std::fmt;

/// Everything that can go wrong in the SDK.
///
/// gRPC answers are kept whole (boxed, so that `Result<_, SdkError>` stays small) so a
/// caller can look at the code, message and details with [`SdkError::status`].
#[derive(Debug, thiserror::Error)]
pub enum SdkError {
    /// The configuration cannot work (empty master list, zero failover timeout, …).
    #[error("invalid scheduler configuration: {0}")]
    Config(String),

    /// A call was made while the driver had no subscription (it is reconnecting). The call
    /// was not sent; retry it after the next `subscribed` callback.
    #[error(
        "not subscribed to a master right now (the driver is reconnecting); the call was not sent"
    )]
    Disconnected,

    /// A call was made after `run` had ended (after `stop`, `teardown` or an error).
    #[error("the scheduler driver is no longer running")]
    Stopped,

    /// A master answered a call as a follower. The driver resubscribes to the leader it
    /// named by itself; the call was not carried out.
    #[error("{call}: the master is not the leader{}; resubscribing", leader_suffix(.leader))]
    NotLeader {
        /// The call that was refused, e.g. `accept`.
        call: &'static str,
        /// The leader's address as the follower knew it; empty when it knew none.
        leader: String,
        /// The follower's answer.
        status: Box<tonic::Status>,
    },

    /// The master refused or failed a call.
    #[error("{call} failed: {}", StatusText(.status))]
    Call {
        /// The call that failed, e.g. `accept`.
        call: &'static str,
        /// The master's answer (DEADLINE_EXCEEDED when the SDK gave up waiting).
        status: Box<tonic::Status>,
    },

    /// A master refused the subscription for a reason that retrying cannot fix (invalid
    /// framework description, permission denied, unknown framework id, …).
    #[error("subscription refused by {master}: {}", StatusText(.status))]
    Subscribe {
        /// The master that refused.
        master: String,
        /// Its answer.
        status: Box<tonic::Status>,
    },

    /// No master could be subscribed to within the configured reconnect timeout.
    #[error("no leading master reachable at {masters} within {waited_secs:.0}s (last error: {last_error})")]
    NoMaster {
        /// The masters that were tried, comma-separated.
        masters: String,
        /// How long the driver kept trying.
        waited_secs: f64,
        /// What went wrong with the last attempt.
        last_error: String,
    },

    /// The master sent an ERROR event (for example: the framework was removed because it
    /// stayed away longer than its failover timeout). `run` ends with this error.
    #[error("the master reported an error for this framework: {0}")]
    Framework(String),

    /// An agent's API could not be reached.
    #[error("cannot reach the agent at {address}: {message}")]
    AgentUnreachable {
        /// The agent's API address.
        address: String,
        /// Why the connection failed.
        message: String,
    },

    /// An agent refused or failed a files API call.
    #[error("agent at {address}: {}", StatusText(.status))]
    Agent {
        /// The agent's API address.
        address: String,
        /// The agent's answer.
        status: Box<tonic::Status>,
    },
}

impl SdkError {
    /// The gRPC status behind this error, when there is one.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            SdkError::NotLeader { status, .. }
            | SdkError::Call { status, .. }
            | SdkError::Subscribe { status, .. }
            | SdkError::Agent { status, .. } => Some(status),
            _ => None,
        }
    }

    /// True when the error says nothing about the call itself, only that no master was
    /// listening at the time: retrying after the next `subscribed` callback is the answer.
    pub fn is_transient(&self) -> bool {
        matches!(self, SdkError::Disconnected | SdkError::NotLeader { .. })
            || self
                .status()
                .is_some_and(|s| s.code() == tonic::Code::Unavailable)
    }
}

fn leader_suffix(leader: &str) -> String {
    if leader.is_empty() {
        " (no leader known yet)".to_string()
    } else {
        format!(" (leader: {leader})")
    }
}

/// Formats a status as `CODE: message` without tonic's debug-heavy `Display`.
struct StatusText<'a>(&'a tonic::Status);

impl fmt::Display for StatusText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.0.code(), self.0.message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_readable() {
        let e = SdkError::Call {
            call: "accept",
            status: Box::new(tonic::Status::invalid_argument("offer o-1 is gone")),
        };
        assert_eq!(
            e.to_string(),
            "accept failed: InvalidArgument: offer o-1 is gone"
        );
        assert!(!e.is_transient());
        let e = SdkError::NotLeader {
            call: "decline",
            leader: "10.0.0.2:5050".into(),
            status: Box::new(drover_proto::leader::not_leader_status(Some(
                "10.0.0.2:5050",
            ))),
        };
        assert!(e.to_string().contains("leader: 10.0.0.2:5050"));
        assert!(e.is_transient());
        assert!(SdkError::Disconnected.is_transient());
        // Large statuses stay out of line so every Result<_, SdkError> stays small.
        assert!(std::mem::size_of::<SdkError>() <= 80);
    }
}

impl SdkError {
    /// Whether a failed call may still have been carried out. False when the call was
    /// never sent ([`SdkError::Disconnected`], [`SdkError::Stopped`]), a follower refused
    /// it ([`SdkError::NotLeader`]), or the master refused it as invalid; true when the
    /// master failed over mid-call (UNAVAILABLE) or the answer never came (a timeout). A
    /// LAUNCH that may have taken effect must be reconciled, not relaunched under a new
    /// task id, or its work could run twice.
    pub fn may_have_taken_effect(&self) -> bool {
        match self {
            SdkError::Call { status, .. } => !matches!(
                status.code(),
                tonic::Code::InvalidArgument
                    | tonic::Code::FailedPrecondition
                    | tonic::Code::NotFound
                    | tonic::Code::PermissionDenied
                    | tonic::Code::AlreadyExists
                    | tonic::Code::ResourceExhausted
                    | tonic::Code::Unauthenticated
                    | tonic::Code::Unimplemented
            ),
            _ => false,
        }
    }
}

#[cfg(test)]
mod ambiguity_tests {
    use super::*;

    fn call(code: tonic::Code) -> SdkError {
        SdkError::Call {
            call: "accept",
            status: Box::new(tonic::Status::new(code, "x")),
        }
    }

    #[test]
    fn only_calls_that_may_have_run_are_ambiguous() {
        assert!(call(tonic::Code::Unavailable).may_have_taken_effect());
        assert!(call(tonic::Code::DeadlineExceeded).may_have_taken_effect());
        assert!(!call(tonic::Code::InvalidArgument).may_have_taken_effect());
        assert!(!SdkError::Disconnected.may_have_taken_effect());
        assert!(!SdkError::NotLeader {
            call: "accept",
            leader: String::new(),
            status: Box::new(tonic::Status::unavailable("not the leader")),
        }
        .may_have_taken_effect());
    }
}
