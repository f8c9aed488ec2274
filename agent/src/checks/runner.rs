//! Runs one attempt of a check against a task and reports its [`Outcome`].
//!
//! - HTTP: `GET http://127.0.0.1:<port><path>` (HTTP/1.0, no redirects followed); a 2xx
//!   or 3xx answer is success.
//! - TCP: a connection to `127.0.0.1:<port>` is success.
//! - COMMAND: exit status 0 is success; see [`super::command`] for `linux` and `process`
//!   tasks, `docker exec` for Docker tasks.
//!
//! A task with a network namespace of its own (`ContainerInfo.network` ISOLATED) is
//! checked from inside it: HTTP and TCP checks run on a thread of their own that first
//! enters the namespace (`setns` works per thread for network namespaces). Blocking
//! sockets with the attempt's timeout keep that thread bounded; the caller abandons the
//! attempt at the same timeout.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use drover_proto::pb::{self, check_info::Type};

use super::command::{CommandRequest, CHECK_ARG, HELPER_FAILED};
use super::schedule::{timed_out, Outcome};
use crate::error::AgentError;
use crate::fsutil::read_json;
use crate::layout::TaskMeta;
use crate::supervisor::records::{SupervisorClaim, SupervisorSpec, SANDBOX_IN_ROOTFS};

/// Where a task runs, as far as its checks care.
#[derive(Clone, Debug)]
pub enum Target {
    /// A `linux` or `process` task, from its supervisor's spec and claim.
    Supervised {
        spec: Box<SupervisorSpec>,
        /// The container's init (host pid), for `linux` tasks.
        init_pid: Option<i32>,
    },
    /// A Docker task: its container's name, and its main process (host pid) when the
    /// container has a network of its own.
    Docker {
        container: String,
        netns_pid: Option<i32>,
    },
}

impl Target {
    /// Reads the supervisor's spec and claim of a `linux` or `process` task.
    pub fn supervised(meta: &TaskMeta) -> Result<Target, AgentError> {
        let spec: SupervisorSpec = read_json(&meta.spec_file())
            .map_err(|e| AgentError::Launch(format!("reading the task's spec: {e}")))?
            .ok_or_else(|| AgentError::Launch("the task has no supervisor spec".into()))?;
        let init_pid = if spec.container.is_some() {
            match read_json::<SupervisorClaim>(&meta.supervisor_file()) {
                Ok(Some(SupervisorClaim::Started {
                    task_pid: Some(pid),
                    ..
                })) => Some(pid),
                _ => {
                    return Err(AgentError::Launch(
                        "the task's container has not started".into(),
                    ))
                }
            }
        } else {
            None
        };
        Ok(Target::Supervised {
            spec: Box::new(spec),
            init_pid,
        })
    }

    /// The process whose network namespace HTTP and TCP checks must use; `None` for the
    /// host's network.
    fn netns_pid(&self) -> Option<i32> {
        match self {
            Target::Supervised { spec, init_pid } => spec
                .container
                .as_ref()
                .filter(|c| c.isolate_network)
                .and(*init_pid),
            Target::Docker { netns_pid, .. } => *netns_pid,
        }
    }
}

/// Runs attempts of one check against one task.
#[derive(Clone)]
pub struct Runner {
    check: pb::CheckInfo,
    target: Target,
    /// The agent's binary, re-executed as the command check helper.
    exe: PathBuf,
    docker: Option<Arc<bollard::Docker>>,
}

impl Runner {
    pub fn new(
        check: pb::CheckInfo,
        target: Target,
        exe: PathBuf,
        docker: Option<Arc<bollard::Docker>>,
    ) -> Runner {
        Runner {
            check,
            target,
            exe,
            docker,
        }
    }

