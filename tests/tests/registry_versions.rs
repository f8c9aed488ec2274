//! Registry versions and the cluster id, with real masters:
//! - a three-master cluster where one master claims an older registry version (the
//!   hidden `--max-registry-version`, standing in for an older release) stays up and
//!   serves, refuses a command of the newer version (FAILED_PRECONDITION naming that
//!   master), and accepts it once that master is restarted without the cap ("upgraded");
//!   after which a master claiming the older version is refused when it tries to join;
//! - the cluster id: the same on every master (a joining one included), kept across a
//!   restart and by a backup restored into a new cluster;
//! - a data folder written by the release before registry versions
//!   (`tests/fixtures/registry-v1.tar.gz`) opens with this binary, keeps its state, and
//!   is upgraded in place; a master claiming the old version then refuses the folder.
//!
//! The masters here need per-master flags (one capped, then not), which the shared
//! `Cluster` harness does not offer; this file starts them itself with [`Masters`], a small
//! self-contained launcher, and uses the harness only for `bin_dir`, `free_port`,
//! `wait_until`, `health`, `connect` and `master_tool`. Waits are bounded generously; nothing asserts a duration.

// The helpers return the gRPC status the masters answered, which the tests inspect;
// boxing it would only add noise.
#![allow(clippy::result_large_err)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use drover_proto::pb;
use drover_tests::{bin_dir, connect, free_port, health, master_tool, wait_until};

const MINUTE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(200);

/// Masters started by this file: each with its own ports, data folder, flags and log.
struct Masters {
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
}

struct Node {
    id: u64,
    port: u16,
    http_port: u16,
    /// Extra flags for this master (e.g. the version cap).
    flags: Vec<String>,
    /// How it enters the cluster: `--peers` of the seeding members, or `--join`.
    membership: Vec<String>,
    data: PathBuf,
    child: Option<Child>,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A channel to `addr`, or UNAVAILABLE (which [`at_leader`] waits out) if it does not
/// answer.
async fn channel(addr: &str) -> Result<tonic::transport::Channel, tonic::Status> {
    connect(addr)
        .await
        .ok_or_else(|| tonic::Status::unavailable(format!("{addr} does not answer")))
}

impl Node {
    /// Master `id` on free ports with no extra flags, not started.
    fn new(id: u64, data: PathBuf, membership: Vec<String>) -> Node {
        Node {
            id,
            port: free_port(),
            http_port: free_port(),
            flags: Vec::new(),
            membership,
            data,
            child: None,
        }
    }
}

impl Masters {
    /// No master yet, and the folder for their data and logs.
    fn none() -> Masters {
        let dir = tempfile::Builder::new()
            .prefix("drover-versions-")
            .tempdir()
            .expect("tempdir");
        Masters {
            dir,
            nodes: Vec::new(),
        }
    }

    /// `n` masters seeding one cluster together (`--peers` naming all of them), not
    /// started yet.
    fn seeded(n: usize) -> Masters {
        let mut m = Masters::none();
        for id in 1..=n as u64 {
            let data = m.dir.path().join(format!("master-{id}"));
            m.nodes.push(Node::new(id, data, Vec::new()));
        }
        let peers = m
            .nodes
            .iter()
            .map(|n| format!("{}=127.0.0.1:{}", n.id, n.port))
            .collect::<Vec<_>>()
            .join(",");
        for n in &mut m.nodes {
            n.membership = vec!["--peers".into(), peers.clone()];
        }
        m
    }

    /// One master on an existing data folder (no `--peers`: a single-master cluster, or
    /// whatever membership the folder holds).
    fn on_folder(data: &Path, peers: Option<String>) -> Masters {
        let mut m = Masters::none();
        let mut node = Node::new(1, data.to_path_buf(), Vec::new());
        if let Some(p) = peers {
            node.membership = vec!["--peers".into(), p.replace("PORT", &node.port.to_string())];
        }
        m.nodes.push(node);
        m
    }

    /// Where master `id` logs (appended across its restarts).
    fn log(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("master-{id}.log"))
    }

