//! Task groups at the agent (RunTaskGroup from the fake master): refused whole when one
//! task is invalid, launched all or nothing, sharing their volume under the process
//! containerizer too.

use std::collections::HashMap;

use super::*;

fn group_task(id: &str, script: &str, hostname: &str) -> pb::TaskInfo {
    pb::TaskInfo {
        name: id.into(),
        task_id: Some(TaskId::new(id)),
        resources: drover_proto::Resources::parse("cpus:0.1;mem:32")
            .unwrap()
            .to_proto(),
        command: Some(pb::CommandInfo {
            value: script.into(),
            shell: true,
            ..Default::default()
        }),
        container: (!hostname.is_empty()).then(|| pb::ContainerInfo {
            r#type: pb::container_info::Type::Linux as i32,
            hostname: hostname.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn run_group(executor: &str, tasks: Vec<pb::TaskInfo>) -> Msg {
    Msg::RunTaskGroup(pb::master_message::RunTaskGroup {
        framework_id: Some(FrameworkId::new("fw")),
        framework_info: None,
        executor: Some(pb::ExecutorInfo {
            executor_id: Some(drover_proto::ExecutorId::new(executor)),
            r#type: pb::executor_info::Type::Default as i32,
            ..Default::default()
        }),
        task_group: Some(pb::TaskGroupInfo { tasks }),
    })
}

/// Acknowledged updates until each named task has a terminal one.
async fn terminal(master: &mut Master, tasks: &[&str]) -> HashMap<String, pb::TaskStatus> {
    let mut ended = HashMap::new();
    while ended.len() < tasks.len() {
        let st = master.acked_update().await;
        if drover_proto::states::is_terminal(state_of(&st)) {
            ended.insert(task_of(&st), st);
        }
    }
    ended
}

/// Unmounts whatever namespace holder a test (a failing one too) leaves in its work dir.
struct HolderSweep(std::path::PathBuf);

impl Drop for HolderSweep {
    fn drop(&mut self) {
        crate::containerizer::linux::holder::destroy_all_below(&self.0.join("executors"));
    }
}

fn root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// An agent with the linux containerizer only, in a fresh folder, registered with a fresh
/// fake master; `None` (the test is skipped) when not running as root.
async fn linux_agent() -> Option<(tempfile::TempDir, HolderSweep, Master, Running)> {
    if !root() {
        eprintln!("skipping: linux containers need root");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let sweep = HolderSweep(dir.path().to_path_buf());
    let mut master = Master::start().await;
    let agent = start_agent(
        &master.addr,
        dir.path(),
        &[
            "--containerizers",
            "linux",
            "--docker-socket",
            "/nonexistent/docker.sock",
        ],
    )
    .await;
    master.register().await;
    Some((dir, sweep, master, agent))
}

/// The update of a task failed because `culprit`, of its group, could not launch.
fn assert_failed_because_of(st: &pb::TaskStatus, culprit: &str) {
    assert_eq!(state_of(st), TaskState::TaskFailed, "{st:?}");
    assert_eq!(st.reason, Reason::ContainerLaunchFailed as i32, "{st:?}");
    let why = format!("task {culprit} of its task group failed to launch");
    assert!(st.message.contains(&why), "{st:?}");
}

/// Polls (bounded) until the group's namespace holder is gone; true if it went.
async fn holder_gone(dir: &std::path::Path, executor: &str) -> bool {
    let ns = dir.join("executors/fw").join(executor).join("ns");
    for _ in 0..500 {
        if !ns.exists() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_task_refuses_the_group_and_nothing_runs() {
    let dir = tempfile::tempdir().unwrap();
    let _sweep = HolderSweep(dir.path().to_path_buf());
    let mut master = Master::start().await;
    let agent = start_agent(&master.addr, dir.path(), &["--containerizers", "process"]).await;
    master.register().await;
    master.send(
        2,
        run_group(
            "g",
            vec![
                group_task("ok", "echo ran > ran", ""),
                group_task("no-command", "  ", ""),
            ],
        ),
    );
    let ended = terminal(&mut master, &["ok", "no-command"]).await;
    for st in ended.values() {
        assert_eq!(state_of(st), TaskState::TaskError, "{st:?}");
        assert_eq!(st.reason, Reason::TaskGroupInvalid as i32);
        assert_eq!(st.executor_id.as_ref().unwrap().as_str(), "g");
    }
    assert!(
        ended["ok"].message.contains("task no-command"),
        "{:?}",
        ended["ok"]
    );
    assert!(!dir.path().join("sandboxes/fw/ok").exists());
    assert!(!dir.path().join("executors/fw/g").exists());

    // An executor id that is no valid id (it would name a directory) refuses the group.
    master.send(
        2,
        run_group("../escape", vec![group_task("lone", "true", "")]),
    );
    let ended = terminal(&mut master, &["lone"]).await;
    assert_eq!(state_of(&ended["lone"]), TaskState::TaskError);
    assert_eq!(ended["lone"].reason, Reason::TaskGroupInvalid as i32);
    assert!(
        ended["lone"].message.contains("executor id"),
        "{:?}",
        ended["lone"]
    );
    assert!(!dir.path().join("executors").exists());
    assert!(!dir.path().join("escape").exists());
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_tasks_of_a_group_share_the_volume_through_a_link() {
    let dir = tempfile::tempdir().unwrap();
    let _sweep = HolderSweep(dir.path().to_path_buf());
    let mut master = Master::start().await;
    let agent = start_agent(&master.addr, dir.path(), &["--containerizers", "process"]).await;
    master.register().await;
    master.send(
        2,
        run_group(
            "g",
            vec![
                // The writer runs as another user than the reader (root): the volume is
                // writable by every task of the group.
                pb::TaskInfo {
                    command: Some(pb::CommandInfo {
                        value: "echo shared-data > shared/f.tmp && mv shared/f.tmp shared/f"
                            .into(),
                        shell: true,
                        user: "nobody".into(),
                        ..Default::default()
                    }),
                    ..group_task("w", "", "")
                },
                group_task(
                    "r",
                    "for i in $(seq 1 1200); do [ -f shared/f ] && break; sleep 0.1; done; cat shared/f",
                    "",
                ),
            ],
        ),
    );
    let ended = terminal(&mut master, &["w", "r"]).await;
    for st in ended.values() {
        assert_eq!(state_of(st), TaskState::TaskFinished, "{st:?}");
    }
    let out = std::fs::read_to_string(dir.path().join("sandboxes/fw/r/stdout")).unwrap();
    assert_eq!(out, "shared-data\n");
    assert!(dir.path().join("sandboxes/fw/w/shared").is_symlink());
    // The volume lives as long as its group: once both ended, the executor's folder goes.
    let executor_dir = dir.path().join("executors/fw/g");
    let mut gone = false;
    for _ in 0..500 {
        if !executor_dir.exists() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gone, "{} outlived its group", executor_dir.display());
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launch_failure_fails_the_whole_group() {
    let Some((dir, _sweep, mut master, agent)) = linux_agent().await else {
        return;
    };
    // The second task's hostname is refused when its container is set up, after the
    // group was accepted: the first task's container is started, then killed.
    master.send(
        2,
        run_group(
            "g",
            vec![
                group_task("good", "exec sleep 600", "good"),
                group_task("bad", "true", "not_a_hostname!"),
            ],
        ),
    );
    let ended = terminal(&mut master, &["good", "bad"]).await;
    assert_eq!(state_of(&ended["bad"]), TaskState::TaskFailed);
    assert_eq!(ended["bad"].reason, Reason::ContainerLaunchFailed as i32);
    assert!(
        ended["bad"].message.contains("hostname"),
        "{:?}",
        ended["bad"]
    );
    assert_failed_because_of(&ended["good"], "bad");
    // Nothing of the group is left.
    assert!(holder_gone(dir.path(), "g").await);
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_sent_later_join_a_running_group_and_a_failed_launch_ends_it_whole() {
    let Some((dir, _sweep, mut master, agent)) = linux_agent().await else {
        return;
    };
    master.send(
        2,
        run_group(
            "g",
            vec![group_task(
                "first",
                "readlink /proc/self/ns/ipc > shared/first-ipc; exec sleep 600",
                "first",
            )],
        ),
    );
    // STARTING, RUNNING.
    for _ in 0..2 {
        let st = master.acked_update().await;
        assert!(!drover_proto::states::is_terminal(state_of(&st)), "{st:?}");
    }
    // A second RunTaskGroup for the same executor joins the running group.
    master.send(
        2,
        run_group(
            "g",
            vec![group_task(
                "joiner",
                "for i in $(seq 1 1200); do [ -s shared/first-ipc ] && break; sleep 0.1; done; \
                 [ \"$(readlink /proc/self/ns/ipc)\" = \"$(cat shared/first-ipc)\" ] && echo same",
                "joiner",
            )],
        ),
    );
    let ended = terminal(&mut master, &["joiner"]).await;
    assert_eq!(
        state_of(&ended["joiner"]),
        TaskState::TaskFinished,
        "{:?}",
        ended["joiner"]
    );
    let out = std::fs::read_to_string(dir.path().join("sandboxes/fw/joiner/stdout")).unwrap();
    assert_eq!(out, "same\n");

    // A later task that cannot launch ends the group: the running task fails too.
    master.send(
        2,
        run_group("g", vec![group_task("late", "true", "bad_hostname!")]),
    );
    let ended = terminal(&mut master, &["late", "first"]).await;
    assert_eq!(state_of(&ended["late"]), TaskState::TaskFailed);
    assert_failed_because_of(&ended["first"], "late");
    assert!(holder_gone(dir.path(), "g").await);
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_tasks_cannot_join_a_group_network() {
    let dir = tempfile::tempdir().unwrap();
    let _sweep = HolderSweep(dir.path().to_path_buf());
    let mut master = Master::start().await;
    let agent = start_agent(&master.addr, dir.path(), &["--containerizers", "process"]).await;
    master.register().await;
    let Msg::RunTaskGroup(mut group) = run_group(
        "g",
        vec![group_task("a", "true", ""), group_task("b", "true", "")],
    ) else {
        unreachable!()
    };
    group.executor.as_mut().unwrap().container = Some(pb::ContainerInfo {
        network: pb::container_info::Network::Isolated as i32,
        ..Default::default()
    });
    master.send(2, Msg::RunTaskGroup(group));
    let ended = terminal(&mut master, &["a", "b"]).await;
    // As root the holder exists and each launch says why; otherwise the agent refuses
    // the group before anything is made.
    for st in ended.values() {
        if root() {
            assert_eq!(state_of(st), TaskState::TaskFailed, "{st:?}");
            assert!(
                st.message.contains("process containerizer cannot join"),
                "{st:?}"
            );
        } else {
            assert_eq!(state_of(st), TaskState::TaskError, "{st:?}");
            assert_eq!(st.reason, Reason::TaskGroupInvalid as i32);
        }
    }
    assert!(root() || !dir.path().join("sandboxes/fw/a").exists());
    assert!(holder_gone(dir.path(), "g").await);
    agent.stop().await.unwrap();
}
