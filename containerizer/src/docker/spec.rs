//! The pure half of the `docker` containerizer: from a task to the engine's container
//! configuration (name, labels, command, environment, limits, mounts), no I/O.
//!
//! Everything a task can get wrong is refused here with a message naming the field, so a
//! bad task fails before anything reaches the engine.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use bollard::container::Config;
use bollard::models::{HostConfig, HostConfigLogConfig};
use drover_proto::pb::{self, container_info};
use drover_proto::Resources;

use crate::layout::TaskKey;

/// Where the task's sandbox appears inside its container (Mesos's `MESOS_SANDBOX`).
pub const SANDBOX_IN_CONTAINER: &str = "/mnt/sandbox";

/// Labels on every container the agent creates. Recovery and the orphan sweep find the
/// agent's containers by [`LABEL_WORK_DIR`] (an agent id can change when a master forgets
/// an agent; the work dir is what the agent's checkpoints live in).
pub const LABEL_AGENT_ID: &str = "drover.agent-id";
pub const LABEL_FRAMEWORK_ID: &str = "drover.framework-id";
pub const LABEL_TASK_ID: &str = "drover.task-id";
pub const LABEL_WORK_DIR: &str = "drover.work-dir";

/// Docker refuses memory limits under 6 MiB; say so before the engine does, in MB.
const MIN_MEM_MB: f64 = 6.0;

/// `drover-<agent>-<framework>-<task>`, in the characters Docker allows in a name
/// (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`). Ids may contain `:` and `@`, which Docker refuses:
/// those become `_`, and a short hash of the exact ids is appended so that two tasks
/// whose ids differ only there still get different names.
pub fn container_name(agent_id: &str, key: &TaskKey) -> String {
    let raw = format!("{agent_id}-{}-{}", key.framework_id, key.task_id);
    let mut changed = false;
    let clean: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                changed = true;
                '_'
            }
        })
        .collect();
    if changed {
        format!("drover-{clean}-{:08x}", fnv1a(raw.as_bytes()) as u32)
    } else {
        format!("drover-{clean}")
    }
}

/// FNV-1a: stable across builds and platforms (unlike `DefaultHasher`), which matters
/// because a restarted agent must derive the same name.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The image a DOCKER task names, or why it names none.
pub fn image_of(task: &pb::TaskInfo) -> Result<&str, String> {
    let image = task
        .container
        .as_ref()
        .and_then(|c| c.docker.as_ref())
        .map(|d| d.image.trim())
        .unwrap_or_default();
    if image.is_empty() {
        return Err("a DOCKER container needs container.docker.image".into());
    }
    if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "the docker image name '{image}' contains whitespace"
        ));
    }
    Ok(image)
}

/// The container's entrypoint and command; `None` keeps the image's own.
pub type EntrypointAndCmd = (Option<Vec<String>>, Option<Vec<String>>);

/// Entrypoint and command for the engine. `None` keeps the image's own.
///
/// - no command, or an empty one: the image's entrypoint and command;
/// - `shell`: `/bin/sh -c VALUE` (the image must have a shell);
/// - otherwise `VALUE` is the program and `arguments[1..]` its arguments (Docker cannot
///   set argv[0], so `arguments[0]` is not used);
/// - an empty `value` with `arguments`: the arguments replace the image's command and
///   its entrypoint stays.
pub fn command_of(command: Option<&pb::CommandInfo>) -> Result<EntrypointAndCmd, String> {
    let Some(command) = command else {
        return Ok((None, None));
    };
    if command.shell {
        if command.value.trim().is_empty() {
            return Err("a shell command needs a value".into());
        }
        return Ok((
            Some(vec!["/bin/sh".into(), "-c".into()]),
            Some(vec![command.value.clone()]),
        ));
    }
    if command.value.is_empty() {
        if command.arguments.is_empty() {
            return Ok((None, None));
        }
        return Ok((None, Some(command.arguments.clone())));
    }
    Ok((
        Some(vec![command.value.clone()]),
        Some(command.arguments.iter().skip(1).cloned().collect()),
    ))
}

