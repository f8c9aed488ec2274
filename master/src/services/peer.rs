//! The `RaftPeer` service: Raft messages from the other masters, and a read-only view of
//! this master's Raft progress and applied registry.

use std::sync::Arc;

use futures::StreamExt;
use protobuf::Message as PbMessage;
use raft::prelude::{Message, MessageType};
use tonic::{Request, Response, Status, Streaming};

use drover_proto::pb::{self, raft_peer_server::RaftPeer};

use crate::server::Master;

pub struct PeerService {
    pub master: Arc<Master>,
}

impl PeerService {
    /// Raft traffic is accepted only from masters this one knows (members of the
    /// cluster, as the address book says).
    fn check_peer(&self, from: u64) -> Result<(), Status> {
        if from == self.master.config.id || self.master.peer_address(from).is_none() {
            return Err(Status::permission_denied(format!(
                "master {from} is not a member of master {}'s cluster",
                self.master.config.id
            )));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn send(
        &self,
        req: Request<pb::RaftBatch>,
    ) -> Result<Response<pb::RaftBatchAck>, Status> {
        let batch = req.into_inner();
        self.check_peer(batch.from)?;
        self.master.raft.record_member_version(
            batch.from,
            crate::registry::version::reported(batch.max_registry_version),
        );
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

    async fn send_snapshot(
        &self,
        req: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::RaftBatchAck>, Status> {
        let mut stream = req.into_inner();
        let first = stream
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        self.check_peer(first.from)?;
        let mut msg = Message::parse_from_bytes(&first.message)
            .map_err(|e| Status::invalid_argument(format!("undecodable snapshot message: {e}")))?;
        if msg.get_msg_type() != MessageType::MsgSnapshot
            || msg.to != self.master.config.id
            || msg.from != first.from
        {
            return Err(Status::invalid_argument(
                "the first chunk must carry a snapshot message from its sender to this master",
            ));
        }
        // The registry is bounded (completed tasks are capped), so this refuses only
        // garbage; allocate as chunks arrive, not up front.
        const MAX_SNAPSHOT: u64 = 8 * 1024 * 1024 * 1024;
        if first.total_size > MAX_SNAPSHOT {
            return Err(Status::resource_exhausted("snapshot larger than 8 GiB"));
        }
        let mut data = first.data;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            data.extend_from_slice(&chunk.data);
            if data.len() as u64 > first.total_size {
                return Err(Status::invalid_argument("snapshot longer than announced"));
            }
        }
        if data.len() as u64 != first.total_size {
            return Err(Status::invalid_argument(format!(
                "snapshot stream ended after {} of {} bytes",
                data.len(),
                first.total_size
            )));
        }
        msg.mut_snapshot().set_data(data.into());
        self.master.raft.step(msg);
        Ok(Response::new(pb::RaftBatchAck {}))
    }

    async fn status(
        &self,
        _: Request<pb::RaftStatusRequest>,
    ) -> Result<Response<pb::RaftStatusResponse>, Status> {
        let role = self.master.raft.role();
        let (commit_index, applied_index, voters) = self.master.raft.progress();
        let (_, learners) = self.master.raft.configuration();
        let mut addresses: std::collections::HashMap<u64, String> = self
            .master
            .config
            .peers
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        addresses.extend(self.master.raft.master_addresses());
        addresses.insert(self.master.config.id, self.master.config.advertise.clone());
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
            learners,
            addresses,
            registry_version: reg.version,
            max_registry_version: self.master.config.max_registry_version,
            cluster_id: reg
                .cluster_id
                .as_ref()
                .map(|c| c.to_string())
                .unwrap_or_default(),
            test_marker: reg.test_marker.clone().unwrap_or_default(),
        }))
    }
}
