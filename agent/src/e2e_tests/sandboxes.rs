//! Sandboxes through the whole agent against the fake master: disk limits enforced,
//! output rotated, tasks run as their framework's user, sandboxes garbage-collected.

use super::*;

fn task_msg(id: &str, resources: &str, script: &str, user: &str) -> Msg {
    Msg::RunTask(pb::master_message::RunTask {
        framework_id: Some(FrameworkId::new("fw")),
        framework_info: Some(pb::FrameworkInfo {
            name: "sandboxes".into(),
            user: user.into(),
            ..Default::default()
        }),
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
            ..Default::default()
        }),
    })
}

/// The next acknowledged update of `task`, skipping other tasks' updates.
async fn update_of(master: &mut Master, task: &str) -> pb::TaskStatus {
    loop {
        let s = master.acked_update().await;
        if task_of(&s) == task {
            return s;
        }
    }
}

/// Acknowledges updates until `task` reaches a terminal state; returns that update.
/// Bounded: pings keep the fake master's own timeout from ever firing.
async fn terminal_of(master: &mut Master, task: &str) -> pb::TaskStatus {
    let wait = async {
        loop {
            let s = update_of(master, task).await;
            if drover_proto::states::is_terminal(state_of(&s)) {
                return s;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(300), wait)
        .await
        .unwrap_or_else(|_| panic!("task {task} did not end within five minutes"))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

async fn list(agent: &Running, task: &str) -> Result<pb::ListFilesResponse, Status> {
    agent
        .api()
        .await
        .list_files(pb::ListFilesRequest {
            executor_id: None,
            framework_id: Some(FrameworkId::new("fw")),
            task_id: Some(TaskId::new(task)),
            path: String::new(),
        })
        .await
        .map(Response::into_inner)
}

/// Polls (bounded in count and time) until `f` gives a value.
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    f: impl FnMut() -> F,
) -> T {
    drover_testkit::eventually(what, Duration::from_secs(60), Duration::from_millis(100), f).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_over_its_disk_is_killed_and_usage_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = Master::start().await;
    let agent = start_agent(
        &master.addr,
        dir.path(),
        &["--disk-check-interval-secs", "0.2"],
    )
    .await;
    master.register().await;

    // Within its disk: measured and reported with its limit.
    master.send(
        2,
        task_msg("small", "cpus:0.1;mem:32;disk:10", "exec sleep 60", ""),
    );
    assert_eq!(
        state_of(&update_of(&mut master, "small").await),
        TaskState::TaskStarting
    );
    assert_eq!(
        state_of(&update_of(&mut master, "small").await),
        TaskState::TaskRunning
    );
    let usage = eventually("a disk measurement of 'small'", || async {
        agent
            .state()
            .await
            .tasks
            .into_iter()
            .find(|t| t.task_id.as_ref().unwrap().value == "small")
            .and_then(|t| t.usage)
            .filter(|u| u.disk_limit_bytes > 0)
    })
    .await;
    assert_eq!(usage.disk_limit_bytes, 10 << 20);
    assert!(
        usage.disk_used_bytes > 0 && usage.disk_used_bytes < 1 << 20,
        "{usage:?}"
    );

    // Over it: 4 MB written into a 1 MB disk.
    master.send(
        2,
        task_msg(
            "big",
            "cpus:0.1;mem:32;disk:1",
            "dd if=/dev/zero of=big bs=1M count=4 2>/dev/null; exec sleep 60",
            "",
        ),
    );
    let failed = terminal_of(&mut master, "big").await;
    assert_eq!(state_of(&failed), TaskState::TaskFailed, "{failed:?}");
    assert_eq!(
        failed.reason,
        Reason::ContainerLimitationDisk as i32,
        "{failed:?}"
    );
    assert!(
        failed.message.contains("over its disk resource of 1.0 MB"),
        "{}",
        failed.message
    );
    assert!(failed.message.contains("MB on disk"), "{}", failed.message);

    master.send(
        2,
        Msg::KillTask(pb::master_message::KillTask {
            framework_id: Some(FrameworkId::new("fw")),
            task_id: Some(TaskId::new("small")),
            kill_policy: None,
        }),
    );
    assert_eq!(
        state_of(&terminal_of(&mut master, "small").await),
        TaskState::TaskKilled
    );
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_rotates_and_the_files_api_shows_the_rotated_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = Master::start().await;
    let agent = start_agent(
        &master.addr,
        dir.path(),
        &[
            "--disk-check-interval-secs",
            "0.2",
            "--log-max-size-mb",
            "1",
            "--log-max-files",
            "2",
        ],
    )
    .await;
    master.register().await;
    // Three rounds of 1.5 MB, each waiting until its output was rotated (bounded).
    let script = "for r in 1 2 3; do \
                    yes round$r | head -c 1500000; n=0; \
                    until head -c 64 stdout.1 2>/dev/null | grep -q round$r; do \
                      n=$((n+1)); [ $n -gt 1200 ] && exit 7; sleep 0.1; \
                    done; \
                  done; echo done";
    master.send(2, task_msg("chatty", "cpus:0.1;mem:32", script, ""));
    let ended = terminal_of(&mut master, "chatty").await;
    assert_eq!(state_of(&ended), TaskState::TaskFinished, "{ended:?}");

    let files = list(&agent, "chatty").await.unwrap();
    let size_of = |name: &str| {
        files
            .entries
            .iter()
            .find(|e| e.path == name)
            .map(|e| e.size)
    };
    // A rotation may catch a round half-written; what is left of it stays in stdout.
    let bounded = |n: Option<u64>| n.is_some_and(|n| n > 0 && n <= 1 << 20);
    assert!(bounded(size_of("stdout")), "{files:?}");
    assert!(bounded(size_of("stdout.1")), "{files:?}");
    assert!(bounded(size_of("stdout.2")), "{files:?}");
    assert_eq!(
        size_of("stdout.3"),
        None,
        "at most --log-max-files: {files:?}"
    );
    let newest = agent
        .api()
        .await
        .read_file(pb::ReadFileRequest {
            executor_id: None,
            framework_id: Some(FrameworkId::new("fw")),
            task_id: Some(TaskId::new("chatty")),
            path: "stdout.1".into(),
            offset: 0,
            length: 64,
        })
        .await
        .unwrap()
        .into_inner();
    let newest = String::from_utf8_lossy(&newest.data);
    assert!(newest.contains("round3"), "{newest}");
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_run_as_their_frameworks_user_and_an_unknown_user_fails() {
    if !is_root() {
        eprintln!("skipped: switching users needs an agent running as root");
        return;
    }
    let Some((nobody_uid, _, _)) = crate::containerizer::process::lookup_user("nobody").unwrap()
    else {
        eprintln!("skipped: this machine has no user 'nobody'");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut master = Master::start().await;
    let agent = start_agent(&master.addr, dir.path(), &[]).await;
    master.register().await;

    master.send(
        2,
        task_msg(
            "as-nobody",
            "cpus:0.1;mem:32",
            "id -u; stat -c %U .",
            "nobody",
        ),
    );
    let ended = terminal_of(&mut master, "as-nobody").await;
    assert_eq!(state_of(&ended), TaskState::TaskFinished, "{ended:?}");
    let sandbox = dir.path().join("sandboxes/fw/as-nobody");
    assert_eq!(
        std::fs::read_to_string(sandbox.join("stdout")).unwrap(),
        format!("{nobody_uid}\nnobody\n")
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&sandbox).unwrap().uid(), nobody_uid);

    // Root (as the SDK sends for a framework run by root) means no switch.
    master.send(2, task_msg("as-root", "cpus:0.1;mem:32", "id -u", "root"));
    let ended = terminal_of(&mut master, "as-root").await;
    assert_eq!(state_of(&ended), TaskState::TaskFinished, "{ended:?}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("sandboxes/fw/as-root/stdout")).unwrap(),
        "0\n"
    );

    master.send(
        2,
        task_msg("as-ghost", "cpus:0.1;mem:32", "true", "no-such-user-drover"),
    );
    let failed = terminal_of(&mut master, "as-ghost").await;
    assert_eq!(state_of(&failed), TaskState::TaskFailed, "{failed:?}");
    assert_eq!(failed.reason, Reason::TaskUserUnknown as i32, "{failed:?}");
    assert!(
        failed.message.contains("no-such-user-drover"),
        "{}",
        failed.message
    );
    agent.stop().await.unwrap();

    // --switch-user false: the framework's user is ignored.
    let dir = tempfile::tempdir().unwrap();
    let mut master = Master::start().await;
    let agent = start_agent(&master.addr, dir.path(), &["--switch-user", "false"]).await;
    master.register().await;
    master.send(2, task_msg("kept", "cpus:0.1;mem:32", "id -u", "nobody"));
    let ended = terminal_of(&mut master, "kept").await;
    assert_eq!(state_of(&ended), TaskState::TaskFinished, "{ended:?}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("sandboxes/fw/kept/stdout")).unwrap(),
        "0\n"
    );
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxes_are_collected_after_the_gc_delay() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = Master::start().await;
    let agent = start_agent(&master.addr, dir.path(), &["--gc-delay-secs", "1"]).await;
    master.register().await;
    master.send(2, task_msg("brief", "cpus:0.1;mem:32", "echo hi", ""));
    let ended = terminal_of(&mut master, "brief").await;
    assert_eq!(state_of(&ended), TaskState::TaskFinished, "{ended:?}");
    let sandbox = dir.path().join("sandboxes/fw/brief");
    let meta = dir.path().join("meta/frameworks/fw/tasks/brief");
    // The acknowledgement was sent; the marker follows it.
    eventually("the completion marker", || {
        let marker = meta.join(crate::gc::COMPLETED_MARKER);
        async move { marker.exists().then_some(()) }
    })
    .await;
    eventually("the sandbox to be collected", || {
        let (sandbox, meta) = (sandbox.clone(), meta.clone());
        async move { (!sandbox.exists() && !meta.exists()).then_some(()) }
    })
    .await;
    let err = list(&agent, "brief").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    agent.stop().await.unwrap();
}

/// The schedule lives on disk: a task completed under an agent with a long delay is
/// collected by the next agent (same work dir, short delay) from the recorded time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gc_schedule_survives_an_agent_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = Master::start().await;
    let agent = start_agent(&master.addr, dir.path(), &["--gc-delay-secs", "3600"]).await;
    master.register().await;
    master.send(2, task_msg("kept", "cpus:0.1;mem:32", "echo hi", ""));
    let ended = terminal_of(&mut master, "kept").await;
    assert_eq!(state_of(&ended), TaskState::TaskFinished, "{ended:?}");
    let sandbox = dir.path().join("sandboxes/fw/kept");
    let marker = dir
        .path()
        .join("meta/frameworks/fw/tasks/kept")
        .join(crate::gc::COMPLETED_MARKER);
    eventually("the completion marker", || {
        let marker = marker.clone();
        async move { marker.exists().then_some(()) }
    })
    .await;
    agent.stop().await.unwrap();
    assert!(sandbox.join("stdout").exists(), "an hour is not up");

    let agent = start_agent(&master.addr, dir.path(), &["--gc-delay-secs", "1"]).await;
    master.register().await;
    eventually("the restarted agent to collect the sandbox", || {
        let sandbox = sandbox.clone();
        async move { (!sandbox.exists()).then_some(()) }
    })
    .await;
    agent.stop().await.unwrap();
}

/// The files API test of a task that swaps symlinks in (see `files_api::tests`), with the
/// swapping done by a real task of a real agent: nothing outside the sandbox leaks, the
/// task ends normally when told to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_swapping_symlinks_in_cannot_make_the_agent_leak() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), "TOPSECRET outside the sandbox").unwrap();
    std::fs::write(outside.join("outside-only-name"), "TOPSECRET").unwrap();
    let work = dir.path().join("work");
    let mut master = Master::start().await;
    let agent = start_agent(&master.addr, &work, &[]).await;
    master.register().await;
    let script = crate::files_api::tests::swap_script(&outside);
    master.send(2, task_msg("swapper", "cpus:0.1;mem:32", &script, ""));
    assert_eq!(
        state_of(&update_of(&mut master, "swapper").await),
        TaskState::TaskStarting
    );
    assert_eq!(
        state_of(&update_of(&mut master, "swapper").await),
        TaskState::TaskRunning
    );
    let mut client = agent.api().await;
    crate::files_api::tests::hammer_swaps(&mut client, "fw", "swapper").await;
    std::fs::write(work.join("sandboxes/fw/swapper/stop"), b"").unwrap();
    let ended = terminal_of(&mut master, "swapper").await;
    assert_eq!(state_of(&ended), TaskState::TaskFinished, "{ended:?}");
    agent.stop().await.unwrap();
}
