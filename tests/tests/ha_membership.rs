//! Planned and unplanned changes to the set of masters, with real processes, while a
//! framework launches tasks:
//!
//! - a master added at runtime (`--join`) catches up from a snapshot and is promoted, and
//!   then the leader itself is removed (`drover masters remove`);
//! - a member whose data folder was wiped is refused under its old id, and is replaced by
//!   a new id (`drover masters replace`) that catches up through a snapshot;
//! - the whole cluster stopped and started again from disk;
//! - a rolling restart (SIGTERM, which hands leadership over first) of every master;
//! - an online backup (`drover-master backup`) restored (`drover-master restore`) into a
//!   new cluster after every master and its data folder was lost.
//!
//! Every test asserts outcomes a user checks: every task finished exactly once, the
//! membership the leader lists, replicas that agree, the error a refused master prints.
//! Waits are bounded generously; nothing asserts a duration.

use std::time::Duration;

use drover_proto::pb;
use drover_tests::{finished_jobs, metric, wait_until, Cluster, Framework, Timing};

const MINUTE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(200);

/// The members the leader lists, as (id, is voter).
fn members(cluster: &Cluster) -> Option<Vec<(u64, bool)>> {
    let list = cluster.list_masters()?;
    let mut m: Vec<(u64, bool)> = list
        .masters
        .iter()
        .map(|m| (m.id, m.role == pb::master_member::Role::Voter as i32))
        .collect();
    m.sort();
    Some(m)
}

fn wait_for_voters(cluster: &Cluster, ids: &[u64]) {
    let want: Vec<(u64, bool)> = ids.iter().map(|i| (*i, true)).collect();
    wait_until(
        &format!("the voters to be exactly {ids:?}"),
        3 * MINUTE,
        POLL,
        || (members(cluster)? == want).then_some(()),
    );
}

fn ok(out: &std::process::Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "drover failed: {text}");
    text
}

#[test]
fn a_master_joins_and_the_leader_is_removed_while_tasks_launch() {
    let mut cluster = Cluster::start_ha(Timing::default(), 3);
    cluster.add_agent("cpus:4;mem:4096");
    cluster.add_agent("cpus:4;mem:4096");
    cluster.wait_for_active_agents(2);
    let fw = Framework::start(
        &cluster,
        "membership",
        &["--tasks", "800", "--max-in-flight", "100"],
    );
    wait_until("tasks to run", 10 * MINUTE, POLL, || {
        (cluster.run_counts().len() >= 100).then_some(())
    });

    // A new master, id 4, joins by itself (it asks the leader to add it as a learner).
    let joined = cluster.add_joining_master();
    assert_eq!(cluster.master_id(joined), 4);
    wait_for_voters(&cluster, &[1, 2, 3, 4]);
    let listed = ok(&cluster.drover(&["masters", "list"]));
    assert!(
        listed.contains("learner") || listed.contains("voter"),
        "{listed}"
    );
    assert!(
        metric(
            &cluster.master_metrics_at(joined),
            "drover_master_raft_snapshots_received_total"
        ) >= 1.0,
        "the new master caught up from a snapshot"
    );

    // Remove the leader itself: it hands leadership over, and the CLI follows.
    let leader = cluster.wait_for_leader();
    let leader_id = cluster.master_id(leader);
    ok(&cluster.drover(&["masters", "remove", &leader_id.to_string()]));
    let remaining: Vec<u64> = [1, 2, 3, 4]
        .into_iter()
        .filter(|i| *i != leader_id)
        .collect();
    wait_for_voters(&cluster, &remaining);
    cluster.kill_master_at(leader);
    let new_leader = cluster.wait_for_leader();
    assert_ne!(new_leader, leader);

    let report = fw.finish(20 * MINUTE);
    cluster.assert_every_job_once(&report, 800);
    let others: Vec<usize> = (0..4).filter(|i| *i != leader).collect();
    cluster.wait_for_replicas_to_agree(&others);
    let s = cluster
        .raft_status(joined)
        .expect("status of the joined master");
    assert_eq!(s.completed_tasks, 800, "the joined master knows every task");
    assert!(
        !s.voters.contains(&leader_id),
        "the removed master is gone: {:?}",
        s.voters
    );

    // Restarted, the joined master replays the membership changes in its log on top of
    // its stored configuration, and rejoins with the same view.
    cluster.stop_master_at(joined).expect("running");
    cluster.start_master_at(joined);
    cluster.wait_for_replicas_to_agree(&others);
    let again = cluster
        .raft_status(joined)
        .expect("status after the restart");
    assert_eq!(sorted(again.voters), sorted(s.voters));
}

