//! The agent↔master stream.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Request, Response, Status, Streaming};

use drover_proto::pb::{self, agent_master_server::AgentMaster};

use crate::leader::Master;

pub struct AgentService {
    pub master: Arc<Master>,
}

type Outbound = Pin<Box<dyn Stream<Item = Result<pb::MasterMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentMaster for AgentService {
    type SessionStream = Outbound;

    async fn session(
        &self,
        req: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Outbound>, Status> {
        let rx = self.master.agent_session(req.into_inner()).await?;
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
