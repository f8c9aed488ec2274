//! The operator service: inspection and operations on the cluster.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Request, Response, Status};

use drover_proto::pb::{self, operator_server::Operator};

use crate::raft::node::MembershipChange;
use crate::registry::Command;
use crate::server::{propose_error, Master};
use crate::views;

pub struct OperatorService {
    pub master: Arc<Master>,
}

type Events = Pin<Box<dyn Stream<Item = Result<pb::OperatorEvent, Status>> + Send>>;
type BackupStream = Pin<Box<dyn Stream<Item = Result<pb::BackupChunk, Status>> + Send>>;

/// Size of one backup chunk.
const BACKUP_CHUNK_BYTES: usize = 1024 * 1024;

impl Master {
    /// Every member with its role and (on the leader) replication progress.
    pub fn master_members(&self) -> Vec<pb::MasterMember> {
        use pb::master_member::Role;
        let (voters, learners) = self.raft.configuration();
        let progress = self.raft.members();
        let role = self.raft.role();
        voters
            .iter()
            .map(|id| (*id, Role::Voter))
            .chain(learners.iter().map(|id| (*id, Role::Learner)))
            .map(|(id, r)| {
                let p = progress.iter().find(|p| p.id == id);
                pb::MasterMember {
                    id,
                    address: self.peer_address(id).unwrap_or_default(),
                    role: r as i32,
                    is_leader: role.is_leader && id == self.config.id
                        || !role.is_leader && id == role.leader_id,
                    match_index: p.map(|p| p.matched).unwrap_or(0),
                    recently_active: p.is_some_and(|p| p.recently_active),
                }
            })
            .collect()
    }

    /// Waits (up to two election timeouts) until this master no longer leads; returns the
    /// new leader's id when one is known.
    async fn wait_leadership_moved(&self) -> Option<u64> {
        let mut rx = self.raft.watch_role();
        let limit = self.config.raft_tick * (self.config.raft_election_ticks as u32) * 2;
        let moved = tokio::time::timeout(limit, rx.wait_for(|r| !r.is_leader && r.leader_id != 0))
            .await
            .ok()?
            .ok()?;
        Some(moved.leader_id)
    }
}

/// Validates an `AddMaster` address: `HOST:PORT`.
fn valid_master_address(addr: &str) -> Result<(), Status> {
    crate::config::parse_peers(&format!("1={addr}"))
        .map(|_| ())
        .map_err(|_| {
            Status::invalid_argument(format!(
                "master address '{}' is not HOST:PORT",
                drover_proto::quote(addr)
            ))
        })
}

fn later(what: &str, issue: &str) -> Status {
    Status::unimplemented(format!("{what} arrives with {issue}"))
}

#[tonic::async_trait]
impl Operator for OperatorService {
    type SubscribeStream = Events;

    async fn get_health(
        &self,
        _: Request<pb::GetHealthRequest>,
    ) -> Result<Response<pb::GetHealthResponse>, Status> {
        let serving = self.master.serving();
        let (cluster_id, registry_version) = {
            let reg = self.master.registry();
            (
                reg.cluster_id
                    .as_ref()
                    .map(|c| c.to_string())
                    .unwrap_or_default(),
                reg.version,
            )
        };
        Ok(Response::new(pb::GetHealthResponse {
            healthy: true,
            leader: serving,
            master_info: Some(self.master.master_info()),
            leader_address: self.master.leader_address().unwrap_or_default(),
            cluster_id,
            registry_version,
            max_registry_version: self.master.config.max_registry_version,
        }))
    }

    async fn get_state(
        &self,
        _: Request<pb::GetStateRequest>,
    ) -> Result<Response<pb::GetStateResponse>, Status> {
        self.master.ensure_leader()?;
        let info = self.master.master_info();
        Ok(Response::new(
            self.master
                .view(|reg, leader| views::state(reg, leader, info)),
        ))
    }

