//! `drover logs TASK`: a task's `stdout` (or `stderr`) from its agent's files API.
//!
//! The master knows which agent runs (or ran) the task and that agent's address; the
//! bytes come from the agent directly. `--follow` keeps the stream open until the task
//! has ended and everything it wrote was printed. A task of a custom executor has no
//! sandbox of its own; its output is looked for in the executor's (see [`locate`]).

use std::io::Write;

use anyhow::{bail, Context, Result};
use clap::Args;
use drover_proto::pb;
use drover_proto::{ExecutorId, FrameworkId, TaskId};
use drover_sdk::{AgentFiles, Sandbox};

use crate::masters::Masters;

/// `drover logs` flags.
#[derive(Args, Debug)]
pub struct LogsArgs {
    /// The task's id, as `drover tasks --all` shows it.
    pub task: String,
    /// Keep printing what the task writes until it ends (like `tail -f`).
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Show the task's stderr instead of its stdout.
    #[arg(long)]
    pub stderr: bool,
    /// The task's framework, needed when tasks of several frameworks share the id.
    #[arg(long, value_name = "ID")]
    pub framework: Option<String>,
    /// Start this many bytes before the end instead of at the beginning.
    #[arg(long, value_name = "BYTES")]
    pub tail: Option<u64>,
}

/// The one task `args` names among those the master knows, or why there is none.
pub fn find_task<'a>(
    response: &'a pb::GetTasksResponse,
    task: &str,
    framework: Option<&str>,
) -> Result<&'a pb::TaskSummary, String> {
    let mut found: Vec<&pb::TaskSummary> = Vec::new();
    for t in response.tasks.iter().chain(&response.completed_tasks) {
        let id = t.task_id.as_ref().map(|i| i.as_str()).unwrap_or_default();
        let fw = t
            .framework_id
            .as_ref()
            .map(|i| i.as_str())
            .unwrap_or_default();
        if id != task || framework.is_some_and(|f| f != fw) {
            continue;
        }
        // A task listed twice (active and completed) is still one task.
        if !found.iter().any(|f| f.framework_id == t.framework_id) {
            found.push(t);
        }
    }
    match found.as_slice() {
        [one] => Ok(one),
        [] => Err(match framework {
            Some(fw) => format!(
                "no task '{task}' of framework '{fw}' is known to the master \
                 (`drover tasks --all` lists the tasks)"
            ),
            None => format!(
                "no task '{task}' is known to the master (`drover tasks --all` lists the tasks)"
            ),
        }),
        many => {
            let frameworks: Vec<&str> = many
                .iter()
                .map(|t| {
                    t.framework_id
                        .as_ref()
                        .map(|i| i.as_str())
                        .unwrap_or_default()
                })
                .collect();
            Err(format!(
                "tasks of {} frameworks have the id '{task}' ({}); choose one with --framework",
                many.len(),
                frameworks.join(", ")
            ))
        }
    }
}

/// `drover logs`.
pub async fn logs(masters: &Masters, args: &LogsArgs) -> Result<i32> {
    let tasks = masters
        .operator(|mut c| async move {
            c.get_tasks(pb::GetTasksRequest {
                framework_id: None,
                include_completed: true,
            })
            .await
        })
        .await
        .context("listing tasks")?;
    let task =
        find_task(&tasks, &args.task, args.framework.as_deref()).map_err(anyhow::Error::msg)?;
    let framework_id = task.framework_id.clone().unwrap_or_default();
    let task_id = task.task_id.clone().unwrap_or_default();
    let Some(agent_id) = task.agent_id.clone().filter(|a| !a.is_empty()) else {
        bail!("task '{task_id}' was never placed on an agent, so it has no output");
    };
    let agents = masters
        .operator(|mut c| async move { c.get_agents(pb::GetAgentsRequest {}).await })
        .await
        .context("listing agents")?;
    let Some(agent) = agents
        .agents
        .iter()
        .find(|a| a.id.as_ref() == Some(&agent_id))
    else {
        bail!("task '{task_id}' ran on agent {agent_id}, which the master no longer knows");
    };
    let mut files = AgentFiles::connect(&agent.address)
        .await
        .with_context(|| format!("reaching agent {agent_id}"))?;
    let name = if args.stderr { "stderr" } else { "stdout" };
    let executor_id = task
        .last_status
        .as_ref()
        .and_then(|s| s.executor_id.clone())
        .filter(|e| !e.as_str().is_empty());
    let shown = |e: drover_sdk::SdkError| {
        if not_found(&e) {
            anyhow::anyhow!(
                "the {name} of task '{task_id}' is not on agent {agent_id} any more (its \
                 sandbox was garbage-collected, or the task never started): {e}"
            )
        } else {
            anyhow::Error::new(e).context(format!("reading the {name} of task '{task_id}'"))
        }
    };
    let (sandbox, path) = locate(&mut files, &framework_id, &task_id, executor_id, name)
        .await
        .map_err(shown)?;
    if args.follow {
        print_followed(&mut files, &framework_id, &sandbox, &path, args.tail)
            .await
            .map_err(shown)?;
    } else {
        print_once(&mut files, &framework_id, &sandbox, &path, args.tail)
            .await
            .map_err(shown)?;
    }
    Ok(0)
}

