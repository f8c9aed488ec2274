//! The master's one error type.
//!
//! Library code (the leader, the registry's callers, Raft, membership, backup, config)
//! returns [`MasterError`]; the services turn it into a gRPC status in one place
//! ([`crate::services::status`]), and the binary prints it. The variants that name a gRPC
//! code say what the caller did wrong or must do next, because that is what decides the
//! code; the rest describe failures of the master's own machinery.

/// Everything that can go wrong in the master.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    /// The request is malformed or names something impossible.
    #[error("{0}")]
    InvalidArgument(String),
    /// The request names something that does not exist (any more).
    #[error("{0}")]
    NotFound(String),
    /// The request would create something that already exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is well-formed but the cluster's state does not allow it now.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The caller may not do this (someone else's framework, offer or executor).
    #[error("{0}")]
    PermissionDenied(String),
    /// A limit would be passed.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A concurrent change won; retrying may succeed.
    #[error("{0}")]
    Aborted(String),
    /// Not available now (leadership changed, shutting down); retrying later may succeed.
    #[error("{0}")]
    Unavailable(String),
    /// The operation did not finish in time.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The call is not supported.
    #[error("{0}")]
    Unimplemented(String),
    /// This master does not lead; `leader` is the leader's address when known.
    #[error("not the leader")]
    NotLeader {
        /// The leader's gRPC address, when this master knows a live one.
        leader: Option<String>,
    },
    /// A broken invariant of the master itself.
    #[error("{0}")]
    Internal(String),
    /// An operating-system call failed; `context` says what the master was doing.
    #[error("{context}: {source}")]
    Io {
        /// What the master was doing.
        context: String,
        /// The error the system returned.
        source: std::io::Error,
    },
    /// raft-rs refused or failed; `context` says what the master was doing.
    #[error("{context}: {source}")]
    Raft {
        /// What the master was doing.
        context: String,
        /// The error raft-rs returned.
        source: raft::Error,
    },
    /// The registry's RocksDB database failed; `context` says what the master was doing.
    #[error("{context}: {source}")]
    Rocks {
        /// What the master was doing.
        context: String,
        /// The error RocksDB returned.
        source: rocksdb::Error,
    },
    /// Stored or received bytes that cannot be decoded (a log entry, a snapshot's metadata,
    /// a hard state): the data folder or the peer is damaged.
    #[error("{0}")]
    Corrupt(String),
    /// Replicated state this binary cannot read (a newer registry version or command): the
    /// master stops rather than diverge.
    #[error("{0}")]
    Incompatible(String),
    /// A setting refused (from a flag, the config file or the environment).
    #[error("{0}")]
    Config(String),
    /// A backup that cannot be taken, read or restored.
    #[error("{0}")]
    Backup(String),
    /// Seeding or joining a cluster refused or failed (see [`crate::membership`]).
    #[error("{0}")]
    Membership(String),
    /// A gRPC connection or server failed; `context` says which.
    #[error("{context}: {source}")]
    Grpc {
        /// What the master was doing.
        context: String,
        /// The transport's error.
        source: tonic::transport::Error,
    },
}

/// The master's result type.
pub type Result<T, E = MasterError> = std::result::Result<T, E>;

impl MasterError {
    /// A raft-rs error with what the master was doing.
    pub fn raft(context: impl Into<String>, source: raft::Error) -> Self {
        MasterError::Raft {
            context: context.into(),
            source,
        }
    }

    /// A RocksDB error with what the master was doing.
    pub fn rocks(context: impl Into<String>, source: rocksdb::Error) -> Self {
        MasterError::Rocks {
            context: context.into(),
            source,
        }
    }

    /// An I/O error with what the master was doing.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        MasterError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Adds context to I/O results: `fs::read(p).io_ctx(|| format!("reading {p}"))`.
pub trait IoContext<T> {
    /// Wraps an I/O error into [`MasterError::Io`] with the context `f` returns.
    fn io_ctx(self, f: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::result::Result<T, std::io::Error> {
    fn io_ctx(self, f: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| MasterError::io(f(), e))
    }
}

impl From<raft::Error> for MasterError {
    fn from(e: raft::Error) -> Self {
        MasterError::raft("raft failed", e)
    }
}

/// `e` followed by every error under it (`source()`), joined with ": ", for the operator:
/// some errors say only what failed (tonic's transport error prints "transport error") and
/// leave why to their cause. A cause whose text the message already holds (a variant that
/// prints its source) is not repeated.
pub fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !more.is_empty() && !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_causes_of_a_transport_error_are_printed() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Nothing listens on a port bound and dropped: the connection is refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let source = runtime
            .block_on(
                tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
                    .unwrap()
                    .connect(),
            )
            .unwrap_err();
        let e = MasterError::Grpc {
            context: format!("cannot reach the leader at 127.0.0.1:{port}"),
            source,
        };
        let text = with_causes(&e);
        assert!(
            text.starts_with(&format!(
                "cannot reach the leader at 127.0.0.1:{port}: transport error: "
            )),
            "{text}"
        );
        assert!(text.to_lowercase().contains("connection refused"), "{text}");
        assert_eq!(
            text.matches("transport error").count(),
            1,
            "a cause already printed is not repeated: {text}"
        );
    }

    #[test]
    fn an_error_without_causes_prints_as_itself() {
        let e = MasterError::Config("--raft-tick-ms must be positive".into());
        assert_eq!(with_causes(&e), "--raft-tick-ms must be positive");
    }
}
