//! The plan of a local cluster: which programs run with which flags, on which ports and
//! in which folders. It is decided, and checked, before anything starts, and it is a pure
//! function of the arguments so that it is tested without starting anything.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use drover_proto::pb::{self, agent_summary::State as AgentState};
use drover_proto::Resources;

use super::daemon::DaemonSpec;

/// Most agents one machine gets: each takes a block of 1000 ports from 31000 up, and the
/// last block must end below 65536.
pub const MAX_AGENTS: u16 = 34;
/// The master's HTTP address (web UI, metrics).
pub const MASTER_HTTP: &str = "127.0.0.1:5060";

/// A daemon binary next to `drover`, or an error saying how to get it.
fn sibling_binary(bin_dir: &Path, name: &str) -> Result<PathBuf> {
    let path = bin_dir.join(name);
    if !path.is_file() {
        bail!(
            "{name} was not found next to drover (in {}); build them with `cargo build --bins`",
            bin_dir.display()
        );
    }
    Ok(path)
}

/// One agent's place on this machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentPlan {
    pub name: String,
    pub listen: String,
    pub http: String,
    pub work_dir: PathBuf,
    pub resources: String,
}

/// Everything `drover local` will start, decided before starting anything.
#[derive(Debug)]
pub struct Plan {
    pub master_bin: PathBuf,
    pub agent_bin: PathBuf,
    pub data_dir: PathBuf,
    pub master_listen: String,
    /// Where clients dial the master: `master_listen`, with a wildcard host replaced by
    /// loopback.
    pub master_address: String,
    pub agents: Vec<AgentPlan>,
}

/// The agent API and HTTP ports of agent `index`. The first five follow the documented
/// scheme (5051+2i and 5061+2i); from the sixth on that scheme would reuse the HTTP ports
/// of the first agents (5051+2*5 = 5061), so later agents move to their own block from
/// 5100.
pub fn agent_ports(index: u16) -> (u16, u16) {
    if index < 5 {
        (5051 + 2 * index, 5061 + 2 * index)
    } else {
        let k = index - 5;
        (5100 + 2 * k, 5101 + 2 * k)
    }
}

/// The `ports` block of agent `index`: 1000 ports, disjoint between agents, so that two
/// agents on one machine never hand the same port to two tasks.
pub fn agent_port_block(index: u16) -> (u64, u64) {
    let begin = 31_000 + 1_000 * u64::from(index);
    (begin, begin + 999)
}

/// The `--resources` value of agent `index`: the user's resources plus the agent's port
/// block, unless the user named ports themselves.
pub fn agent_resources(user: Option<&Resources>, index: u16) -> String {
    let (begin, end) = agent_port_block(index);
    let ports = Resources::ranges("ports", vec![(begin, end)]);
    match user {
        Some(user) if !user.get_ranges("ports").is_empty() => user.to_string(),
        Some(user) => user.plus(&ports).to_string(),
        None => ports.to_string(),
    }
}

/// How many of `seen` are ACTIVE.
pub fn active_agents(seen: &[pb::AgentSummary]) -> usize {
    seen.iter()
        .filter(|a| a.state == AgentState::Active as i32)
        .count()
}

/// The address to dial for a listen address: a wildcard host means "every interface", of
/// which loopback is the one surely reachable.
pub fn dial_address(listen: &str) -> String {
    match listen.parse::<SocketAddr>() {
        Ok(SocketAddr::V4(a)) if a.ip().is_unspecified() => format!("127.0.0.1:{}", a.port()),
        Ok(SocketAddr::V6(a)) if a.ip().is_unspecified() => format!("[::1]:{}", a.port()),
        _ => listen.to_string(),
    }
}

