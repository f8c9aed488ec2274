//! Frameworks: subscription, the scheduler calls, and failover deadlines.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::mpsc;
use tonic::Status;

use drover_proto::ids::validate_id;
use drover_proto::pb::{self, task_status::Reason, TaskState};
use drover_proto::{AgentId, ExecutorId, FrameworkId, OfferId, TaskId};

use super::{gate, launches, offers::refuse_until, FwConn, Master, STREAM_QUEUE};
use crate::metrics::Metrics;
use crate::registry::{master_status, ApplyOutcome, Command, TaskKey};

/// Checks a FrameworkInfo from SUBSCRIBE.
pub fn validate_framework_info(info: &pb::FrameworkInfo) -> Result<(), Status> {
    if info.name.len() > 256 || info.user.len() > 256 || info.hostname.len() > 256 {
        return Err(Status::invalid_argument(
            "framework name, user or hostname longer than 256 bytes",
        ));
    }
    let role = if info.role.is_empty() {
        "*"
    } else {
        &info.role
    };
    super::validate_role(role).map_err(Status::invalid_argument)?;
    let ft = info.failover_timeout;
    if !(ft.is_finite() && ft >= 0.0) {
        return Err(Status::invalid_argument(format!(
            "failover_timeout must be zero or a positive number of seconds, got {ft}"
        )));
    }
    if let Some(id) = &info.id {
        if !id.is_empty() {
            validate_id("framework", id.as_str()).map_err(Status::invalid_argument)?;
        }
    }
    Ok(())
}

impl Master {
    /// SUBSCRIBE: registers (or re-registers) the framework and opens its event stream.
    /// Returns the framework id, stream id and the receiver of its events.
    pub async fn subscribe(
        self: &Arc<Self>,
        req: pb::SubscribeRequest,
    ) -> Result<
        (
            FrameworkId,
            String,
            mpsc::Receiver<Result<pb::Event, Status>>,
        ),
        Status,
    > {
        self.await_known_leader().await;
        self.ensure_leader()?;
        let mut info = req
            .framework_info
            .ok_or_else(|| Status::invalid_argument("SUBSCRIBE without framework_info"))?;
        validate_framework_info(&info)?;
        if info.role.is_empty() {
            info.role = "*".into();
        }
        let framework_id = match info.id.clone().filter(|id| !id.is_empty()) {
            Some(id) => {
                if !self.registry().frameworks.contains_key(&id) {
                    return Err(Status::not_found(format!(
                        "framework {id} is unknown: it was torn down or its failover timeout passed; subscribe without an id"
                    )));
                }
                id
            }
            None => FrameworkId::random(),
        };
        info.id = Some(framework_id.clone());
        self.propose(Command::AddFramework {
            framework_id: framework_id.clone(),
            info: info.clone(),
            now_ms: self.now_ms(),
        })
        .await?;

        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let stream_id = uuid::Uuid::new_v4().to_string();
        let mut soft = self.soft();
        if !soft.serving {
            return Err(self.not_leader());
        }
        let subscribed = pb::event::Event::Subscribed(pb::event::Subscribed {
            framework_id: Some(framework_id.clone()),
            stream_id: stream_id.clone(),
            heartbeat_interval_seconds: self.config.heartbeat_interval.as_secs_f64(),
            master_info: Some(pb::MasterInfo {
                id: self.config.id,
                address: self.config.listen.to_string(),
                term: soft.term,
            }),
        });
        let _ = tx.try_send(Ok(pb::Event {
            event: Some(subscribed),
        }));
        let suppressed = !req.suppressed_roles.is_empty();
        if let Some(old) = soft.frameworks.insert(
            framework_id.clone(),
            FwConn {
                stream_id: stream_id.clone(),
                tx,
                suppressed,
                filters: HashMap::new(),
            },
        ) {
            // The framework failed over to a new stream; the old one ends.
            let _ = old.tx.try_send(Ok(pb::Event {
                event: Some(pb::event::Event::Error(pb::event::Error {
                    message: "framework failed over to a new subscription".into(),
                })),
            }));
            Self::drop_framework_offers(&mut soft, &framework_id);
        }
        if let Some(pending) = soft.undelivered.remove(&framework_id) {
            let mut v: Vec<_> = pending.into_values().collect();
            v.sort_by(|a, b| a.timestamp.total_cmp(&b.timestamp));
            for status in v {
                Self::forward_update(&mut soft, &framework_id, status);
            }
        }
        drop(soft);
        tracing::info!(framework = %framework_id, name = %info.name, role = %info.role, "framework subscribed");
        self.allocate_now.notify_one();
        Ok((framework_id, stream_id, rx))
    }

