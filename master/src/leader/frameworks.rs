//! Frameworks: subscription, the scheduler calls, and failover deadlines.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};

use drover_proto::pb::{self, task_status::Reason, TaskState};
use drover_proto::{quote, AgentId, ExecutorId, FrameworkId, OfferId, TaskId};

use super::{
    agent_not_connected, executor_runs_on, gate, launches, not_leader, offers::refuse_until,
    valid_id, Effect, Farewell, FrameworkSession, Leader, Then,
};
use crate::error::MasterError;
use crate::metrics::Metrics;
use crate::registry::{master_status, ApplyOutcome, Command, FrameworkRec, Registry, TaskKey};

/// Checks a FrameworkInfo from SUBSCRIBE.
pub fn validate_framework_info(info: &pb::FrameworkInfo) -> Result<(), MasterError> {
    if info.name.len() > 256 || info.user.len() > 256 || info.hostname.len() > 256 {
        return Err(MasterError::InvalidArgument(
            "framework name, user or hostname longer than 256 bytes".into(),
        ));
    }
    let role = if info.role.is_empty() {
        "*"
    } else {
        &info.role
    };
    super::validate_role(role)?;
    let ft = info.failover_timeout;
    if !(ft.is_finite() && ft >= 0.0) {
        return Err(MasterError::InvalidArgument(format!(
            "failover_timeout must be zero or a positive number of seconds, got {ft}"
        )));
    }
    if let Some(id) = &info.id {
        if !id.is_empty() {
            valid_id("framework", id.as_str())?;
        }
    }
    Ok(())
}

/// The answer to a SUBSCRIBE for a framework the registry no longer has.
fn framework_gone(id: &FrameworkId) -> MasterError {
    MasterError::NotFound(format!(
        "framework {} is unknown: it was torn down or its failover timeout passed; subscribe without an id",
        quote(id.as_str())
    ))
}

fn invalid(msg: impl Into<String>) -> MasterError {
    MasterError::InvalidArgument(msg.into())
}

fn update(status: pb::TaskStatus) -> pb::event::Event {
    pb::event::Event::Update(pb::event::Update {
        status: Some(status),
    })
}

impl Leader {
    /// SUBSCRIBE, first step: checks the request and proposes the framework's
    /// (re)registration; [`Then::Subscribed`] opens the stream once it is applied.
    pub fn subscribe(
        &mut self,
        reg: &Registry,
        now_ms: u64,
        req: pb::SubscribeRequest,
    ) -> Result<Vec<Effect>, MasterError> {
        self.ensure_serving()?;
        let mut info = req
            .framework_info
            .ok_or_else(|| invalid("SUBSCRIBE without framework_info"))?;
        validate_framework_info(&info)?;
        if info.role.is_empty() {
            info.role = "*".into();
        }
        let framework_id = match info.id.clone().filter(|id| !id.is_empty()) {
            Some(id) => {
                if !reg.frameworks.contains_key(&id) {
                    return Err(framework_gone(&id));
                }
                id
            }
            None => FrameworkId::new(self.fresh_id()),
        };
        info.id = Some(framework_id.clone());
        Ok(vec![Effect::Propose {
            command: Command::AddFramework {
                framework_id: framework_id.clone(),
                info: info.clone(),
                now_ms,
            },
            then: Then::Subscribed {
                framework: framework_id,
                info,
                suppressed: !req.suppressed_roles.is_empty(),
            },
        }])
    }

