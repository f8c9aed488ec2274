//! The calls of a custom executor (`Subscribe`, `Update`, `Message`) and what goes back to
//! it (events, answers, relayed acknowledgements).

use std::collections::BTreeSet;

use drover_proto::ids::validate_id;
use drover_proto::pb::{self, executor_event, task_status::Reason, task_status::Source, TaskState};
use drover_proto::{states, ExecutorId, FrameworkId, TaskId};
use tonic::Status;

use super::*;
use crate::layout::TaskKey;
use crate::status_updates::StatusUpdate;

fn request_ids(
    framework_id: Option<FrameworkId>,
    executor_id: Option<ExecutorId>,
) -> Result<TaskKey, Status> {
    let fw = framework_id.unwrap_or_default();
    let id = executor_id.unwrap_or_default();
    validate_id("framework", fw.as_str()).map_err(Status::invalid_argument)?;
    validate_id("executor", id.as_str()).map_err(Status::invalid_argument)?;
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

impl AgentLoop {
    /// A call from an executor. Answers wait for the batch's durability point.
    pub(crate) fn on_executor_request(&mut self, request: ExecutorRequest) {
        let (reply, result) = match request {
            ExecutorRequest::Subscribe {
                request,
                events,
                pending_messages,
                reply,
            } => (
                reply,
                self.on_executor_subscribe(request, events, pending_messages),
            ),
            ExecutorRequest::Update { call, reply } => (reply, self.on_executor_update(call)),
            ExecutorRequest::Message { call, reply } => (reply, self.on_executor_message(call)),
        };
        self.executors.replies.push((reply, result));
    }

    fn on_executor_subscribe(
        &mut self,
        request: pb::ExecutorSubscribeRequest,
        events: EventSender,
        pending_messages: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ) -> Result<(), Status> {
        let ekey = request_ids(request.framework_id, request.executor_id)?;
        let generation = self.executors.next();
        let agent_id = self.agent_id.clone();
        let Some(entry) = self.executors.entries.get_mut(&ekey) else {
            return Err(Status::not_found(format!(
                "executor {} of framework {} is not running on this agent",
                ekey.executor_id().unwrap_or_default(),
                ekey.framework_id
            )));
        };
        if entry.phase == Phase::Launching {
            return Err(Status::unavailable(
                "the executor's container is still starting; subscribe again",
            ));
        }
        if let Some(old) = entry.subscriber.take() {
            let _ = old.events.send(Err(Status::aborted(
                "a newer subscription of the same executor replaced this one",
            )));
        }
        tracing::info!(executor = %ekey, "executor subscribed");
        entry.subscriber = Some(Subscriber {
            events,
            pending_messages,
        });
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
        // Events queued for an earlier subscription must not reach this one before its
        // SUBSCRIBED; what they said is said again (launches, kills) or answered again
        // (acknowledgements of resent updates).
        self.executors.outbox.retain(|(k, _)| k != &ekey);
        self.executors.outbox.push((ekey.clone(), subscribed));
        let entry = self.executors.entries.get_mut(&ekey).expect("found above");
        if entry.phase == Phase::ShuttingDown {
            self.executors.outbox.push((
                ekey.clone(),
                event(executor_event::Event::Shutdown(executor_event::Shutdown {})),
            ));
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
    ) -> Result<&mut ExecutorEntry, Status> {
        let Some(entry) = self.executors.entries.get_mut(ekey) else {
            return Err(Status::not_found(format!(
                "executor {} of framework {} is not running on this agent",
                ekey.executor_id().unwrap_or_default(),
                ekey.framework_id
            )));
        };
        if entry.subscriber.is_none() {
            return Err(Status::unavailable(format!(
                "the executor is not subscribed; subscribe (again) before sending {what}"
            )));
        }
        Ok(entry)
    }

    /// An executor's message to its framework: relayed once through the master, best
    /// effort. Only a subscribed executor may send; without a master it cannot go.
    fn on_executor_message(&mut self, call: pb::ExecutorMessageCall) -> Result<(), Status> {
        let ekey = request_ids(call.framework_id, call.executor_id)?;
        let executor_id = ekey.executor_id().unwrap_or_default();
        if call.data.len() > drover_proto::MAX_EXECUTOR_MESSAGE_BYTES {
            return Err(Status::invalid_argument(format!(
                "the message's data of {} bytes is over the limit of {} bytes",
                call.data.len(),
                drover_proto::MAX_EXECUTOR_MESSAGE_BYTES
            )));
        }
        let entry = self.subscribed_entry(&ekey, "messages")?;
        let now = tokio::time::Instant::now();
        let (start, count) = match entry.message_window {
            Some((start, count)) if now.duration_since(start) < Duration::from_secs(1) => {
                (start, count)
            }
            _ => (now, 0),
        };
        if count >= MAX_MESSAGES_PER_SECOND {
            return Err(Status::resource_exhausted(format!(
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
        if !self.send_to_master(message) {
            return Err(Status::unavailable(
                "the agent has no master right now; send the message again later",
            ));
        }
        Ok(())
    }

    fn on_executor_update(&mut self, call: pb::ExecutorUpdateCall) -> Result<(), Status> {
        let ekey = request_ids(call.framework_id, call.executor_id)?;
        let executor_id = ekey.executor_id().unwrap_or_default();
        self.subscribed_entry(&ekey, "updates")?;
        let Some(status) = call.status else {
            return Err(Status::invalid_argument("the update carries no status"));
        };
        let task_id = status.task_id.clone().unwrap_or_default();
        validate_id("task", task_id.as_str()).map_err(Status::invalid_argument)?;
        let key = TaskKey {
            framework_id: ekey.framework_id.clone(),
            task_id: task_id.clone(),
        };
        let Some(task) = self.tasks.get(&key) else {
            return Err(Status::not_found(format!(
                "task {task_id} is not known to this agent"
            )));
        };
        if executor_id_of(&task.checkpoint.task).as_ref() != Some(&executor_id) {
            return Err(Status::permission_denied(format!(
                "task {task_id} is not run by executor {executor_id}"
            )));
        }
        let state = TaskState::try_from(status.state).unwrap_or(TaskState::Unspecified);
        if !reportable(state) {
            return Err(Status::invalid_argument(format!(
                "an executor may report STARTING, RUNNING, KILLING, FINISHED, FAILED, KILLED or ERROR, not {}",
                states::name(state)
            )));
        }
        if status.uuid.len() != 16 {
            return Err(Status::invalid_argument(
                "the update needs a 16-byte uuid (the SDK's driver sets one)",
            ));
        }
        if status.data.len() > MAX_DATA_BYTES {
            return Err(Status::invalid_argument(format!(
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
            self.executors.outbox.push((ekey, ack));
            return Ok(());
        }
        if task.terminal {
            if core.latest_state(&key) == Some(state) {
                // A resend of the terminal update, already acknowledged.
                return Ok(());
            }
            return Err(Status::failed_precondition(format!(
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
            timestamp: drover_proto::unix_seconds(),
            uuid: status.uuid,
            healthy: status.healthy,
            check_status: None,
            exit_code: status.exit_code,
            data: status.data,
        };
        tracing::info!(task = %key, state = states::name(state), executor = %executor_id, "status update from the executor");
        self.updates.enqueue(
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
        if !self.executors.entries.contains_key(&ekey) {
            return;
        }
        self.executors.outbox.push((
            ekey,
            event(executor_event::Event::Acknowledged(
                executor_event::Acknowledged {
                    task_id: Some(key.task_id.clone()),
                    uuid: uuid.to_vec(),
                },
            )),
        ));
    }

    /// After the durability point: events to executors and answers to their calls.
    pub(crate) fn flush_executors(&mut self) {
        for (ekey, ev) in std::mem::take(&mut self.executors.outbox) {
            let Some(entry) = self.executors.entries.get_mut(&ekey) else {
                continue;
            };
            let Some(s) = &entry.subscriber else {
                continue;
            };
            if s.events.send(Ok(ev)).is_err() {
                tracing::info!(executor = %ekey, "the executor's stream closed");
                entry.subscriber = None;
            }
        }
        for (reply, result) in std::mem::take(&mut self.executors.replies) {
            let _ = reply.send(result);
        }
    }
}
