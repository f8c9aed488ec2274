//! Linux containers through the whole cluster (a real master, a real agent running as
//! root, the raw scheduler protocol): an OOM kill is reported as such, and a running
//! container's usage shows in the master's task view and in the agent's state.

use std::time::Duration;

use drover_proto::pb::{self, task_status::Reason, TaskState};
use drover_proto::Resources;
use drover_tests::raw::{subscribe, task};
use drover_tests::{wait_until, Cluster, Timing};

fn linux(mut t: pb::TaskInfo, hostname: &str) -> pb::TaskInfo {
    t.container = Some(pb::ContainerInfo {
        r#type: pb::container_info::Type::Linux as i32,
        hostname: hostname.into(),
        ..Default::default()
    });
    t
}

#[test]
fn linux_tasks_report_oom_and_show_their_usage_in_the_task_view() {
    let mut cluster = Cluster::start(Timing::default());
    cluster.add_agent("cpus:2;mem:1024");
    cluster.wait_for_active_agents(1);
    let addr = cluster.master_addr();
    let rt = tokio::runtime::Runtime::new().unwrap();

    let mut fw = rt.block_on(subscribe(&addr, "containers"));
    let hog_failure = rt.block_on(async {
        let offer = fw.offer().await;
        let res = |r: &str| Resources::parse(r).unwrap().to_proto();
        fw.launch(
            vec![offer.id.clone().unwrap()],
            vec![
                linux(
                    task("steady", res("cpus:0.5;mem:64"), "exec sleep 600"),
                    "web-1",
                ),
                linux(
                    task(
                        "hog",
                        res("cpus:0.5;mem:32"),
                        "head -c 200M /dev/zero | tail",
                    ),
                    "",
                ),
            ],
        )
        .await
        .unwrap();
        let (mut steady_running, mut hog_failure) = (false, None);
        while !steady_running || hog_failure.is_none() {
            let st = fw.update().await;
            fw.ack(&st).await;
            let id = st.task_id.clone().unwrap().value;
            match (id.as_str(), TaskState::try_from(st.state).unwrap()) {
                ("steady", TaskState::TaskRunning) => steady_running = true,
                ("steady", s) if drover_proto::states::is_terminal(s) => {
                    panic!("steady ended: {st:?}")
                }
                ("hog", s) if drover_proto::states::is_terminal(s) => hog_failure = Some(st),
                _ => {}
            }
        }
        hog_failure.unwrap()
    });
    assert_eq!(hog_failure.state, TaskState::TaskFailed as i32);
    assert_eq!(hog_failure.reason, Reason::ContainerLimitationMemory as i32);
    assert!(
        hog_failure.message.contains("32 MB memory limit"),
        "{}",
        hog_failure.message
    );

    // The master's task view shows the usage the agent reported with its pings.
    let usage = wait_until(
        "usage of the running task in the master's task view",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let (active, _) = cluster.tasks();
            let steady = active
                .into_iter()
                .find(|t| t.task_id.as_ref().is_some_and(|id| id.value == "steady"))?;
            steady.usage.filter(|u| u.pids_current >= 2)
        },
    );
    assert_eq!(usage.mem_limit_bytes, 64 << 20);
    assert_eq!(usage.cpus_limit, 0.5);
    assert!(usage.mem_rss_bytes > 0, "{usage:?}");
    let (_, completed) = cluster.tasks();
    assert!(completed
        .iter()
        .filter(|t| t.task_id.as_ref().is_some_and(|id| id.value == "hog"))
        .all(|t| t.usage.is_none()));

    // The agent's own state names the containerizer.
    let state = cluster.agent_state(0).expect("agent state");
    let steady = state
        .tasks
        .iter()
        .find(|t| t.task_id.as_ref().is_some_and(|id| id.value == "steady"))
        .unwrap();
    assert_eq!(steady.containerizer, "linux");
    assert!(steady.usage.is_some());

    // A kill tears the container down; the task view then has no usage for it.
    rt.block_on(async {
        fw.kill("steady", 1.0).await.unwrap();
        loop {
            let st = fw.update().await;
            fw.ack(&st).await;
            if st.task_id.as_ref().is_some_and(|id| id.value == "steady")
                && st.state == TaskState::TaskKilled as i32
            {
                break;
            }
        }
    });
    let state = cluster.agent_state(0).expect("agent state");
    assert!(state.tasks.iter().all(|t| t.usage.is_none()), "{state:?}");
}
