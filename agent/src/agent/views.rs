//! Views of the core's state: what the agent answers `GetState` with, what it registers
//! with, which tasks the disk watcher measures, which folders the garbage collector must
//! leave, and whether a task is still active. Pure
//! functions of [`AgentCore`]; the one figure the core does not hold (a container's
//! resource usage) is asked of the caller.

use std::collections::BTreeSet;

use drover_proto::pb;

use super::core::AgentCore;
use super::executors::executor_id_of;
use crate::layout::TaskKey;

/// The agent's state for `GetState`. `usage` gives a watched container's latest resource
/// usage; `master` is the connected master's address (empty without one).
pub(crate) fn state(
    core: &AgentCore,
    usage: impl Fn(&TaskKey) -> Option<pb::ResourceStatistics>,
) -> pb::GetAgentStateResponse {
    let updates = core.updates.core();
    let tasks = core
        .tasks
        .iter()
        .map(|(key, entry)| pb::AgentTaskState {
            framework_id: Some(key.framework_id.clone()),
            task_id: Some(key.task_id.clone()),
            state: core.latest_state(key) as i32,
            sandbox: if key.validate().is_ok() {
                core.layout.sandbox(key).to_string_lossy().into_owned()
            } else {
                String::new()
            },
            exit_code: updates.latest_exit_code(key),
            pending_updates: updates.pending(key) as u32,
            usage: if entry.watched { usage(key) } else { None },
            containerizer: entry.containerizer.unwrap_or_default().to_string(),
        })
        .collect();
    pb::GetAgentStateResponse {
        agent_id: core.agent_id.clone(),
        info: Some(core.info.clone()),
        tasks,
        master: core.master.clone().unwrap_or_default(),
    }
}

/// What the agent registers (or re-registers) with: its id, its info, every task it knows
/// with its latest state, and their frameworks.
pub(crate) fn registration(core: &AgentCore) -> pb::agent_message::Register {
    let frameworks: BTreeSet<_> = core.tasks.keys().map(|k| k.framework_id.clone()).collect();
    let tasks = core
        .tasks
        .iter()
        .map(|(key, e)| pb::AgentTask {
            framework_id: Some(key.framework_id.clone()),
            task: Some(e.checkpoint.task.clone()),
            state: core.latest_state(key) as i32,
        })
        .collect();
    pb::agent_message::Register {
        agent_id: core.agent_id.clone(),
        info: Some(core.info.clone()),
        tasks,
        frameworks: frameworks.into_iter().collect(),
    }
}

/// What the disk watcher measures and rotates: every running task, with its `disk`
/// resource in bytes, and every running custom executor (its own `stdout`/`stderr`
/// rotate like a task's; it has no disk resource of its own, so it is measured but never
/// held to a limit).
pub(crate) fn watched_tasks(core: &AgentCore) -> Vec<crate::disk::WatchedTask> {
    let tasks = core
        .tasks
        .iter()
        .filter(|(key, e)| !e.terminal && e.watched && key.validate().is_ok())
        .map(|(key, e)| crate::disk::WatchedTask {
            key: key.clone(),
            disk_limit_bytes: drover_proto::Resources::from_proto(&e.checkpoint.task.resources)
                .ok()
                .map(|r| r.disk())
                .filter(|mb| *mb > 0.0)
                .map(|mb| (mb * 1024.0 * 1024.0) as u64),
        });
    let executors = core
        .executors
        .watched_keys()
        .filter(|key| key.validate().is_ok())
        .map(|key| crate::disk::WatchedTask {
            key: key.clone(),
            disk_limit_bytes: None,
        });
    tasks.chain(executors).collect()
}

/// Every key whose folders the garbage collector must leave: the tasks the agent
/// tracks, the custom executors it runs, and the executor of every tracked task (its
/// sandbox holds the task's output until the task is acknowledged and forgotten).
pub(crate) fn known_keys(core: &AgentCore) -> Vec<TaskKey> {
    let mut keys: BTreeSet<TaskKey> = core.tasks.keys().cloned().collect();
    keys.extend(core.executors.keys().cloned());
    for (key, entry) in &core.tasks {
        if let Some(id) = executor_id_of(&entry.checkpoint.task) {
            keys.insert(TaskKey::executor(&key.framework_id, &id));
        }
    }
    keys.into_iter().collect()
}

/// Whether a task may still write to its sandbox (known, no terminal update yet), or a
/// custom executor is starting or runs.
pub(crate) fn task_active(core: &AgentCore, key: &TaskKey) -> bool {
    match key.executor_id() {
        Some(_) => core.executors.runs(key),
        None => core.tasks.get(key).is_some_and(|e| !e.terminal),
    }
}
