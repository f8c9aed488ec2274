//! What a test reads from a [`Cluster`]: tasks, agent state, metrics, run logs, replica
//! agreement; log dumps on failure and cleanup on drop.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use drover_proto::pb;

use super::{connect, Cluster};
use crate::framework::{finished_jobs, Report};
use crate::wait_until;

impl Cluster {
    /// Tasks in TASK_RUNNING as the master reports them.
    pub fn running_tasks(&self) -> usize {
        let running = pb::TaskState::TaskRunning as i32;
        self.tasks().0.iter().filter(|t| t.state == running).count()
    }

    /// Waits until exactly `n` tasks are RUNNING.
    pub fn wait_for_running_tasks(&self, n: usize) {
        wait_until(
            &format!("{n} running tasks"),
            Duration::from_secs(120),
            Duration::from_millis(100),
            || (self.running_tasks() == n).then_some(()),
        );
    }

    /// The master's Raft term as it reports it.
    pub fn term(&self) -> u64 {
        self.operator(async |mut c| {
            Some(
                c.get_health(pb::GetHealthRequest {})
                    .await
                    .ok()?
                    .into_inner()
                    .master_info?
                    .term,
            )
        })
        .unwrap_or(0)
    }

    /// Active and completed tasks as the master reports them.
    pub fn tasks(&self) -> (Vec<pb::TaskSummary>, Vec<pb::TaskSummary>) {
        self.operator(async |mut c| {
            let r = c
                .get_tasks(pb::GetTasksRequest {
                    framework_id: None,
                    include_completed: true,
                })
                .await
                .ok()?
                .into_inner();
            Some((r.tasks, r.completed_tasks))
        })
        .unwrap_or_default()
    }

    /// The agent's own view of its tasks (`AgentApi.GetState`), or `None` if it does not
    /// answer.
    pub fn agent_state(&self, i: usize) -> Option<pb::GetAgentStateResponse> {
        let addr = self.agent_address(i);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        rt.block_on(async move {
            let mut c = pb::agent_api_client::AgentApiClient::new(connect(&addr).await?);
            Some(
                c.get_state(pb::GetAgentStateRequest {})
                    .await
                    .ok()?
                    .into_inner(),
            )
        })
    }

    /// Status updates agent `i` still holds unacknowledged.
    pub fn agent_pending_updates(&self, i: usize) -> Option<u32> {
        Some(
            self.agent_state(i)?
                .tasks
                .iter()
                .map(|t| t.pending_updates)
                .sum(),
        )
    }

    /// The master's Prometheus text.
    pub fn metrics(&self) -> String {
        self.operator(async |mut c| {
            Some(
                c.get_metrics(pb::GetMetricsRequest {})
                    .await
                    .ok()?
                    .into_inner()
                    .prometheus_text,
            )
        })
        .unwrap_or_default()
    }

    /// Agent `i`'s Prometheus text from its HTTP endpoint.
    pub fn agent_metrics(&self, i: usize) -> String {
        http_get(
            &format!("127.0.0.1:{}", self.agents[i].http_port),
            "/metrics",
        )
    }

    /// A file every task can append to (the tests count launches with it).
    pub fn run_log(&self) -> PathBuf {
        self.dir.path().join("runs.log")
    }

    /// How often each task id appears in the run log.
    pub fn run_counts(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        if let Ok(text) = std::fs::read_to_string(self.run_log()) {
            for line in text.lines().filter(|l| !l.is_empty()) {
                *m.entry(line.trim().to_string()).or_default() += 1;
            }
        }
        m
    }

    /// Prints every log (called when a test fails, to explain it).
    pub fn dump_logs(&self) {
        if let Ok(rd) = std::fs::read_dir(self.dir.path()) {
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "log") {
                    let text = std::fs::read_to_string(&p).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(60).collect();
                    eprintln!("===== {} (last 60 lines)", p.display());
                    for l in tail.into_iter().rev() {
                        eprintln!("{l}");
                    }
                }
            }
        }
    }

    /// Kills every process whose command line mentions this cluster's folder: task
    /// supervisors and tasks outlive their agent by design, so killing agents is not enough.
    /// The linux containers of killed supervisors are not torn down by anyone: their
    /// cgroups (and anything still in them) go here, so a failed test leaks nothing.
    fn remove_agent_cgroups(&self) {
        use drover_agent::containerizer::linux::cgroups::{work_dir_tag, Hierarchies};
        let Ok(h) = Hierarchies::detect() else {
            return;
        };
        for a in &self.agents {
            let dir = std::fs::canonicalize(&a.work_dir).unwrap_or_else(|_| a.work_dir.clone());
            h.destroy_all_below(&Path::new("drover").join(work_dir_tag(&dir)));
        }
    }

    /// Unmounts the namespace holders of task groups an agent left behind (a killed
    /// agent tears nothing down), so the cluster's folder can be removed.
    fn remove_group_holders(&self) {
        use drover_agent::containerizer::linux::holder;
        for a in &self.agents {
            holder::destroy_all_below(&a.work_dir.join("executors"));
        }
    }

    fn kill_strays(&self) {
        let needle = self.dir.path().to_string_lossy().to_string();
        let me = std::process::id();
        let Ok(rd) = std::fs::read_dir("/proc") else {
            return;
        };
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if pid as u32 == me {
                continue;
            }
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let hit = |b: &[u8]| String::from_utf8_lossy(b).contains(&needle);
            if hit(&cmdline) || hit(&environ) {
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        for i in 0..self.agents.len() {
            self.resume_agent(i);
            self.kill_agent(i);
        }
        for i in 0..self.masters.len() {
            self.kill_master_at(i);
        }
        self.kill_strays();
        self.remove_agent_cgroups();
        self.remove_group_holders();
    }
}

impl Cluster {
    /// Asserts that `n` job indexes finished, and that each ran exactly once (from the
    /// shared run log).
    pub fn assert_every_job_once(&self, report: &Report, n: usize) {
        assert_eq!(finished_jobs(report).len(), n, "every job index finished");
        let runs = self.run_counts();
        assert_eq!(runs.len(), n, "every job index ran");
        let twice: Vec<_> = runs.iter().filter(|(_, c)| **c != 1).collect();
        assert!(twice.is_empty(), "jobs ran more than once: {twice:?}");
    }

    /// Waits (bounded) until the given masters have applied the same registry as the
    /// leader: same term and leader, applied index at least the leader's commit index, the
    /// same completed and active tasks, agents and frameworks.
    pub fn wait_for_replicas_to_agree(&self, masters: &[usize]) {
        wait_until(
            "the masters to apply the same registry",
            Duration::from_secs(120),
            Duration::from_millis(200),
            || {
                let leader = self.leader()?;
                let lead = self.raft_status(leader)?;
                for &i in masters {
                    let s = self.raft_status(i)?;
                    let same = s.term == lead.term
                        && s.leader_id == lead.id
                        && s.applied_index >= lead.commit_index
                        && s.completed_task_keys == lead.completed_task_keys
                        && s.active_tasks == lead.active_tasks
                        && s.agents == lead.agents
                        && s.frameworks == lead.frameworks;
                    if !same {
                        return None;
                    }
                }
                Some(())
            },
        );
    }
}

/// A plain HTTP GET (the daemons' metrics endpoints); empty when nothing answers.
pub fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: drover\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// The value of a counter or gauge in Prometheus text (0 when absent).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}
