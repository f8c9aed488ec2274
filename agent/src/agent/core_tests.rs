//! Unit tests of [`AgentCore`] on a controlled clock, with no containerizer: the test plays
//! the driver (commit, then take the effects) and feeds the core what a containerizer
//! would report (launch results, container ends, recovery probes). Each test's work dir
//! is a temporary directory holding the checkpoint log.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_proto::pb::{self, master_message::Msg, task_status::Reason, TaskState};
use drover_proto::{AgentId, ExecutorId, FrameworkId, TaskId};

use super::core::{AgentCore, Effect, Exit, Now, Query};
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
    );
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
    assert!(core.is_durable());
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

#[test]
fn a_launch_is_durable_and_reported_starting_before_the_container_starts() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock(Instant::now());
    let mut core = registered(dir.path(), clock);
    master(&mut core, clock.at(0), run_task(task("t1"), None));
    // Nothing is acted on before the commit: the task's checkpoint is only staged.
    assert!(!core.is_durable());
    let fx = step(&mut core, clock.at(0));
    assert_eq!(states(&fx), [("t1".into(), TaskState::TaskStarting)]);
    assert_eq!(launches(&fx), [key("t1")]);
    let send = fx
        .iter()
        .position(|e| matches!(e, Effect::Send(_)))
        .unwrap();
    let launch = fx
        .iter()
        .position(|e| matches!(e, Effect::Launch(_)))
        .unwrap();
    assert!(send < launch, "STARTING goes out before the launch");

    // The launch's result: watched, RUNNING enqueued behind the unacknowledged STARTING.
    core.on_launched(clock.at(5), ok(&["t1"]));
    let fx = step(&mut core, clock.at(5));
    assert!(fx
        .iter()
        .any(|e| matches!(e, Effect::Watch(k) if *k == key("t1"))));
    assert!(sent(&fx).is_empty(), "RUNNING waits behind STARTING");
    assert_eq!(core.tasks[&key("t1")].containerizer, Some("fake"));
    assert_eq!(core.latest_state(&key("t1")), TaskState::TaskRunning);

    // The same launch again is ignored.
    master(&mut core, clock.at(6), run_task(task("t1"), None));
    assert!(launches(&step(&mut core, clock.at(6))).is_empty());
}

#[test]
fn a_kill_during_a_launch_waits_for_the_container_and_then_kills_it() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock(Instant::now());
    let mut core = registered(dir.path(), clock);
    master(&mut core, clock.at(0), run_task(task("t1"), None));
    let fx = step(&mut core, clock.at(0));
    assert_eq!(launches(&fx), [key("t1")]);
    // The kill arrives while the driver starts the container: nothing to kill yet.
    master(&mut core, clock.at(1), kill("t1", Some(7.0)));
    let fx = step(&mut core, clock.at(1));
    assert!(kills(&fx).is_empty(), "{fx:?}");
    // Once the container exists it is killed, with the kill's grace and reason, and its
    // checks never start.
    core.on_launched(clock.at(2), ok(&["t1"]));
    let fx = step(&mut core, clock.at(2));
    assert_eq!(
        kills(&fx),
        [(
            "t1".into(),
            Duration::from_secs(7),
            Reason::KilledByFramework
        )]
    );
    assert!(!fx.iter().any(|e| matches!(e, Effect::StartChecks { .. })));
    assert!(core.kills_after_launch.is_empty());
    // Its end reports KILLED.
    core.on_task_ended(clock.at(3), &key("t1"), killed(Reason::KilledByFramework));
    assert_eq!(core.latest_state(&key("t1")), TaskState::TaskKilled);
}

#[test]
fn a_kill_during_a_launch_that_fails_kills_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock(Instant::now());
    let mut core = registered(dir.path(), clock);
    master(&mut core, clock.at(0), run_task(task("t1"), None));
    step(&mut core, clock.at(0));
    master(&mut core, clock.at(1), kill("t1", None));
    core.on_launched(
        clock.at(2),
        vec![(
            key("t1"),
            Err(AgentError::Launch("no such program".into())),
            None,
        )],
    );
    let fx = step(&mut core, clock.at(2));
    assert!(kills(&fx).is_empty());
    assert!(core.kills_after_launch.is_empty());
    assert_eq!(core.latest_state(&key("t1")), TaskState::TaskFailed);
    assert!(core.tasks[&key("t1")].terminal);
}