    async fn get_agents(
        &self,
        _: Request<pb::GetAgentsRequest>,
    ) -> Result<Response<pb::GetAgentsResponse>, Status> {
        self.master.ensure_leader()?;
        Ok(Response::new(pb::GetAgentsResponse {
            agents: self.master.view(views::agent_summaries),
        }))
    }

    async fn get_frameworks(
        &self,
        _: Request<pb::GetFrameworksRequest>,
    ) -> Result<Response<pb::GetFrameworksResponse>, Status> {
        self.master.ensure_leader()?;
        Ok(Response::new(pb::GetFrameworksResponse {
            frameworks: self.master.view(views::framework_summaries),
        }))
    }

    async fn get_tasks(
        &self,
        req: Request<pb::GetTasksRequest>,
    ) -> Result<Response<pb::GetTasksResponse>, Status> {
        self.master.ensure_leader()?;
        let r = req.into_inner();
        let fw = r.framework_id.filter(|f| !f.is_empty());
        let (tasks, completed_tasks) = self.master.view(|reg, leader| {
            views::task_summaries(reg, leader, fw.as_ref(), r.include_completed)
        });
        Ok(Response::new(pb::GetTasksResponse {
            tasks,
            completed_tasks,
        }))
    }

    async fn get_roles(
        &self,
        _: Request<pb::GetRolesRequest>,
    ) -> Result<Response<pb::GetRolesResponse>, Status> {
        self.master.ensure_leader()?;
        Ok(Response::new(pb::GetRolesResponse {
            roles: self.master.view(|reg, _| views::role_summaries(reg)),
        }))
    }

    async fn get_metrics(
        &self,
        _: Request<pb::GetMetricsRequest>,
    ) -> Result<Response<pb::GetMetricsResponse>, Status> {
        self.master.ensure_leader()?;
        self.master.update_gauges();
        Ok(Response::new(pb::GetMetricsResponse {
            prometheus_text: self.master.metrics.render(),
        }))
    }

    async fn update_weights(
        &self,
        req: Request<pb::UpdateWeightsRequest>,
    ) -> Result<Response<pb::UpdateWeightsResponse>, Status> {
        self.master.ensure_leader()?;
        let mut weights = Vec::new();
        for w in req.into_inner().weights {
            crate::leader::validate_role(&w.role)?;
            if !(w.weight.is_finite() && w.weight > 0.0 && w.weight <= 1e6) {
                return Err(Status::invalid_argument(format!(
                    "weight of role '{}' must be positive, got {}",
                    w.role, w.weight
                )));
            }
            weights.push((w.role, w.weight));
        }
        self.master.propose(Command::SetWeights { weights }).await?;
        self.master.allocate_now.notify_one();
        Ok(Response::new(pb::UpdateWeightsResponse {}))
    }

    async fn update_quota(
        &self,
        _: Request<pb::UpdateQuotaRequest>,
    ) -> Result<Response<pb::UpdateQuotaResponse>, Status> {
        self.master.ensure_leader()?;
        Err(later("quota", "the quotas and reservations issue"))
    }

    async fn get_maintenance(
        &self,
        _: Request<pb::GetMaintenanceRequest>,
    ) -> Result<Response<pb::GetMaintenanceResponse>, Status> {
        self.master.ensure_leader()?;
        Err(later("maintenance", "the maintenance and draining issue"))
    }

    async fn update_maintenance(
        &self,
        _: Request<pb::UpdateMaintenanceRequest>,
    ) -> Result<Response<pb::UpdateMaintenanceResponse>, Status> {
        self.master.ensure_leader()?;
        Err(later("maintenance", "the maintenance and draining issue"))
    }

    async fn reserve_resources(
        &self,
        _: Request<pb::ReserveResourcesRequest>,
    ) -> Result<Response<pb::ReserveResourcesResponse>, Status> {
        self.master.ensure_leader()?;
        Err(later("reservations", "the quotas and reservations issue"))
    }

