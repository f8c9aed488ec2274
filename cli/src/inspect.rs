//! The inspection commands: `drover status`, `agents`, `frameworks` and `tasks`.
//!
//! Each fetches one or two operator responses from the leader, then either prints them as
//! pretty JSON (`--json`, the response messages unchanged, for scripts) or renders a table
//! for people. Rendering is kept in pure functions of the responses so it is tested
//! without a cluster.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{Context, Result};
use clap::Args;
use drover_proto::pb::{self, agent_summary::State as AgentState};
use drover_proto::{states, FrameworkId};
use serde::Serialize;

use crate::format;
use crate::masters::Masters;
use crate::table::Table;

/// Flags shared by every listing.
#[derive(Args, Debug)]
pub struct OutputArgs {
    /// Print the master's response as pretty JSON instead of a table (for scripts).
    /// Enums (states) appear as their protobuf numbers.
    #[arg(long)]
    pub json: bool,
}

/// `drover tasks` flags.
#[derive(Args, Debug)]
pub struct TasksArgs {
    /// Only the tasks of this framework.
    #[arg(long, value_name = "ID")]
    pub framework: Option<String>,
    /// Also list completed tasks (in a terminal state such as FINISHED or FAILED).
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `drover status`: the leader, counts of agents, frameworks and tasks, and the cluster's
/// resources.
pub async fn status(masters: &Masters, output: &OutputArgs) -> Result<()> {
    let state = masters
        .operator(|mut c| async move { c.get_state(pb::GetStateRequest {}).await })
        .await
        .context("reading the cluster state")?;
    // Asked second so it goes to the master that just served GetState (the leader).
    let health = masters
        .operator(|mut c| async move { c.get_health(pb::GetHealthRequest {}).await })
        .await
        .context("reading the master's health")?;
    if output.json {
        #[derive(Serialize)]
        struct Status<'a> {
            health: &'a pb::GetHealthResponse,
            state: &'a pb::GetStateResponse,
        }
        return print_json(&Status {
            health: &health,
            state: &state,
        });
    }
    let answered_by = masters.last_leader().unwrap_or_default();
    print!("{}", render_status(&health, &state, &answered_by));
    Ok(())
}

/// `drover agents`.
pub async fn agents(masters: &Masters, output: &OutputArgs) -> Result<()> {
    let response = masters
        .operator(|mut c| async move { c.get_agents(pb::GetAgentsRequest {}).await })
        .await
        .context("listing agents")?;
    if output.json {
        return print_json(&response);
    }
    if response.agents.is_empty() {
        println!("No agents are registered.");
        return Ok(());
    }
    print!("{}", render_agents(&response.agents));
    Ok(())
}

/// `drover frameworks`.
pub async fn frameworks(masters: &Masters, output: &OutputArgs) -> Result<()> {
    let response = masters
        .operator(|mut c| async move { c.get_frameworks(pb::GetFrameworksRequest {}).await })
        .await
        .context("listing frameworks")?;
    if output.json {
        return print_json(&response);
    }
    if response.frameworks.is_empty() {
        println!("No frameworks are registered.");
        return Ok(());
    }
    print!(
        "{}",
        render_frameworks(&response.frameworks, drover_proto::unix_seconds())
    );
    Ok(())
}

/// `drover tasks`.
pub async fn tasks(masters: &Masters, args: &TasksArgs) -> Result<()> {
    let request = pb::GetTasksRequest {
        framework_id: args.framework.as_deref().map(FrameworkId::new),
        include_completed: args.all,
    };
    let response = masters
        .operator(|mut c| {
            let request = request.clone();
            async move { c.get_tasks(request).await }
        })
        .await
        .context("listing tasks")?;
    if args.output.json {
        return print_json(&response);
    }
    if response.tasks.is_empty() && response.completed_tasks.is_empty() {
        let whose = match &args.framework {
            Some(id) => format!(" for framework {id}"),
            None => String::new(),
        };
        let hint = if args.all {
            ""
        } else {
            " (pass --all to include completed tasks)"
        };
        println!("No tasks{whose}{hint}.");
        return Ok(());
    }
    print!("{}", render_tasks(&response));
    Ok(())
}

pub fn print_json<T: Serialize>(value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).context("encoding JSON")?;
    println!("{text}");
    Ok(())
}

/// The agents table: allocated over total for cpus and memory (MB).
pub fn render_agents(agents: &[pb::AgentSummary]) -> String {
    let mut table = Table::new(&[
        "ID", "HOSTNAME", "ADDRESS", "STATE", "CPUS", "MEM (MB)", "TASKS",
    ])
    .right(&["CPUS", "MEM (MB)", "TASKS"]);
    for a in agents {
        table.row(vec![
            format::id_or_dash(a.id.as_ref()),
            a.hostname.clone(),
            a.address.clone(),
            format::agent_state(a.state).to_string(),
            format::scalar_ratio(&a.allocated, &a.total, "cpus"),
            format::scalar_ratio(&a.allocated, &a.total, "mem"),
            a.task_count.to_string(),
        ]);
    }
    table.render()
}