#[test]
fn a_framework_that_asks_for_killing_hears_it_before_the_kill_goes_out() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock(Instant::now());
    let mut core = registered(dir.path(), clock);
    let fw = pb::FrameworkInfo {
        capabilities: vec![pb::framework_info::Capability::TaskKillingState as i32],
        ..Default::default()
    };
    running(&mut core, clock, 0, task("t1"), Some(fw));
    master(&mut core, clock.at(10), kill("t1", None));
    let fx = step(&mut core, clock.at(10));
    assert_eq!(states(&fx), [("t1".into(), TaskState::TaskKilling)]);
    let send = fx
        .iter()
        .position(|e| matches!(e, Effect::Send(_)))
        .unwrap();
    let signal = fx
        .iter()
        .position(|e| matches!(e, Effect::Kill { .. }))
        .unwrap();
    assert!(
        send < signal,
        "KILLING is on its way before the first signal"
    );
    // A framework without the capability gets the kill alone.
    running(&mut core, clock, 20, task("t2"), None);
    master(&mut core, clock.at(30), kill("t2", None));
    let fx = step(&mut core, clock.at(30));
    assert!(sent(&fx).is_empty());
    assert_eq!(kills(&fx).len(), 1);
}

#[test]
fn the_grace_period_is_the_kills_else_the_tasks_else_the_agents_and_is_capped() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock(Instant::now());
    let mut core = registered(dir.path(), clock);
    let with_policy = pb::TaskInfo {
        kill_policy: Some(pb::KillPolicy {
            grace_period_seconds: 11.0,
        }),
        ..task("t1")
    };
    running(&mut core, clock, 0, with_policy, None);
    running(&mut core, clock, 0, task("t2"), None);
    running(&mut core, clock, 0, task("t3"), None);
    running(&mut core, clock, 0, task("t4"), None);
    master(&mut core, clock.at(1), kill("t1", None));
    master(&mut core, clock.at(1), kill("t2", None));
    master(&mut core, clock.at(1), kill("t3", Some(2.5)));
    master(&mut core, clock.at(1), kill("t4", Some(1e12)));
    let fx = step(&mut core, clock.at(1));
    let graces: Vec<_> = kills(&fx).into_iter().map(|(t, g, _)| (t, g)).collect();
    assert_eq!(
        graces,
        [
            ("t1".into(), Duration::from_secs(11)),
            ("t2".into(), Duration::from_secs(3)),
            ("t3".into(), Duration::from_millis(2500)),
            ("t4".into(), Duration::from_secs(24 * 3600)),
        ]
    );
    // A kill of a task that already ended, or that the agent never knew, does nothing.
    core.on_task_ended(clock.at(2), &key("t1"), exited(0));
    master(&mut core, clock.at(3), kill("t1", None));
    master(&mut core, clock.at(3), kill("nope", None));
    assert!(kills(&step(&mut core, clock.at(3))).is_empty());
}

#[test]
fn an_update_is_resent_after_the_retry_interval_until_it_is_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock(Instant::now());
    let mut core = registered(dir.path(), clock);
    master(&mut core, clock.at(0), run_task(task("t1"), None));
    let first = sent(&step(&mut core, clock.at(0)));
    assert_eq!(first.len(), 1);
    let retry = core.settings.status_update_retry;
    let retry_ms = retry.as_millis() as u64;
    assert_eq!(core.next_retry(), Some(clock.at(retry_ms).instant));
    // Not before the retry interval.
    assert!(sent(&step(&mut core, clock.at(retry_ms - 1))).is_empty());
    // Then the same update (same uuid) again, and again after twice the interval.
    let again = sent(&step(&mut core, clock.at(retry_ms)));
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].uuid, first[0].uuid);
    assert_eq!(core.next_retry(), Some(clock.at(3 * retry_ms).instant));
    assert!(sent(&step(&mut core, clock.at(3 * retry_ms - 1))).is_empty());
    assert_eq!(sent(&step(&mut core, clock.at(3 * retry_ms))).len(), 1);
    // An acknowledgement of another uuid changes nothing.
    let mut wrong = first[0].clone();
    wrong.uuid = vec![0; 16];
    master(&mut core, clock.at(3 * retry_ms), ack(&wrong));
    assert_eq!(core.updates.core().pending(&key("t1")), 1);
    // The acknowledgement stops the retries.
    master(&mut core, clock.at(3 * retry_ms + 1), ack(&first[0]));
    step(&mut core, clock.at(3 * retry_ms + 1));
    assert_eq!(core.next_retry(), None);
    assert!(sent(&step(&mut core, clock.at(100 * retry_ms))).is_empty());
}