impl Plan {
    pub fn new(
        bin_dir: &Path,
        data_dir: &Path,
        master_listen: &str,
        agents: u16,
        user_resources: Option<&Resources>,
    ) -> Result<Plan> {
        let master_listen = master_listen.trim().to_string();
        if master_listen
            .rsplit_once(':')
            .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
        {
            bail!("--master-listen {master_listen:?} is not HOST:PORT");
        }
        let plan = Plan {
            master_bin: sibling_binary(bin_dir, "drover-master")?,
            agent_bin: sibling_binary(bin_dir, "drover-agent")?,
            data_dir: data_dir.to_path_buf(),
            master_address: dial_address(&master_listen),
            master_listen,
            agents: (0..agents)
                .map(|i| {
                    let (listen, http) = agent_ports(i);
                    AgentPlan {
                        name: format!("agent-{i}"),
                        listen: format!("127.0.0.1:{listen}"),
                        http: format!("127.0.0.1:{http}"),
                        work_dir: data_dir.join(format!("agent-{i}")),
                        resources: agent_resources(user_resources, i),
                    }
                })
                .collect(),
        };
        let addresses = plan.listen_addresses();
        for (i, (who, address)) in addresses.iter().enumerate() {
            if let Some((other, _)) = addresses[..i].iter().find(|(_, a)| a == address) {
                bail!("{who} and {other} would both listen on {address}; choose another --master-listen");
            }
        }
        Ok(plan)
    }

    pub fn log(&self, name: &str) -> PathBuf {
        self.data_dir.join("logs").join(format!("{name}.log"))
    }

    /// Folders to create before starting.
    pub fn folders(&self) -> Vec<PathBuf> {
        let mut v = vec![self.data_dir.join("logs"), self.data_dir.join("master")];
        v.extend(self.agents.iter().map(|a| a.work_dir.clone()));
        v
    }

    /// Every address a daemon will listen on, with who listens there.
    pub fn listen_addresses(&self) -> Vec<(String, String)> {
        let mut v = vec![
            ("the master".to_string(), self.master_listen.clone()),
            (
                "the master's HTTP server".to_string(),
                MASTER_HTTP.to_string(),
            ),
        ];
        for a in &self.agents {
            v.push((a.name.clone(), a.listen.clone()));
            v.push((format!("{}'s HTTP server", a.name), a.http.clone()));
        }
        v
    }

    /// Fails early, with a hint, when a port is taken (most often by a `drover local`
    /// already running), instead of letting a daemon die with "address in use" in its log.
    /// There is a short window between this check and the daemons binding; a port taken
    /// in it still shows as a daemon exiting, with its log.
    pub fn check_addresses_free(&self) -> Result<()> {
        for (who, address) in self.listen_addresses() {
            match TcpListener::bind(address.as_str()) {
                Ok(listener) => drop(listener),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => bail!(
                    "{address} (for {who}) is already in use; is another `drover local` \
                     running? Stop it, or stop whatever holds that port"
                ),
                Err(e) => bail!("{who} cannot listen on {address}: {e}"),
            }
        }
        Ok(())
    }

    /// What to start, master first: agents dial it as soon as they run.
    pub fn specs(&self) -> Vec<DaemonSpec> {
        let os = |s: &str| OsString::from(s);
        let mut specs = vec![DaemonSpec {
            name: "master".to_string(),
            program: self.master_bin.clone(),
            args: vec![
                os("--listen"),
                os(&self.master_listen),
                os("--http-listen"),
                os(MASTER_HTTP),
                os("--data-dir"),
                self.data_dir.join("master").into_os_string(),
            ],
            log: self.log("master"),
        }];
        for a in &self.agents {
            specs.push(DaemonSpec {
                name: a.name.clone(),
                program: self.agent_bin.clone(),
                args: vec![
                    os("--master"),
                    os(&self.master_address),
                    os("--listen"),
                    os(&a.listen),
                    os("--http-listen"),
                    os(&a.http),
                    os("--work-dir"),
                    a.work_dir.clone().into_os_string(),
                    os("--shutdown-tasks-on-exit"),
                    os("--resources"),
                    os(&a.resources),
                ],
                log: self.log(&a.name),
            });
        }
        specs
    }

