//! [`AgentFiles`]: reads files from task sandboxes through an agent's files API, e.g. to
//! show a task's `stdout` and `stderr`. The address comes from `Offer.agent_address`.

use std::time::Duration;

use drover_proto::pb::{self, agent_api_client::AgentApiClient};
use drover_proto::{ExecutorId, FrameworkId, TaskId};
use tonic::transport::{Channel, Endpoint};

use crate::connection::error_chain;
use crate::error::SdkError;

/// Largest chunk asked for in one read; the agent caps reads at 1 MiB anyway.
const CHUNK: u64 = 1024 * 1024;

/// Longest wait for one read.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Whose sandbox a read names. A `&TaskId` or `&ExecutorId` converts into it, so
/// `files.read(&fw, &task_id, ...)` reads the task's sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sandbox {
    /// A task's own sandbox: command tasks, and each task of a task group.
    Task(TaskId),
    /// A custom executor's sandbox. Its tasks have none of their own: they write wherever
    /// the executor puts them inside it (`drover-example-executor` uses
    /// `tasks/<task id>/stdout`).
    Executor(ExecutorId),
}

impl Sandbox {
    fn ids(&self) -> (Option<TaskId>, Option<ExecutorId>) {
        match self {
            Sandbox::Task(t) => (Some(t.clone()), None),
            Sandbox::Executor(e) => (None, Some(e.clone())),
        }
    }
}

impl From<&TaskId> for Sandbox {
    fn from(t: &TaskId) -> Self {
        Sandbox::Task(t.clone())
    }
}

impl From<&ExecutorId> for Sandbox {
    fn from(e: &ExecutorId) -> Self {
        Sandbox::Executor(e.clone())
    }
}

impl From<&Sandbox> for Sandbox {
    fn from(s: &Sandbox) -> Self {
        s.clone()
    }
}

/// A client of one agent's files API.
#[derive(Clone, Debug)]
pub struct AgentFiles {
    client: AgentApiClient<Channel>,
    address: String,
}

impl AgentFiles {
    /// Connects to the agent API at `address` (`host:port`, as in `Offer.agent_address`).
    pub async fn connect(address: &str) -> Result<AgentFiles, SdkError> {
        let unreachable = |message: String| SdkError::AgentUnreachable {
            address: address.to_string(),
            message,
        };
        if address.is_empty() {
            return Err(unreachable("the offer carried no agent address".into()));
        }
        let uri = if address.contains("://") {
            address.to_string()
        } else {
            format!("http://{address}")
        };
        let channel = Endpoint::from_shared(uri)
            .map_err(|e| unreachable(e.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| unreachable(error_chain(&e)))?;
        Ok(AgentFiles {
            client: AgentApiClient::new(channel).max_decoding_message_size(4 * CHUNK as usize),
            address: address.to_string(),
        })
    }

    /// The agent's address.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Reads up to `length` bytes (0: as much as the agent sends at once) of `path`, a path
    /// relative to the sandbox (a task's, or a custom executor's: see [`Sandbox`]),
    /// starting at `offset`.
    pub async fn read(
        &mut self,
        framework_id: &FrameworkId,
        sandbox: impl Into<Sandbox>,
        path: &str,
        offset: u64,
        length: u64,
    ) -> Result<pb::ReadFileResponse, SdkError> {
        let (task_id, executor_id) = sandbox.into().ids();
        // Each read is bounded on its own; a channel-wide timeout would also cut every
        // `follow` stream short.
        let mut request = tonic::Request::new(pb::ReadFileRequest {
            framework_id: Some(framework_id.clone()),
            task_id,
            path: path.to_string(),
            offset,
            length,
            executor_id,
        });
        request.set_timeout(READ_TIMEOUT);
        self.client
            .read_file(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| SdkError::Agent {
                address: self.address.clone(),
                status: Box::new(status),
            })
    }

    /// Reads from `offset` to the current end of the file, handing each chunk to `sink`.
    /// Returns the offset after the last byte read, where a later call can go on.
    pub async fn read_from(
        &mut self,
        framework_id: &FrameworkId,
        sandbox: impl Into<Sandbox>,
        path: &str,
        mut offset: u64,
        mut sink: impl FnMut(&[u8]),
    ) -> Result<u64, SdkError> {
        let sandbox = sandbox.into();
        loop {
            let r = self
                .read(framework_id, &sandbox, path, offset, CHUNK)
                .await?;
            if r.data.is_empty() {
                return Ok(offset.max(r.offset));
            }
            sink(&r.data);
            offset = r.offset + r.data.len() as u64;
            if offset >= r.size {
                return Ok(offset);
            }
        }
    }

    /// Follows a file as it grows (`tail -f`): from `offset`, or from `tail_bytes` before
    /// its end when that is not 0. The returned [`FileFollower`] yields chunks until the
    /// task has ended and everything was sent; dropping it cancels the stream.
    pub async fn follow(
        &mut self,
        framework_id: &FrameworkId,
        sandbox: impl Into<Sandbox>,
        path: &str,
        offset: u64,
        tail_bytes: u64,
    ) -> Result<FileFollower, SdkError> {
        let (task_id, executor_id) = sandbox.into().ids();
        let stream = self
            .client
            .follow_file(pb::FollowFileRequest {
                framework_id: Some(framework_id.clone()),
                task_id,
                path: path.to_string(),
                offset,
                tail_bytes,
                executor_id,
            })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| SdkError::Agent {
                address: self.address.clone(),
                status: Box::new(status),
            })?;
        Ok(FileFollower {
            stream,
            address: self.address.clone(),
        })
    }

    /// The last `max_bytes` bytes of a file (all of it when shorter).
    pub async fn tail(
        &mut self,
        framework_id: &FrameworkId,
        sandbox: impl Into<Sandbox>,
        path: &str,
        max_bytes: u64,
    ) -> Result<Vec<u8>, SdkError> {
        let sandbox = sandbox.into();
        // A zero-length read asks for the cap, so read one byte just to learn the size.
        let size = self.read(framework_id, &sandbox, path, 0, 1).await?.size;
        let mut out = Vec::new();
        self.read_from(
            framework_id,
            &sandbox,
            path,
            size.saturating_sub(max_bytes),
            |chunk| out.extend_from_slice(chunk),
        )
        .await?;
        Ok(out)
    }
}

/// A file followed with [`AgentFiles::follow`].
pub struct FileFollower {
    stream: tonic::Streaming<pb::FollowFileResponse>,
    address: String,
}

impl FileFollower {
    /// The next chunk (its `data` may be empty when it only reports `truncated`), or
    /// `None` once the task has ended and the whole file was sent.
    pub async fn next(&mut self) -> Result<Option<pb::FollowFileResponse>, SdkError> {
        self.stream
            .message()
            .await
            .map_err(|status| SdkError::Agent {
                address: self.address.clone(),
                status: Box::new(status),
            })
    }
}
