//! The leader's decisions, driven through the [`harness`](super::harness): calls, agent
//! messages, ticks and apply outcomes in, effects out, with the time moved by hand.

use drover_proto::pb::{self, master_message::Msg, TaskState};
use drover_proto::{AgentId, FrameworkId, TaskId};

use super::harness::*;
use super::{Effect, Farewell, Then};
use crate::error::MasterError;
use crate::registry::{AgentState, Command, StatusUpdate};

fn uuid(n: u8) -> Vec<u8> {
    vec![n; 16]
}

/// A status update from `agent` for task `task` of `fw`.
fn agent_update(fw: &FrameworkId, task: &str, state: TaskState, n: u8) -> pb::AgentMessage {
    pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::StatusUpdate(
            pb::agent_message::StatusUpdate {
                framework_id: Some(fw.clone()),
                status: Some(pb::TaskStatus {
                    task_id: Some(TaskId::new(task)),
                    state: state as i32,
                    uuid: uuid(n),
                    timestamp: n as f64,
                    ..Default::default()
                }),
            },
        )),
    }
}

fn ping() -> pb::AgentMessage {
    pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Ping(Default::default())),
    }
}

/// A framework with one task running on one agent.
fn one_task(aware: bool) -> (Harness, FrameworkId, AgentId) {
    let mut h = Harness::new();
    let (agent, _) = h.add_agent("cpus:4;mem:4096");
    let (fw, _) = h.subscribe("web", 60.0, aware);
    h.launch(&fw, &[("t1", "cpus:1;mem:128")]).expect("launch");
    (h, fw, agent)
}

