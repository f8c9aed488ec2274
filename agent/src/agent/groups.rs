//! Task groups under the agent's built-in default executor.
//!
//! The default executor is not a process: the agent itself plays it. A RunTaskGroup's
//! tasks are validated together (any invalid task refuses the group: every task
//! TASK_ERROR, REASON_TASK_GROUP_INVALID), checkpointed like lone tasks (each carrying
//! the group's ExecutorInfo, which is how recovery finds the group again), and launched
//! in one round, all or nothing. What the tasks share lives in the executor's sandbox,
//! `executors/<framework>/<executor>/`:
//! - `shared/`: the group's volume, at `shared` in every task's sandbox (a bind mount in
//!   a linux container, so also at `/mnt/sandbox/shared` inside an image; a symlink for
//!   a process task);
//! - `ns/`: the namespace holder ([`holder`]) whose IPC namespace (and network namespace,
//!   for a group whose executor asks for an ISOLATED network) every linux container of
//!   the group joins. Each task keeps its own PID, mount and UTS namespaces and cgroups.
//!
//! While the group runs, a task ending FAILED or KILLED (or lost) makes the agent kill
//! the rest of the group; FINISHED tasks do not. Once every task has ended, the holder
//! is torn down. A launch that fails for one task kills the started ones and fails
//! every task of the group.
//!
//! The decisions are the core's; making and releasing the namespace holder are the
//! driver's ([`Launch::holder`], [`Effect::DestroyGroup`]).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use drover_proto::ids::validate_id;
use drover_proto::pb::{
    self, executor_info, master_message::RunTaskGroup, task_status::Reason, task_status::Source,
    TaskState,
};
use drover_proto::{states, ExecutorId, FrameworkId};

use super::core::{AgentCore, Effect, Launch, TaskEntry};
use super::tasks::{create_sandbox, LaunchResult};
use crate::containerizer::{LaunchSpec, TerminalStatus};
use crate::error::AgentError;
use crate::journal::TaskCheckpoint;
use crate::layout::TaskKey;
use crate::supervisor::records::TaskGroupLaunch;

/// A task group is named by its framework and its executor's id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct GroupKey {
    pub framework_id: FrameworkId,
    pub executor_id: ExecutorId,
}

/// What the agent knows about one task group.
#[derive(Debug, Default)]
pub(crate) struct Group {
    pub tasks: BTreeSet<TaskKey>,
    /// The group's executor asked for an ISOLATED network.
    pub isolated_network: bool,
    /// Set when a task of the group failed to launch: why every other task fails.
    pub launch_failed: Option<String>,
    /// Set when a task's end made the agent kill the rest: why they were killed.
    pub killed_because: Option<String>,
}

/// The group a task belongs to, if it carries a DEFAULT executor with ids that can name
/// a directory (a group refused for bad ids never gets one).
pub(crate) fn group_of(framework_id: &FrameworkId, task: &pb::TaskInfo) -> Option<GroupKey> {
    let e = task.executor.as_ref()?;
    let executor_id = e.executor_id.clone().unwrap_or_default();
    let usable = e.r#type == executor_info::Type::Default as i32
        && validate_id("executor", executor_id.as_str()).is_ok()
        && validate_id("framework", framework_id.as_str()).is_ok();
    usable.then(|| GroupKey {
        framework_id: framework_id.clone(),
        executor_id,
    })
}

fn isolated(executor: &pb::ExecutorInfo) -> bool {
    executor
        .container
        .as_ref()
        .is_some_and(|c| c.network == pb::container_info::Network::Isolated as i32)
}

/// Why the executor of a RunTaskGroup cannot run a group, if it cannot.
fn executor_problem(framework_id: &FrameworkId, executor: &pb::ExecutorInfo) -> Option<String> {
    match executor_info::Type::try_from(executor.r#type) {
        Ok(executor_info::Type::Default) | Ok(executor_info::Type::Unspecified) => {}
        _ => return Some("a task group runs under the DEFAULT executor only".into()),
    }
    let id = executor.executor_id.clone().unwrap_or_default();
    if let Err(e) = validate_id("executor", id.as_str()) {
        return Some(e);
    }
    // The ids name the executor's directory.
    validate_id("framework", framework_id.as_str()).err()
}

