//! The agent's gRPC services on `--listen`: `AgentApi` (files API with `FollowFile`, state
//! and the image store) and `Executor` (custom executors: subscriptions, status updates and
//! messages to their framework).

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use drover_proto::pb::{
    self, agent_api_server::AgentApi, executor_event, executor_server::Executor, ExecutorEvent,
};
use futures::Stream;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status, Streaming};

use crate::error::AgentError;
use crate::files_api;
use crate::files_api::follow::{FollowRequest, TaskLiveness, FOLLOW_POLL};
use crate::files_api::rotation::Rotations;
use crate::images::{ImageRecord, ImageStore};
use crate::layout::Layout;
use crate::layout::TaskKey;
use crate::outbox::Outbox;

/// What `AgentApi` asks the agent loop.
#[derive(Debug)]
pub enum StateRequest {
    /// The agent's state (`GetState`).
    GetState(oneshot::Sender<pb::GetAgentStateResponse>),
    /// Whether a task may still write to its sandbox (it is known and has no terminal
    /// update yet), for `FollowFile`. Answered at once: nothing in it needs to be durable.
    TaskActive {
        key: TaskKey,
        reply: oneshot::Sender<bool>,
    },
}

/// The stream of events to one subscribed executor.
pub type EventSender = mpsc::UnboundedSender<Result<ExecutorEvent, Status>>;

/// The answer to an executor's call, once what it changed is durable.
pub type Answer = oneshot::Sender<Result<(), Status>>;

/// A call of an executor, from the `Executor` service to the agent loop (which handles
/// it in `agent/executors/`).
#[derive(Debug)]
pub enum ExecutorRequest {
    Subscribe {
        request: pb::ExecutorSubscribeRequest,
        events: EventSender,
        /// Framework messages on `events` not taken by the stream yet: the agent adds one
        /// per message it queues, the stream takes one off per message it yields.
        pending_messages: Arc<AtomicUsize>,
        reply: Answer,
    },
    Update {
        call: pb::ExecutorUpdateCall,
        reply: Answer,
    },
    Message {
        call: pb::ExecutorMessageCall,
        reply: Answer,
    },
}

/// Largest `ImportImageChunk.data` accepted.
pub const MAX_IMAGE_CHUNK: usize = 1 << 20;

/// `AgentApi`: file reads and image imports run on the blocking pool; state questions go
/// to the agent loop.
pub struct AgentApiService {
    layout: Layout,
    events: Outbox<StateRequest>,
    images: Arc<ImageStore>,
    /// The disk watcher's rotations, so `FollowFile` follows across them.
    rotations: Arc<Rotations>,
}

impl AgentApiService {
    pub fn new(layout: Layout, events: Outbox<StateRequest>, images: Arc<ImageStore>) -> Self {
        AgentApiService {
            layout,
            events,
            images,
            rotations: Arc::default(),
        }
    }

    /// Shares the disk watcher's record of rotations (see [`Rotations`]).
    pub fn with_rotations(mut self, rotations: Arc<Rotations>) -> Self {
        self.rotations = rotations;
        self
    }
}

/// An image as the API shows it.
pub fn image_summary(r: &ImageRecord) -> pb::ImageSummary {
    pb::ImageSummary {
        digest: r.digest.to_string(),
        config_digest: r.config_digest.to_string(),
        names: r.names.clone(),
        size_bytes: r.size_bytes,
        layers: r.layers,
        imported_at: r.imported_at_ms as f64 / 1000.0,
        created: r.config.created.clone(),
        format: r.format.as_str().to_string(),
        entrypoint: r.config.entrypoint.clone(),
        cmd: r.config.cmd.clone(),
        env: r.config.env.clone(),
        working_dir: r.config.working_dir.clone(),
        user: r.config.user.clone(),
        architecture: r.config.architecture.clone(),
        os: r.config.os.clone(),
    }
}

/// Removes an uploaded archive however the import ends (including a client that goes
/// away mid-stream, which drops the handler's future).
struct UploadFile(PathBuf);

impl Drop for UploadFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A task is active while the agent loop knows it without a terminal update.
struct LoopLiveness(Outbox<StateRequest>);

#[tonic::async_trait]
impl TaskLiveness for LoopLiveness {
    async fn is_active(&self, key: &TaskKey) -> bool {
        let (reply, answer) = oneshot::channel();
        let key = key.clone();
        if !self.0.send(StateRequest::TaskActive { key, reply }).await {
            // A stopping agent: its tasks outlive it, but nobody can tell; end the stream
            // and let the client follow again from where it got to.
            return false;
        }
        answer.await.unwrap_or(false)
    }
}