    fn addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.nodes[i].port)
    }

    fn addrs(&self) -> Vec<String> {
        (0..self.nodes.len()).map(|i| self.addr(i)).collect()
    }

    /// Starts master `i` and waits until it answers.
    fn start(&mut self, i: usize) {
        self.spawn(i);
        self.wait_answers(i);
    }

    fn wait_answers(&self, i: usize) {
        let addr = self.addr(i);
        wait_until(&format!("master {} to answer", i + 1), MINUTE, POLL, || {
            health(&addr).map(|_| ())
        });
    }

    /// Starts every master, then waits until each answers (a seeding member may wait for
    /// the others before it does).
    fn start_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.spawn(i);
        }
        for i in 0..self.nodes.len() {
            self.wait_answers(i);
        }
    }

    fn spawn(&mut self, i: usize) {
        let n = &self.nodes[i];
        assert!(n.child.is_none(), "master {} already runs", n.id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(n.id))
            .expect("log file");
        let child = Command::new(bin_dir().join("drover-master"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", n.port))
            .arg("--http-listen")
            .arg(format!("127.0.0.1:{}", n.http_port))
            .arg("--data-dir")
            .arg(&n.data)
            .args(["--id", &n.id.to_string(), "--enable-test-commands"])
            .args(&n.membership)
            .args(&n.flags)
            .env("DROVER_LOG", "info,drover_master=debug")
            .stdout(Stdio::from(log.try_clone().expect("dup")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn drover-master");
        self.nodes[i].child = Some(child);
    }

    /// Stops master `i` on purpose (SIGTERM: a leader hands over first) and waits for it.
    fn stop(&mut self, i: usize) {
        let Some(mut c) = self.nodes[i].child.take() else {
            return;
        };
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let status = wait_until(&format!("master {} to stop", i + 1), MINUTE, POLL, || {
            c.try_wait().ok().flatten()
        });
        assert!(status.success(), "master {} stopped with {status}", i + 1);
    }

    /// Adds (not starts) a master with the next id and `flags` that joins through the
    /// others (`--join`).
    fn add_joiner(&mut self, flags: &[&str]) -> usize {
        let others = self.addrs().join(",");
        let i = self.nodes.len();
        let id = i as u64 + 1;
        let data = self.dir.path().join(format!("master-{id}"));
        let mut node = Node::new(id, data, vec!["--join".into(), others]);
        node.flags = flags.iter().map(|f| f.to_string()).collect();
        self.nodes.push(node);
        i
    }

    /// Adds a master with the next id that joins through the others (`--join`).
    fn join_one(&mut self) -> usize {
        let i = self.add_joiner(&[]);
        self.start(i);
        i
    }

    /// Adds a master with the next id that tries to join with `flags`, expecting it to be
    /// refused: waits (bounded) for it to exit and returns its exit status and log.
    fn join_refused(&mut self, flags: &[&str]) -> (std::process::ExitStatus, String) {
        let i = self.add_joiner(flags);
        self.start_refused(i)
    }

    /// Starts master `i` expecting it to refuse to run: waits (bounded) for it to exit and
    /// returns its exit status and log.
    fn start_refused(&mut self, i: usize) -> (std::process::ExitStatus, String) {
        self.spawn(i);
        let mut child = self.nodes[i].child.take().expect("spawned");
        let status = wait_until(
            &format!("master {} to exit", i + 1),
            2 * MINUTE,
            POLL,
            || child.try_wait().ok().flatten(),
        );
        let log = self.log(self.nodes[i].id);
        (status, std::fs::read_to_string(log).unwrap_or_default())
    }

    /// The serving leader, if any.
    fn leader(&self) -> Option<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].child.is_some())
            .find(|&i| health(&self.addr(i)).is_some_and(|h| h.leader))
    }

    fn wait_for_leader(&self) -> usize {
        wait_until("a master to lead", MINUTE, POLL, || self.leader())
    }

    /// Master `i`'s Raft status (its applied registry's version, cluster id, marker).
    fn status(&self, i: usize) -> Option<pb::RaftStatusResponse> {
        let addr = self.addr(i);
        runtime().block_on(async move {
            let mut c = pb::raft_peer_client::RaftPeerClient::new(connect(&addr).await?);
            Some(c.status(pb::RaftStatusRequest {}).await.ok()?.into_inner())
        })
    }

    /// Waits until every running master's applied registry satisfies `ok`.
    fn wait_for_all(&self, what: &str, ok: impl Fn(&pb::RaftStatusResponse) -> bool) {
        wait_until(what, 2 * MINUTE, POLL, || {
            (0..self.nodes.len())
                .filter(|&i| self.nodes[i].child.is_some())
                .all(|i| self.status(i).is_some_and(|s| ok(&s)))
                .then_some(())
        });
    }

    /// The test-only command, proposed through the leader `i`.
    fn record_marker(&self, i: usize, marker: &str) -> Result<u32, tonic::Status> {
        let addr = self.addr(i);
        let marker = marker.to_string();
        runtime().block_on(async move {
            pb::registry_testing_client::RegistryTestingClient::new(channel(&addr).await?)
                .record_test_marker(pb::RecordTestMarkerRequest { marker })
                .await
                .map(|r| r.into_inner().registry_version)
        })
    }

    /// Sets a role weight through the leader `i` (a command every version knows).
    fn set_weight(&self, i: usize, role: &str, weight: f64) -> Result<(), tonic::Status> {
        let addr = self.addr(i);
        let role = role.to_string();
        runtime().block_on(async move {
            pb::operator_client::OperatorClient::new(channel(&addr).await?)
                .update_weights(pb::UpdateWeightsRequest {
                    weights: vec![pb::WeightInfo { role, weight }],
                })
                .await
                .map(|_| ())
        })
    }

    fn roles(&self, i: usize) -> Option<Vec<pb::RoleSummary>> {
        let addr = self.addr(i);
        runtime().block_on(async move {
            let mut c = pb::operator_client::OperatorClient::new(connect(&addr).await?);
            Some(
                c.get_roles(pb::GetRolesRequest {})
                    .await
                    .ok()?
                    .into_inner()
                    .roles,
            )
        })
    }
}

