//! `kill -9` of an agent while its tasks run, then a restart: tasks that kept running are
//! still tracked, tasks that ended meanwhile are reported with their real exit status, and
//! unacknowledged updates are resent.

use std::time::Duration;

use drover_tests::{wait_until, Cluster, Framework, Timing};

#[test]
fn agent_kill_9_then_restart_reattaches_and_reports_real_exit_codes() {
    let mut cluster = Cluster::start(Timing::default());
    cluster.add_agent("cpus:4;mem:4096");
    cluster.wait_for_active_agents(1);

    // Even tasks outlive the agent's downtime; odd ones exit 3 while it is down.
    let cmd = "if [ $((JOB_INDEX % 2)) = 0 ]; then sleep 8; echo $JOB_INDEX >> $RUN_LOG; \
               else sleep 2; echo $JOB_INDEX >> $RUN_LOG; exit 3; fi";
    let fw = Framework::start(
        &cluster,
        "reattach",
        &["--tasks", "6", "--cmd", cmd, "--max-attempts", "1"],
    );
    cluster.wait_for_running_tasks(6);

    cluster.kill_agent(0);
    // Let the odd tasks exit while nobody watches them.
    wait_until(
        "odd tasks to exit while the agent is down",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || (cluster.run_counts().len() >= 3).then_some(()),
    );
    cluster.start_agent(0);

    let report = fw.finish(Duration::from_secs(300));
    for index in 0..6 {
        let id = format!("reattach-{index}-0");
        if index % 2 == 0 {
            assert_eq!(report.final_states[&id], "FINISHED", "{id}");
        } else {
            assert_eq!(report.final_states[&id], "FAILED", "{id}");
            assert_eq!(
                report.exit_codes.get(&id),
                Some(&3),
                "{id} reports its real exit code"
            );
        }
    }
    let runs = cluster.run_counts();
    assert_eq!(runs.len(), 6);
    assert!(
        runs.values().all(|&n| n == 1),
        "nothing ran twice: {runs:?}"
    );
    wait_until(
        "the agent to hold no unacknowledged update",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || (cluster.agent_pending_updates(0) == Some(0)).then_some(()),
    );
}
