//! The calls of a custom executor (`Subscribe`, `Update`, `Message`) and what goes back to
//! it (events, answers, relayed acknowledgements).

use std::collections::BTreeSet;

use drover_proto::ids::validate_id;
use drover_proto::pb::{self, executor_event, task_status::Reason, task_status::Source, TaskState};
use drover_proto::{states, ExecutorId, FrameworkId, TaskId};

use super::*;
use crate::agent::core::{Now, ReplyId};
use crate::layout::TaskKey;
use crate::status_updates::StatusUpdate;

fn request_ids(
    framework_id: Option<FrameworkId>,
    executor_id: Option<ExecutorId>,
) -> Result<TaskKey, Refusal> {
    let fw = framework_id.unwrap_or_default();
    let id = executor_id.unwrap_or_default();
    validate_id("framework", fw.as_str()).map_err(Refusal::InvalidArgument)?;
    validate_id("executor", id.as_str()).map_err(Refusal::InvalidArgument)?;
    Ok(TaskKey::executor(&fw, &id))
}

/// Task states an executor may report.
fn reportable(state: TaskState) -> bool {
    use TaskState::*;
    matches!(
        state,
        TaskStarting
            | TaskRunning
            | TaskKilling
            | TaskFinished
            | TaskFailed
            | TaskKilled
            | TaskError
    )
}

/// Longest `TaskStatus.message` kept from an executor.
const MAX_MESSAGE_BYTES: usize = 4096;

/// Largest `TaskStatus.data` accepted from an executor.
const MAX_DATA_BYTES: usize = 64 * 1024;

impl AgentCore {
    /// An executor subscribes; the driver holds its event stream as `subscription`. The
    /// answer, like every answer to an executor, waits for the batch's durability point.
    pub(crate) fn on_executor_subscribe(
        &mut self,
        now: Now,
        request: pb::ExecutorSubscribeRequest,
        subscription: SubscriptionId,
        reply: ReplyId,
    ) {
        self.now = now;
        let result = self.subscribe(request, subscription);
        self.push(Effect::Answer { reply, result });
    }

    /// An executor's `Update` call.
    pub(crate) fn on_executor_update(
        &mut self,
        now: Now,
        call: pb::ExecutorUpdateCall,
        reply: ReplyId,
    ) {
        self.now = now;
        let result = self.update(call);
        self.push(Effect::Answer { reply, result });
    }

    /// An executor's `Message` call.
    pub(crate) fn on_executor_message(
        &mut self,
        now: Now,
        call: pb::ExecutorMessageCall,
        reply: ReplyId,
    ) {
        self.now = now;
        let result = self.message(call);
        self.push(Effect::Answer { reply, result });
    }

    fn subscribe(
        &mut self,
        request: pb::ExecutorSubscribeRequest,
        subscription: SubscriptionId,
    ) -> Result<(), Refusal> {
        let ekey = request_ids(request.framework_id, request.executor_id)?;
        let generation = self.executors.next();
        let agent_id = self.agent_id.clone();
        let Some(entry) = self.executors.entries.get_mut(&ekey) else {
            return Err(Refusal::NotFound(format!(
                "executor {} of framework {} is not running on this agent",
                ekey.executor_id().unwrap_or_default(),
                ekey.framework_id
            )));
        };
        if entry.phase == Phase::Launching {
            return Err(Refusal::Unavailable(
                "the executor's container is still starting; subscribe again".into(),
            ));
        }
        let old = entry.subscriber.replace(subscription);
        tracing::info!(executor = %ekey, "executor subscribed");
        entry.generation = generation;
        let launched: BTreeSet<TaskId> = request.launched_tasks.into_iter().collect();
        entry.sent = entry.tasks.intersection(&launched).cloned().collect();
        let subscribed = event(executor_event::Event::Subscribed(
            executor_event::Subscribed {
                agent_id,
                executor_info: Some(entry.info.clone()),
                framework_info: entry.checkpoint.framework_info.clone(),
            },
        ));
        if let Some(old) = old {
            // Events staged for the earlier subscription are not delivered: what they said
            // is said again (launches, kills) or answered again (acknowledgements of
            // resent updates).
            self.retain_effects(
                |e| !matches!(e, Effect::ToExecutor { subscription, .. } if *subscription == old),
            );
            self.push(Effect::EndSubscription {
                subscription: old,
                why: Refusal::Aborted(
                    "a newer subscription of the same executor replaced this one".into(),
                ),
            });
        }
        self.tell_executor(&ekey, subscribed);
        let entry = self.executors.entries.get_mut(&ekey).expect("found above");
        if entry.phase == Phase::ShuttingDown {
            self.tell_executor(
                &ekey,
                event(executor_event::Event::Shutdown(executor_event::Shutdown {})),
            );
            self.schedule(&ekey, generation, TimerKind::Shutdown, SHUTDOWN_GRACE);
            return Ok(());
        }
        entry.phase = Phase::Subscribed;
        let unsent: Vec<TaskId> = entry.tasks.difference(&entry.sent).cloned().collect();
        let kills: Vec<(TaskId, Reason)> = entry
            .killing
            .iter()
            .filter(|(t, _)| entry.sent.contains(*t))
            .map(|(t, r)| (t.clone(), *r))
            .collect();
        for task_id in unsent {
            let key = TaskKey {
                framework_id: ekey.framework_id.clone(),
                task_id,
            };
            self.send_launch(&ekey, &key);
        }
        // A kill asked for while it was away is asked again.
        for (task_id, _) in kills {
            let key = TaskKey {
                framework_id: ekey.framework_id.clone(),
                task_id,
            };
            self.send_kill(&ekey, &key, None);
        }
        Ok(())
    }