    /// True once the master reports as many ACTIVE agents as were started. Agents left
    /// in the registry by an earlier run cannot be ACTIVE: no process serves them.
    pub fn is_ready(&self, seen: &[pb::AgentSummary]) -> bool {
        active_agents(seen) >= self.agents.len()
    }

    /// Names of the planned agents the master does not report as ACTIVE at their
    /// address, to point at the right logs. Agents are matched by address because their
    /// ids are the master's to choose.
    pub fn missing_agents(&self, seen: &[pb::AgentSummary]) -> Vec<String> {
        self.agents
            .iter()
            .filter(|a| {
                !seen
                    .iter()
                    .any(|s| s.address == a.listen && s.state == AgentState::Active as i32)
            })
            .map(|a| a.name.clone())
            .collect()
    }

    /// What a user needs once the cluster is up.
    pub fn banner(&self, data_dir: &Path, seen: &[pb::AgentSummary]) -> String {
        let mut rows: Vec<(String, String)> = vec![
            ("master gRPC".into(), self.master_address.clone()),
            ("master HTTP".into(), format!("http://{MASTER_HTTP}")),
        ];
        for a in &self.agents {
            let id = seen
                .iter()
                .find(|s| s.address == a.listen)
                .and_then(|s| s.id.as_ref())
                .map(|id| format!(", id {id}"))
                .unwrap_or_default();
            rows.push((
                a.name.clone(),
                format!("{} (HTTP {}{id})", a.listen, a.http),
            ));
        }
        rows.push(("data".into(), data_dir.display().to_string()));
        rows.push(("logs".into(), self.log("master").display().to_string()));
        for a in &self.agents {
            rows.push((String::new(), self.log(&a.name).display().to_string()));
        }
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);

        let mut out = String::new();
        let n = self.agents.len();
        let _ = writeln!(
            out,
            "\nDrover is running locally: 1 master, {n} agent{}.\n",
            if n == 1 { "" } else { "s" }
        );
        for (key, value) in rows {
            let _ = writeln!(out, "  {key:<width$}  {value}");
        }
        let _ = writeln!(
            out,
            "\nTry it from another terminal:\n  export DROVER_MASTER={}; drover run -- echo hello\n\
             \nPress Ctrl-C to stop the cluster.",
            self.master_address
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder holding empty stand-ins for the daemon binaries.
    fn bin_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for name in ["drover-master", "drover-agent"] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        dir
    }

    fn plan(agents: u16, user: Option<&str>) -> Plan {
        let bins = bin_dir();
        let user = user.map(|u| Resources::parse(u).unwrap());
        Plan::new(
            bins.path(),
            Path::new("/data"),
            "127.0.0.1:5050",
            agents,
            user.as_ref(),
        )
        .unwrap()
    }

