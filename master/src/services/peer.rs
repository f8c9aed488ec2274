//! The `RaftPeer` service: Raft messages from the other masters, and a read-only view of
//! this master's Raft progress and applied registry.

use std::sync::Arc;

use protobuf::Message as PbMessage;
use raft::prelude::Message;
use tonic::{Request, Response, Status};

use drover_proto::pb::{self, raft_peer_server::RaftPeer};

use crate::core::Master;

pub struct PeerService {
    pub master: Arc<Master>,
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn send(
        &self,
        req: Request<pb::RaftBatch>,
    ) -> Result<Response<pb::RaftBatchAck>, Status> {
        let batch = req.into_inner();
        if !self.master.config.peers.contains_key(&batch.from) {
            return Err(Status::permission_denied(format!(
                "master {} is not a peer of master {}",
                batch.from, self.master.config.id
            )));
        }
        for bytes in batch.messages {
            let msg = Message::parse_from_bytes(&bytes)
                .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))?;
            if msg.to != self.master.config.id || msg.from != batch.from {
                return Err(Status::invalid_argument(format!(
                    "raft message from {} to {} sent by {} to master {}",
                    msg.from, msg.to, batch.from, self.master.config.id
                )));
            }
            self.master.raft.step(msg);
        }
        Ok(Response::new(pb::RaftBatchAck {}))
    }

    async fn status(
        &self,
        _: Request<pb::RaftStatusRequest>,
    ) -> Result<Response<pb::RaftStatusResponse>, Status> {
        let role = self.master.raft.role();
        let (commit_index, applied_index, voters) = self.master.raft.progress();
        let reg = self.master.registry();
        let mut completed_task_keys: Vec<String> = reg
            .completed
            .iter()
            .map(|k| format!("{}/{}", k.framework_id, k.task_id))
            .collect();
        completed_task_keys.sort();
        Ok(Response::new(pb::RaftStatusResponse {
            id: self.master.config.id,
            term: role.term,
            leader_id: role.leader_id,
            is_leader: role.is_leader,
            commit_index,
            applied_index,
            voters,
            agents: reg.agents.len() as u64,
            frameworks: reg.frameworks.len() as u64,
            active_tasks: reg.tasks.len() as u64,
            completed_tasks: reg.completed.len() as u64,
            completed_task_keys,
        }))
    }
}
