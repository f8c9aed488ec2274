//! The agent's settings ([`Config`]) and their validation into [`Settings`].
//!
//! [`Config`] declares each setting once: flag, default and help, and through
//! `drover_config` its file key (the long flag name: `--work-dir` is `work-dir`) and its
//! environment name (`DROVER_AGENT_WORK_DIR`). See `drover_config` for the precedence and
//! docs/operations.md for an example file.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use drover_proto::pb;
use drover_proto::Resources;
use serde::Serialize;

use crate::error::AgentError;
use crate::images::ImportLimits;

/// The Drover agent: runs tasks on this machine for the Drover masters.
///
/// The agent dials the leading master, registers this machine's resources, launches the
/// tasks it is sent, and reports every state change until it is acknowledged. Tasks run
/// under small supervisor processes that outlive the agent, so the agent can be restarted
/// (or upgraded) without disturbing them.
///
/// Every setting may also come from a TOML file (`--config FILE`, keys are the long flag
/// names) or from the environment (`DROVER_AGENT_<KEY>`); flags override the environment,
/// which overrides the file.
//
// A new setting is a field here (or in a flattened struct that also derives Serialize):
// it is then a flag, a file key and an environment variable at once. Hidden flags stay
// command-line only.
#[derive(Parser, Serialize, Debug, Clone)]
#[command(name = "drover-agent", version)]
#[serde(rename_all = "kebab-case")]
pub struct Config {
    #[command(flatten)]
    #[serde(skip)]
    pub file: drover_config::FileArgs,

