//! Framework failover: a framework that disconnects keeps its tasks for its
//! failover_timeout and can resubscribe with its id to carry on; past the timeout, the
//! framework is removed and its tasks are killed.

use std::time::Duration;

use drover_proto::pb;
use drover_tests::{wait_until, Cluster, Framework, Report, Timing};

fn frameworks(cluster: &Cluster) -> Vec<pb::FrameworkSummary> {
    cluster
        .operator(async |mut c| {
            Some(
                c.get_frameworks(pb::GetFrameworksRequest {})
                    .await
                    .ok()?
                    .into_inner()
                    .frameworks,
            )
        })
        .unwrap_or_default()
}

#[test]
fn a_framework_resubscribes_within_its_failover_timeout_and_keeps_its_tasks() {
    let mut cluster = Cluster::start(Timing::default());
    cluster.add_agent("cpus:2;mem:1024");
    cluster.wait_for_active_agents(1);
    let cmd = "sleep 8; echo $JOB_INDEX >> $RUN_LOG";
    let mut first = Framework::start(&cluster, "phoenix", &["--tasks", "2", "--cmd", cmd]);
    cluster.wait_for_running_tasks(2);
    let id = Report::read(&first.report).framework_id;
    first.kill();
    wait_until(
        "the framework to show as disconnected",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || {
            frameworks(&cluster)
                .iter()
                .any(|f| !f.connected)
                .then_some(())
        },
    );
    assert_eq!(
        cluster.running_tasks(),
        2,
        "tasks keep running while the framework is away"
    );

    let second = Framework::start(&cluster, "phoenix", &["--adopt-framework-id", &id]);
    let report = second.finish(Duration::from_secs(300));
    assert_eq!(report.framework_id, id, "resubscribed under the same id");
    assert_eq!(
        report.final_states.get("phoenix-0-0").map(String::as_str),
        Some("FINISHED")
    );
    assert_eq!(
        report.final_states.get("phoenix-1-0").map(String::as_str),
        Some("FINISHED")
    );
    let runs = cluster.run_counts();
    assert_eq!(runs.len(), 2);
    assert!(runs.values().all(|&n| n == 1));
}

#[test]
fn past_its_failover_timeout_a_framework_is_removed_and_its_tasks_killed() {
    let mut cluster = Cluster::start(Timing::default());
    cluster.add_agent("cpus:2;mem:1024");
    cluster.wait_for_active_agents(1);
    let cmd = "sleep 60; echo $JOB_INDEX >> $RUN_LOG";
    let mut fw = Framework::start(
        &cluster,
        "mayfly",
        &["--tasks", "1", "--cmd", cmd, "--failover-timeout-secs", "2"],
    );
    cluster.wait_for_running_tasks(1);
    fw.kill();
    wait_until(
        "the framework to be removed",
        Duration::from_secs(120),
        Duration::from_millis(200),
        || frameworks(&cluster).is_empty().then_some(()),
    );
    let (active, completed) = cluster.tasks();
    assert!(active.is_empty());
    assert_eq!(completed.len(), 1);
    assert_eq!(completed[0].state, pb::TaskState::TaskKilled as i32);
    // The agent really killed it: its own view shows the task ended, nothing left running.
    wait_until(
        "the agent to kill the task",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            let st = cluster.agent_state(0)?;
            st.tasks
                .iter()
                .all(|t| t.state != pb::TaskState::TaskRunning as i32)
                .then_some(())
        },
    );
    assert!(
        cluster.run_counts().is_empty(),
        "the killed task never completed"
    );
}
