//! An agent silent past its timeout: its tasks become LOST, the framework reruns them on
//! another agent, and when the silent agent returns the LOST tasks are killed: the work
//! never runs twice. A partition-aware framework's tasks instead become UNREACHABLE and
//! resume when the agent returns.

use std::time::Duration;

use drover_proto::pb;
use drover_tests::{wait_until, Cluster, Framework, Timing};

fn timing() -> Timing {
    Timing {
        agent_ping_secs: 1.0,
        agent_timeout_secs: 5.0,
        allocation_interval_ms: 200,
    }
}

#[test]
fn lost_tasks_rerun_elsewhere_and_are_killed_when_the_agent_returns() {
    let mut cluster = Cluster::start(timing());
    cluster.add_agent("cpus:2;mem:1024");
    cluster.wait_for_active_agents(1);

    // Each run records its start; only a run that completes records its index.
    let cmd = "echo start-$DROVER_TASK_ID >> $RUN_LOG; sleep 20; echo $JOB_INDEX >> $RUN_LOG";
    let fw = Framework::start(
        &cluster,
        "rerun",
        &["--tasks", "2", "--cpus", "1", "--cmd", cmd],
    );
    cluster.wait_for_running_tasks(2);
    cluster.add_agent("cpus:2;mem:1024");
    cluster.wait_for_active_agents(2);

    cluster.pause_agent(0);
    wait_until(
        "agent 0 to be unreachable",
        Duration::from_secs(120),
        Duration::from_millis(200),
        || {
            cluster
                .agents()
                .iter()
                .any(|a| a.state == pb::agent_summary::State::Unreachable as i32)
                .then_some(())
        },
    );
    // The reruns start on agent 1.
    wait_until(
        "reruns to start",
        Duration::from_secs(120),
        Duration::from_millis(200),
        || {
            let runs = cluster.run_counts();
            (runs
                .keys()
                .filter(|k| k.starts_with("start-rerun-") && k.ends_with("-1"))
                .count()
                == 2)
                .then_some(())
        },
    );
    cluster.resume_agent(0);

    let report = fw.finish(Duration::from_secs(300));
    assert_eq!(report.final_states["rerun-0-0"], "LOST");
    assert_eq!(report.final_states["rerun-1-0"], "LOST");
    assert_eq!(report.final_states["rerun-0-1"], "FINISHED");
    assert_eq!(report.final_states["rerun-1-1"], "FINISHED");
    // The first attempts would have completed before the reruns did; they were killed.
    let runs = cluster.run_counts();
    assert_eq!(
        runs.get("0"),
        Some(&1),
        "job 0 completed exactly once: {runs:?}"
    );
    assert_eq!(
        runs.get("1"),
        Some(&1),
        "job 1 completed exactly once: {runs:?}"
    );
    cluster.wait_for_active_agents(2);
}

#[test]
fn partition_aware_tasks_become_unreachable_then_resume() {
    let mut cluster = Cluster::start(timing());
    cluster.add_agent("cpus:2;mem:1024");
    cluster.wait_for_active_agents(1);
    let cmd = "sleep 15; echo $JOB_INDEX >> $RUN_LOG";
    let fw = Framework::start(
        &cluster,
        "aware",
        &["--tasks", "1", "--partition-aware", "--cmd", cmd],
    );
    cluster.wait_for_running_tasks(1);

    cluster.pause_agent(0);
    wait_until(
        "the task to become UNREACHABLE",
        Duration::from_secs(120),
        Duration::from_millis(200),
        || {
            let (active, _) = cluster.tasks();
            active
                .iter()
                .any(|t| t.state == pb::TaskState::TaskUnreachable as i32)
                .then_some(())
        },
    );
    cluster.resume_agent(0);
    cluster.wait_for_running_tasks(1);

    let report = fw.finish(Duration::from_secs(300));
    assert_eq!(report.final_states["aware-0-0"], "FINISHED");
    assert_eq!(cluster.run_counts().get("0"), Some(&1));
}