    /// Masters to dial, as HOST:PORT[,HOST:PORT...]. The agent tries each in turn and
    /// follows a follower's hint to the current leader. `DROVER_MASTER`, its older
    /// environment name, still works below `DROVER_AGENT_MASTER`.
    #[arg(
        long,
        env = "DROVER_MASTER",
        default_value = "127.0.0.1:5050",
        value_delimiter = ',',
        value_name = "HOST:PORT[,HOST:PORT...]"
    )]
    pub master: Vec<String>,

    /// Address of the agent's own gRPC API (files API, agent state). Port 0 picks a free
    /// port; the bound address is what the agent advertises.
    #[arg(long, default_value = "127.0.0.1:5051", value_name = "HOST:PORT")]
    pub listen: String,

    /// Address the master and clients should use to reach the agent's API, when it
    /// differs from the bound `--listen` address (NAT, containers, 0.0.0.0). Default: the
    /// bound listen address (with the hostname in place of an unspecified IP).
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise_address: Option<String>,

    /// Address of the HTTP endpoint serving GET /metrics (Prometheus text) and GET
    /// /health. Port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:5061", value_name = "HOST:PORT")]
    pub http_listen: String,

    /// Directory for the agent's checkpoints (meta/) and the tasks' sandboxes
    /// (sandboxes/). Keep it across restarts: it is how a restarted agent finds its tasks.
    #[arg(long, default_value = "/var/lib/drover/agent", value_name = "DIR")]
    pub work_dir: PathBuf,

    /// Resources to offer, overriding the detected ones by name, e.g.
    /// 'cpus:4;mem:8192;disk:10000;ports:[31000-32000]'. Detected: cpus (available
    /// parallelism), mem (MB, MemTotal), disk (MB free in --work-dir), ports
    /// [31000-32000].
    #[arg(long, value_name = "NAME:VALUE;...")]
    pub resources: Option<String>,

    /// Attributes describing this machine for placement constraints, e.g.
    /// 'rack:r1;zone:a'.
    #[arg(long, value_name = "NAME:TEXT;...")]
    pub attributes: Option<String>,

    /// Hostname to report to the master. Default: this machine's hostname.
    #[arg(long)]
    pub hostname: Option<String>,

    /// Seconds between SIGTERM and SIGKILL when a task is killed and neither the kill nor
    /// the task names a grace period.
    #[arg(long, default_value_t = 3.0, value_name = "SECS")]
    pub default_grace_period_secs: f64,

    /// Containerizers to enable, comma-separated; the first is the default for tasks
    /// whose ContainerInfo names no type. 'linux': namespaces, cgroups and an init per
    /// task (needs root and the cpu, cpuacct, memory and pids cgroup controllers);
    /// 'process': plain processes in sandboxes, no isolation; 'docker': tasks whose
    /// ContainerInfo.type is DOCKER, through the Docker engine at --docker-socket.
    /// Default: 'linux,process' when the agent runs as root and the cgroup controllers
    /// are usable, else 'process'; plus 'docker' when the engine answers at start-up.
    /// Naming 'docker' makes an engine that does not answer a start-up error.
    #[arg(long, value_delimiter = ',', value_name = "NAME[,NAME...]")]
    pub containerizers: Vec<String>,

    /// Most processes (and threads) one linux container may hold (cgroup pids.max), for
    /// tasks whose ContainerInfo.pids_limit is 0.
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub pids_limit: u64,

    /// Where the linux containerizer puts its cgroups, relative to the root of each
    /// cgroup hierarchy: <ROOT>/<agent-tag>/<container-id>. Outside the agent's own
    /// cgroup on purpose, so restarting the agent's service does not kill tasks.
    #[arg(long, default_value = "drover", value_name = "PATH")]
    pub cgroups_root: PathBuf,

    /// CPUs kept for the agent and the system: subtracted from the detected cpus (not
    /// from a --resources override).
    #[arg(long, default_value_t = 0.5, value_name = "CPUS")]
    pub reserved_cpus: f64,

    /// Memory (MB) kept for the agent and the system: subtracted from the detected mem
    /// (not from a --resources override). Default: 10% of the machine's memory, at least
    /// 256 MB and at most 4096 MB.
    #[arg(long, value_name = "MB")]
    pub reserved_mem_mb: Option<f64>,

    /// The Docker engine's API socket, used by the 'docker' containerizer.
    #[arg(long, default_value = crate::containerizer::docker::DEFAULT_SOCKET, value_name = "PATH")]
    pub docker_socket: PathBuf,

    /// On SIGINT/SIGTERM, kill every running task before exiting. Off by default: tasks
    /// normally outlive the agent and a restarted agent reattaches to them.
    #[arg(long)]
    pub shutdown_tasks_on_exit: bool,

    /// Largest image archive `ImportImage` accepts (as sent, or once un-gzipped), in MiB.
    /// Larger uploads are refused with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 4096, value_name = "MIB")]
    pub image_max_archive_mb: u64,

    /// Largest total size of the files one image may unpack to, in MiB (guards against
    /// layers that decompress to far more than they weigh).
    #[arg(long, default_value_t = 16384, value_name = "MIB")]
    pub image_max_unpacked_mb: u64,

    /// Log filter, e.g. 'info' or 'info,drover_agent=debug' (tracing-subscriber
    /// EnvFilter syntax).
    #[arg(long, default_value = "info", value_name = "FILTER")]
    pub log_level: String,

    /// First retry interval of an unacknowledged status update, in seconds (doubles up
    /// to 10 minutes). For tests: hidden, so a command-line flag only (no file key, no
    /// environment variable).
    #[arg(long, default_value_t = 10.0, hide = true)]
    pub status_update_retry_secs: f64,

    /// Disk enforcement, output rotation, task users and sandbox garbage collection.
    #[command(flatten)]
    #[serde(flatten)]
    pub sandbox: crate::sandbox_flags::SandboxFlags,
    /// Seconds a custom executor has, from its start, to subscribe to the agent; after
    /// that it is killed and its tasks fail with REASON_EXECUTOR_REGISTRATION_TIMEOUT.
    #[arg(long, default_value_t = 60.0, value_name = "SECS")]
    pub executor_registration_timeout_secs: f64,
}

/// How the agent's settings are named in files and the environment.
pub const DAEMON: drover_config::Daemon = drover_config::Daemon {
    name: "drover-agent",
    env_prefix: "DROVER_AGENT_",
};