#[test]
fn updates_wait_for_a_master_and_all_go_out_when_one_registers() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock(Instant::now());
    let mut core = core_on(dir.path(), clock, &[]);
    master(&mut core, clock.at(0), run_task(task("t1"), None));
    master(&mut core, clock.at(0), run_task(task("t2"), None));
    let fx = step(&mut core, clock.at(0));
    assert!(sent(&fx).is_empty(), "no master: nothing is sent");
    assert_eq!(launches(&fx).len(), 2, "tasks launch without a master");
    assert_eq!(core.next_retry(), None);
    core.on_registered(clock.at(1), AgentId::new("agent-1"), "m".into());
    let mut got = states(&step(&mut core, clock.at(1)));
    got.sort();
    assert_eq!(
        got,
        [
            ("t1".into(), TaskState::TaskStarting),
            ("t2".into(), TaskState::TaskStarting)
        ]
    );
    // Lost again: the pending heads wait for the next registration, which resends them
    // at once rather than at their retry time.
    core.on_disconnected();
    assert!(sent(&step(&mut core, clock.at(60_000))).is_empty());
    core.on_registered(clock.at(60_001), AgentId::new("agent-1"), "m".into());
    assert_eq!(sent(&step(&mut core, clock.at(60_001))).len(), 2);
}

#[test]
fn an_acknowledged_terminal_update_forgets_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock(Instant::now());
    let mut core = registered(dir.path(), clock);
    running(&mut core, clock, 0, task("t1"), None);
    core.on_task_ended(clock.at(1), &key("t1"), exited(0));
    let fx = step(&mut core, clock.at(1));
    let finished = sent(&fx);
    assert_eq!(finished[0].state(), TaskState::TaskFinished);
    assert_eq!(finished[0].exit_code, Some(0));
    assert_eq!(finished[0].timestamp, clock.at(1).unix_seconds);
    assert!(fx.iter().any(|e| matches!(e, Effect::StopChecks(_))));
    master(&mut core, clock.at(2), ack(&finished[0]));
    let fx = step(&mut core, clock.at(2));
    assert!(!core.tasks.contains_key(&key("t1")));
    assert!(fx
        .iter()
        .any(|e| matches!(e, Effect::MarkCompleted(k) if *k == key("t1"))));
    assert!(views::registration(&core).tasks.is_empty());
}

#[test]
fn a_failed_task_of_a_group_takes_the_rest_down_and_the_last_end_tears_it_down() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock(Instant::now());
    let mut core = registered(dir.path(), clock);
    master(&mut core, clock.at(0), run_group("ex", &["a", "b", "c"]));
    let fx = step(&mut core, clock.at(0));
    assert_eq!(launches(&fx), [key("a"), key("b"), key("c")]);
    core.on_launched(clock.at(1), ok(&["a", "b", "c"]));
    step(&mut core, clock.at(1));
    assert_eq!(core.groups.len(), 1);

    // A finishing task leaves the others alone.
    core.on_task_ended(clock.at(2), &key("a"), exited(0));
    assert!(kills(&step(&mut core, clock.at(2))).is_empty());
    // A failing one kills the rest of its group.
    core.on_task_ended(clock.at(3), &key("b"), exited(1));
    let fx = step(&mut core, clock.at(3));
    assert_eq!(
        kills(&fx),
        [("c".into(), Duration::from_secs(3), Reason::Unspecified)]
    );
    assert!(!fx.iter().any(|e| matches!(e, Effect::DestroyGroup(_))));
    // The killed task says why; its end is the group's last, which releases the holder.
    core.on_task_ended(clock.at(4), &key("c"), killed(Reason::Unspecified));
    let fx = step(&mut core, clock.at(4));
    assert!(fx.iter().any(|e| matches!(e, Effect::DestroyGroup(_))));
    assert!(core.groups.is_empty());
    assert_eq!(core.latest_state(&key("c")), TaskState::TaskKilled);
    let c = core
        .updates
        .core()
        .checkpoint(&key("c"))
        .unwrap()
        .pending
        .last()
        .unwrap()
        .status
        .clone();
    assert!(
        c.message
            .contains("killed because task b of its task group ended FAILED"),
        "{}",
        c.message
    );
}

