//! The docker containerizer against the real Docker engine, with an image imported on the
//! spot (see [`super::testing`]). Skipped with a printed reason where no engine answers,
//! and failing under `CI=true` then.

use std::path::Path;
use std::time::Duration;

use drover_proto::pb::{self, container_info, task_status::Reason, TaskState};
use drover_proto::{AgentId, TaskId};

use super::testing::{engine_missing, remove_containers_of, TestImage};
use super::*;
use crate::layout::Layout;
use crate::terminal_status;

/// A work dir with the containers it created removed on drop, even when a test fails.
struct WorkDir {
    dir: tempfile::TempDir,
    root: PathBuf,
}

impl WorkDir {
    fn new() -> WorkDir {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        WorkDir { dir, root }
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        remove_containers_of(&self.root);
        let _ = &self.dir;
    }
}

fn docker_task(id: &str, image: &str, script: &str, cpus: f64, mem: f64) -> pb::TaskInfo {
    pb::TaskInfo {
        name: id.into(),
        task_id: Some(TaskId::new(id)),
        command: Some(pb::CommandInfo {
            value: script.into(),
            shell: true,
            ..Default::default()
        }),
        resources: vec![
            drover_proto::resources::scalar("cpus", cpus),
            drover_proto::resources::scalar("mem", mem),
        ],
        container: Some(pb::ContainerInfo {
            r#type: container_info::Type::Docker as i32,
            docker: Some(container_info::Docker {
                image: image.into(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn launch_spec(layout: &Layout, task: pb::TaskInfo) -> LaunchSpec {
    let key = TaskKey::new("fw", task.task_id.as_ref().unwrap().as_str());
    let sandbox = layout.sandbox(&key);
    std::fs::create_dir_all(&sandbox).unwrap();
    for f in ["stdout", "stderr"] {
        std::fs::write(sandbox.join(f), b"").unwrap();
    }
    let meta = layout.task_meta(&key);
    std::fs::create_dir_all(meta.dir()).unwrap();
    LaunchSpec {
        key,
        task,
        agent_id: AgentId::new("agent-test"),
        sandbox,
        meta,
        group: None,
    }
}

async fn containerizer(root: &Path) -> DockerContainerizer {
    DockerContainerizer::connect(Path::new(DEFAULT_SOCKET), Layout::new(root))
        .await
        .expect("the engine answered a moment ago")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_task_runs_with_its_limits_output_and_exit_code() {
    if engine_missing("a_docker_task_runs_with_its_limits_output_and_exit_code")
        .await
        .is_some()
    {
        return;
    }
    let image = TestImage::import().unwrap();
    let work = WorkDir::new();
    let layout = Layout::new(&work.root);
    let docker = containerizer(&work.root).await;

    // It waits for a file in its sandbox, so the test can look at it while it runs.
    let spec = launch_spec(
        &layout,
        docker_task(
            "t1",
            &image.name,
            "echo out; echo err >&2; echo \"$DROVER_SANDBOX $(pwd)\"; \
             while [ ! -e /mnt/sandbox/go ]; do sleep 0.05; done; \
             cat /sys/fs/cgroup/memory/memory.limit_in_bytes; exit 7",
            0.5,
            64.0,
        ),
    );
    let key = spec.key.clone();
    let sandbox = spec.sandbox.clone();
    docker.launch(spec).await.unwrap();
    let name = spec::container_name("agent-test", &key);

    let info = docker.api.inspect_container(&name, None).await.unwrap();
    assert_eq!(info.state.as_ref().unwrap().running, Some(true));
    let host = info.host_config.unwrap();
    assert_eq!(host.nano_cpus, Some(500_000_000), "cpu limit");
    assert_eq!(host.cpu_shares, Some(512), "cpu shares");
    assert_eq!(host.memory, Some(64 << 20), "memory limit");
    let labels = info.config.unwrap().labels.unwrap();
    assert_eq!(labels[spec::LABEL_TASK_ID], "t1");
    assert_eq!(labels[spec::LABEL_FRAMEWORK_ID], "fw");
    assert_eq!(labels[spec::LABEL_AGENT_ID], "agent-test");
    assert_eq!(
        Path::new(&labels[spec::LABEL_WORK_DIR]),
        work.root.as_path()
    );

    let waiter = {
        let key = key.clone();
        let docker = std::sync::Arc::new(docker);
        let d = docker.clone();
        (tokio::spawn(async move { d.wait(&key).await }), docker)
    };
    std::fs::write(sandbox.join("go"), b"").unwrap();
    let termination = tokio::time::timeout(Duration::from_secs(60), waiter.0)
        .await
        .expect("the container ended")
        .unwrap()
        .unwrap();
    let status = terminal_status(&termination);
    assert_eq!(status.state, TaskState::TaskFailed);
    assert_eq!(status.exit_code, Some(7), "{status:?}");
    let stdout = std::fs::read_to_string(sandbox.join("stdout")).unwrap();
    assert_eq!(
        stdout,
        format!("out\n/mnt/sandbox /mnt/sandbox\n{}\n", 64 << 20),
        "the container saw its memory limit in its own cgroup"
    );
    assert_eq!(
        std::fs::read_to_string(sandbox.join("stderr")).unwrap(),
        "err\n"
    );
    // Removed once its outcome is recorded.
    let gone = waiter
        .1
        .api
        .inspect_container(&name, None)
        .await
        .unwrap_err();
    assert!(is_not_found(&gone), "{gone}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oom_kill_fails_the_task_with_the_memory_reason() {
    if engine_missing("an_oom_kill_fails_the_task_with_the_memory_reason")
        .await
        .is_some()
    {
        return;
    }
    let image = TestImage::import().unwrap();
    let work = WorkDir::new();
    let layout = Layout::new(&work.root);
    let docker = containerizer(&work.root).await;
    // dd fills a 256 MB buffer inside a 32 MB limit.
    let spec = launch_spec(
        &layout,
        docker_task(
            "hog",
            &image.name,
            "echo before; exec dd if=/dev/zero of=/dev/null bs=256M count=1",
            1.0,
            32.0,
        ),
    );
    let key = spec.key.clone();
    let sandbox = spec.sandbox.clone();
    docker.launch(spec).await.unwrap();
    let termination = tokio::time::timeout(Duration::from_secs(60), docker.wait(&key))
        .await
        .expect("the container ended")
        .unwrap();
    let status = terminal_status(&termination);
    assert_eq!(status.state, TaskState::TaskFailed, "{status:?}");
    assert_eq!(
        status.reason,
        Reason::ContainerLimitationMemory,
        "{status:?}"
    );
    assert!(status.message.contains("32 MB"), "{}", status.message);
    let stdout = std::fs::read_to_string(sandbox.join("stdout")).unwrap();
    assert!(stdout.starts_with("before\n"), "{stdout}");
    assert_eq!(status.exit_code, Some(137), "killed by SIGKILL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_fails_the_launch_naming_the_image_and_kill_stops_a_task() {
    if engine_missing("a_missing_image_fails_the_launch_naming_the_image_and_kill_stops_a_task")
        .await
        .is_some()
    {
        return;
    }
    let image = TestImage::import().unwrap();
    let work = WorkDir::new();
    let layout = Layout::new(&work.root);
    let docker = containerizer(&work.root).await;

    let missing = "drover-test-no-such-image:never";
    let err = docker
        .launch(launch_spec(
            &layout,
            docker_task("ghost", missing, "true", 0.1, 16.0),
        ))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(missing), "{err}");
    assert!(err.contains("never pulls"), "{err}");

    // A task that ignores SIGTERM is stopped with SIGKILL after its grace period, and
    // reported killed with the reason given.
    let spec = launch_spec(
        &layout,
        docker_task(
            "stubborn",
            &image.name,
            "trap 'echo term' TERM; echo up; while true; do sleep 0.1; done",
            0.1,
            16.0,
        ),
    );
    let key = spec.key.clone();
    let sandbox = spec.sandbox.clone();
    docker.launch(spec).await.unwrap();
    // Usage comes from the cgroups the engine made, with the limits the agent asked for.
    let usage = docker.usage(&key).expect("usage of a running container");
    assert_eq!(usage.mem_limit_bytes, 16 << 20, "{usage:?}");
    assert!((usage.cpus_limit - 0.1).abs() < 1e-9, "{usage:?}");
    assert!(usage.pids_current >= 1, "{usage:?}");
    // The trap must be set before the stop, or SIGTERM ends the shell at once.
    for _ in 0..400 {
        if std::fs::read_to_string(sandbox.join("stdout"))
            .unwrap_or_default()
            .contains("up")
        {
            break;
        }
        // The output copier starts with `wait`; read the engine's logs meanwhile.
        let logs = std::process::Command::new("docker")
            .args(["logs", &spec::container_name("agent-test", &key)])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&logs.stdout).contains("up") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    docker
        .kill(&key, Duration::from_secs(1), Reason::KilledByFramework)
        .await
        .unwrap();
    let termination = tokio::time::timeout(Duration::from_secs(60), docker.wait(&key))
        .await
        .expect("the container ended")
        .unwrap();
    let status = terminal_status(&termination);
    assert_eq!(
        (status.state, status.reason),
        (TaskState::TaskKilled, Reason::KilledByFramework),
        "{status:?}"
    );
    assert_eq!(
        status.exit_code,
        Some(137),
        "SIGKILL after the grace period"
    );
    let stdout = std::fs::read_to_string(sandbox.join("stdout")).unwrap();
    assert!(stdout.contains("up\n"), "{stdout}");
    assert!(
        docker.usage(&key).is_none(),
        "no usage once the container is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_removes_a_container_that_was_created_but_never_started() {
    if engine_missing("recovery_removes_a_container_that_was_created_but_never_started")
        .await
        .is_some()
    {
        return;
    }
    let image = TestImage::import().unwrap();
    let work = WorkDir::new();
    let layout = Layout::new(&work.root);
    let key = TaskKey::new("fw", "half");
    std::fs::create_dir_all(layout.task_meta(&key).dir()).unwrap();
    // What an agent killed between create and start leaves behind.
    let name = spec::container_name("agent-test", &key);
    let created = std::process::Command::new("docker")
        .args(["create", "--name", &name, "--label"])
        .arg(format!("{}={}", spec::LABEL_WORK_DIR, work.root.display()))
        .arg("--label")
        .arg(format!("{}=fw", spec::LABEL_FRAMEWORK_ID))
        .arg("--label")
        .arg(format!("{}=half", spec::LABEL_TASK_ID))
        .args([&image.name, "sleep", "1000"])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(created.success());

    let docker = containerizer(&work.root).await;
    assert_eq!(docker.recover(&key).await.unwrap(), Recovered::NeverStarted);
    let gone = docker.api.inspect_container(&name, None).await.unwrap_err();
    assert!(is_not_found(&gone), "{gone}");
    // Nothing of this work dir is left for the orphan sweep either.
    assert_eq!(docker.remove_orphans().await.unwrap(), 0);
}
