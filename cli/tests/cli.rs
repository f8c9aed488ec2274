//! End-to-end tests of the `drover` binary as a user runs it: error messages without a
//! cluster, and `drover local`'s process handling (startup, inspection, failure reports,
//! shutdown, nothing left behind after `kill -9`).
//!
//! `drover local` starts `drover-master` and `drover-agent` from its own folder, so each
//! test copies `drover` into a temporary folder next to stand-ins: the agents are shell
//! scripts that sleep, and the master is this very test binary re-executed to run the
//! ignored test [`fake_master`], `drover_testkit`'s operator service reporting every agent
//! ACTIVE.
//! That way these tests need neither the real daemons nor the ports of a real cluster
//! other than the agents' fixed ones.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use drover_proto::pb;
use drover_proto::resources::scalar;

/// `drover local` uses fixed agent ports, so the tests that start it take turns.
static LOCAL_CLUSTER: Mutex<()> = Mutex::new(());

fn drover() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_drover"));
    c.env_remove("DROVER_MASTER").env_remove("RUST_LOG");
    c
}

/// A loopback address nothing listens on.
fn free_address() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn inspection_without_a_master_says_what_to_do() {
    let address = free_address();
    let out: Output = drover()
        .args(["--master", &address, "agents"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "no Drover master answered at {address} — is `drover local` running?"
        )),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn master_list_comes_from_the_environment() {
    let (a, b) = (free_address(), free_address());
    let out = drover()
        .env("DROVER_MASTER", format!("{a},{b}"))
        .arg("status")
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&format!("at {a}, {b} —")), "{stderr}");
}

