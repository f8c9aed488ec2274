//! The linux containerizer with real namespaces, cgroups and supervisors (the test binary
//! re-executed as supervisor and init). These tests need root, as the agent does.

use super::*;
use crate::fsutil::create_dir_all_durable;
use crate::images::ImageStore;
use crate::supervisor::records::{ExitOutcome, TaskGroupLaunch};
use crate::{terminal_status, TerminalStatus};
use drover_proto::pb::TaskState;
use drover_proto::AgentId;

struct Fixture {
    dir: tempfile::TempDir,
    layout: Layout,
    linux: LinuxContainerizer,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Whatever a failing test left running goes, then the agent's cgroup root.
        for cg in self.linux.containers().values() {
            let _ = cg.destroy();
        }
        self.linux
            .hierarchies()
            .remove_if_empty(self.linux.agent_cgroup_root());
        // Fails harmlessly while another test's agent root is still in it.
        self.linux
            .hierarchies()
            .remove_if_empty(Path::new("drover-test"));
    }
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::new(dir.path());
    let linux = LinuxContainerizer::new(
        layout.clone(),
        PathBuf::from("/proc/self/exe"),
        LinuxOptions {
            cgroups_root: PathBuf::from("drover-test"),
            pids_limit: 4096,
            default_grace: Duration::from_secs(5),
        },
    )
    .expect("these tests need root and the cpu, cpuacct, memory and pids cgroup controllers");
    Fixture { dir, layout, linux }
}

/// Whether this kernel's v1 memory controller counts OOM kills (`oom_kill`, 4.13+).
fn cgroups_counts_oom_kills() -> bool {
    let hierarchies = Hierarchies::detect().expect("cgroup hierarchies");
    hierarchies.v1_mount("memory").is_some_and(|m| {
        std::fs::read_to_string(m.join("memory.oom_control"))
            .is_ok_and(|s| s.lines().any(|l| l.starts_with("oom_kill ")))
    })
}