fn sorted(mut v: Vec<u64>) -> Vec<u64> {
    v.sort();
    v
}

#[test]
fn a_wiped_member_is_refused_and_replaced_by_a_new_id() {
    let mut cluster = Cluster::start_ha(Timing::default(), 3);
    cluster.add_agent("cpus:4;mem:4096");
    cluster.wait_for_active_agents(1);
    let report = Framework::start(&cluster, "before", &["--cmd", "true", "--tasks", "100"])
        .finish(10 * MINUTE);
    assert_eq!(finished_jobs(&report).len(), 100);

    let leader = cluster.wait_for_leader();
    let lost = (leader + 1) % 3;
    let lost_id = cluster.master_id(lost);
    cluster.kill_master_at(lost);
    std::fs::remove_dir_all(cluster.master_data_dir(lost)).expect("wipe the data folder");

    // Started again under its old id (same --peers), it must refuse: its votes are gone.
    let (status, log) = cluster.start_master_expecting_refusal(lost);
    assert!(!status.success(), "a wiped member must not start: {log}");
    assert!(
        log.contains("must not rejoin under its old id"),
        "the refusal says why: {log}"
    );

    // Replace it with a new id while tasks launch.
    let fw = Framework::start(
        &cluster,
        "during",
        &["--tasks", "400", "--max-in-flight", "60"],
    );
    let new = cluster.add_joining_master();
    let new_id = cluster.master_id(new);
    let new_addr = cluster.master_addr_at(new);
    let out = ok(&cluster.drover(&[
        "masters",
        "replace",
        &lost_id.to_string(),
        &format!("{new_id}={new_addr}"),
        "--timeout-secs",
        "300",
    ]));
    assert!(out.contains("replaced"), "{out}");
    let mut voters: Vec<u64> = [1, 2, 3, new_id]
        .into_iter()
        .filter(|i| *i != lost_id)
        .collect();
    voters.sort();
    wait_for_voters(&cluster, &voters);

    let report = fw.finish(20 * MINUTE);
    cluster.assert_every_job_once(&report, 400);
    assert!(
        metric(
            &cluster.master_metrics_at(new),
            "drover_master_raft_snapshots_received_total"
        ) >= 1.0,
        "the replacement caught up through a snapshot"
    );
    let alive: Vec<usize> = (0..4).filter(|i| *i != lost).collect();
    cluster.wait_for_replicas_to_agree(&alive);
    let s = cluster.raft_status(new).expect("status");
    assert_eq!(s.completed_tasks, 500, "the replacement knows every task");
}

#[test]
fn the_whole_cluster_stops_and_starts_again_from_disk() {
    let mut cluster = Cluster::start_ha(Timing::default(), 3);
    cluster.add_agent("cpus:4;mem:4096");
    cluster.wait_for_active_agents(1);
    let report = Framework::start(&cluster, "before", &["--cmd", "true", "--tasks", "150"])
        .finish(10 * MINUTE);
    assert_eq!(finished_jobs(&report).len(), 150);
    let term_before = cluster.term();
    cluster.wait_for_replicas_to_agree(&[0, 1, 2]);

    for i in 0..3 {
        cluster.stop_master_at(i).expect("was running");
    }
    for i in 0..3 {
        cluster.start_master_at(i);
    }
    let leader = cluster.wait_for_leader();
    assert!(
        cluster.term_at(leader) > term_before,
        "a new term after the restart"
    );
    // The registry came back from disk: the tasks and the agent are known before
    // anything re-registers.
    let s = cluster.raft_status(leader).expect("status");
    assert_eq!(s.completed_tasks, 150);
    assert_eq!(s.agents, 1);
    cluster.wait_for_active_agents(1);
    let report = Framework::start(&cluster, "after", &["--cmd", "true", "--tasks", "50"])
        .finish(10 * MINUTE);
    assert_eq!(finished_jobs(&report).len(), 50);
    cluster.wait_for_replicas_to_agree(&[0, 1, 2]);
    let s = cluster.raft_status(0).expect("status");
    assert_eq!(s.completed_tasks, 200);
}

