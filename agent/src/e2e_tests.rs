//! The whole agent against `drover_testkit`'s fake master (a real tonic server speaking
//! `AgentMaster.Session`), with real supervisors and real processes.

use std::collections::HashSet;
use std::time::Duration;

use drover_proto::pb::{self, master_message::Msg, task_status::Reason, TaskState};
use drover_proto::{FrameworkId, TaskId};
use drover_testkit::fake_master::{serve_follower, FakeMaster, FakeMasterOptions};
use tonic::{Response, Status};

use crate::{Agent, AgentError, Config};

/// The test's side of `drover_testkit`'s fake master (term 2, agent id `agent-1`), with
/// the acknowledgement bookkeeping these tests share.
struct Master {
    addr: String,
    fake: FakeMaster,
    /// Uuids already handed to the test: retries of them are skipped.
    seen: HashSet<Vec<u8>>,
}

impl Master {
    async fn start() -> Master {
        let fake = FakeMaster::start_with(FakeMasterOptions {
            agent_id: "agent-1".into(),
            term: 2,
            ..Default::default()
        })
        .await;
        Master {
            addr: fake.address().to_string(),
            fake,
            seen: HashSet::new(),
        }
    }

    /// Sends on the current session. A session the agent already closed swallows the
    /// message, as a real stream would.
    fn send(&self, term: u64, msg: Msg) {
        assert!(self.fake.has_session(), "no session");
        self.fake.send_at(term, msg);
    }

    async fn next(&mut self) -> pb::agent_message::Msg {
        self.fake.next().await
    }

    async fn register(&mut self) -> pb::agent_message::Register {
        self.fake.register().await
    }

    async fn update(&mut self) -> (String, pb::TaskStatus) {
        match self.next().await {
            pb::agent_message::Msg::StatusUpdate(u) => (
                u.framework_id.unwrap().value,
                u.status.expect("update without status"),
            ),
            other => panic!("expected a status update, got {other:?}"),
        }
    }

    /// The next new update (retries of earlier ones are acknowledged and skipped),
    /// acknowledged.
    async fn acked_update(&mut self) -> pb::TaskStatus {
        loop {
            let (fw, status) = self.update().await;
            self.ack(&fw, &status);
            if self.seen.insert(status.uuid.clone()) {
                return status;
            }
        }
    }

    fn ack(&self, fw: &str, status: &pb::TaskStatus) {
        self.send(
            2,
            Msg::StatusAck(pb::master_message::StatusAck {
                framework_id: Some(FrameworkId::new(fw)),
                task_id: status.task_id.clone(),
                uuid: status.uuid.clone(),
            }),
        );
    }

