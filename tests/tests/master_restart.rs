//! `kill -9` of the master in the middle of a run, then a restart from its data folder:
//! the framework carries on without a restart of its own, no task is lost, and no task is
//! launched twice.

use std::time::Duration;

use drover_tests::{wait_until, Cluster, Framework, Timing};

#[test]
fn master_kill_9_mid_run_loses_nothing_and_launches_nothing_twice() {
    let mut cluster = Cluster::start(Timing::default());
    cluster.add_agent("cpus:4;mem:4096");
    cluster.add_agent("cpus:4;mem:4096");
    cluster.wait_for_active_agents(2);
    let term_before = cluster.term();

    let fw = Framework::start(
        &cluster,
        "survivor",
        &[
            "--tasks",
            "300",
            "--cmd",
            "echo $JOB_INDEX >> $RUN_LOG; sleep 0.2",
            "--max-in-flight",
            "40",
        ],
    );
    wait_until(
        "a third of the tasks to run",
        Duration::from_secs(300),
        Duration::from_millis(100),
        || (cluster.run_counts().len() >= 100).then_some(()),
    );

    cluster.kill_master();
    std::thread::sleep(Duration::from_secs(1));
    cluster.start_master();
    assert!(
        cluster.term() > term_before,
        "the restarted master leads in a new term"
    );

    let report = fw.finish(Duration::from_secs(900));
    assert!(
        report.resubscriptions >= 1,
        "the framework resubscribed with its id"
    );
    let finished: std::collections::HashSet<String> = report
        .final_states
        .iter()
        .filter(|(_, s)| s.as_str() == "FINISHED")
        .map(|(id, _)| id.rsplit('-').nth(1).unwrap().to_string())
        .collect();
    assert_eq!(finished.len(), 300, "every job index finished");
    let runs = cluster.run_counts();
    assert_eq!(runs.len(), 300);
    let twice: Vec<_> = runs.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "tasks ran more than once: {twice:?}");
    let (active, _) = cluster.tasks();
    assert!(active.is_empty(), "no task left behind: {active:?}");
}

#[test]
fn registry_survives_restart_with_agents_and_frameworks() {
    let mut cluster = Cluster::start(Timing::default());
    cluster.add_agent("cpus:2;mem:1024");
    cluster.wait_for_active_agents(1);
    let fw = Framework::start(&cluster, "small", &["--tasks", "5"]);
    let report = fw.finish(Duration::from_secs(300));
    assert_eq!(report.final_states.len(), 5);

    cluster.kill_master();
    cluster.start_master();
    // The agent re-registers with the same id; completed tasks are still known.
    cluster.wait_for_active_agents(1);
    assert_eq!(cluster.agents().len(), 1, "the agent kept its id");
    let (_, completed) = cluster.tasks();
    assert_eq!(completed.len(), 5, "completed tasks survived the restart");
}
