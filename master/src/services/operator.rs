//! The operator service: inspection and operations on the cluster.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Request, Response, Status};

use drover_proto::pb::{self, operator_server::Operator};
use drover_proto::{FrameworkId, Resources};

use crate::leader::{propose_status, Master};
use crate::metrics::Gauge;
use crate::raft::node::MembershipChange;
use crate::raft::ProposeError;
use crate::registry::{AgentState, Command, TaskRec};

pub struct OperatorService {
    pub master: Arc<Master>,
}

fn task_summary(t: &TaskRec) -> pb::TaskSummary {
    pb::TaskSummary {
        usage: None,
        framework_id: Some(t.framework_id.clone()),
        task_id: Some(t.task_id()),
        name: t.info.name.clone(),
        agent_id: Some(t.agent_id.clone()),
        state: t.state,
        resources: t.resources.to_proto(),
        last_status: t.last_status.clone(),
    }
}

impl Master {
    pub fn agent_summaries(&self) -> Vec<pb::AgentSummary> {
        let soft = self.soft();
        let reg = self.registry();
        let mut offered: BTreeMap<_, Resources> = BTreeMap::new();
        for o in soft.offers.values() {
            offered
                .entry(o.agent_id.clone())
                .or_default()
                .add(&o.resources);
        }
        let mut counts: BTreeMap<_, u32> = BTreeMap::new();
        for t in reg.tasks.values() {
            *counts.entry(t.agent_id.clone()).or_default() += 1;
        }
        reg.agents
            .values()
            .map(|a| {
                use pb::agent_summary::State;
                let state = match a.state {
                    AgentState::Unreachable => State::Unreachable,
                    AgentState::Active if soft.agents.contains_key(&a.id) => State::Active,
                    AgentState::Active => State::Disconnected,
                };
                pb::AgentSummary {
                    id: Some(a.id.clone()),
                    hostname: a.info.hostname.clone(),
                    address: a.info.address.clone(),
                    state: state as i32,
                    total: a.total.to_proto(),
                    allocated: a.used.to_proto(),
                    offered: offered.get(&a.id).map(|r| r.to_proto()).unwrap_or_default(),
                    attributes: a.info.attributes.clone(),
                    task_count: counts.get(&a.id).copied().unwrap_or(0),
                    registered_at: a.registered_ms as f64 / 1000.0,
                }
            })
            .collect()
    }

    pub fn framework_summaries(&self) -> Vec<pb::FrameworkSummary> {
        let soft = self.soft();
        let reg = self.registry();
        let mut offered: BTreeMap<FrameworkId, Resources> = BTreeMap::new();
        for o in soft.offers.values() {
            offered
                .entry(o.framework_id.clone())
                .or_default()
                .add(&o.resources);
        }
        let mut active: BTreeMap<FrameworkId, u32> = BTreeMap::new();
        for t in reg.tasks.values() {
            *active.entry(t.framework_id.clone()).or_default() += 1;
        }
        reg.frameworks
            .values()
            .map(|f| {
                let conn = soft.frameworks.get(&f.id);
                let deadline = if conn.is_some() {
                    0.0
                } else {
                    let since = f
                        .disconnected_ms
                        .unwrap_or(soft.elected_ms)
                        .max(soft.elected_ms);
                    since.saturating_add(f.failover_timeout_ms()) as f64 / 1000.0
                };
                pb::FrameworkSummary {
                    id: Some(f.id.clone()),
                    info: Some(f.info.clone()),
                    connected: conn.is_some(),
                    suppressed: conn.is_some_and(|c| c.suppressed),
                    allocated: f.used.to_proto(),
                    offered: offered.get(&f.id).map(|r| r.to_proto()).unwrap_or_default(),
                    active_tasks: active.get(&f.id).copied().unwrap_or(0),
                    completed_tasks: f.completed_tasks.min(u32::MAX as u64) as u32,
                    failover_deadline: deadline,
                    unmet_demand: String::new(),
                }
            })
            .collect()
    }

    pub fn task_summaries(
        &self,
        fw: Option<&FrameworkId>,
        completed: bool,
    ) -> (Vec<pb::TaskSummary>, Vec<pb::TaskSummary>) {
        // Soft state before the registry, as everywhere else (lock order).
        let usage = self.soft().usage.clone();
        let reg = self.registry();
        let keep = |t: &&TaskRec| fw.is_none_or(|f| &t.framework_id == f);
        let mut active: Vec<&TaskRec> = reg.tasks.values().filter(keep).collect();
        active.sort_by(|a, b| {
            a.launched_ms
                .cmp(&b.launched_ms)
                .then_with(|| a.key().cmp(&b.key()))
        });
        let done = if completed {
            reg.completed
                .iter()
                .filter_map(|k| reg.completed_tasks.get(k))
                .filter(keep)
                .map(task_summary)
                .collect()
        } else {
            Vec::new()
        };
        let with_usage = |t: &TaskRec| pb::TaskSummary {
            usage: usage
                .get(&t.agent_id)
                .and_then(|per_task| per_task.get(&t.key()))
                .cloned(),
            ..task_summary(t)
        };
        (active.into_iter().map(with_usage).collect(), done)
    }