    fn drop_framework_offers(soft: &mut super::Soft, fw: &FrameworkId) {
        soft.offers.retain(|_, o| &o.framework_id != fw);
    }

    /// The framework's stream ended. If it was its current stream, its failover timeout
    /// starts and its offers return to the pool.
    pub async fn framework_disconnected(self: &Arc<Self>, fw: FrameworkId, stream_id: String) {
        {
            let mut soft = self.soft();
            match soft.frameworks.get(&fw) {
                Some(c) if c.stream_id == stream_id => {}
                _ => return,
            }
            soft.frameworks.remove(&fw);
            Self::drop_framework_offers(&mut soft, &fw);
        }
        tracing::info!(framework = %fw, "framework disconnected; failover timeout started");
        let _ = self
            .propose(Command::FrameworkDisconnected {
                framework_id: fw,
                now_ms: self.now_ms(),
            })
            .await;
        self.allocate_now.notify_one();
    }

    /// Checks a call's header: the framework must be subscribed on exactly this stream.
    pub fn check_caller(&self, header: Option<&pb::CallHeader>) -> Result<FrameworkId, Status> {
        self.ensure_leader()?;
        let refuse = |s: Status| {
            Metrics::inc(&self.metrics.calls_refused);
            s
        };
        let h = header.ok_or_else(|| refuse(Status::invalid_argument("call without a header")))?;
        let fw = h
            .framework_id
            .clone()
            .filter(|f| !f.is_empty())
            .ok_or_else(|| refuse(Status::invalid_argument("call header has no framework_id")))?;
        let soft = self.soft();
        match soft.frameworks.get(&fw) {
            Some(c) if c.stream_id == h.stream_id => Ok(fw),
            Some(_) => Err(refuse(Status::failed_precondition(format!(
                "stream id does not match framework {fw}'s current subscription"
            )))),
            None if self.registry().frameworks.contains_key(&fw) => {
                Err(refuse(Status::failed_precondition(format!(
                    "framework {fw} is not subscribed to this master; subscribe first"
                ))))
            }
            None => Err(refuse(Status::not_found(format!(
                "framework {fw} is unknown"
            )))),
        }
    }

    /// ACCEPT: the gate, then commit, then send launches to the agent. Runs to completion
    /// in its own task even if the caller cancels: bookkeeping after the commit (pending
    /// resources, sending the launch) must not be skipped.
    pub async fn accept(self: &Arc<Self>, call: pb::AcceptCall) -> Result<(), Status> {
        let master = self.clone();
        tokio::spawn(async move { master.accept_to_completion(call).await })
            .await
            .map_err(|e| Status::internal(format!("accept task failed: {e}")))?
    }

