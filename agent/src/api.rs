//! The agent's gRPC services on `--listen`: `AgentApi` (files API, state and the image
//! store) and `Executor` (custom executors, not implemented yet).

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use drover_proto::pb::{
    self, agent_api_server::AgentApi, executor_server::Executor, ExecutorEvent,
};
use futures::Stream;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status, Streaming};

use crate::agent::Event;
use crate::files_api;
use crate::images::{ImageRecord, ImageStore};
use crate::layout::Layout;

/// Largest `ImportImageChunk.data` accepted.
pub const MAX_IMAGE_CHUNK: usize = 1 << 20;

/// `AgentApi`: file reads and image imports run on the blocking pool; state questions go
/// to the agent loop.
pub struct AgentApiService {
    layout: Layout,
    events: mpsc::Sender<Event>,
    images: Arc<ImageStore>,
}

impl AgentApiService {
    pub fn new(layout: Layout, events: mpsc::Sender<Event>, images: Arc<ImageStore>) -> Self {
        AgentApiService {
            layout,
            events,
            images,
        }
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
        imported_at: r.imported_at,
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

fn ids(fw: Option<pb::FrameworkId>, task: Option<pb::TaskId>) -> (String, String) {
    (
        fw.map(|f| f.value).unwrap_or_default(),
        task.map(|t| t.value).unwrap_or_default(),
    )
}

#[tonic::async_trait]
impl AgentApi for AgentApiService {
    async fn read_file(
        &self,
        request: Request<pb::ReadFileRequest>,
    ) -> Result<Response<pb::ReadFileResponse>, Status> {
        let r = request.into_inner();
        let (fw, task) = ids(r.framework_id, r.task_id);
        let layout = self.layout.clone();
        tokio::task::spawn_blocking(move || {
            files_api::read_file(&layout, &fw, &task, &r.path, r.offset, r.length)
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
        let (fw, task) = ids(r.framework_id, r.task_id);
        let layout = self.layout.clone();
        tokio::task::spawn_blocking(move || files_api::list_files(&layout, &fw, &task, &r.path))
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
        self.events
            .send(Event::GetState(tx))
            .await
            .map_err(|_| Status::unavailable("the agent is shutting down"))?;
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
            store.import(&path, name.as_deref(), format.trim())
        })
        .await
        .map_err(|e| Status::internal(format!("image import panicked: {e}")))?
        .map_err(|e| e.to_status())?;
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
            .map_err(|e| e.to_status())?;
        Ok(Response::new(pb::RemoveImageResponse {
            image: Some(image_summary(&removed)),
        }))
    }
}

const NO_EXECUTORS: &str = "custom executors arrive with the containers issue";

/// `Executor`: every call answers UNIMPLEMENTED until custom executors exist.
pub struct ExecutorService;

#[tonic::async_trait]
impl Executor for ExecutorService {
    type SubscribeStream = Pin<Box<dyn Stream<Item = Result<ExecutorEvent, Status>> + Send>>;

    async fn subscribe(
        &self,
        _request: Request<pb::ExecutorSubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        Err(Status::unimplemented(NO_EXECUTORS))
    }

    async fn update(
        &self,
        _request: Request<pb::ExecutorUpdateCall>,
    ) -> Result<Response<pb::ExecutorCallResponse>, Status> {
        Err(Status::unimplemented(NO_EXECUTORS))
    }

    async fn message(
        &self,
        _request: Request<pb::ExecutorMessageCall>,
    ) -> Result<Response<pb::ExecutorCallResponse>, Status> {
        Err(Status::unimplemented(NO_EXECUTORS))
    }
}
