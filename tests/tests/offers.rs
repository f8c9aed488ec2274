//! Offers over the raw protocol: DECLINE with refuse_seconds filters an agent until REVIVE,
//! SUPPRESS stops offers (rescinding outstanding ones) until REVIVE, an agent that goes
//! away has its offers rescinded, and KILL ends a task with TASK_KILLED.

use std::time::Duration;

use drover_proto::pb::{self, TaskState};
use drover_proto::Resources;
use drover_tests::raw::{subscribe, task};
use drover_tests::{Cluster, Timing};

#[test]
fn decline_suppress_revive_rescind_and_kill() {
    let mut cluster = Cluster::start(Timing::default());
    cluster.add_agent("cpus:2;mem:1024");
    cluster.wait_for_active_agents(1);
    let addr = cluster.master_addr();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let quiet = Duration::from_secs(3);

    rt.block_on(async {
        let mut fw = subscribe(&addr, "offers").await;
        let offer = fw.offer().await;

        // Declined for an hour: the agent is not offered again...
        fw.decline(vec![offer.id.clone().unwrap()], 3600.0)
            .await
            .unwrap();
        assert!(
            fw.offer_within(quiet).await.is_none(),
            "a filtered agent was offered again"
        );
        // ...until REVIVE clears the filter.
        fw.revive().await.unwrap();
        let offer = fw.offer().await;

        // SUPPRESS rescinds the outstanding offer and stops new ones until REVIVE.
        fw.suppress().await.unwrap();
        fw.rescind_of(offer.id.as_ref().unwrap()).await;
        assert!(
            fw.offer_within(quiet).await.is_none(),
            "a suppressed framework got an offer"
        );
        fw.revive().await.unwrap();
        let offer = fw.offer().await;

        // KILL: SIGTERM, grace period, TASK_KILLED.
        let res = Resources::parse("cpus:0.5;mem:64").unwrap().to_proto();
        fw.launch(
            vec![offer.id.clone().unwrap()],
            vec![task("sleeper", res, "sleep 600")],
        )
        .await
        .unwrap();
        loop {
            let st = fw.update().await;
            fw.ack(&st).await;
            if st.state == TaskState::TaskRunning as i32 {
                break;
            }
        }
        fw.kill("sleeper", 1.0).await.unwrap();
        loop {
            let st = fw.update().await;
            fw.ack(&st).await;
            if st.state == TaskState::TaskKilled as i32 {
                break;
            }
            assert!(
                !drover_proto::states::is_terminal(drover_proto::states::from_i32(st.state)),
                "{st:?}"
            );
        }
        // Explicit reconciliation: a known task's latest state, an unknown task as LOST; both
        // from the master, without a uuid (never acknowledged).
        fw.client
            .reconcile(pb::ReconcileCall {
                header: Some(fw.header.clone()),
                tasks: vec![
                    pb::reconcile_call::Task {
                        task_id: Some("sleeper".into()),
                        agent_id: None,
                    },
                    pb::reconcile_call::Task {
                        task_id: Some("ghost".into()),
                        agent_id: None,
                    },
                ],
            })
            .await
            .unwrap();
        let mut answers = std::collections::HashMap::new();
        while answers.len() < 2 {
            let st = fw.update().await;
            assert!(st.uuid.is_empty(), "reconciliation answers carry no uuid");
            assert_eq!(st.reason, pb::task_status::Reason::Reconciliation as i32);
            answers.insert(st.task_id.clone().unwrap().value, st.state);
        }
        assert_eq!(answers["sleeper"], TaskState::TaskKilled as i32);
        assert_eq!(answers["ghost"], TaskState::TaskLost as i32);

        let offer = fw.offer().await;
        // The agent goes away: its offer is rescinded.
        cluster.kill_agent(0);
        fw.rescind_of(offer.id.as_ref().unwrap()).await;
    });
    let agents = cluster.agents();
    assert_eq!(agents.len(), 1);
    assert_ne!(agents[0].state, pb::agent_summary::State::Active as i32);
}