    async fn accept_to_completion(self: &Arc<Self>, call: pb::AcceptCall) -> Result<(), Status> {
        let fw = self.check_caller(call.header.as_ref())?;
        let now = self.now_ms();
        let until = refuse_until(now, call.filters.as_ref()).map_err(Status::invalid_argument)?;
        let offer_ids: Vec<OfferId> = call.offer_ids.clone();
        let (plan, term) = {
            let mut soft = self.soft();
            // The launch commits under the term whose offers the gate checked.
            let term = soft.term;
            let plan = {
                let reg = self.registry();
                gate::check(&fw, &offer_ids, &call.operations, &soft.offers, &reg)
            };
            let plan = plan.inspect_err(|_| Metrics::inc(&self.metrics.calls_refused))?;
            for id in &offer_ids {
                soft.offers.remove(id);
            }
            Metrics::add(&self.metrics.offers_accepted, offer_ids.len() as u64);
            soft.pending
                .entry(plan.agent_id.clone())
                .or_default()
                .add(&plan.used);
            let leftover = plan.offered.checked_sub(&plan.used).unwrap_or_default();
            if !leftover.is_empty() && until > now {
                if let Some(c) = soft.frameworks.get_mut(&fw) {
                    c.filters.insert(plan.agent_id.clone(), until);
                }
            }
            let refused = plan.errors.iter().map(|e| (e, Reason::TaskInvalid)).chain(
                plan.group_errors
                    .iter()
                    .map(|e| (e, Reason::TaskGroupInvalid)),
            );
            for ((task_id, why), reason) in refused {
                Metrics::inc(&self.metrics.tasks_error);
                let st = master_status(
                    task_id,
                    &plan.agent_id,
                    TaskState::TaskError,
                    reason,
                    why.clone(),
                    now,
                );
                Self::forward_update(&mut soft, &fw, st);
            }
            (plan, term)
        };
        let result = if plan.launch.is_empty() {
            Ok(ApplyOutcome::None)
        } else {
            self.propose(Command::LaunchTasks {
                framework_id: fw.clone(),
                agent_id: plan.agent_id.clone(),
                tasks: plan.launch.clone(),
                term,
                now_ms: now,
            })
            .await
        };
        let mut soft = self.soft();
        if soft.term != term || !soft.serving {
            // Leadership changed meanwhile: the soft state (and `pending`) was rebuilt, and
            // only reconciliation can tell whether the launch committed.
            return Err(Status::unavailable(
                "leadership changed during the launch; reconcile these tasks",
            ));
        }
        if let Some(p) = soft.pending.get_mut(&plan.agent_id) {
            p.sub_saturating(&plan.used);
        }
        let outcome = result?;
        let new: HashSet<TaskId> = match outcome {
            ApplyOutcome::Launched { new } => new.into_iter().collect(),
            _ => HashSet::new(),
        };
        let info = self.registry().frameworks.get(&fw).map(|f| f.info.clone());
        let mut committed = Vec::with_capacity(plan.launch.len());
        for task in plan.launch {
            let id = task.task_id.clone().unwrap_or_default();
            if !new.contains(&id) {
                // The registry refused it at apply time: a concurrent ACCEPT used the same
                // task id first, or the agent became unreachable meanwhile.
                Metrics::inc(&self.metrics.tasks_error);
                let st = master_status(
                    &id,
                    &plan.agent_id,
                    TaskState::TaskError,
                    Reason::TaskInvalid,
                    "task id already in use, or the agent became unreachable before the launch committed",
                    now,
                );
                Self::forward_update(&mut soft, &fw, st);
                continue;
            }
            Metrics::inc(&self.metrics.tasks_launched);
            committed.push(task);
        }
        // A task group goes out as one RunTaskGroup. (Had the registry refused some of a
        // group's tasks at apply time, the rest still go together; the gate already
        // ruled out every refusal it can see.)
        for msg in launches::messages(&fw, info, committed) {
            Self::send_agent(&mut soft, &plan.agent_id, msg);
        }
        drop(soft);
        self.allocate_now.notify_one();
        Ok(())
    }