/// Validated settings, derived from [`Config`].
#[derive(Clone, Debug)]
pub struct Settings {
    pub masters: Vec<String>,
    pub listen: String,
    pub advertise_address: Option<String>,
    pub http_listen: String,
    pub work_dir: PathBuf,
    pub resource_overrides: Resources,
    pub attributes: Vec<pb::Attribute>,
    pub hostname: Option<String>,
    pub default_grace: Duration,
    pub shutdown_tasks_on_exit: bool,
    pub status_update_retry: Duration,
    /// See [`Config::executor_registration_timeout_secs`].
    pub executor_registration_timeout: Duration,
    /// Empty: choose automatically (see `containerizer::build`).
    pub containerizers: Vec<String>,
    pub pids_limit: u64,
    /// Relative, without `..`.
    pub cgroups_root: PathBuf,
    pub reserved_cpus: f64,
    pub reserved_mem_mb: Option<f64>,
    pub image_limits: ImportLimits,
    pub docker_socket: PathBuf,
    pub sandbox: crate::sandbox_flags::SandboxSettings,
}

impl Config {
    /// Parses `args` (the binary's name first) over the config file and the environment
    /// (`env` reads a variable), as `drover_config::load` describes: what `drover-agent`
    /// runs with.
    pub fn load<I, A>(
        args: I,
        env: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<drover_config::Loaded<Config>, drover_config::Error>
    where
        I: IntoIterator<Item = A>,
        A: Into<std::ffi::OsString>,
    {
        drover_config::load(&DAEMON, args, env)
    }

    /// Parses a command line, e.g. in tests: `Config::from_args(["--work-dir", "/tmp/x"])`.
    pub fn from_args<I, T>(args: I) -> Result<Config, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Config::try_parse_from(
            std::iter::once("drover-agent".into()).chain(
                args.into_iter()
                    .map(Into::into)
                    .collect::<Vec<std::ffi::OsString>>(),
            ),
        )
    }