#[test]
fn a_rolling_restart_of_every_master_loses_nothing() {
    let mut cluster = Cluster::start_ha(Timing::default(), 3);
    cluster.add_agent("cpus:4;mem:4096");
    cluster.add_agent("cpus:4;mem:4096");
    cluster.wait_for_active_agents(2);
    let fw = Framework::start(
        &cluster,
        "rolling",
        &["--tasks", "900", "--max-in-flight", "80"],
    );
    wait_until("tasks to run", 10 * MINUTE, POLL, || {
        (cluster.run_counts().len() >= 50).then_some(())
    });
    let mut leaders_stopped = 0;
    for i in 0..3 {
        let was_leader = cluster.leader() == Some(i);
        let status = cluster.stop_master_at(i).expect("was running");
        assert!(
            status.success(),
            "master {i} stopped cleanly on SIGTERM: {status}"
        );
        if was_leader {
            leaders_stopped += 1;
            // A leader stopped on purpose hands leadership over before it exits.
            let log = std::fs::read_to_string(cluster.dir.path().join(format!("master-{i}.log")))
                .unwrap_or_default();
            assert!(
                log.contains("leadership handed over"),
                "master {i} led and should have handed leadership over on SIGTERM"
            );
        }
        let leader = cluster.wait_for_leader();
        assert_ne!(leader, i);
        cluster.start_master_at(i);
        cluster.wait_for_replicas_to_agree(&[i]);
    }
    assert!(
        leaders_stopped >= 1,
        "the rolling restart stopped the leader at least once"
    );
    let report = fw.finish(20 * MINUTE);
    cluster.assert_every_job_once(&report, 900);
    cluster.wait_for_replicas_to_agree(&[0, 1, 2]);
}

#[test]
fn a_backup_restores_into_a_new_cluster_after_losing_every_master() {
    let mut cluster = Cluster::start_ha(Timing::default(), 3);
    cluster.add_agent("cpus:4;mem:4096");
    cluster.wait_for_active_agents(1);
    let report = Framework::start(&cluster, "before", &["--cmd", "true", "--tasks", "120"])
        .finish(10 * MINUTE);
    assert_eq!(finished_jobs(&report).len(), 120);

    // An online backup from the leader, through any master.
    let file = cluster.dir.path().join("registry.backup");
    let masters: Vec<String> = (0..3).map(|i| cluster.master_addr_at(i)).collect();
    drover_tests::master_tool(&[
        "backup",
        "--master",
        &masters.join(","),
        "--out",
        file.to_str().unwrap(),
    ]);

    // Every master is lost, data folders included.
    for i in 0..3 {
        cluster.kill_master_at(i);
        std::fs::remove_dir_all(cluster.master_data_dir(i)).expect("wipe");
    }
    // A new cluster is seeded from the backup, one folder per member, same --peers.
    let peers: Vec<String> = (0..3)
        .map(|i| format!("{}={}", cluster.master_id(i), cluster.master_addr_at(i)))
        .collect();
    for i in 0..3 {
        drover_tests::master_tool(&[
            "restore",
            "--from",
            file.to_str().unwrap(),
            "--data-dir",
            cluster.master_data_dir(i).to_str().unwrap(),
            "--id",
            &cluster.master_id(i).to_string(),
            "--peers",
            &peers.join(","),
        ]);
    }
    for i in 0..3 {
        cluster.start_master_at(i);
    }
    let leader = cluster.wait_for_leader();
    let s = cluster.raft_status(leader).expect("status");
    assert_eq!(
        s.completed_tasks, 120,
        "the restored registry knows every task"
    );
    assert_eq!(s.agents, 1, "and the agent");
    // The agent finds the new cluster at the same addresses and work goes on.
    cluster.wait_for_active_agents(1);
    let report = Framework::start(&cluster, "after", &["--cmd", "true", "--tasks", "30"])
        .finish(10 * MINUTE);
    assert_eq!(finished_jobs(&report).len(), 30);
    cluster.wait_for_replicas_to_agree(&[0, 1, 2]);
}
