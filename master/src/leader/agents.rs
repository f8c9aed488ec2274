//! Agents: their sessions with the leader, liveness, and the status-update batcher.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tonic::Status;

use drover_proto::ids::validate_id;
use drover_proto::pb::{self, agent_message::Msg as AgentMsg, master_message::Msg};
use drover_proto::{AgentId, Resources};

use super::{launches, AgentConn, Master, STREAM_QUEUE};
use crate::metrics::Metrics;
use crate::registry::{
    AgentState, ApplyOutcome, Command, ReportedTask, StatusUpdate, TaskKey, UpdateOutcome,
};

/// Most status updates proposed in one Raft entry.
pub const MAX_BATCH: usize = 4096;
/// Batches in flight at once (pipelining: the next batch fills while one commits).
const BATCHES_IN_FLIGHT: usize = 4;
/// Most usage samples kept from one ping: an agent cannot grow the leader's memory
/// without bound.
const MAX_USAGE_ENTRIES: usize = 100_000;
/// How long a new stream may take to send its Register message.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(30);

fn validate_register(r: &pb::agent_message::Register) -> Result<Resources, Status> {
    let info = r
        .info
        .as_ref()
        .ok_or_else(|| Status::invalid_argument("Register without agent info"))?;
    if let Some(id) = &r.agent_id {
        if !id.is_empty() {
            validate_id("agent", id.as_str()).map_err(Status::invalid_argument)?;
        }
    }
    if info.address.is_empty() || info.address.len() > 256 || !info.address.contains(':') {
        return Err(Status::invalid_argument("agent address must be HOST:PORT"));
    }
    if info.hostname.len() > 256 || info.attributes.len() > 256 {
        return Err(Status::invalid_argument(
            "agent hostname or attributes too large",
        ));
    }
    let res = Resources::from_proto(&info.resources)
        .map_err(|e| Status::invalid_argument(format!("agent resources: {e}")))?;
    if res.cpus() <= 0.0 && res.mem() <= 0.0 {
        return Err(Status::invalid_argument("agent offers no cpus and no mem"));
    }
    if r.tasks.len() > 1_000_000 {
        return Err(Status::invalid_argument("agent reports too many tasks"));
    }
    Ok(res)
}

fn validate_update(u: &pb::agent_message::StatusUpdate) -> Result<(), String> {
    let fw = u
        .framework_id
        .as_ref()
        .filter(|f| !f.is_empty())
        .ok_or("update without framework_id")?;
    validate_id("framework", fw.as_str())?;
    let st = u.status.as_ref().ok_or("update without status")?;
    let task = st
        .task_id
        .as_ref()
        .filter(|t| !t.is_empty())
        .ok_or("update without task_id")?;
    validate_id("task", task.as_str())?;
    // 16 bytes, as agents make them: a framework acknowledges with this uuid, and the
    // master refuses any other length there (an update it could relay but never see
    // acknowledged would be retried for ever).
    if st.uuid.len() != 16 {
        return Err("update without a valid uuid (16 bytes)".into());
    }
    let state = drover_proto::states::from_i32(st.state);
    if state == pb::TaskState::Unspecified {
        return Err(format!("update with invalid state {}", st.state));
    }
    if st.message.len() > 64 * 1024 || st.data.len() > 1024 * 1024 {
        return Err("update message or data too large".into());
    }
    Ok(())
}