    fn check_type(&self) -> Type {
        Type::try_from(self.check.r#type).unwrap_or(Type::Unspecified)
    }

    /// One attempt, abandoned (and its process killed) at `timeout`.
    pub async fn attempt(&self, timeout: Duration) -> Outcome {
        let t = self.check_type();
        match tokio::time::timeout(timeout, self.run(timeout)).await {
            Ok(outcome) => outcome,
            Err(_) => timed_out(t, timeout),
        }
    }

    async fn run(&self, timeout: Duration) -> Outcome {
        match self.check_type() {
            Type::Http | Type::Tcp => self.network(timeout).await,
            Type::Command => self.command().await,
            Type::Unspecified => failure(Type::Unspecified, "the check has no type".into()),
        }
    }

    async fn network(&self, timeout: Duration) -> Outcome {
        let t = self.check_type();
        let netns = match self.target.netns_pid() {
            Some(pid) => match File::open(format!("/proc/{pid}/ns/net")) {
                Ok(f) => Some(f),
                Err(e) => {
                    return failure(t, format!("cannot reach the task's network namespace: {e}"))
                }
            },
            None => None,
        };
        let check = self.check.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("drover-check".into())
            .spawn(move || {
                let outcome = match enter_netns(netns) {
                    Ok(()) => probe(&check, timeout),
                    Err(e) => failure(t, e),
                };
                let _ = tx.send(outcome);
            });
        if let Err(e) = spawned {
            return failure(t, format!("cannot start a check thread: {e}"));
        }
        rx.await
            .unwrap_or_else(|_| failure(t, "the check thread died".into()))
    }

    async fn command(&self) -> Outcome {
        let Some(command) = &self.check.command else {
            return failure(Type::Command, "the check has no command".into());
        };
        let (program, argv) = match crate::containerizer::process::command_line(command) {
            Ok(x) => x,
            Err(e) => return failure(Type::Command, e.to_string()),
        };
        let env: Vec<(String, String)> = command
            .environment
            .iter()
            .map(|v| (v.name.clone(), v.value.clone()))
            .collect();
        match &self.target {
            Target::Supervised { spec, init_pid } => {
                let container = spec.container.as_ref();
                let in_image = container.is_some_and(|c| c.rootfs.is_some());
                let cwd = match container {
                    Some(c) if c.rootfs.is_some() => c
                        .working_dir
                        .clone()
                        .unwrap_or_else(|| PathBuf::from(SANDBOX_IN_ROOTFS)),
                    _ => spec.sandbox.clone(),
                };
                let request = CommandRequest {
                    enter_pid: *init_pid,
                    cgroup_procs: container
                        .map(|c| c.cgroups.procs_files())
                        .unwrap_or_default(),
                    program,
                    argv,
                    // The task's environment, with the check's own on top.
                    env: spec.env.iter().cloned().chain(env).collect(),
                    clear_env: in_image,
                    cwd,
                    user: spec.user.clone(),
                };
                self.helper(&request).await
            }
            Target::Docker { container, .. } => {
                let Some(docker) = &self.docker else {
                    return failure(Type::Command, "the Docker engine is not available".into());
                };
                docker_exec(docker, container, argv, env).await
            }
        }
    }

    async fn helper(&self, request: &CommandRequest) -> Outcome {
        let json = match serde_json::to_string(request) {
            Ok(j) => j,
            Err(e) => return failure(Type::Command, format!("cannot encode the check: {e}")),
        };
        // Dropped at the timeout (the attempt's future is abandoned): the helper is
        // SIGKILLed, and the command with it (its parent-death signal).
        let child = tokio::process::Command::new(&self.exe)
            .arg(CHECK_ARG)
            .arg(json)
            .current_dir("/")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => return failure(Type::Command, format!("cannot start the check: {e}")),
        };
        match child.wait_with_output().await {
            Ok(out) => {
                let code = out.status.code().unwrap_or(HELPER_FAILED);
                let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
                exit_outcome(code, why)
            }
            Err(e) => failure(Type::Command, format!("waiting for the check: {e}")),
        }
    }
}

fn exit_outcome(code: i32, why: String) -> Outcome {
    let detail = if why.is_empty() {
        format!("exit status {code}")
    } else {
        format!("exit status {code} ({why})")
    };
    Outcome {
        success: code == 0,
        status: pb::CheckStatusInfo {
            r#type: Type::Command as i32,
            exit_code: Some(code),
            ..Default::default()
        },
        detail,
    }
}

