//! Custom executors in the agent loop, against a containerizer double whose containers
//! end when the test says so: launch, subscription, every refusal of the `Update` call,
//! acknowledgements, kills, shutdown, the registration timeout (on tokio's paused clock)
//! and recovery of a running executor.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use drover_proto::pb::{
    self, executor_event::Event as Ev, master_message::Msg, task_status::Reason, TaskState,
};
use drover_proto::{AgentId, ExecutorId, FrameworkId, TaskId};
use tokio::sync::{mpsc, oneshot};
use tonic::{Code, Status};

use super::core::Exit;
use super::driver::{AgentLoop, Event};
use super::executors::{ExecutorRequest, MAX_MESSAGES_PER_SECOND, MAX_PENDING_MESSAGES};
use super::recovery;
use crate::config::Config;
use crate::containerizer::ContainerizerError;
use crate::containerizer::{Containerizer, LaunchSpec, Recovered, Termination};
use crate::fsutil::create_dir_all_durable;
use crate::layout::{Layout, TaskKey};
use crate::master_link::LinkEvent;
use crate::metrics::Metrics;
use crate::supervisor::records::{ExitOutcome, ExitRecord};

/// Containers that run until the test ends them; `recover` finds the launched ones running.
#[derive(Default)]
struct Fake {
    launched: Mutex<BTreeMap<TaskKey, LaunchSpec>>,
    killed: Mutex<Vec<TaskKey>>,
}

#[async_trait]
impl Containerizer for Fake {
    fn name(&self) -> &'static str {
        "fake"
    }

    async fn launch(&self, spec: LaunchSpec) -> Result<(), ContainerizerError> {
        self.launched.lock().unwrap().insert(spec.key.clone(), spec);
        Ok(())
    }

    async fn recover(&self, key: &TaskKey) -> Result<Recovered, ContainerizerError> {
        Ok(if self.launched.lock().unwrap().contains_key(key) {
            Recovered::Running
        } else {
            Recovered::NeverStarted
        })
    }

    async fn wait(&self, _key: &TaskKey) -> Result<Termination, ContainerizerError> {
        std::future::pending().await
    }

    async fn kill(&self, key: &TaskKey, _: Duration, _: Reason) -> Result<(), ContainerizerError> {
        self.killed.lock().unwrap().push(key.clone());
        Ok(())
    }
}

