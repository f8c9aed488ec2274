//! Agents: their sessions with the leader, liveness, and what the status-update batcher
//! does with a committed batch.

use std::collections::BTreeMap;

use drover_proto::pb::{self, agent_message::Msg as AgentMsg, master_message::Msg};
use drover_proto::{AgentId, Resources};

use super::{executor_runs_on, launches, valid_id, AgentSession, Effect, Farewell, Leader, Then};
use crate::error::MasterError;
use crate::metrics::Metrics;
use crate::registry::{
    AgentState, ApplyOutcome, Command, Registry, ReportedTask, StatusUpdate, TaskKey, UpdateOutcome,
};

/// Most status updates proposed in one Raft entry.
pub const MAX_BATCH: usize = 4096;
/// Most usage samples kept from one ping: an agent cannot grow the leader's memory
/// without bound.
const MAX_USAGE_ENTRIES: usize = 100_000;

fn invalid(msg: impl Into<String>) -> MasterError {
    MasterError::InvalidArgument(msg.into())
}

fn validate_register(r: &pb::agent_message::Register) -> Result<Resources, MasterError> {
    let info = r
        .info
        .as_ref()
        .ok_or_else(|| invalid("Register without agent info"))?;
    if let Some(id) = &r.agent_id {
        if !id.is_empty() {
            valid_id("agent", id.as_str())?;
        }
    }
    if info.address.is_empty() || info.address.len() > 256 || !info.address.contains(':') {
        return Err(invalid("agent address must be HOST:PORT"));
    }
    if info.hostname.len() > 256 || info.attributes.len() > 256 {
        return Err(invalid("agent hostname or attributes too large"));
    }
    let res = Resources::from_proto(&info.resources)
        .map_err(|e| invalid(format!("agent resources: {e}")))?;
    if res.cpus() <= 0.0 && res.mem() <= 0.0 {
        return Err(invalid("agent offers no cpus and no mem"));
    }
    if r.tasks.len() > 1_000_000 {
        return Err(invalid("agent reports too many tasks"));
    }
    Ok(res)
}

fn validate_update(u: &pb::agent_message::StatusUpdate) -> Result<(), MasterError> {
    let fw = u
        .framework_id
        .as_ref()
        .filter(|f| !f.is_empty())
        .ok_or_else(|| invalid("update without framework_id"))?;
    valid_id("framework", fw.as_str())?;
    let st = u
        .status
        .as_ref()
        .ok_or_else(|| invalid("update without status"))?;
    let task = st
        .task_id
        .as_ref()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| invalid("update without task_id"))?;
    valid_id("task", task.as_str())?;
    // 16 bytes, as agents make them: a framework acknowledges with this uuid, and the
    // master refuses any other length there (an update it could relay but never see
    // acknowledged would be retried for ever).
    if st.uuid.len() != 16 {
        return Err(invalid("update without a valid uuid (16 bytes)"));
    }
    let state = drover_proto::states::from_i32(st.state);
    if state == pb::TaskState::Unspecified {
        return Err(invalid(format!("update with invalid state {}", st.state)));
    }
    if st.message.len() > 64 * 1024 || st.data.len() > 1024 * 1024 {
        return Err(invalid("update message or data too large"));
    }
    Ok(())
}

impl Leader {
    /// An agent's Register, first step: checks it and proposes the (re)registration;
    /// [`Then::AgentRegistered`] opens the connection once it is applied. A new agent
    /// gets a fresh id.
    pub fn register_agent(
        &mut self,
        now_ms: u64,
        reg: pb::agent_message::Register,
    ) -> Result<Vec<Effect>, MasterError> {
        self.ensure_serving()?;
        validate_register(&reg)?;
        let info = reg.info.clone().expect("validated");
        let (agent_id, command) = match reg.agent_id.clone().filter(|a| !a.is_empty()) {
            None => {
                let id = AgentId::new(self.fresh_id());
                (
                    id.clone(),
                    Command::RegisterAgent {
                        agent_id: id,
                        info,
                        now_ms,
                    },
                )
            }
            Some(id) => {
                let tasks = reg
                    .tasks
                    .iter()
                    .filter_map(|t| {
                        Some(ReportedTask {
                            framework_id: t.framework_id.clone()?,
                            task_id: t.task.as_ref()?.task_id.clone()?,
                            state: t.state,
                        })
                    })
                    .collect();
                (
                    id.clone(),
                    Command::ReregisterAgent {
                        agent_id: id,
                        info,
                        tasks,
                        now_ms,
                    },
                )
            }
        };
        Ok(vec![Effect::Propose {
            command,
            then: Then::AgentRegistered { agent: agent_id },
        }])
    }

