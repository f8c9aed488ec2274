//! `drover-example-executor`: a custom executor built on the SDK's `Executor` trait.
//!
//! The agent starts it once per (framework, executor id) and hands it every task that
//! names it. For each task it runs the task's command (`/bin/sh -c` for shell commands,
//! else the argv) as a child process in `tasks/<task id>/` under its sandbox, with the
//! task's environment plus `DROVER_TASK_ID`, the child's output in `stdout` and `stderr`
//! there, and reports RUNNING, then FINISHED (exit 0), FAILED (with the exit code) or
//! KILLED. A kill sends SIGTERM to the task's process group and SIGKILL after the kill
//! policy's grace period (3 s by default). On SHUTDOWN (the agent sends it once no task is
//! left) it kills what still runs, reports it, and exits. A message from the framework is
//! answered with `echo: <message> (<n> running)`.
//!
//! A scheduler launches tasks on it with
//! `TaskBuilder::new(id).shell("...").executor(custom_executor("ex-1", "/path/to/drover-example-executor"))`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_sdk::async_trait;
use drover_sdk::executor::{run_executor, Executor, ExecutorDriver};
use drover_sdk::proto::pb::{self, TaskState};
use drover_sdk::proto::TaskId;

const DEFAULT_GRACE: Duration = Duration::from_secs(3);

/// A running task: its process group, and whether a kill was asked for.
struct Child {
    pgid: i32,
    killed: bool,
}

#[derive(Default)]
struct Runner {
    sandbox: PathBuf,
    children: Arc<Mutex<HashMap<TaskId, Child>>>,
    waiters: Vec<tokio::task::JoinHandle<()>>,
}

impl Runner {
    fn children(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, Child>> {
        self.children.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn signal_later(&self, task_id: &TaskId, grace: Duration) {
        let Some(pgid) = self.children().get_mut(task_id).map(|c| {
            c.killed = true;
            c.pgid
        }) else {
            return;
        };
        // SAFETY: signalling a process group we created.
        unsafe { libc::killpg(pgid, libc::SIGTERM) };
        let children = self.children.clone();
        let task_id = task_id.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let still = children
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&task_id)
                .map(|c| c.pgid);
            if let Some(pgid) = still {
                // SAFETY: as above; the group is ours until its waiter removes it.
                unsafe { libc::killpg(pgid, libc::SIGKILL) };
            }
        });
    }
}

fn build_command(
    task: &pb::TaskInfo,
    dir: &std::path::Path,
) -> Result<tokio::process::Command, String> {
    let cmd = task.command.clone().unwrap_or_default();
    let mut command = if cmd.shell {
        if cmd.value.trim().is_empty() {
            return Err("the task has no command to run".into());
        }
        let mut c = tokio::process::Command::new("/bin/sh");
        c.arg("-c").arg(&cmd.value);
        c
    } else {
        let argv = if cmd.arguments.is_empty() {
            vec![cmd.value.clone()]
        } else {
            cmd.arguments.clone()
        };
        if argv[0].trim().is_empty() {
            return Err("the task has no command to run".into());
        }
        let mut c = tokio::process::Command::new(&argv[0]);
        c.args(&argv[1..]);
        c
    };
    let file = |name: &str| std::fs::File::create(dir.join(name)).map_err(|e| e.to_string());
    command
        .current_dir(dir)
        .envs(cmd.environment.iter().map(|e| (&e.name, &e.value)))
        .env(
            "DROVER_TASK_ID",
            task.task_id.clone().unwrap_or_default().to_string(),
        )
        .stdin(std::process::Stdio::null())
        .stdout(file("stdout")?)
        .stderr(file("stderr")?)
        .process_group(0)
        .kill_on_drop(false);
    Ok(command)
}