/// The frameworks table. A disconnected framework shows how long it has left to come
/// back before its tasks are killed, measured from `now` (Unix seconds).
pub fn render_frameworks(frameworks: &[pb::FrameworkSummary], now: f64) -> String {
    let mut table = Table::new(&[
        "ID",
        "NAME",
        "ROLE",
        "CONNECTED",
        "TASKS",
        "CPUS",
        "MEM (MB)",
    ])
    .right(&["TASKS", "CPUS", "MEM (MB)"]);
    for f in frameworks {
        let info = f.info.clone().unwrap_or_default();
        let connected = if f.connected {
            "yes".to_string()
        } else if f.failover_deadline > 0.0 {
            format!(
                "no (failover ends in {})",
                format::duration(f.failover_deadline - now)
            )
        } else {
            "no".to_string()
        };
        table.row(vec![
            format::id_or_dash(f.id.as_ref()),
            info.name,
            format::role(&info.role).to_string(),
            connected,
            f.active_tasks.to_string(),
            format::scalar(&f.allocated, "cpus"),
            format::scalar(&f.allocated, "mem"),
        ]);
    }
    table.render()
}

/// The tasks table: active tasks first, then completed ones (when asked for).
pub fn render_tasks(response: &pb::GetTasksResponse) -> String {
    let mut table = Table::new(&[
        "ID",
        "FRAMEWORK",
        "AGENT",
        "STATE",
        "HEALTH",
        "CPUS",
        "MEM (MB)",
        "CPU TIME (s)",
        "RSS (MB)",
        "DISK (MB)",
        "NAME",
    ])
    .right(&["CPUS", "MEM (MB)", "CPU TIME (s)", "RSS (MB)", "DISK (MB)"]);
    let mb = |b: u64| format!("{:.1}", b as f64 / (1024.0 * 1024.0));
    for t in response.tasks.iter().chain(&response.completed_tasks) {
        // Cpu and memory come from containers that measure them (linux), while they run;
        // the sandbox's disk usage from every running task, once measured.
        let cpu_time = cpu_time_of(t.usage.as_ref());
        let (rss, disk) = match &t.usage {
            Some(u) => (
                if cpu_time == "-" {
                    "-".to_string()
                } else {
                    mb(u.mem_rss_bytes)
                },
                if u.disk_used_bytes > 0 {
                    mb(u.disk_used_bytes)
                } else {
                    "-".to_string()
                },
            ),
            None => ("-".to_string(), "-".to_string()),
        };
        // The latest verdict of the task's health check, carried on its updates.
        let health = match t.last_status.as_ref().and_then(|s| s.healthy) {
            Some(true) => "healthy",
            Some(false) => "unhealthy",
            None => "-",
        };
        table.row(vec![
            format::id_or_dash(t.task_id.as_ref()),
            format::id_or_dash(t.framework_id.as_ref()),
            format::id_or_dash(t.agent_id.as_ref()),
            format::task_state(t.state).to_string(),
            health.to_string(),
            format::scalar(&t.resources, "cpus"),
            format::scalar(&t.resources, "mem"),
            cpu_time,
            rss,
            disk,
            t.name.clone(),
        ]);
    }
    table.render()
}

/// A task's cpu time, or `-` when its usage sample carries no cgroup figures (a process
/// task reports its sandbox's disk only).
fn cpu_time_of(usage: Option<&pb::ResourceStatistics>) -> String {
    match usage {
        Some(u)
            if u.mem_rss_bytes > 0
                || u.mem_max_usage_bytes > 0
                || u.cpus_user_time_secs + u.cpus_system_time_secs > 0.0 =>
        {
            format!("{:.2}", u.cpus_user_time_secs + u.cpus_system_time_secs)
        }
        _ => "-".to_string(),
    }
}