    async fn unreserve_resources(
        &self,
        _: Request<pb::UnreserveResourcesRequest>,
    ) -> Result<Response<pb::UnreserveResourcesResponse>, Status> {
        self.master.ensure_leader()?;
        Err(later("reservations", "the quotas and reservations issue"))
    }

    async fn create_volumes(
        &self,
        _: Request<pb::CreateVolumesRequest>,
    ) -> Result<Response<pb::CreateVolumesResponse>, Status> {
        self.master.ensure_leader()?;
        Err(later("persistent volumes", "the stateful frameworks issue"))
    }

    async fn destroy_volumes(
        &self,
        _: Request<pb::DestroyVolumesRequest>,
    ) -> Result<Response<pb::DestroyVolumesResponse>, Status> {
        self.master.ensure_leader()?;
        Err(later("persistent volumes", "the stateful frameworks issue"))
    }

    async fn teardown_framework(
        &self,
        req: Request<pb::TeardownFrameworkRequest>,
    ) -> Result<Response<pb::TeardownFrameworkResponse>, Status> {
        self.master.ensure_leader()?;
        self.master
            .teardown_by_operator(req.into_inner().framework_id)
            .await?;
        Ok(Response::new(pb::TeardownFrameworkResponse {}))
    }

    async fn subscribe(
        &self,
        _: Request<pb::OperatorSubscribeRequest>,
    ) -> Result<Response<Events>, Status> {
        self.master.ensure_leader()?;
        Err(later("the operator event stream", "the web UI issue"))
    }

    async fn list_masters(
        &self,
        _: Request<pb::ListMastersRequest>,
    ) -> Result<Response<pb::ListMastersResponse>, Status> {
        self.master.ensure_leader()?;
        let role = self.master.raft.role();
        let (commit_index, _, _) = self.master.raft.progress();
        Ok(Response::new(pb::ListMastersResponse {
            masters: self.master.master_members(),
            leader_id: role.leader_id,
            term: role.term,
            commit_index,
        }))
    }

    async fn add_master(
        &self,
        req: Request<pb::AddMasterRequest>,
    ) -> Result<Response<pb::AddMasterResponse>, Status> {
        self.master.ensure_leader()?;
        let r = req.into_inner();
        if r.id == 0 {
            return Err(Status::invalid_argument(
                "a master id must be a positive integer",
            ));
        }
        valid_master_address(&r.address)?;
        let (voters, learners) = self.master.raft.configuration();
        if voters.contains(&r.id) || learners.contains(&r.id) {
            let known = self.master.peer_address(r.id).unwrap_or_default();
            if known == r.address {
                // Already done (a retried call, or `--join` after `drover masters add`).
                return Ok(Response::new(pb::AddMasterResponse {
                    masters: self.master.master_members(),
                }));
            }
            return Err(Status::already_exists(format!(
                "master {} is already a member, at {known}",
                r.id
            )));
        }
        let book = self.master.raft.master_addresses();
        if let Some((other, _)) = book.iter().find(|(id, a)| **id != r.id && **a == r.address) {
            return Err(Status::already_exists(format!(
                "address {} belongs to master {other}",
                drover_proto::quote(&r.address)
            )));
        }
        // Held until the change is applied: no version raise may slip in between.
        let _serialized = self.master.version_lock.lock().await;
        if r.max_registry_version != 0 {
            let recorded = self.master.registry().version;
            crate::registry::version::check_member(r.id, r.max_registry_version, recorded)
                .map_err(|e| Status::failed_precondition(e.to_string()))?;
        }
        self.master
            .raft
            .propose_change(MembershipChange::AddLearner {
                id: r.id,
                address: r.address.clone(),
            })
            .await
            .map_err(|e| self.master.named(propose_error(e)))?;
        tracing::info!(id = r.id, address = %r.address, "master added as a learner");
        Ok(Response::new(pb::AddMasterResponse {
            masters: self.master.master_members(),
        }))
    }