#[tonic::async_trait]
impl AgentApi for AgentApiService {
    type FollowFileStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::FollowFileResponse, Status>>;

    async fn follow_file(
        &self,
        request: Request<pb::FollowFileRequest>,
    ) -> Result<Response<Self::FollowFileStream>, Status> {
        let req = FollowRequest::from_proto(request.into_inner()).map_err(|e| e.to_status())?;
        // Refused up front, so a bad request fails the call rather than its stream.
        if files_api::split_path(&req.path)
            .map_err(|e| e.to_status())?
            .is_empty()
        {
            return Err(Status::invalid_argument(
                "no file named; give a path such as 'stdout'",
            ));
        }
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(files_api::follow::follow(
            self.layout.clone(),
            req,
            Arc::new(LoopLiveness(self.events.clone())),
            self.rotations.clone(),
            tx,
            FOLLOW_POLL,
        ));
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn read_file(
        &self,
        request: Request<pb::ReadFileRequest>,
    ) -> Result<Response<pb::ReadFileResponse>, Status> {
        let r = request.into_inner();
        let key = files_api::sandbox_key(r.framework_id, r.task_id, r.executor_id)
            .map_err(|e| e.to_status())?;
        let layout = self.layout.clone();
        tokio::task::spawn_blocking(move || {
            files_api::read_file(&layout, &key, &r.path, r.offset, r.length)
        })
        .await
        .map_err(|e| Status::internal(format!("file read panicked: {e}")))?
        .map(Response::new)
        .map_err(|e| e.to_status())
    }

    async fn list_files(
        &self,
        request: Request<pb::ListFilesRequest>,
    ) -> Result<Response<pb::ListFilesResponse>, Status> {
        let r = request.into_inner();
        let key = files_api::sandbox_key(r.framework_id, r.task_id, r.executor_id)
            .map_err(|e| e.to_status())?;
        let layout = self.layout.clone();
        tokio::task::spawn_blocking(move || files_api::list_files(&layout, &key, &r.path))
            .await
            .map_err(|e| Status::internal(format!("file listing panicked: {e}")))?
            .map(Response::new)
            .map_err(|e| e.to_status())
    }

    async fn get_state(
        &self,
        _request: Request<pb::GetAgentStateRequest>,
    ) -> Result<Response<pb::GetAgentStateResponse>, Status> {
        let (tx, rx) = oneshot::channel();
        if !self.events.send(StateRequest::GetState(tx)).await {
            return Err(Status::unavailable("the agent is shutting down"));
        }
        rx.await
            .map(Response::new)
            .map_err(|_| Status::unavailable("the agent is shutting down"))
    }

    async fn import_image(
        &self,
        request: Request<Streaming<pb::ImportImageChunk>>,
    ) -> Result<Response<pb::ImportImageResponse>, Status> {
        let mut chunks = request.into_inner();
        let limit = self.images.limits().max_archive_bytes;
        let upload = UploadFile(self.images.upload_path());
        let mut file = tokio::fs::File::create(&upload.0)
            .await
            .map_err(|e| Status::internal(format!("creating {}: {e}", upload.0.display())))?;
        let (mut name, mut format, mut total, mut first) =
            (String::new(), String::new(), 0u64, true);
        while let Some(chunk) = chunks.message().await? {
            if first {
                name = chunk.name;
                format = chunk.format;
                first = false;
            } else if !chunk.name.is_empty() || !chunk.format.is_empty() {
                return Err(Status::invalid_argument(
                    "only the first ImportImageChunk may carry a name or a format",
                ));
            }
            if chunk.data.len() > MAX_IMAGE_CHUNK {
                return Err(Status::invalid_argument(format!(
                    "an ImportImageChunk carries {} bytes; at most {MAX_IMAGE_CHUNK} are allowed",
                    chunk.data.len()
                )));
            }
            total += chunk.data.len() as u64;
            if total > limit {
                return Err(Status::resource_exhausted(format!(
                    "the image archive is larger than the {} MiB this agent accepts \
                     (--image-max-archive-mb)",
                    limit >> 20
                )));
            }
            file.write_all(&chunk.data)
                .await
                .map_err(|e| Status::internal(format!("writing {}: {e}", upload.0.display())))?;
        }
        if total == 0 {
            return Err(Status::invalid_argument("no archive bytes were sent"));
        }
        file.flush()
            .await
            .map_err(|e| Status::internal(format!("writing {}: {e}", upload.0.display())))?;
        drop(file);
        let store = self.images.clone();
        let path = upload.0.clone();
        let images = tokio::task::spawn_blocking(move || {
            let name = (!name.trim().is_empty()).then_some(name);
            store.import_as(
                &path,
                "the uploaded archive",
                name.as_deref(),
                format.trim(),
            )
        })
        .await
        .map_err(|e| Status::internal(format!("image import panicked: {e}")))?
        .map_err(|e| AgentError::from(e).to_status())?;
        drop(upload);
        Ok(Response::new(pb::ImportImageResponse {
            images: images.iter().map(image_summary).collect(),
            archive_bytes: total,
        }))
    }

    async fn list_images(
        &self,
        _request: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListImagesResponse>, Status> {
        Ok(Response::new(pb::ListImagesResponse {
            images: self.images.list().iter().map(image_summary).collect(),
        }))
    }

    async fn remove_image(
        &self,
        request: Request<pb::RemoveImageRequest>,
    ) -> Result<Response<pb::RemoveImageResponse>, Status> {
        let image = request.into_inner().image;
        let store = self.images.clone();
        let removed = tokio::task::spawn_blocking(move || store.remove(&image))
            .await
            .map_err(|e| Status::internal(format!("image removal panicked: {e}")))?
            .map_err(|e| AgentError::from(e).to_status())?;
        Ok(Response::new(pb::RemoveImageResponse {
            image: Some(image_summary(&removed)),
        }))
    }
}

/// `Executor`: the calls of custom executors, handled by the agent loop (see
/// `agent/executors/`); each answer comes once what the call changed is durable.
pub struct ExecutorService {
    events: Outbox<ExecutorRequest>,
}

impl ExecutorService {
    pub fn new(events: Outbox<ExecutorRequest>) -> Self {
        ExecutorService { events }
    }

    async fn ask(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<(), Status>>) -> ExecutorRequest,
    ) -> Result<(), Status> {
        let (tx, rx) = oneshot::channel();
        if !self.events.send(make(tx)).await {
            return Err(Status::unavailable("the agent is stopping"));
        }
        rx.await
            .map_err(|_| Status::unavailable("the agent is stopping"))?
    }
}

#[tonic::async_trait]
impl Executor for ExecutorService {
    type SubscribeStream = Pin<Box<dyn Stream<Item = Result<ExecutorEvent, Status>> + Send>>;