    /// SUBSCRIBE, once the registration is applied: the old stream (if any) ends, the new
    /// one opens with SUBSCRIBED and the updates kept while the framework was away. A
    /// framework removed in between (a teardown or its failover timeout committed after
    /// the registration) gets no session.
    pub(crate) fn subscribed(
        &mut self,
        reg: &Registry,
        framework_id: FrameworkId,
        info: pb::FrameworkInfo,
        suppressed: bool,
    ) -> Result<Vec<Effect>, MasterError> {
        if !self.serving {
            return Err(not_leader());
        }
        if !reg.frameworks.contains_key(&framework_id) {
            return Err(framework_gone(&framework_id));
        }
        let stream_id = self.fresh_id();
        let mut effects = Vec::new();
        let session = FrameworkSession {
            stream_id: stream_id.clone(),
            suppressed,
            filters: BTreeMap::new(),
        };
        if let Some(old) = self.frameworks.insert(framework_id.clone(), session) {
            // The framework failed over to a new stream; the old one ends.
            effects.push(Effect::CloseFrameworkStream {
                framework: framework_id.clone(),
                stream_id: old.stream_id,
                farewell: Farewell::ErrorEvent(
                    "framework failed over to a new subscription".into(),
                ),
            });
            self.offers.retain(|_, o| o.framework_id != framework_id);
        }
        effects.push(Effect::OpenFrameworkStream {
            framework: framework_id.clone(),
            stream_id: stream_id.clone(),
        });
        effects.extend(self.event(
            &framework_id,
            pb::event::Event::Subscribed(pb::event::Subscribed {
                framework_id: Some(framework_id.clone()),
                stream_id,
                heartbeat_interval_seconds: self.settings.heartbeat_interval_seconds,
                master_info: Some(pb::MasterInfo {
                    id: self.settings.master_id,
                    address: self.settings.master_address.clone(),
                    term: self.term,
                }),
            }),
        ));
        if let Some(pending) = self.undelivered.remove(&framework_id) {
            let mut v: Vec<_> = pending.into_values().collect();
            v.sort_by(|a, b| a.timestamp.total_cmp(&b.timestamp));
            for status in v {
                self.forward_update(&framework_id, status, &mut effects);
            }
        }
        tracing::info!(framework = %framework_id, name = %info.name, role = %info.role, "framework subscribed");
        effects.push(Effect::Allocate);
        Ok(effects)
    }

    /// The framework's stream `stream_id` ended. If it was its current stream, its
    /// failover timeout starts (the leader asks to be woken at its deadline) and its
    /// offers return to the pool.
    pub fn framework_disconnected(
        &mut self,
        reg: &Registry,
        now_ms: u64,
        fw: &FrameworkId,
        stream_id: &str,
    ) -> Vec<Effect> {
        match self.frameworks.get(fw) {
            Some(s) if s.stream_id == stream_id => {}
            _ => return Vec::new(),
        }
        self.frameworks.remove(fw);
        self.offers.retain(|_, o| &o.framework_id != fw);
        tracing::info!(framework = %fw, "framework disconnected; failover timeout started");
        let mut effects = vec![
            Effect::CloseFrameworkStream {
                framework: fw.clone(),
                stream_id: stream_id.to_string(),
                farewell: Farewell::Quietly,
            },
            Effect::Propose {
                command: Command::FrameworkDisconnected {
                    framework_id: fw.clone(),
                    now_ms,
                },
                then: Then::Nothing,
            },
            Effect::Allocate,
        ];
        if let Some(f) = reg.frameworks.get(fw) {
            // [`Leader::failover_deadline`] once the disconnection at `now_ms` is
            // recorded (a resubscription cleared any earlier one).
            let deadline = now_ms
                .max(self.elected_ms)
                .saturating_add(f.failover_timeout_ms());
            self.wake_by(deadline, now_ms, &mut effects);
        }
        effects
    }

    /// Checks a call's header: the framework must be subscribed on exactly this stream.
    pub fn check_caller(
        &self,
        reg: &Registry,
        header: Option<&pb::CallHeader>,
    ) -> Result<FrameworkId, MasterError> {
        self.ensure_serving()?;
        let refuse = |e: MasterError| {
            Metrics::inc(&self.metrics().calls_refused);
            e
        };
        let h = header.ok_or_else(|| refuse(invalid("call without a header")))?;
        let fw = h
            .framework_id
            .clone()
            .filter(|f| !f.is_empty())
            .ok_or_else(|| refuse(invalid("call header has no framework_id")))?;
        match self.frameworks.get(&fw) {
            Some(s) if s.stream_id == h.stream_id => Ok(fw),
            Some(_) => Err(refuse(MasterError::FailedPrecondition(format!(
                "stream id does not match framework {}'s current subscription",
                quote(fw.as_str())
            )))),
            None if reg.frameworks.contains_key(&fw) => {
                Err(refuse(MasterError::FailedPrecondition(format!(
                    "framework {} is not subscribed to this master; subscribe first",
                    quote(fw.as_str())
                ))))
            }
            None => Err(refuse(MasterError::NotFound(format!(
                "framework {} is unknown",
                quote(fw.as_str())
            )))),
        }
    }

