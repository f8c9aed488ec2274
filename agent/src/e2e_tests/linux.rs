//! The agent with its default containerizers (linux first, as root) against the fake
//! master: what a framework and an operator see of linux containers.

use super::*;

fn linux_task(id: &str, resources: &str, script: &str, kind: pb::container_info::Type) -> Msg {
    Msg::RunTask(pb::master_message::RunTask {
        framework_id: Some(FrameworkId::new("fw")),
        framework_info: None,
        task: Some(pb::TaskInfo {
            name: id.into(),
            task_id: Some(TaskId::new(id)),
            resources: drover_proto::Resources::parse(resources)
                .unwrap()
                .to_proto(),
            command: Some(pb::CommandInfo {
                value: script.into(),
                shell: true,
                ..Default::default()
            }),
            container: Some(pb::ContainerInfo {
                r#type: kind as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
    })
}

use crate::containerizer::linux::cgroups::{work_dir_tag, Hierarchies};

/// The agent's cgroup root, relative to each hierarchy.
fn agent_cgroups(work_dir: &std::path::Path) -> std::path::PathBuf {
    let canonical = std::fs::canonicalize(work_dir).unwrap();
    std::path::Path::new("drover").join(work_dir_tag(&canonical))
}

/// Kills whatever a failing test left in the agent's cgroups.
struct Sweep(std::path::PathBuf);

impl Drop for Sweep {
    fn drop(&mut self) {
        if let Ok(h) = Hierarchies::detect() {
            h.destroy_all_below(&self.0);
        }
    }
}

/// The agent's cgroup directories in the memory hierarchy that are left (there should
/// be none once its containers ended).
fn leftover_cgroups(work_dir: &std::path::Path) -> Vec<String> {
    let h = Hierarchies::detect().unwrap();
    let dir = h.v1_mount("memory").unwrap().join(agent_cgroups(work_dir));
    match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linux_tasks_report_oom_usage_and_unavailable_containerizers() {
    use pb::container_info::Type;
    let dir = tempfile::tempdir().unwrap();
    let mut master = Master::start().await;
    // Default containerizers; no Docker engine at that socket, so docker stays off.
    let agent = start_agent(
        &master.addr,
        dir.path(),
        &["--docker-socket", "/nonexistent/docker.sock"],
    )
    .await;
    let _sweep = Sweep(agent_cgroups(dir.path()));
    master.register().await;

    // Past its memory limit: OOM-killed, and said so.
    master.send(
        2,
        linux_task(
            "hog",
            "cpus:0.5;mem:32",
            "head -c 200M /dev/zero | tail",
            Type::Unspecified,
        ),
    );
    let mut states = Vec::new();
    while states.len() < 3 {
        states.push(master.acked_update().await);
    }
    assert_eq!(state_of(&states[1]), TaskState::TaskRunning);
    let failed = &states[2];
    assert_eq!(state_of(failed), TaskState::TaskFailed);
    assert_eq!(failed.reason, Reason::ContainerLimitationMemory as i32);
    assert!(
        failed.message.contains("memory limit"),
        "{}",
        failed.message
    );

    // A running linux task shows its usage and containerizer in GetState.
    master.send(
        2,
        linux_task(
            "idle",
            "cpus:0.25;mem:48",
            "echo up; exec sleep 1000",
            Type::Linux,
        ),
    );
    assert_eq!(
        state_of(&master.acked_update().await),
        TaskState::TaskStarting
    );
    assert_eq!(
        state_of(&master.acked_update().await),
        TaskState::TaskRunning
    );
    // RUNNING comes once the supervisor exists; its init joins the cgroups a moment later.
    let mut usage = None;
    for _ in 0..500 {
        let state = agent.state().await;
        let idle = state
            .tasks
            .iter()
            .find(|t| t.task_id == Some(TaskId::new("idle")))
            .unwrap()
            .clone();
        assert_eq!(idle.containerizer, "linux");
        let u = idle.usage.expect("usage of a running linux task");
        if u.pids_current >= 2 {
            usage = Some(u);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let usage = usage.expect("the container's init and task never showed in its cgroup");
    assert_eq!(usage.mem_limit_bytes, 48 << 20);
    assert_eq!(usage.cpus_limit, 0.25);
    assert_eq!(usage.pids_limit, 4096);
    assert!(usage.mem_rss_bytes > 0, "{usage:?}");

    // A process task next to it: no usage, its containerizer named.
    master.send(
        2,
        linux_task("plain", "cpus:0.1", "exec sleep 1000", Type::Process),
    );
    assert_eq!(
        state_of(&master.acked_update().await),
        TaskState::TaskStarting
    );
    assert_eq!(
        state_of(&master.acked_update().await),
        TaskState::TaskRunning
    );
    let state = agent.state().await;
    let plain = state
        .tasks
        .iter()
        .find(|t| t.task_id == Some(TaskId::new("plain")))
        .unwrap();
    assert_eq!(
        (plain.containerizer.as_str(), plain.usage.is_none()),
        ("process", true)
    );

    // A type this agent does not enable fails the task with the reason.
    let mut dock = linux_task("dock", "cpus:0.1", "true", Type::Docker);
    if let Msg::RunTask(rt) = &mut dock {
        if let Some(c) = rt.task.as_mut().and_then(|t| t.container.as_mut()) {
            c.docker = Some(pb::container_info::Docker {
                image: "busybox:latest".into(),
            });
        }
    }
    master.send(2, dock);
    assert_eq!(
        state_of(&master.acked_update().await),
        TaskState::TaskStarting
    );
    let refused = master.acked_update().await;
    assert_eq!(state_of(&refused), TaskState::TaskFailed);
    assert_eq!(refused.reason, Reason::ContainerLaunchFailed as i32);
    assert!(
        refused
            .message
            .contains("'docker' containerizer, which this agent does not enable"),
        "{}",
        refused.message
    );

    for t in ["idle", "plain"] {
        master.send(
            2,
            Msg::KillTask(pb::master_message::KillTask {
                framework_id: Some(FrameworkId::new("fw")),
                task_id: Some(TaskId::new(t)),
                kill_policy: None,
            }),
        );
        assert_eq!(
            state_of(&master.acked_update().await),
            TaskState::TaskKilled
        );
    }
    agent.stop().await.unwrap();
    assert!(
        leftover_cgroups(dir.path()).is_empty(),
        "{:?}",
        leftover_cgroups(dir.path())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linux_task_type_on_a_process_only_agent_fails_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = Master::start().await;
    let agent = start_agent(&master.addr, dir.path(), &["--containerizers", "process"]).await;
    master.register().await;
    master.send(
        2,
        linux_task("t", "cpus:0.1", "true", pb::container_info::Type::Linux),
    );
    assert_eq!(
        state_of(&master.acked_update().await),
        TaskState::TaskStarting
    );
    let refused = master.acked_update().await;
    assert_eq!(
        (state_of(&refused), refused.reason),
        (TaskState::TaskFailed, Reason::ContainerLaunchFailed as i32)
    );
    assert!(
        refused.message.contains("'linux' containerizer")
            && refused.message.contains("enabled: process"),
        "{}",
        refused.message
    );
    // Unspecified runs under the default, here process: no PID namespace.
    master.run_task(2, "u", "echo $$");
    assert_eq!(
        state_of(&master.acked_update().await),
        TaskState::TaskStarting
    );
    assert_eq!(
        state_of(&master.acked_update().await),
        TaskState::TaskRunning
    );
    assert_eq!(
        state_of(&master.acked_update().await),
        TaskState::TaskFinished
    );
    let out = std::fs::read_to_string(dir.path().join("sandboxes/fw/u/stdout")).unwrap();
    assert_ne!(
        out.trim(),
        "2",
        "the process containerizer ran it in a PID namespace"
    );
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linux_task_is_recovered_after_linux_is_dropped_from_the_containerizers() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = Master::start().await;
    let agent = start_agent(&master.addr, dir.path(), &["--containerizers", "linux"]).await;
    let _sweep = Sweep(agent_cgroups(dir.path()));
    master.register().await;
    master.send(
        2,
        linux_task(
            "kept",
            "cpus:0.1;mem:32",
            "exec sleep 1000",
            pb::container_info::Type::Linux,
        ),
    );
    assert_eq!(
        state_of(&master.acked_update().await),
        TaskState::TaskStarting
    );
    assert_eq!(
        state_of(&master.acked_update().await),
        TaskState::TaskRunning
    );
    agent.stop().await.unwrap();

    // The operator restarts the agent without linux: the running container is still
    // found, measured and killed, and new linux tasks are refused.
    let agent = start_agent(&master.addr, dir.path(), &["--containerizers", "process"]).await;
    let reg = master.register().await;
    assert_eq!(reg.tasks.len(), 1);
    let state = agent.state().await;
    assert_eq!(state.tasks[0].containerizer, "linux");
    assert!(state.tasks[0].usage.is_some());
    master.send(
        2,
        Msg::KillTask(pb::master_message::KillTask {
            framework_id: Some(FrameworkId::new("fw")),
            task_id: Some(TaskId::new("kept")),
            kill_policy: None,
        }),
    );
    assert_eq!(
        state_of(&master.acked_update().await),
        TaskState::TaskKilled
    );
    agent.stop().await.unwrap();
    assert!(
        leftover_cgroups(dir.path()).is_empty(),
        "{:?}",
        leftover_cgroups(dir.path())
    );
}
