//! Custom executors end to end: a real master, a real agent, and a framework (in this test
//! process, on the public SDK) whose tasks run on `drover-example-executor`, the example
//! custom executor built on the SDK's `Executor` trait.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_sdk::executor::custom_executor;
use drover_sdk::proto::pb::{self, task_status::Reason, task_status::Source, TaskState};
use drover_sdk::proto::states::is_terminal;
use drover_sdk::proto::{AgentId, ExecutorId, Resources, TaskId};
use drover_sdk::{async_trait, Driver, Scheduler, SchedulerConfig, TaskBuilder};
use drover_tests::{wait_until, Cluster, Timing};

#[derive(Default)]
struct Seen {
    updates: Vec<pb::TaskStatus>,
    /// Messages from executors: (agent, executor, data).
    messages: Vec<(AgentId, ExecutorId, Vec<u8>)>,
    driver: Option<Driver>,
}

impl Seen {
    /// Every terminal update per task (duplicates included: delivery is at least once).
    fn terminal(&self) -> HashMap<String, Vec<pb::TaskStatus>> {
        let mut out: HashMap<String, Vec<pb::TaskStatus>> = HashMap::new();
        for u in &self.updates {
            if is_terminal(u.state()) {
                let id = u.task_id.clone().unwrap_or_default().to_string();
                out.entry(id).or_default().push(u.clone());
            }
        }
        out
    }
}

/// Launches its tasks on the first offer, and kills one task once it is RUNNING.
struct Fw {
    tasks: Vec<pb::TaskInfo>,
    kill_when_running: Option<TaskId>,
    seen: Arc<Mutex<Seen>>,
}

#[async_trait]
impl Scheduler for Fw {
    async fn offers(&mut self, driver: &Driver, offers: Vec<pb::Offer>) {
        self.seen.lock().unwrap().driver = Some(driver.clone());
        let mut ids: Vec<_> = offers.iter().filter_map(|o| o.id.clone()).collect();
        if !self.tasks.is_empty() && !ids.is_empty() {
            let agent = offers[0].agent_id.clone();
            let tasks = std::mem::take(&mut self.tasks)
                .into_iter()
                .map(|t| pb::TaskInfo {
                    agent_id: agent.clone(),
                    ..t
                })
                .collect();
            driver
                .launch(vec![ids.remove(0)], tasks)
                .await
                .expect("launch");
        }
        let _ = driver.decline(ids, Some(3600.0)).await;
    }

    async fn update(&mut self, driver: &Driver, status: pb::TaskStatus) {
        if status.state() == TaskState::TaskRunning && status.task_id == self.kill_when_running {
            if let Some(id) = self.kill_when_running.take() {
                driver.kill(id, None).await.expect("kill");
            }
        }
        self.seen.lock().unwrap().updates.push(status);
    }

    async fn message(
        &mut self,
        _driver: &Driver,
        agent_id: AgentId,
        executor_id: ExecutorId,
        data: Vec<u8>,
    ) {
        self.seen
            .lock()
            .unwrap()
            .messages
            .push((agent_id, executor_id, data));
    }
}

/// Runs the framework on its own thread and runtime until it tears down.
fn start_framework(cluster: &Cluster, name: &str, fw: Fw) -> std::thread::JoinHandle<()> {
    let masters = drover_sdk::parse_masters(&cluster.master_list()).expect("masters");
    let name = name.to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async move {
            let config = SchedulerConfig::builder(name)
                .masters(masters)
                .build()
                .expect("config");
            let _ = drover_sdk::run(config, fw).await;
        });
    })
}

fn teardown(seen: &Arc<Mutex<Seen>>, thread: std::thread::JoinHandle<()>) {
    let driver = seen.lock().unwrap().driver.clone();
    if let Some(driver) = driver {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _ = rt.block_on(driver.teardown());
    }
    wait_until(
        "the framework to end",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || thread.is_finished().then_some(()),
    );
}

