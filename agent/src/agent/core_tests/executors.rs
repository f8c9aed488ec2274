//! Custom executors: the registration timeout, subscriptions replacing each other.

use super::*;

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
            result: Err(crate::agent::executors::Refusal::NotFound(_))
        }
    )));
}

#[test]
fn an_executors_messages_and_updates_reach_the_master_in_the_order_it_sent_them() {
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
    let subscribe = pb::ExecutorSubscribeRequest {
        framework_id: Some(FrameworkId::new("fw")),
        executor_id: Some(ExecutorId::new("ex")),
        launched_tasks: vec![],
    };
    core.on_executor_subscribe(clock.at(2), subscribe, 1, 10);
    step(&mut core, clock.at(2));
    let mut uuid = 0u8;
    let mut update = |core: &mut AgentCore, ms: u64, state: TaskState| {
        uuid += 1;
        let call = pb::ExecutorUpdateCall {
            framework_id: Some(FrameworkId::new("fw")),
            executor_id: Some(ExecutorId::new("ex")),
            status: Some(pb::TaskStatus {
                task_id: Some(TaskId::new("t1")),
                state: state as i32,
                uuid: vec![uuid; 16],
                ..Default::default()
            }),
        };
        core.on_executor_update(clock.at(ms), call, 20 + u64::from(uuid));
    };
    let message = |core: &mut AgentCore, ms: u64, data: &str| {
        let call = pb::ExecutorMessageCall {
            framework_id: Some(FrameworkId::new("fw")),
            executor_id: Some(ExecutorId::new("ex")),
            data: data.as_bytes().to_vec(),
        };
        core.on_executor_message(clock.at(ms), call, 30);
    };
    // What went to the master, in order: a state, or a message's data.
    fn to_master(fx: &[Effect]) -> Vec<String> {
        use pb::agent_message::Msg as M;
        fx.iter()
            .filter_map(|e| match e {
                Effect::Send(pb::AgentMessage {
                    msg: Some(M::StatusUpdate(u)),
                }) => Some(u.status.as_ref().unwrap().state().as_str_name().to_string()),
                Effect::Send(pb::AgentMessage {
                    msg: Some(M::ExecutorMessage(m)),
                }) => Some(String::from_utf8(m.data.clone()).unwrap()),
                _ => None,
            })
            .collect()
    }
    // An update, then a message: in that order.
    update(&mut core, 3, TaskState::TaskRunning);
    message(&mut core, 3, "after running");
    let fx = step(&mut core, clock.at(3));
    assert_eq!(to_master(&fx), ["TASK_RUNNING", "after running"]);
    for s in sent(&fx) {
        master(&mut core, clock.at(4), ack(&s));
    }
    step(&mut core, clock.at(4));
    // A message, then the task's last update: in that order too.
    message(&mut core, 5, "before finishing");
    update(&mut core, 5, TaskState::TaskFinished);
    let fx = step(&mut core, clock.at(5));
    assert_eq!(to_master(&fx), ["before finishing", "TASK_FINISHED"]);
}