    /// DECLINE: the offers return to the pool; their agents are filtered for a while.
    pub fn decline(&self, call: pb::DeclineCall) -> Result<(), Status> {
        let fw = self.check_caller(call.header.as_ref())?;
        let until =
            refuse_until(self.now_ms(), call.filters.as_ref()).map_err(Status::invalid_argument)?;
        let mut soft = self.soft();
        // Check every id first so that a bad call changes nothing.
        for id in &call.offer_ids {
            match soft.offers.get(id) {
                None => {
                    return Err(Status::not_found(format!(
                    "offer {id} is not outstanding (unknown, already used, rescinded, or expired)"
                )))
                }
                Some(o) if o.framework_id != fw => {
                    return Err(Status::permission_denied(format!(
                        "offer {id} was made to another framework"
                    )))
                }
                Some(_) => {}
            }
        }
        for id in &call.offer_ids {
            if let Some(o) = soft.offers.remove(id) {
                Metrics::inc(&self.metrics.offers_declined);
                if let Some(c) = soft.frameworks.get_mut(&fw) {
                    c.filters.insert(o.agent_id, until);
                }
            }
        }
        drop(soft);
        self.allocate_now.notify_one();
        Ok(())
    }

    /// REVIVE: clears filters and resumes offers. SUPPRESS: stops them.
    pub fn revive_or_suppress(
        &self,
        header: Option<&pb::CallHeader>,
        revive: bool,
    ) -> Result<(), Status> {
        let fw = self.check_caller(header)?;
        let mut soft = self.soft();
        if let Some(c) = soft.frameworks.get_mut(&fw) {
            c.suppressed = !revive;
            if revive {
                c.filters.clear();
            }
        }
        if !revive {
            // Outstanding offers go back too, so other frameworks can have them.
            let ids: Vec<OfferId> = soft
                .offers
                .iter()
                .filter(|(_, o)| o.framework_id == fw)
                .map(|(id, _)| id.clone())
                .collect();
            for id in ids {
                Self::rescind(&mut soft, &self.metrics, &id);
            }
        }
        drop(soft);
        self.allocate_now.notify_one();
        Ok(())
    }

    /// The latest status of a task for reconciliation (no uuid: never acknowledged).
    fn reconcile_status(
        &self,
        fw: &FrameworkId,
        task_id: &TaskId,
        agent_hint: Option<&AgentId>,
    ) -> pb::TaskStatus {
        let now = self.now_ms();
        let reg = self.registry();
        let key = TaskKey::new(fw, task_id);
        let found = reg.task(&key);
        match found {
            Some(t) => {
                let mut st = t.last_status.clone().unwrap_or_else(|| {
                    master_status(
                        task_id,
                        &t.agent_id,
                        t.state(),
                        Reason::Reconciliation,
                        "",
                        now,
                    )
                });
                st.uuid.clear();
                st.reason = Reason::Reconciliation as i32;
                st.source = pb::task_status::Source::Master as i32;
                st
            }
            None => {
                let aware = reg.frameworks.get(fw).is_some_and(|f| f.partition_aware());
                let state = if aware {
                    TaskState::TaskUnknown
                } else {
                    TaskState::TaskLost
                };
                let agent = agent_hint.cloned().unwrap_or_default();
                master_status(
                    task_id,
                    &agent,
                    state,
                    Reason::Reconciliation,
                    "task is unknown to the master",
                    now,
                )
            }
        }
    }

    /// RECONCILE: explicit (listed tasks) or implicit (every task the master knows).
    pub fn reconcile(&self, call: pb::ReconcileCall) -> Result<(), Status> {
        let fw = self.check_caller(call.header.as_ref())?;
        if call.tasks.len() > 100_000 {
            return Err(Status::invalid_argument(
                "at most 100000 tasks per RECONCILE",
            ));
        }
        let statuses: Vec<pb::TaskStatus> = if call.tasks.is_empty() {
            let ids: Vec<TaskId> = self
                .registry()
                .tasks
                .values()
                .filter(|t| t.framework_id == fw)
                .map(|t| t.task_id())
                .collect();
            ids.iter()
                .map(|id| self.reconcile_status(&fw, id, None))
                .collect()
        } else {
            let mut out = Vec::new();
            for t in &call.tasks {
                let id = t
                    .task_id
                    .clone()
                    .ok_or_else(|| Status::invalid_argument("RECONCILE entry without task_id"))?;
                out.push(self.reconcile_status(&fw, &id, t.agent_id.as_ref()));
            }
            out
        };
        let mut soft = self.soft();
        for st in statuses {
            Self::send_event(
                &mut soft,
                &fw,
                pb::event::Event::Update(pb::event::Update { status: Some(st) }),
            );
        }
        Ok(())
    }