impl Drop for Masters {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::thread::panicking() {
            for n in &self.nodes {
                let text = std::fs::read_to_string(self.log(n.id)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(60).collect();
                eprintln!("---- master {} (last lines) ----", n.id);
                for l in tail.into_iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

/// Keeps calling `f` on the current leader while it answers with leadership trouble
/// (an election under way); returns the first other answer.
fn at_leader<T>(
    m: &Masters,
    f: impl Fn(usize) -> Result<T, tonic::Status>,
) -> Result<T, tonic::Status> {
    wait_until("an answer from the leader", 2 * MINUTE, POLL, || {
        let leader = m.leader()?;
        match f(leader) {
            Err(s) if s.code() == tonic::Code::Unavailable => None,
            other => Some(other),
        }
    })
}

#[test]
fn a_capped_master_holds_back_new_commands_until_it_is_upgraded() {
    let mut m = Masters::seeded(3);
    m.nodes[2].flags = vec!["--max-registry-version".into(), "1".into()];
    m.start_all();
    m.wait_for_leader();

    // The mixed cluster serves: a command every release knows is committed everywhere.
    at_leader(&m, |i| m.set_weight(i, "analytics", 3.0)).expect("set a weight");
    m.wait_for_all("every master to report and stay at version 1", |s| {
        s.registry_version == 1 && s.cluster_id.is_empty()
    });
    assert_eq!(m.status(2).unwrap().max_registry_version, 1, "the cap");
    assert_eq!(m.status(0).unwrap().max_registry_version, 2);

    // The newer command is refused before it is proposed, naming the capped master (once
    // the leader has heard it; before that it names it as not reported).
    let refusal = wait_until(
        "the refusal to name master 3's version",
        MINUTE,
        POLL,
        || {
            match at_leader(&m, |i| m.record_marker(i, "too early")) {
                Ok(v) => panic!("a version-2 command was accepted (registry version {v})"),
                Err(s) => {
                    assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{s:?}");
                    assert!(s.message().contains("master 3"), "{}", s.message());
                    // Settled once the leader has heard every master.
                    (s.message()
                        .contains("master 3 supports only up to version 1")
                        && !s.message().contains("has not reported"))
                    .then(|| s.message().to_string())
                }
            }
        },
    );
    assert!(
        refusal.contains("RecordTestMarker needs registry version 2"),
        "{refusal}"
    );
    assert!(
        !refusal.contains("master 1") && !refusal.contains("master 2"),
        "{refusal}"
    );
    for i in 0..3 {
        let s = m.status(i).unwrap();
        assert_eq!(s.test_marker, "", "nothing was proposed");
        assert_eq!(s.registry_version, 1);
    }
    // Still serving after the refusals.
    at_leader(&m, |i| m.set_weight(i, "web", 2.0)).expect("set another weight");

    // "Upgrade" master 3: the same binary without the cap.
    m.stop(2);
    m.nodes[2].flags.clear();
    m.start(2);
    m.wait_for_all("the registry to be raised to 2 and given an id", |s| {
        s.registry_version == 2 && !s.cluster_id.is_empty()
    });
    let version = at_leader(&m, |i| m.record_marker(i, "upgraded")).expect("accepted now");
    assert_eq!(version, 2);
    m.wait_for_all("the marker on every master", |s| {
        s.test_marker == "upgraded"
    });
    let ids: Vec<String> = (0..3).map(|i| m.status(i).unwrap().cluster_id).collect();
    assert!(ids.iter().all(|id| id == &ids[0]), "{ids:?}");

    // Now that the registry is at version 2, an older master may not join.
    let (status, log) = m.join_refused(&["--max-registry-version", "1"]);
    assert!(!status.success(), "an older master joined: {log}");
    assert!(
        log.contains(
            "master 4 supports registry versions up to 1, but the registry is at version 2"
        ),
        "{log}"
    );
    let members = m.status(0).unwrap();
    assert!(
        !members.voters.contains(&4) && !members.learners.contains(&4),
        "{members:?}"
    );
}

#[test]
fn the_cluster_id_is_shared_kept_and_restored() {
    let mut m = Masters::seeded(3);
    m.start_all();
    m.wait_for_leader();
    m.wait_for_all("a cluster id on every master", |s| !s.cluster_id.is_empty());
    let id = m.status(0).unwrap().cluster_id;
    assert_eq!(id.len(), 36, "a UUID: {id}");
    for i in 0..3 {
        assert_eq!(m.status(i).unwrap().cluster_id, id);
        assert_eq!(health(&m.addr(i)).unwrap().cluster_id, id, "GetHealth");
    }

    // A joining master receives it with the registry.
    let j = m.join_one();
    wait_until(
        "the joining master to hold the id",
        2 * MINUTE,
        POLL,
        || (m.status(j)?.cluster_id == id).then_some(()),
    );

    // Kept across a restart (of the leader, even).
    let leader = m.wait_for_leader();
    m.stop(leader);
    m.start(leader);
    m.wait_for_leader();
    assert_eq!(health(&m.addr(leader)).unwrap().cluster_id, id);
    m.wait_for_all("the same id after the restart", |s| s.cluster_id == id);

    // Kept by a backup restored into a new (single-master) cluster.
    let file = m.dir.path().join("registry.backup");
    let file = file.to_str().unwrap();
    let said = master_tool(&["backup", "--master", &m.addrs().join(","), "--out", file]);
    assert!(said.contains(&id), "the backup names the cluster: {said}");
    let restored_dir = m.dir.path().join("restored");
    let mut r = Masters::on_folder(&restored_dir, Some("1=127.0.0.1:PORT".into()));
    let peers = r.nodes[0].membership[1].clone();
    master_tool(&[
        "restore",
        "--from",
        file,
        "--data-dir",
        restored_dir.to_str().unwrap(),
        "--id",
        "1",
        "--peers",
        &peers,
    ]);
    r.start(0);
    r.wait_for_leader();
    assert_eq!(health(&r.addr(0)).unwrap().cluster_id, id);
    assert_eq!(r.status(0).unwrap().registry_version, 2);
}

/// The fixture: a data folder written by the release before registry versions (commit
/// 6360018, `drover-master --weights analytics=3,web=2` run briefly as a single master).
fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/registry-v1.tar.gz")
}

#[test]
fn a_data_folder_of_the_previous_release_opens_and_is_upgraded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new("tar")
        .arg("-xzf")
        .arg(fixture())
        .arg("-C")
        .arg(dir.path())
        .output()
        .expect("run tar");
    assert!(
        out.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let data = dir.path().join("master");
    assert!(
        data.join("registry").is_dir(),
        "the fixture holds master/registry"
    );
    let mut m = Masters::on_folder(&data, None);
    m.start(0);
    m.wait_for_leader();

    // Its state is there.
    let roles = wait_until("the roles", MINUTE, POLL, || m.roles(0));
    let weight = |name: &str| roles.iter().find(|r| r.name == name).map(|r| r.weight);
    assert_eq!(weight("analytics"), Some(3.0), "{roles:?}");
    assert_eq!(weight("web"), Some(2.0), "{roles:?}");

    // Alone, it supports version 2: the registry is raised and given a cluster id.
    m.wait_for_all("the registry to be upgraded", |s| {
        s.registry_version == 2 && !s.cluster_id.is_empty()
    });
    let h = health(&m.addr(0)).unwrap();
    assert_eq!(h.registry_version, 2);
    assert_eq!(h.max_registry_version, 2);
    assert!(!h.cluster_id.is_empty());
    // And it takes new commands, old and new.
    at_leader(&m, |i| m.set_weight(i, "batch", 5.0)).expect("set a weight");
    assert_eq!(m.record_marker(0, "after upgrade").unwrap(), 2);

    // A restart keeps all of it.
    let id = h.cluster_id;
    m.stop(0);
    m.start(0);
    m.wait_for_leader();
    let s = m.status(0).unwrap();
    assert_eq!((s.registry_version, s.cluster_id), (2, id));
    assert_eq!(s.test_marker, "after upgrade");

    // No way back: a master claiming version 1 (as the previous release) stops on the
    // upgraded folder instead of misreading it.
    m.stop(0);
    m.nodes[0].flags = vec!["--max-registry-version".into(), "1".into()];
    let (status, log) = m.start_refused(0);
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("needs registry version 2, but this master supports only up to 1")
            || log.contains("the registry snapshot is at version 2"),
        "{log}"
    );
}