fn spec(f: &Fixture, task: &str, resources: &str, script: &str) -> LaunchSpec {
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
            resources: Resources::parse(resources).unwrap().to_proto(),
            command: Some(pb::CommandInfo {
                value: script.into(),
                shell: true,
                ..Default::default()
            }),
            container: Some(pb::ContainerInfo {
                r#type: container_info::Type::Linux as i32,
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

fn output(f: &Fixture, task: &str, name: &str) -> String {
    std::fs::read_to_string(f.layout.sandbox(&TaskKey::new("fw", task)).join(name))
        .unwrap_or_default()
}

fn cgroups_of(f: &Fixture, task: &str) -> ContainerCgroups {
    let cp: ContainerCheckpoint = read_json(&f.linux.container_file(&TaskKey::new("fw", task)))
        .unwrap()
        .expect("container.json");
    cp.cgroups
}

async fn run_to_end(f: &Fixture, spec: LaunchSpec) -> TerminalStatus {
    let key = spec.key.clone();
    f.linux.launch(spec).await.unwrap();
    let t = tokio::time::timeout(Duration::from_secs(60), f.linux.wait(&key))
        .await
        .expect("the task did not end")
        .unwrap();
    terminal_status(&t)
}

/// Polls (bounded) until `cond` holds; false if it never did.
async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..1000 {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_sees_its_own_pid_namespace_and_hostname_and_zombies_are_reaped() {
    let f = fixture();
    // An orphan (its parent subshell exits at once) is re-parented to the container's
    // init, shows up with ppid 1, exits, and must not stay a zombie.
    // Polls (bounded) rather than sleeping a fixed time, so a loaded machine only
    // makes it slower.
    let script = r#"
        echo "pid=$$"
        echo "hostname=$(cat /proc/sys/kernel/hostname)"
        (sleep 0.5 &)
        orphans() {
            n=0
            for s in /proc/[0-9]*/stat; do
                read -r pid comm state ppid rest < "$s" 2>/dev/null || continue
                [ "$comm" = "(sleep)" ] && [ "$ppid" = 1 ] && n=$((n+1))
            done
            echo $n
        }
        zombies() {
            n=0
            for s in /proc/[0-9]*/stat; do
                read -r pid comm state rest < "$s" 2>/dev/null || continue
                [ "$state" = Z ] && n=$((n+1))
            done
            echo $n
        }
        for i in $(seq 100); do [ "$(orphans)" = 1 ] && echo "orphan_reparented_to_init" && break; sleep 0.05; done
        for i in $(seq 100); do [ "$(orphans)" = 0 ] && [ "$(zombies)" = 0 ] && break; sleep 0.05; done
        echo "zombies=$(zombies)"
        n=0
        for p in /proc/[0-9]*; do n=$((n+1)); done
        echo "processes=$n"
    "#;
    let mut s = spec(&f, "ns", "cpus:0.5;mem:64", script);
    s.task.container.as_mut().unwrap().hostname = "box-1".into();
    let status = run_to_end(&f, s).await;
    let out = output(&f, "ns", "stdout");
    assert_eq!(
        status.state,
        TaskState::TaskFinished,
        "{status:?}\n{out}\n{}",
        output(&f, "ns", "stderr")
    );
    // PID 1 is the init; the shell it starts is the first process after it.
    assert!(out.contains("pid=2\n"), "{out}");
    assert!(out.contains("hostname=box-1\n"), "{out}");
    assert!(out.contains("orphan_reparented_to_init\n"), "{out}");
    assert!(out.contains("zombies=0\n"), "{out}");
    // The init and the shell: the host's processes are invisible.
    assert!(out.contains("processes=2\n"), "{out}");

    // Without a hostname, the container is named after its task.
    let status = run_to_end(
        &f,
        spec(
            &f,
            "named-task",
            "cpus:0.1",
            "cat /proc/sys/kernel/hostname",
        ),
    )
    .await;
    assert_eq!(status.state, TaskState::TaskFinished);
    assert_eq!(output(&f, "named-task", "stdout"), "named-task\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_signals_and_launch_failures_come_through_the_init() {
    let f = fixture();
    let status = run_to_end(&f, spec(&f, "code", "cpus:0.1", "exit 7")).await;
    assert_eq!(
        (status.state, status.exit_code),
        (TaskState::TaskFailed, Some(7))
    );
    let status = run_to_end(&f, spec(&f, "sig", "cpus:0.1", "kill -USR1 $$")).await;
    assert_eq!(status.state, TaskState::TaskFailed);
    assert_eq!(status.message, "terminated by signal 10");
    assert_eq!(status.exit_code, None);

    let mut s = spec(&f, "nope", "cpus:0.1", "");
    s.task.command = Some(pb::CommandInfo {
        value: "/no/such/program".into(),
        ..Default::default()
    });
    let status = run_to_end(&f, s).await;
    assert_eq!(
        (status.state, status.reason),
        (TaskState::TaskFailed, Reason::ContainerLaunchFailed)
    );
    assert!(
        status.message.contains("/no/such/program"),
        "{}",
        status.message
    );
    for t in ["code", "sig", "nope"] {
        assert!(!cgroups_of(&f, t).exists(), "{t}: cgroups left behind");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cgroups_carry_the_limits_and_a_fork_bomb_stops_at_the_pids_limit() {
    let f = fixture();
    // An inner shell forks far past the limit of 32 processes and dies of it; the
    // outer one reports that and then holds on (exec: no fork needed).
    let script = r#"
        sh -c 'i=0; while [ $i -lt 100 ]; do sleep 1000 & i=$((i+1)); done'
        echo "bomb exit=$?"
        exec sleep 1000
    "#;
    let mut s = spec(&f, "bomb", "cpus:0.5;mem:64", script);
    s.task.container.as_mut().unwrap().pids_limit = 32;
    let key = s.key.clone();
    f.linux.launch(s).await.unwrap();
    let cg = cgroups_of(&f, "bomb");
    let read = |controller: &str, file: &str| {
        std::fs::read_to_string(cg.dir(controller).unwrap().join(file))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(read("cpu", "cpu.cfs_period_us"), "100000");
    assert_eq!(read("cpu", "cpu.cfs_quota_us"), "50000");
    assert_eq!(read("cpu", "cpu.shares"), "512");
    assert_eq!(
        read("memory", "memory.limit_in_bytes"),
        (64u64 << 20).to_string()
    );
    assert_eq!(read("pids", "pids.max"), "32");

    assert!(
        eventually(|| output(&f, "bomb", "stdout").contains("bomb exit=")).await,
        "the bomb never stopped: {}",
        output(&f, "bomb", "stderr")
    );
    // The shell saw its forks fail; the container holds exactly its limit.
    let err = output(&f, "bomb", "stderr");
    assert!(
        err.contains("Cannot fork"),
        "no fork failure reported: {err}"
    );
    assert!(
        !output(&f, "bomb", "stdout").contains("bomb exit=0"),
        "{}",
        output(&f, "bomb", "stdout")
    );
    // init + outer shell (now sleep) + the inner shell's 29 sleeps, that shell gone.
    assert_eq!(read("pids", "pids.current"), "31");
    let refused: u64 = read("pids", "pids.events")
        .strip_prefix("max ")
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(refused > 0, "no fork was refused at pids.max");
    // The agent's side is not limited by the container's pids.
    assert!(std::process::Command::new("true")
        .status()
        .unwrap()
        .success());
    let usage = f.linux.usage(&key).expect("usage of a running container");
    assert_eq!((usage.pids_current, usage.pids_limit), (31, 32));
    assert_eq!(usage.mem_limit_bytes, 64 << 20);
    assert_eq!(usage.cpus_limit, 0.5);
    assert!(usage.mem_rss_bytes > 0, "{usage:?}");

    // Killing it takes every process down and removes the cgroups.
    let pids = cg.pids();
    assert_eq!(pids.len(), 31);
    f.linux
        .kill(&key, Duration::from_secs(1), Reason::KilledByFramework)
        .await
        .unwrap();
    let status = terminal_status(
        &tokio::time::timeout(Duration::from_secs(60), f.linux.wait(&key))
            .await
            .unwrap()
            .unwrap(),
    );
    assert_eq!(status.state, TaskState::TaskKilled);
    assert!(!cg.exists(), "cgroups left behind: {cg:?}");
    for pid in pids {
        assert!(
            crate::procfs::stat(pid)
                .unwrap()
                .is_none_or(|s| s.state == 'Z'),
            "process {pid} of the container survived"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_past_its_memory_limit_is_oom_killed_and_reported_so() {
    let f = fixture();
    // `tail` keeps the last line in memory: 200 MB of zeros without a newline.
    let status = run_to_end(
        &f,
        spec(
            &f,
            "oom",
            "cpus:0.5;mem:32",
            "head -c 200M /dev/zero | tail",
        ),
    )
    .await;
    assert_eq!(
        (status.state, status.reason),
        (TaskState::TaskFailed, Reason::ContainerLimitationMemory),
        "{status:?}"
    );
    assert!(
        status.message.contains("32 MB memory limit"),
        "{}",
        status.message
    );
    assert!(!cgroups_of(&f, "oom").exists());

    // The same pipeline within its limit is no OOM.
    let status = run_to_end(
        &f,
        spec(
            &f,
            "fits",
            "cpus:0.5;mem:32",
            "head -c 200M /dev/zero | wc -c",
        ),
    )
    .await;
    assert_eq!(status.state, TaskState::TaskFinished, "{status:?}");
    assert_eq!(output(&f, "fits", "stdout").trim(), "209715200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_oom_killed_fails_the_task_even_if_it_exits_0() {
    let f = fixture();
    let status = run_to_end(
        &f,
        spec(
            &f,
            "child-oom",
            "cpus:0.5;mem:32",
            "echo \"init=$(cat /proc/1/oom_score_adj) task=$(cat /proc/self/oom_score_adj)\"; \
             head -c 200M /dev/zero | tail; echo survived; exit 0",
        ),
    )
    .await;
    // Only when the kernel counts OOM kills (4.13+), which is every machine we run on;
    // older kernels keep judging exit-0 tasks by their exit code.
    let counted = cgroups_counts_oom_kills();
    if counted {
        assert_eq!(
            (status.state, status.reason),
            (TaskState::TaskFailed, Reason::ContainerLimitationMemory),
            "{status:?}"
        );
    }
    // The OOM killer takes the task's process, never the init (which would take the
    // whole container with it): the shell goes on. The init keeps the agent's score (here
    // the test's).
    let ours = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap();
    assert_eq!(
        output(&f, "child-oom", "stdout"),
        format!("init={} task=1000\nsurvived\n", ours.trim()),
        "{}",
        output(&f, "child-oom", "stderr")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_is_forwarded_to_the_task_through_the_init() {
    let f = fixture();
    let s = spec(
        &f,
        "trap",
        "cpus:0.1",
        "trap 'echo got-term; exit 0' TERM; echo ready; while :; do sleep 0.1; done",
    );
    let key = s.key.clone();
    f.linux.launch(s).await.unwrap();
    assert!(eventually(|| output(&f, "trap", "stdout").contains("ready")).await);
    f.linux
        .kill(&key, Duration::from_secs(30), Reason::KilledByFramework)
        .await
        .unwrap();
    let t = tokio::time::timeout(Duration::from_secs(60), f.linux.wait(&key))
        .await
        .unwrap()
        .unwrap();
    let Termination::Recorded(r) = &t else {
        panic!("{t:?}")
    };
    // The task's own handler ran (exit 0), well before the 30 s grace.
    assert_eq!(r.outcome, ExitOutcome::Exited { code: 0 });
    assert!(output(&f, "trap", "stdout").contains("got-term"));
    assert_eq!(terminal_status(&t).state, TaskState::TaskKilled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_limits_and_hostnames_fail_the_launch_with_the_reason() {
    let f = fixture();
    let s = spec(&f, "tiny", "cpus:0.1;mem:1", "true");
    let err = f.linux.launch(s).await.unwrap_err().to_string();
    assert!(err.contains("mem must be at least"), "{err}");
    let mut s = spec(&f, "host", "cpus:0.1", "true");
    s.task.container.as_mut().unwrap().hostname = "bad/host".into();
    let err = f.linux.launch(s).await.unwrap_err().to_string();
    assert!(err.contains("not a valid hostname"), "{err}");
    let mut s = spec(&f, "image", "cpus:0.1", "true");
    s.task.container.as_mut().unwrap().image = Some(pb::Image {
        name: "busybox".into(),
    });
    let err = f.linux.launch(s).await.unwrap_err().to_string();
    assert!(err.contains("no image store"), "{err}");
}

/// A tiny image (static busybox, its applets, an `/etc/passwd` with a user `app`, a marker
/// file), written as an OCI layout tar and imported into a real image store. Its config
/// (from the image tests' builder): `Env` PATH=/bin GREETING=hi, `Entrypoint`
/// /bin/sh -c, `Cmd` "echo hi", `WorkingDir` /opt, `User` app. `None` (skip) without
/// busybox-static outside CI.
fn tiny_image(dir: &Path, name: &str, extra: &[crate::images::testing::E]) -> Option<ImageStore> {
    use crate::images::testing::{layer, oci_files, plain, write_tar, E};
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI needs busybox-static for the image tests"
        );
        eprintln!("skipped: /bin/busybox (Debian's busybox-static) is not installed");
        return None;
    }
    let binary = std::fs::read(busybox).unwrap();
    let mut entries = vec![
        E::Dir("bin", 0o755),
        E::File("bin/busybox", &binary, 0o755),
        E::Dir("etc", 0o755),
        E::File(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\napp:x:1234:1234:app:/home/app:/bin/sh\n",
            0o644,
        ),
        E::File(
            "etc/group",
            b"root:x:0:\napp:x:1234:\nextra:x:4321:app\n",
            0o644,
        ),
        E::File("marker", b"inside the image\n", 0o644),
    ];
    let applets = [
        "sh", "cat", "ls", "echo", "id", "head", "wc", "pwd", "sleep", "hostname",
    ];
    let links: Vec<String> = applets.iter().map(|a| format!("bin/{a}")).collect();
    for l in &links {
        entries.push(E::Symlink(l, "busybox"));
    }
    let (files, _) = oci_files(
        &[plain(layer(&entries)), plain(layer(extra))],
        serde_json::json!({}),
    );
    let archive = dir.join(format!("{name}.tar"));
    write_tar(&files, &archive);
    let store =
        ImageStore::open(dir.join("images"), crate::images::ImportLimits::default()).unwrap();
    store.import(&archive, Some(name), "").unwrap();
    Some(store)
}

fn with_store(f: &mut Fixture, store: ImageStore) {
    let store = Arc::new(store);
    let linux = std::mem::replace(
        &mut f.linux,
        LinuxContainerizer::new(
            f.layout.clone(),
            PathBuf::from("/proc/self/exe"),
            LinuxOptions {
                cgroups_root: PathBuf::from("drover-test"),
                pids_limit: 64,
                default_grace: Duration::from_secs(5),
            },
        )
        .unwrap(),
    );
    f.linux = linux.with_rootfs_provider(Arc::new(move |image: &pb::Image, dir: &Path| {
        store.prepare_rootfs(&image.name, dir)
    }));
}

fn in_image(mut s: LaunchSpec, image: &str) -> LaunchSpec {
    s.task.container.as_mut().unwrap().image = Some(pb::Image { name: image.into() });
    s
}

/// Mount points under `dir` on this host.
fn mounts_under(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(dir.to_str().unwrap()))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_runs_inside_an_imported_image_and_sees_its_files_not_the_hosts() {
    let mut f = fixture();
    let Some(store) = tiny_image(f.dir.path(), "tiny", &[]) else {
        return;
    };
    with_store(&mut f, store);
    let host_only = f.dir.path().join("host-only");
    std::fs::write(&host_only, "on the host\n").unwrap();

    let script = format!(
        "cat /marker; [ -e {} ] && echo host-visible; \
         echo \"cwd=$(pwd) sandbox=$DROVER_SANDBOX home=$HOME greeting=$GREETING path=$PATH\"; \
         echo \"uid=$(id -u) groups=$(id -G)\"; echo written > /mnt/sandbox/note; \
         echo zero=$(head -c 4 /dev/zero | wc -c)",
        host_only.display()
    );
    let mut s = in_image(spec(&f, "img", "cpus:0.1;mem:32", &script), "tiny");
    s.task.command.as_mut().unwrap().environment = vec![pb::EnvironmentVariable {
        name: "GREETING".into(),
        value: "from the task".into(),
    }];
    let status = run_to_end(&f, s).await;
    let out = output(&f, "img", "stdout");
    assert_eq!(
        status.state,
        TaskState::TaskFinished,
        "{status:?}\n{out}\n{}",
        output(&f, "img", "stderr")
    );
    assert!(out.starts_with("inside the image\n"), "{out}");
    assert!(!out.contains("host-visible"), "{out}");
    // The image's WorkingDir (created: the image has no /opt), HOME of the image's user,
    // the task's variable over the image's, the image's PATH.
    assert!(
        out.contains(
            "cwd=/opt sandbox=/mnt/sandbox home=/home/app greeting=from the task path=/bin\n"
        ),
        "{out}"
    );
    // The image's `User` (app), with its groups from the image's /etc/group.
    assert!(out.contains("uid=1234 groups=1234 4321\n"), "{out}");
    assert!(out.contains("zero=4"), "{out}");
    // /mnt/sandbox is the sandbox.
    assert_eq!(
        std::fs::read_to_string(f.layout.sandbox(&TaskKey::new("fw", "img")).join("note")).unwrap(),
        "written\n"
    );

    // The task's user wins over the image's; no command runs the image's own.
    let mut s = in_image(spec(&f, "as-root", "cpus:0.1;mem:32", "id -u"), "tiny");
    s.task.command.as_mut().unwrap().user = "root".into();
    let status = run_to_end(&f, s).await;
    assert_eq!(status.state, TaskState::TaskFinished, "{status:?}");
    assert_eq!(output(&f, "as-root", "stdout"), "0\n");
    let mut s = in_image(spec(&f, "default", "cpus:0.1;mem:32", ""), "tiny");
    s.task.command = None;
    let status = run_to_end(&f, s).await;
    assert_eq!(status.state, TaskState::TaskFinished, "{status:?}");
    assert_eq!(output(&f, "default", "stdout"), "hi\n");

    // A user the image does not define, and an image the store does not hold.
    let mut s = in_image(spec(&f, "nobody", "cpus:0.1;mem:32", "true"), "tiny");
    s.task.command.as_mut().unwrap().user = "ghost".into();
    match f.linux.launch(s).await {
        Err(ContainerizerError::UnknownUser(m)) => {
            assert!(m.contains("'ghost'") && m.contains("'tiny'"), "{m}")
        }
        other => panic!("expected an unknown user, got {other:?}"),
    }
    let s = in_image(spec(&f, "missing", "cpus:0.1;mem:32", "true"), "missing");
    let err = f.linux.launch(s).await.unwrap_err().to_string();
    assert!(err.contains("no image 'missing'"), "{err}");

    // Nothing of any container stays mounted, and the root filesystems are gone.
    assert_eq!(mounts_under(f.dir.path()), Vec::<String>::new());
    for task in ["img", "as-root", "default", "nobody", "missing"] {
        let dir = f
            .layout
            .task_meta(&TaskKey::new("fw", task))
            .dir()
            .join("image");
        assert!(!dir.exists(), "{} is left", dir.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_symlink_where_the_sandbox_goes_is_refused() {
    use crate::images::testing::E;
    let mut f = fixture();
    let extra = [E::Dir("elsewhere", 0o755), E::Symlink("mnt", "/elsewhere")];
    let Some(store) = tiny_image(f.dir.path(), "evil", &extra) else {
        return;
    };
    with_store(&mut f, store);
    let status = run_to_end(
        &f,
        in_image(spec(&f, "evil", "cpus:0.1;mem:32", "true"), "evil"),
    )
    .await;
    assert_eq!(
        (status.state, status.reason),
        (TaskState::TaskFailed, Reason::ContainerLaunchFailed),
        "{status:?}"
    );
    assert!(status.message.contains("symlink"), "{}", status.message);
    assert_eq!(mounts_under(f.dir.path()), Vec::<String>::new());
}

fn interfaces(proc_net_dev: &str) -> Vec<String> {
    proc_net_dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|i| i.trim().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_network_has_only_loopback_and_the_host_network_is_the_hosts() {
    let f = fixture();
    let mut s = spec(&f, "isolated", "cpus:0.1", "cat /proc/net/dev");
    s.task.container.as_mut().unwrap().network = container_info::Network::Isolated as i32;
    let status = run_to_end(&f, s).await;
    assert_eq!(status.state, TaskState::TaskFinished, "{status:?}");
    assert_eq!(interfaces(&output(&f, "isolated", "stdout")), ["lo"]);

    let status = run_to_end(&f, spec(&f, "host", "cpus:0.1", "cat /proc/net/dev")).await;
    assert_eq!(status.state, TaskState::TaskFinished, "{status:?}");
    let host = std::fs::read_to_string("/proc/net/dev").unwrap();
    assert_eq!(interfaces(&output(&f, "host", "stdout")), interfaces(&host));

    // Loopback is up in the isolated namespace: a server and a client meet on it.
    if Path::new("/bin/busybox").exists() {
        // The server's stdin stays open (an EOF there would end it early); the client
        // retries until the server listens, and the task waits for what arrived.
        let script = "sleep 30 | busybox nc -l -p 7777 > got & \
                      for i in $(seq 50); do echo hello | busybox nc 127.0.0.1 7777 && break; \
                      sleep 0.1; done; \
                      for i in $(seq 50); do [ -s got ] && break; sleep 0.1; done; cat got";
        let mut s = spec(&f, "lo-up", "cpus:0.1", script);
        s.task.container.as_mut().unwrap().network = container_info::Network::Isolated as i32;
        let status = run_to_end(&f, s).await;
        assert_eq!(
            (status.state, output(&f, "lo-up", "stdout")),
            (TaskState::TaskFinished, "hello\n".to_string()),
            "{}",
            output(&f, "lo-up", "stderr")
        );
    } else {
        eprintln!("loopback check skipped: /bin/busybox (busybox-static) is not installed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smallest_memory_limit_still_runs_a_shell() {
    let f = fixture();
    let status = run_to_end(
        &f,
        spec(
            &f,
            "small",
            &format!("cpus:0.1;mem:{}", cgroups::MIN_MEM_MB),
            "echo ok",
        ),
    )
    .await;
    assert_eq!(status.state, TaskState::TaskFinished, "{status:?}");
    assert_eq!(output(&f, "small", "stdout"), "ok\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_of_a_group_share_its_namespaces_and_volume_inside_an_image_too() {
    use std::os::unix::fs::MetadataExt;
    let mut f = fixture();
    let Some(store) = tiny_image(f.dir.path(), "tiny", &[]) else {
        return;
    };
    with_store(&mut f, store);
    let group_dir = f.dir.path().join("executors/fw/g");
    let shared = group_dir.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let (ipc, net) = holder::create(&group_dir.join("ns"), true).unwrap();
    // Unmounted even if an assertion below fails.
    struct Sweep(PathBuf);
    impl Drop for Sweep {
        fn drop(&mut self) {
            let _ = holder::destroy(&self.0);
        }
    }
    let _sweep = Sweep(group_dir.join("ns"));
    let group = TaskGroupLaunch {
        shared: shared.clone(),
        ipc_namespace: Some(ipc.clone()),
        net_namespace: net.clone(),
    };
    let ns = "echo ipc=$(/bin/busybox readlink /proc/self/ns/ipc) \
              net=$(/bin/busybox readlink /proc/self/ns/net)";

    let mut a = in_image(
        spec(
            &f,
            "in-image",
            "cpus:0.1;mem:32",
            &format!("{ns}; echo from-image > /mnt/sandbox/shared/msg"),
        ),
        "tiny",
    );
    a.task.command.as_mut().unwrap().user = "root".into();
    a.group = Some(group.clone());
    let status = run_to_end(&f, a).await;
    assert_eq!(
        status.state,
        TaskState::TaskFinished,
        "{status:?} {}",
        output(&f, "in-image", "stderr")
    );
    // The holder's mounts are not copied into the container (they would pin the group's
    // namespaces past its teardown).
    let mut b = spec(
        &f,
        "plain",
        "cpus:0.1;mem:32",
        &format!("{ns}; cat shared/msg; echo nsfs=$(grep -c ' - nsfs ' /proc/self/mountinfo)"),
    );
    b.group = Some(group);
    let status = run_to_end(&f, b).await;
    assert_eq!(
        status.state,
        TaskState::TaskFinished,
        "{status:?} {}",
        output(&f, "plain", "stderr")
    );

    let (a_out, b_out) = (
        output(&f, "in-image", "stdout"),
        output(&f, "plain", "stdout"),
    );
    let expected = format!(
        "ipc=ipc:[{}] net=net:[{}]",
        std::fs::metadata(&ipc).unwrap().ino(),
        std::fs::metadata(net.as_ref().unwrap()).unwrap().ino()
    );
    assert_eq!(a_out.lines().next(), Some(expected.as_str()), "{a_out}");
    assert_eq!(b_out.lines().next(), Some(expected.as_str()), "{b_out}");
    assert_eq!(b_out.lines().nth(1), Some("from-image"), "{b_out}");
    assert_eq!(b_out.lines().nth(2), Some("nsfs=0"), "{b_out}");
    assert!(std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains(" - nsfs "));
    assert_eq!(
        std::fs::read_to_string(shared.join("msg")).unwrap(),
        "from-image\n"
    );

    // The volume was mounted in the containers only; with the holder gone nothing of the
    // group stays mounted on the host.
    holder::destroy(&group_dir.join("ns")).unwrap();
    assert_eq!(mounts_under(f.dir.path()), Vec::<String>::new());
}
