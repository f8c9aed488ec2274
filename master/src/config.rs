//! The master's settings: [`Flags`] declares each one once (flag, default, help, file key
//! and environment name, through `drover_config`), [`Config`] is what they validate into.
//! A file key is the long flag name (`--data-dir` is `data-dir`), an environment name is
//! `DROVER_MASTER_` and the key in upper case (`DROVER_MASTER_DATA_DIR`); see
//! `drover_config` for the precedence and docs/operations.md for an example file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::Serialize;

use crate::error::{MasterError, Result};

/// How the master's settings are named in files and the environment.
pub const DAEMON: drover_config::Daemon = drover_config::Daemon {
    name: "drover-master",
    env_prefix: "DROVER_MASTER_",
};

/// `drover-master`: the Drover master daemon.
///
/// Holds the Raft-replicated registry of agents, frameworks and tasks, runs the DRF
/// allocator, and serves the scheduler, agent and operator gRPC APIs. Listens on loopback
/// unless told otherwise.
///
/// Every setting may also come from a TOML file (`--config FILE`, keys are the long flag
/// names) or from the environment (`DROVER_MASTER_<KEY>`); flags override the environment,
/// which overrides the file.
///
/// A new setting is a field here: it is then a flag, a file key and an environment
/// variable at once. Hidden flags stay command-line only (`drover_config`'s module docs).
#[derive(Debug, Clone, Parser, Serialize)]
#[command(name = "drover-master", version, about, long_about = None)]
#[serde(rename_all = "kebab-case")]
pub struct Flags {
    #[command(flatten)]
    #[serde(skip)]
    pub file: drover_config::FileArgs,

    /// Address of the gRPC API (scheduler, agent and operator services).
    #[arg(long, default_value = "127.0.0.1:5050", env = "DROVER_MASTER_LISTEN")]
    pub listen: SocketAddr,

    /// Address of the HTTP endpoint (GET /metrics in Prometheus text, /health, /state).
    #[arg(long, default_value = "127.0.0.1:5060")]
    pub http_listen: SocketAddr,

    /// Folder of the registry's RocksDB database (Raft log, hard state, snapshots).
    #[arg(long, default_value = "/var/lib/drover/master")]
    pub data_dir: PathBuf,

    /// This master's Raft id (a positive integer, unique in the cluster). The data folder
    /// records it: a folder written by another id is refused.
    #[arg(long, default_value_t = 1)]
    pub id: u64,

    /// Every master of the cluster, this one included: `1=HOST:PORT,2=HOST:PORT,3=HOST:PORT`
    /// (their gRPC `--listen` addresses, as the others can dial them). On an empty data
    /// folder it seeds a brand-new cluster whose voters are exactly these ids; on an
    /// existing data folder only the addresses are used (membership comes from the
    /// replicated log). Without it, an empty data folder starts a single-master cluster.
    #[arg(long, default_value = "", value_name = "ID=HOST:PORT,…")]
    pub peers: String,

