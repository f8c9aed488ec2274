//! The scheduler service (frameworks' API).

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Request, Response, Status};

use drover_proto::pb::{self, scheduler_server::Scheduler};

use super::GuardedStream;
use crate::leader::Master;

pub struct SchedulerService {
    pub master: Arc<Master>,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

fn ok() -> Result<Response<pb::CallResponse>, Status> {
    Ok(Response::new(pb::CallResponse {}))
}

#[tonic::async_trait]
impl Scheduler for SchedulerService {
    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let (fw, stream_id, rx) = self.master.subscribe(req.into_inner()).await?;
        let master = self.master.clone();
        let stream = GuardedStream::new(rx, move || {
            tokio::spawn(async move { master.framework_disconnected(fw, stream_id).await });
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn accept(
        &self,
        req: Request<pb::AcceptCall>,
    ) -> Result<Response<pb::CallResponse>, Status> {
        self.master.accept(req.into_inner()).await?;
        ok()
    }

    async fn decline(
        &self,
        req: Request<pb::DeclineCall>,
    ) -> Result<Response<pb::CallResponse>, Status> {
        self.master.decline(req.into_inner())?;
        ok()
    }

    async fn revive(
        &self,
        req: Request<pb::ReviveCall>,
    ) -> Result<Response<pb::CallResponse>, Status> {
        self.master
            .revive_or_suppress(req.get_ref().header.as_ref(), true)?;
        ok()
    }

    async fn suppress(
        &self,
        req: Request<pb::SuppressCall>,
    ) -> Result<Response<pb::CallResponse>, Status> {
        self.master
            .revive_or_suppress(req.get_ref().header.as_ref(), false)?;
        ok()
    }

    async fn kill(&self, req: Request<pb::KillCall>) -> Result<Response<pb::CallResponse>, Status> {
        self.master.kill(req.into_inner())?;
        ok()
    }

    async fn shutdown(
        &self,
        req: Request<pb::ShutdownCall>,
    ) -> Result<Response<pb::CallResponse>, Status> {
        self.master.shutdown_executor(req.into_inner())?;
        ok()
    }

    async fn acknowledge(
        &self,
        req: Request<pb::AcknowledgeCall>,
    ) -> Result<Response<pb::CallResponse>, Status> {
        self.master.acknowledge(req.into_inner())?;
        ok()
    }

    async fn reconcile(
        &self,
        req: Request<pb::ReconcileCall>,
    ) -> Result<Response<pb::CallResponse>, Status> {
        self.master.reconcile(req.into_inner())?;
        ok()
    }

    async fn message(
        &self,
        req: Request<pb::MessageCall>,
    ) -> Result<Response<pb::CallResponse>, Status> {
        self.master.message_executor(req.into_inner())?;
        ok()
    }

    async fn teardown(
        &self,
        req: Request<pb::TeardownCall>,
    ) -> Result<Response<pb::CallResponse>, Status> {
        let fw = self.master.check_caller(req.get_ref().header.as_ref())?;
        self.master
            .remove_framework(fw, "torn down by the framework")
            .await?;
        ok()
    }
}
