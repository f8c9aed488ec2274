//! The `drover-agent` binary as operators run it: a separate process, killed with
//! SIGKILL and restarted, against `drover_testkit`'s fake master.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use drover_agent::containerizer::linux::cgroups::{work_dir_tag, Hierarchies};
use drover_agent::containerizer::linux::ContainerCheckpoint;
use drover_agent::procfs;
use drover_agent::supervisor::records::SupervisorClaim;
use drover_proto::pb::{self, master_message::Msg, TaskState};
use drover_proto::{FrameworkId, TaskId};
use drover_testkit::fake_master::{FakeMaster, FakeMasterOptions};

/// The test's side of `drover_testkit`'s fake master (term 1, agent id `agent-bin`).
struct Master {
    addr: String,
    fake: FakeMaster,
    /// Delivery is at least once (an ack may be lost with a killed agent): repeats of
    /// uuids already seen are acknowledged again and skipped.
    seen: HashSet<Vec<u8>>,
}

impl Master {
    async fn start() -> Master {
        let fake = FakeMaster::start_with(FakeMasterOptions {
            agent_id: "agent-bin".into(),
            term: 1,
            ..Default::default()
        })
        .await;
        Master {
            addr: fake.address().to_string(),
            fake,
            seen: HashSet::new(),
        }
    }

    fn send(&self, msg: Msg) {
        self.fake.send(msg);
    }

    async fn next(&mut self) -> pb::agent_message::Msg {
        self.fake.next().await
    }

    async fn register(&mut self) -> pb::agent_message::Register {
        self.fake.register().await
    }

    /// The next new update, acknowledged.
    async fn acked_update(&mut self) -> pb::TaskStatus {
        loop {
            match self.next().await {
                pb::agent_message::Msg::StatusUpdate(u) => {
                    let status = u.status.unwrap();
                    self.send(Msg::StatusAck(pb::master_message::StatusAck {
                        framework_id: u.framework_id,
                        task_id: status.task_id.clone(),
                        uuid: status.uuid.clone(),
                    }));
                    if self.seen.insert(status.uuid.clone()) {
                        return status;
                    }
                }
                other => panic!("expected a status update, got {other:?}"),
            }
        }
    }
}

/// The agent process; killed if a failing test leaves it behind.
struct AgentProcess(Child);

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_agent(master: &str, work_dir: &Path) -> AgentProcess {
    start_agent_with(master, work_dir, &[])
}

fn start_agent_with(master: &str, work_dir: &Path, extra: &[&str]) -> AgentProcess {
    let child = Command::new(env!("CARGO_BIN_EXE_drover-agent"))
        .args(extra)
        .args([
            "--master",
            master,
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--work-dir",
            work_dir.to_str().unwrap(),
            "--log-level",
            "warn",
        ])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    AgentProcess(child)
}

fn state(s: &pb::TaskStatus) -> TaskState {
    drover_proto::states::from_i32(s.state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_survive_kill_9_of_the_agent_and_are_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = Master::start().await;
    let mut agent = start_agent(&master.addr, dir.path());
    master.register().await;

    master.send(Msg::RunTask(pb::master_message::RunTask {
        framework_id: Some(FrameworkId::new("fw")),
        framework_info: None,
        task: Some(pb::TaskInfo {
            name: "t".into(),
            task_id: Some(TaskId::new("t")),
            command: Some(pb::CommandInfo {
                value: "echo started; sleep 2; exit 4".into(),
                shell: true,
                ..Default::default()
            }),
            ..Default::default()
        }),
    }));
    assert_eq!(state(&master.acked_update().await), TaskState::TaskStarting);
    assert_eq!(state(&master.acked_update().await), TaskState::TaskRunning);

    // SIGKILL: no chance to clean up anything.
    agent.0.kill().unwrap();
    agent.0.wait().unwrap();

    let claim_path = dir
        .path()
        .join("meta/frameworks/fw/tasks/t/supervisor.json");
    // RUNNING means the supervisor was spawned; it claims the task a moment later, on
    // its own (it outlives the agent).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !claim_path.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let claim: SupervisorClaim =
        serde_json::from_slice(&std::fs::read(&claim_path).unwrap()).unwrap();
    let SupervisorClaim::Started { supervisor, .. } = claim else {
        panic!("unexpected claim {claim:?}");
    };
    assert!(
        procfs::is_alive(supervisor),
        "the supervisor died with the agent"
    );

    let agent = start_agent(&master.addr, dir.path());
    let reg = master.register().await;
    assert_eq!(reg.agent_id.unwrap().value, "agent-bin");
    assert_eq!(reg.tasks.len(), 1);
    assert_eq!(
        reg.tasks[0].task.as_ref().unwrap().task_id,
        Some(TaskId::new("t"))
    );
    let failed = master.acked_update().await;
    assert_eq!(state(&failed), TaskState::TaskFailed);
    assert_eq!(failed.exit_code, Some(4));
    let out = std::fs::read_to_string(dir.path().join("sandboxes/fw/t/stdout")).unwrap();
    assert_eq!(out, "started\n", "the task ran more than once");

    // A graceful stop exits 0.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.0.id() as i32, libc::SIGTERM) };
    let mut agent = agent;
    assert!(agent.0.wait().unwrap().success());
}

#[test]
fn an_unavailable_containerizer_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_drover-agent"))
        .args(["--containerizers", "podman", "--work-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown containerizer 'podman'"), "{err}");
}