    /// Join an existing cluster through any of its masters (`HOST:PORT[,HOST:PORT…]`):
    /// this master asks the leader to add it as a learner (unless `drover masters add`
    /// already did), catches up from a snapshot, and is promoted to voter. Only for an
    /// empty data folder and a new id: a master whose data was lost is replaced by a new
    /// id, never revived under its old one. Ignored once the data folder holds state.
    #[arg(
        long,
        default_value = "",
        value_name = "HOST:PORT,…",
        conflicts_with = "peers"
    )]
    pub join: String,

    /// The gRPC address the other masters, agents and clients use to reach this master,
    /// when it differs from `--listen` (e.g. `--listen 0.0.0.0:5050`). Default: this
    /// master's entry in `--peers`, else the `--listen` address.
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise_address: Option<String>,

    /// Interval between batch allocation cycles, in milliseconds. Events (a freed agent, a
    /// REVIVE, a new framework) also trigger a cycle.
    #[arg(long, default_value_t = 1000)]
    pub allocation_interval_ms: u64,

    /// How often agents ping the master, in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub agent_ping_interval_secs: f64,

    /// An agent silent this long (seconds) becomes UNREACHABLE; its tasks are reported
    /// UNREACHABLE (partition-aware frameworks) or LOST.
    #[arg(long, default_value_t = 30.0)]
    pub agent_timeout_secs: f64,

    /// An offer not used for this long (seconds) is rescinded.
    #[arg(long, default_value_t = 60.0)]
    pub offer_timeout_secs: f64,

    /// Interval of HEARTBEAT events to frameworks, in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub heartbeat_interval_secs: f64,

    /// Role weights for DRF, e.g. `analytics=3,web=1`, applied (and replicated) when this
    /// master starts leading. Roles not listed keep their weight (1 unless set before).
    #[arg(long, default_value = "")]
    pub weights: String,

    /// Raft tick in milliseconds; election and heartbeat timeouts are counted in ticks.
    #[arg(long, default_value_t = 50)]
    pub raft_tick_ms: u64,

    /// Election timeout in ticks (randomized between this and twice this).
    #[arg(long, default_value_t = 10)]
    pub raft_election_ticks: usize,

    /// Leader heartbeat interval in ticks.
    #[arg(long, default_value_t = 2)]
    pub raft_heartbeat_ticks: usize,

    /// Testing only: the highest registry version this master claims to support, below
    /// what its binary knows, so that a test can stand it in for an older release during
    /// a rolling upgrade (no old build needed).
    #[arg(long, hide = true, value_name = "N")]
    pub max_registry_version: Option<u32>,

    /// Testing only: serve the `RegistryTesting` gRPC service (test-only registry
    /// commands). Never needed in production.
    #[arg(long, hide = true)]
    pub enable_test_commands: bool,

    /// Log filter (tracing's env-filter syntax), e.g. `info` or `drover_master=debug`.
    /// `DROVER_LOG`, its older environment name, still works below `DROVER_MASTER_LOG_LEVEL`.
    #[arg(long, default_value = "info", env = "DROVER_LOG", global = true)]
    pub log_level: String,

    /// Not a setting: the file configures the serving master only.
    #[command(subcommand)]
    #[serde(skip)]
    pub command: Option<Subcommand>,
}

/// Operations other than serving.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Subcommand {
    /// Writes a backup of the registry to a file: online from the leader (`--master`), or
    /// offline from a stopped master's data folder (`--from-data-dir`).
    Backup {
        /// Any masters of the running cluster, `HOST:PORT[,HOST:PORT…]` (the leader is
        /// found from them).
        #[arg(
            long,
            value_delimiter = ',',
            conflicts_with = "from_data_dir",
            required_unless_present = "from_data_dir"
        )]
        master: Vec<String>,
        /// The data folder of a STOPPED master (e.g. the most up-to-date survivor of a
        /// cluster that lost its majority).
        #[arg(long, value_name = "DIR")]
        from_data_dir: Option<PathBuf>,
        /// Where to write the backup.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Seeds an EMPTY data folder as one member of a new cluster holding a backup's
    /// registry. Run it for every member with the same `--peers` and file, then start the
    /// masters as usual with those `--id`, `--peers` and `--data-dir`.
    Restore {
        /// The backup file.
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
        /// The new member's (empty) data folder.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// The new member's Raft id.
        #[arg(long)]
        id: u64,
        /// Every master of the new cluster: `1=HOST:PORT,2=HOST:PORT,3=HOST:PORT`.
        #[arg(long)]
        peers: String,
    },
}

/// The master's runtime settings, derived from [`Flags`].
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub http_listen: SocketAddr,
    pub data_dir: PathBuf,
    pub id: u64,
    /// Raft id → gRPC address of every master named by `--peers` (this one included);
    /// empty for a single-master cluster.
    pub peers: BTreeMap<u64, String>,
    /// Masters to contact to join an existing cluster (`--join`).
    pub join: Vec<String>,
    /// Where the others reach this master.
    pub advertise: String,
    pub allocation_interval: Duration,
    pub agent_ping_interval: Duration,
    pub agent_timeout_ms: u64,
    pub offer_timeout_ms: u64,
    pub heartbeat_interval: Duration,
    pub weights: Vec<(String, f64)>,
    pub raft_tick: Duration,
    pub raft_election_ticks: usize,
    pub raft_heartbeat_ticks: usize,
    /// The highest registry version this master supports (the binary's, unless capped by
    /// the hidden `--max-registry-version`).
    pub max_registry_version: u32,
    /// Serve the test-only `RegistryTesting` service (hidden `--enable-test-commands`).
    pub enable_test_commands: bool,
}