/// A failed attempt that produced no result of its kind.
fn failure(t: Type, detail: String) -> Outcome {
    let mut status = pb::CheckStatusInfo {
        r#type: t as i32,
        ..Default::default()
    };
    if t == Type::Tcp {
        status.tcp_succeeded = Some(false);
    }
    Outcome {
        success: false,
        status,
        detail,
    }
}

fn enter_netns(netns: Option<File>) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let Some(ns) = netns else {
        return Ok(());
    };
    // SAFETY: setns on a descriptor we hold; only this thread changes namespace, and it
    // ends after the attempt.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(format!(
            "cannot enter the task's network namespace: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// A blocking HTTP or TCP attempt on the current thread.
fn probe(check: &pb::CheckInfo, timeout: Duration) -> Outcome {
    let t = Type::try_from(check.r#type).unwrap_or(Type::Unspecified);
    let port = match t {
        Type::Http => check.http.as_ref().map(|h| h.port),
        _ => check.tcp.as_ref().map(|h| h.port),
    }
    .unwrap_or(0);
    let Ok(port) = u16::try_from(port) else {
        return failure(t, format!("invalid port {port}"));
    };
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = TcpStream::connect_timeout(&addr, timeout);
    if t == Type::Tcp {
        return match stream {
            Ok(_) => Outcome {
                success: true,
                status: pb::CheckStatusInfo {
                    r#type: Type::Tcp as i32,
                    tcp_succeeded: Some(true),
                    ..Default::default()
                },
                detail: format!("connected to {addr}"),
            },
            Err(e) => failure(t, format!("cannot connect to {addr}: {e}")),
        };
    }
    let path = check
        .http
        .as_ref()
        .map(|h| h.path.as_str())
        .filter(|p| !p.is_empty())
        .unwrap_or("/");
    let status = stream
        .map_err(|e| format!("cannot connect to {addr}: {e}"))
        .and_then(|s| http_get(s, port, path, timeout));
    match status {
        Ok(code) => Outcome {
            success: (200..400).contains(&code),
            status: pb::CheckStatusInfo {
                r#type: Type::Http as i32,
                http_status: Some(code),
                ..Default::default()
            },
            detail: format!("HTTP {code}"),
        },
        Err(e) => failure(t, e),
    }
}

/// Sends a GET and returns the answer's status code.
fn http_get(mut s: TcpStream, port: u16, path: &str, timeout: Duration) -> Result<u32, String> {
    let io = |e: std::io::Error| format!("HTTP GET {path}: {e}");
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: drover-agent\r\nConnection: close\r\n\r\n"
    );
    s.write_all(request.as_bytes()).map_err(io)?;
    // Only the status line matters: "HTTP/1.x NNN reason".
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = s.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or_default();
    let mut words = line.split_whitespace();
    match (
        words.next(),
        words.next().and_then(|c| c.parse::<u32>().ok()),
    ) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") && (100..600).contains(&code) => Ok(code),
        _ => Err(format!("HTTP GET {path}: not an HTTP answer: {line:?}")),
    }
}