#[test]
fn a_group_launch_that_fails_for_one_task_fails_them_all() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock(Instant::now());
    let mut core = registered(dir.path(), clock);
    master(&mut core, clock.at(0), run_group("ex", &["a", "b"]));
    step(&mut core, clock.at(0));
    // A kill of a group task while the group launches is moot once the group fails.
    master(&mut core, clock.at(0), kill("a", None));
    core.on_launched(
        clock.at(1),
        vec![
            (key("a"), Ok(()), Some("fake")),
            (key("b"), Err(AgentError::Launch("boom".into())), None),
        ],
    );
    let fx = step(&mut core, clock.at(1));
    assert_eq!(
        kills(&fx),
        [("a".into(), Duration::ZERO, Reason::ContainerLaunchFailed)]
    );
    assert_eq!(core.latest_state(&key("b")), TaskState::TaskFailed);
    assert!(core.groups.contains_key(&super::groups::GroupKey {
        framework_id: FrameworkId::new("fw"),
        executor_id: ExecutorId::new("ex"),
    }));
    // The started one ends killed, yet is reported FAILED as part of the failed group.
    core.on_task_ended(
        clock.at(2),
        &key("a"),
        killed(Reason::ContainerLaunchFailed),
    );
    let fx = step(&mut core, clock.at(2));
    assert_eq!(core.latest_state(&key("a")), TaskState::TaskFailed);
    assert!(fx.iter().any(|e| matches!(e, Effect::DestroyGroup(_))));
    assert!(core.kills_after_launch.is_empty());
}

#[test]
fn recovery_reattaches_reports_the_never_started_and_forgets_the_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock(Instant::now());
    {
        let mut core = registered(dir.path(), clock);
        // "run": launched and RUNNING; "ended": launched, ended while the agent was
        // away; "never": checkpointed, the agent died before its launch; "done":
        // finished and acknowledged; "told": finished, not acknowledged.
        for t in ["run", "ended", "done", "told"] {
            running(&mut core, clock, 0, task(t), None);
        }
        master(&mut core, clock.at(1), run_task(task("never"), None));
        core.on_task_ended(clock.at(1), &key("done"), exited(0));
        core.on_task_ended(clock.at(1), &key("told"), exited(0));
        let fx = step(&mut core, clock.at(1));
        let done = sent(&fx)
            .into_iter()
            .find(|s| s.task_id.as_ref().unwrap().as_str() == "done")
            .unwrap();
        master(&mut core, clock.at(2), ack(&done));
        step(&mut core, clock.at(2));
    }

    let (_, found) = recovery::load(&Layout::new(dir.path())).unwrap();
    let mut asked: Vec<_> = probes_needed(&found)
        .into_iter()
        .map(|k| k.task_id.to_string())
        .collect();
    asked.sort();
    assert_eq!(
        asked,
        ["ended", "never", "run"],
        "ended tasks need no probe"
    );

    let later = Clock(clock.0 + Duration::from_secs(60));
    let mut core = core_on(
        dir.path(),
        later,
        &[("run", Recovered::Running), ("ended", Recovered::Ended)],
    );
    let fx = step(&mut core, later.at(0));
    let mut known: Vec<_> = core.tasks.keys().map(|k| k.task_id.to_string()).collect();
    known.sort();
    assert_eq!(known, ["ended", "never", "run", "told"]);
    let watched: Vec<_> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::Watch(k) => Some(k.task_id.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(watched, ["ended", "run"]);
    assert!(launches(&fx).is_empty(), "recovery never launches");
    assert_eq!(core.latest_state(&key("never")), TaskState::TaskDropped);
    assert_eq!(core.latest_state(&key("told")), TaskState::TaskFinished);
    assert_eq!(core.latest_state(&key("run")), TaskState::TaskRunning);
    // Nothing is sent before a master registers; then the unacknowledged heads go out
    // (never's STARTING, DROPPED behind it; told's FINISHED), and the registration lists
    // every task with its latest state.
    assert!(sent(&fx).is_empty());
    core.on_registered(later.at(1), AgentId::new("agent-1"), "m".into());
    let mut got = states(&step(&mut core, later.at(1)));
    got.sort();
    assert_eq!(
        got,
        [
            ("never".into(), TaskState::TaskStarting),
            ("told".into(), TaskState::TaskFinished)
        ]
    );
    let never = core.updates.core().checkpoint(&key("never")).unwrap();
    let dropped = &never.pending.last().unwrap().status;
    assert_eq!(dropped.state(), TaskState::TaskDropped);
    assert_eq!(dropped.reason(), Reason::AgentRestarted);
    let register = views::registration(&core);
    assert_eq!(register.tasks.len(), 4);
    assert_eq!(register.frameworks, [FrameworkId::new("fw")]);
}