#[test]
fn help_explains_every_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_drover-agent"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--master",
        "--listen",
        "--advertise-address",
        "--http-listen",
        "--work-dir",
        "--resources",
        "--attributes",
        "--hostname",
        "--default-grace-period-secs",
        "--containerizers",
        "--pids-limit",
        "--cgroups-root",
        "--reserved-cpus",
        "--reserved-mem-mb",
        "--docker-socket",
        "--shutdown-tasks-on-exit",
        "--log-level",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    assert!(!help.contains("__supervise"));
    assert!(!help.contains("__container_init"));
}

fn linux_task(id: &str, resources: &str, script: &str) -> Msg {
    Msg::RunTask(pb::master_message::RunTask {
        framework_id: Some(FrameworkId::new("fw")),
        framework_info: None,
        task: Some(linux_task_info(id, resources, script)),
    })
}

fn linux_task_info(id: &str, resources: &str, script: &str) -> pb::TaskInfo {
    pb::TaskInfo {
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
            r#type: pb::container_info::Type::Linux as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn task_id(s: &pb::TaskStatus) -> String {
    s.task_id.clone().unwrap_or_default().value
}

fn container_of(work_dir: &Path, task: &str) -> ContainerCheckpoint {
    let path = work_dir.join(format!("meta/frameworks/fw/tasks/{task}/container.json"));
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

/// Kills whatever a failing test left in an agent's cgroups.
struct Sweep(std::path::PathBuf);

impl Drop for Sweep {
    fn drop(&mut self) {
        if let Ok(h) = Hierarchies::detect() {
            h.destroy_all_below(&self.0);
        }
    }
}

/// Waits (bounded) until `cond` holds.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    drover_testkit::wait_until(
        what,
        Duration::from_secs(30),
        Duration::from_millis(20),
        || cond().then_some(()),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linux_containers_survive_kill_9_of_the_agent_and_nothing_is_orphaned() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = Master::start().await;
    let mut agent = start_agent_with(&master.addr, dir.path(), &["--containerizers", "linux"]);
    let _sweep = Sweep(
        std::path::Path::new("drover")
            .join(work_dir_tag(&std::fs::canonicalize(dir.path()).unwrap())),
    );
    master.register().await;

    // One keeps running; three end while the agent is away (once the test creates `go`
    // in their sandboxes): an exit code, a signal, and an OOM kill.
    let go = "until [ -e go ]; do sleep 0.05; done";
    let tasks = [
        ("long", "echo up; exec sleep 1000".to_string()),
        ("exits", format!("{go}; exit 5")),
        ("signaled", format!("{go}; kill -KILL $$")),
        ("oom", format!("{go}; head -c 200M /dev/zero | tail")),
    ];
    for (id, script) in &tasks {
        master.send(linux_task(id, "cpus:0.1;mem:32", script));
    }
    let mut updates: Vec<pb::TaskStatus> = Vec::new();
    while updates
        .iter()
        .filter(|u| state(u) == TaskState::TaskRunning)
        .count()
        < tasks.len()
    {
        let u = master.acked_update().await;
        assert!(
            matches!(state(&u), TaskState::TaskStarting | TaskState::TaskRunning),
            "{u:?}"
        );
        updates.push(u);
    }

    agent.0.kill().unwrap();
    agent.0.wait().unwrap();
    for (id, _) in &tasks[1..] {
        std::fs::write(dir.path().join(format!("sandboxes/fw/{id}/go")), "").unwrap();
    }
    for (id, _) in &tasks[1..] {
        let exit = dir
            .path()
            .join(format!("meta/frameworks/fw/tasks/{id}/exit.json"));
        eventually(&format!("{id} ends without the agent"), || exit.exists());
    }
    let long = container_of(dir.path(), "long");
    let long_pids = long.cgroups.pids();
    assert!(
        long_pids.len() >= 2,
        "the running container lost its processes"
    );
    for (id, _) in &tasks[1..] {
        let ended = container_of(dir.path(), id);
        assert!(!ended.cgroups.exists(), "{id}: cgroups outlived the task");
    }

    let agent = start_agent_with(&master.addr, dir.path(), &["--containerizers", "linux"]);
    let reg = master.register().await;
    assert_eq!(reg.tasks.len(), tasks.len());
    let mut ended = std::collections::BTreeMap::new();
    while ended.len() < 3 {
        let u = master.acked_update().await;
        updates.push(u.clone());
        if drover_proto::states::is_terminal(state(&u)) {
            ended.insert(task_id(&u), u);
        }
    }
    let exits = &ended["exits"];
    assert_eq!(
        (state(exits), exits.exit_code),
        (TaskState::TaskFailed, Some(5))
    );
    let signaled = &ended["signaled"];
    assert_eq!(state(signaled), TaskState::TaskFailed);
    assert_eq!(signaled.message, "terminated by signal 9");
    let oom = &ended["oom"];
    assert_eq!(
        (state(oom), oom.reason),
        (
            TaskState::TaskFailed,
            pb::task_status::Reason::ContainerLimitationMemory as i32
        )
    );

    // The reattached container is still the same one, and can be killed.
    assert_eq!(long.cgroups.pids(), long_pids);
    master.send(Msg::KillTask(pb::master_message::KillTask {
        framework_id: Some(FrameworkId::new("fw")),
        task_id: Some(TaskId::new("long")),
        kill_policy: None,
    }));
    let killed = master.acked_update().await;
    assert_eq!(
        (task_id(&killed), state(&killed)),
        ("long".into(), TaskState::TaskKilled)
    );
    updates.push(killed);
    eventually("the killed container's cgroups go", || {
        !long.cgroups.exists()
    });
    for pid in long_pids {
        eventually("the killed container's processes go", || {
            procfs::stat(pid).unwrap().is_none_or(|s| s.state == 'Z')
        });
    }

    // Each task ended exactly once, and each output shows a single run.
    let mut terminal = std::collections::BTreeMap::new();
    for u in &updates {
        if drover_proto::states::is_terminal(state(u)) {
            *terminal.entry(task_id(u)).or_insert(0) += 1;
        }
    }
    assert_eq!(
        terminal.values().copied().collect::<Vec<_>>(),
        [1, 1, 1, 1],
        "{terminal:?}"
    );
    let out = std::fs::read_to_string(dir.path().join("sandboxes/fw/long/stdout")).unwrap();
    assert_eq!(out, "up\n", "the task ran more than once");

    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.0.id() as i32, libc::SIGTERM) };
    let mut agent = agent;
    assert!(agent.0.wait().unwrap().success());
    // The agent's cgroup root went with its last container.
    let root = long
        .cgroups
        .dir("memory")
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    assert!(!root.exists(), "{} left behind", root.display());
}