fn executor(id: &str) -> pb::ExecutorInfo {
    pb::ExecutorInfo {
        executor_id: Some(ExecutorId::new(id)),
        r#type: pb::executor_info::Type::Custom as i32,
        command: Some(pb::CommandInfo {
            value: "./my-executor".into(),
            shell: true,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn master(msg: Msg) -> LinkEvent {
    LinkEvent::Message(Box::new(pb::MasterMessage {
        term: 1,
        msg: Some(msg),
    }))
}

fn run_task(id: &str, exec: Option<&str>) -> LinkEvent {
    master(Msg::RunTask(pb::master_message::RunTask {
        framework_id: Some(FrameworkId::new("fw")),
        framework_info: None,
        task: Some(pb::TaskInfo {
            name: id.into(),
            task_id: Some(TaskId::new(id)),
            command: Some(pb::CommandInfo {
                value: "true".into(),
                shell: true,
                ..Default::default()
            }),
            executor: exec.map(executor),
            ..Default::default()
        }),
    }))
}

fn exited() -> Result<Termination, crate::error::AgentError> {
    Ok(Termination::Recorded(ExitRecord {
        outcome: ExitOutcome::Exited { code: 0 },
        killed: false,
        kill_reason: None,
        task_pid: None,
        finished_at: 0.0,
        limitation: None,
    }))
}

fn ekey(id: &str) -> TaskKey {
    TaskKey::executor(&FrameworkId::new("fw"), &ExecutorId::new(id))
}

/// The test's side of the agent: its channels and the fake.
struct Harness {
    link: mpsc::Sender<LinkEvent>,
    events: mpsc::Sender<Event>,
    /// The status updates the agent sent to its master.
    updates: mpsc::UnboundedReceiver<pb::TaskStatus>,
    /// All of them, for [`Harness::ack_all`].
    seen: Arc<Mutex<Vec<pb::TaskStatus>>>,
    auto_ack: Arc<AtomicBool>,
    fake: Arc<Fake>,
    /// Executors' messages the agent relayed to its master.
    executor_messages: mpsc::UnboundedReceiver<pb::agent_message::ExecutorMessage>,
}

type Stream = mpsc::UnboundedReceiver<Result<pb::ExecutorEvent, Status>>;

impl Harness {
    /// Acknowledges every update sent so far, and from now on every update at once (the
    /// status update manager's retries run on the real clock, which a test on the paused
    /// clock must not leave pending while it sleeps).
    async fn ack_all(&self) {
        self.auto_ack.store(true, Ordering::SeqCst);
        let seen = self.seen.lock().unwrap().clone();
        for s in &seen {
            self.link.send(ack(s)).await.unwrap();
        }
    }

    /// The executor's container ended (it exited by itself, or after a kill).
    async fn executor_exited(&self, exec: &str) {
        self.events
            .send(Event::TaskEnded {
                key: ekey(exec),
                result: exited(),
            })
            .await
            .unwrap();
    }

    async fn wait_launched(&self, key: &TaskKey) -> LaunchSpec {
        for _ in 0..1000 {
            if let Some(spec) = self.fake.launched.lock().unwrap().get(key) {
                return spec.clone();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("{key} was not launched");
    }

    async fn subscribe(&self, exec: &str, launched: &[&str]) -> Result<Stream, Status> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (reply, answer) = oneshot::channel();
        self.events
            .send(Event::Executor(ExecutorRequest::Subscribe {
                request: pb::ExecutorSubscribeRequest {
                    framework_id: Some(FrameworkId::new("fw")),
                    executor_id: Some(ExecutorId::new(exec)),
                    launched_tasks: launched.iter().map(|t| TaskId::new(*t)).collect(),
                },
                events: tx,
                // Never taken off: this raw stream is not the gRPC one (which counts them
                // down as it yields them), so the cap shows after enough messages.
                pending_messages: Default::default(),
                reply,
            }))
            .await
            .unwrap();
        answer.await.unwrap().map(|()| rx)
    }

    async fn message(&self, exec: &str, data: Vec<u8>) -> Result<(), Status> {
        let (reply, answer) = oneshot::channel();
        self.events
            .send(Event::Executor(ExecutorRequest::Message {
                call: pb::ExecutorMessageCall {
                    framework_id: Some(FrameworkId::new("fw")),
                    executor_id: Some(ExecutorId::new(exec)),
                    data,
                },
                reply,
            }))
            .await
            .unwrap();
        answer.await.unwrap()
    }

    async fn update(&self, exec: &str, status: pb::TaskStatus) -> Result<(), Status> {
        let (reply, answer) = oneshot::channel();
        self.events
            .send(Event::Executor(ExecutorRequest::Update {
                call: pb::ExecutorUpdateCall {
                    framework_id: Some(FrameworkId::new("fw")),
                    executor_id: Some(ExecutorId::new(exec)),
                    status: Some(status),
                },
                reply,
            }))
            .await
            .unwrap();
        answer.await.unwrap()
    }

    /// The next status update the agent sends for `task` in `state` (others skipped).
    async fn sent(&mut self, task: &str, state: TaskState) -> pb::TaskStatus {
        loop {
            let s = tokio::time::timeout(Duration::from_secs(30), self.updates.recv())
                .await
                .unwrap_or_else(|_| panic!("no {state:?} for {task}"))
                .expect("the loop is alive");
            if s.task_id.as_ref().map(|t| t.as_str()) == Some(task) && s.state() == state {
                return s;
            }
        }
    }
}

async fn next_event(stream: &mut Stream) -> Ev {
    tokio::time::timeout(Duration::from_secs(30), stream.recv())
        .await
        .expect("an executor event")
        .expect("the stream is open")
        .expect("not an error")
        .event
        .expect("an event")
}

fn status(task: &str, state: TaskState) -> pb::TaskStatus {
    pb::TaskStatus {
        task_id: Some(TaskId::new(task)),
        state: state as i32,
        uuid: uuid::Uuid::new_v4().as_bytes().to_vec(),
        ..Default::default()
    }
}

fn ack(s: &pb::TaskStatus) -> LinkEvent {
    master(Msg::StatusAck(pb::master_message::StatusAck {
        framework_id: Some(FrameworkId::new("fw")),
        task_id: s.task_id.clone(),
        uuid: s.uuid.clone(),
    }))
}

async fn agent(dir: &std::path::Path, fake: Arc<Fake>) -> (AgentLoop, mpsc::Receiver<Event>) {
    agent_with(dir, fake, &[]).await
}

/// [`agent`] with more flags.
async fn agent_with(
    dir: &std::path::Path,
    fake: Arc<Fake>,
    flags: &[&str],
) -> (AgentLoop, mpsc::Receiver<Event>) {
    let mut args = vec![
        "--master",
        "127.0.0.1:1",
        "--work-dir",
        dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:7",
    ];
    args.extend_from_slice(flags);
    let settings = Config::from_args(args).unwrap().validate().unwrap();
    let layout = Layout::new(&settings.work_dir);
    for d in [layout.frameworks_meta(), layout.sandboxes_root()] {
        create_dir_all_durable(&d).unwrap();
    }
    let (events_tx, events) = mpsc::channel(1024);
    let (journal, found) = recovery::load(&layout).unwrap();
    let mut core = AgentLoop::new(
        Arc::new(settings),
        pb::AgentInfo {
            address: "127.0.0.1:7".into(),
            ..Default::default()
        },
        Some(AgentId::new("agent-1")),
        fake,
        Arc::new(Metrics::new()),
        events_tx,
        journal,
    );
    core.recover(found).await.unwrap();
    (core, events)
}

/// Runs the loop while `script` drives it through a [`Harness`].
async fn drive<F, Fut>(
    core: &mut AgentLoop,
    events: &mut mpsc::Receiver<Event>,
    fake: Arc<Fake>,
    script: F,
) where
    F: FnOnce(Harness) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (link_tx, mut link) = mpsc::channel(1024);
    let (out_tx, mut outbound) = mpsc::unbounded_channel::<pb::AgentMessage>();
    link_tx
        .send(LinkEvent::Registered {
            agent_id: AgentId::new("agent-1"),
            ping_interval: Duration::from_secs(60),
            master: "m".into(),
            outbound: out_tx,
        })
        .await
        .unwrap();
    let (updates_tx, updates) = mpsc::unbounded_channel();
    let (messages_tx, executor_messages) = mpsc::unbounded_channel();
    let acks = link_tx.clone();
    let auto_ack = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (auto, all) = (auto_ack.clone(), seen.clone());
    let master = tokio::spawn(async move {
        while let Some(msg) = outbound.recv().await {
            match msg.msg {
                Some(pb::agent_message::Msg::StatusUpdate(u)) => {
                    let status = u.status.unwrap();
                    if auto.load(Ordering::SeqCst) {
                        let _ = acks.send(ack(&status)).await;
                    }
                    all.lock().unwrap().push(status.clone());
                    let _ = updates_tx.send(status);
                }
                Some(pb::agent_message::Msg::ExecutorMessage(m)) => {
                    let _ = messages_tx.send(m);
                }
                _ => {}
            }
        }
    });
    let harness = Harness {
        link: link_tx,
        events: core.events_tx.clone(),
        updates,
        seen,
        auto_ack,
        fake,
        executor_messages,
    };
    let (stop_tx, stop) = oneshot::channel::<()>();
    let run = core.run(&mut link, events, async {
        let _ = stop.await;
    });
    let script = async move {
        script(harness).await;
        let _ = stop_tx.send(());
    };
    let (exit, ()) = tokio::join!(run, script);
    assert_eq!(exit.unwrap(), Exit::Requested);
    master.abort();
}

#[tokio::test(start_paused = true)]
async fn an_executor_runs_its_tasks_and_its_calls_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(Fake::default());
    let (mut core, mut events) = agent(dir.path(), fake.clone()).await;
    drive(&mut core, &mut events, fake, |mut h| async move {
        h.link.send(run_task("t1", Some("ex-1"))).await.unwrap();
        h.link.send(run_task("t2", Some("ex-1"))).await.unwrap();
        h.link.send(run_task("plain", None)).await.unwrap();
        // One container for the executor, with the agent's address and its ids.
        let spec = h.wait_launched(&ekey("ex-1")).await;
        let env = spec.task.command.unwrap().environment;
        let var = |n: &str| env.iter().find(|e| e.name == n).map(|e| e.value.clone());
        assert_eq!(
            var("DROVER_AGENT_ENDPOINT").as_deref(),
            Some("http://127.0.0.1:7")
        );
        assert_eq!(var("DROVER_EXECUTOR_ID").as_deref(), Some("ex-1"));
        assert!(spec.sandbox.ends_with("sandboxes/fw/executor+ex-1"));
        assert!(!h
            .fake
            .launched
            .lock()
            .unwrap()
            .contains_key(&TaskKey::new("fw", "t1")));

        // Unknown executors, and bad ids, cannot subscribe.
        let e = h.subscribe("ex-404", &[]).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        let e = h.subscribe("../x", &[]).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        // Updates before subscribing are refused as retryable.
        let e = h
            .update("ex-1", status("t1", TaskState::TaskRunning))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");

        let mut first = h.subscribe("ex-1", &[]).await.unwrap();
        assert!(matches!(next_event(&mut first).await, Ev::Subscribed(_)));
        let mut launched = Vec::new();
        for _ in 0..2 {
            match next_event(&mut first).await {
                Ev::Launch(l) => launched.push(l.task.unwrap().task_id.unwrap().to_string()),
                other => panic!("expected a launch, got {other:?}"),
            }
        }
        launched.sort();
        assert_eq!(launched, ["t1", "t2"]);

        // A second subscription replaces the first; tasks it already runs are not
        // launched again.
        let mut stream = h.subscribe("ex-1", &["t1", "t2"]).await.unwrap();
        assert!(first.recv().await.unwrap().is_err(), "the old stream ends");
        assert!(matches!(next_event(&mut stream).await, Ev::Subscribed(_)));

        // Refusals, each leaving the task alone.
        let refusals = [
            (
                "ex-404",
                status("t1", TaskState::TaskRunning),
                Code::NotFound,
            ),
            (
                "ex-1",
                status("nope", TaskState::TaskRunning),
                Code::NotFound,
            ),
            (
                "ex-1",
                status("plain", TaskState::TaskRunning),
                Code::PermissionDenied,
            ),
            (
                "ex-1",
                status("t1", TaskState::TaskStaging),
                Code::InvalidArgument,
            ),
            (
                "ex-1",
                status("t1", TaskState::TaskLost),
                Code::InvalidArgument,
            ),
            (
                "ex-1",
                pb::TaskStatus {
                    uuid: vec![1, 2, 3],
                    ..status("t1", TaskState::TaskRunning)
                },
                Code::InvalidArgument,
            ),
        ];
        for (exec, s, code) in refusals {
            let e = h.update(exec, s.clone()).await.unwrap_err();
            assert_eq!(e.code(), code, "{s:?}: {e:?}");
        }

        // RUNNING goes to the master from the executor; its acknowledgement comes back.
        let running = status("t1", TaskState::TaskRunning);
        h.update("ex-1", running.clone()).await.unwrap();
        h.update("ex-1", running.clone()).await.unwrap(); // a resend: not sent twice
        let sent = h.sent("t1", TaskState::TaskRunning).await;
        assert_eq!(sent.uuid, running.uuid);
        assert_eq!(sent.source(), pb::task_status::Source::Executor);
        assert_eq!(sent.executor_id.as_ref().unwrap().as_str(), "ex-1");
        h.link.send(ack(&sent)).await.unwrap();
        match next_event(&mut stream).await {
            Ev::Acknowledged(a) => assert_eq!(a.uuid, running.uuid),
            other => panic!("expected an acknowledgement, got {other:?}"),
        }

        let finished = pb::TaskStatus {
            exit_code: Some(0),
            ..status("t1", TaskState::TaskFinished)
        };
        h.update("ex-1", finished.clone()).await.unwrap();
        h.update("ex-1", finished.clone()).await.unwrap(); // a resend
                                                           // Another state after the terminal one is refused.
        let e = h
            .update("ex-1", status("t1", TaskState::TaskFailed))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        let sent = h.sent("t1", TaskState::TaskFinished).await;
        assert_eq!(sent.exit_code, Some(0));
        h.link.send(ack(&sent)).await.unwrap();
        h.ack_all().await;

        // A kill becomes a KILL event with the kill's policy.
        h.link
            .send(master(Msg::KillTask(pb::master_message::KillTask {
                framework_id: Some(FrameworkId::new("fw")),
                task_id: Some(TaskId::new("t2")),
                kill_policy: Some(pb::KillPolicy {
                    grace_period_seconds: 2.0,
                }),
            })))
            .await
            .unwrap();
        loop {
            match next_event(&mut stream).await {
                Ev::Kill(k) => {
                    assert_eq!(k.task_id.unwrap().as_str(), "t2");
                    assert_eq!(k.kill_policy.unwrap().grace_period_seconds, 2.0);
                    break;
                }
                Ev::Acknowledged(_) => {}
                other => panic!("expected a kill, got {other:?}"),
            }
        }
        // The executor reports it; with no task left it is shut down.
        h.update("ex-1", status("t2", TaskState::TaskKilled))
            .await
            .unwrap();
        loop {
            match next_event(&mut stream).await {
                Ev::Shutdown(_) => break,
                Ev::Acknowledged(_) => {}
                other => panic!("expected a shutdown, got {other:?}"),
            }
        }
        h.sent("t2", TaskState::TaskKilled).await;
        // It exits by itself: nothing is killed, and nothing more is reported.
        h.executor_exited("ex-1").await;
        let e = h.subscribe("ex-1", &[]).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "an ended executor is forgotten");
        assert!(h.fake.killed.lock().unwrap().is_empty());

        // An executor that never subscribes is killed after the registration timeout
        // (60 s on the paused clock), and its task fails with that reason.
        h.link.send(run_task("t3", Some("ex-2"))).await.unwrap();
        h.wait_launched(&ekey("ex-2")).await;
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert_eq!(*h.fake.killed.lock().unwrap(), [ekey("ex-2")]);
        h.executor_exited("ex-2").await;
        let failed = h.sent("t3", TaskState::TaskFailed).await;
        assert_eq!(failed.reason(), Reason::ExecutorRegistrationTimeout);

        // A subscribed executor that dies fails its live tasks.
        h.link.send(run_task("t4", Some("ex-3"))).await.unwrap();
        h.wait_launched(&ekey("ex-3")).await;
        let mut s3 = h.subscribe("ex-3", &[]).await.unwrap();
        assert!(matches!(next_event(&mut s3).await, Ev::Subscribed(_)));
        assert!(matches!(next_event(&mut s3).await, Ev::Launch(_)));
        h.executor_exited("ex-3").await;
        let failed = h.sent("t4", TaskState::TaskFailed).await;
        assert_eq!(failed.reason(), Reason::ExecutorTerminated);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_running_executor_is_recovered_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(Fake::default());
    let (mut core, mut events) = agent(dir.path(), fake.clone()).await;
    let running = status("t1", TaskState::TaskRunning);
    let r = running.clone();
    drive(&mut core, &mut events, fake.clone(), |mut h| async move {
        h.link.send(run_task("t1", Some("ex-1"))).await.unwrap();
        h.link.send(run_task("t2", Some("ex-1"))).await.unwrap();
        h.wait_launched(&ekey("ex-1")).await;
        let mut stream = h.subscribe("ex-1", &[]).await.unwrap();
        assert!(matches!(next_event(&mut stream).await, Ev::Subscribed(_)));
        h.update("ex-1", r.clone()).await.unwrap();
        h.sent("t1", TaskState::TaskRunning).await;
        // Not acknowledged: the agent "crashes" here.
    })
    .await;
    drop(core);

    // The restarted agent finds the executor running and waits for it; it resubscribes
    // naming the tasks it runs and resends its unacknowledged update, which is not
    // reported again as a new one.
    let (mut core, mut events) = agent(dir.path(), fake.clone()).await;
    assert_eq!(core.core.executors.len(), 1);
    assert_eq!(core.core.tasks.len(), 2);
    drive(&mut core, &mut events, fake.clone(), |mut h| async move {
        let mut stream = h.subscribe("ex-1", &["t1"]).await.unwrap();
        match next_event(&mut stream).await {
            Ev::Subscribed(_) => {}
            other => panic!("expected SUBSCRIBED, got {other:?}"),
        }
        // t2 was never launched by this executor process... as far as it says.
        match next_event(&mut stream).await {
            Ev::Launch(l) => assert_eq!(l.task.unwrap().task_id.unwrap().as_str(), "t2"),
            other => panic!("expected t2's launch, got {other:?}"),
        }
        h.update("ex-1", running.clone()).await.unwrap();
        // The pending RUNNING is resent to the new master session (same uuid).
        let sent = h.sent("t1", TaskState::TaskRunning).await;
        assert_eq!(sent.uuid, running.uuid);
        h.link.send(ack(&sent)).await.unwrap();
        match next_event(&mut stream).await {
            Ev::Acknowledged(a) => assert_eq!(a.uuid, running.uuid),
            other => panic!("expected an acknowledgement, got {other:?}"),
        }
        // Resent once more (as after a broken stream): answered with its acknowledgement,
        // not delivered again.
        h.update("ex-1", running.clone()).await.unwrap();
        match next_event(&mut stream).await {
            Ev::Acknowledged(a) => assert_eq!(a.uuid, running.uuid),
            other => panic!("expected an acknowledgement, got {other:?}"),
        }
        let finished = status("t1", TaskState::TaskFinished);
        h.update("ex-1", finished).await.unwrap();
        h.sent("t1", TaskState::TaskFinished).await;
        let again: Vec<_> = h
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.state() == TaskState::TaskRunning)
            .map(|s| s.uuid.clone())
            .collect();
        assert!(
            again.iter().all(|u| *u == running.uuid),
            "RUNNING was not reported anew"
        );
        assert!(h.fake.killed.lock().unwrap().is_empty());
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_framework_shuts_an_executor_down_and_its_live_tasks_end_killed() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(Fake::default());
    let (mut core, mut events) = agent(dir.path(), fake.clone()).await;
    drive(&mut core, &mut events, fake, |mut h| async move {
        let shutdown = |exec: &str| {
            master(Msg::ShutdownExecutor(
                pb::master_message::ShutdownExecutor {
                    framework_id: Some(FrameworkId::new("fw")),
                    executor_id: Some(ExecutorId::new(exec)),
                },
            ))
        };
        h.link.send(run_task("t1", Some("ex-1"))).await.unwrap();
        h.wait_launched(&ekey("ex-1")).await;
        let mut stream = h.subscribe("ex-1", &[]).await.unwrap();
        assert!(matches!(next_event(&mut stream).await, Ev::Subscribed(_)));
        assert!(matches!(next_event(&mut stream).await, Ev::Launch(_)));
        h.update("ex-1", status("t1", TaskState::TaskRunning))
            .await
            .unwrap();
        h.sent("t1", TaskState::TaskRunning).await;
        h.ack_all().await;

        // Executors it does not run, and bad ids, change nothing.
        h.link.send(shutdown("ex-404")).await.unwrap();
        h.link.send(shutdown("../x")).await.unwrap();

        // SHUTDOWN reaches the executor, which ignores it; after the grace period (on the
        // paused clock) the agent kills its container, and the task it still ran ends
        // KILLED, as the framework asked, not FAILED.
        h.link.send(shutdown("ex-1")).await.unwrap();
        loop {
            match next_event(&mut stream).await {
                Ev::Shutdown(_) => break,
                Ev::Acknowledged(_) => {}
                other => panic!("expected a shutdown, got {other:?}"),
            }
        }
        assert!(h.fake.killed.lock().unwrap().is_empty());
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(*h.fake.killed.lock().unwrap(), [ekey("ex-1")]);
        h.executor_exited("ex-1").await;
        let killed = h.sent("t1", TaskState::TaskKilled).await;
        assert_eq!(killed.reason(), Reason::KilledByFramework);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn messages_travel_between_a_framework_and_its_executor() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(Fake::default());
    let (mut core, mut events) = agent(dir.path(), fake.clone()).await;
    drive(&mut core, &mut events, fake, |mut h| async move {
        let to_executor = |exec: &str, data: &[u8]| {
            master(Msg::FrameworkMessage(
                pb::master_message::FrameworkMessage {
                    framework_id: Some(FrameworkId::new("fw")),
                    executor_id: Some(ExecutorId::new(exec)),
                    data: data.to_vec(),
                },
            ))
        };
        h.link.send(run_task("t1", Some("ex-1"))).await.unwrap();
        h.wait_launched(&ekey("ex-1")).await;
        // Not subscribed yet: the executor cannot send, and what the framework sends
        // is dropped (best effort), never queued for later.
        let e = h.message("ex-1", b"early".to_vec()).await.unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        h.link.send(to_executor("ex-1", b"dropped")).await.unwrap();

        let mut stream = h.subscribe("ex-1", &[]).await.unwrap();
        assert!(matches!(next_event(&mut stream).await, Ev::Subscribed(_)));
        assert!(matches!(next_event(&mut stream).await, Ev::Launch(_)));
        h.link.send(to_executor("ex-404", b"nobody")).await.unwrap();
        h.link.send(to_executor("ex-1", b"hello")).await.unwrap();
        match next_event(&mut stream).await {
            Ev::Message(m) => assert_eq!(m.data, b"hello"),
            other => panic!("expected the framework's message, got {other:?}"),
        }

        // The executor's messages go to the master, as sent; bad ones are refused.
        h.message("ex-1", b"done 3 of 5".to_vec()).await.unwrap();
        let m = h.executor_messages.recv().await.unwrap();
        assert_eq!(m.framework_id.unwrap().as_str(), "fw");
        assert_eq!(m.executor_id.unwrap().as_str(), "ex-1");
        assert_eq!(m.data, b"done 3 of 5");
        let e = h
            .message(
                "ex-1",
                vec![0; drover_proto::MAX_EXECUTOR_MESSAGE_BYTES + 1],
            )
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        let e = h.message("ex-404", b"hi".to_vec()).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        let e = h.message("../x", b"hi".to_vec()).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(
            h.executor_messages.try_recv().is_err(),
            "nothing else was relayed"
        );

        // An executor that does not read: beyond the cap, messages are dropped rather than
        // piling up in the agent (one of the cap is already used by "hello").
        for i in 0..MAX_PENDING_MESSAGES + 10 {
            h.link
                .send(to_executor("ex-1", format!("m{i}").as_bytes()))
                .await
                .unwrap();
        }
        // A marker behind them (a kill's event) shows when the loop has handled them all.
        h.link
            .send(master(Msg::KillTask(pb::master_message::KillTask {
                framework_id: Some(FrameworkId::new("fw")),
                task_id: Some(TaskId::new("t1")),
                kill_policy: None,
            })))
            .await
            .unwrap();
        let mut messages = 0;
        loop {
            match next_event(&mut stream).await {
                Ev::Message(_) => messages += 1,
                Ev::Kill(_) => break,
                _ => {}
            }
        }
        assert_eq!(messages, MAX_PENDING_MESSAGES - 1);

        // An executor sending too fast is told to slow down; a second later (on the
        // paused clock) it may send again.
        tokio::time::sleep(Duration::from_secs(1)).await;
        for i in 0..MAX_MESSAGES_PER_SECOND {
            h.message("ex-1", format!("{i}").into_bytes())
                .await
                .unwrap_or_else(|e| panic!("message {i}: {e:?}"));
        }
        let e = h
            .message("ex-1", b"one too many".to_vec())
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
        h.message("ex-1", b"later".to_vec()).await.unwrap();
    })
    .await;
}

/// An executor that never subscribes, launched beside a lone task; then the agent stops
/// while the lone task still runs (`lone_runs`) or after it ended. Returns how many times
/// the executor's container was killed.
async fn kills_of_an_unsubscribed_executor_while_stopping(lone_runs: bool) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(Fake::default());
    let (mut core, mut events) = agent_with(
        dir.path(),
        fake.clone(),
        &["--executor-registration-timeout-secs", "1"],
    )
    .await;
    let (link_tx, mut link) = mpsc::channel(16);
    let (out_tx, _outbound) = mpsc::unbounded_channel();
    link_tx
        .send(LinkEvent::Registered {
            agent_id: AgentId::new("agent-1"),
            ping_interval: Duration::from_secs(60),
            master: "m".into(),
            outbound: out_tx,
        })
        .await
        .unwrap();
    link_tx.send(run_task("t1", Some("ex"))).await.unwrap();
    link_tx.send(run_task("lone", None)).await.unwrap();
    let lone = TaskKey::new("fw", "lone");
    let launched = async {
        // Busy, so the paused clock does not move meanwhile.
        while !(fake.launched.lock().unwrap().contains_key(&ekey("ex"))
            && fake.launched.lock().unwrap().contains_key(&lone))
        {
            tokio::task::yield_now().await;
        }
    };
    let exit = core.run(&mut link, &mut events, launched).await.unwrap();
    assert_eq!(exit, Exit::Requested);
    if !lone_runs {
        core.events_tx
            .send(Event::TaskEnded {
                key: lone,
                result: exited(),
            })
            .await
            .unwrap();
    }
    core.kill_all_and_wait(&mut link, &mut events, Reason::AgentRestarted)
        .await
        .unwrap();
    let killed = fake.killed.lock().unwrap();
    killed.iter().filter(|k| **k == ekey("ex")).count()
}

#[tokio::test(start_paused = true)]
async fn an_executors_timers_fire_while_the_agent_waits_for_its_tasks_to_end() {
    // Killed by the stop, then by its registration timeout, due 1s later, while the
    // agent waits (up to the lone task's grace period and more) for the task to end.
    assert_eq!(
        kills_of_an_unsubscribed_executor_while_stopping(true).await,
        2
    );
}

#[tokio::test(start_paused = true)]
async fn an_executors_timers_fire_while_the_agent_drains_its_last_updates() {
    // No task runs: the timeout comes due while the agent waits for the master to
    // acknowledge its last updates.
    assert_eq!(
        kills_of_an_unsubscribed_executor_while_stopping(false).await,
        2
    );
}