    async fn remove_master(
        &self,
        req: Request<pb::RemoveMasterRequest>,
    ) -> Result<Response<pb::RemoveMasterResponse>, Status> {
        self.master.ensure_leader()?;
        let id = req.into_inner().id;
        let (voters, learners) = self.master.raft.configuration();
        if !voters.contains(&id) && !learners.contains(&id) {
            return Err(Status::not_found(format!("master {id} is not a member")));
        }
        if voters.contains(&id) {
            if voters.len() == 1 {
                return Err(Status::failed_precondition(
                    "cannot remove the last voting master",
                ));
            }
            // Refuse a removal that leaves too few live voters to commit anything.
            let members = self.master.raft.members();
            let remaining: Vec<u64> = voters.iter().copied().filter(|v| *v != id).collect();
            let live = remaining
                .iter()
                .filter(|v| members.iter().any(|m| m.id == **v && m.recently_active))
                .count();
            if live < remaining.len() / 2 + 1 {
                return Err(Status::failed_precondition(format!(
                    "removing master {id} would leave {live} of {} voters reachable, fewer than a \
                     majority; bring the others back (or add a replacement) first",
                    remaining.len()
                )));
            }
        }
        if id == self.master.config.id {
            // A leader cannot remove itself cleanly: hand over, and let the caller retry
            // at the new leader (the NotLeader status names it).
            self.master.raft.transfer_leadership(0);
            self.master.wait_leadership_moved().await;
            return Err(self.master.not_leader().into());
        }
        self.master
            .raft
            .propose_change(MembershipChange::Remove { id })
            .await
            .map_err(|e| self.master.named(propose_error(e)))?;
        tracing::info!(id, "master removed");
        Ok(Response::new(pb::RemoveMasterResponse {
            masters: self.master.master_members(),
        }))
    }

    async fn transfer_leadership(
        &self,
        req: Request<pb::TransferLeadershipRequest>,
    ) -> Result<Response<pb::TransferLeadershipResponse>, Status> {
        self.master.ensure_leader()?;
        let to = req.into_inner().to;
        let (voters, _) = self.master.raft.configuration();
        if to == self.master.config.id {
            return Ok(Response::new(pb::TransferLeadershipResponse {
                leader_id: to,
            }));
        }
        if to != 0 && !voters.contains(&to) {
            return Err(Status::invalid_argument(format!(
                "master {to} is not a voting member"
            )));
        }
        if voters.len() < 2 {
            return Err(Status::failed_precondition(
                "there is no other voting master to hand leadership to",
            ));
        }
        self.master.raft.transfer_leadership(to);
        match self.master.wait_leadership_moved().await {
            Some(leader_id) => Ok(Response::new(pb::TransferLeadershipResponse { leader_id })),
            None => Err(Status::deadline_exceeded(
                "leadership did not move within two election timeouts; is the target caught up and reachable?",
            )),
        }
    }

    type BackupStream = BackupStream;

    async fn backup(
        &self,
        _: Request<pb::BackupRequest>,
    ) -> Result<Response<BackupStream>, Status> {
        self.master.ensure_leader()?;
        // A barrier: once it is applied, the registry holds everything committed before
        // this call.
        self.master.propose(Command::Noop).await?;
        let (data, index) = {
            let reg = self.master.registry();
            let (_, applied, _) = self.master.raft.progress();
            (reg.to_snapshot(), applied)
        };
        let term = self.master.raft.role().term;
        let size = data.len() as u64;
        let mut chunks: Vec<Result<pb::BackupChunk, Status>> = data
            .chunks(BACKUP_CHUNK_BYTES)
            .map(|c| {
                Ok(pb::BackupChunk {
                    data: c.to_vec(),
                    ..Default::default()
                })
            })
            .collect();
        if chunks.is_empty() {
            chunks.push(Ok(pb::BackupChunk::default()));
        }
        if let Some(Ok(first)) = chunks.first_mut() {
            first.index = index;
            first.term = term;
            first.size = size;
        }
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }
}