#[test]
fn a_recovered_task_that_was_being_killed_stays_killing_without_checks() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock(Instant::now());
    let with_check = pb::TaskInfo {
        check: Some(pb::CheckInfo::default()),
        ..task("t1")
    };
    {
        let mut core = registered(dir.path(), clock);
        let fw = pb::FrameworkInfo {
            capabilities: vec![pb::framework_info::Capability::TaskKillingState as i32],
            ..Default::default()
        };
        master(
            &mut core,
            clock.at(0),
            run_task(with_check.clone(), Some(fw)),
        );
        step(&mut core, clock.at(0));
        core.on_launched(clock.at(0), ok(&["t1"]));
        let fx = step(&mut core, clock.at(0));
        assert!(fx.iter().any(|e| matches!(e, Effect::StartChecks { .. })));
        master(&mut core, clock.at(1), kill("t1", None));
        step(&mut core, clock.at(1));
        assert_eq!(core.latest_state(&key("t1")), TaskState::TaskKilling);
    }
    let mut core = core_on(dir.path(), clock, &[("t1", Recovered::Running)]);
    let fx = step(&mut core, clock.at(2));
    assert!(fx.iter().any(|e| matches!(e, Effect::Watch(_))));
    assert!(!fx.iter().any(|e| matches!(e, Effect::StartChecks { .. })));
    assert_eq!(core.latest_state(&key("t1")), TaskState::TaskKilling);
}