    /// Checks every flag and returns the settings the agent runs with.
    pub fn validate(&self) -> Result<Settings, AgentError> {
        let masters: Vec<String> = self
            .master
            .iter()
            .map(|m| m.trim().to_string())
            .filter(|m| !m.is_empty())
            .collect();
        if masters.is_empty() {
            return Err(AgentError::Config("--master names no master".into()));
        }
        let mut containerizers: Vec<String> = Vec::new();
        for c in &self.containerizers {
            let c = c.trim();
            match c {
                "linux" | "process" | "docker" => {}
                "" => continue,
                other => {
                    return Err(AgentError::Config(format!(
                        "--containerizers: unknown containerizer '{other}' (known: linux, process, docker)"
                    )))
                }
            }
            if containerizers.iter().any(|x| x == c) {
                return Err(AgentError::Config(format!(
                    "--containerizers names '{c}' twice"
                )));
            }
            containerizers.push(c.to_string());
        }
        if !self.containerizers.is_empty() && containerizers.is_empty() {
            return Err(AgentError::Config(
                "--containerizers names no containerizer".into(),
            ));
        }
        if self.pids_limit == 0 || self.pids_limit > 4_194_304 {
            return Err(AgentError::Config(format!(
                "--pids-limit must be between 1 and 4194304, not {}",
                self.pids_limit
            )));
        }
        let root = &self.cgroups_root;
        let plain = root
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if root.as_os_str().is_empty() || !plain {
            return Err(AgentError::Config(format!(
                "--cgroups-root must be a relative path without '.' or '..', not '{}'",
                root.display()
            )));
        }
        let rc = self.reserved_cpus;
        if !rc.is_finite() || rc < 0.0 {
            return Err(AgentError::Config(format!(
                "--reserved-cpus must be 0 or more, not {rc}"
            )));
        }
        if let Some(m) = self.reserved_mem_mb {
            if !m.is_finite() || m < 0.0 {
                return Err(AgentError::Config(format!(
                    "--reserved-mem-mb must be 0 or more, not {m}"
                )));
            }
        }
        let resource_overrides = match &self.resources {
            Some(text) => Resources::parse(text)
                .map_err(|e| AgentError::Config(format!("--resources: {e}")))?,
            None => Resources::new(),
        };
        let attributes = match &self.attributes {
            Some(text) => parse_attributes(text)
                .map_err(|e| AgentError::Config(format!("--attributes: {e}")))?,
            None => Vec::new(),
        };
        let grace = self.default_grace_period_secs;
        if !grace.is_finite() || !(0.0..=86_400.0).contains(&grace) {
            return Err(AgentError::Config(format!(
                "--default-grace-period-secs must be between 0 and 86400, not {grace}"
            )));
        }
        let registration = self.executor_registration_timeout_secs;
        if !registration.is_finite() || !(0.001..=86_400.0).contains(&registration) {
            return Err(AgentError::Config(format!(
                "--executor-registration-timeout-secs must be between 0.001 and 86400, not {registration}"
            )));
        }
        let retry = self.status_update_retry_secs;
        if !retry.is_finite() || !(0.001..=600.0).contains(&retry) {
            return Err(AgentError::Config(format!(
                "--status-update-retry-secs must be between 0.001 and 600, not {retry}"
            )));
        }
        for (flag, mb) in [
            ("--image-max-archive-mb", self.image_max_archive_mb),
            ("--image-max-unpacked-mb", self.image_max_unpacked_mb),
        ] {
            if !(1..=1 << 30).contains(&mb) {
                return Err(AgentError::Config(format!(
                    "{flag} must be between 1 and {}, not {mb}",
                    1u64 << 30
                )));
            }
        }
        let image_limits = ImportLimits {
            max_archive_bytes: self.image_max_archive_mb << 20,
            max_unpacked_bytes: self.image_max_unpacked_mb << 20,
        };
        if let Some(h) = &self.hostname {
            if h.trim().is_empty() {
                return Err(AgentError::Config("--hostname is empty".into()));
            }
        }
        Ok(Settings {
            masters,
            listen: self.listen.clone(),
            advertise_address: self.advertise_address.clone(),
            http_listen: self.http_listen.clone(),
            work_dir: self.work_dir.clone(),
            resource_overrides,
            attributes,
            hostname: self.hostname.clone(),
            default_grace: Duration::from_secs_f64(grace),
            shutdown_tasks_on_exit: self.shutdown_tasks_on_exit,
            status_update_retry: Duration::from_secs_f64(retry),
            executor_registration_timeout: Duration::from_secs_f64(registration),
            containerizers,
            pids_limit: self.pids_limit,
            cgroups_root: self.cgroups_root.clone(),
            reserved_cpus: self.reserved_cpus,
            reserved_mem_mb: self.reserved_mem_mb,
            image_limits,
            docker_socket: self.docker_socket.clone(),
            sandbox: self.sandbox.validate()?,
        })
    }
}