    /// KILL: asks the task's agent to kill it.
    pub fn kill(&self, call: pb::KillCall) -> Result<(), Status> {
        let fw = self.check_caller(call.header.as_ref())?;
        let task_id = call
            .task_id
            .clone()
            .ok_or_else(|| Status::invalid_argument("KILL without task_id"))?;
        let key = TaskKey::new(&fw, &task_id);
        let active = self.registry().tasks.get(&key).map(|t| t.agent_id.clone());
        match active {
            Some(agent) => {
                if let Some(a) = &call.agent_id {
                    if !a.is_empty() && a != &agent {
                        return Err(Status::invalid_argument(format!(
                            "task {task_id} runs on agent {agent}, not {a}"
                        )));
                    }
                }
                let mut soft = self.soft();
                Self::send_agent(
                    &mut soft,
                    &agent,
                    pb::master_message::Msg::KillTask(pb::master_message::KillTask {
                        framework_id: Some(fw.clone()),
                        task_id: Some(task_id),
                        kill_policy: call.kill_policy,
                    }),
                );
                Ok(())
            }
            None => {
                let known = self.registry().task_state(&key).is_some();
                if !known {
                    return Err(Status::not_found(format!(
                        "task {task_id} is unknown to the master"
                    )));
                }
                // Already terminal: tell the framework its final state again.
                let st = self.reconcile_status(&fw, &task_id, call.agent_id.as_ref());
                let mut soft = self.soft();
                Self::send_event(
                    &mut soft,
                    &fw,
                    pb::event::Event::Update(pb::event::Update { status: Some(st) }),
                );
                Ok(())
            }
        }
    }

    /// The executor a SHUTDOWN or MESSAGE names, checked: a valid id, on an agent where an
    /// active task of the caller's names it (so a framework reaches only its own
    /// executors, and only where they run).
    fn executor_call_target(
        &self,
        fw: &FrameworkId,
        call: &str,
        executor_id: Option<ExecutorId>,
        agent_id: Option<AgentId>,
    ) -> Result<(ExecutorId, AgentId), Status> {
        let executor_id = executor_id
            .filter(|e| !e.is_empty())
            .ok_or_else(|| Status::invalid_argument(format!("{call} without executor_id")))?;
        validate_id("executor", executor_id.as_str()).map_err(Status::invalid_argument)?;
        let agent_id = agent_id
            .filter(|a| !a.is_empty())
            .ok_or_else(|| Status::invalid_argument(format!("{call} without agent_id")))?;
        let runs_there = self.executor_runs_on(fw, &agent_id, &executor_id);
        if !runs_there {
            return Err(Status::not_found(format!(
                "no active task of framework {fw} on agent {agent_id} runs on executor \
                 {executor_id}"
            )));
        }
        Ok((executor_id, agent_id))
    }