/// Binds for `ContainerInfo.volumes`: `sandbox_path` (relative, inside the sandbox) onto
/// `container_path` (absolute). Returns the host directories to create, with the binds.
pub fn volumes_of(
    sandbox: &Path,
    volumes: &[pb::Volume],
) -> Result<(Vec<PathBuf>, Vec<String>), String> {
    let mut dirs = Vec::new();
    let mut binds = Vec::new();
    for v in volumes {
        let target = Path::new(&v.container_path);
        if !target.is_absolute()
            || target
                .components()
                .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
            || v.container_path.contains(':')
        {
            return Err(format!(
                "volume container_path '{}' must be an absolute path without '.', '..' or ':'",
                v.container_path
            ));
        }
        if target == Path::new(SANDBOX_IN_CONTAINER) {
            return Err(format!(
                "volume container_path '{SANDBOX_IN_CONTAINER}' is where the sandbox is mounted"
            ));
        }
        let rel = Path::new(&v.sandbox_path);
        if rel.is_absolute()
            || v.sandbox_path.contains(':')
            || rel.components().any(|c| !matches!(c, Component::Normal(_)))
        {
            return Err(format!(
                "volume sandbox_path '{}' must be a relative path inside the sandbox",
                v.sandbox_path
            ));
        }
        let source = sandbox.join(rel);
        let mode = match container_info_volume_mode(v) {
            pb::volume::Mode::Ro => "ro",
            _ => "rw",
        };
        binds.push(format!("{}:{}:{mode}", source.display(), target.display()));
        if !v.sandbox_path.is_empty() {
            dirs.push(source);
        }
    }
    Ok((dirs, binds))
}

fn container_info_volume_mode(v: &pb::Volume) -> pb::volume::Mode {
    pb::volume::Mode::try_from(v.mode).unwrap_or(pb::volume::Mode::Rw)
}

/// What the containerizer needs besides the task: who it is and where it lives.
pub struct Context<'a> {
    pub agent_id: &'a str,
    pub key: &'a TaskKey,
    pub sandbox: &'a Path,
    pub work_dir: &'a Path,
}