/// Where a task's `name` (`stdout` or `stderr`) is. Usually in the task's own sandbox. A
/// task of a custom executor has none: its output is wherever its executor puts it, so
/// this looks for `tasks/<task id>/<name>` in the executor's sandbox (the layout
/// `drover-example-executor` uses, and the one the docs recommend), then falls back to the
/// executor's own `name`, saying so on stderr.
async fn locate(
    files: &mut AgentFiles,
    framework_id: &FrameworkId,
    task_id: &TaskId,
    executor_id: Option<ExecutorId>,
    name: &str,
) -> Result<(Sandbox, String), drover_sdk::SdkError> {
    let own = files.read(framework_id, task_id, name, 0, 1).await;
    let executor_id = match (own, executor_id) {
        (Ok(_), _) => return Ok((Sandbox::Task(task_id.clone()), name.to_string())),
        (Err(e), Some(executor_id)) if not_found(&e) => executor_id,
        (Err(e), _) => return Err(e),
    };
    let in_executor = format!("tasks/{task_id}/{name}");
    match files
        .read(framework_id, &executor_id, &in_executor, 0, 1)
        .await
    {
        Ok(_) => return Ok((Sandbox::Executor(executor_id), in_executor)),
        Err(e) if not_found(&e) => {}
        Err(e) => return Err(e),
    }
    files.read(framework_id, &executor_id, name, 0, 1).await?;
    eprintln!(
        "drover: task '{task_id}' runs on custom executor '{executor_id}' and has no {name} of \
         its own (no tasks/{task_id}/{name} in the executor's sandbox); showing the \
         executor's {name}"
    );
    Ok((Sandbox::Executor(executor_id), name.to_string()))
}

fn not_found(e: &drover_sdk::SdkError) -> bool {
    e.status()
        .is_some_and(|s| s.code() == tonic::Code::NotFound)
}

async fn print_once(
    files: &mut AgentFiles,
    framework_id: &FrameworkId,
    sandbox: &Sandbox,
    path: &str,
    tail: Option<u64>,
) -> Result<(), drover_sdk::SdkError> {
    let mut out = std::io::stdout().lock();
    let start = match tail {
        Some(n) => {
            let size = files.read(framework_id, sandbox, path, 0, 1).await?.size;
            size.saturating_sub(n)
        }
        None => 0,
    };
    // A closed pipe (`drover logs | head`) only means nobody reads the rest.
    files
        .read_from(framework_id, sandbox, path, start, |chunk| {
            let _ = out.write_all(chunk);
        })
        .await?;
    let _ = out.flush();
    Ok(())
}

async fn print_followed(
    files: &mut AgentFiles,
    framework_id: &FrameworkId,
    sandbox: &Sandbox,
    path: &str,
    tail: Option<u64>,
) -> Result<(), drover_sdk::SdkError> {
    let mut follower = files
        .follow(framework_id, sandbox, path, 0, tail.unwrap_or(0))
        .await?;
    while let Some(chunk) = follower.next().await? {
        if chunk.truncated {
            eprintln!("drover: the task's {path} was rotated; continuing from its start");
        }
        let mut out = std::io::stdout().lock();
        // A closed pipe (`drover logs -f | head`) ends the command quietly.
        if out
            .write_all(&chunk.data)
            .and_then(|()| out.flush())
            .is_err()
        {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(fw: &str, id: &str) -> pb::TaskSummary {
        pb::TaskSummary {
            framework_id: Some(FrameworkId::new(fw)),
            task_id: Some(TaskId::new(id)),
            ..Default::default()
        }
    }

    #[test]
    fn finds_one_task_and_explains_none_or_several() {
        let response = pb::GetTasksResponse {
            tasks: vec![task("fw-a", "web"), task("fw-b", "web"), task("fw-a", "db")],
            completed_tasks: vec![task("fw-a", "db"), task("fw-c", "old")],
        };
        let t = find_task(&response, "db", None).unwrap();
        assert_eq!(t.framework_id.as_ref().unwrap().as_str(), "fw-a");
        let t = find_task(&response, "old", None).unwrap();
        assert_eq!(t.framework_id.as_ref().unwrap().as_str(), "fw-c");

        let e = find_task(&response, "web", None).unwrap_err();
        assert!(e.contains("fw-a, fw-b") && e.contains("--framework"), "{e}");
        let t = find_task(&response, "web", Some("fw-b")).unwrap();
        assert_eq!(t.framework_id.as_ref().unwrap().as_str(), "fw-b");

        let e = find_task(&response, "nope", None).unwrap_err();
        assert!(e.contains("no task 'nope'"), "{e}");
        let e = find_task(&response, "db", Some("fw-b")).unwrap_err();
        assert!(e.contains("of framework 'fw-b'"), "{e}");
    }
}
