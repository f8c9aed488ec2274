//! End to end: a real master, two real agents, and a framework that launches 200 short
//! tasks. Every task reaches FINISHED exactly once, runs exactly once, and every update is
//! acknowledged.

use std::time::Duration;

use drover_tests::{wait_until, Cluster, Framework, Timing};

#[test]
fn two_hundred_tasks_finish_exactly_once() {
    let mut cluster = Cluster::start(Timing::default());
    cluster.add_agent("cpus:4;mem:4096");
    cluster.add_agent("cpus:4;mem:4096");
    cluster.wait_for_active_agents(2);

    let fw = Framework::start(
        &cluster,
        "two-hundred",
        &["--tasks", "200", "--cpus", "0.1", "--mem", "16"],
    );
    let report = fw.finish(Duration::from_secs(600));

    assert_eq!(
        report.final_states.len(),
        200,
        "every task has a final state"
    );
    for (id, state) in &report.final_states {
        assert_eq!(state, "FINISHED", "task {id}");
        // Delivery is at least once: an agent resends an update whose acknowledgement is
        // slow, and the framework may see it twice; it never sees a different outcome.
        assert!(
            report.terminal_updates[id] >= 1,
            "task {id} reported terminal"
        );
    }
    let runs = cluster.run_counts();
    assert_eq!(runs.len(), 200, "every task ran");
    assert!(
        runs.values().all(|&n| n == 1),
        "no task ran twice: {runs:?}"
    );
    // Every update from an agent carried a uuid and was acknowledged: each task's
    // STARTING/RUNNING/FINISHED updates.
    assert!(
        report.acknowledged >= 400,
        "acknowledged {} updates",
        report.acknowledged
    );

    // Acknowledgements reached the agents: nothing stays pending there.
    wait_until(
        "agents to have no unacknowledged updates",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || {
            let pending: Option<u32> = (0..2).map(|i| cluster.agent_pending_updates(i)).sum();
            (pending == Some(0)).then_some(())
        },
    );
    // The metrics say the same.
    let metrics = cluster.metrics();
    assert!(
        metrics.contains("drover_master_tasks_launched_total 200"),
        "{metrics}"
    );
    assert!(metrics.contains("drover_master_raft_commit_seconds_count"));
    assert!(metrics.contains("drover_master_allocation_cycle_seconds_count"));
    let launched: u64 = (0..2)
        .map(|i| {
            let text = cluster.agent_metrics(i);
            text.lines()
                .find_map(|l| l.strip_prefix("drover_agent_tasks_launched_total "))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(launched, 200, "agents count every launch");
    let (active, completed) = cluster.tasks();
    assert!(active.is_empty(), "no task left active: {active:?}");
    assert!(completed.len() >= 200);
}
