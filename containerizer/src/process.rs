//! The `process` containerizer: each task runs as plain processes in its sandbox, under a
//! supervisor (the agent's own binary in supervisor mode, see [`crate::supervisor`]).
//!
//! The supervisor runs in its own session, so it and the task outlive the agent: a
//! `kill -9` of the agent or a restart of its service leaves them running, and the next
//! agent finds them again through `supervisor.json` (pid + start time).

use std::collections::HashMap;
use std::ffi::CStr;
use std::fs::OpenOptions;
use std::io;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use drover_proto::pb::{self, task_status::Reason};
use drover_proto::{unix_seconds, Resources};

use super::{Containerizer, LaunchSpec, Recovered, Termination};
use crate::error::{ContainerizerError, IoContext};
use crate::fsutil::{create_json_exclusive, read_json, write_json_atomic};
use crate::layout::{Layout, TaskKey};
use crate::procfs::{self, ProcessIdentity};
use crate::supervisor::records::{
    ExitRecord, KillRequest, SupervisorClaim, SupervisorSpec, UserSpec,
};
use crate::supervisor::SUPERVISE_ARG;

/// How often a supervisor this agent did not start (found by recovery) is checked.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

struct Supervised {
    identity: ProcessIdentity,
    /// Present while this agent is the supervisor's parent and nobody waits on it yet.
    child: Option<tokio::process::Child>,
}

/// See the module docs.
pub struct ProcessContainerizer {
    layout: Layout,
    supervisor_exe: PathBuf,
    default_grace: Duration,
    /// Never held across an await.
    supervisors: Mutex<HashMap<TaskKey, Supervised>>,
}

impl ProcessContainerizer {
    /// `supervisor_exe` is normally `/proc/self/exe`: the supervisor is this very binary,
    /// which also works after the file on disk was replaced by an upgrade.
    pub fn new(layout: Layout, supervisor_exe: PathBuf, default_grace: Duration) -> Self {
        ProcessContainerizer {
            layout,
            supervisor_exe,
            default_grace,
            supervisors: Mutex::new(HashMap::new()),
        }
    }

    fn supervisors(&self) -> std::sync::MutexGuard<'_, HashMap<TaskKey, Supervised>> {
        // A panic while holding the lock cannot leave the map half-updated (single
        // inserts and removes), so a poisoned lock is still usable.
        self.supervisors
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The grace between SIGTERM and SIGKILL when a kill names none.
    pub(crate) fn default_grace(&self) -> Duration {
        self.default_grace
    }

    /// What the supervisor of this task runs (the linux containerizer adds its part).
    pub(crate) fn build_spec(
        &self,
        spec: &LaunchSpec,
    ) -> Result<SupervisorSpec, ContainerizerError> {
        let command = spec
            .task
            .command
            .as_ref()
            .ok_or_else(|| ContainerizerError::Launch("the task has no command".into()))?;
        let (program, argv) = command_line(command)?;

        let mut env: Vec<(String, String)> = command
            .environment
            .iter()
            .map(|v| (v.name.clone(), v.value.clone()))
            .collect();
        let user = resolve_task_user(&command.user)?;
        if let Some((u, home)) = &user {
            env.push(("USER".into(), u.name.clone()));
            env.push(("LOGNAME".into(), u.name.clone()));
            env.push(("HOME".into(), home.clone()));
        }
        env.extend(drover_env(spec, &spec.sandbox.to_string_lossy()));

        Ok(SupervisorSpec {
            framework_id: spec.key.framework_id.to_string(),
            task_id: spec.key.task_id.to_string(),
            sandbox: spec.sandbox.clone(),
            meta_dir: spec.meta.dir().to_path_buf(),
            program,
            argv,
            env,
            user: user.map(|(u, _)| u),
            default_grace_secs: self.default_grace.as_secs_f64(),
            container: None,
        })
    }

