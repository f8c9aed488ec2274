//! The process containerizer with real supervisors (the test binary re-executed).

use super::*;
use crate::fsutil::create_dir_all_durable;
use crate::supervisor::records::ExitOutcome;
use crate::{terminal_status, TerminalStatus};
use drover_proto::pb::TaskState;
use drover_proto::AgentId;

struct Fixture {
    _dir: tempfile::TempDir,
    layout: Layout,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::new(dir.path());
    Fixture { _dir: dir, layout }
}

fn containerizer(f: &Fixture) -> ProcessContainerizer {
    ProcessContainerizer::new(
        f.layout.clone(),
        PathBuf::from("/proc/self/exe"),
        Duration::from_secs(5),
    )
}

fn spec(f: &Fixture, task: &str, script: &str) -> LaunchSpec {
    let key = TaskKey::new("fw", task);
    let meta = f.layout.task_meta(&key);
    let sandbox = f.layout.sandbox(&key);
    create_dir_all_durable(meta.dir()).unwrap();
    create_dir_all_durable(&sandbox).unwrap();
    LaunchSpec {
        key: key.clone(),
        task: pb::TaskInfo {
            name: task.into(),
            task_id: Some(key.task_id.clone()),
            resources: Resources::parse("cpus:0.1;ports:[31000-31001]")
                .unwrap()
                .to_proto(),
            command: Some(pb::CommandInfo {
                value: script.into(),
                shell: true,
                ..Default::default()
            }),
            ..Default::default()
        },
        agent_id: AgentId::new("agent-1"),
        sandbox,
        meta,
        group: None,
    }
}