fn docker_task(id: &str, image: &str, script: &str) -> pb::TaskInfo {
    pb::TaskInfo {
        name: id.into(),
        task_id: Some(TaskId::new(id)),
        command: Some(pb::CommandInfo {
            value: script.into(),
            shell: true,
            ..Default::default()
        }),
        resources: vec![
            drover_proto::resources::scalar("cpus", 0.1),
            drover_proto::resources::scalar("mem", 32.0),
        ],
        container: Some(pb::ContainerInfo {
            r#type: pb::container_info::Type::Docker as i32,
            docker: Some(pb::container_info::Docker {
                image: image.into(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn run_task(master: &Master, task: pb::TaskInfo) {
    master.send(Msg::RunTask(pb::master_message::RunTask {
        framework_id: Some(FrameworkId::new("fw")),
        framework_info: None,
        task: Some(task),
    }));
}

fn task_of(s: &pb::TaskStatus) -> String {
    s.task_id.as_ref().unwrap().as_str().to_string()
}

/// Removes the containers a test's agent (and the test) created, even when it fails.
struct DockerCleanup {
    work_dir: std::path::PathBuf,
    names: Vec<String>,
}

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        drover_agent::containerizer::docker::testing::remove_containers_of(&self.work_dir);
        for name in &self.names {
            let _ = Command::new("docker")
                .args(["rm", "-f", name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn docker_state(name: &str) -> Option<String> {
    let out = Command::new("docker")
        .args(["inspect", "-f", "{{.State.Status}}", name])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_linux_and_process_tasks_survive_kill_9_and_nothing_is_orphaned() {
    use drover_agent::containerizer::docker::testing::{engine_missing, TestImage};
    if engine_missing("docker_linux_and_process_tasks_survive_kill_9_and_nothing_is_orphaned")
        .await
        .is_some()
    {
        return;
    }
    let image = TestImage::import().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let work_dir = std::fs::canonicalize(dir.path()).unwrap();
    let orphan = format!("drover-test-orphan-{}", std::process::id());
    let _cleanup = DockerCleanup {
        work_dir: work_dir.clone(),
        names: vec![orphan.clone()],
    };
    let _sweep = Sweep(std::path::Path::new("drover").join(work_dir_tag(&work_dir)));
    let mut master = Master::start().await;
    let flags = ["--containerizers", "process,docker,linux"];
    let mut agent = start_agent_with(&master.addr, &work_dir, &flags);
    master.register().await;

    let wait_for = |file: &str| format!("while [ ! -e {file} ]; do sleep 0.05; done");
    // "ended": ends while the agent is away; "runs": still runs after the restart.
    run_task(
        &master,
        docker_task(
            "ended",
            &image.name,
            &format!(
                "echo a-out; echo a-err >&2; {}; echo after; exit 3",
                wait_for("/mnt/sandbox/go")
            ),
        ),
    );
    run_task(
        &master,
        docker_task(
            "runs",
            &image.name,
            &format!("echo b; {}; echo b-done", wait_for("/mnt/sandbox/go")),
        ),
    );
    run_task(
        &master,
        pb::TaskInfo {
            name: "proc".into(),
            task_id: Some(TaskId::new("proc")),
            command: Some(pb::CommandInfo {
                value: format!("echo p; {}; exit 5", wait_for("go")),
                shell: true,
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    run_task(
        &master,
        linux_task_info(
            "lin",
            "cpus:0.1;mem:32",
            &format!("echo l; {}; exit 7", wait_for("go")),
        ),
    );
    let mut before: std::collections::BTreeMap<String, Vec<TaskState>> = Default::default();
    for _ in 0..8 {
        let s = master.acked_update().await;
        before.entry(task_of(&s)).or_default().push(state(&s));
    }
    for task in ["ended", "runs", "proc", "lin"] {
        assert_eq!(
            before[task],
            [TaskState::TaskStarting, TaskState::TaskRunning],
            "{task}"
        );
    }

    agent.0.kill().unwrap();
    agent.0.wait().unwrap();

    let sandbox = |task: &str| work_dir.join("sandboxes/fw").join(task);
    let container = |task: &str| format!("drover-agent-bin-fw-{task}");
    assert_eq!(docker_state(&container("runs")).as_deref(), Some("running"));
    // "ended" finishes (and prints more) while no agent watches it.
    std::fs::write(sandbox("ended").join("go"), b"").unwrap();
    for _ in 0..600 {
        if docker_state(&container("ended")).as_deref() == Some("exited") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(docker_state(&container("ended")).as_deref(), Some("exited"));
    // A container of this work dir for a task the agent does not know: an orphan.
    let started = Command::new("docker")
        .args(["run", "-d", "--name", &orphan, "--label"])
        .arg(format!("drover.work-dir={}", work_dir.display()))
        .args([
            "--label",
            "drover.framework-id=fw",
            "--label",
            "drover.task-id=ghost",
            &image.name,
            "sleep",
            "1000",
        ])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(started.success());

    let agent = start_agent_with(&master.addr, &work_dir, &flags);
    let reg = master.register().await;
    assert_eq!(reg.tasks.len(), 4);
    assert_eq!(docker_state(&orphan), None, "the orphan is removed");

    let ended = master.acked_update().await;
    assert_eq!(task_of(&ended), "ended");
    assert_eq!(state(&ended), TaskState::TaskFailed);
    assert_eq!(ended.exit_code, Some(3), "the real exit code");

    std::fs::write(sandbox("runs").join("go"), b"").unwrap();
    std::fs::write(sandbox("proc").join("go"), b"").unwrap();
    std::fs::write(sandbox("lin").join("go"), b"").unwrap();
    let mut after: std::collections::BTreeMap<String, Vec<pb::TaskStatus>> = Default::default();
    for _ in 0..3 {
        let s = master.acked_update().await;
        after.entry(task_of(&s)).or_default().push(s);
    }
    let runs = &after["runs"];
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(state(&runs[0]), TaskState::TaskFinished);
    assert_eq!(runs[0].exit_code, Some(0));
    let proc_ = &after["proc"];
    assert_eq!(proc_.len(), 1, "{proc_:?}");
    assert_eq!(state(&proc_[0]), TaskState::TaskFailed);
    assert_eq!(proc_[0].exit_code, Some(5));
    let lin = &after["lin"];
    assert_eq!(lin.len(), 1, "{lin:?}");
    assert_eq!(state(&lin[0]), TaskState::TaskFailed);
    assert_eq!(lin[0].exit_code, Some(7));
    assert!(
        !container_of(&work_dir, "lin").cgroups.exists(),
        "the linux container's cgroups outlived it"
    );

    let read = |task: &str, f: &str| std::fs::read_to_string(sandbox(task).join(f)).unwrap();
    assert_eq!(
        read("ended", "stdout"),
        "a-out\nafter\n",
        "output while away"
    );
    assert_eq!(read("ended", "stderr"), "a-err\n");
    assert_eq!(read("runs", "stdout"), "b\nb-done\n");
    assert_eq!(read("proc", "stdout"), "p\n");
    assert_eq!(read("lin", "stdout"), "l\n");
    // Every container is gone once its task is reported.
    for task in ["ended", "runs"] {
        assert_eq!(docker_state(&container(task)), None, "{task}");
    }

    // Nothing is reported twice: a graceful stop, and no update arrived meanwhile.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.0.id() as i32, libc::SIGTERM) };
    let mut agent = agent;
    assert!(agent.0.wait().unwrap().success());
    while let Some(msg) = master.fake.try_next() {
        if let Some(pb::agent_message::Msg::StatusUpdate(u)) = msg.msg {
            let s = u.status.unwrap();
            assert!(
                !master.seen.insert(s.uuid.clone()),
                "an extra update: {s:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_task_on_an_agent_without_docker_fails_with_a_clear_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = Master::start().await;
    let _agent = start_agent_with(&master.addr, dir.path(), &["--containerizers", "process"]);
    master.register().await;
    run_task(&master, docker_task("d", "busybox:latest", "true"));
    assert_eq!(state(&master.acked_update().await), TaskState::TaskStarting);
    let failed = master.acked_update().await;
    assert_eq!(state(&failed), TaskState::TaskFailed);
    assert_eq!(
        failed.reason,
        pb::task_status::Reason::ContainerLaunchFailed as i32
    );
    assert!(
        failed
            .message
            .contains("'docker' containerizer, which this agent does not enable"),
        "{}",
        failed.message
    );
}

#[test]
fn docker_named_without_an_engine_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_drover-agent"))
        .args([
            "--containerizers",
            "process,docker",
            "--docker-socket",
            "/nonexistent/docker.sock",
            "--work-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--containerizers names docker")
            && err.contains("no Docker engine socket at /nonexistent/docker.sock"),
        "{err}"
    );
}