    fn args(spec: &DaemonSpec) -> Vec<String> {
        spec.args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn master_and_agent_flags() {
        let plan = plan(2, None);
        let specs = plan.specs();
        assert_eq!(specs.len(), 3);
        assert_eq!(specs[0].name, "master");
        assert_eq!(
            args(&specs[0]),
            [
                "--listen",
                "127.0.0.1:5050",
                "--http-listen",
                "127.0.0.1:5060",
                "--data-dir",
                "/data/master"
            ]
        );
        assert_eq!(specs[0].log, Path::new("/data/logs/master.log"));
        assert_eq!(
            args(&specs[2]),
            [
                "--master",
                "127.0.0.1:5050",
                "--listen",
                "127.0.0.1:5053",
                "--http-listen",
                "127.0.0.1:5063",
                "--work-dir",
                "/data/agent-1",
                "--shutdown-tasks-on-exit",
                "--resources",
                "ports:[32000-32999]"
            ]
        );
        assert_eq!(specs[2].log, Path::new("/data/logs/agent-1.log"));
    }

    #[test]
    fn agent_resources_merge_with_the_port_block() {
        let user = Resources::parse("cpus:2;mem:2048").unwrap();
        assert_eq!(
            agent_resources(Some(&user), 0),
            "cpus:2; mem:2048; ports:[31000-31999]"
        );
        let with_ports = Resources::parse("cpus:1;ports:[8000-8010]").unwrap();
        assert_eq!(
            agent_resources(Some(&with_ports), 3),
            "cpus:1; ports:[8000-8010]"
        );
        // The agents read the same syntax back.
        let back = Resources::parse(&agent_resources(Some(&user), 1)).unwrap();
        assert_eq!(back.get_ranges("ports").count(), 1000);
        assert_eq!(back.mem(), 2048.0);
    }

    #[test]
    fn no_two_daemons_share_a_port_even_with_many_agents() {
        let plan = plan(MAX_AGENTS, None);
        let addresses = plan.listen_addresses();
        let mut seen = std::collections::HashSet::new();
        for (who, a) in &addresses {
            assert!(seen.insert(a.clone()), "{who} reuses {a}");
        }
        // The documented scheme holds for the first five agents.
        assert_eq!(agent_ports(4), (5059, 5069));
        // Port blocks are disjoint, stay below 65536 and clear of the daemons' ports.
        let last = agent_port_block(MAX_AGENTS - 1);
        assert!(last.1 <= 65_535);
        for i in 0..MAX_AGENTS {
            let (listen, http) = agent_ports(i);
            assert!(u64::from(listen.max(http)) < agent_port_block(0).0);
        }
    }

    #[test]
    fn clashing_master_address_is_refused() {
        let bins = bin_dir();
        let error = Plan::new(bins.path(), Path::new("/d"), "127.0.0.1:5051", 1, None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("agent-0 and the master would both listen on 127.0.0.1:5051"));
        assert!(Plan::new(bins.path(), Path::new("/d"), "5050", 1, None).is_err());
        assert!(Plan::new(bins.path(), Path::new("/d"), "host:port", 1, None).is_err());
    }

    #[test]
    fn missing_binaries_say_how_to_build_them() {
        let empty = tempfile::tempdir().unwrap();
        let error = Plan::new(empty.path(), Path::new("/d"), "127.0.0.1:5050", 1, None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("drover-master was not found next to drover"));
        assert!(error.ends_with("build them with `cargo build --bins`"));
    }

    #[test]
    fn wildcard_listen_is_dialled_on_loopback() {
        assert_eq!(dial_address("0.0.0.0:5050"), "127.0.0.1:5050");
        assert_eq!(dial_address("[::]:5050"), "[::1]:5050");
        assert_eq!(dial_address("10.0.0.1:5050"), "10.0.0.1:5050");
        assert_eq!(dial_address("localhost:5050"), "localhost:5050");
    }

    fn summary(address: &str, state: AgentState) -> pb::AgentSummary {
        pb::AgentSummary {
            id: Some(drover_proto::AgentId::new(format!("id-{address}"))),
            address: address.into(),
            state: state as i32,
            ..Default::default()
        }
    }

    #[test]
    fn ready_means_every_agent_active_at_its_address() {
        let plan = plan(2, None);
        assert_eq!(plan.missing_agents(&[]), ["agent-0", "agent-1"]);
        let seen = [
            summary("127.0.0.1:5051", AgentState::Active),
            summary("127.0.0.1:5053", AgentState::Disconnected),
        ];
        assert_eq!(plan.missing_agents(&seen), ["agent-1"]);
        assert!(!plan.is_ready(&seen));
        let seen = [
            summary("127.0.0.1:5051", AgentState::Active),
            summary("127.0.0.1:5053", AgentState::Active),
        ];
        assert!(plan.missing_agents(&seen).is_empty());
        assert!(plan.is_ready(&seen));
        let banner = plan.banner(Path::new("/data"), &seen);
        assert!(banner
            .contains("agent-1      127.0.0.1:5053 (HTTP 127.0.0.1:5063, id id-127.0.0.1:5053)"));
        assert!(banner.contains("export DROVER_MASTER=127.0.0.1:5050; drover run -- echo hello"));
        assert!(banner.contains("/data/logs/agent-1.log"));
    }
}