impl Master {
    /// Runs an agent's session: waits for Register, commits the (re)registration, then
    /// serves pings and status updates. Returns the stream of commands to the agent.
    pub async fn agent_session(
        self: &Arc<Self>,
        mut inbound: tonic::Streaming<pb::AgentMessage>,
    ) -> Result<mpsc::Receiver<Result<pb::MasterMessage, Status>>, Status> {
        self.await_known_leader().await;
        self.ensure_leader()?;
        let first = tokio::time::timeout(REGISTER_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Register message"))??
            .ok_or_else(|| Status::invalid_argument("stream ended before Register"))?;
        let Some(AgentMsg::Register(reg)) = first.msg else {
            return Err(Status::invalid_argument(
                "the first message on an agent stream must be Register",
            ));
        };
        validate_register(&reg)?;
        let info = reg.info.clone().expect("validated");
        let now = self.now_ms();
        let (agent_id, cmd) = match reg.agent_id.clone().filter(|a| !a.is_empty()) {
            None => {
                let id = AgentId::random();
                (
                    id.clone(),
                    Command::RegisterAgent {
                        agent_id: id,
                        info,
                        now_ms: now,
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
                        now_ms: now,
                    },
                )
            }
        };
        let outcome = self.propose(cmd).await?;
        Metrics::inc(&self.metrics.agents_registered);

        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let conn_id = {
            let mut soft = self.soft();
            if !soft.serving {
                return Err(self.not_leader());
            }
            soft.next_conn_id += 1;
            let conn_id = soft.next_conn_id;
            soft.agent_seen.insert(agent_id.clone(), self.now_ms());
            if let Some(old) = soft
                .agents
                .insert(agent_id.clone(), AgentConn { conn_id, tx })
            {
                let _ = old.tx.try_send(Err(Status::aborted(
                    "the agent connected again on a new stream",
                )));
                Self::rescind_agent_offers(&mut soft, &self.metrics, &agent_id);
            }
            Self::send_agent(
                &mut soft,
                &agent_id,
                Msg::Registered(pb::master_message::Registered {
                    agent_id: Some(agent_id.clone()),
                    ping_interval_seconds: self.config.agent_ping_interval.as_secs_f64(),
                }),
            );
            if let ApplyOutcome::Reregistered(out) = outcome {
                let reg = self.registry();
                // Per framework, so a task group is sent again as one RunTaskGroup.
                let mut by_framework: HashMap<pb::FrameworkId, Vec<pb::TaskInfo>> = HashMap::new();
                for t in out.resend {
                    by_framework
                        .entry(t.framework_id.clone())
                        .or_default()
                        .push(t.info.clone());
                }
                for (fw, tasks) in by_framework {
                    let info = reg.frameworks.get(&fw).map(|f| f.info.clone());
                    for msg in launches::messages(&fw, info, tasks) {
                        Self::send_agent(&mut soft, &agent_id, msg);
                    }
                }
                drop(reg);
                for (fw, task_id) in out.kill {
                    tracing::info!(agent = %agent_id, framework = %fw, task = %task_id, "killing a task the registry no longer wants");
                    Self::send_agent(
                        &mut soft,
                        &agent_id,
                        Msg::KillTask(pb::master_message::KillTask {
                            framework_id: Some(fw),
                            task_id: Some(task_id),
                            kill_policy: None,
                        }),
                    );
                }
                for (fw, st) in out.updates {
                    Self::forward_update(&mut soft, &fw, st);
                }
            }
            conn_id
        };
        tracing::info!(agent = %agent_id, address = %reg.info.as_ref().map(|i| i.address.as_str()).unwrap_or(""), "agent registered");
        self.allocate_now.notify_one();

        let master = self.clone();
        tokio::spawn(async move {
            master.agent_inbound(agent_id, conn_id, inbound).await;
        });
        Ok(rx)
    }

    async fn agent_inbound(
        self: Arc<Self>,
        agent_id: AgentId,
        conn_id: u64,
        mut inbound: tonic::Streaming<pb::AgentMessage>,
    ) {
        loop {
            let msg = match inbound.message().await {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(agent = %agent_id, error = %e, "agent stream error");
                    break;
                }
            };
            let now = self.now_ms();
            {
                let mut soft = self.soft();
                match soft.agents.get_mut(&agent_id) {
                    Some(c) if c.conn_id == conn_id => {}
                    _ => return, // replaced by a newer stream, or no longer leading
                }
                soft.agent_seen.insert(agent_id.clone(), now);
                if let Some(AgentMsg::Ping(ping)) = msg.msg {
                    if !ping.usage.is_empty() {
                        // Replaced as a whole: tasks that ended drop out.
                        let usage = ping
                            .usage
                            .into_iter()
                            .take(MAX_USAGE_ENTRIES)
                            .filter_map(|u| {
                                let key =
                                    TaskKey::new(u.framework_id.as_ref()?, u.task_id.as_ref()?);
                                Some((key, u.statistics?))
                            })
                            .collect();
                        soft.usage.insert(agent_id.clone(), usage);
                    }
                    Self::send_agent(&mut soft, &agent_id, Msg::Pong(pb::master_message::Pong {}));
                    continue;
                }
            }
            match msg.msg {
                Some(AgentMsg::StatusUpdate(u)) => {
                    if let Err(why) = validate_update(&u) {
                        Metrics::inc(&self.metrics.calls_refused);
                        tracing::warn!(agent = %agent_id, why, "refusing an invalid status update");
                        continue;
                    }
                    Metrics::inc(&self.metrics.status_updates);
                    let mut status = u.status.expect("validated");
                    // An agent speaks only for itself.
                    status.agent_id = Some(agent_id.clone());
                    let _ = self.updates_tx.send(StatusUpdate {
                        agent_id: agent_id.clone(),
                        framework_id: u.framework_id.expect("validated"),
                        status,
                    });
                }
                Some(AgentMsg::ExecutorMessage(m)) => {
                    self.relay_executor_message(&agent_id, m);
                }
                Some(AgentMsg::Register(_)) => {
                    tracing::warn!(agent = %agent_id, "ignoring a second Register on one stream");
                }
                _ => {}
            }
        }
        let mut soft = self.soft();
        if soft
            .agents
            .get(&agent_id)
            .is_some_and(|c| c.conn_id == conn_id)
        {
            soft.agents.remove(&agent_id);
            Self::rescind_agent_offers(&mut soft, &self.metrics, &agent_id);
            tracing::info!(agent = %agent_id, "agent disconnected");
        }
    }