/// The `drover status` summary. `answered_by` is the master that served the calls, shown
/// when the responses do not name the leader themselves.
pub fn render_status(
    health: &pb::GetHealthResponse,
    state: &pb::GetStateResponse,
    answered_by: &str,
) -> String {
    let info = state
        .master_info
        .as_ref()
        .or(health.master_info.as_ref())
        .cloned()
        .unwrap_or_default();
    let leader = [
        health.leader_address.as_str(),
        info.address.as_str(),
        answered_by,
    ]
    .into_iter()
    .find(|a| !a.is_empty())
    .unwrap_or("unknown");

    // Resources count on every agent the cluster still expects to hear from; a GONE
    // agent has left for good and its machine is no longer part of the cluster.
    let present: Vec<&pb::AgentSummary> = state
        .agents
        .iter()
        .filter(|a| a.state != AgentState::Gone as i32)
        .collect();
    let sum = |name: &str, pick: fn(&pb::AgentSummary) -> &[pb::Resource]| {
        present
            .iter()
            .map(|a| format::scalar_milli(pick(a), name))
            .fold(0i64, i64::saturating_add)
    };
    let resource = |name: &str| {
        format::ratio(
            sum(name, |a| a.allocated.as_slice()),
            sum(name, |a| a.total.as_slice()),
        )
    };

    let mut agents_by_state: BTreeMap<i32, usize> = BTreeMap::new();
    for a in &state.agents {
        *agents_by_state.entry(a.state).or_default() += 1;
    }
    let agents = counted(
        state.agents.len(),
        agents_by_state
            .iter()
            .map(|(s, n)| (*n, format::agent_state(*s).to_lowercase())),
    );
    let connected = state.frameworks.iter().filter(|f| f.connected).count();
    let disconnected = state.frameworks.len() - connected;
    let frameworks = counted(
        state.frameworks.len(),
        [
            (connected, "connected".to_string()),
            (disconnected, "disconnected".to_string()),
        ]
        .into_iter()
        .filter(|(n, _)| *n > 0),
    );

    let mut lines: Vec<(&str, String)> = vec![
        (
            "leader",
            format!("{leader} (master {}, term {})", info.id, info.term),
        ),
        (
            "health",
            if health.healthy {
                "healthy"
            } else {
                "UNHEALTHY"
            }
            .to_string(),
        ),
        ("agents", agents),
        ("frameworks", frameworks),
        ("tasks", tasks_by_state(&state.tasks)),
    ];
    if !state.completed_tasks.is_empty() {
        lines.push(("completed", tasks_by_state(&state.completed_tasks)));
    }
    lines.push(("cpus", format!("{} allocated", resource("cpus"))));
    lines.push(("mem (MB)", format!("{} allocated", resource("mem"))));
    lines.push(("disk (MB)", format!("{} allocated", resource("disk"))));

    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in lines {
        let _ = writeln!(out, "{key:<width$}  {value}");
    }
    out
}

/// `3 (2 active, 1 unreachable)`, or just `0`.
fn counted(total: usize, parts: impl Iterator<Item = (usize, String)>) -> String {
    let parts: Vec<String> = parts.map(|(n, what)| format!("{n} {what}")).collect();
    if parts.is_empty() || total == 0 {
        total.to_string()
    } else {
        format!("{total} ({})", parts.join(", "))
    }
}

