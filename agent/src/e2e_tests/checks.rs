//! Checks against the whole agent (fake master, real supervisors and containers): what a
//! framework sees of health checks, check results and TASK_KILLING.

use super::*;
use pb::check_info::Type as CheckType;
use pb::container_info::Type;

fn command_check(script: &str) -> pb::CheckInfo {
    pb::CheckInfo {
        r#type: CheckType::Command as i32,
        command: Some(pb::CommandInfo {
            value: script.into(),
            shell: true,
            ..Default::default()
        }),
        delay_seconds: 0.1,
        interval_seconds: 0.1,
        timeout_seconds: 20.0,
        ..Default::default()
    }
}

fn health(check: pb::CheckInfo, failures: u32) -> pb::HealthCheck {
    pb::HealthCheck {
        check: Some(check),
        // Tiny but not zero (zero means the 10 s default).
        grace_period_seconds: 0.01,
        consecutive_failures: failures,
    }
}

fn task(id: &str, script: &str, kind: Type) -> pb::TaskInfo {
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
        container: Some(pb::ContainerInfo {
            r#type: kind as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn run(task: pb::TaskInfo, capabilities: Vec<i32>) -> Msg {
    Msg::RunTask(pb::master_message::RunTask {
        framework_id: Some(FrameworkId::new("fw")),
        framework_info: Some(pb::FrameworkInfo {
            name: "test".into(),
            capabilities,
            ..Default::default()
        }),
        task: Some(task),
    })
}

fn kill(id: &str, grace: f64) -> Msg {
    Msg::KillTask(pb::master_message::KillTask {
        framework_id: Some(FrameworkId::new("fw")),
        task_id: Some(TaskId::new(id)),
        kill_policy: Some(pb::KillPolicy {
            grace_period_seconds: grace,
        }),
    })
}

/// Updates until (and including) the first terminal one; bounded by `acked_update`'s
/// own timeout and a count.
async fn until_terminal(master: &mut Master) -> Vec<pb::TaskStatus> {
    let mut seen = Vec::new();
    for _ in 0..50 {
        // Pings keep `acked_update` from timing out: bounded here.
        let u = tokio::time::timeout(Duration::from_secs(120), master.acked_update())
            .await
            .expect("no terminal update came");
        let done = drover_proto::states::is_terminal(state_of(&u));
        seen.push(u);
        if done {
            return seen;
        }
    }
    panic!("no terminal update among {seen:?}");
}

fn linux_available() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() == 0 };
    root && crate::containerizer::linux::cgroups::Hierarchies::detect()
        .is_ok_and(|h| h.usable().is_ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_health_check_kills_its_task_with_the_right_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = Master::start().await;
    let agent = start_agent(
        &master.addr,
        dir.path(),
        &["--docker-socket", "/nonexistent/docker.sock"],
    )
    .await;
    master.register().await;

    let mut t = task("sick", "exec sleep 1000", Type::Process);
    t.health_check = Some(health(command_check("exit 7"), 2));
    // No TASK_KILLING_STATE capability: a health-check kill reports KILLING anyway.
    master.send(2, run(t, vec![]));
    let seen = until_terminal(&mut master).await;
    let states: Vec<TaskState> = seen.iter().map(state_of).collect();
    assert_eq!(
        states,
        [
            TaskState::TaskStarting,
            TaskState::TaskRunning,
            TaskState::TaskRunning,
            TaskState::TaskKilling,
            TaskState::TaskKilled
        ],
        "{seen:?}"
    );
    assert_eq!(seen[1].healthy, None);
    assert_eq!(seen[2].healthy, Some(false));
    assert_eq!(seen[2].reason, Reason::TaskHealthCheckStatusUpdated as i32);
    assert_eq!(seen[3].reason, Reason::TaskUnhealthy as i32);
    let killed = &seen[4];
    assert_eq!(killed.reason, Reason::TaskUnhealthy as i32);
    assert_eq!(killed.healthy, Some(false));
    assert!(
        killed
            .message
            .contains("health check (command 'exit 7') failed 2 time(s) in a row")
            && killed.message.contains("exit status 7"),
        "{}",
        killed.message
    );
    assert!(agent.stop().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_with_the_killing_capability_reports_killing_and_honours_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = Master::start().await;
    let agent = start_agent(
        &master.addr,
        dir.path(),
        &["--docker-socket", "/nonexistent/docker.sock"],
    )
    .await;
    master.register().await;
    let killing = pb::framework_info::Capability::TaskKillingState as i32;
    let mut kinds = vec![Type::Process];
    if linux_available() {
        kinds.push(Type::Linux);
    }
    for kind in kinds {
        let id = format!("graceful-{}", kind.as_str_name().to_lowercase());
        // The handler runs only if the task gets SIGTERM and time to act on it.
        let script = "trap 'echo got TERM; exit 0' TERM; echo up; while true; do sleep 0.05; done";
        master.send(2, run(task(&id, script, kind), vec![killing]));
        assert_eq!(
            state_of(&master.acked_update().await),
            TaskState::TaskStarting
        );
        assert_eq!(
            state_of(&master.acked_update().await),
            TaskState::TaskRunning
        );
        let stdout = agent
            .state()
            .await
            .tasks
            .into_iter()
            .find(|t| t.task_id.as_ref().is_some_and(|i| i.value == id))
            .map(|t| std::path::PathBuf::from(t.sandbox).join("stdout"))
            .unwrap();
        // The trap must be in place before the kill.
        for _ in 0..600 {
            if std::fs::read_to_string(&stdout)
                .unwrap_or_default()
                .contains("up")
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        master.send(2, kill(&id, 30.0));
        let seen = until_terminal(&mut master).await;
        let states: Vec<TaskState> = seen.iter().map(state_of).collect();
        assert_eq!(
            states,
            [TaskState::TaskKilling, TaskState::TaskKilled],
            "{kind:?}"
        );
        assert_eq!(seen[1].reason, Reason::KilledByFramework as i32);
        let out = std::fs::read_to_string(&stdout).unwrap();
        assert!(out.contains("got TERM"), "{kind:?}: {out:?}");
    }

    // Without the capability, no KILLING.
    master.send(
        2,
        run(task("plain", "exec sleep 1000", Type::Process), vec![]),
    );
    assert_eq!(
        state_of(&master.acked_update().await),
        TaskState::TaskStarting
    );
    assert_eq!(
        state_of(&master.acked_update().await),
        TaskState::TaskRunning
    );
    master.send(2, kill("plain", 1.0));
    let seen = until_terminal(&mut master).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(state_of(&seen[0]), TaskState::TaskKilled);
    assert!(agent.stop().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_check_runs_inside_the_linux_tasks_namespaces_and_cgroups() {
    if !linux_available() {
        eprintln!("skipped: linux containers need root and cgroups");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut master = Master::start().await;
    let agent = start_agent(
        &master.addr,
        dir.path(),
        &["--docker-socket", "/nonexistent/docker.sock"],
    )
    .await;
    master.register().await;
    // The task mounts a tmpfs only its own mount namespace sees, and records its PID
    // namespace and cgroups; the check passes only where all three match.
    let script = "mkdir -p private && mount -t tmpfs none private && touch private/flag \
                  && readlink /proc/self/ns/pid > pidns && cat /proc/self/cgroup > cgroups \
                  && touch ready; exec sleep 1000";
    let check = "test -f private/flag && test -f ready \
                 && [ \"$(readlink /proc/self/ns/pid)\" = \"$(cat pidns)\" ] \
                 && cat /proc/self/cgroup | cmp -s - cgroups";
    let mut t = task("inside", script, Type::Linux);
    t.health_check = Some(pb::HealthCheck {
        check: Some(command_check(check)),
        // Until the task wrote its files.
        grace_period_seconds: 600.0,
        consecutive_failures: 1,
    });
    // The general check is the same command: its result rides on `check_status`.
    t.check = Some(command_check(check));
    master.send(2, run(t, vec![]));
    assert_eq!(
        state_of(&master.acked_update().await),
        TaskState::TaskStarting
    );
    assert_eq!(
        state_of(&master.acked_update().await),
        TaskState::TaskRunning
    );
    let mut healthy = None;
    let mut exit_codes = Vec::new();
    for _ in 0..20 {
        // Pings keep `acked_update` from timing out: bounded here.
        let u = tokio::time::timeout(Duration::from_secs(120), master.acked_update())
            .await
            .expect("no health verdict came");
        assert_eq!(state_of(&u), TaskState::TaskRunning, "{u:?}");
        if u.reason == Reason::TaskCheckStatusUpdated as i32 {
            let cs = u.check_status.unwrap();
            assert_eq!(cs.r#type, CheckType::Command as i32);
            // An attempt that timed out or could not start (a loaded machine, the task
            // still starting) reports no exit code, by design: a failure like any other.
            exit_codes.push(cs.exit_code);
        }
        if u.reason == Reason::TaskHealthCheckStatusUpdated as i32 {
            healthy = u.healthy;
            break;
        }
    }
    assert_eq!(healthy, Some(true));
    // The task's private mount is invisible from the host: the check really ran inside.
    let sandbox = agent.state().await.tasks[0].sandbox.clone();
    let sandbox = std::path::Path::new(&sandbox);
    assert!(sandbox.join("ready").exists());
    assert!(!sandbox.join("private/flag").exists());
    // Every result the general check reported until then; the last is a success.
    assert!(
        exit_codes.iter().all(|c| *c != Some(0)) || exit_codes.last() == Some(&Some(0)),
        "{exit_codes:?}"
    );

    master.send(2, kill("inside", 1.0));
    let seen = until_terminal(&mut master).await;
    let last = seen.last().unwrap();
    assert_eq!(state_of(last), TaskState::TaskKilled);
    // The latest health rides on later updates too.
    assert_eq!(last.healthy, Some(true));
    assert!(agent.stop().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_start_again_for_tasks_recovered_after_an_agent_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = Master::start().await;
    let args = ["--docker-socket", "/nonexistent/docker.sock"];
    let agent = start_agent(&master.addr, dir.path(), &args).await;
    master.register().await;
    let mut t = task("steady", "exec sleep 1000", Type::Process);
    t.health_check = Some(health(command_check("true"), 1));
    master.send(2, run(t, vec![]));
    assert_eq!(
        state_of(&master.acked_update().await),
        TaskState::TaskStarting
    );
    assert_eq!(
        state_of(&master.acked_update().await),
        TaskState::TaskRunning
    );
    let first = master.acked_update().await;
    assert_eq!(
        (first.healthy, first.reason),
        (Some(true), Reason::TaskHealthCheckStatusUpdated as i32)
    );

    // The task outlives the agent; the next agent checks it again from scratch, so its
    // first success is news again.
    agent.stop().await.unwrap();
    let agent = start_agent(&master.addr, dir.path(), &args).await;
    master.register().await;
    let again = master.acked_update().await;
    assert_eq!(state_of(&again), TaskState::TaskRunning);
    assert_eq!(
        (again.healthy, again.reason),
        (Some(true), Reason::TaskHealthCheckStatusUpdated as i32)
    );
    assert_ne!(again.uuid, first.uuid);
    master.send(2, kill("steady", 1.0));
    let seen = until_terminal(&mut master).await;
    assert_eq!(state_of(seen.last().unwrap()), TaskState::TaskKilled);
    assert!(agent.stop().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_check_of_a_linux_task_with_its_own_network_runs_inside_it() {
    if !linux_available() || !std::path::Path::new("/bin/busybox").exists() {
        eprintln!("skipped: needs root, cgroups and /bin/busybox");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut master = Master::start().await;
    let agent = start_agent(
        &master.addr,
        dir.path(),
        &["--docker-socket", "/nonexistent/docker.sock"],
    )
    .await;
    master.register().await;
    // Free on the host; the task listens on it only in its own network namespace.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut t = task(
        "listener",
        &format!("exec /bin/busybox httpd -f -p 127.0.0.1:{port} -h ."),
        Type::Linux,
    );
    t.container.as_mut().unwrap().network = pb::container_info::Network::Isolated as i32;
    t.health_check = Some(pb::HealthCheck {
        check: Some(pb::CheckInfo {
            r#type: CheckType::Tcp as i32,
            tcp: Some(pb::check_info::Tcp { port: port.into() }),
            delay_seconds: 0.1,
            interval_seconds: 0.1,
            timeout_seconds: 20.0,
            ..Default::default()
        }),
        // Until the server listens.
        grace_period_seconds: 600.0,
        consecutive_failures: 1,
    });
    master.send(2, run(t, vec![]));
    assert_eq!(
        state_of(&master.acked_update().await),
        TaskState::TaskStarting
    );
    assert_eq!(
        state_of(&master.acked_update().await),
        TaskState::TaskRunning
    );
    let verdict = tokio::time::timeout(Duration::from_secs(120), master.acked_update())
        .await
        .expect("no health verdict came");
    assert_eq!(
        (verdict.healthy, verdict.reason),
        (Some(true), Reason::TaskHealthCheckStatusUpdated as i32),
        "{verdict:?}"
    );
    // Nobody listens on the host's loopback: the check connected inside the task's.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    master.send(2, kill("listener", 1.0));
    let seen = until_terminal(&mut master).await;
    assert_eq!(state_of(seen.last().unwrap()), TaskState::TaskKilled);
    assert!(agent.stop().await.is_ok());
}