    pub fn role_summaries(&self) -> Vec<pb::RoleSummary> {
        let reg = self.registry();
        let mut roles: BTreeMap<String, pb::RoleSummary> = BTreeMap::new();
        for (name, w) in &reg.weights {
            roles.insert(
                name.clone(),
                pb::RoleSummary {
                    name: name.clone(),
                    weight: *w,
                    ..Default::default()
                },
            );
        }
        let mut alloc: BTreeMap<String, Resources> = BTreeMap::new();
        for f in reg.frameworks.values() {
            let role = f.role().to_string();
            let e = roles
                .entry(role.clone())
                .or_insert_with(|| pb::RoleSummary {
                    name: role.clone(),
                    weight: reg.weight(&role),
                    ..Default::default()
                });
            e.frameworks.push(f.id.clone());
            alloc.entry(role).or_default().add(&f.used);
        }
        for (role, r) in alloc {
            if let Some(e) = roles.get_mut(&role) {
                e.allocated = r.to_proto();
            }
        }
        roles.into_values().collect()
    }

    pub fn master_info(&self) -> pb::MasterInfo {
        pb::MasterInfo {
            id: self.config.id,
            address: self.config.listen.to_string(),
            term: self.raft.role().term,
        }
    }

    /// Refreshes the gauges exported with the metrics.
    pub fn update_gauges(&self) {
        let soft = self.soft();
        let reg = self.registry();
        let mut by_state: BTreeMap<&'static str, i64> = BTreeMap::new();
        for t in reg.tasks.values() {
            *by_state
                .entry(drover_proto::states::name(t.state()))
                .or_default() += 1;
        }
        let gauge = |name: &str, help: &str, value: i64| Gauge {
            name: name.to_string(),
            help: help.to_string(),
            value,
        };
        let mut g = vec![
            gauge(
                "drover_master_is_leader",
                "1 when this master serves as leader.",
                i64::from(soft.serving),
            ),
            gauge(
                "drover_master_agents_registered",
                "Agents in the registry.",
                reg.agents.len() as i64,
            ),
            gauge(
                "drover_master_agents_connected",
                "Agents connected to this leader.",
                soft.agents.len() as i64,
            ),
            gauge(
                "drover_master_frameworks_registered",
                "Frameworks in the registry.",
                reg.frameworks.len() as i64,
            ),
            gauge(
                "drover_master_frameworks_connected",
                "Frameworks subscribed to this leader.",
                soft.frameworks.len() as i64,
            ),
            gauge(
                "drover_master_offers_outstanding",
                "Offers not yet used.",
                soft.offers.len() as i64,
            ),
            gauge(
                "drover_master_tasks_active",
                "Non-terminal tasks.",
                reg.tasks.len() as i64,
            ),
            gauge(
                "drover_master_raft_term",
                "Current Raft term.",
                soft.term as i64,
            ),
        ];
        for (state, n) in by_state {
            g.push(gauge(
                &format!("drover_master_tasks_{}", state.to_lowercase()),
                &format!("Tasks in state {state}."),
                n,
            ));
        }
        self.metrics.set_gauges(g);
    }
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
        .map_err(|_| Status::invalid_argument(format!("master address '{addr}' is not HOST:PORT")))
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
        let serving = self.master.soft().serving;
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
        let (tasks, completed_tasks) = self.master.task_summaries(None, true);
        Ok(Response::new(pb::GetStateResponse {
            master_info: Some(self.master.master_info()),
            agents: self.master.agent_summaries(),
            frameworks: self.master.framework_summaries(),
            tasks,
            completed_tasks,
            roles: self.master.role_summaries(),
        }))
    }

    async fn get_agents(
        &self,
        _: Request<pb::GetAgentsRequest>,
    ) -> Result<Response<pb::GetAgentsResponse>, Status> {
        self.master.ensure_leader()?;
        Ok(Response::new(pb::GetAgentsResponse {
            agents: self.master.agent_summaries(),
        }))
    }

    async fn get_frameworks(
        &self,
        _: Request<pb::GetFrameworksRequest>,
    ) -> Result<Response<pb::GetFrameworksResponse>, Status> {
        self.master.ensure_leader()?;
        Ok(Response::new(pb::GetFrameworksResponse {
            frameworks: self.master.framework_summaries(),
        }))
    }

    async fn get_tasks(
        &self,
        req: Request<pb::GetTasksRequest>,
    ) -> Result<Response<pb::GetTasksResponse>, Status> {
        self.master.ensure_leader()?;
        let r = req.into_inner();
        let fw = r.framework_id.filter(|f| !f.is_empty());
        let (tasks, completed_tasks) = self.master.task_summaries(fw.as_ref(), r.include_completed);
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
            roles: self.master.role_summaries(),
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
            crate::leader::validate_role(&w.role).map_err(Status::invalid_argument)?;
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
        let fw = req
            .into_inner()
            .framework_id
            .filter(|f| !f.is_empty())
            .ok_or_else(|| Status::invalid_argument("teardown needs a framework_id"))?;
        if !self.master.registry().frameworks.contains_key(&fw) {
            return Err(Status::not_found(format!("framework {fw} is unknown")));
        }
        self.master
            .remove_framework(fw, "torn down by an operator")
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
                r.address
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
            .map_err(|e| match e {
                ProposeError::NotLeader => self.master.not_leader(),
                e => propose_status(e),
            })?;
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
                    "removing master {id} would leave {live} of {} voters reachable, fewer than                      a majority; bring the others back (or add a replacement) first",
                    remaining.len()
                )));
            }
        }
        if id == self.master.config.id {
            // A leader cannot remove itself cleanly: hand over, and let the caller retry
            // at the new leader (the NotLeader status names it).
            self.master.raft.transfer_leadership(0);
            self.master.wait_leadership_moved().await;
            return Err(self.master.not_leader());
        }
        self.master
            .raft
            .propose_change(MembershipChange::Remove { id })
            .await
            .map_err(|e| match e {
                ProposeError::NotLeader => self.master.not_leader(),
                e => propose_status(e),
            })?;
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