    /// Creates the task's output files, writes `spec.json` and starts the supervisor in
    /// its own session.
    pub(crate) async fn start_supervisor(
        &self,
        spec: &LaunchSpec,
        sup_spec: &SupervisorSpec,
    ) -> Result<(), ContainerizerError> {
        for name in ["stdout", "stderr"] {
            let path = spec.sandbox.join(name);
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .ctx(|| format!("creating {}", path.display()))?;
        }
        if let Some(u) = &sup_spec.user {
            // The task writes into its sandbox as that user.
            for p in [
                spec.sandbox.clone(),
                spec.sandbox.join("stdout"),
                spec.sandbox.join("stderr"),
            ] {
                std::os::unix::fs::chown(&p, Some(u.uid), Some(u.gid))
                    .ctx(|| format!("giving {} to user {}", p.display(), u.name))?;
            }
        }
        // Not fsynced: only the supervisor reads it, once, at its start. A crash of the agent
        // leaves it in the page cache; a power loss kills the supervisor too, and recovery
        // goes by `supervisor.json` and `exit.json` (the supervisor syncs those), never by
        // the spec. Two syncs per task saved.
        let spec_path = spec.meta.spec_file();
        let spec_bytes = serde_json::to_vec_pretty(sup_spec).map_err(std::io::Error::other);
        spec_bytes
            .and_then(|bytes| std::fs::write(&spec_path, bytes))
            .ctx(|| format!("writing {}", spec_path.display()))?;

        // The supervisor's own output goes to a file too: a pipe to the agent would break
        // (EPIPE) as soon as the agent exits.
        let log_path = spec.meta.supervisor_log();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .ctx(|| format!("opening {}", log_path.display()))?;
        let log2 = log
            .try_clone()
            .ctx(|| format!("duplicating {}", log_path.display()))?;

        let mut cmd = tokio::process::Command::new(&self.supervisor_exe);
        cmd.arg(SUPERVISE_ARG)
            .arg(&spec_path)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .kill_on_drop(false);
        // SAFETY: only async-signal-safe calls (setsid, sigprocmask) between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // Its own session: no signal aimed at the agent's group or terminal
                // reaches it, so it outlives the agent.
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                // Start with SIGTERM/SIGCHLD blocked (the mask survives exec): a kill that
                // arrives before the supervisor sets up its wait stays pending instead of
                // killing it with no exit record.
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGTERM);
                libc::sigaddset(&mut set, libc::SIGCHLD);
                if libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .ctx(|| format!("starting the supervisor {}", self.supervisor_exe.display()))?;
        let pid = child
            .id()
            .ok_or_else(|| ContainerizerError::Launch("the supervisor exited at once".into()))?
            as i32;
        // Our unreaped child keeps its /proc entry, so this cannot race with its exit.
        let identity = procfs::identity(pid)
            .ctx(|| format!("reading /proc/{pid}/stat"))?
            .ok_or_else(|| ContainerizerError::Launch(format!("supervisor {pid} vanished")))?;
        self.supervisors().insert(
            spec.key.clone(),
            Supervised {
                identity,
                child: Some(child),
            },
        );
        Ok(())
    }
}

/// The variables Drover gives every task: its ids, its sandbox (`sandbox`: as the task
/// sees it), its ports (`DROVER_PORTS`, and `PORT0`, `PORT1`, ...).
pub(crate) fn drover_env(spec: &LaunchSpec, sandbox: &str) -> Vec<(String, String)> {
    // Ports were validated with the task; an unparsable list simply yields none.
    let ports = Resources::from_proto(&spec.task.resources)
        .map(|r| r.ports())
        .unwrap_or_default();
    let mut env: Vec<(String, String)> = vec![
        ("DROVER_TASK_ID".into(), spec.key.task_id.to_string()),
        (
            "DROVER_FRAMEWORK_ID".into(),
            spec.key.framework_id.to_string(),
        ),
        ("DROVER_AGENT_ID".into(), spec.agent_id.to_string()),
        ("DROVER_SANDBOX".into(), sandbox.to_string()),
        (
            "DROVER_PORTS".into(),
            ports
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(","),
        ),
    ];
    env.extend(
        ports
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("PORT{i}"), p.to_string())),
    );
    env
}

/// How long after its spec was written a supervisor may still be starting up.
const CLAIM_GRACE: Duration = Duration::from_secs(3);