/// Parses `rack:r1;zone:a`.
pub fn parse_attributes(text: &str) -> Result<Vec<pb::Attribute>, String> {
    let mut out: Vec<pb::Attribute> = Vec::new();
    for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = part
            .split_once(':')
            .ok_or_else(|| format!("'{part}' is not NAME:TEXT"))?;
        let (name, value) = (name.trim(), value.trim());
        if name.is_empty() {
            return Err(format!("'{part}' has no name"));
        }
        if out.iter().any(|a| a.name == name) {
            return Err(format!("attribute '{name}' is given twice"));
        }
        out.push(pb::Attribute {
            name: name.to_string(),
            text: value.to_string(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn defaults_and_validation() {
        let c = Config::from_args(["--work-dir", "/tmp/x"]).unwrap();
        // DROVER_MASTER may be set in the environment; only check the parsed shape.
        assert!(!c.master.is_empty());
        assert_eq!(c.listen, "127.0.0.1:5051");
        assert_eq!(c.http_listen, "127.0.0.1:5061");
        assert!(c.containerizers.is_empty());
        let s = c.validate().unwrap();
        assert!(s.containerizers.is_empty());
        assert_eq!((s.pids_limit, s.reserved_cpus), (4096, 0.5));
        assert_eq!(s.docker_socket, PathBuf::from("/var/run/docker.sock"));
        assert_eq!(s.default_grace, Duration::from_secs(3));
        assert_eq!(s.status_update_retry, Duration::from_secs(10));

        let c =
            Config::from_args(["--master", "a:1,b:2", "--attributes", "rack:r1;zone:a"]).unwrap();
        let s = c.validate().unwrap();
        assert_eq!(s.masters, ["a:1", "b:2"]);
        assert_eq!(s.attributes.len(), 2);
        assert_eq!(s.attributes[1].text, "a");

        let err = Config::from_args(["--containerizers", "process,podman"])
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown containerizer 'podman'"), "{err}");
        let s = Config::from_args(["--containerizers", "process,linux"])
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(s.containerizers, ["process", "linux"]);
        for bad in [
            "--containerizers=linux,linux",
            "--pids-limit=0",
            "--cgroups-root=/abs",
            "--cgroups-root=a/../b",
            "--reserved-cpus=-1",
            "--reserved-mem-mb=NaN",
        ] {
            assert!(
                Config::from_args([bad]).unwrap().validate().is_err(),
                "{bad:?} accepted"
            );
        }
        assert!(Config::from_args(["--resources", "cpus:x"])
            .unwrap()
            .validate()
            .is_err());
        assert!(Config::from_args(["--default-grace-period-secs=-1"])
            .unwrap()
            .validate()
            .is_err());
        assert!(Config::from_args(["--image-max-archive-mb", "0"])
            .unwrap()
            .validate()
            .is_err());
        let s = Config::from_args(["--image-max-archive-mb", "2"])
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(s.image_limits.max_archive_bytes, 2 << 20);
        assert!(parse_attributes("rack:1;rack:2").is_err());
        assert!(parse_attributes("nocolon").is_err());
    }

    #[test]
    fn every_flag_has_help() {
        let cmd = Config::command();
        cmd.clone().debug_assert();
        for arg in cmd.get_arguments() {
            if arg.is_hide_set() || ["help", "version"].contains(&arg.get_id().as_str()) {
                continue;
            }
            assert!(arg.get_help().is_some(), "--{} has no help", arg.get_id());
        }
    }
}

/// The configuration layer as the agent uses it: precedence, refusals, `--print-config`.
#[cfg(test)]
mod layer_tests {
    use drover_config::testing::{
        assert_packaged_example, keys_unset_by_default, reload_printed, write, Env,
    };
    use drover_config::Origin;

    use super::*;

    fn environment(vars: &[(&str, &str)]) -> Env<Config> {
        Env::new(DAEMON, vars)
    }

    fn file(dir: &tempfile::TempDir, text: &str) -> String {
        write(dir.path(), "agent.toml", text)
    }

    #[test]
    fn defaults_then_file_then_environment_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(
            &dir,
            "pids-limit = 100\nmaster = [\"m1:5050\", \"m2:5050\"]\n\
             enforce-disk-limits = false\nwork-dir = \"/srv/agent\"\n",
        );
        let none = environment(&[]);
        let c = none.load(&[]).unwrap().settings;
        assert_eq!((c.pids_limit, c.sandbox.enforce_disk_limits), (4096, true));
        assert_eq!(c.master, ["127.0.0.1:5050"]);

        let l = none.load(&["--config", &path]).unwrap();
        let c = &l.settings;
        assert_eq!((c.pids_limit, c.sandbox.enforce_disk_limits), (100, false));
        assert_eq!(c.master, ["m1:5050", "m2:5050"]);
        assert_eq!(
            l.origin("pids-limit"),
            Some(&Origin::File(path.clone().into()))
        );

        let env = environment(&[
            ("DROVER_AGENT_PIDS_LIMIT", "200"),
            ("DROVER_AGENT_ENFORCE_DISK_LIMITS", "true"),
            ("DROVER_MASTER", "old:1,old:2"),
        ]);
        let c = env.load(&["--config", &path]).unwrap().settings;
        assert_eq!((c.pids_limit, c.sandbox.enforce_disk_limits), (200, true));
        assert_eq!(
            c.master,
            ["old:1", "old:2"],
            "the older DROVER_MASTER beats the file"
        );
        assert_eq!(c.work_dir, PathBuf::from("/srv/agent"));

        let env = environment(&[
            ("DROVER_AGENT_PIDS_LIMIT", "200"),
            ("DROVER_MASTER", "old:1"),
            ("DROVER_AGENT_MASTER", "new:1"),
        ]);
        let l = env
            .load(&["--config", &path, "--pids-limit", "300"])
            .unwrap();
        assert_eq!(l.settings.pids_limit, 300);
        assert_eq!(l.origin("pids-limit"), Some(&Origin::CommandLine));
        assert_eq!(l.settings.master, ["new:1"]);
        assert_eq!(
            l.origin("master"),
            Some(&Origin::Env("DROVER_AGENT_MASTER".into()))
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_naming_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let env = environment(&[]);
        let path = file(&dir, "work_dir = \"/srv\"\n");
        let err = env.load(&["--config", &path]).err().unwrap().to_string();
        assert_eq!(
            err,
            format!("{path}: key \"work_dir\": unknown key (did you mean \"work-dir\"?)")
        );
        let path = file(&dir, "gc-delay-secs = \"a week\"\n");
        let err = env.load(&["--config", &path]).err().unwrap().to_string();
        assert!(
            err.starts_with(&format!(
                "{path}: key \"gc-delay-secs\": invalid value \"a week\""
            )),
            "{err}"
        );
        let path = file(&dir, "status-update-retry-secs = 1\n");
        let err = env.load(&["--config", &path]).err().unwrap().to_string();
        assert!(err.contains("only a command-line flag"), "{err}");
        // The agent's own checks hold whatever layer a value came from.
        for text in [
            "containerizers = [\"process\", \"podman\"]",
            "cgroups-root = \"/abs\"",
            "log-max-files = 0",
            "resources = \"cpus:x\"",
            "master = []",
        ] {
            let path = file(&dir, text);
            let config = env.load(&["--config", &path]).unwrap().settings;
            assert!(config.validate().is_err(), "{text:?} accepted");
        }
    }

    #[test]
    fn print_config_reads_back_to_the_same_settings() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(
            &dir,
            "containerizers = \"process\"\nattributes = \"rack:r1;zone:a\"\nswitch-user = false\n",
        );
        let env = environment(&[("DROVER_AGENT_RESERVED_CPUS", "1.25")]);
        let first = env
            .load(&[
                "--config",
                &path,
                "--shutdown-tasks-on-exit",
                "--hostname",
                "h1",
            ])
            .unwrap();
        let (printed, second) = reload_printed(DAEMON, &first, dir.path());
        let c = second.settings;
        assert!(c.shutdown_tasks_on_exit && !c.sandbox.switch_user);
        assert_eq!(
            (c.reserved_cpus, c.containerizers),
            (1.25, vec!["process".to_string()])
        );
        assert!(printed.contains("\n# resources = (not set)\n"), "{printed}");
        assert!(
            !printed.contains("status-update-retry"),
            "hidden flags stay out"
        );
    }

    #[test]
    fn every_setting_is_a_file_key() {
        let keys = drover_config::keys::<Config>(&DAEMON);
        assert_eq!(
            keys_unset_by_default::<Config>(DAEMON),
            [
                "advertise-address",
                "resources",
                "attributes",
                "hostname",
                "reserved-mem-mb"
            ],
            "only unset options are missing"
        );
        for key in [
            "gc-delay-secs",
            "log-level",
            "executor-registration-timeout-secs",
        ] {
            assert!(keys.iter().any(|k| k == key), "{key}");
        }
    }

    /// `packaging/agent.toml` is accepted, names every setting (set or commented out,
    /// so a new flag needs its line), and docs/operations.md shows it as it is.
    #[test]
    fn the_packaged_example_is_valid_and_complete() {
        assert_packaged_example::<Config>(
            DAEMON,
            concat!(env!("CARGO_MANIFEST_DIR"), "/.."),
            "packaging/agent.toml",
            |c: &Config| {
                c.validate().unwrap();
            },
        );
    }
}
