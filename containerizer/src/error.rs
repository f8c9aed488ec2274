//! The crate's one error enum. The agent wraps it (`ContainerizerError::Containerizer`) and maps
//! it onto gRPC statuses; nothing here knows about gRPC.

use std::io;

/// Everything that can go wrong while running containers or keeping images.
#[derive(Debug, thiserror::Error)]
pub enum ContainerizerError {
    /// A setting the containerizers cannot use; the message names the flag.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// An I/O operation failed; `context` says which one and on what.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },

    /// A container could not be started.
    #[error("failed to launch the task: {0}")]
    Launch(String),

    /// The Docker engine failed a call the containerizer needed (list, inspect, remove,
    /// logs).
    #[error("the Docker engine: {0}")]
    Docker(String),

    /// A path inside an image's root filesystem that will not be resolved (absolute where
    /// it must be relative, `..`, a NUL byte…).
    #[error("{0}")]
    InvalidPath(String),

    /// No image of that digest or name in the image store.
    #[error("{0}")]
    ImageNotFound(String),

    /// An image archive that is malformed, does not match its digests, or holds entries
    /// that would escape the root filesystem; also a bad image name or format hint.
    #[error("invalid image: {0}")]
    InvalidImage(String),

    /// An image archive (or what it unpacks to) over the store's limits.
    #[error("{0}")]
    ImageTooLarge(String),

    /// An image still used by a container.
    #[error("{0}")]
    ImageInUse(String),

    /// A task's user (or group) that the image does not define.
    #[error("{0}")]
    UnknownUser(String),
}

impl ContainerizerError {
    /// Wraps an I/O error with what the containerizer was doing.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        ContainerizerError::Io {
            context: context.into(),
            source,
        }
    }
}

/// `.ctx("doing X")` on I/O results, so every I/O error says what failed.
pub(crate) trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, ContainerizerError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, ContainerizerError> {
        self.map_err(|e| ContainerizerError::io(context(), e))
    }
}
