//! Task groups: one task's failure taking the group down, a launch failing for one task.

use super::*;

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
    assert!(core.groups.contains_key(&crate::agent::groups::GroupKey {
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
fn a_group_started_in_the_batch_that_tore_its_predecessor_down_has_its_volume_made_again() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock(Instant::now());
    let mut core = registered(dir.path(), clock);
    master(&mut core, clock.at(0), run_group("ex", &["a"]));
    step(&mut core, clock.at(0));
    core.on_launched(clock.at(1), ok(&["a"]));
    step(&mut core, clock.at(1));
    // One batch: the last task of the group ends, and a new group of the same executor
    // id arrives. The old group's teardown goes first, then the volume is made again,
    // and the launches come last (the driver starts them after every other effect).
    core.on_task_ended(clock.at(2), &key("a"), exited(0));
    master(&mut core, clock.at(2), run_group("ex", &["b"]));
    let fx = step(&mut core, clock.at(2));
    let at = |what: &dyn Fn(&Effect) -> bool| fx.iter().position(what).unwrap();
    let destroy = at(&|e| matches!(e, Effect::DestroyGroup(_)));
    let renew = at(&|e| matches!(e, Effect::RenewSharedVolume(_)));
    assert!(destroy < renew, "{fx:?}");
    assert_eq!(launches(&fx), [key("b")]);
    assert_eq!(core.groups.len(), 1);
    // A group with no predecessor in its batch needs nothing made again.
    master(&mut core, clock.at(3), run_group("other", &["c"]));
    let fx = step(&mut core, clock.at(3));
    assert!(!fx.iter().any(|e| matches!(e, Effect::RenewSharedVolume(_))));
}