/// A refused setting, formatted like `format!`.
macro_rules! refused {
    ($($arg:tt)*) => {
        MasterError::Config(format!($($arg)*))
    };
}

fn positive_secs(name: &str, v: f64) -> Result<Duration> {
    if !(v.is_finite() && v > 0.0 && v < 1e7) {
        return Err(refused!(
            "--{name} must be a positive number of seconds, got {v}"
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

/// Parses `role=weight,role=weight`.
pub fn parse_weights(text: &str) -> Result<Vec<(String, f64)>> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (role, w) = part
            .split_once('=')
            .ok_or_else(|| refused!("weight '{part}' is not ROLE=WEIGHT"))?;
        let w: f64 = w
            .trim()
            .parse()
            .map_err(|_| refused!("weight '{part}' is not a number"))?;
        if !(w.is_finite() && w > 0.0 && w <= 1e6) {
            return Err(refused!(
                "weight of role '{role}' must be positive, got {w}"
            ));
        }
        crate::leader::validate_role(role.trim())
            .map_err(|e| MasterError::Config(e.to_string()))?;
        out.push((role.trim().to_string(), w));
    }
    Ok(out)
}

/// Parses `--peers`: `ID=HOST:PORT` pairs, ids positive and unique.
pub fn parse_peers(text: &str) -> Result<BTreeMap<u64, String>> {
    let mut out = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| refused!("peer '{part}' is not ID=HOST:PORT"))?;
        let id: u64 = id
            .trim()
            .parse()
            .ok()
            .filter(|&i| i > 0)
            .ok_or_else(|| refused!("peer '{part}': the id must be a positive integer"))?;
        let addr = addr.trim();
        if addr
            .rsplit_once(':')
            .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
        {
            return Err(refused!("peer '{part}': the address must be HOST:PORT"));
        }
        if out.insert(id, addr.to_string()).is_some() {
            return Err(refused!("--peers names master {id} twice"));
        }
    }
    Ok(out)
}

