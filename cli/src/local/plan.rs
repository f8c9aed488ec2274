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

use drover_testkit::daemon::DaemonSpec;

/// Most agents one machine gets: each takes a block of 1000 ports from 31000 up, and the
/// last block must end below 65536.
pub const MAX_AGENTS: u16 = 34;
/// Most masters one local cluster runs (Raft groups are 1, 3 or 5 masters).
pub const MAX_MASTERS: u16 = 5;

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

/// One master's place on this machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasterPlan {
    /// `master` alone, or `master-1`, `master-2`, … (its Raft id) in a group.
    pub name: String,
    pub id: u64,
    pub listen: String,
    /// Where clients and the other masters dial it: `listen`, with a wildcard host
    /// replaced by loopback.
    pub address: String,
    pub http: String,
    pub data_dir: PathBuf,
}

/// Everything `drover local` will start, decided before starting anything.
#[derive(Debug)]
pub struct Plan {
    pub master_bin: PathBuf,
    pub agent_bin: PathBuf,
    pub data_dir: PathBuf,
    pub masters: Vec<MasterPlan>,
    /// Every master's address, comma-separated: what agents and clients are given.
    pub master_address: String,
    pub agents: Vec<AgentPlan>,
}

/// The gRPC and HTTP ports of master `index` when the first listens on `base`: the first
/// keeps `base` and 5060; the others take `base + 10 + 10 * index` and the port after it
/// (5070/5071 and 5080/5081 with the default 5050), clear of the agents' 5051-5069.
pub fn master_ports(base: u16, index: u16) -> (u16, u16) {
    if index == 0 {
        (base, 5060)
    } else {
        let p = base.saturating_add(10 + 10 * index);
        (p, p.saturating_add(1))
    }
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
        masters: u16,
        agents: u16,
        user_resources: Option<&Resources>,
    ) -> Result<Plan> {
        let master_listen = master_listen.trim().to_string();
        let Some((host, base)) = master_listen
            .rsplit_once(':')
            .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
            .filter(|(host, _)| !host.is_empty())
        else {
            bail!("--master-listen {master_listen:?} is not HOST:PORT");
        };
        if masters == 0 || masters > MAX_MASTERS {
            bail!("--masters must be between 1 and {MAX_MASTERS}");
        }
        let masters: Vec<MasterPlan> = (0..masters)
            .map(|i| {
                let (port, http) = master_ports(base, i);
                let single = masters == 1;
                let listen = if i == 0 {
                    master_listen.clone()
                } else {
                    format!("{host}:{port}")
                };
                let name = if single {
                    "master".to_string()
                } else {
                    format!("master-{}", i + 1)
                };
                MasterPlan {
                    data_dir: data_dir.join(&name),
                    name,
                    id: u64::from(i) + 1,
                    address: dial_address(&listen),
                    listen,
                    http: format!("127.0.0.1:{http}"),
                }
            })
            .collect();
        let plan = Plan {
            master_bin: sibling_binary(bin_dir, "drover-master")?,
            agent_bin: sibling_binary(bin_dir, "drover-agent")?,
            data_dir: data_dir.to_path_buf(),
            master_address: masters
                .iter()
                .map(|m| m.address.clone())
                .collect::<Vec<_>>()
                .join(","),
            masters,
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
                bail!("{who} and {other} would both listen on {address}; choose another --master-listen or fewer --agents");
            }
        }
        Ok(plan)
    }

    pub fn log(&self, name: &str) -> PathBuf {
        self.data_dir.join("logs").join(format!("{name}.log"))
    }

    /// Folders to create before starting.
    pub fn folders(&self) -> Vec<PathBuf> {
        let mut v = vec![self.data_dir.join("logs")];
        v.extend(self.masters.iter().map(|m| m.data_dir.clone()));
        v.extend(self.agents.iter().map(|a| a.work_dir.clone()));
        v
    }

    /// Every address a daemon will listen on, with who listens there.
    pub fn listen_addresses(&self) -> Vec<(String, String)> {
        let mut v = Vec::new();
        for m in &self.masters {
            let who = if self.masters.len() == 1 {
                "the master".to_string()
            } else {
                m.name.clone()
            };
            v.push((who.clone(), m.listen.clone()));
            v.push((format!("{who}'s HTTP server"), m.http.clone()));
        }
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

    /// Refuses a data folder whose masters were seeded for another number of masters:
    /// `--peers` seeds only a brand-new cluster, so 3 masters cannot grow to 5 (or shrink
    /// to 3) by restarting with another `--masters`.
    pub fn check_existing_masters(&self) -> Result<()> {
        let has_data = |d: &Path| d.join("registry").exists();
        let planned = self
            .masters
            .iter()
            .filter(|m| has_data(&m.data_dir))
            .count();
        let mut others = Vec::new();
        if self.masters.len() > 1 && has_data(&self.data_dir.join("master")) {
            others.push("master".to_string());
        }
        for i in 1..=u64::from(MAX_MASTERS) {
            let name = format!("master-{i}");
            let planned_here = self.masters.iter().any(|m| m.name == name);
            if !planned_here && has_data(&self.data_dir.join(&name)) {
                others.push(name);
            }
        }
        if !others.is_empty() || (planned != 0 && planned != self.masters.len()) {
            bail!(
                "{} holds a cluster of another number of masters ({} with data); run it \
                 again with the --masters it was created with, or start over with --fresh",
                self.data_dir.display(),
                others.len() + planned
            );
        }
        Ok(())
    }

    /// What to start, masters first: agents dial them as soon as they run.
    pub fn specs(&self) -> Vec<DaemonSpec> {
        let os = |s: &str| OsString::from(s);
        let peers = self
            .masters
            .iter()
            .map(|m| format!("{}={}", m.id, m.address))
            .collect::<Vec<_>>()
            .join(",");
        let mut specs: Vec<DaemonSpec> = self
            .masters
            .iter()
            .map(|m| {
                let mut args = vec![
                    os("--listen"),
                    os(&m.listen),
                    os("--http-listen"),
                    os(&m.http),
                    os("--data-dir"),
                    m.data_dir.clone().into_os_string(),
                ];
                if self.masters.len() > 1 {
                    args.extend([os("--id"), os(&m.id.to_string()), os("--peers"), os(&peers)]);
                }
                DaemonSpec {
                    name: m.name.clone(),
                    program: self.master_bin.clone(),
                    args,
                    log: self.log(&m.name),
                }
            })
            .collect();
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
        let mut rows: Vec<(String, String)> = Vec::new();
        for m in &self.masters {
            rows.push((format!("{} gRPC", m.name), m.address.clone()));
            rows.push((format!("{} HTTP", m.name), format!("http://{}", m.http)));
        }
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
        for (i, m) in self.masters.iter().enumerate() {
            let key = if i == 0 { "logs" } else { "" };
            rows.push((key.into(), self.log(&m.name).display().to_string()));
        }
        for a in &self.agents {
            rows.push((String::new(), self.log(&a.name).display().to_string()));
        }
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);

        let mut out = String::new();
        let n = self.agents.len();
        let _ = writeln!(
            out,
            "\nDrover is running locally: {} master{}, {n} agent{}.\n",
            self.masters.len(),
            if self.masters.len() == 1 { "" } else { "s" },
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
            1,
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
    fn three_masters_know_each_other_and_agents_know_them_all() {
        let bins = bin_dir();
        let plan = Plan::new(
            bins.path(),
            Path::new("/data"),
            "127.0.0.1:5050",
            3,
            2,
            None,
        )
        .unwrap();
        let specs = plan.specs();
        assert_eq!(specs.len(), 5);
        let peers = "1=127.0.0.1:5050,2=127.0.0.1:5070,3=127.0.0.1:5080";
        assert_eq!(
            args(&specs[1]),
            [
                "--listen",
                "127.0.0.1:5070",
                "--http-listen",
                "127.0.0.1:5071",
                "--data-dir",
                "/data/master-2",
                "--id",
                "2",
                "--peers",
                peers
            ]
        );
        assert_eq!(specs[2].name, "master-3");
        assert_eq!(
            &args(&specs[2])[..4],
            [
                "--listen",
                "127.0.0.1:5080",
                "--http-listen",
                "127.0.0.1:5081"
            ]
        );
        assert_eq!(
            &args(&specs[3])[..2],
            ["--master", "127.0.0.1:5050,127.0.0.1:5070,127.0.0.1:5080"]
        );
        let banner = plan.banner(Path::new("/data"), &[]);
        assert!(banner.contains("3 masters, 2 agents"));
        assert!(banner.contains(
            "export DROVER_MASTER=127.0.0.1:5050,127.0.0.1:5070,127.0.0.1:5080; drover run"
        ));
        // Five masters and many agents: every port is still distinct or refused.
        let five = Plan::new(bins.path(), Path::new("/d"), "127.0.0.1:5050", 5, 5, None);
        assert!(five.is_ok());
        assert!(Plan::new(bins.path(), Path::new("/d"), "127.0.0.1:5050", 6, 1, None).is_err());
    }

    #[test]
    fn another_number_of_masters_is_refused_on_existing_data() {
        let bins = bin_dir();
        let data = tempfile::tempdir().unwrap();
        let plan = |n| Plan::new(bins.path(), data.path(), "127.0.0.1:5050", n, 1, None).unwrap();
        assert!(plan(3).check_existing_masters().is_ok(), "empty folder");
        for i in 1..=3 {
            std::fs::create_dir_all(data.path().join(format!("master-{i}/registry"))).unwrap();
        }
        assert!(plan(3).check_existing_masters().is_ok());
        assert!(plan(5).check_existing_masters().is_err());
        assert!(plan(1).check_existing_masters().is_err());
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
        let error = Plan::new(bins.path(), Path::new("/d"), "127.0.0.1:5051", 1, 1, None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("agent-0 and the master would both listen on 127.0.0.1:5051"));
        assert!(Plan::new(bins.path(), Path::new("/d"), "5050", 1, 1, None).is_err());
        assert!(Plan::new(bins.path(), Path::new("/d"), "host:port", 1, 1, None).is_err());
    }

    #[test]
    fn missing_binaries_say_how_to_build_them() {
        let empty = tempfile::tempdir().unwrap();
        let error = Plan::new(empty.path(), Path::new("/d"), "127.0.0.1:5050", 1, 1, None)
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
