//! The agent's gRPC services on `--listen`: `AgentApi` (files API and state) and
//! `Executor` (custom executors, not implemented yet).

use std::pin::Pin;

use drover_proto::pb::{
    self, agent_api_server::AgentApi, executor_server::Executor, ExecutorEvent,
};
use futures::Stream;
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status};

use crate::agent::Event;
use crate::files_api;
use crate::layout::Layout;

/// `AgentApi`: file reads run on the blocking pool; state questions go to the agent loop.
pub struct AgentApiService {
    layout: Layout,
    events: mpsc::Sender<Event>,
}

impl AgentApiService {
    pub fn new(layout: Layout, events: mpsc::Sender<Event>) -> Self {
        AgentApiService { layout, events }
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
