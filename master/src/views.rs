//! Operator views: what `GetState`, `GetAgents`, `GetFrameworks`, `GetTasks`, `GetRoles`,
//! `/state` and the gauges show, as pure functions of the registry and the leader's soft
//! state. The services and the HTTP routes call them under the master's locks
//! ([`crate::server::Master::view`]).

use std::collections::BTreeMap;

use drover_proto::pb;
use drover_proto::{FrameworkId, Resources};

use crate::leader::Leader;
use crate::metrics::Gauge;
use crate::registry::{AgentState, Registry, TaskRec};

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

/// Every agent of the registry, with what is offered of it and whether it is connected.
pub fn agent_summaries(reg: &Registry, leader: &Leader) -> Vec<pb::AgentSummary> {
    let mut offered: BTreeMap<_, Resources> = BTreeMap::new();
    for o in leader.offers.values() {
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
                AgentState::Active if leader.agents.contains_key(&a.id) => State::Active,
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

/// Every framework of the registry, with its connection and failover deadline.
pub fn framework_summaries(reg: &Registry, leader: &Leader) -> Vec<pb::FrameworkSummary> {
    let mut offered: BTreeMap<FrameworkId, Resources> = BTreeMap::new();
    for o in leader.offers.values() {
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
            let session = leader.frameworks.get(&f.id);
            let deadline = if session.is_some() {
                0.0
            } else {
                let since = f
                    .disconnected_ms
                    .unwrap_or(leader.elected_ms)
                    .max(leader.elected_ms);
                since.saturating_add(f.failover_timeout_ms()) as f64 / 1000.0
            };
            pb::FrameworkSummary {
                id: Some(f.id.clone()),
                info: Some(f.info.clone()),
                connected: session.is_some(),
                suppressed: session.is_some_and(|s| s.suppressed),
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

/// The active tasks (oldest launch first, with their latest usage) and, when asked, the
/// completed ones (oldest first), of one framework or all.
pub fn task_summaries(
    reg: &Registry,
    leader: &Leader,
    fw: Option<&FrameworkId>,
    completed: bool,
) -> (Vec<pb::TaskSummary>, Vec<pb::TaskSummary>) {
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
        usage: leader
            .usage
            .get(&t.agent_id)
            .and_then(|per_task| per_task.get(&t.key()))
            .cloned(),
        ..task_summary(t)
    };
    (active.into_iter().map(with_usage).collect(), done)
}

/// Every role with a weight or a framework, with its allocation.
pub fn role_summaries(reg: &Registry) -> Vec<pb::RoleSummary> {
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

/// The whole state (`GetState`, `/state`).
pub fn state(reg: &Registry, leader: &Leader, master_info: pb::MasterInfo) -> pb::GetStateResponse {
    let (tasks, completed_tasks) = task_summaries(reg, leader, None, true);
    pb::GetStateResponse {
        master_info: Some(master_info),
        agents: agent_summaries(reg, leader),
        frameworks: framework_summaries(reg, leader),
        tasks,
        completed_tasks,
        roles: role_summaries(reg),
    }
}

/// The gauges exported with the metrics.
pub fn gauges(reg: &Registry, leader: &Leader) -> Vec<Gauge> {
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
            i64::from(leader.serving),
        ),
        gauge(
            "drover_master_agents_registered",
            "Agents in the registry.",
            reg.agents.len() as i64,
        ),
        gauge(
            "drover_master_agents_connected",
            "Agents connected to this leader.",
            leader.agents.len() as i64,
        ),
        gauge(
            "drover_master_frameworks_registered",
            "Frameworks in the registry.",
            reg.frameworks.len() as i64,
        ),
        gauge(
            "drover_master_frameworks_connected",
            "Frameworks subscribed to this leader.",
            leader.frameworks.len() as i64,
        ),
        gauge(
            "drover_master_offers_outstanding",
            "Offers not yet used.",
            leader.offers.len() as i64,
        ),
        gauge(
            "drover_master_tasks_active",
            "Non-terminal tasks.",
            reg.tasks.len() as i64,
        ),
        gauge(
            "drover_master_raft_term",
            "Current Raft term.",
            leader.term as i64,
        ),
    ];
    for (state, n) in by_state {
        g.push(gauge(
            &format!("drover_master_tasks_{}", state.to_lowercase()),
            &format!("Tasks in state {state}."),
            n,
        ));
    }
    g
}