    fn run_task(&self, term: u64, task: &str, script: &str) {
        self.send(
            term,
            Msg::RunTask(pb::master_message::RunTask {
                framework_id: Some(FrameworkId::new("fw")),
                framework_info: Some(pb::FrameworkInfo {
                    name: "test".into(),
                    ..Default::default()
                }),
                task: Some(pb::TaskInfo {
                    name: task.into(),
                    task_id: Some(TaskId::new(task)),
                    resources: drover_proto::Resources::parse("cpus:0.1;mem:16")
                        .unwrap()
                        .to_proto(),
                    command: Some(pb::CommandInfo {
                        value: script.into(),
                        shell: true,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            }),
        );
    }
}

struct Running {
    handle: tokio::task::JoinHandle<Result<(), AgentError>>,
    stop: tokio::sync::oneshot::Sender<()>,
    api: String,
    http: std::net::SocketAddr,
}

async fn start_agent(masters: &str, work_dir: &std::path::Path, extra: &[&str]) -> Running {
    let mut args = vec![
        "--master",
        masters,
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--work-dir",
        work_dir.to_str().unwrap(),
        "--status-update-retry-secs",
        "0.3",
        "--default-grace-period-secs",
        "1",
    ];
    args.extend_from_slice(extra);
    let agent = Agent::bind(Config::from_args(args).unwrap()).await.unwrap();
    let api = agent.advertised_address().to_string();
    assert_eq!(api, agent.api_address().to_string());
    let http = agent.http_address();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(agent.run(async {
        let _ = rx.await;
    }));
    Running {
        handle,
        stop,
        api,
        http,
    }
}

impl Running {
    async fn stop(self) -> Result<(), AgentError> {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("the agent did not stop")
            .unwrap()
    }

    async fn api(&self) -> pb::agent_api_client::AgentApiClient<tonic::transport::Channel> {
        pb::agent_api_client::AgentApiClient::connect(format!("http://{}", self.api))
            .await
            .unwrap()
    }

    async fn state(&self) -> pb::GetAgentStateResponse {
        self.api()
            .await
            .get_state(pb::GetAgentStateRequest {})
            .await
            .unwrap()
            .into_inner()
    }
}

fn state_of(s: &pb::TaskStatus) -> TaskState {
    drover_proto::states::from_i32(s.state)
}

fn task_of(s: &pb::TaskStatus) -> String {
    s.task_id.clone().unwrap_or_default().value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launches_reports_retries_and_serves_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = Master::start().await;
    let agent = start_agent(&master.addr, dir.path(), &[]).await;

    let reg = master.register().await;
    assert!(reg.agent_id.is_none_or(|a| a.value.is_empty()));
    let info = reg.info.unwrap();
    assert_eq!(info.address, agent.api);
    assert!(info.resources.iter().any(|r| r.name == "cpus"));

    master.run_task(2, "t1", "echo hello; exit 3");
    let (fw, starting) = master.update().await;
    assert_eq!(
        (fw.as_str(), state_of(&starting)),
        ("fw", TaskState::TaskStarting)
    );
    assert_eq!(starting.uuid.len(), 16);
    assert_eq!(starting.agent_id.clone().unwrap().value, "agent-1");
    // Not acknowledged: the same update (same uuid) comes again, and nothing else first.
    let (_, again) = master.update().await;
    assert_eq!(again.uuid, starting.uuid);
    // A wrong uuid changes nothing; the right one lets the next update through.
    master.ack(
        "fw",
        &pb::TaskStatus {
            uuid: vec![0; 16],
            ..again.clone()
        },
    );
    master.ack("fw", &again);
    master.seen.insert(starting.uuid.clone());
    let running = master.acked_update().await;
    assert_eq!(state_of(&running), TaskState::TaskRunning);
    let failed = master.acked_update().await;
    assert_eq!(state_of(&failed), TaskState::TaskFailed);
    assert_eq!(failed.exit_code, Some(3));
    assert_eq!(failed.message, "command exited with status 3");

    let read = agent
        .api()
        .await
        .read_file(pb::ReadFileRequest {
            executor_id: None,
            framework_id: Some(FrameworkId::new("fw")),
            task_id: Some(TaskId::new("t1")),
            path: "stdout".into(),
            offset: 0,
            length: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.data, b"hello\n");
    let err = agent
        .api()
        .await
        .read_file(pb::ReadFileRequest {
            executor_id: None,
            framework_id: Some(FrameworkId::new("fw")),
            task_id: Some(TaskId::new("nope")),
            path: "stdout".into(),
            offset: 0,
            length: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    // Idempotent launch, fencing, validation, kill.
    master.run_task(2, "t1", "echo twice >> stdout");
    master.run_task(1, "stale", "true");
    master.run_task(2, "bad", "  ");
    let error = master.acked_update().await;
    assert_eq!(
        (task_of(&error), state_of(&error)),
        ("bad".into(), TaskState::TaskError)
    );
    assert_eq!(error.reason, Reason::TaskInvalid as i32);

    master.run_task(2, "long", "exec sleep 60");
    assert_eq!(
        state_of(&master.acked_update().await),
        TaskState::TaskStarting
    );
    assert_eq!(
        state_of(&master.acked_update().await),
        TaskState::TaskRunning
    );
    master.send(
        2,
        Msg::KillTask(pb::master_message::KillTask {
            framework_id: Some(FrameworkId::new("fw")),
            task_id: Some(TaskId::new("long")),
            kill_policy: None,
        }),
    );
    let killed = master.acked_update().await;
    assert_eq!(
        (task_of(&killed), state_of(&killed)),
        ("long".into(), TaskState::TaskKilled)
    );
    assert_eq!(killed.reason, Reason::KilledByFramework as i32);

    // Every terminal update was acknowledged: the agent forgot the tasks.
    let mut state = agent.state().await;
    for _ in 0..100 {
        if state.tasks.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        state = agent.state().await;
    }
    assert!(state.tasks.is_empty(), "{:?}", state.tasks);
    assert_eq!(state.agent_id.unwrap().value, "agent-1");
    assert_eq!(state.master, master.addr);
    let sandbox = dir.path().join("sandboxes/fw/t1/stdout");
    assert_eq!(std::fs::read_to_string(sandbox).unwrap(), "hello\n");
    assert!(!dir.path().join("sandboxes/fw/stale").exists());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("agent_id")).unwrap(),
        "agent-1"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("term")).unwrap(),
        "2"
    );

    let metrics = http_get(agent.http, "/metrics").await;
    assert!(
        metrics.contains("drover_agent_tasks_launched_total 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("drover_agent_tasks_terminal_total{state=\"killed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("drover_agent_status_updates_pending 0"),
        "{metrics}"
    );
    assert!(http_get(agent.http, "/health").await.ends_with("ok\n"));

    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_reattaches_and_reports_the_real_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = Master::start().await;
    let agent = start_agent(&master.addr, dir.path(), &[]).await;
    master.register().await;
    master.run_task(2, "t", "echo started; sleep 1; exit 5");
    assert_eq!(
        state_of(&master.acked_update().await),
        TaskState::TaskStarting
    );
    assert_eq!(
        state_of(&master.acked_update().await),
        TaskState::TaskRunning
    );

    // The agent goes away; the task does not.
    agent.stop().await.unwrap();
    let agent = start_agent(&master.addr, dir.path(), &[]).await;
    let reg = master.register().await;
    assert_eq!(reg.agent_id.unwrap().value, "agent-1");
    assert_eq!(reg.tasks.len(), 1);
    assert_eq!(reg.frameworks, [FrameworkId::new("fw")]);
    let state = drover_proto::states::from_i32(reg.tasks[0].state);
    assert!(
        matches!(state, TaskState::TaskRunning | TaskState::TaskFailed),
        "{state:?}"
    );
    let failed = master.acked_update().await;
    assert_eq!(state_of(&failed), TaskState::TaskFailed);
    assert_eq!(failed.exit_code, Some(5));
    // Launched exactly once.
    let out = std::fs::read_to_string(dir.path().join("sandboxes/fw/t/stdout")).unwrap();
    assert_eq!(out, "started\n");
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_a_not_leader_hint_and_obeys_a_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = Master::start().await;
    let follower = serve_follower(&master.addr).await;
    let agent = start_agent(&follower, dir.path(), &[]).await;
    master.register().await;
    master.run_task(2, "t", "exec sleep 60");
    assert_eq!(
        state_of(&master.acked_update().await),
        TaskState::TaskStarting
    );
    assert_eq!(
        state_of(&master.acked_update().await),
        TaskState::TaskRunning
    );

    master.send(
        2,
        Msg::Shutdown(pb::master_message::Shutdown {
            reason: "agent removed".into(),
        }),
    );
    // The master gave up on this agent: its tasks are killed before it exits.
    let killed = master.acked_update().await;
    assert_eq!(state_of(&killed), TaskState::TaskKilled);
    assert_eq!(killed.reason, Reason::AgentRemoved as i32);
    let result = tokio::time::timeout(Duration::from_secs(30), agent.handle)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(&result, Err(AgentError::ShutdownByMaster(r)) if r == "agent removed"),
        "{result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_tasks_on_exit_kills_and_reports_before_exiting() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = Master::start().await;
    let agent = start_agent(&master.addr, dir.path(), &["--shutdown-tasks-on-exit"]).await;
    master.register().await;
    master.run_task(2, "t", "exec sleep 60");
    assert_eq!(
        state_of(&master.acked_update().await),
        TaskState::TaskStarting
    );
    assert_eq!(
        state_of(&master.acked_update().await),
        TaskState::TaskRunning
    );

    let _ = agent.stop.send(());
    let killed = master.acked_update().await;
    assert_eq!(state_of(&killed), TaskState::TaskKilled);
    assert_eq!(killed.reason, Reason::AgentRestarted as i32);
    let result = tokio::time::timeout(Duration::from_secs(30), agent.handle)
        .await
        .unwrap()
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

mod checks;
mod groups;
mod linux;
mod sandboxes;