    /// Sends `msg` to the agent, or tells the caller it could not (UNAVAILABLE) rather
    /// than dropping it silently. `lossy`: a full queue refuses this message instead of
    /// disconnecting the agent (see [`Master::send_agent_or_drop`]).
    fn relay_to_agent(
        &self,
        agent_id: &AgentId,
        executor_id: &ExecutorId,
        what: &str,
        lossy: bool,
        msg: pb::master_message::Msg,
    ) -> Result<(), Status> {
        let mut soft = self.soft();
        let outcome = if lossy {
            Self::send_agent_or_drop(&mut soft, agent_id, msg)
        } else if Self::send_agent(&mut soft, agent_id, msg) {
            Ok(())
        } else {
            Err(false)
        };
        match outcome {
            Ok(()) => Ok(()),
            Err(true) => Err(Status::unavailable(format!(
                "agent {agent_id} has too much queued; {what} for executor {executor_id} later"
            ))),
            Err(false) => Err(Status::unavailable(format!(
                "agent {agent_id} is not connected; {what} for executor {executor_id} once it \
                 is back"
            ))),
        }
    }

    /// SHUTDOWN: relayed to the agent, which asks the custom executor to exit (its tasks
    /// still running end TASK_KILLED) or kills the tasks of a task group.
    pub fn shutdown_executor(&self, call: pb::ShutdownCall) -> Result<(), Status> {
        let fw = self.check_caller(call.header.as_ref())?;
        let (executor_id, agent_id) =
            self.executor_call_target(&fw, "SHUTDOWN", call.executor_id, call.agent_id)?;
        self.relay_to_agent(
            &agent_id,
            &executor_id,
            "ask again",
            false,
            pb::master_message::Msg::ShutdownExecutor(pb::master_message::ShutdownExecutor {
                framework_id: Some(fw.clone()),
                executor_id: Some(executor_id.clone()),
            }),
        )?;
        tracing::info!(framework = %fw, agent = %agent_id, executor = %executor_id, "executor shutdown relayed");
        Ok(())
    }

    /// MESSAGE: relayed once to the agent, which hands it to the subscribed executor
    /// (best effort, as in Mesos: dropped if the executor is not subscribed).
    pub fn message_executor(&self, call: pb::MessageCall) -> Result<(), Status> {
        let fw = self.check_caller(call.header.as_ref())?;
        if call.data.len() > drover_proto::MAX_EXECUTOR_MESSAGE_BYTES {
            return Err(Status::invalid_argument(format!(
                "MESSAGE data of {} bytes is over the limit of {} bytes",
                call.data.len(),
                drover_proto::MAX_EXECUTOR_MESSAGE_BYTES
            )));
        }
        let (executor_id, agent_id) =
            self.executor_call_target(&fw, "MESSAGE", call.executor_id, call.agent_id)?;
        self.relay_to_agent(
            &agent_id,
            &executor_id,
            "send the message again",
            true,
            pb::master_message::Msg::FrameworkMessage(pb::master_message::FrameworkMessage {
                framework_id: Some(fw),
                executor_id: Some(executor_id.clone()),
                data: call.data,
            }),
        )
    }

