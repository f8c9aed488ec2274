//! Lone tasks: launch, kills (during a launch too), grace periods, status update
//! retries and acknowledgements, answers, unhealthy tasks, stopping.

use super::*;

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
    let checked = pb::TaskInfo {
        health_check: Some(pb::HealthCheck {
            check: Some(pb::CheckInfo::default()),
            ..Default::default()
        }),
        ..task("t1")
    };
    master(&mut core, clock.at(0), run_task(checked, None));
    let fx = step(&mut core, clock.at(0));
    assert_eq!(launches(&fx), [key("t1")]);
    // The kill arrives while the driver starts the container: nothing to kill yet. The
    // driver is asked to withdraw the launch, but it has started it already.
    master(&mut core, clock.at(1), kill("t1", Some(7.0)));
    let fx = step(&mut core, clock.at(1));
    assert!(kills(&fx).is_empty(), "{fx:?}");
    assert!(fx
        .iter()
        .any(|e| matches!(e, Effect::WithdrawLaunch(k) if *k == key("t1"))));
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
fn a_kill_before_the_container_started_withdraws_the_launch_and_reports_killed() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock(Instant::now());
    let mut core = registered(dir.path(), clock);
    master(&mut core, clock.at(0), run_task(task("t1"), None));
    let fx = step(&mut core, clock.at(0));
    assert_eq!(launches(&fx), [key("t1")]);
    master(&mut core, clock.at(1), kill("t1", None));
    master(&mut core, clock.at(1), kill("t1", Some(2.0)));
    let fx = step(&mut core, clock.at(1));
    let withdrawals: Vec<_> = fx
        .iter()
        .filter(|e| matches!(e, Effect::WithdrawLaunch(_)))
        .collect();
    assert_eq!(withdrawals.len(), 1, "one for both kills: {fx:?}");
    assert!(kills(&fx).is_empty());
    // The driver had not started it: the task ends KILLED without a container, durably
    // with the next commit, like any terminal update.
    core.on_launch_withdrawn(clock.at(2), &key("t1"));
    assert!(!core.is_durable());
    let fx = step(&mut core, clock.at(2));
    assert!(kills(&fx).is_empty() && launches(&fx).is_empty());
    assert!(core.kills_after_launch.is_empty() && core.launching.is_empty());
    assert!(core.tasks[&key("t1")].terminal && !core.any_running());
    let stream = core.updates.core().checkpoint(&key("t1")).unwrap();
    let end = &stream.pending.last().unwrap().status;
    assert_eq!(end.state(), TaskState::TaskKilled);
    assert_eq!(end.reason(), Reason::KilledByFramework);
}

#[test]
fn a_group_task_killed_before_its_launch_takes_the_tasks_launched_with_it_down() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock(Instant::now());
    let mut core = registered(dir.path(), clock);
    master(&mut core, clock.at(0), run_group("ex", &["a"]));
    step(&mut core, clock.at(0));
    core.on_launched(clock.at(1), ok(&["a"]));
    step(&mut core, clock.at(1));
    // "b" joins the running group; killed before its container started.
    master(&mut core, clock.at(2), run_group("ex", &["b"]));
    master(&mut core, clock.at(2), kill("b", None));
    step(&mut core, clock.at(2));
    core.on_launch_withdrawn(clock.at(3), &key("b"));
    let fx = step(&mut core, clock.at(3));
    assert_eq!(core.latest_state(&key("b")), TaskState::TaskKilled);
    // Its KILLED takes the group down, as a KILLED task of a group does.
    assert_eq!(
        kills(&fx),
        [("a".into(), Duration::from_secs(3), Reason::Unspecified)]
    );
    core.on_task_ended(clock.at(4), &key("a"), killed(Reason::Unspecified));
    let fx = step(&mut core, clock.at(4));
    assert!(fx.iter().any(|e| matches!(e, Effect::DestroyGroup(_))));
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
fn requests_are_answered_in_order_from_the_state_and_a_shutdown_from_the_master_stops_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock(Instant::now());
    let mut core = registered(dir.path(), clock);
    master(&mut core, clock.at(0), run_task(task("t1"), None));
    core.ask(41, Query::State);
    core.ask(42, Query::Registration);
    // Staged like every effect, in order (that the driver gives them only after the
    // batch's commit is checked by the driver's tests, `agent/tests.rs`).
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
fn check_reports_after_a_kill_change_nothing() {
    use crate::checks::schedule::Effect as CheckEffect;
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock(Instant::now());
    let mut core = registered(dir.path(), clock);
    let fw = pb::FrameworkInfo {
        capabilities: vec![pb::framework_info::Capability::TaskKillingState as i32],
        ..Default::default()
    };
    let checked = pb::TaskInfo {
        health_check: Some(pb::HealthCheck {
            check: Some(pb::CheckInfo::default()),
            ..Default::default()
        }),
        ..task("t1")
    };
    running(&mut core, clock, 0, checked, Some(fw));
    let report = |effect| crate::checks::Report {
        key: key("t1"),
        effect,
    };
    // One batch: the framework's kill, then reports its checks sent before they stopped.
    master(&mut core, clock.at(1), kill("t1", Some(9.0)));
    core.on_check_report(clock.at(1), report(CheckEffect::Healthy(true)));
    core.on_check_report(
        clock.at(1),
        report(CheckEffect::CheckStatus(pb::CheckStatusInfo::default())),
    );
    core.on_check_report(
        clock.at(1),
        report(CheckEffect::Unhealthy {
            message: "late".into(),
        }),
    );
    let fx = step(&mut core, clock.at(1));
    assert_eq!(states(&fx), [("t1".into(), TaskState::TaskKilling)]);
    assert_eq!(
        kills(&fx),
        [(
            "t1".into(),
            Duration::from_secs(9),
            Reason::KilledByFramework
        )]
    );
    // Nor in a later batch, before the task's end.
    core.on_check_report(clock.at(2), report(CheckEffect::Healthy(false)));
    let fx = step(&mut core, clock.at(2));
    assert!(kills(&fx).is_empty());
    assert_eq!(core.updates.core().pending(&key("t1")), 1, "KILLING only");
    core.on_task_ended(clock.at(3), &key("t1"), killed(Reason::KilledByFramework));
    step(&mut core, clock.at(3));
    let stream = core.updates.core().checkpoint(&key("t1")).unwrap();
    let end = &stream.pending.last().unwrap().status;
    assert_eq!(end.state(), TaskState::TaskKilled);
    assert_eq!(end.reason(), Reason::KilledByFramework);
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
fn the_same_inputs_give_the_same_effects() {
    let clock = Clock(Instant::now());
    let play = || {
        let dir = tempfile::tempdir().unwrap();
        let mut core = registered(dir.path(), clock);
        let mut all = Vec::new();
        master(&mut core, clock.at(0), run_task(task("t1"), None));
        master(&mut core, clock.at(0), run_group("ex", &["g1", "g2"]));
        let fx = step(&mut core, clock.at(0));
        for s in sent(&fx) {
            master(&mut core, clock.at(1), ack(&s));
        }
        all.extend(fx);
        core.on_launched(clock.at(2), ok(&["t1", "g1", "g2"]));
        all.extend(step(&mut core, clock.at(2)));
        core.on_task_ended(clock.at(3), &key("g1"), exited(1));
        all.extend(step(&mut core, clock.at(3)));
        // The work dir differs from run to run; nothing else may.
        format!("{all:?}").replace(dir.path().to_str().unwrap(), "<dir>")
    };
    let first = play();
    assert!(first.contains("uuid"), "{first}");
    assert_eq!(first, play());
}