    /// Proposes status updates in batches (one Raft round per batch), then forwards them.
    pub async fn run_status_batcher(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<StatusUpdate>,
    ) {
        let slots = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
        while let Some(first) = rx.recv().await {
            let permit = slots.clone().acquire_owned().await.expect("never closed");
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(u) => batch.push(u),
                    Err(_) => break,
                }
            }
            let master = self.clone();
            tokio::spawn(async move {
                master.commit_updates(batch).await;
                drop(permit);
            });
        }
    }

    async fn commit_updates(&self, batch: Vec<StatusUpdate>) {
        Metrics::inc(&self.metrics.status_update_batches);
        let cmd = Command::StatusUpdates {
            updates: batch.clone(),
            now_ms: self.now_ms(),
        };
        let outcomes = match self.propose(cmd).await {
            Ok(ApplyOutcome::Updates(o)) => o,
            Ok(_) => return,
            Err(e) => {
                // The agents keep these updates and resend them; nothing is lost.
                tracing::warn!(error = %e, count = batch.len(), "status updates not committed");
                return;
            }
        };
        let mut soft = self.soft();
        let mut freed = false;
        for (u, outcome) in batch.into_iter().zip(outcomes) {
            match outcome {
                UpdateOutcome::Applied | UpdateOutcome::Duplicate => {
                    freed |= drover_proto::states::is_terminal(drover_proto::states::from_i32(
                        u.status.state,
                    ));
                    Self::forward_update(&mut soft, &u.framework_id, u.status);
                }
                UpdateOutcome::Unknown | UpdateOutcome::Forgotten => {
                    if outcome == UpdateOutcome::Forgotten {
                        Self::forward_update(&mut soft, &u.framework_id, u.status.clone());
                    }
                    // The registry tracks nothing more for this task, so the master
                    // acknowledges it itself and the agent stops resending.
                    Self::send_agent(
                        &mut soft,
                        &u.agent_id,
                        Msg::StatusAck(pb::master_message::StatusAck {
                            framework_id: Some(u.framework_id),
                            task_id: u.status.task_id,
                            uuid: u.status.uuid,
                        }),
                    );
                }
            }
        }
        drop(soft);
        if freed {
            self.allocate_now.notify_one();
        }
    }

    /// An executor's message to its framework, relayed once (best effort, as in Mesos:
    /// dropped when the framework is not connected). The agent speaks only for executors
    /// that run an active task of that framework on it; anything else is refused here.
    fn relay_executor_message(&self, agent_id: &AgentId, m: pb::agent_message::ExecutorMessage) {
        let fw = m.framework_id.unwrap_or_default();
        let executor_id = m.executor_id.unwrap_or_default();
        let refused = if let Err(why) = validate_id("framework", fw.as_str())
            .and_then(|()| validate_id("executor", executor_id.as_str()))
        {
            Some(why)
        } else if m.data.len() > drover_proto::MAX_EXECUTOR_MESSAGE_BYTES {
            Some(format!(
                "message data of {} bytes is too large",
                m.data.len()
            ))
        } else if !self.executor_runs_on(&fw, agent_id, &executor_id) {
            Some(format!(
                "no active task of framework {fw} runs on executor {executor_id} there"
            ))
        } else {
            None
        };
        if let Some(why) = refused {
            Metrics::inc(&self.metrics.calls_refused);
            tracing::warn!(agent = %agent_id, why, "refusing an executor message");
            return;
        }
        let mut soft = self.soft();
        let sent = Self::send_event_or_drop(
            &mut soft,
            &fw,
            pb::event::Event::Message(pb::event::Message {
                agent_id: Some(agent_id.clone()),
                executor_id: Some(executor_id.clone()),
                data: m.data,
            }),
        );
        if !sent {
            tracing::debug!(framework = %fw, executor = %executor_id, "dropping an executor message: the framework is not connected or its stream is full");
        }
    }

    /// Sends again every launch that is still STAGING a while after it committed, to its
    /// connected agent. Covers a RunTask lost in a race with the agent's re-registration;
    /// agents ignore a task they already have, so this never runs anything twice.
    pub fn resend_staging(&self, older_than_ms: u64) {
        let now = self.now_ms();
        let mut soft = self.soft();
        if !soft.serving {
            return;
        }
        let reg = self.registry();
        let stale: Vec<_> = reg
            .tasks
            .values()
            .filter(|t| t.state() == pb::TaskState::TaskStaging)
            .filter(|t| now.saturating_sub(t.launched_ms) >= older_than_ms)
            .filter(|t| soft.agents.contains_key(&t.agent_id))
            .map(|t| {
                let info = reg.frameworks.get(&t.framework_id).map(|f| f.info.clone());
                (
                    t.agent_id.clone(),
                    t.framework_id.clone(),
                    info,
                    t.info.clone(),
                )
            })
            .collect();
        drop(reg);
        // Per agent and framework, so a task group is sent again as one RunTaskGroup.
        type Batch = (Option<pb::FrameworkInfo>, Vec<pb::TaskInfo>);
        let mut batches: HashMap<(AgentId, pb::FrameworkId), Batch> = HashMap::new();
        for (agent, fw, info, task) in stale {
            batches
                .entry((agent, fw))
                .or_insert_with(|| (info, Vec::new()))
                .1
                .push(task);
        }
        for ((agent, fw), (info, tasks)) in batches {
            for msg in launches::messages(&fw, info, tasks) {
                Self::send_agent(&mut soft, &agent, msg);
            }
        }
    }

    /// Marks agents silent past their timeout UNREACHABLE. Agents that have not
    /// re-registered with this leader count from its election.
    pub async fn check_agents(self: &Arc<Self>) {
        let now = self.now_ms();
        let silent: Vec<AgentId> = {
            let soft = self.soft();
            if !soft.serving {
                return;
            }
            let reg = self.registry();
            reg.agents
                .values()
                .filter(|a| a.state == AgentState::Active)
                .filter(|a| {
                    let last = soft
                        .agent_seen
                        .get(&a.id)
                        .copied()
                        .unwrap_or(soft.elected_ms);
                    now.saturating_sub(last) > self.config.agent_timeout_ms
                })
                .map(|a| a.id.clone())
                .collect()
        };
        for agent in silent {
            let cmd = Command::AgentUnreachable {
                agent_id: agent.clone(),
                now_ms: now,
            };
            let updates = match self.propose(cmd).await {
                Ok(ApplyOutcome::Generated(u)) => u,
                Ok(_) => Vec::new(),
                Err(e) => {
                    tracing::warn!(agent = %agent, error = %e, "could not mark agent unreachable");
                    continue;
                }
            };
            Metrics::inc(&self.metrics.agents_unreachable);
            tracing::warn!(agent = %agent, tasks = updates.len(), "agent unreachable");
            let mut soft = self.soft();
            // Even a stream opened meanwhile goes: the agent must re-register, which turns
            // it Active again and kills the tasks reported LOST.
            if let Some(c) = soft.agents.remove(&agent) {
                let _ = c.tx.try_send(Err(Status::unavailable(
                    "agent marked unreachable; re-register",
                )));
            }
            Self::rescind_agent_offers(&mut soft, &self.metrics, &agent);
            for (fw, st) in updates {
                Self::send_event(
                    &mut soft,
                    &fw,
                    pb::event::Event::Update(pb::event::Update { status: Some(st) }),
                );
            }
        }
    }
}
