//! Task groups through the whole cluster (a real master, a real agent running as root,
//! the raw scheduler protocol): a group launches all or nothing, its tasks share a
//! volume and their IPC and network namespaces, an invalid task refuses the group whole,
//! a failing task takes the group down, and an agent restart loses nothing of a group.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use drover_proto::pb::{self, task_status::Reason, TaskState};
use drover_proto::{states, ExecutorId, Resources};
use drover_tests::raw::{subscribe, task, Fw};
use drover_tests::{wait_until, Cluster, Timing};

fn default_executor(id: &str, isolated: bool) -> pb::ExecutorInfo {
    pb::ExecutorInfo {
        executor_id: Some(ExecutorId::new(id)),
        r#type: pb::executor_info::Type::Default as i32,
        container: isolated.then(|| pb::ContainerInfo {
            r#type: pb::container_info::Type::Linux as i32,
            network: pb::container_info::Network::Isolated as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn res(r: &str) -> Vec<pb::Resource> {
    Resources::parse(r).unwrap().to_proto()
}

/// Acknowledges updates until every task named has a terminal one; returns them.
async fn terminal_updates(fw: &mut Fw, tasks: &[&str]) -> HashMap<String, pb::TaskStatus> {
    let mut ended = HashMap::new();
    while ended.len() < tasks.len() {
        let st = fw.update().await;
        fw.ack(&st).await;
        let id = st.task_id.clone().unwrap().value;
        let state = TaskState::try_from(st.state).unwrap();
        if tasks.contains(&id.as_str()) && states::is_terminal(state) {
            ended.insert(id, st);
        }
    }
    ended
}

/// Launches a group on the next offer and waits for every task named to end.
async fn group_to_end(
    fw: &mut Fw,
    executor: pb::ExecutorInfo,
    tasks: Vec<pb::TaskInfo>,
    ending: &[&str],
) -> HashMap<String, pb::TaskStatus> {
    let offer = offer_for(fw, &tasks).await;
    fw.launch_group(vec![offer.id.clone().unwrap()], executor, tasks)
        .await
        .unwrap();
    terminal_updates(fw, ending).await
}

/// The next offer that holds every task's resources; smaller ones (the rest of an agent
/// while a launch is in flight) are declined.
async fn offer_for(fw: &mut Fw, tasks: &[pb::TaskInfo]) -> pb::Offer {
    let mut need = Resources::new();
    for t in tasks {
        need.add(&Resources::from_proto(&t.resources).unwrap());
    }
    loop {
        let offer = fw.offer().await;
        if Resources::from_proto(&offer.resources)
            .unwrap()
            .contains(&need)
        {
            return offer;
        }
        fw.decline(vec![offer.id.clone().unwrap()], 0.0)
            .await
            .unwrap();
    }
}

/// Acknowledges updates until every task named is RUNNING; panics if one ends first.
async fn running(fw: &mut Fw, tasks: &[&str]) {
    let mut up = std::collections::HashSet::new();
    while up.len() < tasks.len() {
        let st = fw.update().await;
        fw.ack(&st).await;
        let id = st.task_id.clone().unwrap().value;
        let state = TaskState::try_from(st.state).unwrap();
        assert!(!states::is_terminal(state), "{id} ended: {st:?}");
        if state == TaskState::TaskRunning {
            up.insert(id);
        }
    }
}

fn sandbox(cluster: &Cluster, fw: &Fw, task: &str) -> PathBuf {
    let fw_id = fw.header.framework_id.clone().unwrap();
    cluster
        .agent_work_dir(0)
        .join("sandboxes")
        .join(fw_id.as_str())
        .join(task)
}

fn stdout_of(cluster: &Cluster, fw: &Fw, task: &str) -> String {
    std::fs::read_to_string(sandbox(cluster, fw, task).join("stdout")).unwrap_or_default()
}

fn holder_dir(cluster: &Cluster, fw: &Fw, executor: &str) -> PathBuf {
    let fw_id = fw.header.framework_id.clone().unwrap();
    cluster
        .agent_work_dir(0)
        .join("executors")
        .join(fw_id.as_str())
        .join(executor)
        .join("ns")
}

fn line_after<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no '{prefix}' line in {out:?}"))
}

fn host_ns(kind: &str) -> String {
    std::fs::read_link(Path::new("/proc/self/ns").join(kind))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn a_task_group_launches_all_or_nothing_and_shares_its_volume() {
    let mut cluster = Cluster::start(Timing::default());
    cluster.add_agent("cpus:2;mem:1024");
    cluster.wait_for_active_agents(1);
    let addr = cluster.master_addr();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut fw = rt.block_on(subscribe(&addr, "groups"));

    // (a) + (b): one task writes into the shared volume and listens on the group's
    // loopback; the other reads the file and connects. Both print their namespaces.
    let ns = "echo ipc=$(readlink /proc/self/ns/ipc); echo net=$(readlink /proc/self/ns/net)";
    // A connection may carry nothing (busybox nc can close before it writes): the writer
    // listens until one brings data and then says so in the volume, and the reader sends
    // until it sees that.
    let writer = format!(
        "{ns}; echo hello-from-writer > shared/msg.tmp && mv shared/msg.tmp shared/msg; \
         for i in $(seq 1 1200); do /bin/busybox nc -l -p 7000 > got; [ -s got ] && break; done; \
         cp got shared/got.tmp && mv shared/got.tmp shared/got; echo received=$(cat got)"
    );
    let reader = format!(
        "{ns}; for i in $(seq 1 1200); do [ -f shared/msg ] && break; sleep 0.1; done; \
         echo read=$(cat shared/msg); \
         for i in $(seq 1 1200); do [ -s shared/got ] && exit 0; \
         echo ping | /bin/busybox nc 127.0.0.1 7000; sleep 0.1; done; exit 1"
    );
    let ended = rt.block_on(group_to_end(
        &mut fw,
        default_executor("pod-1", true),
        vec![
            task("writer", res("cpus:0.5;mem:64"), &writer),
            task("reader", res("cpus:0.5;mem:64"), &reader),
        ],
        &["writer", "reader"],
    ));
    for (id, st) in &ended {
        assert_eq!(st.state, TaskState::TaskFinished as i32, "{id}: {st:?}");
        assert_eq!(st.executor_id.as_ref().map(|e| e.as_str()), Some("pod-1"));
    }
    let (w, r) = (
        stdout_of(&cluster, &fw, "writer"),
        stdout_of(&cluster, &fw, "reader"),
    );
    assert_eq!(line_after(&r, "read="), "hello-from-writer", "{r}");
    assert_eq!(line_after(&w, "received="), "ping", "{w}");
    assert_eq!(line_after(&w, "ipc="), line_after(&r, "ipc="));
    assert_eq!(line_after(&w, "net="), line_after(&r, "net="));
    assert_ne!(line_after(&w, "ipc="), host_ns("ipc"));
    assert_ne!(line_after(&w, "net="), host_ns("net"));
    // With every task ended, the group's namespaces are released, and its executor
    // folder, shared volume included (it lives outside both tasks' sandboxes), goes too.
    let ns_dir = holder_dir(&cluster, &fw, "pod-1");
    let executor_dir = ns_dir.parent().unwrap().to_path_buf();
    wait_until(
        "the group's namespace holder and volume to be removed",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || (!ns_dir.exists() && !executor_dir.exists()).then_some(()),
    );

    // A group on the host's network shares a fresh IPC namespace but not a network one.
    let ended = rt.block_on(group_to_end(
        &mut fw,
        default_executor("pod-2", false),
        vec![
            task("h1", res("cpus:0.1;mem:32"), ns),
            task("h2", res("cpus:0.1;mem:32"), ns),
        ],
        &["h1", "h2"],
    ));
    assert!(
        ended
            .values()
            .all(|st| st.state == TaskState::TaskFinished as i32),
        "{ended:?}"
    );
    let (h1, h2) = (
        stdout_of(&cluster, &fw, "h1"),
        stdout_of(&cluster, &fw, "h2"),
    );
    assert_eq!(line_after(&h1, "ipc="), line_after(&h2, "ipc="));
    assert_ne!(line_after(&h1, "ipc="), host_ns("ipc"));
    assert_eq!(line_after(&h1, "net="), host_ns("net"));

    // (c) One invalid task refuses the whole group; nothing of it runs.
    let ended = rt.block_on(group_to_end(
        &mut fw,
        default_executor("pod-3", false),
        vec![
            task("fine", res("cpus:0.1;mem:32"), "echo ran > ran"),
            task("broken", res("cpus:0.1;mem:32"), "   "),
        ],
        &["fine", "broken"],
    ));
    for st in ended.values() {
        assert_eq!(st.state, TaskState::TaskError as i32, "{st:?}");
        assert_eq!(st.reason, Reason::TaskGroupInvalid as i32, "{st:?}");
    }
    assert!(
        ended["fine"].message.contains("task broken"),
        "{:?}",
        ended["fine"]
    );
    assert!(
        ended["broken"].message.contains("empty"),
        "{:?}",
        ended["broken"]
    );
    assert!(!sandbox(&cluster, &fw, "fine").exists());
    assert!(!sandbox(&cluster, &fw, "broken").exists());

    // (d) A task that fails takes the rest of its group down.
    let ended = rt.block_on(group_to_end(
        &mut fw,
        default_executor("pod-4", false),
        vec![
            task("steady", res("cpus:0.1;mem:32"), "exec sleep 600"),
            task("crash", res("cpus:0.1;mem:32"), "exit 3"),
        ],
        &["steady", "crash"],
    ));
    assert_eq!(ended["crash"].state, TaskState::TaskFailed as i32);
    assert_eq!(
        ended["steady"].state,
        TaskState::TaskKilled as i32,
        "{:?}",
        ended["steady"]
    );
    assert!(
        ended["steady"]
            .message
            .contains("task crash of its task group ended"),
        "{:?}",
        ended["steady"]
    );
    let ns_dir = holder_dir(&cluster, &fw, "pod-4");
    wait_until(
        "the failed group's namespace holder to be torn down",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || (!ns_dir.exists()).then_some(()),
    );
}

#[test]
fn an_agent_restart_recovers_a_running_task_group() {
    let mut cluster = Cluster::start(Timing::default());
    cluster.add_agent("cpus:2;mem:1024");
    cluster.wait_for_active_agents(1);
    let addr = cluster.master_addr();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut fw = rt.block_on(subscribe(&addr, "groups-restart"));

    rt.block_on(async {
        let offer = fw.offer().await;
        fw.launch_group(
            vec![offer.id.clone().unwrap()],
            default_executor("pod", true),
            vec![
                task("a", res("cpus:0.1;mem:32"), "exec sleep 600"),
                task(
                    "b",
                    res("cpus:0.1;mem:32"),
                    "while [ ! -f stop ]; do sleep 0.1; done; exit 4",
                ),
            ],
        )
        .await
        .unwrap();
        running(&mut fw, &["a", "b"]).await;
    });
    let ns_dir = holder_dir(&cluster, &fw, "pod");
    assert!(ns_dir.join("net").exists() && ns_dir.join("ipc").exists());

    cluster.kill_agent(0);
    cluster.start_agent(0);
    cluster.wait_for_active_agents(1);
    // The restarted agent found the group again: the tasks still run and share the
    // holder, which is still there.
    wait_until(
        "the restarted agent to report both tasks",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            let state = cluster.agent_state(0)?;
            (state
                .tasks
                .iter()
                .filter(|t| t.state == TaskState::TaskRunning as i32)
                .count()
                == 2)
                .then_some(())
        },
    );
    assert!(ns_dir.join("ipc").exists());

    // b fails now: the recovered group takes a down and releases its namespaces.
    std::fs::write(sandbox(&cluster, &fw, "b").join("stop"), b"").unwrap();
    let ended = rt.block_on(terminal_updates(&mut fw, &["a", "b"]));
    assert_eq!(
        ended["b"].state,
        TaskState::TaskFailed as i32,
        "{:?}",
        ended["b"]
    );
    assert_eq!(
        ended["a"].state,
        TaskState::TaskKilled as i32,
        "{:?}",
        ended["a"]
    );
    assert!(
        ended["a"].message.contains("task b of its task group"),
        "{:?}",
        ended["a"]
    );
    wait_until(
        "the recovered group's namespace holder to be torn down",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || (!ns_dir.exists()).then_some(()),
    );
}

#[test]
fn a_framework_shuts_a_task_groups_executor_down() {
    let mut cluster = Cluster::start(Timing::default());
    cluster.add_agent("cpus:2;mem:1024");
    cluster.wait_for_active_agents(1);
    let addr = cluster.master_addr();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut fw = rt.block_on(subscribe(&addr, "groups-shutdown"));
    let ended = rt.block_on(async {
        let offer = fw.offer().await;
        let agent_id = offer.agent_id.clone();
        fw.launch_group(
            vec![offer.id.clone().unwrap()],
            default_executor("pod-sd", false),
            vec![
                task("a", res("cpus:0.1;mem:32"), "exec sleep 600"),
                task("b", res("cpus:0.1;mem:32"), "exec sleep 600"),
            ],
        )
        .await
        .unwrap();
        running(&mut fw, &["a", "b"]).await;
        assert!(
            holder_dir(&cluster, &fw, "pod-sd").join("ipc").exists(),
            "the group's namespace holder is up"
        );
        fw.client
            .shutdown(pb::ShutdownCall {
                header: Some(fw.header.clone()),
                executor_id: Some(ExecutorId::new("pod-sd")),
                agent_id,
            })
            .await
            .expect("shutdown");
        terminal_updates(&mut fw, &["a", "b"]).await
    });
    for id in ["a", "b"] {
        assert_eq!(
            ended[id].state,
            TaskState::TaskKilled as i32,
            "{:?}",
            ended[id]
        );
    }
    let holder = holder_dir(&cluster, &fw, "pod-sd");
    wait_until(
        "the group's namespace holder to be torn down",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || (!holder.exists()).then_some(()),
    );
}