impl Flags {
    /// Parses `args` (the binary's name first) over the config file and the environment
    /// (`env` reads a variable), as `drover_config::load` describes.
    pub fn load<I, A>(
        args: I,
        env: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<drover_config::Loaded<Flags>, drover_config::Error>
    where
        I: IntoIterator<Item = A>,
        A: Into<std::ffi::OsString>,
    {
        drover_config::load(&DAEMON, args, env)
    }
}

impl Config {
    pub fn from_flags(f: &Flags) -> Result<Config> {
        if f.id == 0 {
            return Err(refused!("--id must be a positive integer"));
        }
        if f.raft_election_ticks <= f.raft_heartbeat_ticks {
            return Err(refused!(
                "--raft-election-ticks must be larger than --raft-heartbeat-ticks"
            ));
        }
        let peers = parse_peers(&f.peers)?;
        if !peers.is_empty() && !peers.contains_key(&f.id) {
            return Err(refused!(
                "--peers must name this master too (--id {} is not among {:?})",
                f.id,
                peers.keys().collect::<Vec<_>>()
            ));
        }
        let join: Vec<String> = f
            .join
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect();
        // clap refuses both flags together; this also covers values from a file or the
        // environment, which clap does not count as given.
        if !peers.is_empty() && !join.is_empty() {
            return Err(refused!("--peers and --join exclude each other: --peers seeds a new cluster, --join enters a running one"));
        }
        let advertise = match (&f.advertise_address, peers.get(&f.id)) {
            (Some(a), _) => a.clone(),
            (None, Some(a)) => a.clone(),
            (None, None) => f.listen.to_string(),
        };
        if let (Some(a), Some(p)) = (&f.advertise_address, peers.get(&f.id)) {
            if a != p {
                return Err(refused!(
                    "--advertise-address {a} differs from this master's --peers entry {p}"
                ));
            }
        }
        if !join.is_empty()
            && advertise
                .parse::<SocketAddr>()
                .is_ok_and(|a| a.ip().is_unspecified())
        {
            return Err(refused!("joining a cluster needs an address the other masters can dial: set --advertise-address (--listen is {})", f.listen));
        }
        let ping = positive_secs("agent-ping-interval-secs", f.agent_ping_interval_secs)?;
        let timeout = positive_secs("agent-timeout-secs", f.agent_timeout_secs)?;
        if timeout <= ping {
            return Err(refused!(
                "--agent-timeout-secs must be longer than --agent-ping-interval-secs"
            ));
        }
        let known = crate::registry::version::REGISTRY_VERSION;
        let max_registry_version = f.max_registry_version.unwrap_or(known);
        if !(1..=known).contains(&max_registry_version) {
            return Err(refused!(
                "--max-registry-version must be between 1 and {known}"
            ));
        }
        Ok(Config {
            listen: f.listen,
            http_listen: f.http_listen,
            data_dir: f.data_dir.clone(),
            id: f.id,
            peers,
            join,
            advertise,
            allocation_interval: Duration::from_millis(f.allocation_interval_ms.max(1)),
            agent_ping_interval: ping,
            agent_timeout_ms: timeout.as_millis() as u64,
            offer_timeout_ms: positive_secs("offer-timeout-secs", f.offer_timeout_secs)?.as_millis()
                as u64,
            heartbeat_interval: positive_secs(
                "heartbeat-interval-secs",
                f.heartbeat_interval_secs,
            )?,
            weights: parse_weights(&f.weights)?,
            raft_tick: Duration::from_millis(f.raft_tick_ms.max(1)),
            raft_election_ticks: f.raft_election_ticks,
            raft_heartbeat_ticks: f.raft_heartbeat_ticks,
            max_registry_version,
            enable_test_commands: f.enable_test_commands,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_parse_and_refuse_nonsense() {
        assert_eq!(
            parse_weights("a=1, b=3").unwrap(),
            vec![("a".to_string(), 1.0), ("b".to_string(), 3.0)]
        );
        assert!(parse_weights("a").is_err());
        assert!(parse_weights("a=-1").is_err());
        assert!(parse_weights("a=NaN").is_err());
        assert!(parse_weights("").unwrap().is_empty());
    }

    #[test]
    fn peers_parse_and_refuse_nonsense() {
        let p = parse_peers("1=127.0.0.1:5050, 2=host-b:5070,3=[::1]:5080").unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[&2], "host-b:5070");
        assert!(parse_peers("").unwrap().is_empty());
        assert!(parse_peers("1=a:1,1=b:2").is_err(), "duplicate id");
        assert!(parse_peers("0=a:1").is_err(), "id 0");
        assert!(parse_peers("1=a").is_err(), "no port");
        assert!(parse_peers("a:1").is_err(), "no id");
        let f = Flags::parse_from(["drover-master", "--id", "4", "--peers", "1=a:1,2=b:2"]);
        assert!(
            Config::from_flags(&f).is_err(),
            "own id missing from --peers"
        );
        let f = Flags::parse_from(["drover-master", "--id", "2", "--peers", "1=a:1,2=b:2"]);
        assert!(Config::from_flags(&f).is_ok());
    }

    #[test]
    fn defaults_listen_on_loopback() {
        let f = Flags::parse_from(["drover-master"]);
        assert!(f.listen.ip().is_loopback());
        assert!(f.http_listen.ip().is_loopback());
        assert!(Config::from_flags(&f).is_ok());
    }
}

/// The configuration layer as the master uses it: precedence, refusals, `--print-config`.
#[cfg(test)]
mod layer_tests {
    use drover_config::testing::{
        assert_packaged_example, keys_unset_by_default, reload_printed, write, Env,
    };
    use drover_config::Origin;

    use super::*;

    fn environment(vars: &[(&str, &str)]) -> Env<Flags> {
        Env::new(DAEMON, vars)
    }

    fn file(dir: &tempfile::TempDir, text: &str) -> String {
        write(dir.path(), "master.toml", text)
    }

    #[test]
    fn defaults_then_file_then_environment_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(
            &dir,
            "heartbeat-interval-secs = 2.5\nlisten = \"127.0.0.1:6050\"\nlog-level = \"warn\"\n",
        );
        let none = environment(&[]);
        let f = none.load(&[]).unwrap().settings;
        assert_eq!(f.heartbeat_interval_secs, 5.0);
        assert_eq!(f.log_level, "info");

        let l = none.load(&["--config", &path]).unwrap();
        assert_eq!(l.settings.heartbeat_interval_secs, 2.5);
        assert_eq!(l.settings.listen.port(), 6050);
        assert_eq!(l.origin("listen"), Some(&Origin::File(path.clone().into())));

        let env = environment(&[
            ("DROVER_MASTER_HEARTBEAT_INTERVAL_SECS", "3"),
            ("DROVER_MASTER_LISTEN", "127.0.0.1:7050"),
            ("DROVER_LOG", "debug"),
        ]);
        let f = env.load(&["--config", &path]).unwrap().settings;
        assert_eq!(f.heartbeat_interval_secs, 3.0);
        assert_eq!(f.listen.port(), 7050);
        assert_eq!(
            f.log_level, "debug",
            "the older DROVER_LOG still beats the file"
        );

        let env = environment(&[
            ("DROVER_MASTER_HEARTBEAT_INTERVAL_SECS", "3"),
            ("DROVER_LOG", "debug"),
            ("DROVER_MASTER_LOG_LEVEL", "trace"),
        ]);
        let l = env
            .load(&["--config", &path, "--heartbeat-interval-secs", "4"])
            .unwrap();
        assert_eq!(l.settings.heartbeat_interval_secs, 4.0);
        assert_eq!(
            l.origin("heartbeat-interval-secs"),
            Some(&Origin::CommandLine)
        );
        assert_eq!(l.settings.log_level, "trace");
        assert_eq!(l.settings.listen.port(), 6050);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_naming_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let env = environment(&[]);
        let path = file(&dir, "listne = \"0.0.0.0:5050\"\n");
        let err = env.load(&["--config", &path]).err().unwrap().to_string();
        assert_eq!(
            err,
            format!("{path}: key \"listne\": unknown key (did you mean \"listen\"?)")
        );
        let path = file(&dir, "heartbeat-interval-secs = \"5x\"\n");
        let err = env.load(&["--config", &path]).err().unwrap().to_string();
        assert!(
            err.starts_with(&format!(
                "{path}: key \"heartbeat-interval-secs\": invalid value \"5x\""
            )),
            "{err}"
        );
        // Checks across settings hold whatever layer a value came from.
        for text in [
            "id = 4\npeers = \"1=a:1,2=b:2\"\n",
            "peers = \"1=a:1\"\njoin = \"b:2\"\n",
            "agent-ping-interval-secs = 40\n",
            "raft-election-ticks = 1\n",
        ] {
            let path = file(&dir, text);
            let flags = env.load(&["--config", &path]).unwrap().settings;
            assert!(Config::from_flags(&flags).is_err(), "{text:?} accepted");
        }
        let path = file(&dir, "id = 2\npeers = \"1=a:1,2=b:2\"\n");
        let flags = env.load(&["--config", &path]).unwrap().settings;
        assert_eq!(Config::from_flags(&flags).unwrap().advertise, "b:2");
    }

    #[test]
    fn print_config_reads_back_to_the_same_settings() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(&dir, "peers = \"1=a:1,2=b:2\"\nweights = \"web=2\"\n");
        let env = environment(&[("DROVER_MASTER_RAFT_TICK_MS", "20")]);
        let first = env
            .load(&["--config", &path, "--id", "2", "--data-dir", "/srv/m"])
            .unwrap();
        let (printed, second) = reload_printed(DAEMON, &first, dir.path());
        assert_eq!(second.settings.raft_tick_ms, 20);
        assert!(
            printed.contains("\n# advertise-address = (not set)\n"),
            "{printed}"
        );
    }

    #[test]
    fn every_setting_is_a_file_key() {
        let keys = drover_config::keys::<Flags>(&DAEMON);
        assert_eq!(
            keys_unset_by_default::<Flags>(DAEMON),
            ["advertise-address"],
            "only unset options are missing"
        );
        assert!(keys.iter().any(|k| k == "log-level"));
        assert!(!keys.iter().any(|k| k == "config" || k == "print-config"));
    }

    /// `packaging/master.toml` is accepted, names every setting (set or commented out,
    /// so a new flag needs its line), and docs/operations.md shows it as it is.
    #[test]
    fn the_packaged_example_is_valid_and_complete() {
        assert_packaged_example::<Flags>(
            DAEMON,
            concat!(env!("CARGO_MANIFEST_DIR"), "/.."),
            "packaging/master.toml",
            |f| {
                Config::from_flags(f).unwrap();
            },
        );
    }
}