/// Waits until `n` tasks have a terminal update; returns them (see [`Seen::terminal`]).
fn wait_for_terminal(
    seen: &Arc<Mutex<Seen>>,
    n: usize,
    limit: Duration,
) -> HashMap<String, Vec<pb::TaskStatus>> {
    wait_until(
        &format!("{n} task(s) to end"),
        limit,
        Duration::from_millis(200),
        || {
            let t = seen.lock().unwrap().terminal();
            (t.len() >= n).then_some(t)
        },
    )
}

/// Waits until every task named was reported RUNNING; returns the agent they run on.
fn wait_for_running(seen: &Arc<Mutex<Seen>>, tasks: &[&str]) -> AgentId {
    wait_until(
        &format!("{tasks:?} to run"),
        Duration::from_secs(120),
        Duration::from_millis(200),
        || {
            let seen = seen.lock().unwrap();
            let running: Vec<&pb::TaskStatus> = seen
                .updates
                .iter()
                .filter(|u| u.state() == TaskState::TaskRunning)
                .filter(|u| tasks.contains(&u.task_id.as_ref().map_or("", |t| t.as_str())))
                .collect();
            let all = tasks.iter().all(|id| {
                running
                    .iter()
                    .any(|u| u.task_id.as_ref().map(|t| t.as_str()) == Some(*id))
            });
            all.then(|| running[0].agent_id.clone().unwrap_or_default())
        },
    )
}

/// The code a refused call answered with.
fn refused_with(r: Result<(), drover_sdk::SdkError>) -> Option<tonic::Code> {
    r.unwrap_err().status().map(|s| s.code())
}

/// Waits until executor `id`'s container has ended and nothing it started runs; returns
/// its meta directory and its sandbox.
fn wait_for_executor_gone(work_dir: &Path, id: &str) -> (PathBuf, PathBuf) {
    let name = format!("executor+{id}");
    let meta = find_dir(
        &work_dir.join("meta").join("frameworks"),
        &format!("tasks/{name}"),
    )
    .expect("the executor's meta directory");
    let sandbox = find_dir(&work_dir.join("sandboxes"), &name).expect("the executor's sandbox");
    wait_until(
        "the executor's container to end",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || meta.join("exit.json").exists().then_some(()),
    );
    wait_until(
        "no process of the executor to be left",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || processes_mentioning(&sandbox).is_empty().then_some(()),
    );
    (meta, sandbox)
}

/// The one directory matching `<root>/*/<name>`.
fn find_dir(root: &Path, name: &str) -> Option<PathBuf> {
    std::fs::read_dir(root)
        .ok()?
        .flatten()
        .map(|e| e.path().join(name))
        .find(|p| p.exists())
}