impl AgentCore {
    /// `run_task_group`: idempotent by task id like `run_task` (tasks the agent already
    /// has, or that already ran here, are skipped). See the module docs.
    pub(crate) fn on_run_task_group(&mut self, rtg: RunTaskGroup) -> Result<(), AgentError> {
        let framework_id = rtg.framework_id.unwrap_or_default();
        let mut executor = rtg.executor.unwrap_or_default();
        executor.r#type = executor_info::Type::Default as i32;
        executor.framework_id = Some(framework_id.clone());
        let tasks = rtg.task_group.map(|g| g.tasks).unwrap_or_default();
        if self.stopping {
            tracing::warn!(framework = %framework_id, "ignoring a task group while the agent shuts down");
            return Ok(());
        }
        let fresh: Vec<pb::TaskInfo> = tasks
            .into_iter()
            .filter(|t| {
                let key = TaskKey {
                    framework_id: framework_id.clone(),
                    task_id: t.task_id.clone().unwrap_or_default(),
                };
                let ran = key.validate().is_ok() && self.layout.task_meta(&key).dir().exists();
                !self.tasks.contains_key(&key) && !ran
            })
            .collect();
        if fresh.is_empty() {
            tracing::debug!(framework = %framework_id, "launch of a task group already known; ignoring it");
            return Ok(());
        }

        let mut seen = HashSet::new();
        let root = self.root;
        let mut culprit: Option<(Option<TaskKey>, String)> =
            executor_problem(&framework_id, &executor)
                .or_else(|| {
                    (isolated(&executor) && !root).then(|| {
                        "the group asks for an ISOLATED network, which needs linux containers \
                         (this agent does not run as root)"
                            .to_string()
                    })
                })
                .map(|why| (None, why));
        let mut keys = Vec::with_capacity(fresh.len());
        for task in &fresh {
            let key = TaskKey {
                framework_id: framework_id.clone(),
                task_id: task.task_id.clone().unwrap_or_default(),
            };
            let problem = key
                .validate()
                .err()
                .or_else(|| {
                    (!seen.insert(key.clone()))
                        .then(|| "the task id appears twice in the group".into())
                })
                .or_else(|| self.invalid_task(task))
                .or_else(|| group_task_problem(task, &executor));
            if let (None, Some(why)) = (&culprit, problem) {
                culprit = Some((Some(key.clone()), why));
            }
            keys.push(key);
        }

        // Checkpointed before anything is reported or launched, as for a lone task.
        for (task, key) in fresh.into_iter().zip(&keys) {
            if self.tasks.contains_key(key) {
                continue; // a duplicate id within the group: the first one stands
            }
            let mut task = task;
            task.executor = Some(executor.clone());
            let checkpoint = TaskCheckpoint {
                framework_id: framework_id.clone(),
                framework_info: rtg.framework_info.clone(),
                task,
            };
            if key.validate().is_ok() {
                self.checkpoint_task(key, &checkpoint)?;
            }
            self.tasks.insert(
                key.clone(),
                TaskEntry {
                    checkpoint,
                    terminal: false,
                    watched: false,
                    containerizer: None,
                },
            );
        }
        let keys: Vec<TaskKey> = {
            let mut unique = HashSet::new();
            keys.into_iter()
                .filter(|k| unique.insert(k.clone()))
                .collect()
        };

        if let Some((bad, why)) = culprit {
            tracing::warn!(framework = %framework_id, "refusing an invalid task group: {why}");
            for key in &keys {
                let message = match &bad {
                    Some(b) if b != key => format!(
                        "task {} of the task group is invalid ({why}); the group is refused as a whole",
                        b.task_id
                    ),
                    _ => format!("the task group is invalid: {why}"),
                };
                self.enqueue_status(
                    key,
                    TaskState::TaskError,
                    Source::Agent,
                    Reason::TaskGroupInvalid,
                    message,
                    None,
                );
            }
            return Ok(());
        }

        let gk = GroupKey {
            framework_id: framework_id.clone(),
            executor_id: executor.executor_id.clone().unwrap_or_default(),
        };
        let dir = self
            .layout
            .executor_dir(framework_id.as_str(), gk.executor_id.as_str());
        let shared = dir.join("shared");
        let journal = &mut self.journal;
        let mut failure = make_shared_volume(&shared, |d| journal.create_dir_all(d))
            .err()
            .map(|e| {
                format!(
                    "cannot create the group's shared volume {}: {e}",
                    shared.display()
                )
            });
        if failure.is_none() {
            for key in &keys {
                let sandbox = self.layout.sandbox(key);
                if let Err(e) = create_sandbox(&mut self.journal, &sandbox) {
                    failure = Some(format!(
                        "cannot create the sandbox of task {} ({}): {e}",
                        key.task_id,
                        sandbox.display()
                    ));
                    break;
                }
            }
        }
        if let Some(why) = failure {
            for key in &keys {
                self.enqueue_status(
                    key,
                    TaskState::TaskFailed,
                    Source::Agent,
                    Reason::ContainerLaunchFailed,
                    why.clone(),
                    None,
                );
            }
            return Ok(());
        }

        // The same executor id's previous group ended earlier in this batch: its
        // teardown (staged, carried out after the commit but before these launches)
        // removes the folder with the volume just made here, so the volume is made
        // again after it (empty, as a new group's is).
        let torn_down = self
            .effects()
            .iter()
            .any(|e| matches!(e, Effect::DestroyGroup(g) if *g == gk));
        if torn_down {
            self.push(Effect::RenewSharedVolume(gk.clone()));
        }
        let ns = dir.join("ns");
        let group = self.groups.entry(gk).or_default();
        if group.tasks.is_empty() {
            group.isolated_network = isolated(&executor);
        }
        group.tasks.extend(keys.iter().cloned());
        // Process tasks only when not root: they share the volume, no namespaces.
        let holder = self.root.then_some((ns, group.isolated_network));
        for key in &keys {
            self.enqueue_status(
                key,
                TaskState::TaskStarting,
                Source::Executor,
                Reason::Unspecified,
                String::new(),
                None,
            );
            // Under its framework's user, like a lone task.
            let task = self.as_launched(&self.tasks[key].checkpoint);
            self.launching.insert(key.clone());
            self.push(Effect::Launch(Box::new(Launch {
                spec: LaunchSpec {
                    key: key.clone(),
                    task,
                    agent_id: self.agent_id.clone().unwrap_or_default(),
                    sandbox: self.layout.sandbox(key),
                    meta: self.layout.task_meta(key),
                    group: Some(TaskGroupLaunch {
                        shared: shared.clone(),
                        ipc_namespace: None,
                        net_namespace: None,
                    }),
                },
                holder: holder.clone(),
            })));
        }
        Ok(())
    }