    /// The agent's (re)registration is applied: its connection opens (an older one ends),
    /// it gets Registered, the launches it never saw, kills of the tasks the registry no
    /// longer wants, and its frameworks the updates the registration produced.
    pub(crate) fn agent_registered(
        &mut self,
        reg: &Registry,
        now_ms: u64,
        agent_id: AgentId,
        outcome: ApplyOutcome,
    ) -> Result<Vec<Effect>, MasterError> {
        Metrics::inc(&self.metrics().agents_registered);
        self.ensure_serving()?;
        let mut effects = Vec::new();
        self.next_conn_id += 1;
        let conn_id = self.next_conn_id;
        self.agent_seen.insert(agent_id.clone(), now_ms);
        if let Some(old) = self
            .agents
            .insert(agent_id.clone(), AgentSession { conn_id })
        {
            effects.push(Effect::CloseAgentConnection {
                agent: agent_id.clone(),
                conn_id: old.conn_id,
                farewell: Farewell::Error(MasterError::Aborted(
                    "the agent connected again on a new stream".into(),
                )),
            });
            self.rescind_agent_offers(&agent_id, &mut effects);
        }
        effects.push(Effect::OpenAgentConnection {
            agent: agent_id.clone(),
            conn_id,
        });
        effects.extend(self.to_agent(
            &agent_id,
            Msg::Registered(pb::master_message::Registered {
                agent_id: Some(agent_id.clone()),
                ping_interval_seconds: self.settings.agent_ping_interval_seconds,
            }),
        ));
        if let ApplyOutcome::Reregistered(out) = outcome {
            // Per framework, so a task group is sent again as one RunTaskGroup.
            let mut by_framework: BTreeMap<pb::FrameworkId, Vec<pb::TaskInfo>> = BTreeMap::new();
            for t in out.resend {
                by_framework
                    .entry(t.framework_id.clone())
                    .or_default()
                    .push(t.info.clone());
            }
            for (fw, tasks) in by_framework {
                let info = reg.frameworks.get(&fw).map(|f| f.info.clone());
                for msg in launches::messages(&fw, info, tasks) {
                    effects.extend(self.to_agent(&agent_id, msg));
                }
            }
            for (fw, task_id) in out.kill {
                tracing::info!(agent = %agent_id, framework = %fw, task = %task_id, "killing a task the registry no longer wants");
                effects.extend(self.to_agent(
                    &agent_id,
                    Msg::KillTask(pb::master_message::KillTask {
                        framework_id: Some(fw),
                        task_id: Some(task_id),
                        kill_policy: None,
                    }),
                ));
            }
            for (fw, st) in out.updates {
                self.forward_update(&fw, st, &mut effects);
            }
        }
        effects.push(Effect::Allocate);
        self.wake_by(self.liveness_deadline(&agent_id), now_ms, &mut effects);
        Ok(effects)
    }

    /// One message from an agent on connection `conn_id`. `None`: that connection is no
    /// longer the agent's (replaced by a newer one, or this master stopped leading), and
    /// the shell stops reading it.
    pub fn agent_message(
        &mut self,
        reg: &Registry,
        now_ms: u64,
        agent_id: &AgentId,
        conn_id: u64,
        msg: pb::AgentMessage,
    ) -> Option<Vec<Effect>> {
        match self.agents.get(agent_id) {
            Some(s) if s.conn_id == conn_id => {}
            _ => return None,
        }
        self.agent_seen.insert(agent_id.clone(), now_ms);
        let mut effects = Vec::new();
        // Heard from: its liveness deadline moves on (a wake only if none is earlier).
        self.wake_by(self.liveness_deadline(agent_id), now_ms, &mut effects);
        match msg.msg {
            Some(AgentMsg::Ping(ping)) => {
                if !ping.usage.is_empty() {
                    // Replaced as a whole: tasks that ended drop out.
                    let usage = ping
                        .usage
                        .into_iter()
                        .take(MAX_USAGE_ENTRIES)
                        .filter_map(|u| {
                            let key = TaskKey::new(u.framework_id.as_ref()?, u.task_id.as_ref()?);
                            Some((key, u.statistics?))
                        })
                        .collect();
                    self.usage.insert(agent_id.clone(), usage);
                }
                effects.extend(self.to_agent(agent_id, Msg::Pong(pb::master_message::Pong {})));
            }
            Some(AgentMsg::StatusUpdate(u)) => {
                if let Err(why) = validate_update(&u) {
                    Metrics::inc(&self.metrics().calls_refused);
                    tracing::warn!(agent = %agent_id, %why, "refusing an invalid status update");
                    return Some(effects);
                }
                Metrics::inc(&self.metrics().status_updates);
                let mut status = u.status.expect("validated");
                // An agent speaks only for itself.
                status.agent_id = Some(agent_id.clone());
                effects.push(Effect::CommitUpdate(StatusUpdate {
                    agent_id: agent_id.clone(),
                    framework_id: u.framework_id.expect("validated"),
                    status,
                }));
            }
            Some(AgentMsg::ExecutorMessage(m)) => {
                self.relay_executor_message(reg, agent_id, m, &mut effects);
            }
            Some(AgentMsg::Register(_)) => {
                tracing::warn!(agent = %agent_id, "ignoring a second Register on one stream");
            }
            _ => {}
        }
        Some(effects)
    }

