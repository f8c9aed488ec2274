//! Recovery from the checkpoint log and the containers found.

use super::*;

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
        "every task without a recorded terminal update is probed (\"ended\" too: only its \
         container knows how it ended); \"done\" and \"told\" are not"
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