    /// ACCEPT, first step: the gate; the offers are used up, the refused tasks get
    /// TASK_ERROR, and the launch is proposed ([`Then::Launched`] sends it).
    pub fn accept(
        &mut self,
        reg: &Registry,
        now_ms: u64,
        call: pb::AcceptCall,
    ) -> Result<Vec<Effect>, MasterError> {
        let fw = self.check_caller(reg, call.header.as_ref())?;
        let until = refuse_until(now_ms, call.filters.as_ref())?;
        let offer_ids: Vec<OfferId> = call.offer_ids.clone();
        // The launch commits under the term whose offers the gate checked.
        let term = self.term;
        let plan = gate::check(&fw, &offer_ids, &call.operations, &self.offers, reg)
            .inspect_err(|_| Metrics::inc(&self.metrics().calls_refused))?;
        for id in &offer_ids {
            self.offers.remove(id);
        }
        Metrics::add(&self.metrics().offers_accepted, offer_ids.len() as u64);
        self.pending
            .entry(plan.agent_id.clone())
            .or_default()
            .add(&plan.used);
        let leftover = plan.offered.checked_sub(&plan.used).unwrap_or_default();
        if !leftover.is_empty() && until > now_ms {
            if let Some(s) = self.frameworks.get_mut(&fw) {
                s.filters.insert(plan.agent_id.clone(), until);
            }
        }
        let mut effects = Vec::new();
        let refused = plan.errors.iter().map(|e| (e, Reason::TaskInvalid)).chain(
            plan.group_errors
                .iter()
                .map(|e| (e, Reason::TaskGroupInvalid)),
        );
        let refused: Vec<_> = refused.collect();
        for ((task_id, why), reason) in refused {
            Metrics::inc(&self.metrics().tasks_error);
            let st = master_status(
                task_id,
                &plan.agent_id,
                TaskState::TaskError,
                reason,
                why.clone(),
                now_ms,
            );
            self.forward_update(&fw, st, &mut effects);
        }
        if plan.launch.is_empty() {
            // Nothing to commit: what the launch held in `pending` (nothing) is released
            // at once, as after a commit.
            effects.extend(self.launched(
                reg,
                now_ms,
                fw,
                plan.agent_id,
                plan.used,
                Vec::new(),
                term,
                Ok(ApplyOutcome::None),
            )?);
            return Ok(effects);
        }
        effects.push(Effect::Propose {
            command: Command::LaunchTasks {
                framework_id: fw.clone(),
                agent_id: plan.agent_id.clone(),
                tasks: plan.launch.clone(),
                term,
                now_ms,
            },
            then: Then::Launched {
                framework: fw,
                agent: plan.agent_id,
                used: plan.used,
                launch: plan.launch,
                term,
            },
        });
        Ok(effects)
    }