/// The engine's create request for a DOCKER task, plus host directories to create first.
pub fn container_config(
    task: &pb::TaskInfo,
    cx: &Context<'_>,
) -> Result<(Config<String>, Vec<PathBuf>), String> {
    let image = image_of(task)?;
    let container = task.container.clone().unwrap_or_default();
    let (entrypoint, cmd) = command_of(task.command.as_ref())?;
    let resources = Resources::from_proto(&task.resources)
        .map_err(|e| format!("the task's resources are invalid: {e}"))?;

    let mut host = HostConfig {
        // The container's output is read back through the engine into the sandbox, so
        // its log driver must be one the engine can read, whatever the daemon's default.
        log_config: Some(HostConfigLogConfig {
            typ: Some("json-file".into()),
            config: None,
        }),
        // Docker's own init (tini) as PID 1: reaps zombies and forwards signals.
        init: Some(true),
        ..Default::default()
    };
    let cpus = resources.cpus();
    if cpus > 0.0 {
        if !cpus.is_finite() || cpus > 1e6 {
            return Err(format!("cpus {cpus} is not a usable limit"));
        }
        // A hard limit (CFS quota) and a proportional weight, as the linux containerizer.
        host.nano_cpus = Some((cpus * 1e9).round() as i64);
        host.cpu_shares = Some(((cpus * 1024.0).round() as i64).max(2));
    }
    let mem = resources.mem();
    if mem > 0.0 {
        if !mem.is_finite() || mem < MIN_MEM_MB {
            return Err(format!(
                "mem {mem} MB is below the Docker engine's minimum of {MIN_MEM_MB} MB"
            ));
        }
        let bytes = (mem * 1024.0 * 1024.0).round() as i64;
        host.memory = Some(bytes);
        // Equal to the memory limit: no swap on top, so the limit is what the task gets.
        host.memory_swap = Some(bytes);
    }
    if container.pids_limit > 0 {
        host.pids_limit = Some(i64::from(container.pids_limit));
    }
    let network = container_info::Network::try_from(container.network)
        .unwrap_or(container_info::Network::Host);
    host.network_mode = Some(
        match network {
            container_info::Network::Host => "host",
            container_info::Network::Isolated => "none",
        }
        .into(),
    );
    let mut binds = vec![format!(
        "{}:{SANDBOX_IN_CONTAINER}:rw",
        cx.sandbox.display()
    )];
    let (dirs, more) = volumes_of(cx.sandbox, &container.volumes)?;
    binds.extend(more);
    host.binds = Some(binds);

    let mut env: Vec<String> = Vec::new();
    if let Some(command) = &task.command {
        for v in &command.environment {
            if v.name.is_empty() || v.name.contains('=') {
                return Err(format!("environment variable name '{}' is invalid", v.name));
            }
            env.push(format!("{}={}", v.name, v.value));
        }
    }
    let ports = resources.ports();
    env.extend([
        format!("DROVER_TASK_ID={}", cx.key.task_id),
        format!("DROVER_FRAMEWORK_ID={}", cx.key.framework_id),
        format!("DROVER_AGENT_ID={}", cx.agent_id),
        format!("DROVER_SANDBOX={SANDBOX_IN_CONTAINER}"),
        format!(
            "DROVER_PORTS={}",
            ports
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ),
    ]);
    env.extend(
        ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("PORT{i}={p}")),
    );

    let labels = HashMap::from([
        (LABEL_AGENT_ID.to_string(), cx.agent_id.to_string()),
        (
            LABEL_FRAMEWORK_ID.to_string(),
            cx.key.framework_id.to_string(),
        ),
        (LABEL_TASK_ID.to_string(), cx.key.task_id.to_string()),
        (
            LABEL_WORK_DIR.to_string(),
            cx.work_dir.to_string_lossy().into_owned(),
        ),
    ]);
    let user = task
        .command
        .as_ref()
        .map(|c| c.user.trim().to_string())
        .filter(|u| !u.is_empty());
    // Docker refuses a hostname with the host's network; only an isolated network gets one.
    let hostname = match network {
        container_info::Network::Isolated => Some(if container.hostname.is_empty() {
            cx.key.task_id.to_string()
        } else {
            container.hostname.clone()
        }),
        container_info::Network::Host => None,
    };
    let config = Config {
        image: Some(image.to_string()),
        entrypoint,
        cmd,
        env: Some(env),
        labels: Some(labels),
        working_dir: Some(SANDBOX_IN_CONTAINER.into()),
        user,
        hostname,
        attach_stdin: Some(false),
        attach_stdout: Some(false),
        attach_stderr: Some(false),
        tty: Some(false),
        open_stdin: Some(false),
        host_config: Some(host),
        ..Default::default()
    };
    Ok((config, dirs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docker_task(command: Option<pb::CommandInfo>, resources: Vec<pb::Resource>) -> pb::TaskInfo {
        pb::TaskInfo {
            command,
            resources,
            container: Some(pb::ContainerInfo {
                r#type: container_info::Type::Docker as i32,
                docker: Some(container_info::Docker {
                    image: "busybox:latest".into(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn names_are_valid_for_docker_and_distinct() {
        let key = TaskKey::new("fw-1", "task.1_a");
        assert_eq!(container_name("a1", &key), "drover-a1-fw-1-task.1_a");
        let a = container_name("a1", &TaskKey::new("fw", "t:1"));
        let b = container_name("a1", &TaskKey::new("fw", "t@1"));
        assert!(a.starts_with("drover-a1-fw-t_1-"), "{a}");
        assert_ne!(a, b);
        for name in [a, b] {
            assert!(name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')));
        }
        // Stable: a restarted agent derives the same name.
        assert_eq!(
            container_name("a1", &TaskKey::new("fw", "t:1")),
            container_name("a1", &TaskKey::new("fw", "t:1"))
        );
    }

    #[test]
    fn commands_map_onto_entrypoint_and_cmd() {
        assert_eq!(command_of(None).unwrap(), (None, None));
        let shell = pb::CommandInfo {
            value: "echo hi".into(),
            shell: true,
            ..Default::default()
        };
        assert_eq!(
            command_of(Some(&shell)).unwrap(),
            (
                Some(vec!["/bin/sh".into(), "-c".into()]),
                Some(vec!["echo hi".into()])
            )
        );
        let argv = pb::CommandInfo {
            value: "/bin/echo".into(),
            arguments: vec!["echo".into(), "a".into(), "b".into()],
            ..Default::default()
        };
        assert_eq!(
            command_of(Some(&argv)).unwrap(),
            (
                Some(vec!["/bin/echo".into()]),
                Some(vec!["a".into(), "b".into()])
            )
        );
        let args_only = pb::CommandInfo {
            arguments: vec!["x".into()],
            ..Default::default()
        };
        assert_eq!(
            command_of(Some(&args_only)).unwrap(),
            (None, Some(vec!["x".into()]))
        );
        let empty_shell = pb::CommandInfo {
            shell: true,
            ..Default::default()
        };
        assert!(command_of(Some(&empty_shell)).is_err());
    }

    #[test]
    fn limits_labels_env_and_the_sandbox_mount() {
        let key = TaskKey::new("fw", "t");
        let cx = Context {
            agent_id: "agent-1",
            key: &key,
            sandbox: Path::new("/w/sandboxes/fw/t"),
            work_dir: Path::new("/w"),
        };
        let task = docker_task(
            Some(pb::CommandInfo {
                value: "true".into(),
                shell: true,
                environment: vec![pb::EnvironmentVariable {
                    name: "A".into(),
                    value: "1".into(),
                }],
                ..Default::default()
            }),
            vec![
                drover_proto::resources::scalar("cpus", 0.5),
                drover_proto::resources::scalar("mem", 64.0),
            ],
        );
        let (config, dirs) = container_config(&task, &cx).unwrap();
        assert!(dirs.is_empty());
        let host = config.host_config.as_ref().unwrap();
        assert_eq!(host.nano_cpus, Some(500_000_000));
        assert_eq!(host.cpu_shares, Some(512));
        assert_eq!(host.memory, Some(64 << 20));
        assert_eq!(host.memory_swap, Some(64 << 20));
        assert_eq!(host.network_mode.as_deref(), Some("host"));
        assert_eq!(
            host.binds.as_ref().unwrap(),
            &["/w/sandboxes/fw/t:/mnt/sandbox:rw".to_string()]
        );
        let labels = config.labels.as_ref().unwrap();
        assert_eq!(labels[LABEL_AGENT_ID], "agent-1");
        assert_eq!(labels[LABEL_FRAMEWORK_ID], "fw");
        assert_eq!(labels[LABEL_TASK_ID], "t");
        assert_eq!(labels[LABEL_WORK_DIR], "/w");
        let env = config.env.as_ref().unwrap();
        assert!(env.contains(&"A=1".to_string()));
        assert!(env.contains(&"DROVER_SANDBOX=/mnt/sandbox".to_string()));
        assert_eq!(config.working_dir.as_deref(), Some("/mnt/sandbox"));
        assert_eq!(config.image.as_deref(), Some("busybox:latest"));
        assert_eq!(config.hostname, None);

        // No resources: no limits; no command: the image's own.
        let (config, _) = container_config(&docker_task(None, vec![]), &cx).unwrap();
        let host = config.host_config.unwrap();
        assert_eq!((host.nano_cpus, host.memory), (None, None));
        assert_eq!((config.entrypoint, config.cmd), (None, None));
    }

    #[test]
    fn bad_tasks_are_refused_with_the_field_named() {
        let key = TaskKey::new("fw", "t");
        let cx = Context {
            agent_id: "a",
            key: &key,
            sandbox: Path::new("/s"),
            work_dir: Path::new("/w"),
        };
        let mut task = docker_task(None, vec![drover_proto::resources::scalar("mem", 1.0)]);
        let err = container_config(&task, &cx).unwrap_err();
        assert!(err.contains("minimum"), "{err}");

        task.resources.clear();
        task.container.as_mut().unwrap().docker = None;
        let err = container_config(&task, &cx).unwrap_err();
        assert!(err.contains("container.docker.image"), "{err}");

        for (sandbox_path, container_path) in [
            ("../x", "/data"),
            ("/etc", "/data"),
            ("a", "data"),
            ("a", "/data/../etc"),
            ("a", "/mnt/sandbox"),
        ] {
            let v = pb::Volume {
                sandbox_path: sandbox_path.into(),
                container_path: container_path.into(),
                mode: pb::volume::Mode::Rw as i32,
            };
            assert!(
                volumes_of(Path::new("/s"), &[v]).is_err(),
                "{sandbox_path} -> {container_path}"
            );
        }
        let v = pb::Volume {
            sandbox_path: "data/x".into(),
            container_path: "/data".into(),
            mode: pb::volume::Mode::Ro as i32,
        };
        let (dirs, binds) = volumes_of(Path::new("/s"), &[v]).unwrap();
        assert_eq!(dirs, [PathBuf::from("/s/data/x")]);
        assert_eq!(binds, ["/s/data/x:/data:ro"]);
    }
}