fn stdout(f: &Fixture, task: &str) -> String {
    std::fs::read_to_string(f.layout.sandbox(&TaskKey::new("fw", task)).join("stdout"))
        .unwrap_or_default()
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn runs_a_shell_command_with_the_task_environment() {
    let f = fixture();
    let c = containerizer(&f);
    let s = spec(
        &f,
        "t1",
        "echo $DROVER_TASK_ID $DROVER_FRAMEWORK_ID $DROVER_AGENT_ID $DROVER_PORTS $PORT0 $PORT1; exit 3",
    );
    let key = s.key.clone();
    c.launch(s).await.unwrap();
    let t = c.wait(&key).await.unwrap();
    let st = terminal_status(&t);
    assert_eq!(
        st,
        TerminalStatus {
            state: TaskState::TaskFailed,
            reason: Reason::Unspecified,
            source: pb::task_status::Source::Executor,
            message: "command exited with status 3".into(),
            exit_code: Some(3),
        }
    );
    assert_eq!(stdout(&f, "t1"), "t1 fw agent-1 31000,31001 31000 31001\n");
}

#[tokio::test]
async fn runs_a_program_without_a_shell() {
    let f = fixture();
    let c = containerizer(&f);
    let mut s = spec(&f, "t2", "");
    s.task.command = Some(pb::CommandInfo {
        value: "/bin/echo".into(),
        shell: false,
        arguments: vec!["echo".into(), "a b".into(), "$HOME".into()],
        ..Default::default()
    });
    let key = s.key.clone();
    c.launch(s).await.unwrap();
    let st = terminal_status(&c.wait(&key).await.unwrap());
    assert_eq!((st.state, st.exit_code), (TaskState::TaskFinished, Some(0)));
    // No shell: the arguments arrive untouched.
    assert_eq!(stdout(&f, "t2"), "a b $HOME\n");
}

#[tokio::test]
async fn a_kill_reports_killed_with_its_reason() {
    let f = fixture();
    let c = containerizer(&f);
    let s = spec(&f, "t3", "echo ready; exec sleep 60");
    let key = s.key.clone();
    c.launch(s).await.unwrap();
    eventually("the task to start", || stdout(&f, "t3") == "ready\n").await;
    c.kill(&key, Duration::from_secs(2), Reason::FrameworkRemoved)
        .await
        .unwrap();
    let st = terminal_status(&c.wait(&key).await.unwrap());
    assert_eq!(
        (st.state, st.reason),
        (TaskState::TaskKilled, Reason::FrameworkRemoved)
    );
}

#[tokio::test]
async fn a_new_containerizer_reattaches_to_a_running_supervisor() {
    let f = fixture();
    let s = spec(&f, "t4", "echo ready; sleep 0.3; exit 4");
    let key = s.key.clone();
    {
        // The "old agent": launches, then forgets everything.
        let old = containerizer(&f);
        old.launch(s).await.unwrap();
        eventually("the task to start", || stdout(&f, "t4") == "ready\n").await;
    }
    let new = containerizer(&f);
    let recovered = new.recover(&key).await.unwrap();
    // The task may have finished already on a slow machine; both are correct here.
    assert!(
        matches!(recovered, Recovered::Running | Recovered::Ended),
        "{recovered:?}"
    );
    let st = terminal_status(&new.wait(&key).await.unwrap());
    assert_eq!((st.state, st.exit_code), (TaskState::TaskFailed, Some(4)));
}

#[tokio::test]
async fn recovers_a_finished_task_from_its_exit_record() {
    let f = fixture();
    let key = TaskKey::new("fw", "t5");
    let meta = f.layout.task_meta(&key);
    create_dir_all_durable(meta.dir()).unwrap();
    let me = procfs::own_identity().unwrap();
    let gone = ProcessIdentity {
        pid: me.pid,
        start_time: me.start_time + 1,
    };
    write_json_atomic(
        &meta.supervisor_file(),
        &SupervisorClaim::Started {
            supervisor: gone,
            task_pid: Some(12345),
        },
    )
    .unwrap();
    write_json_atomic(
        &meta.exit_file(),
        &ExitRecord {
            outcome: ExitOutcome::Exited { code: 7 },
            killed: false,
            kill_reason: None,
            task_pid: Some(12345),
            finished_at: 1.0,
            limitation: None,
        },
    )
    .unwrap();
    let c = containerizer(&f);
    assert_eq!(c.recover(&key).await.unwrap(), Recovered::Ended);
    let st = terminal_status(&c.wait(&key).await.unwrap());
    assert_eq!((st.state, st.exit_code), (TaskState::TaskFailed, Some(7)));
    assert_eq!(st.message, "command exited with status 7");
}

#[tokio::test]
async fn a_vanished_supervisor_is_reported_as_such() {
    let f = fixture();
    let key = TaskKey::new("fw", "t6");
    let meta = f.layout.task_meta(&key);
    create_dir_all_durable(meta.dir()).unwrap();
    let me = procfs::own_identity().unwrap();
    let gone = ProcessIdentity {
        pid: me.pid,
        start_time: me.start_time + 1,
    };
    write_json_atomic(
        &meta.supervisor_file(),
        &SupervisorClaim::Started {
            supervisor: gone,
            task_pid: None,
        },
    )
    .unwrap();
    let c = containerizer(&f);
    assert_eq!(c.recover(&key).await.unwrap(), Recovered::Ended);
    let st = terminal_status(&c.wait(&key).await.unwrap());
    assert_eq!(
        (st.state, st.reason),
        (TaskState::TaskFailed, Reason::ExecutorTerminated)
    );
}

#[tokio::test]
async fn a_task_without_a_supervisor_claim_is_abandoned_for_good() {
    let f = fixture();
    let s = spec(&f, "t7", "echo ran > marker");
    let key = s.key.clone();
    let c = containerizer(&f);
    assert_eq!(c.recover(&key).await.unwrap(), Recovered::NeverStarted);
    assert_eq!(c.recover(&key).await.unwrap(), Recovered::NeverStarted);
    // A supervisor that starts late defers to the abandonment and runs nothing.
    let late = containerizer(&f);
    late.launch(s.clone()).await.unwrap();
    let t = late.wait(&key).await.unwrap();
    assert!(matches!(t, Termination::Vanished { .. }), "{t:?}");
    assert!(!s.sandbox.join("marker").exists());
}

#[test]
fn command_lines() {
    let shell = pb::CommandInfo {
        value: "echo hi".into(),
        shell: true,
        ..Default::default()
    };
    assert_eq!(
        command_line(&shell).unwrap(),
        (
            "/bin/sh".into(),
            vec!["sh".into(), "-c".into(), "echo hi".into()]
        )
    );
    let plain = pb::CommandInfo {
        value: "/bin/true".into(),
        ..Default::default()
    };
    assert_eq!(
        command_line(&plain).unwrap(),
        ("/bin/true".into(), vec!["/bin/true".into()])
    );
    assert!(command_line(&pb::CommandInfo::default()).is_err());
}

#[tokio::test]
async fn runs_as_another_user_when_the_agent_is_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return; // Switching users needs root; covered where tests run as root.
    }
    let Some((uid, _, _)) = lookup_user("nobody").unwrap() else {
        return;
    };
    let f = fixture();
    let c = containerizer(&f);
    let mut s = spec(&f, "t8", "id -u; echo $USER; echo x > own && echo wrote");
    s.task.command.as_mut().unwrap().user = "nobody".into();
    let key = s.key.clone();
    c.launch(s).await.unwrap();
    let st = terminal_status(&c.wait(&key).await.unwrap());
    assert_eq!(st.state, TaskState::TaskFinished, "{st:?}");
    assert_eq!(stdout(&f, "t8"), format!("{uid}\nnobody\nwrote\n"));
}

#[tokio::test]
async fn refuses_an_unknown_user() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return; // A non-root agent runs every task as itself, whatever it names.
    }
    let f = fixture();
    let c = containerizer(&f);
    let mut s = spec(&f, "t9", "true");
    s.task.command.as_mut().unwrap().user = "no-such-user-drover".into();
    let err = c.launch(s).await.unwrap_err();
    assert!(matches!(err, ContainerizerError::UnknownUser(_)), "{err:?}");
    assert!(err.to_string().contains("no such user"), "{err}");
}