    /// ACCEPT, once the launch is applied (or refused): the resources leave `pending`;
    /// the tasks the registry took are sent to the agent, the others get TASK_ERROR.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn launched(
        &mut self,
        reg: &Registry,
        now_ms: u64,
        fw: FrameworkId,
        agent: AgentId,
        used: drover_proto::Resources,
        launch: Vec<pb::TaskInfo>,
        term: u64,
        outcome: Result<ApplyOutcome, MasterError>,
    ) -> Result<Vec<Effect>, MasterError> {
        if self.term != term || !self.serving {
            // Leadership changed meanwhile: the soft state (and `pending`) was rebuilt, and
            // only reconciliation can tell whether the launch committed.
            return Err(MasterError::Unavailable(
                "leadership changed during the launch; reconcile these tasks".into(),
            ));
        }
        if let Some(p) = self.pending.get_mut(&agent) {
            p.sub_saturating(&used);
        }
        let outcome = outcome?;
        let new: BTreeSet<TaskId> = match outcome {
            ApplyOutcome::Launched { new } => new.into_iter().collect(),
            _ => BTreeSet::new(),
        };
        let info = reg.frameworks.get(&fw).map(|f| f.info.clone());
        let mut effects = Vec::new();
        let mut committed = Vec::with_capacity(launch.len());
        for task in launch {
            let id = task.task_id.clone().unwrap_or_default();
            if !new.contains(&id) {
                // The registry refused it at apply time: a concurrent ACCEPT used the same
                // task id first, or the agent became unreachable meanwhile.
                Metrics::inc(&self.metrics().tasks_error);
                let st = master_status(
                    &id,
                    &agent,
                    TaskState::TaskError,
                    Reason::TaskInvalid,
                    "task id already in use, or the agent became unreachable before the launch committed",
                    now_ms,
                );
                self.forward_update(&fw, st, &mut effects);
                continue;
            }
            Metrics::inc(&self.metrics().tasks_launched);
            committed.push(task);
        }
        // A task group goes out as one RunTaskGroup. (Had the registry refused some of a
        // group's tasks at apply time, the rest still go together; the gate already
        // ruled out every refusal it can see.)
        for msg in launches::messages(&fw, info, committed) {
            effects.extend(self.to_agent(&agent, msg));
        }
        effects.push(Effect::Allocate);
        Ok(effects)
    }

    /// DECLINE: the offers return to the pool; their agents are filtered for a while.
    pub fn decline(
        &mut self,
        reg: &Registry,
        now_ms: u64,
        call: pb::DeclineCall,
    ) -> Result<Vec<Effect>, MasterError> {
        let fw = self.check_caller(reg, call.header.as_ref())?;
        let until = refuse_until(now_ms, call.filters.as_ref())?;
        // Check every id first so that a bad call changes nothing.
        for id in &call.offer_ids {
            match self.offers.get(id) {
                None => {
                    return Err(MasterError::NotFound(format!(
                        "offer {} is not outstanding (unknown, already used, rescinded, or \
                         expired)",
                        quote(id.as_str())
                    )))
                }
                Some(o) if o.framework_id != fw => {
                    return Err(MasterError::PermissionDenied(format!(
                        "offer {id} was made to another framework"
                    )))
                }
                Some(_) => {}
            }
        }
        for id in &call.offer_ids {
            if let Some(o) = self.offers.remove(id) {
                Metrics::inc(&self.metrics().offers_declined);
                if let Some(s) = self.frameworks.get_mut(&fw) {
                    s.filters.insert(o.agent_id, until);
                }
            }
        }
        Ok(vec![Effect::Allocate])
    }

    /// REVIVE (`revive`): clears filters and resumes offers. SUPPRESS: stops them, and
    /// rescinds the outstanding ones so other frameworks can have them.
    pub fn revive_or_suppress(
        &mut self,
        reg: &Registry,
        header: Option<&pb::CallHeader>,
        revive: bool,
    ) -> Result<Vec<Effect>, MasterError> {
        let fw = self.check_caller(reg, header)?;
        if let Some(s) = self.frameworks.get_mut(&fw) {
            s.suppressed = !revive;
            if revive {
                s.filters.clear();
            }
        }
        let mut effects = Vec::new();
        if !revive {
            let ids: Vec<OfferId> = self
                .offers
                .iter()
                .filter(|(_, o)| o.framework_id == fw)
                .map(|(id, _)| id.clone())
                .collect();
            for id in ids {
                self.rescind(&id, &mut effects);
            }
        }
        effects.push(Effect::Allocate);
        Ok(effects)
    }

    /// RECONCILE: explicit (listed tasks) or implicit (every task the master knows, in
    /// task id order).
    pub fn reconcile(
        &mut self,
        reg: &Registry,
        now_ms: u64,
        call: pb::ReconcileCall,
    ) -> Result<Vec<Effect>, MasterError> {
        let fw = self.check_caller(reg, call.header.as_ref())?;
        if call.tasks.len() > 100_000 {
            return Err(invalid("at most 100000 tasks per RECONCILE"));
        }
        let statuses: Vec<pb::TaskStatus> = if call.tasks.is_empty() {
            let mut ids: Vec<TaskId> = reg
                .tasks
                .values()
                .filter(|t| t.framework_id == fw)
                .map(|t| t.task_id())
                .collect();
            ids.sort();
            ids.iter()
                .map(|id| reconcile_status(reg, now_ms, &fw, id, None))
                .collect()
        } else {
            let mut out = Vec::new();
            for t in &call.tasks {
                let id = t
                    .task_id
                    .clone()
                    .ok_or_else(|| invalid("RECONCILE entry without task_id"))?;
                out.push(reconcile_status(reg, now_ms, &fw, &id, t.agent_id.as_ref()));
            }
            out
        };
        Ok(statuses
            .into_iter()
            .filter_map(|st| self.event(&fw, update(st)))
            .collect())
    }

    /// KILL: asks the task's agent to kill it; a task already terminal has its final
    /// state sent again.
    pub fn kill(
        &mut self,
        reg: &Registry,
        now_ms: u64,
        call: pb::KillCall,
    ) -> Result<Vec<Effect>, MasterError> {
        let fw = self.check_caller(reg, call.header.as_ref())?;
        let task_id = call
            .task_id
            .clone()
            .ok_or_else(|| invalid("KILL without task_id"))?;
        let key = TaskKey::new(&fw, &task_id);
        match reg.tasks.get(&key).map(|t| t.agent_id.clone()) {
            Some(agent) => {
                if let Some(a) = &call.agent_id {
                    if !a.is_empty() && a != &agent {
                        return Err(invalid(format!(
                            "task {} runs on agent {agent}, not {}",
                            quote(task_id.as_str()),
                            quote(a.as_str())
                        )));
                    }
                }
                Ok(self
                    .to_agent(
                        &agent,
                        pb::master_message::Msg::KillTask(pb::master_message::KillTask {
                            framework_id: Some(fw.clone()),
                            task_id: Some(task_id),
                            kill_policy: call.kill_policy,
                        }),
                    )
                    .into_iter()
                    .collect())
            }
            None => {
                if reg.task_state(&key).is_none() {
                    return Err(MasterError::NotFound(format!(
                        "task {} is unknown to the master",
                        quote(task_id.as_str())
                    )));
                }
                // Already terminal: tell the framework its final state again.
                let st = reconcile_status(reg, now_ms, &fw, &task_id, call.agent_id.as_ref());
                Ok(self.event(&fw, update(st)).into_iter().collect())
            }
        }
    }

    /// SHUTDOWN: relayed to the agent, which asks the custom executor to exit (its tasks
    /// still running end TASK_KILLED) or kills the tasks of a task group.
    pub fn shutdown_executor(
        &mut self,
        reg: &Registry,
        call: pb::ShutdownCall,
    ) -> Result<Vec<Effect>, MasterError> {
        let fw = self.check_caller(reg, call.header.as_ref())?;
        let (executor_id, agent_id) =
            self.executor_call_target(reg, &fw, "SHUTDOWN", call.executor_id, call.agent_id)?;
        tracing::info!(framework = %fw, agent = %agent_id, executor = %executor_id, "executor shutdown relayed");
        let message = self.stamp(pb::master_message::Msg::ShutdownExecutor(
            pb::master_message::ShutdownExecutor {
                framework_id: Some(fw),
                executor_id: Some(executor_id.clone()),
            },
        ));
        self.relay(agent_id, executor_id, "ask again", false, message)
    }

    /// MESSAGE: relayed once to the agent, which hands it to the subscribed executor
    /// (best effort, as in Mesos: dropped if the executor is not subscribed).
    pub fn message_executor(
        &mut self,
        reg: &Registry,
        call: pb::MessageCall,
    ) -> Result<Vec<Effect>, MasterError> {
        let fw = self.check_caller(reg, call.header.as_ref())?;
        if call.data.len() > drover_proto::MAX_EXECUTOR_MESSAGE_BYTES {
            return Err(invalid(format!(
                "MESSAGE data of {} bytes is over the limit of {} bytes",
                call.data.len(),
                drover_proto::MAX_EXECUTOR_MESSAGE_BYTES
            )));
        }
        let (executor_id, agent_id) =
            self.executor_call_target(reg, &fw, "MESSAGE", call.executor_id, call.agent_id)?;
        let message = self.stamp(pb::master_message::Msg::FrameworkMessage(
            pb::master_message::FrameworkMessage {
                framework_id: Some(fw),
                executor_id: Some(executor_id.clone()),
                data: call.data,
            },
        ));
        self.relay(
            agent_id,
            executor_id,
            "send the message again",
            true,
            message,
        )
    }

    /// A relay to an agent on its current connection: UNAVAILABLE at once when the agent
    /// is not connected (the shell answers the same when its stream cannot take the
    /// message).
    fn relay(
        &self,
        agent: AgentId,
        executor: ExecutorId,
        what: &'static str,
        lossy: bool,
        message: pb::MasterMessage,
    ) -> Result<Vec<Effect>, MasterError> {
        let Some(s) = self.agents.get(&agent) else {
            return Err(agent_not_connected(&agent, &executor, what));
        };
        Ok(vec![Effect::Relay {
            conn_id: s.conn_id,
            agent,
            executor,
            what,
            lossy,
            message,
        }])
    }

    /// The executor a SHUTDOWN or MESSAGE names, checked: a valid id, on an agent where an
    /// active task of the caller's names it (so a framework reaches only its own
    /// executors, and only where they run).
    fn executor_call_target(
        &self,
        reg: &Registry,
        fw: &FrameworkId,
        call: &str,
        executor_id: Option<ExecutorId>,
        agent_id: Option<AgentId>,
    ) -> Result<(ExecutorId, AgentId), MasterError> {
        let executor_id = executor_id
            .filter(|e| !e.is_empty())
            .ok_or_else(|| invalid(format!("{call} without executor_id")))?;
        valid_id("executor", executor_id.as_str())?;
        let agent_id = agent_id
            .filter(|a| !a.is_empty())
            .ok_or_else(|| invalid(format!("{call} without agent_id")))?;
        if !executor_runs_on(reg, fw, &agent_id, &executor_id) {
            return Err(MasterError::NotFound(format!(
                "no active task of framework {fw} on agent {} runs on executor {}",
                quote(agent_id.as_str()),
                quote(executor_id.as_str())
            )));
        }
        Ok((executor_id, agent_id))
    }

    /// ACKNOWLEDGE: relayed to the agent that sent the update.
    pub fn acknowledge(
        &mut self,
        reg: &Registry,
        call: pb::AcknowledgeCall,
    ) -> Result<Vec<Effect>, MasterError> {
        let fw = self.check_caller(reg, call.header.as_ref())?;
        let task_id = call
            .task_id
            .clone()
            .ok_or_else(|| invalid("ACKNOWLEDGE without task_id"))?;
        let agent_id = call
            .agent_id
            .clone()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| invalid("ACKNOWLEDGE without agent_id"))?;
        // Every update a framework may acknowledge carries the 16-byte uuid its agent gave
        // it; anything else is a client bug, refused rather than relayed to the agent.
        if call.uuid.len() != 16 {
            return Err(invalid(format!(
                "ACKNOWLEDGE needs the update's uuid (16 bytes, got {})",
                call.uuid.len()
            )));
        }
        let key = TaskKey::new(&fw, &task_id);
        let Some(task) = reg.task(&key) else {
            return Err(MasterError::NotFound(format!(
                "task {} is unknown to the master",
                quote(task_id.as_str())
            )));
        };
        if task.agent_id != agent_id {
            return Err(invalid(format!(
                "task {} ran on agent {}, not {}",
                quote(task_id.as_str()),
                task.agent_id,
                quote(agent_id.as_str())
            )));
        }
        // The agent sends a task's updates one at a time, each only once the previous one
        // was acknowledged, so the one it waits for is the latest the registry applied.
        // Also accepted: a repeat of an acknowledgement this leader relayed (an update
        // delivered twice is acknowledged twice), and any uuid while the latest status is
        // one the master made itself (agent unreachable, ...): the registry then no longer
        // knows the agent's latest uuid, and the agent ignores a uuid it does not wait for.
        let latest = task.last_status.as_ref().map(|s| s.uuid.as_slice());
        let known = match latest {
            Some([]) => true,
            Some(u) => u == call.uuid.as_slice() || self.recent_acks.contains(&key, &call.uuid),
            None => false,
        };
        if !known {
            return Err(MasterError::NotFound(format!(
                "task {} has no status update with uuid {} to acknowledge",
                quote(task_id.as_str()),
                hex(&call.uuid)
            )));
        }
        self.recent_acks.record(key.clone(), call.uuid.clone());
        if let Some(m) = self.undelivered.get_mut(&fw) {
            m.remove(&key);
        }
        Metrics::inc(&self.metrics().acknowledgements);
        Ok(self
            .to_agent(
                &agent_id,
                pb::master_message::Msg::StatusAck(pb::master_message::StatusAck {
                    framework_id: Some(fw),
                    task_id: Some(task_id),
                    uuid: call.uuid,
                }),
            )
            .into_iter()
            .collect())
    }

    /// TEARDOWN (by the framework or an operator) or failover timeout, first step:
    /// proposes the removal; [`Then::FrameworkRemoved`] kills the tasks.
    pub fn remove_framework(&self, now_ms: u64, fw: FrameworkId, reason: &str) -> Vec<Effect> {
        vec![Effect::Propose {
            command: Command::RemoveFramework {
                framework_id: fw.clone(),
                reason: reason.to_string(),
                now_ms,
            },
            then: Then::FrameworkRemoved {
                framework: fw,
                reason: reason.to_string(),
            },
        }]
    }

    /// TEARDOWN by an operator: the framework must exist.
    pub fn teardown_by_operator(
        &self,
        reg: &Registry,
        now_ms: u64,
        fw: Option<FrameworkId>,
    ) -> Result<Vec<Effect>, MasterError> {
        self.ensure_serving()?;
        let fw = fw
            .filter(|f| !f.is_empty())
            .ok_or_else(|| invalid("teardown needs a framework_id"))?;
        if !reg.frameworks.contains_key(&fw) {
            return Err(MasterError::NotFound(format!(
                "framework {} is unknown",
                quote(fw.as_str())
            )));
        }
        Ok(self.remove_framework(now_ms, fw, "torn down by an operator"))
    }

    /// The framework was removed: its agents shut it down, its stream ends.
    pub(crate) fn framework_removed(
        &mut self,
        fw: &FrameworkId,
        reason: &str,
        outcome: ApplyOutcome,
    ) -> Vec<Effect> {
        Metrics::inc(&self.metrics().frameworks_removed);
        tracing::info!(framework = %fw, reason, "framework removed");
        let mut effects = Vec::new();
        if let ApplyOutcome::FrameworkRemoved { agents, .. } = outcome {
            for agent in agents {
                effects.extend(self.to_agent(
                    &agent,
                    pb::master_message::Msg::ShutdownFramework(
                        pb::master_message::ShutdownFramework {
                            framework_id: Some(fw.clone()),
                        },
                    ),
                ));
            }
        }
        self.offers.retain(|_, o| &o.framework_id != fw);
        self.undelivered.remove(fw);
        if let Some(s) = self.frameworks.remove(fw) {
            effects.push(Effect::CloseFrameworkStream {
                framework: fw.clone(),
                stream_id: s.stream_id,
                farewell: Farewell::ErrorEvent(format!("framework removed: {reason}")),
            });
        }
        effects.push(Effect::Allocate);
        effects
    }

    /// When framework `f`, not subscribed, is removed: its failover timeout after its
    /// disconnection (see [`Leader::expire_frameworks`]). A framework whose clock no
    /// tick has started yet counts from `now_ms`, which is never later than where the
    /// next tick will start it.
    pub fn failover_deadline(&self, f: &FrameworkRec, now_ms: u64) -> u64 {
        let away = self.framework_away.get(&f.id).copied().unwrap_or(now_ms);
        f.disconnected_ms
            .unwrap_or(away)
            .max(self.elected_ms)
            .saturating_add(f.failover_timeout_ms())
    }

    /// Removes frameworks whose failover timeout has passed. Clocks of frameworks that were
    /// disconnected before this leader's election start at the election.
    pub fn expire_frameworks(&mut self, reg: &Registry, now_ms: u64) -> Vec<Effect> {
        if !self.serving {
            return Vec::new();
        }
        let frameworks = &self.frameworks;
        self.framework_away
            .retain(|id, _| !frameworks.contains_key(id));
        let mut effects = Vec::new();
        for f in reg.frameworks.values() {
            if self.frameworks.contains_key(&f.id) {
                continue;
            }
            // The clock starts at the disconnection the registry recorded or, while that
            // is not committed yet (or the stream was dropped for being full), when this
            // leader first saw the framework without a stream; and never before this
            // leader's election. Never earlier than the real disconnection.
            self.framework_away.entry(f.id.clone()).or_insert(now_ms);
            if now_ms >= self.failover_deadline(f, now_ms) {
                effects.extend(self.remove_framework(
                    now_ms,
                    f.id.clone(),
                    "failover timeout elapsed",
                ));
            }
        }
        effects
    }

    /// A heartbeat to every subscribed framework.
    pub fn heartbeats(&self) -> Vec<Effect> {
        self.frameworks
            .iter()
            .map(|(fw, s)| Effect::Event {
                framework: fw.clone(),
                stream_id: s.stream_id.clone(),
                event: pb::event::Event::Heartbeat(pb::event::Heartbeat {}),
            })
            .collect()
    }
}

