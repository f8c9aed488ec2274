//! The agent's one error enum and its one mapping onto gRPC statuses.

use std::io;
use std::path::PathBuf;

use drover_containerizer::ContainerizerError;

/// Everything that can go wrong inside the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A flag has a value the agent cannot use; the message names the flag.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// An I/O operation failed; `context` says which one and on what.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },

    /// Another agent process holds the work dir's lock: two agents sharing one work dir
    /// would launch and recover each other's tasks.
    #[error("another drover-agent already uses the work dir {0}")]
    WorkDirLocked(PathBuf),

    /// The master refused this agent (`MasterMessage.shutdown`).
    #[error("the master shut this agent down: {0}")]
    ShutdownByMaster(String),

    /// A container could not be started (the agent's own part of a launch: a check's
    /// helper, a task group's namespaces).
    #[error("failed to launch the task: {0}")]
    Launch(String),

    /// The containerizers or the image store failed (their messages unchanged).
    #[error(transparent)]
    Containerizer(#[from] ContainerizerError),

    /// The files API was asked about a task that has no sandbox on this agent.
    #[error("{0}")]
    TaskNotFound(String),

    /// The files API was given a path it will not resolve (absolute, `..`, empty component…).
    #[error("{0}")]
    InvalidPath(String),

    /// The path exists but is not what the call needs (a directory for ReadFile, …).
    #[error("{0}")]
    WrongFileType(String),

    /// The path crosses a symlink; the task owns its sandbox, so symlinks are never followed.
    #[error("{0}")]
    Symlink(String),

    /// The path (or a component of it) does not exist.
    #[error("{0}")]
    FileNotFound(String),
}

impl AgentError {
    /// Wraps an I/O error with what the agent was doing.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        AgentError::Io {
            context: context.into(),
            source,
        }
    }

    /// The gRPC status a client sees for this error.
    pub fn to_status(&self) -> tonic::Status {
        // Bounded: a message too long for the client's metadata limit would lose the error.
        let msg = drover_proto::bound_error_message(self.to_string());
        match self {
            AgentError::TaskNotFound(_) | AgentError::FileNotFound(_) => {
                tonic::Status::not_found(msg)
            }
            AgentError::InvalidPath(_) | AgentError::WrongFileType(_) | AgentError::Config(_) => {
                tonic::Status::invalid_argument(msg)
            }
            AgentError::Symlink(_) => tonic::Status::permission_denied(msg),
            AgentError::WorkDirLocked(_)
            | AgentError::ShutdownByMaster(_)
            | AgentError::Launch(_)
            | AgentError::Io { .. } => tonic::Status::internal(msg),
            AgentError::Containerizer(e) => match e {
                ContainerizerError::ImageNotFound(_) => tonic::Status::not_found(msg),
                ContainerizerError::InvalidPath(_)
                | ContainerizerError::Config(_)
                | ContainerizerError::InvalidImage(_)
                | ContainerizerError::UnknownUser(_) => tonic::Status::invalid_argument(msg),
                ContainerizerError::ImageTooLarge(_) => tonic::Status::resource_exhausted(msg),
                ContainerizerError::ImageInUse(_) => tonic::Status::failed_precondition(msg),
                ContainerizerError::Launch(_) | ContainerizerError::Io { .. } => {
                    tonic::Status::internal(msg)
                }
                ContainerizerError::Docker(_) => tonic::Status::unavailable(msg),
            },
        }
    }
}

/// `.ctx("doing X")` on I/O results, so every I/O error says what failed.
pub(crate) trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, AgentError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, AgentError> {
        self.map_err(|e| AgentError::io(context(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(
            AgentError::TaskNotFound("x".into()).to_status().code(),
            tonic::Code::NotFound
        );
        assert_eq!(
            AgentError::Symlink("x".into()).to_status().code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            AgentError::InvalidPath("x".into()).to_status().code(),
            tonic::Code::InvalidArgument
        );
        // The containerizers' errors keep the codes they always had.
        for (e, code) in [
            (
                ContainerizerError::ImageTooLarge("x".into()),
                tonic::Code::ResourceExhausted,
            ),
            (
                ContainerizerError::ImageNotFound("x".into()),
                tonic::Code::NotFound,
            ),
            (
                ContainerizerError::ImageInUse("x".into()),
                tonic::Code::FailedPrecondition,
            ),
            (
                ContainerizerError::Docker("x".into()),
                tonic::Code::Unavailable,
            ),
        ] {
            assert_eq!(AgentError::from(e).to_status().code(), code);
        }
        let e = AgentError::from(ContainerizerError::InvalidImage("bad".into()));
        assert_eq!(e.to_string(), "invalid image: bad");
    }
}