/// `4 (3 RUNNING, 1 STAGING)`, states in lifecycle order.
fn tasks_by_state(tasks: &[pb::TaskSummary]) -> String {
    let mut by_state: BTreeMap<i32, usize> = BTreeMap::new();
    for t in tasks {
        *by_state.entry(t.state).or_default() += 1;
    }
    counted(
        tasks.len(),
        by_state
            .iter()
            .map(|(s, n)| (*n, states::name(states::from_i32(*s)).to_string())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_proto::resources::scalar;
    use drover_proto::{AgentId, TaskId};

    fn agent(id: &str, state: AgentState, allocated: (f64, f64), tasks: u32) -> pb::AgentSummary {
        pb::AgentSummary {
            id: Some(AgentId::new(id)),
            hostname: "node-1".into(),
            address: "127.0.0.1:5051".into(),
            state: state as i32,
            total: vec![scalar("cpus", 4.0), scalar("mem", 8192.0)],
            allocated: vec![scalar("cpus", allocated.0), scalar("mem", allocated.1)],
            task_count: tasks,
            ..Default::default()
        }
    }

    fn task(id: &str, state: pb::TaskState) -> pb::TaskSummary {
        pb::TaskSummary {
            framework_id: Some(FrameworkId::new("fw")),
            task_id: Some(TaskId::new(id)),
            name: format!("echo {id}"),
            agent_id: Some(AgentId::new("a1")),
            state: state as i32,
            resources: vec![scalar("cpus", 0.25), scalar("mem", 64.0)],
            last_status: None,
            usage: None,
        }
    }

    #[test]
    fn agents_table() {
        let text = render_agents(&[
            agent("a1", AgentState::Active, (0.5, 512.0), 2),
            agent("a2-longer", AgentState::Unreachable, (0.0, 0.0), 0),
        ]);
        assert_eq!(
            text,
            "ID         HOSTNAME  ADDRESS         STATE         CPUS  MEM (MB)  TASKS\n\
             a1         node-1    127.0.0.1:5051  ACTIVE       0.5/4  512/8192      2\n\
             a2-longer  node-1    127.0.0.1:5051  UNREACHABLE    0/4    0/8192      0\n"
        );
    }

    #[test]
    fn frameworks_table_shows_failover_time_left() {
        let connected = pb::FrameworkSummary {
            id: Some(FrameworkId::new("f1")),
            info: Some(pb::FrameworkInfo {
                name: "drover-run".into(),
                ..Default::default()
            }),
            connected: true,
            allocated: vec![scalar("cpus", 1.5), scalar("mem", 256.0)],
            active_tasks: 3,
            ..Default::default()
        };
        let gone = pb::FrameworkSummary {
            id: Some(FrameworkId::new("f2")),
            info: Some(pb::FrameworkInfo {
                name: "batch".into(),
                role: "analytics".into(),
                ..Default::default()
            }),
            connected: false,
            failover_deadline: 1_000.0 + 125.0,
            ..Default::default()
        };
        assert_eq!(
            render_frameworks(&[connected, gone], 1_000.0),
            "ID  NAME        ROLE       CONNECTED                   TASKS  CPUS  MEM (MB)\n\
             f1  drover-run  *          yes                             3   1.5       256\n\
             f2  batch       analytics  no (failover ends in 2m5s)      0     0         0\n"
        );
    }

    #[test]
    fn tasks_table_lists_active_then_completed() {
        let mut measured = task("t2", pb::TaskState::TaskRunning);
        measured.usage = Some(pb::ResourceStatistics {
            cpus_user_time_secs: 1.5,
            cpus_system_time_secs: 0.25,
            mem_rss_bytes: 12 << 20,
            disk_used_bytes: 3 << 20,
            ..Default::default()
        });
        let mut disk_only = task("t3", pb::TaskState::TaskRunning);
        disk_only.usage = Some(pb::ResourceStatistics {
            disk_used_bytes: 1 << 19,
            disk_limit_bytes: 1 << 20,
            ..Default::default()
        });
        measured.last_status = Some(pb::TaskStatus {
            healthy: Some(true),
            ..Default::default()
        });
        let response = pb::GetTasksResponse {
            tasks: vec![measured, disk_only],
            completed_tasks: vec![task("t1", pb::TaskState::TaskFinished)],
        };
        assert_eq!(
            render_tasks(&response),
            "ID  FRAMEWORK  AGENT  STATE     HEALTH   CPUS  MEM (MB)  CPU TIME (s)  RSS (MB)  DISK (MB)  NAME\n\
             t2  fw         a1     RUNNING   healthy  0.25        64          1.75      12.0        3.0  echo t2\n\
             t3  fw         a1     RUNNING   -        0.25        64             -         -        0.5  echo t3\n\
             t1  fw         a1     FINISHED  -        0.25        64             -         -          -  echo t1\n"
        );
    }

    #[test]
    fn status_summary() {
        let health = pb::GetHealthResponse {
            healthy: true,
            leader: true,
            master_info: None,
            leader_address: String::new(),
            ..Default::default()
        };
        let state = pb::GetStateResponse {
            master_info: Some(pb::MasterInfo {
                id: 1,
                address: "127.0.0.1:5050".into(),
                term: 3,
            }),
            agents: vec![
                agent("a1", AgentState::Active, (0.5, 512.0), 2),
                agent("a2", AgentState::Active, (0.25, 0.0), 1),
                // Gone agents count in the agent total but not in the resources.
                agent("a3", AgentState::Gone, (1.0, 1.0), 0),
            ],
            frameworks: vec![pb::FrameworkSummary {
                connected: true,
                ..Default::default()
            }],
            tasks: vec![
                task("t1", pb::TaskState::TaskRunning),
                task("t2", pb::TaskState::TaskStaging),
                task("t3", pb::TaskState::TaskRunning),
            ],
            completed_tasks: vec![task("t0", pb::TaskState::TaskFinished)],
            roles: vec![],
        };
        assert_eq!(
            render_status(&health, &state, "10.0.0.1:5050"),
            "leader      127.0.0.1:5050 (master 1, term 3)\n\
             health      healthy\n\
             agents      3 (2 active, 1 gone)\n\
             frameworks  1 (1 connected)\n\
             tasks       3 (1 STAGING, 2 RUNNING)\n\
             completed   1 (1 FINISHED)\n\
             cpus        0.75/8 allocated\n\
             mem (MB)    512/16384 allocated\n\
             disk (MB)   0/0 allocated\n"
        );
    }

    #[test]
    fn status_of_an_empty_cluster() {
        let text = render_status(
            &pb::GetHealthResponse::default(),
            &pb::GetStateResponse::default(),
            "127.0.0.1:5050",
        );
        assert!(text.starts_with("leader      127.0.0.1:5050 (master 0, term 0)\n"));
        assert!(text.contains("\nhealth      UNHEALTHY\n"));
        assert!(text.contains("\nagents      0\n"));
        assert!(text.contains("\ntasks       0\n"));
        assert!(!text.contains("completed"));
    }
}
