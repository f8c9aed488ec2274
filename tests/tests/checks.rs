//! Checks through the whole cluster (a real master and agent, the raw scheduler
//! protocol): a failing health check kills its task with the reason, a passing one marks
//! it healthy in the framework's updates and the master's task view, a general check's
//! result rides on updates, a bad check is refused by the master, and a kill with a grace
//! period reports TASK_KILLING and lets the task's SIGTERM handler run.

use std::time::Duration;

use drover_proto::pb::{self, check_info::Type, task_status::Reason, TaskState};
use drover_proto::Resources;
use drover_tests::raw::{subscribe, subscribe_with, task, Fw};
use drover_tests::{free_port, wait_until, Cluster, Timing};

fn res() -> Vec<pb::Resource> {
    Resources::parse("cpus:0.1;mem:32").unwrap().to_proto()
}

fn quick(mut c: pb::CheckInfo) -> pb::CheckInfo {
    c.delay_seconds = 0.2;
    c.interval_seconds = 0.2;
    c.timeout_seconds = 10.0;
    c
}

fn http(port: u16) -> pb::CheckInfo {
    quick(pb::CheckInfo {
        r#type: Type::Http as i32,
        http: Some(pb::check_info::Http {
            port: port.into(),
            path: "/".into(),
        }),
        ..Default::default()
    })
}

fn tcp(port: u16) -> pb::CheckInfo {
    quick(pb::CheckInfo {
        r#type: Type::Tcp as i32,
        tcp: Some(pb::check_info::Tcp { port: port.into() }),
        ..Default::default()
    })
}

fn health(check: pb::CheckInfo, grace: f64) -> Option<pb::HealthCheck> {
    Some(pb::HealthCheck {
        check: Some(check),
        grace_period_seconds: grace,
        consecutive_failures: 2,
    })
}

/// The task's updates (others' are acknowledged and dropped) until `until` holds for
/// one, which is returned last; bounded in count.
async fn updates_of(
    fw: &mut Fw,
    id: &str,
    until: impl Fn(&pb::TaskStatus) -> bool,
) -> Vec<pb::TaskStatus> {
    let mut seen = Vec::new();
    for _ in 0..200 {
        let st = fw.update().await;
        fw.ack(&st).await;
        if st.task_id.as_ref().is_none_or(|t| t.value != id) {
            continue;
        }
        let done = until(&st);
        seen.push(st);
        if done {
            return seen;
        }
    }
    panic!("{id}: the awaited update did not come: {seen:?}");
}

fn terminal(st: &pb::TaskStatus) -> bool {
    drover_proto::states::is_terminal(TaskState::try_from(st.state).unwrap())
}

