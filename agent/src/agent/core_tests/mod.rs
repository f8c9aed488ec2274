//! Unit tests of [`AgentCore`] on a controlled clock, with no containerizer: the test plays
//! the driver (commit, then take the effects) and feeds the core what a containerizer
//! would report (launch results, container ends, recovery probes). Each test's work dir
//! is a temporary directory holding the checkpoint log.

mod executors;
mod groups;
mod restart;
mod tasks;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_proto::pb::{self, master_message::Msg, task_status::Reason, TaskState};
use drover_proto::{AgentId, ExecutorId, FrameworkId, TaskId};

use super::core::{AgentCore, Effect, Exit, Now, Query, SequentialIds};
use super::recovery;
use super::restart::probes_needed;
use super::tasks::LaunchResult;
use super::views;
use crate::config::Config;
use crate::containerizer::{Recovered, Termination};
use crate::error::AgentError;
use crate::fsutil::create_dir_all_durable;
use crate::layout::{Layout, TaskKey};
use crate::metrics::Metrics;
use crate::supervisor::records::{ExitOutcome, ExitRecord};

/// The test's clock: `ms` milliseconds after the start of the test.
#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn at(self, ms: u64) -> Now {
        Now {
            instant: self.0 + Duration::from_millis(ms),
            unix_seconds: 1_000_000.0 + ms as f64 / 1000.0,
        }
    }
}

/// A core on `dir` as a restarted agent builds it: the log read back, every container
/// the core asks about found as `probe` says (never started when it does not say).
fn core_on(dir: &Path, clock: Clock, probe: &[(&str, Recovered)]) -> AgentCore {
    let settings = Config::from_args([
        "--master",
        "127.0.0.1:1",
        "--work-dir",
        dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:7",
    ])
    .unwrap()
    .validate()
    .unwrap();
    let layout = Layout::new(&settings.work_dir);
    for d in [layout.frameworks_meta(), layout.sandboxes_root()] {
        create_dir_all_durable(&d).unwrap();
    }
    let (journal, found) = recovery::load(&layout).unwrap();
    let mut core = AgentCore::new(
        Arc::new(settings),
        pb::AgentInfo {
            address: "127.0.0.1:7".into(),
            ..Default::default()
        },
        Some(AgentId::new("agent-1")),
        Arc::new(Metrics::new()),
        journal,
        false,
        clock.at(0),
    )
    .with_ids(Box::new(SequentialIds::default()));
    let probes = probes_needed(&found)
        .into_iter()
        .map(|key| {
            let found = probe
                .iter()
                .find(|(t, _)| key.task_id.as_str() == *t)
                .map(|(_, r)| *r)
                .unwrap_or(Recovered::NeverStarted);
            (key, (found, Some("fake")))
        })
        .collect();
    core.recover(clock.at(0), found, &probes);
    core
}

/// A fresh agent, registered with a master.
fn registered(dir: &Path, clock: Clock) -> AgentCore {
    let mut core = core_on(dir, clock, &[]);
    core.on_registered(clock.at(0), AgentId::new("agent-1"), "m".into());
    core
}

/// What the driver does at the end of a batch: commit, then take the effects.
fn step(core: &mut AgentCore, now: Now) -> Vec<Effect> {
    core.stage_updates();
    core.journal.commit().unwrap();
    core.after_commit(now);
    core.take_effects()
}

fn master(core: &mut AgentCore, now: Now, msg: Msg) -> Option<Exit> {
    core.on_master_message(
        now,
        pb::MasterMessage {
            term: 1,
            msg: Some(msg),
        },
    )
    .unwrap()
}

fn key(task: &str) -> TaskKey {
    TaskKey::new("fw", task)
}