/// The latest status of a task for reconciliation (no uuid: never acknowledged).
fn reconcile_status(
    reg: &Registry,
    now_ms: u64,
    fw: &FrameworkId,
    task_id: &TaskId,
    agent_hint: Option<&AgentId>,
) -> pb::TaskStatus {
    let key = TaskKey::new(fw, task_id);
    match reg.task(&key) {
        Some(t) => {
            let mut st = t.last_status.clone().unwrap_or_else(|| {
                master_status(
                    task_id,
                    &t.agent_id,
                    t.state(),
                    Reason::Reconciliation,
                    "",
                    now_ms,
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
                now_ms,
            )
        }
    }
}

/// Most acknowledgements [`RecentAcks`] remembers (about 100 bytes each with short ids).
pub const RECENT_ACKS_KEPT: usize = 10_000;

/// The latest acknowledgements the leader relayed, oldest first and bounded by
/// [`RECENT_ACKS_KEPT`]: leader-only memory (a new leader starts empty), so a repeated
/// acknowledgement is recognised only within one leader's term.
#[derive(Debug, Default)]
pub struct RecentAcks {
    order: VecDeque<(TaskKey, Vec<u8>)>,
    set: HashSet<(TaskKey, Vec<u8>)>,
}

impl RecentAcks {
    pub fn contains(&self, key: &TaskKey, uuid: &[u8]) -> bool {
        self.set.contains(&(key.clone(), uuid.to_vec()))
    }

    pub fn record(&mut self, key: TaskKey, uuid: Vec<u8>) {
        let entry = (key, uuid);
        if self.set.contains(&entry) {
            return;
        }
        self.set.insert(entry.clone());
        self.order.push_back(entry);
        while self.order.len() > RECENT_ACKS_KEPT {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }
}

/// A uuid in hex, for error messages.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
