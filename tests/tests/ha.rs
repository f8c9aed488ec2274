//! Three masters in one Raft group, with real processes and real `kill -9`s.
//!
//! - The leader killed in the middle of a 2,000-task run: a new leader takes over in a
//!   higher term, the framework and the agents follow it by themselves, the killed master
//!   rejoins as a follower, and every job runs exactly once and finishes.
//! - A follower killed and restarted: it catches up with everything committed while it was
//!   away (same term, same applied registry).
//! - The leader cut off from the other masters (network namespaces and blackhole routes):
//!   the majority elects a new leader, the old one stops serving, and after healing it
//!   follows the new leader with the same applied registry.
//!
//! Outcomes only: every wait is bounded generously and nothing asserts a duration.

use std::time::Duration;

use drover_tests::{finished_jobs, wait_until, Cluster, Framework, Timing};

const MINUTE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(200);

#[test]
fn leader_kill_9_mid_run_fails_over_and_runs_every_task_once() {
    let mut cluster = Cluster::start_ha(Timing::default(), 3);
    cluster.add_agent("cpus:4;mem:4096");
    cluster.add_agent("cpus:4;mem:4096");
    cluster.wait_for_active_agents(2);
    let old_leader = cluster.wait_for_leader();
    let old_term = cluster.term_at(old_leader);
    assert!(old_term > 0);

    let fw = Framework::start(
        &cluster,
        "ha-batch",
        &[
            "--tasks",
            "2000",
            "--cmd",
            "echo $JOB_INDEX >> $RUN_LOG",
            "--max-in-flight",
            "200",
        ],
    );
    wait_until(
        "a quarter of the tasks to run",
        Duration::from_secs(600),
        POLL,
        || (cluster.run_counts().len() >= 500).then_some(()),
    );

    cluster.kill_master_at(old_leader);
    let new_leader = wait_until("a new leader", MINUTE, POLL, || {
        cluster.leader().filter(|&l| l != old_leader)
    });
    let new_term = cluster.term_at(new_leader);
    assert!(
        new_term > old_term,
        "the new leader leads in a higher term ({new_term} after {old_term})"
    );

    cluster.start_master_at(old_leader);
    let rejoined = wait_until(
        "the killed master to follow the leader",
        MINUTE,
        POLL,
        || {
            let s = cluster.raft_status(old_leader)?;
            let leader = cluster.leader()?;
            (!s.is_leader && s.leader_id == leader as u64 + 1).then_some(s)
        },
    );
    assert!(rejoined.term >= new_term);

    let report = fw.finish(Duration::from_secs(1500));
    assert!(
        report.resubscriptions >= 1,
        "the framework resubscribed to the new leader with its id"
    );
    cluster.assert_every_job_once(&report, 2000);
    let (active, completed) = cluster.tasks();
    assert!(active.is_empty(), "no task left behind: {active:?}");
    assert!(completed.len() >= 2000, "the leader knows every task");

    cluster.wait_for_replicas_to_agree(&[0, 1, 2]);
    let s = cluster.raft_status(old_leader).expect("status");
    assert!(
        s.completed_tasks >= 2000,
        "the rejoined master knows every task"
    );
}

#[test]
fn follower_kill_9_then_restart_catches_up() {
    let mut cluster = Cluster::start_ha(Timing::default(), 3);
    cluster.add_agent("cpus:4;mem:4096");
    cluster.wait_for_active_agents(1);
    let leader = cluster.wait_for_leader();
    let follower = (leader + 1) % 3;

    let report = Framework::start(&cluster, "before", &["--tasks", "50"]).finish(10 * MINUTE);
    assert_eq!(finished_jobs(&report).len(), 50);
    cluster.wait_for_replicas_to_agree(&[0, 1, 2]);

    cluster.kill_master_at(follower);
    // The two others are a majority: work goes on while the follower is away.
    let report = Framework::start(&cluster, "while-away", &["--tasks", "150"]).finish(10 * MINUTE);
    assert_eq!(finished_jobs(&report).len(), 150);
    let leader = cluster.wait_for_leader();
    assert_ne!(leader, follower);
    let lead = cluster.raft_status(leader).expect("leader status");
    assert_eq!(lead.completed_tasks, 200);

    cluster.start_master_at(follower);
    cluster.wait_for_replicas_to_agree(&[0, 1, 2]);
    let caught_up = cluster.raft_status(follower).expect("follower status");
    assert!(!caught_up.is_leader);
    assert!(caught_up.applied_index >= lead.commit_index);
    assert_eq!(caught_up.completed_tasks, 200, "it knows every task");
    assert_eq!(caught_up.agents, 1);
}

#[test]
fn a_partitioned_leader_steps_down_and_rejoins_without_divergence() {
    // Every master in its own network namespace; agents, the framework and this test stay
    // in the root namespace and can reach all of them.
    let mut cluster = Cluster::start_ha_in_netns(Timing::default(), 3);
    cluster.add_agent("cpus:4;mem:4096");
    cluster.add_agent("cpus:4;mem:4096");
    cluster.wait_for_active_agents(2);
    let fw = Framework::start(
        &cluster,
        "partition",
        &["--tasks", "600", "--max-in-flight", "60"],
    );
    wait_until("tasks to run", 10 * MINUTE, POLL, || {
        (cluster.run_counts().len() >= 100).then_some(())
    });

    let old = cluster.wait_for_leader();
    let old_term = cluster.term_at(old);
    cluster
        .hosts
        .as_ref()
        .expect("masters in namespaces")
        .isolate(old);

    // The majority elects a new leader; the cut-off one notices it lost its quorum
    // (check_quorum) and stops serving.
    let new = wait_until("a leader on the majority side", MINUTE, POLL, || {
        cluster.leader().filter(|&l| l != old)
    });
    assert!(
        cluster.term_at(new) > old_term,
        "the new leader leads in a higher term"
    );
    wait_until("the cut-off master to stop serving", MINUTE, POLL, || {
        let h = drover_tests::health(&cluster.master_addr_at(old))?;
        (!h.leader).then_some(())
    });

    cluster.hosts.as_ref().expect("namespaces").heal();
    let rejoined = wait_until(
        "the old leader to follow the new one",
        2 * MINUTE,
        POLL,
        || {
            let s = cluster.raft_status(old)?;
            let leader = cluster.leader()?;
            (!s.is_leader && s.leader_id == cluster.master_id(leader)).then_some(s)
        },
    );
    assert!(rejoined.term > old_term);

    let report = fw.finish(20 * MINUTE);
    cluster.assert_every_job_once(&report, 600);
    // Same applied registry everywhere, the old leader included: nothing diverged.
    cluster.wait_for_replicas_to_agree(&[0, 1, 2]);
}
