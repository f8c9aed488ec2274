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
//! The masters are the harness's [`Cluster`], prepared before they start where a test
//! needs one master's own flags (the cap) or a data folder filled beforehand. Waits are
//! bounded generously; nothing asserts a duration.

// The helpers return the gRPC status the masters answered, which the tests inspect;
// boxing it would only add noise.
#![allow(clippy::result_large_err)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use drover_proto::pb;
use drover_tests::{connect, health, master_tool, wait_until, Cluster, Timing};

const MINUTE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(200);

/// What a master claiming the registry version of the release before it runs with.
const CAP: [&str; 2] = ["--max-registry-version", "1"];

/// Every master here serves the test-only registry command.
fn test_commands() -> Vec<String> {
    vec!["--enable-test-commands".into()]
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

/// Stops master `i` on purpose (SIGTERM: a leader hands over first); it must exit cleanly.
fn stop(c: &mut Cluster, i: usize) {
    let status = c.stop_master_at(i).expect("the master was running");
    assert!(status.success(), "master {} stopped with {status}", i + 1);
}

/// Waits until every running master's applied registry satisfies `ok`.
fn wait_for_all(c: &Cluster, what: &str, ok: impl Fn(&pb::RaftStatusResponse) -> bool) {
    wait_until(what, 2 * MINUTE, POLL, || {
        (0..c.master_count())
            .filter(|&i| c.master_running(i))
            .all(|i| c.raft_status(i).is_some_and(|s| ok(&s)))
            .then_some(())
    });
}

/// The test-only command, proposed through the master at `addr`.
fn record_marker(addr: &str, marker: &str) -> Result<u32, tonic::Status> {
    let marker = marker.to_string();
    runtime().block_on(async move {
        pb::registry_testing_client::RegistryTestingClient::new(channel(addr).await?)
            .record_test_marker(pb::RecordTestMarkerRequest { marker })
            .await
            .map(|r| r.into_inner().registry_version)
    })
}

/// Sets a role weight through the master at `addr` (a command every version knows).
fn set_weight(addr: &str, role: &str, weight: f64) -> Result<(), tonic::Status> {
    let role = role.to_string();
    runtime().block_on(async move {
        pb::operator_client::OperatorClient::new(channel(addr).await?)
            .update_weights(pb::UpdateWeightsRequest {
                weights: vec![pb::WeightInfo { role, weight }],
            })
            .await
            .map(|_| ())
    })
}

fn roles(addr: &str) -> Option<Vec<pb::RoleSummary>> {
    runtime().block_on(async move {
        let mut c = pb::operator_client::OperatorClient::new(connect(addr).await?);
        Some(
            c.get_roles(pb::GetRolesRequest {})
                .await
                .ok()?
                .into_inner()
                .roles,
        )
    })
}

/// Keeps calling `f` with the current leader's address while it answers with leadership
/// trouble (an election under way); returns the first other answer.
fn at_leader<T>(
    c: &Cluster,
    f: impl Fn(&str) -> Result<T, tonic::Status>,
) -> Result<T, tonic::Status> {
    wait_until("an answer from the leader", 2 * MINUTE, POLL, || {
        let leader = c.leader()?;
        match f(&c.master_addr_at(leader)) {
            Err(s) if s.code() == tonic::Code::Unavailable => None,
            other => Some(other),
        }
    })
}

#[test]
fn a_capped_master_holds_back_new_commands_until_it_is_upgraded() {
    let mut m = Cluster::prepare_ha(Timing::default(), 3, test_commands());
    m.set_master_flags(2, &CAP);
    m.start_masters();

    // The mixed cluster serves: a command every release knows is committed everywhere.
    at_leader(&m, |a| set_weight(a, "analytics", 3.0)).expect("set a weight");
    wait_for_all(&m, "every master to report and stay at version 1", |s| {
        s.registry_version == 1 && s.cluster_id.is_empty()
    });
    assert_eq!(m.raft_status(2).unwrap().max_registry_version, 1, "the cap");
    assert_eq!(m.raft_status(0).unwrap().max_registry_version, 2);

    // The newer command is refused before it is proposed, naming the capped master (once
    // the leader has heard it; before that it names it as not reported).
    let refusal = wait_until(
        "the refusal to name master 3's version",
        MINUTE,
        POLL,
        || {
            match at_leader(&m, |a| record_marker(a, "too early")) {
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
        let s = m.raft_status(i).unwrap();
        assert_eq!(s.test_marker, "", "nothing was proposed");
        assert_eq!(s.registry_version, 1);
    }
    // Still serving after the refusals.
    at_leader(&m, |a| set_weight(a, "web", 2.0)).expect("set another weight");

    // "Upgrade" master 3: the same binary without the cap.
    stop(&mut m, 2);
    m.set_master_flags(2, &[]);
    m.start_master_at(2);
    wait_for_all(&m, "the registry to be raised to 2 and given an id", |s| {
        s.registry_version == 2 && !s.cluster_id.is_empty()
    });
    let version = at_leader(&m, |a| record_marker(a, "upgraded")).expect("accepted now");
    assert_eq!(version, 2);
    wait_for_all(&m, "the marker on every master", |s| {
        s.test_marker == "upgraded"
    });
    let ids: Vec<String> = (0..3)
        .map(|i| m.raft_status(i).unwrap().cluster_id)
        .collect();
    assert!(ids.iter().all(|id| id == &ids[0]), "{ids:?}");

    // Now that the registry is at version 2, an older master may not join.
    let joiner = m.add_master(&CAP);
    let (status, log) = m.start_master_expecting_refusal(joiner);
    assert!(!status.success(), "an older master joined: {log}");
    assert!(
        log.contains(
            "master 4 supports registry versions up to 1, but the registry is at version 2"
        ),
        "{log}"
    );
    let members = m.raft_status(0).unwrap();
    assert!(
        !members.voters.contains(&4) && !members.learners.contains(&4),
        "{members:?}"
    );

    // Nor may one that an operator added first: `drover masters add` cannot know the
    // binary's version (it sends 0), so the joining master checks itself.
    let pre_added = m.add_master(&CAP);
    let (id, address) = (m.master_id(pre_added), m.master_addr_at(pre_added));
    at_leader(&m, |a| {
        let address = address.clone();
        runtime().block_on(async move {
            pb::operator_client::OperatorClient::new(channel(a).await?)
                .add_master(pb::AddMasterRequest {
                    id,
                    address,
                    max_registry_version: 0,
                })
                .await
                .map(|_| ())
        })
    })
    .expect("added as a learner");
    let (status, log) = m.start_master_expecting_refusal(pre_added);
    assert!(!status.success(), "an older pre-added master ran: {log}");
    assert!(
        log.contains(&format!(
            "master {id} supports registry versions up to 1, but the registry is at version 2"
        )),
        "{log}"
    );
}

#[test]
fn the_cluster_id_is_shared_kept_and_restored() {
    let mut m = Cluster::prepare_ha(Timing::default(), 3, test_commands());
    m.start_masters();
    wait_for_all(&m, "a cluster id on every master", |s| {
        !s.cluster_id.is_empty()
    });
    let id = m.raft_status(0).unwrap().cluster_id;
    assert_eq!(id.len(), 36, "a UUID: {id}");
    for i in 0..3 {
        assert_eq!(m.raft_status(i).unwrap().cluster_id, id);
        assert_eq!(
            health(&m.master_addr_at(i)).unwrap().cluster_id,
            id,
            "GetHealth"
        );
    }

    // A joining master receives it with the registry.
    let j = m.add_joining_master();
    wait_until(
        "the joining master to hold the id",
        2 * MINUTE,
        POLL,
        || (m.raft_status(j)?.cluster_id == id).then_some(()),
    );

    // Kept across a restart (of the leader, even).
    let leader = m.wait_for_leader();
    stop(&mut m, leader);
    m.start_master_at(leader);
    m.wait_for_leader();
    assert_eq!(health(&m.master_addr_at(leader)).unwrap().cluster_id, id);
    wait_for_all(&m, "the same id after the restart", |s| s.cluster_id == id);

    // Kept by a backup restored into a new (single-master) cluster.
    let file = m.dir.path().join("registry.backup");
    let file = file.to_str().unwrap();
    let said = master_tool(&["backup", "--master", &m.master_list(), "--out", file]);
    assert!(said.contains(&id), "the backup names the cluster: {said}");
    let mut r = Cluster::prepare_ha(Timing::default(), 1, test_commands());
    let restored_dir = r.master_data_dir(0);
    let peers = format!("1={}", r.master_addr_at(0));
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
    r.start_masters();
    assert_eq!(health(&r.master_addr_at(0)).unwrap().cluster_id, id);
    assert_eq!(r.raft_status(0).unwrap().registry_version, 2);
}

/// The fixture: a data folder written by the release before registry versions (commit
/// 6360018, `drover-master --weights analytics=3,web=2` run briefly as a single master).
fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/registry-v1.tar.gz")
}

#[test]
fn a_data_folder_of_the_previous_release_opens_and_is_upgraded() {
    // The fixture's `master/` is the data folder of a single-master cluster.
    let mut m = Cluster::prepare(Timing::default(), test_commands());
    let out = Command::new("tar")
        .arg("-xzf")
        .arg(fixture())
        .arg("-C")
        .arg(m.dir.path())
        .output()
        .expect("run tar");
    assert!(
        out.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        m.master_data_dir(0).join("registry").is_dir(),
        "the fixture holds master/registry"
    );
    m.start_master();

    // Its state is there.
    let roles = wait_until("the roles", MINUTE, POLL, || roles(&m.master_addr_at(0)));
    let weight = |name: &str| roles.iter().find(|r| r.name == name).map(|r| r.weight);
    assert_eq!(weight("analytics"), Some(3.0), "{roles:?}");
    assert_eq!(weight("web"), Some(2.0), "{roles:?}");

    // Alone, it supports version 2: the registry is raised and given a cluster id.
    wait_for_all(&m, "the registry to be upgraded", |s| {
        s.registry_version == 2 && !s.cluster_id.is_empty()
    });
    let h = health(&m.master_addr_at(0)).unwrap();
    assert_eq!(h.registry_version, 2);
    assert_eq!(h.max_registry_version, 2);
    assert!(!h.cluster_id.is_empty());
    // And it takes new commands, old and new.
    at_leader(&m, |a| set_weight(a, "batch", 5.0)).expect("set a weight");
    assert_eq!(
        record_marker(&m.master_addr_at(0), "after upgrade").unwrap(),
        2
    );

    // A restart keeps all of it.
    let id = h.cluster_id;
    stop(&mut m, 0);
    m.start_master();
    let s = m.raft_status(0).unwrap();
    assert_eq!((s.registry_version, s.cluster_id), (2, id));
    assert_eq!(s.test_marker, "after upgrade");

    // No way back: a master claiming version 1 (as the previous release) stops on the
    // upgraded folder instead of misreading it.
    stop(&mut m, 0);
    m.set_master_flags(0, &CAP);
    let (status, log) = m.start_master_expecting_refusal(0);
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("needs registry version 2, but this master supports only up to 1")
            || log.contains("the registry snapshot is at version 2"),
        "{log}"
    );
}