    /// ACKNOWLEDGE: relayed to the agent that sent the update.
    pub fn acknowledge(&self, call: pb::AcknowledgeCall) -> Result<(), Status> {
        let fw = self.check_caller(call.header.as_ref())?;
        let task_id = call
            .task_id
            .clone()
            .ok_or_else(|| Status::invalid_argument("ACKNOWLEDGE without task_id"))?;
        let agent_id = call
            .agent_id
            .clone()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| Status::invalid_argument("ACKNOWLEDGE without agent_id"))?;
        // Every update a framework may acknowledge carries the 16-byte uuid its agent gave
        // it; anything else is a client bug, refused rather than relayed to the agent.
        if call.uuid.len() != 16 {
            return Err(Status::invalid_argument(format!(
                "ACKNOWLEDGE needs the update's uuid (16 bytes, got {})",
                call.uuid.len()
            )));
        }
        let key = TaskKey::new(&fw, &task_id);
        let owner = {
            let reg = self.registry();
            reg.task(&key).map(|t| t.agent_id.clone())
        };
        match owner {
            None => Err(Status::not_found(format!(
                "task {task_id} is unknown to the master"
            ))),
            Some(a) if a != agent_id => Err(Status::invalid_argument(format!(
                "task {task_id} ran on agent {a}, not {agent_id}"
            ))),
            Some(_) => {
                let mut soft = self.soft();
                if let Some(m) = soft.undelivered.get_mut(&fw) {
                    m.remove(&key);
                }
                Metrics::inc(&self.metrics.acknowledgements);
                Self::send_agent(
                    &mut soft,
                    &agent_id,
                    pb::master_message::Msg::StatusAck(pb::master_message::StatusAck {
                        framework_id: Some(fw),
                        task_id: Some(task_id),
                        uuid: call.uuid,
                    }),
                );
                Ok(())
            }
        }
    }

    /// TEARDOWN (or failover timeout): removes the framework and kills its tasks. Runs to
    /// completion in its own task, so a caller that goes away cannot leave the tasks running.
    pub async fn remove_framework(
        self: &Arc<Self>,
        fw: FrameworkId,
        reason: &str,
    ) -> Result<(), Status> {
        let master = self.clone();
        let reason = reason.to_string();
        tokio::spawn(async move { master.remove_framework_to_completion(fw, &reason).await })
            .await
            .map_err(|e| Status::internal(format!("teardown task failed: {e}")))?
    }

    async fn remove_framework_to_completion(
        self: &Arc<Self>,
        fw: FrameworkId,
        reason: &str,
    ) -> Result<(), Status> {
        let outcome = self
            .propose(Command::RemoveFramework {
                framework_id: fw.clone(),
                reason: reason.to_string(),
                now_ms: self.now_ms(),
            })
            .await?;
        Metrics::inc(&self.metrics.frameworks_removed);
        tracing::info!(framework = %fw, reason, "framework removed");
        let mut soft = self.soft();
        if let ApplyOutcome::FrameworkRemoved { agents, .. } = outcome {
            for agent in agents {
                Self::send_agent(
                    &mut soft,
                    &agent,
                    pb::master_message::Msg::ShutdownFramework(
                        pb::master_message::ShutdownFramework {
                            framework_id: Some(fw.clone()),
                        },
                    ),
                );
            }
        }
        Self::drop_framework_offers(&mut soft, &fw);
        soft.undelivered.remove(&fw);
        if let Some(c) = soft.frameworks.remove(&fw) {
            let _ = c.tx.try_send(Ok(pb::Event {
                event: Some(pb::event::Event::Error(pb::event::Error {
                    message: format!("framework removed: {reason}"),
                })),
            }));
        }
        drop(soft);
        self.allocate_now.notify_one();
        Ok(())
    }

    /// Removes frameworks whose failover timeout has passed. Clocks of frameworks that were
    /// disconnected before this leader's election start at the election.
    pub async fn expire_frameworks(self: &Arc<Self>) {
        let now = self.now_ms();
        let expired: Vec<FrameworkId> = {
            let mut soft = self.soft();
            if !soft.serving {
                return;
            }
            let reg = self.registry();
            let soft = &mut *soft;
            soft.framework_away
                .retain(|id, _| !soft.frameworks.contains_key(id));
            let mut expired = Vec::new();
            for f in reg.frameworks.values() {
                if soft.frameworks.contains_key(&f.id) {
                    continue;
                }
                // The clock starts at the disconnection the registry recorded or, while that
                // is not committed yet (or the stream was dropped for being full), when this
                // leader first saw the framework without a stream; and never before this
                // leader's election. Never earlier than the real disconnection.
                let away = *soft.framework_away.entry(f.id.clone()).or_insert(now);
                let since = f.disconnected_ms.unwrap_or(away).max(soft.elected_ms);
                if now >= since.saturating_add(f.failover_timeout_ms()) {
                    expired.push(f.id.clone());
                }
            }
            expired
        };
        for fw in expired {
            if let Err(e) = self
                .remove_framework(fw.clone(), "failover timeout elapsed")
                .await
            {
                tracing::warn!(framework = %fw, error = %e, "could not remove framework");
            }
        }
    }
}