    /// The group of a task the agent knows.
    pub(crate) fn group_key(&self, key: &TaskKey) -> Option<GroupKey> {
        let entry = self.tasks.get(key)?;
        group_of(&key.framework_id, &entry.checkpoint.task)
    }

    /// After a round: the launches of group tasks are settled here, all or nothing; the
    /// lone tasks' results are handed back.
    pub(crate) fn settle_group_launches(
        &mut self,
        results: Vec<LaunchResult>,
    ) -> Vec<LaunchResult> {
        let mut lone = Vec::new();
        let mut by_group: BTreeMap<GroupKey, Vec<LaunchResult>> = BTreeMap::new();
        for (key, result, name) in results {
            match self.group_key(&key) {
                Some(gk) => by_group.entry(gk).or_default().push((key, result, name)),
                None => lone.push((key, result, name)),
            }
        }
        for (gk, members) in by_group {
            let failed = members
                .iter()
                .find_map(|(k, r, _)| r.as_ref().err().map(|e| (k, e)));
            let Some((bad, err)) = failed else {
                for (key, _, name) in &members {
                    self.metrics.task_launched();
                    self.watch(key, *name);
                    self.enqueue_status(
                        key,
                        TaskState::TaskRunning,
                        Source::Executor,
                        Reason::Unspecified,
                        String::new(),
                        None,
                    );
                    match self.kills_after_launch.remove(key) {
                        Some((policy, reason)) => self.on_kill_task(key, policy, reason),
                        None => self.start_checks(key),
                    }
                }
                continue;
            };
            let note = format!(
                "task {} of its task group failed to launch ({err}); the group launches all or nothing",
                bad.task_id
            );
            tracing::warn!(group = ?gk, "{note}");
            if let Some(g) = self.groups.get_mut(&gk) {
                g.launch_failed = Some(note);
            }
            let round: HashSet<TaskKey> = members.iter().map(|(k, _, _)| k.clone()).collect();
            for (key, result, name) in members {
                // The group is killed anyway: a kill that waited for the launch is moot.
                self.kills_after_launch.remove(&key);
                match result {
                    Ok(()) => {
                        // Reported when its container is gone (see `adjust_group_status`).
                        self.watch(&key, name);
                        self.push(Effect::Kill {
                            key,
                            grace: std::time::Duration::ZERO,
                            reason: Reason::ContainerLaunchFailed,
                        });
                    }
                    Err(e) => self.launch_failed(&key, &e),
                }
            }
            // Tasks that joined the group in an earlier round go too: the group as a
            // whole failed, and every task's end says so.
            let earlier: Vec<TaskKey> = self
                .groups
                .get(&gk)
                .map(|g| g.tasks.iter().cloned().collect())
                .unwrap_or_default();
            for key in earlier {
                let running = self
                    .tasks
                    .get(&key)
                    .is_some_and(|e| !e.terminal && e.watched);
                if running && !round.contains(&key) {
                    let grace = self.grace_for(&key, None);
                    self.push(Effect::Kill {
                        key,
                        grace,
                        reason: Reason::ContainerLaunchFailed,
                    });
                }
            }
            self.teardown_group_if_done(&gk);
        }
        lone
    }