#[test]
fn an_executor_that_does_not_subscribe_in_time_is_killed_and_its_task_fails() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock(Instant::now());
    let mut core = registered(dir.path(), clock);
    let on_executor = pb::TaskInfo {
        executor: Some(pb::ExecutorInfo {
            executor_id: Some(ExecutorId::new("ex")),
            r#type: pb::executor_info::Type::Custom as i32,
            command: Some(pb::CommandInfo {
                value: "./my-executor".into(),
                shell: true,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..task("t1")
    };
    master(&mut core, clock.at(0), run_task(on_executor, None));
    let fx = step(&mut core, clock.at(0));
    let ekey = TaskKey::executor(&FrameworkId::new("fw"), &ExecutorId::new("ex"));
    assert_eq!(launches(&fx), std::slice::from_ref(&ekey));
    core.on_launched(clock.at(10), vec![(ekey.clone(), Ok(()), Some("fake"))]);
    let fx = step(&mut core, clock.at(10));
    let timeout = core.settings.executor_registration_timeout;
    let timer = fx
        .iter()
        .find_map(|e| match e {
            Effect::Timer { at, timer } => Some((*at, timer.clone())),
            _ => None,
        })
        .expect("a registration timer");
    assert_eq!(timer.0, clock.at(10).instant + timeout);
    core.on_timer(clock.at(10).after(timeout), timer.1);
    let fx = step(&mut core, clock.at(10).after(timeout));
    assert_eq!(
        kills(&fx),
        [(
            ekey.task_id.to_string(),
            core.settings.default_grace,
            Reason::ExecutorTerminated
        )]
    );
    core.on_task_ended(
        clock.at(10).after(timeout),
        &ekey,
        killed(Reason::ExecutorTerminated),
    );
    step(&mut core, clock.at(10).after(timeout));
    let stream = core.updates.core().checkpoint(&key("t1")).unwrap();
    let failed = &stream.pending.last().unwrap().status;
    assert_eq!(failed.state(), TaskState::TaskFailed);
    assert_eq!(failed.reason(), Reason::ExecutorRegistrationTimeout);
}

#[test]
fn answers_wait_for_the_commit_and_a_shutdown_from_the_master_stops_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock(Instant::now());
    let mut core = registered(dir.path(), clock);
    master(&mut core, clock.at(0), run_task(task("t1"), None));
    core.ask(41, Query::State);
    core.ask(42, Query::Registration);
    // Staged like every effect: given only after the batch's commit.
    let fx = step(&mut core, clock.at(0));
    let replies: Vec<_> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::Reply { reply, query } => Some((*reply, *query)),
            _ => None,
        })
        .collect();
    assert_eq!(replies, [(41, Query::State), (42, Query::Registration)]);
    let state = views::state(&core, |_| None);
    assert_eq!(state.master, "m");
    assert_eq!(state.tasks.len(), 1);
    assert_eq!(state.tasks[0].pending_updates, 1);
    let exit = master(
        &mut core,
        clock.at(1),
        Msg::Shutdown(pb::master_message::Shutdown {
            reason: "bye".into(),
        }),
    );
    assert_eq!(exit, Some(Exit::ShutdownByMaster("bye".into())));
}

#[test]
fn stopping_kills_what_runs_and_refuses_new_launches() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock(Instant::now());
    let mut core = registered(dir.path(), clock);
    running(&mut core, clock, 0, task("t1"), None);
    let longest = core.kill_all(clock.at(1), Reason::AgentRestarted);
    assert_eq!(longest, core.settings.default_grace);
    let fx = step(&mut core, clock.at(1));
    assert_eq!(
        kills(&fx),
        [(
            "t1".into(),
            core.settings.default_grace,
            Reason::AgentRestarted
        )]
    );
    assert!(core.any_running());
    master(&mut core, clock.at(2), run_task(task("t2"), None));
    assert!(launches(&step(&mut core, clock.at(2))).is_empty());
    assert!(!core.tasks.contains_key(&key("t2")));
    core.on_task_ended(clock.at(3), &key("t1"), killed(Reason::AgentRestarted));
    assert!(!core.any_running());
}

#[test]
fn an_unhealthy_task_hears_killing_then_is_killed_and_its_end_says_why() {
    use crate::checks::schedule::Effect as CheckEffect;
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock(Instant::now());
    let mut core = registered(dir.path(), clock);
    let checked = pb::TaskInfo {
        health_check: Some(pb::HealthCheck {
            check: Some(pb::CheckInfo::default()),
            ..Default::default()
        }),
        ..task("t1")
    };
    running(&mut core, clock, 0, checked, None);
    core.on_check_report(
        clock.at(1),
        crate::checks::Report {
            key: key("t1"),
            effect: CheckEffect::Unhealthy {
                message: "3 checks failed in a row".into(),
            },
        },
    );
    let fx = step(&mut core, clock.at(1));
    let killing = sent(&fx);
    assert_eq!(killing.len(), 1);
    assert_eq!(killing[0].state(), TaskState::TaskKilling);
    assert_eq!(killing[0].healthy, Some(false));
    assert_eq!(
        kills(&fx),
        [("t1".into(), Duration::from_secs(3), Reason::TaskUnhealthy)]
    );
    let send = fx
        .iter()
        .position(|e| matches!(e, Effect::Send(_)))
        .unwrap();
    let stop = fx
        .iter()
        .position(|e| matches!(e, Effect::StopChecks(_)))
        .unwrap();
    let signal = fx
        .iter()
        .position(|e| matches!(e, Effect::Kill { .. }))
        .unwrap();
    assert!(send < stop && stop < signal, "{fx:?}");
    core.on_task_ended(clock.at(3), &key("t1"), killed(Reason::TaskUnhealthy));
    step(&mut core, clock.at(3));
    let stream = core.updates.core().checkpoint(&key("t1")).unwrap();
    let end = &stream.pending.last().unwrap().status;
    assert_eq!(end.state(), TaskState::TaskKilled);
    assert_eq!(end.reason(), Reason::TaskUnhealthy);
    assert_eq!(end.message, "killed as unhealthy: 3 checks failed in a row");
}