    /// An executor's message to its framework, relayed once (best effort, as in Mesos:
    /// dropped when the framework is not connected). The agent speaks only for executors
    /// that run an active task of that framework on it; anything else is refused here.
    fn relay_executor_message(
        &mut self,
        reg: &Registry,
        agent_id: &AgentId,
        m: pb::agent_message::ExecutorMessage,
        effects: &mut Vec<Effect>,
    ) {
        let fw = m.framework_id.unwrap_or_default();
        let executor_id = m.executor_id.unwrap_or_default();
        let refused = if let Err(why) = valid_id("framework", fw.as_str())
            .and_then(|()| valid_id("executor", executor_id.as_str()))
        {
            Some(why.to_string())
        } else if m.data.len() > drover_proto::MAX_EXECUTOR_MESSAGE_BYTES {
            Some(format!(
                "message data of {} bytes is too large",
                m.data.len()
            ))
        } else if !executor_runs_on(reg, &fw, agent_id, &executor_id) {
            Some(format!(
                "no active task of framework {fw} runs on executor {executor_id} there"
            ))
        } else {
            None
        };
        if let Some(why) = refused {
            Metrics::inc(&self.metrics().calls_refused);
            tracing::warn!(agent = %agent_id, why, "refusing an executor message");
            return;
        }
        let Some(session) = self.frameworks.get(&fw) else {
            tracing::debug!(framework = %fw, executor = %executor_id, "dropping an executor message: the framework is not connected");
            return;
        };
        effects.push(Effect::EventOrDrop {
            stream_id: session.stream_id.clone(),
            framework: fw,
            event: pb::event::Event::Message(pb::event::Message {
                agent_id: Some(agent_id.clone()),
                executor_id: Some(executor_id),
                data: m.data,
            }),
        });
    }

    /// The agent's connection `conn_id` ended. If it was its current one, its offers
    /// are rescinded; its liveness clock keeps running from its last message.
    pub fn agent_disconnected(&mut self, agent_id: &AgentId, conn_id: u64) -> Vec<Effect> {
        if self.agents.get(agent_id).map(|s| s.conn_id) != Some(conn_id) {
            return Vec::new();
        }
        self.agents.remove(agent_id);
        let mut effects = vec![Effect::CloseAgentConnection {
            agent: agent_id.clone(),
            conn_id,
            farewell: Farewell::Quietly,
        }];
        self.rescind_agent_offers(agent_id, &mut effects);
        tracing::info!(agent = %agent_id, "agent disconnected");
        effects
    }

    /// A batch of status updates for one Raft entry (the shell gathers up to
    /// [`MAX_BATCH`] of them).
    pub fn commit_updates(&self, now_ms: u64, updates: Vec<StatusUpdate>) -> Effect {
        Metrics::inc(&self.metrics().status_update_batches);
        Effect::Propose {
            command: Command::StatusUpdates {
                updates: updates.clone(),
                now_ms,
            },
            then: Then::StatusUpdates { updates },
        }
    }

    /// A batch committed: each update is forwarded to its framework; those the registry
    /// tracks nothing more for are acknowledged to their agent by the master itself.
    pub(crate) fn updates_committed(
        &mut self,
        batch: Vec<StatusUpdate>,
        outcome: ApplyOutcome,
    ) -> Vec<Effect> {
        let ApplyOutcome::Updates(outcomes) = outcome else {
            return Vec::new();
        };
        let mut effects = Vec::new();
        let mut freed = false;
        for (u, outcome) in batch.into_iter().zip(outcomes) {
            match outcome {
                UpdateOutcome::Applied | UpdateOutcome::Duplicate => {
                    freed |= drover_proto::states::is_terminal(drover_proto::states::from_i32(
                        u.status.state,
                    ));
                    self.forward_update(&u.framework_id, u.status, &mut effects);
                }
                UpdateOutcome::Unknown | UpdateOutcome::Forgotten => {
                    if outcome == UpdateOutcome::Forgotten {
                        self.forward_update(&u.framework_id, u.status.clone(), &mut effects);
                    }
                    // The registry tracks nothing more for this task, so the master
                    // acknowledges it itself and the agent stops resending.
                    effects.extend(self.to_agent(
                        &u.agent_id,
                        Msg::StatusAck(pb::master_message::StatusAck {
                            framework_id: Some(u.framework_id),
                            task_id: u.status.task_id,
                            uuid: u.status.uuid,
                        }),
                    ));
                }
            }
        }
        if freed {
            effects.push(Effect::Allocate);
        }
        effects
    }