#[test]
fn every_command_has_help() {
    for cmd in [
        &["--help"][..],
        &["local", "--help"],
        &["status", "--help"],
        &["agents", "--help"],
        &["frameworks", "--help"],
        &["tasks", "--help"],
        &["run", "--help"],
        &["logs", "--help"],
    ] {
        let out = drover().args(cmd).output().unwrap();
        assert!(out.status.success(), "{cmd:?}: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains("Usage:"), "{cmd:?}");
    }
}

#[test]
fn logs_without_a_master_says_what_to_do() {
    let address = free_address();
    let out = drover()
        .args(["--master", &address, "logs", "some-task"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("no Drover master answered at {address}")),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
    let out = drover().args(["logs"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "a usage error: the task is required"
    );
}

#[test]
fn local_refuses_more_than_five_masters() {
    let out = drover().args(["local", "--masters", "6"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "a clap usage error");
    assert!(text(&out.stderr).contains("--masters"));
}

#[test]
fn local_without_the_daemons_says_how_to_build_them() {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("drover");
    std::fs::copy(env!("CARGO_BIN_EXE_drover"), &exe).unwrap();
    let out = Command::new(&exe)
        .args(["local", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("drover-master was not found next to drover"),
        "{stderr}"
    );
    assert!(
        stderr.contains("build them with `cargo build --bins`"),
        "{stderr}"
    );
}

/// A folder with `drover`, a fake master and fake agents, where every daemon records its
/// pid in `pids/<name>`.
struct Sandbox {
    dir: tempfile::TempDir,
    master_listen: String,
}

impl Sandbox {
    /// `agent_script` is the body each fake agent runs after recording its pid; `$AGENT`
    /// holds its --listen address (`drover-agent --master M --listen AGENT …`).
    fn new(agent_script: &str) -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path();
        std::fs::create_dir(bin.join("pids")).unwrap();
        std::fs::copy(env!("CARGO_BIN_EXE_drover"), bin.join("drover")).unwrap();
        let test_binary = std::env::current_exe().unwrap();
        write_script(
            &bin.join("drover-master"),
            &format!(
                "echo $$ > '{pids}/master'\n\
                 export FAKE_MASTER_ARGS=\"$*\"\n\
                 exec '{test}' fake_master --exact --ignored --nocapture --test-threads=1\n",
                pids = bin.join("pids").display(),
                test = test_binary.display(),
            ),
        );
        write_script(
            &bin.join("drover-agent"),
            &format!(
                "AGENT=$4\n\
                 echo $$ > \"{pids}/agent-$AGENT\"\n\
                 {agent_script}\n",
                pids = bin.join("pids").display(),
            ),
        );
        Sandbox {
            dir,
            master_listen: free_address(),
        }
    }

    fn start(&self, agents: u16) -> Child {
        Command::new(self.dir.path().join("drover"))
            .args(["local", "--agents", &agents.to_string(), "--master-listen"])
            .arg(&self.master_listen)
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .env("FAKE_MASTER_AGENTS", agents.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn pids(&self) -> Vec<i32> {
        std::fs::read_dir(self.dir.path().join("pids"))
            .unwrap()
            .filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
            .filter_map(|s| s.trim().parse().ok())
            .collect()
    }
}

fn write_script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Reads `child`'s stdout until a line contains `needle` (or gives up after 20 s), and
/// returns what was read.
fn read_until(child: &mut Child, needle: &str) -> String {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let needle = needle.to_string();
    std::thread::spawn(move || {
        let mut seen = String::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            seen.push_str(&line);
            seen.push('\n');
            if line.contains(&needle) {
                break;
            }
        }
        let _ = tx.send(seen);
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("drover local did not print its banner in time")
}

/// True while `pid` runs. A zombie counts as gone: once `drover local` is killed, its
/// daemons are reparented to a PID 1 that, in some containers, never reaps them.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

fn wait_all_gone(pids: &[i32], within: Duration) {
    let start = Instant::now();
    while pids.iter().any(|&p| alive(p)) {
        assert!(
            start.elapsed() < within,
            "daemons still running: {:?}",
            pids.iter().filter(|&&p| alive(p)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(start.elapsed() < within, "drover local did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut s).unwrap();
    s
}

#[test]
fn local_cluster_starts_answers_and_stops_on_sigterm() {
    let _turn = LOCAL_CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    let sandbox = Sandbox::new("exec sleep 600");
    let mut local = sandbox.start(2);
    let banner = read_until(&mut local, "Press Ctrl-C");
    assert!(
        banner.contains("Drover is running locally: 1 master, 2 agents."),
        "{banner}"
    );
    assert!(banner.contains(&format!(
        "export DROVER_MASTER={}; drover run -- echo hello",
        sandbox.master_listen
    )));
    assert!(banner.contains("agent-1      127.0.0.1:5053 (HTTP 127.0.0.1:5063"));
    assert_eq!(sandbox.pids().len(), 3);

    // The inspection commands work against it.
    let out = drover()
        .args(["--master", &sandbox.master_listen, "agents"])
        .output()
        .unwrap();
    let table = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(table.starts_with("ID "), "{table}");
    assert_eq!(table.matches("ACTIVE").count(), 2, "{table}");
    let out = drover()
        .args(["--master", &sandbox.master_listen, "status", "--json"])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["state"]["agents"].as_array().unwrap().len(), 2);
    assert_eq!(json["health"]["healthy"], true);

    let pids = sandbox.pids();
    unsafe { libc::kill(local.id() as i32, libc::SIGTERM) };
    let status = wait_exit(&mut local, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{}", stderr_of(&mut local));
    wait_all_gone(&pids, Duration::from_secs(30));
    let stderr = stderr_of(&mut local);
    assert!(stderr.contains("Local cluster stopped."), "{stderr}");
    // Each daemon's output lands in its log.
    let log = std::fs::read_to_string(sandbox.dir.path().join("data/logs/master.log")).unwrap();
    assert!(log.contains("fake master serving"), "{log}");
}

#[test]
fn local_reports_a_daemon_that_dies_and_stops_the_rest() {
    let _turn = LOCAL_CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    // agent-1 (listening on 5053) fails at once; agent-0 runs.
    let sandbox = Sandbox::new(
        "if [ \"$AGENT\" = 127.0.0.1:5053 ]; then echo 'cannot open work dir: boom'; exit 7; fi\n\
         exec sleep 600",
    );
    let mut local = sandbox.start(2);
    let status = wait_exit(&mut local, Duration::from_secs(40));
    let stderr = stderr_of(&mut local);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("agent-1 exited unexpectedly (exit status: 7)"),
        "{stderr}"
    );
    assert!(stderr.contains("  cannot open work dir: boom"), "{stderr}");
    wait_all_gone(&sandbox.pids(), Duration::from_secs(30));
}

#[test]
fn kill_9_of_drover_local_leaves_no_daemon_behind() {
    let _turn = LOCAL_CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    let sandbox = Sandbox::new("exec sleep 600");
    let mut local = sandbox.start(1);
    read_until(&mut local, "Press Ctrl-C");
    let pids = sandbox.pids();
    assert_eq!(pids.len(), 2);
    local.kill().unwrap();
    local.wait().unwrap();
    wait_all_gone(&pids, Duration::from_secs(30));
}

/// Not a test: the stand-in `drover-master` (see the module docs). It serves the
/// operator API on the `--listen` address it was given, reporting `FAKE_MASTER_AGENTS`
/// agents ACTIVE at the addresses `drover local` gives its agents, until SIGTERM.
#[tokio::test]
#[ignore = "helper process for the drover local tests"]
async fn fake_master() {
    let Ok(args) = std::env::var("FAKE_MASTER_ARGS") else {
        return;
    };
    let words: Vec<&str> = args.split_whitespace().collect();
    let listen = words
        .windows(2)
        .find(|w| w[0] == "--listen")
        .map(|w| w[1].to_string())
        .expect("--listen");
    let agents: u16 = std::env::var("FAKE_MASTER_AGENTS")
        .unwrap()
        .parse()
        .unwrap();
    let listener = tokio::net::TcpListener::bind(&listen).await.unwrap();
    println!("fake master serving on {listen}");
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
    let agents = (0..agents)
        .map(|i| pb::AgentSummary {
            id: Some(drover_proto::AgentId::new(format!("agent-id-{i}"))),
            hostname: "localhost".into(),
            address: format!("127.0.0.1:{}", 5051 + 2 * i),
            state: pb::agent_summary::State::Active as i32,
            total: vec![scalar("cpus", 2.0), scalar("mem", 1024.0)],
            ..Default::default()
        })
        .collect();
    drover_testkit::FakeOperator::leader(&listen)
        .with_agents(agents)
        .serve_until(listener, async move {
            term.recv().await;
        })
        .await
        .unwrap();
    std::process::exit(0);
}