async fn docker_exec(
    docker: &bollard::Docker,
    container: &str,
    argv: Vec<String>,
    env: Vec<(String, String)>,
) -> Outcome {
    use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
    use futures::StreamExt;
    let env: Vec<String> = env.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    let created = docker
        .create_exec(
            container,
            CreateExecOptions {
                cmd: Some(argv),
                env: Some(env),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await;
    let id = match created {
        Ok(c) => c.id,
        Err(e) => return failure(Type::Command, format!("docker exec: {e}")),
    };
    match docker
        .start_exec(
            &id,
            Some(StartExecOptions {
                detach: false,
                tty: false,
                output_capacity: None,
            }),
        )
        .await
    {
        // The output is drained (and dropped) until the command ends.
        Ok(StartExecResults::Attached { mut output, .. }) => while output.next().await.is_some() {},
        Ok(StartExecResults::Detached) => {}
        Err(e) => return failure(Type::Command, format!("docker exec: {e}")),
    }
    match docker.inspect_exec(&id).await {
        Ok(info) => match info.exit_code {
            Some(code) => exit_outcome(code as i32, String::new()),
            None => failure(Type::Command, "docker exec: no exit code".into()),
        },
        Err(e) => failure(Type::Command, format!("docker exec: {e}")),
    }
}

/// For messages: what the check does ("HTTP GET 127.0.0.1:8080/health").
pub fn describe(check: &pb::CheckInfo) -> String {
    match Type::try_from(check.r#type).unwrap_or(Type::Unspecified) {
        Type::Http => {
            let h = check.http.clone().unwrap_or_default();
            let path = if h.path.is_empty() {
                "/"
            } else {
                h.path.as_str()
            };
            format!("HTTP GET 127.0.0.1:{}{path}", h.port)
        }
        Type::Tcp => format!(
            "TCP 127.0.0.1:{}",
            check.tcp.as_ref().map(|t| t.port).unwrap_or(0)
        ),
        Type::Command => {
            let c = check.command.clone().unwrap_or_default();
            let mut text = if c.shell || c.arguments.is_empty() {
                c.value
            } else {
                c.arguments.join(" ")
            };
            if text.len() > 80 {
                let mut end = 80;
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                text.truncate(end);
                text.push('…');
            }
            format!("command '{text}'")
        }
        Type::Unspecified => "untyped check".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http_check(port: u16, path: &str) -> pb::CheckInfo {
        pb::CheckInfo {
            r#type: Type::Http as i32,
            http: Some(pb::check_info::Http {
                port: port.into(),
                path: path.into(),
            }),
            ..Default::default()
        }
    }

    /// A one-shot HTTP server on a loopback port answering `status`; returns the port
    /// and the request line it received.
    fn serve_once(status: &'static str) -> (u16, std::thread::JoinHandle<String>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).unwrap();
            s.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                .unwrap();
            String::from_utf8_lossy(&buf[..n])
                .lines()
                .next()
                .unwrap_or_default()
                .to_string()
        });
        (port, h)
    }

    #[test]
    fn http_success_failure_and_closed_port() {
        let timeout = Duration::from_secs(30);
        let (port, h) = serve_once("204 No Content");
        let o = probe(&http_check(port, "/ready"), timeout);
        assert!(o.success, "{o:?}");
        assert_eq!(o.status.http_status, Some(204));
        assert_eq!(h.join().unwrap(), "GET /ready HTTP/1.0");

        let (port, h) = serve_once("503 Service Unavailable");
        let o = probe(&http_check(port, ""), timeout);
        assert!(!o.success);
        assert_eq!(o.detail, "HTTP 503");
        assert_eq!(h.join().unwrap(), "GET / HTTP/1.0");

        // A port nobody listens on: bound then released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let o = probe(&http_check(port, "/"), timeout);
        assert!(!o.success);
        assert_eq!(o.status.http_status, None);
        assert!(o.detail.contains("cannot connect"), "{}", o.detail);
    }

    #[test]
    fn tcp_connects_or_fails() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let check = pb::CheckInfo {
            r#type: Type::Tcp as i32,
            tcp: Some(pb::check_info::Tcp { port: port.into() }),
            ..Default::default()
        };
        let o = probe(&check, Duration::from_secs(30));
        assert!(o.success);
        assert_eq!(o.status.tcp_succeeded, Some(true));
        drop(l);
        let o = probe(&check, Duration::from_secs(30));
        assert!(!o.success);
        assert_eq!(o.status.tcp_succeeded, Some(false));
    }

    #[test]
    fn not_http_is_a_failure() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.write_all(b"SSH-2.0-nope\r\n").unwrap();
        });
        let o = probe(&http_check(port, "/"), Duration::from_secs(30));
        h.join().unwrap();
        assert!(!o.success);
        assert!(o.detail.contains("not an HTTP answer"), "{}", o.detail);
    }

    #[test]
    fn describes_checks_for_people() {
        assert_eq!(
            describe(&http_check(8080, "/health")),
            "HTTP GET 127.0.0.1:8080/health"
        );
        let c = pb::CheckInfo {
            r#type: Type::Command as i32,
            command: Some(pb::CommandInfo {
                value: "test -f /ready".into(),
                shell: true,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(describe(&c), "command 'test -f /ready'");
    }
}