/// Processes whose environment mentions `path` (the executor and its tasks carry
/// `DROVER_SANDBOX=<its sandbox>`).
fn processes_mentioning(path: &Path) -> Vec<i32> {
    let needle = path.to_string_lossy().to_string();
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
                .filter(|pid| *pid != me)
                .filter(|pid| {
                    let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
                    String::from_utf8_lossy(&env).contains(&needle)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn task(id: &str, shell: &str, executor: &pb::ExecutorInfo) -> pb::TaskInfo {
    TaskBuilder::new(id)
        .shell(shell)
        .env("GREETING", "hello")
        .resources(&Resources::parse("cpus:0.1;mem:16").unwrap())
        .kill_grace_period(Duration::from_secs(1))
        .executor(executor.clone())
        .build()
}

#[test]
fn a_custom_executor_written_with_the_sdk_runs_tasks() {
    let mut cluster = Cluster::start(Timing::default());
    cluster.add_agent("cpus:2;mem:2048");
    cluster.wait_for_active_agents(1);
    let work_dir = cluster.agent_work_dir(0);

    let bin = cluster.bin("drover-example-executor");
    assert!(bin.exists(), "{} is missing", bin.display());
    let executor = custom_executor("ex-1", bin.display().to_string());
    let mut tasks: Vec<pb::TaskInfo> = (0..3)
        .map(|i| {
            task(
                &format!("done-{i}"),
                "echo \"$GREETING from $DROVER_TASK_ID\"",
                &executor,
            )
        })
        .collect();
    tasks.push(task("fails", "exit 3", &executor));
    tasks.push(task("long", "sleep 600", &executor));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let thread = start_framework(
        &cluster,
        "executors",
        Fw {
            tasks,
            kill_when_running: Some(TaskId::new("long")),
            seen: seen.clone(),
        },
    );

    let terminal = wait_for_terminal(&seen, 5, Duration::from_secs(180));
    for (id, updates) in &terminal {
        let states: Vec<TaskState> = updates.iter().map(|u| u.state()).collect();
        assert!(
            states.iter().all(|s| *s == states[0]),
            "task {id} ended in different ways: {states:?}"
        );
        let expected = match id.as_str() {
            "fails" => TaskState::TaskFailed,
            "long" => TaskState::TaskKilled,
            _ => TaskState::TaskFinished,
        };
        assert_eq!(states[0], expected, "task {id}: {:?}", updates[0]);
        let u = &updates[0];
        assert_eq!(
            u.source(),
            Source::Executor,
            "task {id} reported by its executor"
        );
        assert_eq!(
            u.executor_id.as_ref().map(|e| e.as_str()),
            Some("ex-1"),
            "task {id}"
        );
        match id.as_str() {
            "fails" => assert_eq!(u.exit_code, Some(3)),
            "long" => {}
            _ => assert_eq!(u.exit_code, Some(0)),
        }
    }
    {
        let seen = seen.lock().unwrap();
        for id in ["done-0", "done-1", "done-2", "fails", "long"] {
            assert!(
                seen.updates
                    .iter()
                    .any(|u| u.state() == TaskState::TaskRunning
                        && u.task_id.as_ref().map(|t| t.as_str()) == Some(id)),
                "task {id} was reported RUNNING"
            );
        }
    }

    // One executor ran them all, in its own sandbox, each task once.
    let sandbox =
        find_dir(&work_dir.join("sandboxes"), "executor+ex-1").expect("the executor's sandbox");
    for i in 0..3 {
        let out = std::fs::read_to_string(
            sandbox
                .join("tasks")
                .join(format!("done-{i}"))
                .join("stdout"),
        )
        .expect("task output");
        assert_eq!(
            out,
            format!("hello from done-{i}\n"),
            "task done-{i} ran once"
        );
    }

    // `drover logs` finds a custom executor's task's output in the executor's sandbox
    // (`tasks/<task id>/stdout`, where the example executor keeps it) ...
    let out = cluster.drover(&["logs", "done-1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from done-1\n");
    let out = cluster.drover(&["logs", "--follow", "done-2"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from done-2\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ... and, where the executor kept none for the task, shows the executor's own and
    // says so.
    std::fs::remove_file(sandbox.join("tasks").join("fails").join("stderr")).unwrap();
    let out = cluster.drover(&["logs", "--stderr", "fails"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("runs on custom executor 'ex-1'") && stderr.contains("executor's stderr"),
        "{stderr}"
    );

    // With its last task ended, the executor was shut down and exited; nothing it started
    // is left running.
    let (meta, _) = wait_for_executor_gone(&work_dir, "ex-1");
    let exit: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(meta.join("exit.json")).unwrap()).unwrap();
    assert_eq!(
        exit["killed"], false,
        "the executor exited by itself: {exit}"
    );
    // Every update was acknowledged and the agent forgot the tasks.
    wait_until(
        "the agent to forget the ended tasks",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || {
            cluster
                .agent_state(0)
                .is_some_and(|s| s.tasks.is_empty())
                .then_some(())
        },
    );
    teardown(&seen, thread);
}

#[test]
fn an_executor_that_never_subscribes_is_killed_and_its_tasks_fail() {
    let mut cluster = Cluster::start(Timing::default());
    cluster.add_agent_with(
        "cpus:2;mem:2048",
        &["--executor-registration-timeout-secs", "2"],
    );
    cluster.wait_for_active_agents(1);
    let work_dir = cluster.agent_work_dir(0);

    let executor = custom_executor("silent", "sleep 3600");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let thread = start_framework(
        &cluster,
        "silent-executor",
        Fw {
            tasks: vec![task("a", "true", &executor), task("b", "true", &executor)],
            kill_when_running: None,
            seen: seen.clone(),
        },
    );
    let terminal = wait_for_terminal(&seen, 2, Duration::from_secs(120));
    for (id, updates) in &terminal {
        let u = &updates[0];
        assert_eq!(u.state(), TaskState::TaskFailed, "task {id}: {u:?}");
        assert_eq!(
            u.reason(),
            Reason::ExecutorRegistrationTimeout,
            "task {id}: {u:?}"
        );
    }
    assert!(
        !seen
            .lock()
            .unwrap()
            .updates
            .iter()
            .any(|u| u.state() == TaskState::TaskRunning),
        "nothing ran"
    );
    let sandbox =
        find_dir(&work_dir.join("sandboxes"), "executor+silent").expect("the executor's sandbox");
    wait_until(
        "the executor to be killed",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || processes_mentioning(&sandbox).is_empty().then_some(()),
    );
    teardown(&seen, thread);
}

#[test]
fn executors_survive_an_agent_restart_and_report_each_state_once() {
    let mut cluster = Cluster::start(Timing::default());
    cluster.add_agent("cpus:2;mem:2048");
    cluster.wait_for_active_agents(1);
    let work_dir = cluster.agent_work_dir(0);
    let go = cluster.dir.path().join("go");

    let bin = cluster.bin("drover-example-executor");
    let executor = custom_executor("ex-r", bin.display().to_string());
    // Both tasks run until the test creates the file `go`.
    let wait = format!(
        "while [ ! -e {} ]; do sleep 0.1; done; echo \"$GREETING\"",
        go.display()
    );
    let seen = Arc::new(Mutex::new(Seen::default()));
    let thread = start_framework(
        &cluster,
        "executor-restart",
        Fw {
            tasks: vec![task("r-0", &wait, &executor), task("r-1", &wait, &executor)],
            kill_when_running: None,
            seen: seen.clone(),
        },
    );
    let running = |seen: &Seen| {
        seen.updates
            .iter()
            .filter(|u| u.state() == TaskState::TaskRunning)
            .map(|u| u.task_id.clone().unwrap_or_default())
            .collect::<std::collections::HashSet<_>>()
            .len()
    };
    wait_until(
        "both tasks to run",
        Duration::from_secs(120),
        Duration::from_millis(100),
        || (running(&seen.lock().unwrap()) == 2).then_some(()),
    );
    let sandbox =
        find_dir(&work_dir.join("sandboxes"), "executor+ex-r").expect("the executor's sandbox");
    let before = processes_mentioning(&sandbox);
    assert!(!before.is_empty(), "the executor runs");

    // kill -9 of the agent: the executor and its tasks keep running; the new agent finds
    // the executor again and the executor resubscribes by itself.
    cluster.kill_agent(0);
    std::fs::write(&go, b"").unwrap();
    cluster.start_agent(0);

    let terminal = wait_for_terminal(&seen, 2, Duration::from_secs(180));
    for (id, updates) in &terminal {
        assert!(
            updates.iter().all(|u| u.state() == TaskState::TaskFinished),
            "task {id}: {updates:?}"
        );
    }
    // At least once, but never two different reports of one state: every copy of a
    // task's RUNNING or FINISHED carries the same uuid.
    let mut uuids: HashMap<(String, i32), std::collections::HashSet<Vec<u8>>> = HashMap::new();
    for u in &seen.lock().unwrap().updates {
        let id = u.task_id.clone().unwrap_or_default().to_string();
        uuids
            .entry((id, u.state))
            .or_default()
            .insert(u.uuid.clone());
    }
    for ((id, state), set) in &uuids {
        assert_eq!(
            set.len(),
            1,
            "task {id} reported state {state} {} times",
            set.len()
        );
    }
    for i in 0..2 {
        let out =
            std::fs::read_to_string(sandbox.join("tasks").join(format!("r-{i}")).join("stdout"))
                .expect("task output");
        assert_eq!(out, "hello\n", "task r-{i} ran once");
    }
    wait_until(
        "the executor to exit after its last task",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || processes_mentioning(&sandbox).is_empty().then_some(()),
    );
    teardown(&seen, thread);
}

#[test]
fn a_custom_executors_own_output_rotates() {
    let mut cluster = Cluster::start(Timing::default());
    cluster.add_agent_with(
        "cpus:2;mem:2048",
        &["--log-max-size-mb", "1", "--log-max-files", "2"],
    );
    cluster.wait_for_active_agents(1);
    let work_dir = cluster.agent_work_dir(0);
    let stop = tempfile::NamedTempFile::new().unwrap().into_temp_path();
    let stop_path = stop.to_path_buf();
    drop(stop);

    // The executor writes 3 MB to its own stdout before it starts serving, and its one
    // task runs (bounded) until the test has seen the rotation.
    let bin = cluster.bin("drover-example-executor");
    let executor = custom_executor(
        "ex-rot",
        format!(
            "head -c 3000000 /dev/zero | tr '\\0' x; echo; exec {}",
            bin.display()
        ),
    );
    let wait = format!(
        "i=0; while [ ! -e {} ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done",
        stop_path.display()
    );
    let seen = Arc::new(Mutex::new(Seen::default()));
    let thread = start_framework(
        &cluster,
        "rotating-executor",
        Fw {
            tasks: vec![task("waits", &wait, &executor)],
            kill_when_running: None,
            seen: seen.clone(),
        },
    );
    let sandbox = wait_until(
        "the executor's sandbox",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || find_dir(&work_dir.join("sandboxes"), "executor+ex-rot"),
    );
    let rotated = wait_until(
        "the executor's stdout to rotate",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            let len = std::fs::metadata(sandbox.join("stdout.1")).ok()?.len();
            (len > 0).then_some(len)
        },
    );
    std::fs::write(&stop_path, b"").unwrap();
    // The newest MiB moved to stdout.1; stdout went on from its start.
    assert!(rotated <= 1 << 20, "stdout.1 holds {rotated} bytes");
    let now = std::fs::metadata(sandbox.join("stdout")).unwrap().len();
    assert!(now < 1 << 20, "stdout holds {now} bytes after the rotation");

    let terminal = wait_for_terminal(&seen, 1, Duration::from_secs(120));
    assert_eq!(
        terminal["waits"][0].state(),
        TaskState::TaskFinished,
        "{:?}",
        terminal["waits"][0]
    );
    let _ = std::fs::remove_file(&stop_path);
    teardown(&seen, thread);
}

/// Runs `f` with the framework's driver on a throwaway runtime.
fn with_driver<T>(seen: &Arc<Mutex<Seen>>, f: impl AsyncFnOnce(Driver) -> T) -> T {
    let driver = seen.lock().unwrap().driver.clone().expect("the driver");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f(driver))
}

#[test]
fn a_framework_shuts_its_executor_down_and_its_tasks_end_killed() {
    let mut cluster = Cluster::start(Timing::default());
    cluster.add_agent("cpus:2;mem:2048");
    cluster.wait_for_active_agents(1);
    let work_dir = cluster.agent_work_dir(0);
    let bin = cluster.bin("drover-example-executor");
    let executor = custom_executor("ex-sd", bin.display().to_string());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let thread = start_framework(
        &cluster,
        "shutdown",
        Fw {
            tasks: vec![
                task("long-1", "sleep 600", &executor),
                task("long-2", "sleep 600", &executor),
            ],
            kill_when_running: None,
            seen: seen.clone(),
        },
    );
    let agent_id = wait_for_running(&seen, &["long-1", "long-2"]);

    // Bad calls are refused precisely and disturb nothing.
    let other = ExecutorId::new("no-such-executor");
    let r = with_driver(&seen, async |d| {
        d.shutdown_executor(other, agent_id.clone()).await
    });
    assert_eq!(refused_with(r), Some(tonic::Code::NotFound));
    let r = with_driver(&seen, async |d| {
        d.shutdown_executor(ExecutorId::new("ex-sd"), AgentId::new("no-such-agent"))
            .await
    });
    assert_eq!(refused_with(r), Some(tonic::Code::NotFound));
    let r = with_driver(&seen, async |d| {
        d.shutdown_executor(ExecutorId::new("../ex"), agent_id.clone())
            .await
    });
    assert_eq!(refused_with(r), Some(tonic::Code::InvalidArgument));
    assert!(seen.lock().unwrap().terminal().is_empty(), "nothing ended");

    with_driver(&seen, async |d| {
        d.shutdown_executor(ExecutorId::new("ex-sd"), agent_id.clone())
            .await
    })
    .expect("shutdown");
    let terminal = wait_for_terminal(&seen, 2, Duration::from_secs(120));
    for (id, updates) in &terminal {
        assert_eq!(
            updates[0].state(),
            TaskState::TaskKilled,
            "task {id}: {:?}",
            updates[0]
        );
    }
    // The executor exited; nothing it started is left.
    wait_for_executor_gone(&work_dir, "ex-sd");
    // Its tasks are gone from the master's view: a second shutdown finds nothing.
    let r = with_driver(&seen, async |d| {
        d.shutdown_executor(ExecutorId::new("ex-sd"), agent_id.clone())
            .await
    });
    assert_eq!(refused_with(r), Some(tonic::Code::NotFound));
    teardown(&seen, thread);
}

#[test]
fn a_framework_and_its_executor_exchange_messages() {
    let mut cluster = Cluster::start(Timing::default());
    cluster.add_agent("cpus:2;mem:2048");
    cluster.wait_for_active_agents(1);
    let bin = cluster.bin("drover-example-executor");
    let executor = custom_executor("ex-msg", bin.display().to_string());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let thread = start_framework(
        &cluster,
        "messages",
        Fw {
            tasks: vec![task("long", "sleep 600", &executor)],
            kill_when_running: None,
            seen: seen.clone(),
        },
    );
    let agent_id = wait_for_running(&seen, &["long"]);
    let ex = || ExecutorId::new("ex-msg");

    // Refused precisely: too large, an executor that does not run there, no agent.
    let r = with_driver(&seen, async |d| {
        d.send_message(agent_id.clone(), ex(), vec![b'x'; 64 * 1024 + 1])
            .await
    });
    assert_eq!(refused_with(r), Some(tonic::Code::InvalidArgument));
    let r = with_driver(&seen, async |d| {
        d.send_message(agent_id.clone(), ExecutorId::new("ex-404"), b"hi".to_vec())
            .await
    });
    assert_eq!(refused_with(r), Some(tonic::Code::NotFound));
    let r = with_driver(&seen, async |d| {
        d.send_message(AgentId::new(""), ex(), b"hi".to_vec()).await
    });
    assert_eq!(refused_with(r), Some(tonic::Code::InvalidArgument));

    // The example executor answers each message; delivery is best effort, so a message
    // sent while the executor was (re)subscribing may be lost: send again, bounded.
    let reply = wait_until(
        "the executor's answer",
        Duration::from_secs(60),
        Duration::from_secs(2),
        || {
            if let Some(m) = seen.lock().unwrap().messages.first().cloned() {
                return Some(m);
            }
            with_driver(&seen, async |d| {
                d.send_message(agent_id.clone(), ex(), b"hello".to_vec())
                    .await
            })
            .expect("message");
            None
        },
    );
    assert_eq!(reply.0, agent_id);
    assert_eq!(reply.1, ex());
    assert_eq!(String::from_utf8_lossy(&reply.2), "echo: hello (1 running)");

    // Many more than the agent queues for an executor at once (64): each is taken off as
    // the executor reads it, so every one is answered.
    // (Each wait looks for its own answer: the retries above may still be answered late.)
    for i in 0..80 {
        with_driver(&seen, async |d| {
            d.send_message(agent_id.clone(), ex(), format!("n{i}").into_bytes())
                .await
        })
        .expect("message");
        let answer = format!("echo: n{i} (1 running)");
        wait_until(
            &format!("the answer to message {i}"),
            Duration::from_secs(30),
            Duration::from_millis(10),
            || {
                seen.lock()
                    .unwrap()
                    .messages
                    .iter()
                    .any(|m| m.2 == answer.as_bytes())
                    .then_some(())
            },
        );
    }

    with_driver(&seen, async |d| d.kill(TaskId::new("long"), None).await).expect("kill");
    wait_for_terminal(&seen, 1, Duration::from_secs(60));
    teardown(&seen, thread);
}