fn task(id: &str) -> pb::TaskInfo {
    pb::TaskInfo {
        name: id.into(),
        task_id: Some(TaskId::new(id)),
        command: Some(pb::CommandInfo {
            value: "true".into(),
            shell: true,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn run_task(t: pb::TaskInfo, framework_info: Option<pb::FrameworkInfo>) -> Msg {
    Msg::RunTask(pb::master_message::RunTask {
        framework_id: Some(FrameworkId::new("fw")),
        framework_info,
        task: Some(t),
    })
}

fn kill(id: &str, grace: Option<f64>) -> Msg {
    Msg::KillTask(pb::master_message::KillTask {
        framework_id: Some(FrameworkId::new("fw")),
        task_id: Some(TaskId::new(id)),
        kill_policy: grace.map(|g| pb::KillPolicy {
            grace_period_seconds: g,
        }),
    })
}

fn ack(status: &pb::TaskStatus) -> Msg {
    Msg::StatusAck(pb::master_message::StatusAck {
        framework_id: Some(FrameworkId::new("fw")),
        task_id: status.task_id.clone(),
        uuid: status.uuid.clone(),
    })
}

fn run_group(executor: &str, tasks: &[&str]) -> Msg {
    Msg::RunTaskGroup(pb::master_message::RunTaskGroup {
        framework_id: Some(FrameworkId::new("fw")),
        framework_info: None,
        executor: Some(pb::ExecutorInfo {
            executor_id: Some(ExecutorId::new(executor)),
            r#type: pb::executor_info::Type::Default as i32,
            ..Default::default()
        }),
        task_group: Some(pb::TaskGroupInfo {
            tasks: tasks.iter().map(|t| task(t)).collect(),
        }),
    })
}

fn exited(code: i32) -> Result<Termination, AgentError> {
    Ok(Termination::Recorded(ExitRecord {
        outcome: ExitOutcome::Exited { code },
        killed: false,
        kill_reason: None,
        task_pid: None,
        finished_at: 0.0,
        limitation: None,
    }))
}

fn killed(reason: Reason) -> Result<Termination, AgentError> {
    Ok(Termination::Recorded(ExitRecord {
        outcome: ExitOutcome::Signaled { signal: 15 },
        killed: true,
        kill_reason: Some(reason as i32),
        task_pid: None,
        finished_at: 0.0,
        limitation: None,
    }))
}

/// The status updates among `effects`, in order.
fn sent(effects: &[Effect]) -> Vec<pb::TaskStatus> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send(pb::AgentMessage {
                msg: Some(pb::agent_message::Msg::StatusUpdate(u)),
            }) => u.status.clone(),
            _ => None,
        })
        .collect()
}

/// (task, state) of each status update among `effects`.
fn states(effects: &[Effect]) -> Vec<(String, TaskState)> {
    sent(effects)
        .iter()
        .map(|s| (s.task_id.clone().unwrap().to_string(), s.state()))
        .collect()
}

fn launches(effects: &[Effect]) -> Vec<TaskKey> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Launch(l) => Some(l.spec.key.clone()),
            _ => None,
        })
        .collect()
}

/// (task, grace, reason) of each kill among `effects`.
fn kills(effects: &[Effect]) -> Vec<(String, Duration, Reason)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Kill { key, grace, reason } => Some((key.task_id.to_string(), *grace, *reason)),
            _ => None,
        })
        .collect()
}

fn ok(keys: &[&str]) -> Vec<LaunchResult> {
    keys.iter()
        .map(|k| (key(k), Ok(()), Some("fake")))
        .collect()
}

/// Runs the task to RUNNING by `ms` (launched, its updates sent and acknowledged).
fn running(
    core: &mut AgentCore,
    clock: Clock,
    ms: u64,
    t: pb::TaskInfo,
    fw: Option<pb::FrameworkInfo>,
) {
    let id = t.task_id.clone().unwrap().to_string();
    let now = clock.at(ms);
    master(core, now, run_task(t, fw));
    let fx = step(core, now);
    assert_eq!(launches(&fx), [key(&id)]);
    for s in sent(&fx) {
        master(core, now, ack(&s));
    }
    core.on_launched(now, ok(&[&id]));
    for _ in 0..2 {
        for s in sent(&step(core, now)) {
            master(core, now, ack(&s));
        }
    }
    step(core, now);
    assert_eq!(core.latest_state(&key(&id)), TaskState::TaskRunning);
    assert_eq!(core.updates.core().pending(&key(&id)), 0);
}