    /// The entry of an executor that may send `what` (updates, messages): it runs here and
    /// is subscribed.
    fn subscribed_entry(
        &mut self,
        ekey: &TaskKey,
        what: &str,
    ) -> Result<&mut ExecutorEntry, Refusal> {
        let Some(entry) = self.executors.entries.get_mut(ekey) else {
            return Err(Refusal::NotFound(format!(
                "executor {} of framework {} is not running on this agent",
                ekey.executor_id().unwrap_or_default(),
                ekey.framework_id
            )));
        };
        if entry.subscriber.is_none() {
            return Err(Refusal::Unavailable(format!(
                "the executor is not subscribed; subscribe (again) before sending {what}"
            )));
        }
        Ok(entry)
    }

    /// An executor's message to its framework: relayed once through the master, best
    /// effort. Only a subscribed executor may send; without a master it cannot go.
    fn message(&mut self, call: pb::ExecutorMessageCall) -> Result<(), Refusal> {
        let ekey = request_ids(call.framework_id, call.executor_id)?;
        let executor_id = ekey.executor_id().unwrap_or_default();
        if call.data.len() > drover_proto::MAX_EXECUTOR_MESSAGE_BYTES {
            return Err(Refusal::InvalidArgument(format!(
                "the message's data of {} bytes is over the limit of {} bytes",
                call.data.len(),
                drover_proto::MAX_EXECUTOR_MESSAGE_BYTES
            )));
        }
        let now = self.now.instant;
        let entry = self.subscribed_entry(&ekey, "messages")?;
        let (start, count) = match entry.message_window {
            Some((start, count)) if now.duration_since(start) < Duration::from_secs(1) => {
                (start, count)
            }
            _ => (now, 0),
        };
        if count >= MAX_MESSAGES_PER_SECOND {
            return Err(Refusal::ResourceExhausted(format!(
                "an executor may send its framework at most {MAX_MESSAGES_PER_SECOND} messages \
                 per second; send again shortly"
            )));
        }
        entry.message_window = Some((start, count + 1));
        let message = pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::ExecutorMessage(
                pb::agent_message::ExecutorMessage {
                    framework_id: Some(ekey.framework_id.clone()),
                    executor_id: Some(executor_id),
                    data: call.data,
                },
            )),
        };
        if self.master.is_none() {
            return Err(Refusal::Unavailable(
                "the agent has no master right now; send the message again later".into(),
            ));
        }
        self.relay(message);
        Ok(())
    }

    fn update(&mut self, call: pb::ExecutorUpdateCall) -> Result<(), Refusal> {
        let ekey = request_ids(call.framework_id, call.executor_id)?;
        let executor_id = ekey.executor_id().unwrap_or_default();
        self.subscribed_entry(&ekey, "updates")?;
        let Some(status) = call.status else {
            return Err(Refusal::InvalidArgument(
                "the update carries no status".into(),
            ));
        };
        let task_id = status.task_id.clone().unwrap_or_default();
        validate_id("task", task_id.as_str()).map_err(Refusal::InvalidArgument)?;
        let key = TaskKey {
            framework_id: ekey.framework_id.clone(),
            task_id: task_id.clone(),
        };
        let Some(task) = self.tasks.get(&key) else {
            return Err(Refusal::NotFound(format!(
                "task {task_id} is not known to this agent"
            )));
        };
        if executor_id_of(&task.checkpoint.task).as_ref() != Some(&executor_id) {
            return Err(Refusal::PermissionDenied(format!(
                "task {task_id} is not run by executor {executor_id}"
            )));
        }
        let state = TaskState::try_from(status.state).unwrap_or(TaskState::Unspecified);
        if !reportable(state) {
            return Err(Refusal::InvalidArgument(format!(
                "an executor may report STARTING, RUNNING, KILLING, FINISHED, FAILED, KILLED or ERROR, not {}",
                states::name(state)
            )));
        }
        if status.uuid.len() != 16 {
            return Err(Refusal::InvalidArgument(
                "the update needs a 16-byte uuid (the SDK's driver sets one)".into(),
            ));
        }
        if status.data.len() > MAX_DATA_BYTES {
            return Err(Refusal::InvalidArgument(format!(
                "the update's data is larger than {MAX_DATA_BYTES} bytes"
            )));
        }
        let core = self.updates.core();
        if core.has_pending_uuid(&key, &status.uuid) {
            // A resend (after a broken stream or an agent restart): already on its way.
            return Ok(());
        }
        if self
            .executors
            .acknowledged
            .get(&key)
            .is_some_and(|acked| acked.contains(&status.uuid))
        {
            // A resend of an update whose acknowledgement the executor missed.
            let ack = event(executor_event::Event::Acknowledged(
                executor_event::Acknowledged {
                    task_id: Some(task_id),
                    uuid: status.uuid,
                },
            ));
            self.tell_executor(&ekey, ack);
            return Ok(());
        }
        if task.terminal {
            if core.latest_state(&key) == Some(state) {
                // A resend of the terminal update, already acknowledged.
                return Ok(());
            }
            return Err(Refusal::FailedPrecondition(format!(
                "task {task_id} has already ended ({})",
                states::name(self.latest_state(&key))
            )));
        }
        let mut message = status.message;
        if message.len() > MAX_MESSAGE_BYTES {
            let mut end = MAX_MESSAGE_BYTES;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        let reason = Reason::try_from(status.reason).unwrap_or(Reason::Unspecified);
        let status = pb::TaskStatus {
            task_id: Some(task_id.clone()),
            state: state as i32,
            message,
            source: Source::Executor as i32,
            reason: reason as i32,
            agent_id: self.agent_id.clone(),
            executor_id: Some(executor_id.clone()),
            timestamp: self.now.unix_seconds,
            uuid: status.uuid,
            healthy: status.healthy,
            check_status: None,
            exit_code: status.exit_code,
            data: status.data,
        };
        tracing::info!(task = %key, state = states::name(state), executor = %executor_id, "status update from the executor");
        self.enqueue_update(
            &key,
            StatusUpdate {
                framework_id: key.framework_id.clone(),
                status,
            },
        );
        if states::is_terminal(state) {
            if let Some(t) = self.tasks.get_mut(&key) {
                t.terminal = true;
            }
            self.metrics.task_terminal(state);
            let entry = self.executors.entries.get_mut(&ekey).expect("found above");
            entry.tasks.remove(&task_id);
            entry.killing.remove(&task_id);
            if entry.tasks.is_empty() {
                self.shut_down_executor(&ekey);
            }
        }
        Ok(())
    }

    /// The acknowledgement of an update of an executor's task, relayed to it.
    /// `completed`: it was the terminal one, and the agent forgets the task.
    pub(crate) fn relay_ack(
        &mut self,
        key: &TaskKey,
        executor_id: &ExecutorId,
        uuid: &[u8],
        completed: bool,
    ) {
        if completed {
            self.executors.acknowledged.remove(key);
        } else {
            let acked = self.executors.acknowledged.entry(key.clone()).or_default();
            if acked.len() >= 16 {
                acked.remove(0);
            }
            acked.push(uuid.to_vec());
        }
        let ekey = TaskKey::executor(&key.framework_id, executor_id);
        self.tell_executor(
            &ekey,
            event(executor_event::Event::Acknowledged(
                executor_event::Acknowledged {
                    task_id: Some(key.task_id.clone()),
                    uuid: uuid.to_vec(),
                },
            )),
        );
    }
}
