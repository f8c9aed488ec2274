//! The operator service: inspection and operations on the cluster.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Request, Response, Status};

use drover_proto::pb::{self, operator_server::Operator};
use drover_proto::{FrameworkId, Resources};

use crate::core::Master;
use crate::registry::{AgentState, Command, TaskRec};

pub struct OperatorService {
    pub master: Arc<Master>,
}

fn task_summary(t: &TaskRec) -> pb::TaskSummary {
    pb::TaskSummary {
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
        (active.into_iter().map(task_summary).collect(), done)
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
        let mut by_state: BTreeMap<&'static str, u64> = BTreeMap::new();
        for t in reg.tasks.values() {
            *by_state
                .entry(drover_proto::states::name(t.state()))
                .or_default() += 1;
        }
        let mut g = vec![
            (
                "drover_master_is_leader".to_string(),
                "1 when this master serves as leader.".to_string(),
                soft.serving as u8 as f64,
            ),
            (
                "drover_master_agents_registered".into(),
                "Agents in the registry.".into(),
                reg.agents.len() as f64,
            ),
            (
                "drover_master_agents_connected".into(),
                "Agents connected to this leader.".into(),
                soft.agents.len() as f64,
            ),
            (
                "drover_master_frameworks_registered".into(),
                "Frameworks in the registry.".into(),
                reg.frameworks.len() as f64,
            ),
            (
                "drover_master_frameworks_connected".into(),
                "Frameworks subscribed to this leader.".into(),
                soft.frameworks.len() as f64,
            ),
            (
                "drover_master_offers_outstanding".into(),
                "Offers not yet used.".into(),
                soft.offers.len() as f64,
            ),
            (
                "drover_master_tasks_active".into(),
                "Non-terminal tasks.".into(),
                reg.tasks.len() as f64,
            ),
            (
                "drover_master_raft_term".into(),
                "Current Raft term.".into(),
                soft.term as f64,
            ),
        ];
        for (state, n) in by_state {
            g.push((
                format!("drover_master_tasks_{}", state.to_lowercase()),
                format!("Tasks in state {state}."),
                n as f64,
            ));
        }
        self.metrics.set_gauges(g);
    }
}

type Events = Pin<Box<dyn Stream<Item = Result<pb::OperatorEvent, Status>> + Send>>;

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
        Ok(Response::new(pb::GetHealthResponse {
            healthy: true,
            leader: serving,
            master_info: Some(self.master.master_info()),
            leader_address: self.master.leader_address().unwrap_or_default(),
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
            crate::core::validate_role(&w.role).map_err(Status::invalid_argument)?;
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
}
