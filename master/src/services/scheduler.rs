//! The scheduler service (frameworks' API).

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Request, Response, Status};

use drover_proto::pb::{self, scheduler_server::Scheduler};

use super::GuardedStream;
use crate::server::Master;

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
            master.framework_disconnected(fw, stream_id);
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
        let call = req.into_inner();
        self.master
            .run(|leader, reg, now| leader.decline(reg, now, call))
            .await?;
        ok()
    }

    async fn revive(
        &self,
        req: Request<pb::ReviveCall>,
    ) -> Result<Response<pb::CallResponse>, Status> {
        let header = req.into_inner().header;
        self.master
            .run(|leader, reg, _| leader.revive_or_suppress(reg, header.as_ref(), true))
            .await?;
        ok()
    }

    async fn suppress(
        &self,
        req: Request<pb::SuppressCall>,
    ) -> Result<Response<pb::CallResponse>, Status> {
        let header = req.into_inner().header;
        self.master
            .run(|leader, reg, _| leader.revive_or_suppress(reg, header.as_ref(), false))
            .await?;
        ok()
    }

    async fn kill(&self, req: Request<pb::KillCall>) -> Result<Response<pb::CallResponse>, Status> {
        let call = req.into_inner();
        self.master
            .run(|leader, reg, now| leader.kill(reg, now, call))
            .await?;
        ok()
    }

    async fn shutdown(
        &self,
        req: Request<pb::ShutdownCall>,
    ) -> Result<Response<pb::CallResponse>, Status> {
        let call = req.into_inner();
        self.master
            .run(|leader, reg, _| leader.shutdown_executor(reg, call))
            .await?;
        ok()
    }

    async fn acknowledge(
        &self,
        req: Request<pb::AcknowledgeCall>,
    ) -> Result<Response<pb::CallResponse>, Status> {
        let call = req.into_inner();
        self.master
            .run(|leader, reg, _| leader.acknowledge(reg, call))
            .await?;
        ok()
    }

    async fn reconcile(
        &self,
        req: Request<pb::ReconcileCall>,
    ) -> Result<Response<pb::CallResponse>, Status> {
        let call = req.into_inner();
        self.master
            .run(|leader, reg, now| leader.reconcile(reg, now, call))
            .await?;
        ok()
    }

    async fn message(
        &self,
        req: Request<pb::MessageCall>,
    ) -> Result<Response<pb::CallResponse>, Status> {
        let call = req.into_inner();
        self.master
            .run(|leader, reg, _| leader.message_executor(reg, call))
            .await?;
        ok()
    }

    async fn teardown(
        &self,
        req: Request<pb::TeardownCall>,
    ) -> Result<Response<pb::CallResponse>, Status> {
        self.master.teardown(req.into_inner().header).await?;
        ok()
    }
}