#[async_trait]
impl Executor for Runner {
    async fn launch(&mut self, driver: &ExecutorDriver, task: pb::TaskInfo) {
        let task_id = task.task_id.clone().unwrap_or_default();
        let dir = self.sandbox.join("tasks").join(task_id.as_str());
        let spawned = std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))
            .and_then(|()| build_command(&task, &dir))
            .and_then(|mut c| {
                c.spawn()
                    .map_err(|e| format!("cannot start the command: {e}"))
            });
        let mut child = match spawned {
            Ok(child) => child,
            Err(why) => {
                let _ = driver
                    .send_update(pb::TaskStatus {
                        task_id: Some(task_id),
                        state: TaskState::TaskFailed as i32,
                        message: why,
                        ..Default::default()
                    })
                    .await;
                return;
            }
        };
        let pgid = child.id().map(|p| p as i32).unwrap_or(0);
        self.children().insert(
            task_id.clone(),
            Child {
                pgid,
                killed: false,
            },
        );
        if let Err(e) = driver.update(&task_id, TaskState::TaskRunning).await {
            eprintln!("example executor: RUNNING of {task_id} refused: {e}");
        }
        let driver = driver.clone();
        let children = self.children.clone();
        self.waiters.push(tokio::spawn(async move {
            let status = child.wait().await;
            let killed = children
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&task_id)
                .is_some_and(|c| c.killed);
            let (state, exit_code, message) = match status {
                _ if killed => (TaskState::TaskKilled, None, "killed".to_string()),
                Ok(s) if s.success() => (TaskState::TaskFinished, Some(0), String::new()),
                Ok(s) => match s.code() {
                    Some(code) => (
                        TaskState::TaskFailed,
                        Some(code),
                        format!("the command exited with {code}"),
                    ),
                    None => (
                        TaskState::TaskFailed,
                        None,
                        format!("the command was killed by a signal ({s})"),
                    ),
                },
                Err(e) => (
                    TaskState::TaskFailed,
                    None,
                    format!("lost the command: {e}"),
                ),
            };
            if let Err(e) = driver
                .send_update(pb::TaskStatus {
                    task_id: Some(task_id.clone()),
                    state: state as i32,
                    message,
                    exit_code,
                    ..Default::default()
                })
                .await
            {
                eprintln!("example executor: final update of {task_id} refused: {e}");
            }
        }));
    }

    async fn kill(
        &mut self,
        _driver: &ExecutorDriver,
        task_id: TaskId,
        kill_policy: Option<pb::KillPolicy>,
    ) {
        let grace = kill_policy
            .map(|p| p.grace_period_seconds)
            .filter(|g| g.is_finite() && *g >= 0.0)
            .map(Duration::from_secs_f64)
            .unwrap_or(DEFAULT_GRACE);
        self.signal_later(&task_id, grace);
    }

    async fn shutdown(&mut self, _driver: &ExecutorDriver) {
        let running: Vec<TaskId> = self.children().keys().cloned().collect();
        for task_id in running {
            self.signal_later(&task_id, DEFAULT_GRACE);
        }
        // Every task's final update is sent before the process exits.
        for waiter in self.waiters.drain(..) {
            let _ = waiter.await;
        }
    }

    /// Answers every message from the framework with `echo: ` and the message, and says
    /// how many of its tasks run: a round trip a scheduler can use to check on it.
    async fn message(&mut self, driver: &ExecutorDriver, data: Vec<u8>) {
        let mut reply = b"echo: ".to_vec();
        reply.extend_from_slice(&data);
        reply.extend_from_slice(format!(" ({} running)", self.children().len()).as_bytes());
        if let Err(e) = driver.send_message(reply).await {
            eprintln!("example executor: the reply to a message was not sent: {e}");
        }
    }
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let sandbox = std::env::var_os("DROVER_SANDBOX")
        .map(PathBuf::from)
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_else(|| PathBuf::from("."));
    let runner = Runner {
        sandbox,
        ..Default::default()
    };
    if let Err(e) = run_executor(runner).await {
        eprintln!("drover-example-executor: {e}");
        std::process::exit(1);
    }
}