#[test]
fn a_newer_subscription_replaces_the_older_whose_undelivered_events_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock(Instant::now());
    let mut core = registered(dir.path(), clock);
    let on_executor = pb::TaskInfo {
        executor: Some(pb::ExecutorInfo {
            executor_id: Some(ExecutorId::new("ex")),
            r#type: pb::executor_info::Type::Custom as i32,
            command: Some(pb::CommandInfo {
                value: "./my-executor".into(),
                shell: true,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..task("t1")
    };
    master(&mut core, clock.at(0), run_task(on_executor, None));
    step(&mut core, clock.at(0));
    let ekey = TaskKey::executor(&FrameworkId::new("fw"), &ExecutorId::new("ex"));
    core.on_launched(clock.at(1), vec![(ekey, Ok(()), Some("fake"))]);
    step(&mut core, clock.at(1));
    let subscribe = |executor: &str, launched: &[&str]| pb::ExecutorSubscribeRequest {
        framework_id: Some(FrameworkId::new("fw")),
        executor_id: Some(ExecutorId::new(executor)),
        launched_tasks: launched.iter().map(|t| TaskId::new(*t)).collect(),
    };
    /// (subscription, event kind) of each event to an executor; (reply, ok) of each answer.
    type Told = (Vec<(u64, &'static str)>, Vec<(u64, bool)>);
    fn told(fx: &[Effect]) -> Told {
        use pb::executor_event::Event as Ev;
        let mut events = Vec::new();
        let mut answers = Vec::new();
        for e in fx {
            match e {
                Effect::ToExecutor {
                    subscription,
                    event,
                } => events.push((
                    *subscription,
                    match event.event {
                        Some(Ev::Subscribed(_)) => "subscribed",
                        Some(Ev::Launch(_)) => "launch",
                        Some(Ev::Message(_)) => "message",
                        _ => "other",
                    },
                )),
                Effect::EndSubscription { subscription, .. } => events.push((*subscription, "end")),
                Effect::Answer { reply, result } => answers.push((*reply, result.is_ok())),
                _ => {}
            }
        }
        (events, answers)
    }

    core.on_executor_subscribe(clock.at(2), subscribe("ex", &[]), 1, 10);
    let (events, answers) = told(&step(&mut core, clock.at(2)));
    assert_eq!(events, [(1, "subscribed"), (1, "launch")]);
    assert_eq!(answers, [(10, true)]);

    // In one batch: a framework message for the first subscription, then a second
    // subscription that already runs t1. The message never reaches the old stream,
    // which ends; the new one is not sent t1 again.
    master(
        &mut core,
        clock.at(3),
        Msg::FrameworkMessage(pb::master_message::FrameworkMessage {
            framework_id: Some(FrameworkId::new("fw")),
            executor_id: Some(ExecutorId::new("ex")),
            data: b"hi".to_vec(),
        }),
    );
    core.on_executor_subscribe(clock.at(3), subscribe("ex", &["t1"]), 2, 11);
    core.on_executor_subscribe(clock.at(3), subscribe("nope", &[]), 3, 12);
    let fx = step(&mut core, clock.at(3));
    let (events, answers) = told(&fx);
    assert_eq!(events, [(1, "end"), (2, "subscribed")]);
    assert_eq!(answers, [(11, true), (12, false)]);
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::Answer {
            reply: 12,
            result: Err(super::executors::Refusal::NotFound(_))
        }
    )));
}