    /// Sends again every launch that is still STAGING `older_than_ms` after it committed,
    /// to its connected agent. Covers a RunTask lost in a race with the agent's
    /// re-registration; agents ignore a task they already have, so this never runs
    /// anything twice.
    pub fn resend_staging(&self, reg: &Registry, now_ms: u64, older_than_ms: u64) -> Vec<Effect> {
        if !self.serving {
            return Vec::new();
        }
        // Per agent and framework, so a task group is sent again as one RunTaskGroup;
        // tasks in launch order.
        let mut stale: Vec<_> = reg
            .tasks
            .values()
            .filter(|t| t.state() == pb::TaskState::TaskStaging)
            .filter(|t| now_ms.saturating_sub(t.launched_ms) >= older_than_ms)
            .filter(|t| self.agents.contains_key(&t.agent_id))
            .collect();
        stale.sort_by_key(|t| (t.launched_ms, t.key()));
        type Batch = (Option<pb::FrameworkInfo>, Vec<pb::TaskInfo>);
        let mut batches: BTreeMap<(AgentId, pb::FrameworkId), Batch> = BTreeMap::new();
        for t in stale {
            let info = reg.frameworks.get(&t.framework_id).map(|f| f.info.clone());
            batches
                .entry((t.agent_id.clone(), t.framework_id.clone()))
                .or_insert_with(|| (info, Vec::new()))
                .1
                .push(t.info.clone());
        }
        let mut effects = Vec::new();
        for ((agent, fw), (info, tasks)) in batches {
            for msg in launches::messages(&fw, info, tasks) {
                effects.extend(self.to_agent(&agent, msg));
            }
        }
        effects
    }

    /// When an agent not heard from again is marked UNREACHABLE: the first millisecond
    /// past its timeout, counted from its last message, or from this leader's election
    /// if it has not spoken to this leader.
    pub fn liveness_deadline(&self, agent: &AgentId) -> u64 {
        let last = self
            .agent_seen
            .get(agent)
            .copied()
            .unwrap_or(self.elected_ms);
        last.saturating_add(self.settings.agent_timeout_ms)
            .saturating_add(1)
    }

    /// Proposes UNREACHABLE for the active agents silent past their timeout. Agents that
    /// have not re-registered with this leader count from its election.
    pub fn check_agents(&self, reg: &Registry, now_ms: u64) -> Vec<Effect> {
        if !self.serving {
            return Vec::new();
        }
        reg.agents
            .values()
            .filter(|a| a.state == AgentState::Active)
            .filter(|a| now_ms >= self.liveness_deadline(&a.id))
            .map(|a| Effect::Propose {
                command: Command::AgentUnreachable {
                    agent_id: a.id.clone(),
                    now_ms,
                },
                then: Then::AgentUnreachable {
                    agent: a.id.clone(),
                },
            })
            .collect()
    }

    /// The agent was marked UNREACHABLE: even a connection opened meanwhile ends (the
    /// agent must re-register, which turns it active again and kills the tasks reported
    /// LOST), its offers are rescinded, and its frameworks learn of their tasks.
    pub(crate) fn agent_unreachable(
        &mut self,
        agent: &AgentId,
        outcome: ApplyOutcome,
    ) -> Vec<Effect> {
        let updates = match outcome {
            ApplyOutcome::Generated(u) => u,
            _ => Vec::new(),
        };
        Metrics::inc(&self.metrics().agents_unreachable);
        tracing::warn!(agent = %agent, tasks = updates.len(), "agent unreachable");
        let mut effects = Vec::new();
        if let Some(s) = self.agents.remove(agent) {
            effects.push(Effect::CloseAgentConnection {
                agent: agent.clone(),
                conn_id: s.conn_id,
                farewell: Farewell::Error(MasterError::Unavailable(
                    "agent marked unreachable; re-register".into(),
                )),
            });
        }
        self.rescind_agent_offers(agent, &mut effects);
        // Sent to the frameworks connected now; the others reconcile when they return.
        for (fw, st) in updates {
            effects.extend(self.event(
                &fw,
                pb::event::Event::Update(pb::event::Update { status: Some(st) }),
            ));
        }
        effects
    }
}