    async fn subscribe(
        &self,
        request: Request<pb::ExecutorSubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let request = request.into_inner();
        if request.launched_tasks.len() > 100_000 {
            return Err(Status::invalid_argument(
                "launched_tasks names more than 100000 tasks",
            ));
        }
        let (events, rx) = mpsc::unbounded_channel();
        let pending_messages = Arc::new(AtomicUsize::new(0));
        let taken = pending_messages.clone();
        self.ask(|reply| ExecutorRequest::Subscribe {
            request,
            events,
            pending_messages,
            reply,
        })
        .await?;
        use futures::StreamExt as _;
        // A framework message leaves the agent's queue when the stream yields it (gRPC's
        // flow control stops pulling from an executor that does not read).
        let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(rx).inspect(move |ev| {
            if let Ok(ExecutorEvent {
                event: Some(executor_event::Event::Message(_)),
            }) = ev
            {
                // Saturating: a miscount must never wrap into "always full".
                let _ = taken.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(n.saturating_sub(1))
                });
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn update(
        &self,
        request: Request<pb::ExecutorUpdateCall>,
    ) -> Result<Response<pb::ExecutorCallResponse>, Status> {
        let call = request.into_inner();
        self.ask(|reply| ExecutorRequest::Update { call, reply })
            .await?;
        Ok(Response::new(pb::ExecutorCallResponse {}))
    }

    async fn message(
        &self,
        request: Request<pb::ExecutorMessageCall>,
    ) -> Result<Response<pb::ExecutorCallResponse>, Status> {
        let call = request.into_inner();
        self.ask(|reply| ExecutorRequest::Message { call, reply })
            .await?;
        Ok(Response::new(pb::ExecutorCallResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::testing::{layer, oci_files, plain, reference_layers, write_tar, E};
    use crate::images::ImportLimits;
    use drover_proto::pb::agent_api_client::AgentApiClient;
    use tokio_stream::wrappers::TcpListenerStream;

    fn chunk(name: &str, data: Vec<u8>) -> pb::ImportImageChunk {
        pb::ImportImageChunk {
            name: name.into(),
            format: String::new(),
            data,
        }
    }

    fn chunks_of(bytes: &[u8], name: &str) -> Vec<pb::ImportImageChunk> {
        bytes
            .chunks(4096)
            .enumerate()
            .map(|(i, c)| chunk(if i == 0 { name } else { "" }, c.to_vec()))
            .collect()
    }

    #[tokio::test]
    async fn image_rpcs_stream_limit_and_refuse() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            ImageStore::open(
                dir.path().join("images"),
                ImportLimits {
                    max_archive_bytes: 256 << 10,
                    max_unpacked_bytes: 1 << 20,
                },
            )
            .unwrap(),
        );
        let (events, _rx) = mpsc::channel::<StateRequest>(1);
        let service =
            AgentApiService::new(Layout::new(dir.path()), Outbox::new(events), store.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(pb::agent_api_server::AgentApiServer::new(service))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let mut client = AgentApiClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let uploads_left = || {
            std::fs::read_dir(dir.path().join("images/uploads"))
                .unwrap()
                .count()
        };

        // Over --image-max-archive-mb.
        let big: Vec<_> = (0..80).map(|_| chunk("", vec![0u8; 4096])).collect();
        let err = client
            .import_image(futures::stream::iter(big))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
        assert!(err.message().contains("--image-max-archive-mb"), "{err:?}");
        // A chunk over 1 MiB; a name after the first chunk; nothing at all.
        let err = client
            .import_image(futures::stream::iter(vec![chunk(
                "",
                vec![0; MAX_IMAGE_CHUNK + 1],
            )]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        let err = client
            .import_image(futures::stream::iter(vec![
                chunk("", vec![1]),
                chunk("late", vec![2]),
            ]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        let err = client
            .import_image(futures::stream::iter(Vec::<pb::ImportImageChunk>::new()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

        // A hostile archive.
        let (files, _) = oci_files(
            &[plain(layer(&[E::File("../x", b"x", 0o644)]))],
            serde_json::json!({}),
        );
        let evil = dir.path().join("evil.tar");
        write_tar(&files, &evil);
        let err = client
            .import_image(futures::stream::iter(chunks_of(
                &std::fs::read(&evil).unwrap(),
                "",
            )))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("contains '..'"), "{err:?}");

        // A good one, then list and remove.
        let (files, digest) = oci_files(&reference_layers(), serde_json::json!({}));
        let good = dir.path().join("good.tar");
        write_tar(&files, &good);
        let bytes = std::fs::read(&good).unwrap();
        let response = client
            .import_image(futures::stream::iter(chunks_of(&bytes, "app")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.archive_bytes, bytes.len() as u64);
        assert_eq!(response.images.len(), 1);
        assert_eq!(response.images[0].digest, digest);
        assert_eq!(response.images[0].names, ["app:latest"]);
        assert_eq!(response.images[0].user, "app");
        let listed = client
            .list_images(pb::ListImagesRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.images, response.images);
        assert_eq!(uploads_left(), 0);
        let removed = client
            .remove_image(pb::RemoveImageRequest {
                image: "app".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(removed.image.unwrap().digest, digest);
        let err = client
            .remove_image(pb::RemoveImageRequest {
                image: "app".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert!(store.list().is_empty());
        server.abort();
    }

    /// A real process in the sandbox keeps swapping `f` between a file of its own and a
    /// symlink to a secret outside, and `d` between a directory of its own and a symlink to
    /// a directory outside, while the files API (over gRPC) reads, lists and follows them
    /// thousands of times: no answer ever carries the outside content or names.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_task_swapping_symlinks_in_never_leaks_what_is_outside() {
        use crate::files_api::tests::{hammer_swaps, swap_script, Swapper};
        use std::fs;

        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path().join("work"));
        let sb = layout.sandbox(&TaskKey::new("fw", "t"));
        fs::create_dir_all(&sb).unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        let secret = format!("TOPSECRET-{}", uuid::Uuid::new_v4());
        fs::write(outside.join("secret"), &secret).unwrap();
        fs::write(outside.join("outside-only-name"), &secret).unwrap();
        let script = swap_script(&outside);
        let _swapper = Swapper(
            std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(&script)
                .current_dir(&sb)
                .spawn()
                .unwrap(),
        );

        let images = Arc::new(
            ImageStore::open(
                dir.path().join("images"),
                ImportLimits {
                    max_archive_bytes: 1 << 20,
                    max_unpacked_bytes: 1 << 20,
                },
            )
            .unwrap(),
        );
        let (events, mut events_rx) = tokio::sync::mpsc::channel(16);
        // Followers are told the task has ended, so each drains what it can and stops.
        tokio::spawn(async move {
            while let Some(ev) = events_rx.recv().await {
                if let StateRequest::TaskActive { reply, .. } = ev {
                    let _ = reply.send(false);
                }
            }
        });
        let service = AgentApiService::new(layout.clone(), Outbox::new(events), images);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(pb::agent_api_server::AgentApiServer::new(service))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let mut client = AgentApiClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        hammer_swaps(&mut client, "fw", "t").await;
        fs::write(sb.join("stop"), b"").unwrap();
        server.abort();
    }
}
