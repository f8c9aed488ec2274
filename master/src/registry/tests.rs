use super::*;
use drover_proto::pb::{framework_info::Capability, TaskState};
use drover_proto::Resources;

fn agent_info(res: &str) -> pb::AgentInfo {
    pb::AgentInfo {
        hostname: "h".into(),
        address: "127.0.0.1:5051".into(),
        resources: Resources::parse(res).unwrap().to_proto(),
        attributes: vec![],
    }
}

fn task(id: &str, res: &str) -> pb::TaskInfo {
    pb::TaskInfo {
        task_id: Some(TaskId::new(id)),
        resources: Resources::parse(res).unwrap().to_proto(),
        command: Some(pb::CommandInfo {
            value: "true".into(),
            shell: true,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn status(id: &str, state: TaskState, uuid: u8) -> pb::TaskStatus {
    pb::TaskStatus {
        task_id: Some(TaskId::new(id)),
        state: state as i32,
        uuid: vec![uuid; 16],
        ..Default::default()
    }
}

fn setup(aware: bool) -> Registry {
    let mut r = Registry::default();
    let mut info = pb::FrameworkInfo {
        name: "fw".into(),
        ..Default::default()
    };
    if aware {
        info.capabilities.push(Capability::PartitionAware as i32);
    }
    r.apply(&Command::AddFramework {
        framework_id: "f".into(),
        info,
        now_ms: 1,
    });
    r.apply(&Command::RegisterAgent {
        agent_id: "a".into(),
        info: agent_info("cpus:4;mem:1024"),
        now_ms: 1,
    });
    r.apply(&Command::LaunchTasks {
        framework_id: "f".into(),
        agent_id: "a".into(),
        tasks: vec![task("t1", "cpus:1;mem:100"), task("t2", "cpus:1;mem:100")],
        term: 1,
        now_ms: 2,
    });
    r
}

fn update(id: &str, state: TaskState, uuid: u8) -> Command {
    Command::StatusUpdates {
        updates: vec![StatusUpdate {
            agent_id: "a".into(),
            framework_id: "f".into(),
            status: status(id, state, uuid),
        }],
        now_ms: 3,
    }
}

#[test]
fn launch_is_idempotent_and_accounts_resources() {
    let mut r = setup(false);
    assert_eq!(r.agents[&AgentId::new("a")].used.cpus(), 2.0);
    let again = r.apply(&Command::LaunchTasks {
        framework_id: "f".into(),
        agent_id: "a".into(),
        tasks: vec![task("t1", "cpus:1")],
        term: 2,
        now_ms: 4,
    });
    assert_eq!(again, ApplyOutcome::Launched { new: vec![] });
    assert_eq!(r.agents[&AgentId::new("a")].used.cpus(), 2.0);
}

#[test]
fn terminal_update_frees_resources_and_duplicates_are_detected() {
    let mut r = setup(false);
    assert_eq!(
        r.apply(&update("t1", TaskState::TaskRunning, 1)),
        ApplyOutcome::Updates(vec![UpdateOutcome::Applied])
    );
    assert_eq!(
        r.apply(&update("t1", TaskState::TaskRunning, 1)),
        ApplyOutcome::Updates(vec![UpdateOutcome::Duplicate])
    );
    assert_eq!(
        r.apply(&update("t1", TaskState::TaskFinished, 2)),
        ApplyOutcome::Updates(vec![UpdateOutcome::Applied])
    );
    assert_eq!(
        r.apply(&update("t1", TaskState::TaskFinished, 2)),
        ApplyOutcome::Updates(vec![UpdateOutcome::Duplicate])
    );
    assert_eq!(
        r.apply(&update("nope", TaskState::TaskFinished, 3)),
        ApplyOutcome::Updates(vec![UpdateOutcome::Forgotten])
    );
    assert_eq!(r.agents[&AgentId::new("a")].used.cpus(), 1.0);
    assert_eq!(
        r.task_state(&TaskKey::new("f", "t1")),
        Some(TaskState::TaskFinished)
    );
    // A finished task id cannot be launched again.
    r.apply(&Command::LaunchTasks {
        framework_id: "f".into(),
        agent_id: "a".into(),
        tasks: vec![task("t1", "cpus:1")],
        term: 1,
        now_ms: 5,
    });
    assert!(!r.tasks.contains_key(&TaskKey::new("f", "t1")));
}

#[test]
fn unreachable_agent_loses_tasks_of_unaware_frameworks_then_kills_them_on_return() {
    let mut r = setup(false);
    r.apply(&update("t1", TaskState::TaskRunning, 1));
    let out = r.apply(&Command::AgentUnreachable {
        agent_id: "a".into(),
        now_ms: 10,
    });
    let ApplyOutcome::Generated(updates) = out else {
        panic!()
    };
    assert_eq!(updates.len(), 2);
    assert!(updates
        .iter()
        .all(|(_, s)| s.state == TaskState::TaskLost as i32));
    assert!(r.tasks.is_empty());
    // The agent returns still running t1: it must be killed, never run twice.
    let out = r.apply(&Command::ReregisterAgent {
        agent_id: "a".into(),
        info: agent_info("cpus:4;mem:1024"),
        tasks: vec![ReportedTask {
            framework_id: "f".into(),
            task_id: "t1".into(),
            state: TaskState::TaskRunning as i32,
        }],
        now_ms: 20,
    });
    let ApplyOutcome::Reregistered(o) = out else {
        panic!()
    };
    assert_eq!(o.kill, vec![(FrameworkId::new("f"), TaskId::new("t1"))]);
    assert_eq!(r.agents[&AgentId::new("a")].state, AgentState::Active);
}

#[test]
fn partition_aware_tasks_resume() {
    let mut r = setup(true);
    r.apply(&update("t1", TaskState::TaskRunning, 1));
    r.apply(&Command::AgentUnreachable {
        agent_id: "a".into(),
        now_ms: 10,
    });
    assert_eq!(r.tasks.len(), 2);
    assert!(r
        .tasks
        .values()
        .all(|t| t.state() == TaskState::TaskUnreachable));
    let out = r.apply(&Command::ReregisterAgent {
        agent_id: "a".into(),
        info: agent_info("cpus:4;mem:1024"),
        tasks: vec![ReportedTask {
            framework_id: "f".into(),
            task_id: "t1".into(),
            state: TaskState::TaskRunning as i32,
        }],
        now_ms: 20,
    });
    let ApplyOutcome::Reregistered(o) = out else {
        panic!()
    };
    assert!(o.kill.is_empty());
    // t1 resumes RUNNING; t2 (unknown to the agent, not STAGING anymore) is reported LOST.
    assert_eq!(
        r.task_state(&TaskKey::new("f", "t1")),
        Some(TaskState::TaskRunning)
    );
    assert_eq!(
        r.task_state(&TaskKey::new("f", "t2")),
        Some(TaskState::TaskLost)
    );
    assert_eq!(o.updates.len(), 2);
}

#[test]
fn staging_tasks_unknown_to_a_returning_agent_are_resent() {
    let mut r = setup(false);
    let out = r.apply(&Command::ReregisterAgent {
        agent_id: "a".into(),
        info: agent_info("cpus:4;mem:1024"),
        tasks: vec![],
        now_ms: 5,
    });
    let ApplyOutcome::Reregistered(o) = out else {
        panic!()
    };
    assert_eq!(o.resend.len(), 2);
    assert!(o.kill.is_empty() && o.updates.is_empty());
}

#[test]
fn removing_a_framework_kills_its_tasks() {
    let mut r = setup(false);
    let out = r.apply(&Command::RemoveFramework {
        framework_id: "f".into(),
        reason: "teardown".into(),
        now_ms: 9,
    });
    let ApplyOutcome::FrameworkRemoved { agents, updates } = out else {
        panic!()
    };
    assert_eq!(agents, vec![AgentId::new("a")]);
    assert_eq!(updates.len(), 2);
    assert!(r.tasks.is_empty() && r.frameworks.is_empty());
    assert!(r.agents[&AgentId::new("a")].used.is_empty());
}

#[test]
fn snapshot_round_trip_and_replay_are_deterministic() {
    let cmds = vec![
        update("t1", TaskState::TaskRunning, 1),
        update("t2", TaskState::TaskFailed, 2),
        Command::SetWeights {
            weights: vec![("x".into(), 3.0)],
        },
        Command::FrameworkDisconnected {
            framework_id: "f".into(),
            now_ms: 7,
        },
    ];
    let mut a = setup(false);
    let mut b = setup(false);
    for c in &cmds {
        // Through the log encoding, as replicas see them.
        a.apply(&decode(&encode(c)).unwrap());
        b.apply(c);
    }
    assert_eq!(a, b);
    let restored = Registry::from_snapshot(&a.to_snapshot()).unwrap();
    assert_eq!(restored, a);
    assert!(matches!(
        decode(br#"{"type":"SomethingNew"}"#),
        Err(MasterError::Incompatible(_))
    ));
    assert!(matches!(
        Registry::from_snapshot(b"{not json"),
        Err(MasterError::Corrupt(_))
    ));
}

#[test]
fn killing_is_not_terminal_and_the_latest_health_is_kept() {
    let mut r = setup(false);
    let key = TaskKey::new("f", "t1");
    let mut unhealthy = status("t1", TaskState::TaskRunning, 1);
    unhealthy.healthy = Some(false);
    r.apply(&Command::StatusUpdates {
        updates: vec![StatusUpdate {
            agent_id: "a".into(),
            framework_id: "f".into(),
            status: unhealthy,
        }],
        now_ms: 3,
    });
    assert_eq!(
        r.tasks[&key].last_status.as_ref().unwrap().healthy,
        Some(false)
    );
    assert_eq!(
        r.apply(&update("t1", TaskState::TaskKilling, 2)),
        ApplyOutcome::Updates(vec![UpdateOutcome::Applied])
    );
    // Still active, still holding its resources.
    assert_eq!(r.task_state(&key), Some(TaskState::TaskKilling));
    assert!(r.tasks.contains_key(&key));
    assert_eq!(r.agents[&AgentId::new("a")].used.cpus(), 2.0);
    r.apply(&update("t1", TaskState::TaskKilled, 3));
    assert!(!r.tasks.contains_key(&key));
    assert_eq!(r.agents[&AgentId::new("a")].used.cpus(), 1.0);
}

#[test]
fn snapshots_carry_the_version_cluster_id_and_marker() {
    let mut r = setup(false);
    assert_eq!(
        r.version,
        version::BASE_VERSION,
        "a new registry starts at 1"
    );
    r.apply(&Command::SetRegistryVersion { version: 2 });
    let id = ClusterId::random();
    r.apply(&Command::AssignClusterId {
        cluster_id: id.clone(),
    });
    // Only the first assignment counts; a version never goes down.
    r.apply(&Command::AssignClusterId {
        cluster_id: ClusterId::random(),
    });
    r.apply(&Command::SetRegistryVersion { version: 1 });
    r.apply(&Command::RecordTestMarker {
        marker: "m1".into(),
    });
    assert_eq!(r.version, 2);
    assert_eq!(r.cluster_id, Some(id.clone()));

    let back = Registry::from_snapshot(&r.to_snapshot()).unwrap();
    assert_eq!(back, r);
    assert_eq!(back.version, 2);
    assert_eq!(back.cluster_id, Some(id));
    assert_eq!(back.test_marker.as_deref(), Some("m1"));

    // A master capped below the snapshot's version refuses it (as an older binary would).
    let err = Registry::from_snapshot_up_to(&r.to_snapshot(), 1).unwrap_err();
    assert!(matches!(err, MasterError::Incompatible(_)), "{err:?}");
    let err = err.to_string();
    assert!(err.contains("at version 2"), "{err}");
    assert!(err.contains("versions 1 to 1"), "{err}");
}

#[test]
fn a_snapshot_of_a_newer_version_is_refused() {
    let mut r = setup(false);
    r.version = version::REGISTRY_VERSION + 1;
    let err = Registry::from_snapshot(&r.to_snapshot())
        .unwrap_err()
        .to_string();
    assert!(err.contains("newer release"), "{err}");
    r.version = 0;
    assert!(Registry::from_snapshot(&r.to_snapshot()).is_err());
}

#[test]
fn version_one_snapshots_read_and_write_as_the_first_release_did() {
    // What the first release (before versions) wrote for a registry with a weight.
    let old = br#"{"version":1,"agents":[],"frameworks":[],"tasks":[],"completed":[],"weights":{"analytics":3.0},"masters":{"1":"127.0.0.1:5050"}}"#;
    let r = Registry::from_snapshot(old).unwrap();
    assert_eq!(r.version, 1);
    assert_eq!(r.cluster_id, None);
    assert_eq!(r.weight("analytics"), 3.0);
    // Written back at version 1, it holds nothing that release does not know.
    assert_eq!(r.to_snapshot(), old.to_vec());
}