    /// The terminal status of a group task, told in the group's terms: after a failed
    /// launch every task fails; after the agent killed the rest of a group, the killed
    /// ones say why.
    pub(crate) fn adjust_group_status(
        &self,
        key: &TaskKey,
        mut status: TerminalStatus,
    ) -> TerminalStatus {
        let Some(group) = self.group_key(key).and_then(|gk| self.groups.get(&gk)) else {
            return status;
        };
        if let Some(note) = &group.launch_failed {
            status.state = TaskState::TaskFailed;
            status.reason = Reason::ContainerLaunchFailed;
            status.source = Source::Agent;
            status.message = format!("{note}; {}", status.message);
        } else if let (Some(note), TaskState::TaskKilled) = (&group.killed_because, status.state) {
            if status.reason == Reason::KilledByFramework {
                status.reason = Reason::Unspecified;
            }
            status.message = format!("{note}; {}", status.message);
        }
        status
    }

    /// After a group task's terminal update: a task that did not finish takes the rest
    /// of its group down; the last one to end tears the holder down.
    pub(crate) fn on_group_task_ended(&mut self, key: &TaskKey, state: TaskState) {
        let Some(gk) = self.group_key(key) else {
            return;
        };
        let Some(group) = self.groups.get_mut(&gk) else {
            return;
        };
        let takes_group_down = state != TaskState::TaskFinished
            && group.launch_failed.is_none()
            && group.killed_because.is_none();
        if takes_group_down {
            group.killed_because = Some(format!(
                "killed because task {} of its task group ended {}",
                key.task_id,
                states::name(state)
            ));
            let others: Vec<TaskKey> = group.tasks.iter().filter(|k| *k != key).cloned().collect();
            for other in others {
                if self.launching.contains(&other) {
                    // Joined the group in a later round, its container not started yet:
                    // killed like any task whose launch is under way.
                    self.on_kill_task(&other, None, Reason::Unspecified);
                    continue;
                }
                let Some(e) = self.tasks.get(&other) else {
                    continue;
                };
                if e.terminal || !e.watched {
                    continue;
                }
                // As any kill: checks stop (a dying task must not be killed again as
                // unhealthy), and a framework that asked for it hears KILLING first (the
                // update is queued ahead of the task's terminal one).
                let killing =
                    super::health::wants_killing_state(e.checkpoint.framework_info.as_ref());
                self.stop_checks(&other);
                if killing && self.latest_state(&other) != TaskState::TaskKilling {
                    self.enqueue_status(
                        &other,
                        TaskState::TaskKilling,
                        Source::Executor,
                        Reason::Unspecified,
                        format!(
                            "task {} of its task group ended {}",
                            key.task_id,
                            states::name(state)
                        ),
                        None,
                    );
                }
                let grace = self.grace_for(&other, None);
                tracing::info!(task = %other, "killing the task: {} of its group ended {}", key.task_id, states::name(state));
                self.push(Effect::Kill {
                    key: other,
                    grace,
                    reason: Reason::Unspecified,
                });
            }
        }
        self.teardown_group_if_done(&gk);
    }

