//! The agent↔master stream.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Request, Response, Status, Streaming};

use drover_proto::pb::{self, agent_master_server::AgentMaster};

use crate::server::calls::REGISTER_TIMEOUT;
use crate::server::Master;

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
        let mut inbound = req.into_inner();
        self.master.await_known_leader().await;
        self.master.ensure_leader()?;
        let first = tokio::time::timeout(REGISTER_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Register message"))??
            .ok_or_else(|| Status::invalid_argument("stream ended before Register"))?;
        let Some(pb::agent_message::Msg::Register(register)) = first.msg else {
            return Err(Status::invalid_argument(
                "the first message on an agent stream must be Register",
            ));
        };
        let rx = self.master.agent_session(register, inbound).await?;
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