#[test]
fn subscribe_proposes_first_and_opens_the_stream_once_applied() {
    let mut h = Harness::new();
    let req = pb::SubscribeRequest {
        framework_info: Some(pb::FrameworkInfo {
            name: "web".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let first = h.leader.subscribe(&h.reg, h.now, req).unwrap();
    // Nothing opens before the registration commits.
    let [Effect::Propose {
        command: Command::AddFramework { framework_id, .. },
        then: Then::Subscribed { framework, .. },
    }] = first.as_slice()
    else {
        panic!("expected one AddFramework proposal, got {first:?}");
    };
    assert_eq!(
        framework_id.as_str(),
        "id-1",
        "the id comes from the id source"
    );
    assert_eq!(framework, framework_id);
    assert!(h.leader.frameworks.is_empty());

    let fw = framework_id.clone();
    let effects = h.settle(first).unwrap();
    assert!(matches!(
        &effects[0],
        Effect::OpenFrameworkStream { framework, stream_id } if *framework == fw && stream_id == "id-2"
    ));
    let events = events_to(&effects, &fw);
    let [pb::event::Event::Subscribed(s)] = events.as_slice() else {
        panic!("expected SUBSCRIBED, got {events:?}");
    };
    assert_eq!(s.stream_id, "id-2");
    assert_eq!(s.master_info.as_ref().unwrap().term, TERM);
    assert!(matches!(effects.last(), Some(Effect::Allocate)));
    assert_eq!(h.reg.frameworks[&fw].info.role, "*");
}

#[test]
fn a_subscription_that_fails_to_commit_opens_nothing() {
    let mut h = Harness::new();
    let first = h
        .leader
        .subscribe(
            &h.reg,
            h.now,
            pb::SubscribeRequest {
                framework_info: Some(Default::default()),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(matches!(first.as_slice(), [Effect::Propose { .. }]));
    let (effects, err) = h.settle_with(first, |_| {
        Some(MasterError::Unavailable("lost leadership".into()))
    });
    assert!(matches!(err, Some(MasterError::Unavailable(_))), "{err:?}");
    assert!(
        effects.is_empty(),
        "no stream opens, nothing is sent: {effects:?}"
    );
    assert!(h.leader.frameworks.is_empty(), "no session");
    assert!(h.reg.frameworks.is_empty());
}

#[test]
fn a_framework_removed_before_its_subscription_completes_gets_no_session() {
    let mut h = Harness::new();
    let (fw, stream) = h.subscribe("web", 0.0, false);
    let stream_end = h.leader.framework_disconnected(&h.reg, h.now, &fw, &stream);
    h.settle(stream_end).unwrap();
    // It resubscribes; its teardown commits between the registration and the step that
    // opens the stream.
    let first = h
        .leader
        .subscribe(
            &h.reg,
            h.now,
            pb::SubscribeRequest {
                framework_info: Some(pb::FrameworkInfo {
                    id: Some(fw.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .unwrap();
    let [Effect::Propose { command, then }] = first.as_slice() else {
        panic!("{first:?}");
    };
    let outcome = h.apply(command.clone());
    h.apply(Command::RemoveFramework {
        framework_id: fw.clone(),
        reason: "torn down".into(),
        now_ms: h.now,
    });
    let err = h
        .leader
        .applied(&h.reg, h.now, then.clone(), Ok(outcome))
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("framework {fw} is unknown")),
        "{err}"
    );
    assert!(h.leader.frameworks.is_empty());
}

#[test]
fn resubscribing_replaces_the_stream_and_the_old_one_gets_an_error() {
    let mut h = Harness::new();
    h.add_agent("cpus:4;mem:4096");
    let (fw, old_stream) = h.subscribe("web", 60.0, false);
    assert_eq!(h.allocate().len(), 1);
    assert_eq!(h.leader.offers.len(), 1);

    let info = pb::FrameworkInfo {
        id: Some(fw.clone()),
        name: "web".into(),
        ..Default::default()
    };
    let first = h
        .leader
        .subscribe(
            &h.reg,
            h.now,
            pb::SubscribeRequest {
                framework_info: Some(info),
                ..Default::default()
            },
        )
        .unwrap();
    let effects = h.settle(first).unwrap();
    let Effect::CloseFrameworkStream {
        framework,
        stream_id,
        farewell: Farewell::ErrorEvent(message),
    } = &effects[0]
    else {
        panic!("the old stream must end first: {effects:?}");
    };
    assert_eq!((framework, stream_id.as_str()), (&fw, old_stream.as_str()));
    assert_eq!(message, "framework failed over to a new subscription");
    let new_stream = h.leader.frameworks[&fw].stream_id.clone();
    assert_ne!(new_stream, old_stream);
    assert!(
        h.leader.offers.is_empty(),
        "the old stream's offers are gone"
    );

    // Calls on the old stream are refused.
    let stale = pb::CallHeader {
        framework_id: Some(fw.clone()),
        stream_id: old_stream,
    };
    let err = h.leader.check_caller(&h.reg, Some(&stale)).unwrap_err();
    assert!(matches!(err, MasterError::FailedPrecondition(_)), "{err}");
}

#[test]
fn subscribe_refusals() {
    let mut h = Harness::new();
    let unknown = pb::FrameworkInfo {
        id: Some(FrameworkId::new("gone")),
        ..Default::default()
    };
    let err = h
        .leader
        .subscribe(
            &h.reg,
            h.now,
            pb::SubscribeRequest {
                framework_info: Some(unknown),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(
        err.to_string().starts_with("framework gone is unknown"),
        "{err}"
    );
    let bad_role = pb::FrameworkInfo {
        role: "-x".into(),
        ..Default::default()
    };
    let err = h
        .leader
        .subscribe(
            &h.reg,
            h.now,
            pb::SubscribeRequest {
                framework_info: Some(bad_role),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert_eq!(err.to_string(), "role '-x' must not start with '.' or '-'");

    let _ = h.leader.reset(TERM + 1, h.now);
    let err = h
        .leader
        .subscribe(
            &h.reg,
            h.now,
            pb::SubscribeRequest {
                framework_info: Some(Default::default()),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(matches!(err, MasterError::NotLeader { leader: None }));
}

#[test]
fn a_framework_is_removed_at_its_failover_deadline_not_before() {
    let (mut h, fw, agent) = one_task(false);
    let stream = h.leader.frameworks[&fw].stream_id.clone();
    let effects = h.leader.framework_disconnected(&h.reg, h.now, &fw, &stream);
    let effects = h.settle(effects).unwrap();
    assert!(matches!(effects[0], Effect::CloseFrameworkStream { .. }));
    let gone_at = h.now;
    assert_eq!(h.reg.frameworks[&fw].disconnected_ms, Some(gone_at));

    h.advance(60_000 - 1);
    assert!(h.leader.expire_frameworks(&h.reg, h.now).is_empty());
    h.advance(1);
    let effects = h.leader.expire_frameworks(&h.reg, h.now);
    let props = proposals(&effects);
    let [(Command::RemoveFramework { reason, .. }, _)] = props.as_slice() else {
        panic!("{effects:?}");
    };
    assert_eq!(reason, "failover timeout elapsed");
    let effects = h.settle(effects).unwrap();
    assert!(!h.reg.frameworks.contains_key(&fw));
    let msgs = messages_to(&effects, &agent);
    assert!(
        matches!(msgs.as_slice(), [m] if matches!(&m.msg, Some(Msg::ShutdownFramework(s)) if s.framework_id.as_ref() == Some(&fw))),
        "{msgs:?}"
    );
}

#[test]
fn a_resubscription_in_time_stops_the_failover_clock() {
    let (mut h, fw, _) = one_task(false);
    let stream = h.leader.frameworks[&fw].stream_id.clone();
    let effects = h.leader.framework_disconnected(&h.reg, h.now, &fw, &stream);
    h.settle(effects).unwrap();
    // A stream that is not the current one changes nothing.
    assert!(h
        .leader
        .framework_disconnected(&h.reg, h.now, &fw, "other")
        .is_empty());
    h.advance(30_000);
    h.subscribe_with(pb::FrameworkInfo {
        id: Some(fw.clone()),
        failover_timeout: 60.0,
        ..Default::default()
    });
    h.advance(10 * 60_000);
    assert!(h.leader.expire_frameworks(&h.reg, h.now).is_empty());
}

#[test]
fn failover_clocks_of_earlier_disconnections_start_at_the_election() {
    let mut h = Harness::new();
    // Disconnected long before this leader was elected (under another leader).
    h.apply(Command::AddFramework {
        framework_id: FrameworkId::new("old"),
        info: pb::FrameworkInfo {
            failover_timeout: 10.0,
            ..Default::default()
        },
        now_ms: 0,
    });
    h.apply(Command::FrameworkDisconnected {
        framework_id: FrameworkId::new("old"),
        now_ms: 5,
    });
    h.advance(9_999);
    assert!(h.leader.expire_frameworks(&h.reg, h.now).is_empty());
    h.advance(1);
    assert_eq!(
        proposals(&h.leader.expire_frameworks(&h.reg, h.now)).len(),
        1
    );
}

#[test]
fn a_decline_filters_the_agent_for_refuse_seconds() {
    let mut h = Harness::new();
    h.add_agent("cpus:4;mem:4096");
    let (fw, _) = h.subscribe("web", 0.0, false);
    let offers = h.allocate();
    let offer_id = offers[0].1[0].id.clone().unwrap();
    let effects = h
        .leader
        .decline(
            &h.reg,
            h.now,
            pb::DeclineCall {
                header: h.header(&fw),
                offer_ids: vec![offer_id.clone()],
                filters: Some(pb::Filters {
                    refuse_seconds: Some(10.0),
                }),
            },
        )
        .unwrap();
    assert!(matches!(effects.as_slice(), [Effect::Allocate]));
    assert!(h.leader.offers.is_empty());
    h.advance(9_999);
    assert!(h.allocate().is_empty(), "filtered for 10 s");
    h.advance(1);
    let offers = h.allocate();
    assert_eq!(offers.len(), 1, "offered again once the filter expires");
    // Declining it again: unknown now, and nothing changes.
    let err = h
        .leader
        .decline(
            &h.reg,
            h.now,
            pb::DeclineCall {
                header: h.header(&fw),
                offer_ids: vec![offers[0].1[0].id.clone().unwrap(), offer_id],
                filters: None,
            },
        )
        .unwrap_err();
    assert!(matches!(err, MasterError::NotFound(_)), "{err}");
    assert_eq!(h.leader.offers.len(), 1);
}

#[test]
fn declining_another_frameworks_offer_is_refused() {
    let mut h = Harness::new();
    h.add_agent("cpus:4;mem:4096");
    let (a, _) = h.subscribe("a", 0.0, false);
    let (b, _) = h.subscribe("b", 0.0, false);
    let offers = h.allocate();
    let (owner, o) = &offers[0];
    let other = if *owner == a { &b } else { &a };
    let err = h
        .leader
        .decline(
            &h.reg,
            h.now,
            pb::DeclineCall {
                header: h.header(other),
                offer_ids: vec![o[0].id.clone().unwrap()],
                filters: None,
            },
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "offer {} was made to another framework",
            o[0].id.as_ref().unwrap()
        )
    );
    assert_eq!(h.leader.offers.len(), 1);
}

#[test]
fn offers_are_rescinded_at_the_offer_timeout() {
    let mut h = Harness::new();
    h.add_agent("cpus:4;mem:4096");
    let (fw, _) = h.subscribe("web", 0.0, false);
    let offers = h.allocate();
    let id = offers[0].1[0].id.clone().unwrap();
    h.advance(OFFER_TIMEOUT_MS - 1);
    assert!(h.leader.expire_offers(h.now).is_empty());
    h.advance(1);
    let effects = h.leader.expire_offers(h.now);
    let events = events_to(&effects, &fw);
    assert!(
        matches!(events.as_slice(), [pb::event::Event::Rescind(r)] if r.offer_id.as_ref() == Some(&id)),
        "{effects:?}"
    );
    assert!(matches!(effects.last(), Some(Effect::Allocate)));
    assert!(h.leader.offers.is_empty());
}

#[test]
fn suppress_rescinds_and_stops_offers_until_revive() {
    let mut h = Harness::new();
    h.add_agent("cpus:4;mem:4096");
    let (fw, _) = h.subscribe("web", 0.0, false);
    h.allocate();
    let header = h.header(&fw);
    let effects = h
        .leader
        .revive_or_suppress(&h.reg, header.as_ref(), false)
        .unwrap();
    assert!(matches!(
        events_to(&effects, &fw).as_slice(),
        [pb::event::Event::Rescind(_)]
    ));
    assert!(h.allocate().is_empty());
    h.leader
        .revive_or_suppress(&h.reg, header.as_ref(), true)
        .unwrap();
    assert_eq!(h.allocate().len(), 1);
}

#[test]
fn a_silent_agent_becomes_unreachable_and_its_tasks_lost() {
    let (mut h, fw, agent) = one_task(false);
    let conn = h.leader.agents[&agent].conn_id;
    h.advance(AGENT_TIMEOUT_MS);
    // A ping just in time keeps the agent alive.
    let pong = h
        .leader
        .agent_message(&h.reg, h.now, &agent, conn, ping())
        .unwrap();
    assert!(matches!(
        messages_to(&pong, &agent).as_slice(),
        [m] if matches!(m.msg, Some(Msg::Pong(_))) && m.term == TERM
    ));
    h.advance(AGENT_TIMEOUT_MS);
    assert!(h.leader.check_agents(&h.reg, h.now).is_empty());
    h.advance(1);
    let effects = h.leader.check_agents(&h.reg, h.now);
    assert!(matches!(
        proposals(&effects).as_slice(),
        [(Command::AgentUnreachable { agent_id, .. }, Then::AgentUnreachable { .. })] if *agent_id == agent
    ));
    let effects = h.settle(effects).unwrap();
    assert!(matches!(
        &effects[0],
        Effect::CloseAgentConnection { agent: a, farewell: Farewell::Error(MasterError::Unavailable(m)), .. }
            if *a == agent && m == "agent marked unreachable; re-register"
    ));
    let updates = updates_to(&effects, &fw);
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0].state, TaskState::TaskLost as i32);
    assert_eq!(h.reg.agents[&agent].state, AgentState::Unreachable);
    assert!(!h.leader.agents.contains_key(&agent));
    assert_eq!(h.metrics.agents_unreachable.get(), 1);
}

#[test]
fn partition_aware_frameworks_see_unreachable_not_lost() {
    let (mut h, fw, agent) = one_task(true);
    h.advance(AGENT_TIMEOUT_MS + 1);
    let effects = h.leader.check_agents(&h.reg, h.now);
    let effects = h.settle(effects).unwrap();
    let updates = updates_to(&effects, &fw);
    assert_eq!(updates[0].state, TaskState::TaskUnreachable as i32);
    assert_eq!(h.reg.agents[&agent].state, AgentState::Unreachable);
}

#[test]
fn a_disconnected_agent_loses_its_offers_and_its_clock_keeps_running() {
    let mut h = Harness::new();
    let (agent, conn) = h.add_agent("cpus:4;mem:4096");
    let (fw, _) = h.subscribe("web", 0.0, false);
    h.allocate();
    h.advance(5_000);
    let effects = h.leader.agent_disconnected(&agent, conn);
    assert!(matches!(effects[0], Effect::CloseAgentConnection { .. }));
    assert!(matches!(
        events_to(&effects, &fw).as_slice(),
        [pb::event::Event::Rescind(_)]
    ));
    // Messages on the dead connection are not read any more.
    assert!(h
        .leader
        .agent_message(&h.reg, h.now, &agent, conn, ping())
        .is_none());
    // The timeout runs from its registration (its last message), not its disconnection.
    h.advance(AGENT_TIMEOUT_MS - 5_000 + 1);
    assert_eq!(proposals(&h.leader.check_agents(&h.reg, h.now)).len(), 1);
}

#[test]
fn accept_commits_then_launches_and_refuses_bad_tasks_with_task_error() {
    let mut h = Harness::new();
    let (agent, _) = h.add_agent("cpus:4;mem:4096");
    let (fw, _) = h.subscribe("web", 0.0, false);
    let offers = h.allocate();
    let call = pb::AcceptCall {
        header: h.header(&fw),
        offer_ids: vec![offers[0].1[0].id.clone().unwrap()],
        operations: vec![launch_op(&[("good", "cpus:1;mem:64"), ("huge", "cpus:64")])],
        filters: None,
    };
    let first = h.leader.accept(&h.reg, h.now, call).unwrap();
    // The refused task is reported at once; the good one waits for its commit.
    let updates = updates_to(&first, &fw);
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0].task_id.as_ref().unwrap().as_str(), "huge");
    assert_eq!(updates[0].state, TaskState::TaskError as i32);
    assert!(messages_to(&first, &agent).is_empty());
    assert!(h.leader.offers.is_empty());
    assert!(
        !h.leader.pending[&agent].is_empty(),
        "held until the commit"
    );
    let effects = h.settle(first).unwrap();
    let msgs = messages_to(&effects, &agent);
    assert!(
        matches!(msgs.as_slice(), [m] if matches!(&m.msg, Some(Msg::RunTask(r)) if r.task.as_ref().unwrap().task_id.as_ref().unwrap().as_str() == "good")),
        "{msgs:?}"
    );
    assert!(h.leader.pending[&agent].is_empty());
    assert!(h
        .reg
        .tasks
        .contains_key(&crate::registry::TaskKey::new(&fw, "good")));
    assert_eq!(h.metrics.tasks_error.get(), 1);
    assert_eq!(h.metrics.tasks_launched.get(), 1);
    assert_eq!(h.metrics.offers_accepted.get(), 1);
}

/// Issue 14: a launch whose message to the agent would exceed what an agent accepts is
/// refused at the gate (TASK_ERROR naming the limit), never proposed; one exactly at the
/// limit goes ahead; a task group travels as one message and is refused as a whole.
#[test]
fn a_launch_larger_than_an_agent_accepts_is_refused_before_it_is_proposed() {
    use drover_proto::limits::MAX_MASTER_MESSAGE_BYTES;
    use drover_proto::Resources;
    use prost::Message as _;

    let mut h = Harness::new();
    let (agent, _) = h.add_agent("cpus:4;mem:4096");
    let (fw, _) = h.subscribe("web", 0.0, false);
    let labelled = |id: &str, res: &str, label: usize| {
        let mut op = launch_op(&[(id, res)]);
        let mut t = op.launch.take().unwrap().task_infos.remove(0);
        t.labels.push(pb::Label {
            key: "blob".into(),
            value: "x".repeat(label),
        });
        t
    };
    // The size of the RunTask of task `edge` as the agent would receive it.
    let info = h.reg.frameworks.get(&fw).map(|f| f.info.clone());
    let sent_size = |label: usize| {
        let mut t = labelled("edge", "cpus:0.5;mem:32", label);
        t.agent_id = Some(agent.clone());
        pb::MasterMessage {
            term: u64::MAX,
            msg: Some(Msg::RunTask(pb::master_message::RunTask {
                framework_id: Some(fw.clone()),
                framework_info: info.clone(),
                task: Some(t),
            })),
        }
        .encoded_len()
    };
    let guess = MAX_MASTER_MESSAGE_BYTES - 1024;
    let at_limit = guess + (MAX_MASTER_MESSAGE_BYTES - sent_size(guess));
    assert_eq!(sent_size(at_limit), MAX_MASTER_MESSAGE_BYTES);

    let third = MAX_MASTER_MESSAGE_BYTES / 3;
    let group = pb::Operation {
        r#type: pb::operation::Type::LaunchGroup as i32,
        launch_group: Some(pb::operation::LaunchGroup {
            executor: Some(pb::ExecutorInfo {
                executor_id: Some("ex".into()),
                r#type: pb::executor_info::Type::Default as i32,
                ..Default::default()
            }),
            task_group: Some(pb::TaskGroupInfo {
                // Each task fits alone; together they do not.
                tasks: vec![
                    labelled("g1", "cpus:0.5;mem:32", third),
                    labelled("g2", "cpus:0.5;mem:32", third),
                    labelled("g3", "cpus:0.5;mem:32", third),
                ],
            }),
        }),
        ..Default::default()
    };
    let lone = pb::Operation {
        r#type: pb::operation::Type::Launch as i32,
        launch: Some(pb::operation::Launch {
            task_infos: vec![
                labelled("good", "cpus:1;mem:64", 0),
                labelled("edge", "cpus:0.5;mem:32", at_limit),
                labelled("over", "cpus:0.5;mem:32", at_limit + 1),
            ],
        }),
        ..Default::default()
    };
    let offers = h.allocate();
    let call = pb::AcceptCall {
        header: h.header(&fw),
        offer_ids: vec![offers[0].1[0].id.clone().unwrap()],
        operations: vec![lone, group],
        filters: None,
    };
    let first = h.leader.accept(&h.reg, h.now, call).unwrap();

    let mut refused: Vec<(String, i32, String)> = updates_to(&first, &fw)
        .into_iter()
        .map(|u| (u.task_id.unwrap().value, u.reason, u.message))
        .collect();
    refused.sort();
    let ids: Vec<&str> = refused.iter().map(|(id, ..)| id.as_str()).collect();
    assert_eq!(ids, ["g1", "g2", "g3", "over"], "{refused:?}");
    for (id, reason, why) in &refused {
        let expected = if id == "over" {
            pb::task_status::Reason::TaskInvalid
        } else {
            pb::task_status::Reason::TaskGroupInvalid
        };
        assert_eq!(*reason, expected as i32, "{id}");
        assert!(why.contains("MAX_MASTER_MESSAGE_BYTES"), "{id}: {why}");
    }
    // Only what fits is proposed, and only its resources are held.
    let proposed = proposals(&first);
    let [(Command::LaunchTasks { tasks, .. }, _)] = proposed.as_slice() else {
        panic!("expected one launch proposal: {first:?}");
    };
    let ids: Vec<&str> = tasks
        .iter()
        .map(|t| t.task_id.as_ref().unwrap().as_str())
        .collect();
    assert_eq!(ids, ["good", "edge"]);
    assert_eq!(
        h.leader.pending[&agent],
        Resources::parse("cpus:1.5;mem:96").unwrap()
    );

    let effects = h.settle(first).unwrap();
    let msgs = messages_to(&effects, &agent);
    assert_eq!(msgs.len(), 2, "{}", msgs.len());
    for m in msgs {
        assert!(m.encoded_len() <= MAX_MASTER_MESSAGE_BYTES);
    }
    assert_eq!(h.metrics.tasks_error.get(), 4);
    assert_eq!(h.metrics.tasks_launched.get(), 2);
}

#[test]
fn a_launch_applied_after_a_change_of_leadership_asks_for_reconciliation() {
    let mut h = Harness::new();
    h.add_agent("cpus:4;mem:4096");
    let (fw, _) = h.subscribe("web", 0.0, false);
    let offers = h.allocate();
    let call = pb::AcceptCall {
        header: h.header(&fw),
        offer_ids: vec![offers[0].1[0].id.clone().unwrap()],
        operations: vec![launch_op(&[("t", "cpus:1")])],
        filters: None,
    };
    let first = h.leader.accept(&h.reg, h.now, call).unwrap();
    let [Effect::Propose { then, .. }] = first.as_slice() else {
        panic!("{first:?}");
    };
    let _ = h.leader.reset(TERM + 1, h.now);
    let _ = h.leader.start_serving(&h.reg, TERM + 1, h.now);
    let err = h
        .leader
        .applied(
            &h.reg,
            h.now,
            then.clone(),
            Ok(crate::registry::ApplyOutcome::None),
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "leadership changed during the launch; reconcile these tasks"
    );
}

#[test]
fn kill_goes_to_the_tasks_agent_or_repeats_a_final_state() {
    let (mut h, fw, agent) = one_task(false);
    let kill = |h: &Harness, task: &str, on: Option<&str>| pb::KillCall {
        header: h.header(&fw),
        task_id: Some(TaskId::new(task)),
        agent_id: on.map(AgentId::new),
        kill_policy: None,
    };
    let effects = h.leader.kill(&h.reg, h.now, kill(&h, "t1", None)).unwrap();
    assert!(matches!(
        messages_to(&effects, &agent).as_slice(),
        [m] if matches!(&m.msg, Some(Msg::KillTask(k)) if k.task_id.as_ref().unwrap().as_str() == "t1") && m.term == TERM
    ));
    let err = h
        .leader
        .kill(&h.reg, h.now, kill(&h, "t1", Some("elsewhere")))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("task t1 runs on agent {agent}, not elsewhere")
    );
    let err = h
        .leader
        .kill(&h.reg, h.now, kill(&h, "nope", None))
        .unwrap_err();
    assert_eq!(err.to_string(), "task nope is unknown to the master");

    // Finished: the framework is told its final state again, nothing goes to the agent.
    h.apply(Command::StatusUpdates {
        updates: vec![StatusUpdate {
            agent_id: agent.clone(),
            framework_id: fw.clone(),
            status: pb::TaskStatus {
                task_id: Some(TaskId::new("t1")),
                state: TaskState::TaskFinished as i32,
                uuid: uuid(7),
                ..Default::default()
            },
        }],
        now_ms: h.now,
    });
    let effects = h.leader.kill(&h.reg, h.now, kill(&h, "t1", None)).unwrap();
    assert!(messages_to(&effects, &agent).is_empty());
    let updates = updates_to(&effects, &fw);
    assert_eq!(updates[0].state, TaskState::TaskFinished as i32);
    assert!(updates[0].uuid.is_empty(), "never acknowledged");
}

#[test]
fn reconcile_reports_known_tasks_in_order_and_unknown_ones_lost() {
    let (mut h, fw, _) = one_task(false);
    h.launch(&fw, &[("t0", "cpus:1;mem:128")]).unwrap();
    let call = |h: &Harness, tasks: Vec<pb::reconcile_call::Task>| pb::ReconcileCall {
        header: h.header(&fw),
        tasks,
    };
    let effects = h.leader.reconcile(&h.reg, h.now, call(&h, vec![])).unwrap();
    let ids: Vec<String> = updates_to(&effects, &fw)
        .iter()
        .map(|s| s.task_id.as_ref().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["t0", "t1"], "implicit: every task, in task id order");
    assert!(updates_to(&effects, &fw)
        .iter()
        .all(|s| s.reason == pb::task_status::Reason::Reconciliation as i32 && s.uuid.is_empty()));

    let effects = h
        .leader
        .reconcile(
            &h.reg,
            h.now,
            call(
                &h,
                vec![pb::reconcile_call::Task {
                    task_id: Some(TaskId::new("ghost")),
                    agent_id: None,
                }],
            ),
        )
        .unwrap();
    let updates = updates_to(&effects, &fw);
    assert_eq!(updates[0].state, TaskState::TaskLost as i32);
    assert_eq!(updates[0].message, "task is unknown to the master");
}

#[test]
fn teardown_shuts_the_framework_down_on_its_agents_and_ends_its_stream() {
    let (mut h, fw, agent) = one_task(false);
    h.allocate();
    let stream = h.leader.frameworks[&fw].stream_id.clone();
    let effects = h
        .leader
        .remove_framework(h.now, fw.clone(), "torn down by the framework");
    let effects = h.settle(effects).unwrap();
    assert!(matches!(
        messages_to(&effects, &agent).as_slice(),
        [m] if matches!(m.msg, Some(Msg::ShutdownFramework(_)))
    ));
    assert!(effects.iter().any(|e| matches!(
        e,
        Effect::CloseFrameworkStream { stream_id, farewell: Farewell::ErrorEvent(m), .. }
            if *stream_id == stream && m == "framework removed: torn down by the framework"
    )));
    assert!(h.leader.offers.is_empty());
    assert!(!h.leader.frameworks.contains_key(&fw));
    assert!(!h.reg.frameworks.contains_key(&fw));
    let err = h
        .leader
        .teardown_by_operator(&h.reg, h.now, Some(fw.clone()))
        .unwrap_err();
    assert_eq!(err.to_string(), format!("framework {fw} is unknown"));
}

#[test]
fn the_batcher_forwards_committed_updates_and_acknowledges_stale_ones() {
    let (mut h, fw, agent) = one_task(false);
    let conn = h.leader.agents[&agent].conn_id;
    let effects = h
        .leader
        .agent_message(
            &h.reg,
            h.now,
            &agent,
            conn,
            agent_update(&fw, "t1", TaskState::TaskRunning, 1),
        )
        .unwrap();
    let [Effect::CommitUpdate(running)] = effects.as_slice() else {
        panic!("{effects:?}");
    };
    assert_eq!(
        running.status.agent_id.as_ref(),
        Some(&agent),
        "the agent speaks for itself"
    );
    let stale = StatusUpdate {
        framework_id: FrameworkId::new("gone"),
        ..running.clone()
    };
    let batch = vec![running.clone(), stale];
    let effect = h.leader.commit_updates(h.now, batch);
    let effects = h.settle(vec![effect]).unwrap();
    let updates = updates_to(&effects, &fw);
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0].state, TaskState::TaskRunning as i32);
    let acks = messages_to(&effects, &agent);
    assert!(
        matches!(acks.as_slice(), [m] if matches!(&m.msg, Some(Msg::StatusAck(a)) if a.framework_id.as_ref().unwrap().as_str() == "gone")),
        "{acks:?}"
    );
    assert!(
        !effects.iter().any(|e| matches!(e, Effect::Allocate)),
        "nothing was freed"
    );

    // A terminal update frees resources: an allocation follows.
    let finished = h
        .leader
        .agent_message(
            &h.reg,
            h.now,
            &agent,
            conn,
            agent_update(&fw, "t1", TaskState::TaskFinished, 2),
        )
        .unwrap();
    let [Effect::CommitUpdate(u)] = finished.as_slice() else {
        panic!();
    };
    let effect = h.leader.commit_updates(h.now, vec![u.clone()]);
    let effects = h.settle(vec![effect]).unwrap();
    assert!(matches!(effects.last(), Some(Effect::Allocate)));
}

#[test]
fn invalid_updates_are_refused_and_not_committed() {
    let (mut h, fw, agent) = one_task(false);
    let conn = h.leader.agents[&agent].conn_id;
    let mut bad = agent_update(&fw, "t1", TaskState::TaskRunning, 1);
    if let Some(pb::agent_message::Msg::StatusUpdate(u)) = &mut bad.msg {
        u.status.as_mut().unwrap().uuid = vec![1, 2, 3];
    }
    let effects = h
        .leader
        .agent_message(&h.reg, h.now, &agent, conn, bad)
        .unwrap();
    assert!(effects.is_empty());
}

#[test]
fn updates_for_a_disconnected_framework_wait_for_its_return() {
    let (mut h, fw, agent) = one_task(false);
    let stream = h.leader.frameworks[&fw].stream_id.clone();
    let effects = h.leader.framework_disconnected(&h.reg, h.now, &fw, &stream);
    h.settle(effects).unwrap();
    let conn = h.leader.agents[&agent].conn_id;
    let mut committed = Vec::new();
    for (n, state) in [(2, TaskState::TaskRunning), (3, TaskState::TaskFailed)] {
        let e = h
            .leader
            .agent_message(
                &h.reg,
                h.now,
                &agent,
                conn,
                agent_update(&fw, "t1", state, n),
            )
            .unwrap();
        let [Effect::CommitUpdate(u)] = e.as_slice() else {
            panic!()
        };
        committed.push(u.clone());
    }
    let effect = h.leader.commit_updates(h.now, committed);
    let effects = h.settle(vec![effect]).unwrap();
    assert!(updates_to(&effects, &fw).is_empty());
    // Back: the latest update per task is delivered after SUBSCRIBED.
    let first = h
        .leader
        .subscribe(
            &h.reg,
            h.now,
            pb::SubscribeRequest {
                framework_info: Some(pb::FrameworkInfo {
                    id: Some(fw.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .unwrap();
    let effects = h.settle(first).unwrap();
    let events = events_to(&effects, &fw);
    assert!(matches!(events[0], pb::event::Event::Subscribed(_)));
    let updates = updates_to(&effects, &fw);
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0].state, TaskState::TaskFailed as i32);
}

#[test]
fn a_lost_stream_keeps_the_unsent_update_and_returns_the_offers() {
    let (mut h, fw, _) = one_task(false);
    h.allocate();
    assert!(!h.leader.offers.is_empty());
    let status = pb::TaskStatus {
        task_id: Some(TaskId::new("t1")),
        state: TaskState::TaskRunning as i32,
        uuid: uuid(9),
        ..Default::default()
    };
    let stream = h.leader.frameworks[&fw].stream_id.clone();
    let effects = h.leader.framework_stream_lost(
        &fw,
        &stream,
        Some(pb::event::Event::Update(pb::event::Update {
            status: Some(status.clone()),
        })),
    );
    assert!(matches!(
        effects.as_slice(),
        [Effect::CloseFrameworkStream {
            farewell: Farewell::Quietly,
            ..
        }]
    ));
    assert!(h.leader.offers.is_empty());
    assert!(!h.leader.frameworks.contains_key(&fw));
    let kept: Vec<_> = h.leader.undelivered[&fw].values().cloned().collect();
    assert_eq!(kept, vec![status]);
}

#[test]
fn a_lost_stream_or_connection_that_was_replaced_changes_nothing() {
    let (mut h, fw, agent) = one_task(false);
    let old_stream = h.leader.frameworks[&fw].stream_id.clone();
    // The framework (failover timeout 0) resubscribes and gets offers on its new stream.
    h.subscribe_with(pb::FrameworkInfo {
        id: Some(fw.clone()),
        ..Default::default()
    });
    let new_stream = h.leader.frameworks[&fw].stream_id.clone();
    assert_ne!(new_stream, old_stream);
    assert_eq!(h.allocate().len(), 1);
    // A send to the old stream fails a moment later: the new subscription stays.
    let effects = h.leader.framework_stream_lost(&fw, &old_stream, None);
    assert!(effects.is_empty(), "{effects:?}");
    assert_eq!(h.leader.frameworks[&fw].stream_id, new_stream);
    assert_eq!(h.leader.offers.len(), 1, "the new stream's offers stay");
    h.leader
        .check_caller(&h.reg, h.header(&fw).as_ref())
        .expect("still subscribed");
    assert!(h.leader.expire_frameworks(&h.reg, h.now).is_empty());

    // The same for an agent that registered again on a new connection.
    let old_conn = h.leader.agents[&agent].conn_id;
    h.reregister(&agent, Vec::new()).unwrap();
    let new_conn = h.leader.agents[&agent].conn_id;
    assert_ne!(new_conn, old_conn);
    assert_eq!(h.allocate().len(), 1);
    let effects = h.leader.agent_connection_lost(&agent, old_conn);
    assert!(effects.is_empty(), "{effects:?}");
    assert_eq!(h.leader.agents[&agent].conn_id, new_conn);
    assert_eq!(
        h.leader.offers.len(),
        1,
        "the agent's offer is not rescinded"
    );

    // Losing the current ones disconnects.
    let effects = h.leader.agent_connection_lost(&agent, new_conn);
    assert!(matches!(
        &effects[0],
        Effect::CloseAgentConnection { conn_id, farewell: Farewell::Quietly, .. } if *conn_id == new_conn
    ));
    assert!(!h.leader.agents.contains_key(&agent));
    assert!(h.leader.offers.is_empty());
    let effects = h.leader.framework_stream_lost(&fw, &new_stream, None);
    assert!(matches!(
        effects.as_slice(),
        [Effect::CloseFrameworkStream { stream_id, .. }] if *stream_id == new_stream
    ));
    assert!(!h.leader.frameworks.contains_key(&fw));
}

#[test]
fn an_update_that_missed_its_stream_follows_the_framework() {
    let (mut h, fw, agent) = one_task(false);
    let old = h.leader.frameworks[&fw].stream_id.clone();
    let update = pb::event::Event::Update(pb::event::Update {
        status: Some(pb::TaskStatus {
            task_id: Some(TaskId::new("t1")),
            state: TaskState::TaskRunning as i32,
            uuid: uuid(5),
            ..Default::default()
        }),
    });
    // Resubscribed meanwhile: the update goes to the new stream.
    h.subscribe_with(pb::FrameworkInfo {
        id: Some(fw.clone()),
        failover_timeout: 60.0,
        ..Default::default()
    });
    let new = h.leader.frameworks[&fw].stream_id.clone();
    let effects = h.leader.event_not_sent(&fw, &old, update.clone());
    assert!(
        matches!(effects.as_slice(), [Effect::Event { stream_id, .. }] if *stream_id == new),
        "{effects:?}"
    );
    // The current stream itself is gone: kept for the framework's return.
    assert!(h.leader.event_not_sent(&fw, &new, update).is_empty());
    assert_eq!(h.leader.undelivered[&fw].len(), 1);

    // A relay to an agent that is not connected is answered at once.
    let mut task = launch_op(&[("t2", "cpus:0.5;mem:32")])
        .launch
        .unwrap()
        .task_infos
        .remove(0);
    task.executor = Some(pb::ExecutorInfo {
        executor_id: Some(drover_proto::ExecutorId::new("ex")),
        ..Default::default()
    });
    h.apply(Command::LaunchTasks {
        framework_id: fw.clone(),
        agent_id: agent.clone(),
        tasks: vec![task],
        term: TERM,
        now_ms: h.now,
    });
    let call = |h: &Harness| pb::ShutdownCall {
        header: h.header(&fw),
        executor_id: Some(drover_proto::ExecutorId::new("ex")),
        agent_id: Some(agent.clone()),
    };
    let effects = h.leader.shutdown_executor(&h.reg, call(&h)).unwrap();
    assert_eq!(messages_to(&effects, &agent).len(), 1);
    let conn = h.leader.agents[&agent].conn_id;
    let _ = h.leader.agent_disconnected(&agent, conn);
    let err = h.leader.shutdown_executor(&h.reg, call(&h)).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("agent {agent} is not connected; ask again for executor ex once it is back")
    );
}

#[test]
fn a_reregistering_agent_gets_its_missed_launches_and_kills() {
    let (mut h, fw, agent) = one_task(false);
    // The agent comes back on a new connection. It does not report t1 (still STAGING:
    // sent again), and it reports a task the registry does not know (killed).
    let ghost = pb::AgentTask {
        framework_id: Some(fw.clone()),
        task: Some(pb::TaskInfo {
            task_id: Some(TaskId::new("ghost")),
            ..Default::default()
        }),
        state: TaskState::TaskRunning as i32,
    };
    let register = pb::agent_message::Register {
        agent_id: Some(agent.clone()),
        info: Some(pb::AgentInfo {
            address: "10.0.0.1:5051".into(),
            resources: drover_proto::Resources::parse("cpus:4;mem:4096")
                .unwrap()
                .to_proto(),
            ..Default::default()
        }),
        tasks: vec![ghost],
        ..Default::default()
    };
    let old = h.leader.agents[&agent].conn_id;
    let first = h.leader.register_agent(h.now, register).unwrap();
    assert!(matches!(
        proposals(&first).as_slice(),
        [(Command::ReregisterAgent { .. }, _)]
    ));
    let effects = h.settle(first).unwrap();
    assert!(matches!(
        &effects[0],
        Effect::CloseAgentConnection { conn_id, farewell: Farewell::Error(MasterError::Aborted(_)), .. } if *conn_id == old
    ));
    let msgs = messages_to(&effects, &agent);
    assert!(matches!(msgs[0].msg, Some(Msg::Registered(_))));
    assert!(msgs.iter().any(|m| matches!(&m.msg, Some(Msg::RunTask(r))
        if r.task.as_ref().unwrap().task_id.as_ref().unwrap().as_str() == "t1"
            && r.framework_id.as_ref() == Some(&fw))));
    let kills: Vec<_> = msgs
        .iter()
        .filter_map(|m| match &m.msg {
            Some(Msg::KillTask(k)) => Some(k),
            _ => None,
        })
        .collect();
    assert!(
        matches!(kills.as_slice(), [k] if k.task_id.as_ref().unwrap().as_str() == "ghost"
            && k.framework_id.as_ref() == Some(&fw)),
        "{kills:?}"
    );
    let new = h.leader.agents[&agent].conn_id;
    assert_ne!(new, old);
    assert!(
        effects
            .iter()
            .all(|e| !matches!(e, Effect::ToAgent { conn_id, .. } if *conn_id != new)),
        "everything goes on the new connection"
    );
}

#[test]
fn relays_reach_only_executors_that_run_there() {
    let (mut h, fw, agent) = one_task(false);
    let err = h
        .leader
        .message_executor(
            &h.reg,
            pb::MessageCall {
                header: h.header(&fw),
                agent_id: Some(agent.clone()),
                executor_id: Some(drover_proto::ExecutorId::new("ex")),
                data: b"hi".to_vec(),
            },
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("no active task of framework {fw} on agent {agent} runs on executor ex")
    );
}

#[test]
fn losing_leadership_ends_every_stream_with_not_leader() {
    let (mut h, fw, agent) = one_task(false);
    let effects = h.leader.reset(TERM + 1, h.now);
    assert_eq!(effects.len(), 2);
    assert!(effects
        .iter()
        .any(|e| matches!(e, Effect::CloseAgentConnection { agent: a, .. } if *a == agent)));
    assert!(effects.iter().all(|e| matches!(
        e,
        Effect::CloseFrameworkStream {
            farewell: Farewell::Error(MasterError::NotLeader { .. }),
            ..
        } | Effect::CloseAgentConnection {
            farewell: Farewell::Error(MasterError::NotLeader { .. }),
            ..
        }
    )));
    assert!(h.leader.offers.is_empty() && h.leader.pending.is_empty());
    let header = pb::CallHeader {
        framework_id: Some(fw.clone()),
        stream_id: "any".into(),
    };
    let err = h.leader.check_caller(&h.reg, Some(&header)).unwrap_err();
    assert!(matches!(err, MasterError::NotLeader { .. }));
    assert!(h
        .leader
        .check_agents(&h.reg, h.now + 10 * AGENT_TIMEOUT_MS)
        .is_empty());
}

#[test]
fn the_same_inputs_give_the_same_effects() {
    let run = || {
        let mut h = Harness::new();
        let mut log = Vec::new();
        let agents: Vec<AgentId> = (0..8)
            .map(|i| h.add_agent(&format!("cpus:{};mem:8192", 8 + i)).0)
            .collect();
        let fws: Vec<FrameworkId> = (0..12)
            .map(|i| h.subscribe(&format!("f{i}"), 1.0, i % 2 == 0).0)
            .collect();
        // Six tasks per framework, committed on the agents in turn (still STAGING), and
        // one launch through ACCEPT.
        for (i, fw) in fws.iter().enumerate() {
            let tasks = (0..6)
                .map(|t| {
                    let id = format!("t{i}-{t}");
                    launch_op(&[(id.as_str(), "cpus:0.25;mem:64")])
                        .launch
                        .unwrap()
                        .task_infos
                        .remove(0)
                })
                .collect();
            h.apply(Command::LaunchTasks {
                framework_id: fw.clone(),
                agent_id: agents[i % agents.len()].clone(),
                tasks,
                term: TERM,
                now_ms: h.now,
            });
        }
        log.push(format!(
            "{:?}",
            h.launch(&fws[0], &[("accepted", "cpus:0.5;mem:64")])
        ));
        // Implicit reconciliation of every framework.
        for fw in &fws {
            let call = pb::ReconcileCall {
                header: h.header(fw),
                tasks: Vec::new(),
            };
            let effects = h.leader.reconcile(&h.reg, h.now, call).unwrap();
            assert!(updates_to(&effects, fw).len() >= 6, "{effects:?}");
            log.push(format!("{effects:?}"));
        }
        // The launches still STAGING are sent again.
        h.advance(10_000);
        log.push(format!(
            "{:?}",
            h.leader.resend_staging(&h.reg, h.now, 10_000)
        ));
        // Every agent registers again, reporting every other of its tasks and one the
        // registry does not know.
        for (n, agent) in agents.iter().enumerate() {
            let mut mine: Vec<_> = h
                .reg
                .tasks
                .values()
                .filter(|t| &t.agent_id == agent)
                .collect();
            mine.sort_by_key(|t| t.key());
            let mut reported: Vec<pb::AgentTask> = mine
                .iter()
                .step_by(2)
                .map(|t| pb::AgentTask {
                    framework_id: Some(t.framework_id.clone()),
                    task: Some(t.info.clone()),
                    state: TaskState::TaskRunning as i32,
                })
                .collect();
            reported.push(pb::AgentTask {
                framework_id: Some(fws[n].clone()),
                task: Some(pb::TaskInfo {
                    task_id: Some(TaskId::new(format!("ghost-{n}"))),
                    ..Default::default()
                }),
                state: TaskState::TaskRunning as i32,
            });
            log.push(format!("{:?}", h.reregister(agent, reported)));
        }
        log.push(format!("{:?}", h.allocate()));
        h.advance(AGENT_TIMEOUT_MS + 1);
        let effects = h.leader.check_agents(&h.reg, h.now);
        log.push(format!("{:?}", h.settle(effects)));
        log.push(format!(
            "{:?}",
            h.leader.expire_offers(h.now + OFFER_TIMEOUT_MS)
        ));
        log
    };
    let first = run();
    let count = |what: &str| first.iter().map(|l| l.matches(what).count()).sum::<usize>();
    // The launches were sent again and the unknown tasks killed.
    assert!(count("RunTask(") >= 72, "launches sent again: {first:?}");
    assert_eq!(count("KillTask("), 8, "{first:?}");
    assert_eq!(first, run());
}

#[test]
fn resources_of_a_launch_not_yet_committed_are_not_offered_again() {
    let mut h = Harness::new();
    let (agent, _) = h.add_agent("cpus:4;mem:4096");
    let (fw, _) = h.subscribe("web", 0.0, false);
    let offers = h.allocate();
    let call = pb::AcceptCall {
        header: h.header(&fw),
        offer_ids: vec![offers[0].1[0].id.clone().unwrap()],
        operations: vec![launch_op(&[("t", "cpus:3;mem:1024")])],
        filters: Some(pb::Filters {
            refuse_seconds: Some(0.0),
        }),
    };
    let first = h.leader.accept(&h.reg, h.now, call).unwrap();
    // The proposal is in flight: the next cycle offers only what the launch leaves.
    let offers = h.allocate();
    let offered = drover_proto::Resources::from_proto(&offers[0].1[0].resources).unwrap();
    assert_eq!(offered.cpus(), 1.0);
    assert_eq!(offered.mem(), 3072.0);
    assert_eq!(offers[0].1[0].agent_id.as_ref(), Some(&agent));
    h.settle(first).unwrap();
}

#[test]
fn heartbeats_go_to_every_subscribed_framework_in_id_order() {
    let mut h = Harness::new();
    // Enough frameworks that a hash map's order would differ from id order.
    let mut expected: Vec<FrameworkId> = (0..20)
        .map(|i| h.subscribe(&format!("f{i}"), 0.0, false).0)
        .collect();
    let effects = h.leader.heartbeats();
    let to: Vec<&FrameworkId> = effects
        .iter()
        .map(|e| match e {
            Effect::Event {
                framework,
                event: pb::event::Event::Heartbeat(_),
                ..
            } => framework,
            other => panic!("{other:?}"),
        })
        .collect();
    expected.sort();
    assert_eq!(to, expected.iter().collect::<Vec<_>>());
}

/// The offer ids in the OFFERS events of `effects`.
fn offer_ids(effects: &[Effect]) -> Vec<drover_proto::OfferId> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Event {
                event: pb::event::Event::Offers(o),
                ..
            } => Some(o.offers.iter().filter_map(|o| o.id.clone())),
            _ => None,
        })
        .flatten()
        .collect()
}

#[test]
fn an_offers_wake_is_at_its_expiry_and_a_tick_then_rescinds_it() {
    let mut h = Harness::new();
    h.leader.settings.offer_timeout_ms = 5_000;
    h.add_agent("cpus:4;mem:4096");
    let (fw, _) = h.subscribe("web", 0.0, false);
    let made = h.now;
    let effects = h.leader.allocate(&h.reg, h.now);
    let ids = offer_ids(&effects);
    assert_eq!(ids.len(), 1, "{effects:?}");
    assert_eq!(wakes(&effects), [made + 5_000], "earlier than the agent's");
    assert_eq!(h.leader.armed(), Some(made + 5_000));

    // A tick just before changes nothing and asks for the same wake again.
    h.advance(5_000 - 1);
    let effects = h.tick();
    assert!(events_to(&effects, &fw).is_empty(), "{effects:?}");
    assert_eq!(wakes(&effects), [made + 5_000]);

    h.advance(1);
    let effects = h.tick();
    assert!(
        matches!(events_to(&effects, &fw).as_slice(), [pb::event::Event::Rescind(r)] if r.offer_id.as_ref() == Some(&ids[0])),
        "{effects:?}"
    );
    assert!(h.leader.offers.is_empty());
    // The next deadline is the agent's liveness, counted from its registration.
    assert_eq!(wakes(&effects), [ELECTED_MS + AGENT_TIMEOUT_MS + 1]);
}

#[test]
fn a_disconnected_frameworks_wake_is_its_failover_deadline() {
    let mut h = Harness::new();
    h.add_agent("cpus:4;mem:4096");
    let (fw, stream) = h.subscribe("web", 5.0, false);
    h.advance(1_000);
    let gone_at = h.now;
    let effects = h.leader.framework_disconnected(&h.reg, h.now, &fw, &stream);
    assert_eq!(wakes(&effects), [gone_at + 5_000], "{effects:?}");
    h.settle(effects).unwrap();

    h.advance(5_000 - 1);
    let effects = h.leader.tick(&h.reg, h.now);
    assert!(proposals(&effects).is_empty(), "{effects:?}");
    assert_eq!(wakes(&effects), [gone_at + 5_000]);
    h.advance(1);
    let effects = h.leader.tick(&h.reg, h.now);
    assert!(
        matches!(proposals(&effects).as_slice(), [(Command::RemoveFramework { framework_id, .. }, _)] if *framework_id == fw),
        "{effects:?}"
    );
    h.settle(effects).unwrap();
    assert!(!h.reg.frameworks.contains_key(&fw));
}

#[test]
fn a_ping_asks_for_no_wake_while_an_earlier_one_is_armed() {
    let mut h = Harness::new();
    let effects = h.register_agent("cpus:4;mem:4096");
    let first_deadline = ELECTED_MS + AGENT_TIMEOUT_MS + 1;
    assert_eq!(wakes(&effects), [first_deadline], "{effects:?}");
    let Some(Effect::OpenAgentConnection { agent, conn_id }) = effects
        .iter()
        .find(|e| matches!(e, Effect::OpenAgentConnection { .. }))
    else {
        panic!("{effects:?}");
    };
    let (agent, conn) = (agent.clone(), *conn_id);

    // Pings push the agent's deadline later: the armed wake still comes first.
    for _ in 0..3 {
        h.advance(5_000);
        let effects = h
            .leader
            .agent_message(&h.reg, h.now, &agent, conn, ping())
            .unwrap();
        assert!(wakes(&effects).is_empty(), "{effects:?}");
    }
    assert_eq!(h.leader.armed(), Some(first_deadline));

    // Once that wake has passed, the next ping asks for its own deadline.
    h.now = first_deadline;
    let effects = h
        .leader
        .agent_message(&h.reg, h.now, &agent, conn, ping())
        .unwrap();
    assert_eq!(wakes(&effects), [h.now + AGENT_TIMEOUT_MS + 1]);
}

#[test]
fn after_a_deadline_is_ticked_the_wake_names_the_next_one() {
    let mut h = Harness::new();
    let (first, _) = h.add_agent("cpus:4;mem:4096");
    h.advance(2_000);
    let (second, _) = h.add_agent("cpus:4;mem:4096");
    let (fw, stream) = h.subscribe("web", 20.0, false);
    let effects = h.leader.framework_disconnected(&h.reg, h.now, &fw, &stream);
    h.settle(effects).unwrap();
    let deadlines = [
        ELECTED_MS + AGENT_TIMEOUT_MS + 1,
        ELECTED_MS + 2_000 + AGENT_TIMEOUT_MS + 1,
        ELECTED_MS + 2_000 + 20_000,
    ];
    assert_eq!(h.leader.armed(), Some(deadlines[0]));

    h.now = deadlines[0];
    let effects = h.tick();
    assert_eq!(h.reg.agents[&first].state, AgentState::Unreachable);
    assert_eq!(h.reg.agents[&second].state, AgentState::Active);
    assert_eq!(wakes(&effects), [deadlines[1]], "{effects:?}");

    h.now = deadlines[1];
    let effects = h.tick();
    assert_eq!(h.reg.agents[&second].state, AgentState::Unreachable);
    assert_eq!(wakes(&effects), [deadlines[2]], "{effects:?}");

    h.now = deadlines[2];
    let effects = h.tick();
    assert!(!h.reg.frameworks.contains_key(&fw));
    assert!(wakes(&effects).is_empty(), "nothing is left: {effects:?}");
    assert_eq!(h.leader.armed(), None);
}

#[test]
fn a_new_leader_asks_to_be_woken_for_the_registrys_first_deadline() {
    let mut h = Harness::new();
    h.add_agent("cpus:4;mem:4096");
    h.apply(Command::AddFramework {
        framework_id: FrameworkId::new("old"),
        info: pb::FrameworkInfo {
            failover_timeout: 10.0,
            ..Default::default()
        },
        now_ms: 0,
    });
    h.apply(Command::FrameworkDisconnected {
        framework_id: FrameworkId::new("old"),
        now_ms: 5,
    });
    h.advance(100_000);
    let _ = h.leader.reset(TERM + 1, h.now);
    assert_eq!(h.leader.armed(), None);
    // The framework's failover clock and the agent's liveness both start at the
    // election; the framework's 10 s come first.
    let effects = h.leader.start_serving(&h.reg, TERM + 1, h.now);
    assert_eq!(wakes(&effects), [h.now + 10_000], "{effects:?}");
}

#[test]
fn the_same_inputs_give_the_same_wakes() {
    let run = || {
        let mut h = Harness::new();
        h.leader.settings.offer_timeout_ms = 7_000;
        let mut all = Vec::new();
        let mut agents = Vec::new();
        for i in 0..4 {
            let effects = h.register_agent("cpus:4;mem:4096");
            all.extend(wakes(&effects));
            agents.extend(effects.iter().find_map(|e| match e {
                Effect::OpenAgentConnection { agent, conn_id } => Some((agent.clone(), *conn_id)),
                _ => None,
            }));
            h.advance(1_000 + i * 500);
        }
        let fws: Vec<_> = (0..3)
            .map(|i| h.subscribe(&format!("f{i}"), 3.0 + i as f64, false))
            .collect();
        all.extend(wakes(&h.leader.allocate(&h.reg, h.now)));
        for (fw, stream) in &fws[1..] {
            let effects = h.leader.framework_disconnected(&h.reg, h.now, fw, stream);
            all.extend(wakes(&h.settle(effects).unwrap()));
        }
        for step in 0..40 {
            h.advance(997);
            if step % 3 == 0 {
                let (agent, conn) = &agents[step % agents.len()];
                if let Some(effects) = h.leader.agent_message(&h.reg, h.now, agent, *conn, ping()) {
                    all.extend(wakes(&effects));
                }
            }
            all.extend(wakes(&h.tick()));
        }
        all
    };
    let first = run();
    assert_eq!(first, run());
    // Registration, the offers' expiry, the failover deadlines and the ticks' re-arms.
    assert!(first.len() > 40, "{first:?}");
    assert_eq!(first[0], ELECTED_MS + AGENT_TIMEOUT_MS + 1);
    assert!(
        first.windows(2).any(|w| w[1] < w[0]),
        "a deadline earlier than the armed one asks again: {first:?}"
    );
}

#[test]
fn acknowledge_relays_uuids_the_master_sent_and_refuses_others() {
    let (mut h, fw, agent) = one_task(false);
    h.launch(&fw, &[("t2", "cpus:1;mem:128")]).unwrap();
    let status = |task: &str, state: TaskState, n: u8| StatusUpdate {
        agent_id: agent.clone(),
        framework_id: fw.clone(),
        status: pb::TaskStatus {
            task_id: Some(TaskId::new(task)),
            state: state as i32,
            uuid: uuid(n),
            ..Default::default()
        },
    };
    let ack = |h: &mut Harness, task: &str, n: u8| {
        let call = pb::AcknowledgeCall {
            header: h.header(&fw),
            agent_id: Some(agent.clone()),
            task_id: Some(TaskId::new(task)),
            uuid: uuid(n),
        };
        h.leader.acknowledge(&h.reg, call)
    };
    let relayed = |effects: &[Effect]| -> Vec<Vec<u8>> {
        messages_to(effects, &agent)
            .iter()
            .filter_map(|m| match &m.msg {
                Some(Msg::StatusAck(a)) => Some(a.uuid.clone()),
                _ => None,
            })
            .collect()
    };
    let not_found = |r: Result<Vec<Effect>, MasterError>| match r {
        Err(MasterError::NotFound(m)) => m,
        other => panic!("expected NOT_FOUND, got {other:?}"),
    };

    h.apply(Command::StatusUpdates {
        updates: vec![status("t1", TaskState::TaskRunning, 3)],
        now_ms: h.now,
    });
    // A uuid the master never sent: refused, nothing reaches the agent.
    let m = not_found(ack(&mut h, "t1", 99));
    assert_eq!(
        m,
        format!(
            "task t1 has no status update with uuid {} to acknowledge",
            "63".repeat(16)
        )
    );
    // No update at all yet (still STAGING), or no such task.
    not_found(ack(&mut h, "t2", 3));
    not_found(ack(&mut h, "ghost", 3));

    // The latest update: relayed.
    assert_eq!(relayed(&ack(&mut h, "t1", 3).unwrap()), [uuid(3)]);
    // The agent moves on to the next update; a repeat of the first acknowledgement (the
    // framework got that update twice) is still fine, and relayed for the agent to ignore.
    h.apply(Command::StatusUpdates {
        updates: vec![status("t1", TaskState::TaskRunning, 4)],
        now_ms: h.now,
    });
    assert_eq!(relayed(&ack(&mut h, "t1", 3).unwrap()), [uuid(3)]);
    not_found(ack(&mut h, "t1", 5));
    assert_eq!(relayed(&ack(&mut h, "t1", 4).unwrap()), [uuid(4)]);

    // A terminal update is acknowledged after the task left the active set.
    h.apply(Command::StatusUpdates {
        updates: vec![status("t1", TaskState::TaskFinished, 6)],
        now_ms: h.now,
    });
    assert!(!h.reg.tasks.keys().any(|k| k.task_id.as_str() == "t1"));
    assert_eq!(relayed(&ack(&mut h, "t1", 6).unwrap()), [uuid(6)]);
    not_found(ack(&mut h, "t1", 7));

    // A new leader remembers no acknowledgements, only the registry's latest uuid.
    h.leader.recent_acks = Default::default();
    not_found(ack(&mut h, "t1", 3));
    assert_eq!(relayed(&ack(&mut h, "t1", 6).unwrap()), [uuid(6)]);
}

#[test]
fn errors_quote_huge_caller_ids_bounded() {
    let (mut h, fw, _) = one_task(false);
    let huge = "x".repeat(1 << 20);
    let call = pb::DeclineCall {
        header: h.header(&fw),
        offer_ids: vec![drover_proto::OfferId::new(huge.as_str())],
        filters: None,
    };
    let err = h.leader.decline(&h.reg, h.now, call).unwrap_err();
    let MasterError::NotFound(m) = &err else {
        panic!("expected NOT_FOUND, got {err:?}");
    };
    assert!(m.len() < 1024, "{} bytes", m.len());
    assert!(m.contains(&format!("… ({} bytes)", 1 << 20)), "{m}");

    let mut header = h.header(&fw).unwrap();
    header.framework_id = Some(FrameworkId::new(huge.as_str()));
    let err = h
        .leader
        .decline(
            &h.reg,
            h.now,
            pb::DeclineCall {
                header: Some(header),
                offer_ids: vec![],
                filters: None,
            },
        )
        .unwrap_err();
    assert!(
        matches!(&err, MasterError::NotFound(m) if m.len() < 1024),
        "{err:?}"
    );
}