    /// Tears the group's namespace holder down once none of its tasks has a container
    /// (or a launch) left.
    pub(crate) fn teardown_group_if_done(&mut self, gk: &GroupKey) {
        let Some(group) = self.groups.get(gk) else {
            return;
        };
        let live = group.tasks.iter().any(|k| {
            self.tasks.get(k).is_some_and(|e| !e.terminal || e.watched)
                || self.launching.contains(k)
        });
        if live {
            return;
        }
        self.groups.remove(gk);
        self.push(Effect::DestroyGroup(gk.clone()));
    }

    /// After recovery: the groups of the recovered tasks are known again; holders of
    /// groups with no task left running go. (Holders no recovered task claims are the
    /// driver's to find: see `driver.rs`.)
    pub(crate) fn recover_groups(&mut self) {
        for (key, entry) in &self.tasks {
            if let Some(gk) = group_of(&key.framework_id, &entry.checkpoint.task) {
                let isolated_network = entry
                    .checkpoint
                    .task
                    .executor
                    .as_ref()
                    .is_some_and(isolated);
                let g = self.groups.entry(gk).or_default();
                g.isolated_network = isolated_network;
                g.tasks.insert(key.clone());
            }
        }
        let known: Vec<GroupKey> = self.groups.keys().cloned().collect();
        for gk in &known {
            self.teardown_group_if_done(gk);
        }
    }
}

/// Makes a group's shared volume at `shared` with `create_dir_all` (which decides how
/// durable the directories are).
pub(crate) fn make_shared_volume(
    shared: &std::path::Path,
    create_dir_all: impl FnOnce(&std::path::Path) -> std::io::Result<()>,
) -> std::io::Result<()> {
    create_dir_all(shared)?;
    // The group's tasks may run as different users (each its own, or an image's): like
    // /tmp, everyone in the group may write, and only a file's owner may remove it.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(shared, std::fs::Permissions::from_mode(0o1777))
}

/// What a task of a group may not do that a lone task may.
fn group_task_problem(task: &pb::TaskInfo, executor: &pb::ExecutorInfo) -> Option<String> {
    if let Some(own) = &task.executor {
        if own.executor_id != executor.executor_id {
            return Some("a task of a group may only name the group's executor".into());
        }
    }
    if task
        .container
        .as_ref()
        .is_some_and(|c| c.r#type == pb::container_info::Type::Docker as i32)
    {
        return Some("Docker tasks cannot join a task group".into());
    }
    if task
        .container
        .as_ref()
        .is_some_and(|c| c.network == pb::container_info::Network::Isolated as i32)
    {
        return Some("a task of a group shares the group's network: set ISOLATED on the executor's container, not on the task".into());
    }
    None
}

/// How many of the queued launches to start in one round of at most `limit`, so that no
/// task group is split across rounds.
pub(crate) fn launch_round(queue: &[Launch], limit: usize) -> usize {
    let mut n = limit.min(queue.len());
    let gk = |l: &Launch| {
        l.spec
            .group
            .as_ref()
            .and_then(|_| group_of(&l.spec.key.framework_id, &l.spec.task))
    };
    while n > 0 && n < queue.len() {
        match (gk(&queue[n - 1]), gk(&queue[n])) {
            (Some(a), Some(b)) if a == b => n += 1,
            _ => break,
        }
    }
    n
}
