//! The agents of a [`Cluster`]: adding, starting, killing, pausing them and waiting for
//! them to register.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use drover_proto::pb;

use super::{connect, process_exited, signal, Agent, Cluster};
use crate::free_port;

impl Cluster {
    /// Adds an agent with the given `--resources` and starts it.
    pub fn add_agent(&mut self, resources: &str) -> usize {
        self.add_agent_with(resources, &[])
    }

    /// [`Self::add_agent`] with more `drover-agent` flags (kept across restarts).
    pub fn add_agent_with(&mut self, resources: &str, extra_flags: &[&str]) -> usize {
        let i = self.agents.len();
        let work_dir = self.dir.path().join(format!("agent-{i}"));
        self.agents.push(Agent {
            child: None,
            port: free_port(),
            http_port: free_port(),
            work_dir,
            resources: resources.to_string(),
            extra_flags: extra_flags.iter().map(|f| f.to_string()).collect(),
        });
        self.start_agent(i);
        i
    }

    /// Starts (or restarts) agent `i` with its work folder.
    pub fn start_agent(&mut self, i: usize) {
        let masters = self.master_list();
        let a = &mut self.agents[i];
        assert!(a.child.is_none(), "agent {i} already running");
        let ports = format!("ports:[{}-{}]", 31000 + 1000 * i, 31999 + 1000 * i);
        let resources = if a.resources.is_empty() {
            ports
        } else {
            format!("{};{ports}", a.resources)
        };
        let mut cmd = Command::new(self.bins.join("drover-agent"));
        cmd.arg("--master")
            .arg(masters)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", a.port))
            .arg("--http-listen")
            .arg(format!("127.0.0.1:{}", a.http_port))
            .arg("--work-dir")
            .arg(&a.work_dir)
            .arg("--resources")
            .arg(resources)
            .arg("--status-update-retry-secs")
            .arg("1")
            .args(&a.extra_flags)
            .env("DROVER_LOG", "info");
        self.log_to(&mut cmd, &format!("agent-{i}"));
        let a = &mut self.agents[i];
        a.child = Some(cmd.spawn().expect("spawn drover-agent"));
    }

    /// Agent `i`'s `--work-dir` (sandboxes under `sandboxes/<framework>/<task>`).
    pub fn agent_work_dir(&self, i: usize) -> PathBuf {
        self.agents[i].work_dir.clone()
    }

    /// A binary of the workspace (e.g. `drover-example-executor`).
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bins.join(name)
    }

    /// `kill -9` of agent `i` (its tasks keep running under their supervisors).
    pub fn kill_agent(&mut self, i: usize) {
        if let Some(mut c) = self.agents[i].child.take() {
            signal(&c, libc::SIGKILL);
            let _ = c.wait();
        }
    }

    /// Freezes agent `i` (`SIGSTOP`): it stays connected but falls silent.
    pub fn pause_agent(&mut self, i: usize) {
        if let Some(c) = &self.agents[i].child {
            signal(c, libc::SIGSTOP);
        }
    }

    pub fn resume_agent(&mut self, i: usize) {
        if let Some(c) = &self.agents[i].child {
            signal(c, libc::SIGCONT);
        }
    }

    pub fn agent_address(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.agents[i].port)
    }

    /// Runs an async operator query against the master.
    pub fn operator<T>(
        &self,
        f: impl AsyncFnOnce(pb::operator_client::OperatorClient<tonic::transport::Channel>) -> Option<T>,
    ) -> Option<T> {
        let addr = self.master_addr();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        rt.block_on(async move {
            let c = pb::operator_client::OperatorClient::new(connect(&addr).await?);
            f(c).await
        })
    }

    /// Agents as the master reports them.
    pub fn agents(&self) -> Vec<pb::AgentSummary> {
        self.operator(async |mut c| {
            Some(
                c.get_agents(pb::GetAgentsRequest {})
                    .await
                    .ok()?
                    .into_inner()
                    .agents,
            )
        })
        .unwrap_or_default()
    }

    /// Waits until `n` agents are ACTIVE (connected to the leader). Fails at once, naming the
    /// agent, if one of the harness's agent processes has exited; on timeout the message
    /// lists what the master last reported for each agent.
    pub fn wait_for_active_agents(&self, n: usize) {
        let limit = Duration::from_secs(90);
        let start = Instant::now();
        let mut last = String::from("no answer from the master");
        loop {
            for (i, a) in self.agents.iter().enumerate() {
                if a.child.as_ref().is_some_and(|c| process_exited(c.id())) {
                    panic!("agent {i} exited before {n} agents were active (see its log)");
                }
            }
            let agents = self.agents();
            let active = agents
                .iter()
                .filter(|a| a.state == pb::agent_summary::State::Active as i32)
                .count();
            if active >= n {
                return;
            }
            if !agents.is_empty() {
                last = agents
                    .iter()
                    .map(|a| {
                        let state = pb::agent_summary::State::try_from(a.state)
                            .map(|s| s.as_str_name())
                            .unwrap_or("?");
                        format!("{} {state}", a.address)
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
            }
            if start.elapsed() > limit {
                panic!("timed out waiting for {n} active agents; the master last reported: {last}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
