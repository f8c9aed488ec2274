//! [`AgentFiles`]: reads files from task sandboxes through an agent's files API, e.g. to
//! show a task's `stdout` and `stderr`. The address comes from `Offer.agent_address`.

use std::time::Duration;

use drover_proto::pb::{self, agent_api_client::AgentApiClient};
use drover_proto::{FrameworkId, TaskId};
use tonic::transport::{Channel, Endpoint};

use crate::connection::error_chain;
use crate::error::SdkError;

/// Largest chunk asked for in one read; the agent caps reads at 1 MiB anyway.
const CHUNK: u64 = 1024 * 1024;

/// Longest wait for one read.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// relative to the task's sandbox, starting at `offset`.
    pub async fn read(
        &mut self,
        framework_id: &FrameworkId,
        task_id: &TaskId,
        path: &str,
        offset: u64,
        length: u64,
    ) -> Result<pb::ReadFileResponse, SdkError> {
        // Each read is bounded on its own; a channel-wide timeout would also cut every
        // `follow` stream short.
        let mut request = tonic::Request::new(pb::ReadFileRequest {
            framework_id: Some(framework_id.clone()),
            task_id: Some(task_id.clone()),
            path: path.to_string(),
            offset,
            length,
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
        task_id: &TaskId,
        path: &str,
        mut offset: u64,
        mut sink: impl FnMut(&[u8]),
    ) -> Result<u64, SdkError> {
        loop {
            let r = self
                .read(framework_id, task_id, path, offset, CHUNK)
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
        task_id: &TaskId,
        path: &str,
        offset: u64,
        tail_bytes: u64,
    ) -> Result<FileFollower, SdkError> {
        let stream = self
            .client
            .follow_file(pb::FollowFileRequest {
                framework_id: Some(framework_id.clone()),
                task_id: Some(task_id.clone()),
                path: path.to_string(),
                offset,
                tail_bytes,
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
        task_id: &TaskId,
        path: &str,
        max_bytes: u64,
    ) -> Result<Vec<u8>, SdkError> {
        // A zero-length read asks for the cap, so read one byte just to learn the size.
        let size = self.read(framework_id, task_id, path, 0, 1).await?.size;
        let mut out = Vec::new();
        self.read_from(
            framework_id,
            task_id,
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