/// A task without a claim whose spec was written moments ago may have a supervisor that
/// is still starting (the previous agent stopped right after spawning it): give it until
/// [`CLAIM_GRACE`] after the spec was written to claim the task, rather than declare the
/// task abandoned and report a task that is about to run as never started. Returns at
/// once for an old spec or none (a crash before the spawn).
async fn wait_for_a_starting_supervisor(spec: &std::path::Path, claim: &std::path::Path) {
    let Ok(written) = std::fs::metadata(spec).and_then(|m| m.modified()) else {
        return;
    };
    let deadline = written + CLAIM_GRACE;
    while !claim.exists() && std::time::SystemTime::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The program and argv of a command (see `CommandInfo`).
pub fn command_line(
    command: &pb::CommandInfo,
) -> Result<(String, Vec<String>), ContainerizerError> {
    if command.value.is_empty() {
        return Err(ContainerizerError::Launch("the command is empty".into()));
    }
    if command.shell {
        return Ok((
            "/bin/sh".into(),
            vec!["sh".into(), "-c".into(), command.value.clone()],
        ));
    }
    let argv = if command.arguments.is_empty() {
        vec![command.value.clone()]
    } else {
        command.arguments.clone()
    };
    Ok((command.value.clone(), argv))
}

/// The user to switch to, with its home directory. `None` when the task runs as the
/// agent's own user: the user is the agent's, or the agent is not root and so cannot
/// switch (see the agent's `users` module). A user this machine does not know fails the launch
/// with [`ContainerizerError::UnknownUser`].
fn resolve_task_user(name: &str) -> Result<Option<(UserSpec, String)>, ContainerizerError> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if name.is_empty() || euid != 0 {
        return Ok(None);
    }
    let (uid, gid, home) = lookup_user(name)
        .ctx(|| format!("looking up user '{name}'"))?
        .ok_or_else(|| {
            ContainerizerError::UnknownUser(format!(
                "no such user '{name}' on this agent (the task's user comes from \
                 CommandInfo.user, else FrameworkInfo.user)"
            ))
        })?;
    if uid == euid {
        return Ok(None);
    }
    Ok(Some((
        UserSpec {
            name: name.to_string(),
            uid,
            gid,
            groups: None,
        },
        home,
    )))
}