#[test]
fn a_failing_health_check_kills_its_task_and_a_passing_one_marks_it_healthy() {
    let mut cluster = Cluster::start(Timing::default());
    cluster.add_agent("cpus:2;mem:512");
    cluster.wait_for_active_agents(1);
    let addr = cluster.master_addr();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut fw = rt.block_on(subscribe(&addr, "checks"));

    // Nobody listens on `closed`; busybox httpd serves the sandbox on `web`.
    let (closed, web) = (free_port(), free_port());
    let mut sick = task("sick", res(), "exec sleep 600");
    sick.health_check = health(http(closed), 0.01);
    let mut web_task = task(
        "web",
        res(),
        &format!("echo ok > index.html; exec /bin/busybox httpd -f -p 127.0.0.1:{web} -h ."),
    );
    web_task.health_check = health(http(web), 60.0);
    web_task.check = Some(tcp(web));
    let (sick_updates, web_updates) = rt.block_on(async {
        let offer = fw.offer().await;
        fw.launch(vec![offer.id.clone().unwrap()], vec![sick, web_task])
            .await
            .unwrap();
        let mut sick = Vec::new();
        let mut web = Vec::new();
        // Both stories interleave; read until the sick task ended and the web task was
        // found healthy.
        for _ in 0..200 {
            if sick.last().is_some_and(terminal)
                && web.iter().any(|s: &pb::TaskStatus| s.healthy == Some(true))
            {
                break;
            }
            let st = fw.update().await;
            fw.ack(&st).await;
            match st.task_id.as_ref().map(|t| t.value.as_str()) {
                Some("sick") => sick.push(st),
                Some("web") => web.push(st),
                _ => {}
            }
        }
        (sick, web)
    });

    let killed = sick_updates.last().unwrap();
    assert_eq!(
        killed.state,
        TaskState::TaskKilled as i32,
        "{sick_updates:?}"
    );
    assert_eq!(killed.reason, Reason::TaskUnhealthy as i32);
    assert_eq!(killed.healthy, Some(false));
    assert!(
        killed
            .message
            .contains(&format!("HTTP GET 127.0.0.1:{closed}/"))
            && killed.message.contains("failed 2 time(s) in a row"),
        "{}",
        killed.message
    );
    // Unhealthy first, then KILLING, then KILLED.
    let states: Vec<i32> = sick_updates.iter().map(|s| s.state).collect();
    let n = states.len();
    assert!(n >= 3, "{sick_updates:?}");
    assert_eq!(
        &states[n - 2..],
        [TaskState::TaskKilling as i32, TaskState::TaskKilled as i32]
    );
    assert!(sick_updates.iter().any(
        |s| s.reason == Reason::TaskHealthCheckStatusUpdated as i32 && s.healthy == Some(false)
    ));

    // The web task is healthy, its TCP check succeeded, and it keeps running.
    assert!(web_updates.iter().all(|s| !terminal(s)), "{web_updates:?}");
    let healthy = web_updates
        .iter()
        .find(|s| s.healthy == Some(true))
        .unwrap();
    assert_eq!(healthy.reason, Reason::TaskHealthCheckStatusUpdated as i32);
    let web_updates = if web_updates
        .iter()
        .any(|s| s.check_status.as_ref().and_then(|c| c.tcp_succeeded) == Some(true))
    {
        web_updates
    } else {
        rt.block_on(updates_of(&mut fw, "web", |s| {
            s.check_status.as_ref().and_then(|c| c.tcp_succeeded) == Some(true)
        }))
    };
    let checked = web_updates
        .iter()
        .find(|s| s.check_status.as_ref().and_then(|c| c.tcp_succeeded) == Some(true))
        .unwrap();
    assert_eq!(checked.reason, Reason::TaskCheckStatusUpdated as i32);
    assert_eq!(checked.state, TaskState::TaskRunning as i32);

    // The master's task view has the latest health of both.
    wait_until(
        "health in the master's task view",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let (active, completed) = cluster.tasks();
            let of = |list: &[pb::TaskSummary], id: &str| {
                list.iter()
                    .find(|t| t.task_id.as_ref().is_some_and(|t| t.value == id))
                    .and_then(|t| t.last_status.as_ref())
                    .and_then(|s| s.healthy)
            };
            (of(&active, "web") == Some(true) && of(&completed, "sick") == Some(false))
                .then_some(())
        },
    );
    rt.block_on(async {
        fw.kill("web", 1.0).await.unwrap();
        updates_of(&mut fw, "web", terminal).await;
    });
}

#[test]
fn a_bad_check_is_refused_and_a_graceful_kill_reports_killing() {
    let mut cluster = Cluster::start(Timing::default());
    cluster.add_agent("cpus:2;mem:512");
    cluster.wait_for_active_agents(1);
    let addr = cluster.master_addr();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let killing = pb::framework_info::Capability::TaskKillingState as i32;
    let mut fw = rt.block_on(subscribe_with(&addr, "killing", vec![killing]));

    let mut bad = task("bad", res(), "exec sleep 600");
    bad.health_check = health(tcp(0), 1.0);
    let script = "trap 'echo got TERM; exit 0' TERM; echo up; while true; do sleep 0.05; done";
    let graceful = task("graceful", res(), script);
    let refused = rt.block_on(async {
        let offer = fw.offer().await;
        fw.launch(vec![offer.id.clone().unwrap()], vec![bad, graceful])
            .await
            .unwrap();
        let refused = updates_of(&mut fw, "bad", terminal).await;
        updates_of(&mut fw, "graceful", |s| {
            s.state == TaskState::TaskRunning as i32
        })
        .await;
        refused
    });
    let refused = refused.last().unwrap();
    assert_eq!(refused.state, TaskState::TaskError as i32);
    assert!(
        refused
            .message
            .contains("invalid health check: port 0 must be between 1 and 65535"),
        "{}",
        refused.message
    );

    // The SIGTERM handler is in place once "up" is in the task's stdout.
    let sandbox = wait_until(
        "the graceful task's sandbox",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let state = cluster.agent_state(0)?;
            let t = state
                .tasks
                .into_iter()
                .find(|t| t.task_id.as_ref().is_some_and(|i| i.value == "graceful"))?;
            Some(std::path::PathBuf::from(t.sandbox))
        },
    );
    let stdout = sandbox.join("stdout");
    wait_until(
        "the task's handler",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            std::fs::read_to_string(&stdout)
                .ok()
                .filter(|s| s.contains("up"))
        },
    );
    let seen = rt.block_on(async {
        fw.kill("graceful", 30.0).await.unwrap();
        updates_of(&mut fw, "graceful", terminal).await
    });
    let states: Vec<i32> = seen.iter().map(|s| s.state).collect();
    assert_eq!(
        states,
        [TaskState::TaskKilling as i32, TaskState::TaskKilled as i32],
        "{seen:?}"
    );
    assert_eq!(seen[1].reason, Reason::KilledByFramework as i32);
    let out = std::fs::read_to_string(&stdout).unwrap();
    assert!(out.contains("got TERM"), "{out:?}");
}