pub fn lookup_user(name: &str) -> io::Result<Option<(u32, u32, String)>> {
    let cname = std::ffi::CString::new(name).map_err(|_| io::Error::other("NUL in user name"))?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    loop {
        // SAFETY: zeroed passwd is a valid out-parameter; buf outlives the result's use.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let r = unsafe {
            libc::getpwnam_r(
                cname.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if r == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        if result.is_null() {
            return Ok(None);
        }
        // SAFETY: on success pw_dir points into `buf`, NUL-terminated.
        let home = unsafe { CStr::from_ptr(pwd.pw_dir) }
            .to_string_lossy()
            .into_owned();
        return Ok(Some((pwd.pw_uid, pwd.pw_gid, home)));
    }
}

#[async_trait]
impl Containerizer for ProcessContainerizer {
    fn name(&self) -> &'static str {
        "process"
    }

    async fn launch(&self, spec: LaunchSpec) -> Result<(), ContainerizerError> {
        if let Some(c) = &spec.task.container {
            if c.image.as_ref().is_some_and(|i| !i.name.is_empty()) {
                return Err(ContainerizerError::Launch(
                    "the process containerizer cannot run a task inside an image; use the \
                     linux containerizer"
                        .into(),
                ));
            }
            if c.network == pb::container_info::Network::Isolated as i32 {
                return Err(ContainerizerError::Launch(
                    "the process containerizer cannot isolate the network; use the linux \
                     containerizer"
                        .into(),
                ));
            }
        }
        if let Some(group) = &spec.group {
            if group.net_namespace.is_some() {
                return Err(ContainerizerError::Launch(
                    "the task group has a network of its own, which the process \
                     containerizer cannot join; use the linux containerizer"
                        .into(),
                ));
            }
            link_shared_volume(&spec.sandbox, &group.shared)?;
        }
        let sup_spec = self.build_spec(&spec)?;
        self.start_supervisor(&spec, &sup_spec).await
    }

    async fn recover(&self, key: &TaskKey) -> Result<Recovered, ContainerizerError> {
        let meta = self.layout.task_meta(key);
        if meta.exit_file().exists() {
            return Ok(Recovered::Ended);
        }
        let claim_path = meta.supervisor_file();
        wait_for_a_starting_supervisor(&meta.spec_file(), &claim_path).await;
        // Two rounds: if our "abandoned" claim loses the race, the supervisor's won.
        for _ in 0..2 {
            let claim: Option<SupervisorClaim> =
                read_json(&claim_path).ctx(|| format!("reading {}", claim_path.display()))?;
            match claim {
                Some(SupervisorClaim::Started { supervisor, .. }) => {
                    if !procfs::is_alive(supervisor) {
                        return Ok(Recovered::Ended);
                    }
                    self.supervisors().insert(
                        key.clone(),
                        Supervised {
                            identity: supervisor,
                            child: None,
                        },
                    );
                    // The previous agent may have died between writing the kill request
                    // and signalling; signalling again is harmless.
                    if meta.kill_request_file().exists() {
                        procfs::signal(supervisor, libc::SIGTERM)
                            .ctx(|| format!("signalling supervisor {}", supervisor.pid))?;
                    }
                    return Ok(Recovered::Running);
                }
                Some(SupervisorClaim::Abandoned { .. }) => return Ok(Recovered::NeverStarted),
                None => {
                    let abandoned = SupervisorClaim::Abandoned { at: unix_seconds() };
                    if create_json_exclusive(&claim_path, &abandoned)
                        .ctx(|| format!("writing {}", claim_path.display()))?
                    {
                        return Ok(Recovered::NeverStarted);
                    }
                }
            }
        }
        Err(ContainerizerError::Launch(format!(
            "{} keeps changing; cannot tell whether the task started",
            claim_path.display()
        )))
    }

    async fn wait(&self, key: &TaskKey) -> Result<Termination, ContainerizerError> {
        let found = {
            let mut map = self.supervisors();
            map.get_mut(key).map(|s| (s.identity, s.child.take()))
        };
        if let Some((identity, child)) = found {
            match child {
                Some(mut child) => {
                    child
                        .wait()
                        .await
                        .ctx(|| format!("waiting for supervisor {}", identity.pid))?;
                }
                None => {
                    while procfs::is_alive(identity) {
                        tokio::time::sleep(POLL_INTERVAL).await;
                    }
                }
            }
            self.supervisors().remove(key);
        }
        let meta = self.layout.task_meta(key);
        let exit_path = meta.exit_file();
        let record: Option<ExitRecord> =
            read_json(&exit_path).ctx(|| format!("reading {}", exit_path.display()))?;
        if let Some(record) = record {
            return Ok(Termination::Recorded(record));
        }
        // No record: the supervisor was killed or crashed. Its task may still run in its
        // session; a task whose failure we report must not keep running.
        let claim: Option<SupervisorClaim> = read_json(&meta.supervisor_file()).unwrap_or(None);
        let mut detail = "no exit record".to_string();
        if let Some(SupervisorClaim::Started { supervisor, .. }) = claim {
            let leftovers = procfs::session_members(supervisor.pid);
            for pid in &leftovers {
                // SAFETY: kill with integer arguments.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
            if !leftovers.is_empty() {
                detail = format!(
                    "no exit record; killed {} leftover process(es)",
                    leftovers.len()
                );
            }
        }
        Ok(Termination::Vanished { detail })
    }

    async fn kill(
        &self,
        key: &TaskKey,
        grace: Duration,
        reason: Reason,
    ) -> Result<(), ContainerizerError> {
        let meta = self.layout.task_meta(key);
        // Written before the signal: the supervisor reads it on SIGTERM, and a restarted
        // agent that finds it re-sends the signal.
        let request = KillRequest::now(grace, reason);
        let path = meta.kill_request_file();
        write_json_atomic(&path, &request).ctx(|| format!("writing {}", path.display()))?;
        let identity = self.supervisors().get(key).map(|s| s.identity);
        if let Some(identity) = identity {
            procfs::signal(identity, libc::SIGTERM)
                .ctx(|| format!("signalling supervisor {}", identity.pid))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;

/// A process task of a task group reaches the group's shared volume through a symlink
/// `shared` in its sandbox: without a mount namespace of its own it sees the host's
/// paths anyway, and a symlink needs no root and leaves nothing mounted behind.
fn link_shared_volume(
    sandbox: &std::path::Path,
    shared: &std::path::Path,
) -> Result<(), ContainerizerError> {
    let link = sandbox.join(crate::supervisor::records::SHARED_VOLUME_IN_SANDBOX);
    if std::fs::read_link(&link).is_ok_and(|target| target == shared) {
        return Ok(());
    }
    if link.symlink_metadata().is_ok() {
        return Err(ContainerizerError::Launch(format!(
            "{} exists in the sandbox already; the task group's shared volume goes there",
            link.display()
        )));
    }
    std::os::unix::fs::symlink(shared, &link)
        .ctx(|| format!("linking {} to the group's shared volume", link.display()))
}
