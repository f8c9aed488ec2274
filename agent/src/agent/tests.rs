//! The agent loop's group commit, against a fake containerizer: a batch of events costs
//! one durability point, and nothing is sent or launched before it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use drover_proto::pb::{self, master_message::Msg, task_status::Reason, TaskState};
use drover_proto::{AgentId, FrameworkId, TaskId};
use tokio::sync::mpsc;

use super::core::Exit;
use super::driver::{AgentLoop, Event, MAX_LAUNCHES};
use super::recovery;
use crate::config::Config;
use crate::containerizer::ContainerizerError;
use crate::containerizer::{Containerizer, LaunchSpec, Recovered, Termination};
use crate::fsutil::create_dir_all_durable;
use crate::layout::{Layout, TaskKey};
use crate::master_link::LinkEvent;
use crate::metrics::Metrics;
use crate::supervisor::records::{ExitOutcome, ExitRecord};

/// As many launches as one round of the loop starts.
const N: usize = MAX_LAUNCHES;

/// Records, for every launch, how many durability points had happened by then. Its
/// containers never end by themselves (the test reports their end).
struct Fake {
    metrics: Arc<Metrics>,
    launched: Mutex<BTreeMap<TaskKey, u64>>,
    /// For every usage asked (an answer to `GetState` being computed), how many
    /// durability points had happened by then.
    usage_asked: Mutex<Vec<u64>>,
    /// For every launch of a group task: its shared volume's entries at that moment
    /// (`None`: no volume).
    shared_at_launch: Mutex<Vec<(TaskKey, Option<Vec<String>>)>>,
}

impl Fake {
    fn new(metrics: Arc<Metrics>) -> Self {
        Fake {
            metrics,
            launched: Mutex::new(BTreeMap::new()),
            usage_asked: Mutex::new(Vec::new()),
            shared_at_launch: Mutex::new(Vec::new()),
        }
    }
}

#[async_trait]
impl Containerizer for Fake {
    fn name(&self) -> &'static str {
        "fake"
    }

    async fn launch(&self, spec: LaunchSpec) -> Result<(), ContainerizerError> {
        let syncs = self.metrics.checkpoint_syncs();
        if let Some(group) = &spec.group {
            let entries = std::fs::read_dir(&group.shared).ok().map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            });
            self.shared_at_launch
                .lock()
                .unwrap()
                .push((spec.key.clone(), entries));
        }
        self.launched.lock().unwrap().insert(spec.key, syncs);
        Ok(())
    }

    async fn recover(&self, _key: &TaskKey) -> Result<Recovered, ContainerizerError> {
        Ok(Recovered::NeverStarted)
    }

    async fn wait(&self, _key: &TaskKey) -> Result<Termination, ContainerizerError> {
        std::future::pending().await
    }

    async fn kill(&self, _: &TaskKey, _: Duration, _: Reason) -> Result<(), ContainerizerError> {
        Ok(())
    }

    fn usage(&self, _key: &TaskKey) -> Option<pb::ResourceStatistics> {
        let syncs = self.metrics.checkpoint_syncs();
        self.usage_asked.lock().unwrap().push(syncs);
        None
    }
}

/// A recovered agent loop on `dir` over `fake`, and its events' receiver.
async fn agent_on(
    dir: &std::path::Path,
    fake: Arc<Fake>,
    metrics: Arc<Metrics>,
) -> (AgentLoop, mpsc::Sender<Event>, mpsc::Receiver<Event>) {
    let settings = Config::from_args([
        "--master",
        "127.0.0.1:1",
        "--work-dir",
        dir.to_str().unwrap(),
    ])
    .unwrap()
    .validate()
    .unwrap();
    let layout = Layout::new(&settings.work_dir);
    for d in [layout.frameworks_meta(), layout.sandboxes_root()] {
        create_dir_all_durable(&d).unwrap();
    }
    let (events_tx, events) = mpsc::channel(1024);
    let (journal, found) = recovery::load(&layout).unwrap();
    let mut agent = AgentLoop::new(
        Arc::new(settings),
        pb::AgentInfo::default(),
        Some(AgentId::new("agent-1")),
        fake,
        metrics,
        events_tx.clone(),
        journal,
    );
    agent.recover(found).await.unwrap();
    (agent, events_tx, events)
}

fn registered(outbound: mpsc::UnboundedSender<pb::AgentMessage>) -> LinkEvent {
    LinkEvent::Registered {
        agent_id: AgentId::new("agent-1"),
        ping_interval: Duration::from_secs(60),
        master: "m".into(),
        outbound,
    }
}

fn run_task(i: usize) -> LinkEvent {
    LinkEvent::Message(Box::new(pb::MasterMessage {
        term: 1,
        msg: Some(Msg::RunTask(pb::master_message::RunTask {
            framework_id: Some(FrameworkId::new("fw")),
            framework_info: None,
            task: Some(pb::TaskInfo {
                name: format!("t{i}"),
                task_id: Some(TaskId::new(format!("t{i}"))),
                command: Some(pb::CommandInfo {
                    value: "true".into(),
                    shell: true,
                    ..Default::default()
                }),
                ..Default::default()
            }),
        })),
    }))
}

fn ack(status: &pb::TaskStatus) -> LinkEvent {
    LinkEvent::Message(Box::new(pb::MasterMessage {
        term: 1,
        msg: Some(Msg::StatusAck(pb::master_message::StatusAck {
            framework_id: Some(FrameworkId::new("fw")),
            task_id: status.task_id.clone(),
            uuid: status.uuid.clone(),
        })),
    }))
}

/// Runs the loop until `count` updates in `state` have been sent; returns every update
/// sent meanwhile.
async fn run_until(
    core: &mut AgentLoop,
    link: &mut mpsc::Receiver<LinkEvent>,
    events: &mut mpsc::Receiver<Event>,
    outbound: &mut mpsc::UnboundedReceiver<pb::AgentMessage>,
    state: TaskState,
    count: usize,
) -> Vec<pb::TaskStatus> {
    let sent = Arc::new(Mutex::new(Vec::new()));
    let seen = sent.clone();
    let done = async move {
        let mut n = 0;
        while n < count {
            let msg = outbound.recv().await.expect("the loop is alive");
            if let Some(pb::agent_message::Msg::StatusUpdate(u)) = msg.msg {
                let status = u.status.unwrap();
                n += usize::from(status.state == state as i32);
                seen.lock().unwrap().push(status);
            }
        }
    };
    let exit = tokio::time::timeout(Duration::from_secs(20), core.run(link, events, done))
        .await
        .unwrap_or_else(|_| {
            let states: Vec<_> = sent.lock().unwrap().iter().map(|s| s.state).collect();
            panic!("not all updates were sent in time; sent: {states:?}")
        })
        .unwrap();
    assert_eq!(exit, Exit::Requested);
    let sent = sent.lock().unwrap().clone();
    sent
}

#[tokio::test]
async fn a_batch_of_launches_updates_and_acks_shares_one_durability_point() {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::new(dir.path());
    let metrics = Arc::new(Metrics::new());
    let fake = Arc::new(Fake::new(metrics.clone()));
    let (mut core, events_tx, mut events) =
        agent_on(dir.path(), fake.clone(), metrics.clone()).await;

    // Batch 1: a registration and N launches, all queued before the loop runs.
    let (link_tx, mut link) = mpsc::channel(1024);
    let (out_tx, mut outbound) = mpsc::unbounded_channel();
    link_tx.send(registered(out_tx)).await.unwrap();
    for i in 0..N {
        link_tx.send(run_task(i)).await.unwrap();
    }
    let base = metrics.checkpoint_syncs();
    let starting = run_until(
        &mut core,
        &mut link,
        &mut events,
        &mut outbound,
        TaskState::TaskStarting,
        N,
    )
    .await;
    // One durability point before the first launch covered all N task checkpoints and
    // STARTING updates; one more made the N RUNNING updates the launches enqueued durable
    // (they wait behind STARTING, the head of each stream).
    let launched = fake.launched.lock().unwrap().clone();
    assert_eq!(launched.len(), N);
    assert!(launched.values().all(|s| *s == base + 1), "{launched:?}");
    assert_eq!(metrics.checkpoint_syncs(), base + 2);
    assert_eq!(starting.len(), N);

    // Batch 2: every STARTING acknowledged at once: one sync, then N RUNNING go out.
    for status in &starting {
        link_tx.send(ack(status)).await.unwrap();
    }
    let base = metrics.checkpoint_syncs();
    let running = run_until(
        &mut core,
        &mut link,
        &mut events,
        &mut outbound,
        TaskState::TaskRunning,
        N,
    )
    .await;
    assert_eq!(metrics.checkpoint_syncs(), base + 1);
    assert_eq!(running.len(), N);

    // Batch 3: every RUNNING acknowledged and every container ended: one sync.
    for status in &running {
        link_tx.send(ack(status)).await.unwrap();
    }
    for i in 0..N {
        events_tx
            .send(Event::TaskEnded {
                key: TaskKey::new("fw", format!("t{i}")),
                result: Ok(Termination::Recorded(ExitRecord {
                    outcome: ExitOutcome::Exited { code: 0 },
                    killed: false,
                    kill_reason: None,
                    task_pid: None,
                    finished_at: 0.0,
                    limitation: None,
                })),
            })
            .await
            .unwrap();
    }
    let base = metrics.checkpoint_syncs();
    let finished = run_until(
        &mut core,
        &mut link,
        &mut events,
        &mut outbound,
        TaskState::TaskFinished,
        N,
    )
    .await;
    assert_eq!(metrics.checkpoint_syncs(), base + 1);
    assert_eq!(finished.len(), N);

    // Batch 4: terminal acknowledgements complete their tasks, again in one sync.
    // Half of them are queued now; a restart must still know the other half.
    for status in &finished[..N / 2] {
        link_tx.send(ack(status)).await.unwrap();
    }
    let (stop_tx, stop) = tokio::sync::oneshot::channel::<()>();
    let base = metrics.checkpoint_syncs();
    let run = core.run(&mut link, &mut events, async {
        let _ = stop.await;
    });
    let stopper = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = stop_tx.send(());
    };
    let (exit, ()) = tokio::join!(run, stopper);
    assert_eq!(exit.unwrap(), Exit::Requested);
    assert_eq!(metrics.checkpoint_syncs(), base + 1);
    assert_eq!(core.core.tasks.len(), N - N / 2);
    drop(core);

    // What a restarted agent finds: the unacknowledged half, FINISHED and pending.
    let (_, found) = recovery::load(&layout).unwrap();
    assert_eq!(found.len(), N - N / 2);
    for t in &found {
        let stream = t.stream.as_ref().unwrap();
        assert_eq!(stream.latest_state, TaskState::TaskFinished as i32);
        assert_eq!(stream.pending.len(), 1);
    }
}

#[tokio::test]
async fn an_answer_is_computed_only_once_its_batch_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::new());
    let fake = Arc::new(Fake::new(metrics.clone()));
    let (mut agent, events_tx, mut events) =
        agent_on(dir.path(), fake.clone(), metrics.clone()).await;
    let (link_tx, mut link) = mpsc::channel(16);
    let (out_tx, mut outbound) = mpsc::unbounded_channel();
    link_tx.send(registered(out_tx)).await.unwrap();
    link_tx.send(run_task(0)).await.unwrap();
    let starting = run_until(
        &mut agent,
        &mut link,
        &mut events,
        &mut outbound,
        TaskState::TaskStarting,
        1,
    )
    .await;
    assert!(fake.usage_asked.lock().unwrap().is_empty());
    // One batch: an acknowledgement (a change to checkpoint), then a GetState, whose
    // answer asks the containerizer for the running task's usage while it is computed.
    link_tx.send(ack(&starting[0])).await.unwrap();
    let (reply, answer) = tokio::sync::oneshot::channel();
    events_tx
        .send(Event::Api(crate::api::StateRequest::GetState(reply)))
        .await
        .unwrap();
    let base = metrics.checkpoint_syncs();
    let exit = agent
        .run(&mut link, &mut events, async {
            let _ = answer.await;
        })
        .await
        .unwrap();
    assert_eq!(exit, Exit::Requested);
    let asked = fake.usage_asked.lock().unwrap().clone();
    // Computed once, after the batch's sync.
    assert_eq!(asked, [base + 1]);
}

#[tokio::test]
async fn an_update_counts_as_sent_only_once_the_masters_stream_took_it() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::new());
    let fake = Arc::new(Fake::new(metrics.clone()));
    let (mut agent, _events_tx, mut events) =
        agent_on(dir.path(), fake.clone(), metrics.clone()).await;
    let (link_tx, mut link) = mpsc::channel(16);
    // The session's stream is gone (its Disconnected event not here yet) when STARTING
    // is due: it is not sent, and is resent after the next registration.
    let (out_tx, outbound) = mpsc::unbounded_channel();
    drop(outbound);
    link_tx.send(registered(out_tx)).await.unwrap();
    link_tx.send(run_task(0)).await.unwrap();
    let launched = async {
        while fake.launched.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
    };
    let exit = agent.run(&mut link, &mut events, launched).await.unwrap();
    assert_eq!(exit, Exit::Requested);
    assert_eq!(metrics.updates_sent_count(), 0);
    // A live stream counts what it takes.
    let (out_tx, mut outbound) = mpsc::unbounded_channel();
    link_tx.send(registered(out_tx)).await.unwrap();
    run_until(
        &mut agent,
        &mut link,
        &mut events,
        &mut outbound,
        TaskState::TaskStarting,
        1,
    )
    .await;
    assert_eq!(metrics.updates_sent_count(), 1);
}

fn now() -> super::core::Now {
    super::core::Now {
        instant: std::time::Instant::now(),
        unix_seconds: 1_000_000.0,
    }
}

fn run_group(executor: &str, task: &str) -> pb::MasterMessage {
    pb::MasterMessage {
        term: 1,
        msg: Some(Msg::RunTaskGroup(pb::master_message::RunTaskGroup {
            framework_id: Some(FrameworkId::new("fw")),
            framework_info: None,
            executor: Some(pb::ExecutorInfo {
                executor_id: Some(drover_proto::ExecutorId::new(executor)),
                r#type: pb::executor_info::Type::Default as i32,
                ..Default::default()
            }),
            task_group: Some(pb::TaskGroupInfo {
                tasks: vec![pb::TaskInfo {
                    name: task.into(),
                    task_id: Some(TaskId::new(task)),
                    command: Some(pb::CommandInfo {
                        value: "true".into(),
                        shell: true,
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
            }),
        })),
    }
}

#[tokio::test]
async fn a_group_started_in_the_batch_that_ended_its_predecessor_gets_an_empty_shared_volume() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::new());
    let fake = Arc::new(Fake::new(metrics.clone()));
    let (mut agent, _events_tx, _events) =
        agent_on(dir.path(), fake.clone(), metrics.clone()).await;
    agent
        .core
        .on_master_message(now(), run_group("ex", "a"))
        .unwrap();
    agent.settle(usize::MAX).await.unwrap();
    let shared = Layout::new(dir.path())
        .executor_dir("fw", "ex")
        .join("shared");
    std::fs::write(shared.join("left-by-a"), "x").unwrap();
    // One batch: the first group's last task ends, then a group under the same executor
    // id arrives.
    agent.core.on_task_ended(
        now(),
        &TaskKey::new("fw", "a"),
        Ok(Termination::Recorded(ExitRecord {
            outcome: ExitOutcome::Exited { code: 0 },
            killed: false,
            kill_reason: None,
            task_pid: None,
            finished_at: 0.0,
            limitation: None,
        })),
    );
    agent
        .core
        .on_master_message(now(), run_group("ex", "b"))
        .unwrap();
    agent.settle(usize::MAX).await.unwrap();
    let at_launch = fake.shared_at_launch.lock().unwrap().clone();
    assert_eq!(
        at_launch,
        [
            (TaskKey::new("fw", "a"), Some(vec![])),
            (TaskKey::new("fw", "b"), Some(vec![])),
        ]
    );
    assert!(shared.is_dir());
}

#[tokio::test]
async fn a_task_killed_while_its_launch_waits_in_the_backlog_never_starts() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::new());
    let fake = Arc::new(Fake::new(metrics.clone()));
    let (mut agent, _events_tx, _events) =
        agent_on(dir.path(), fake.clone(), metrics.clone()).await;
    // Two more launches than a round starts: the last two wait for the next round.
    for i in 0..N + 2 {
        let LinkEvent::Message(msg) = run_task(i) else {
            unreachable!()
        };
        agent.core.on_master_message(now(), *msg).unwrap();
    }
    agent.settle(MAX_LAUNCHES).await.unwrap();
    let last = TaskKey::new("fw", format!("t{}", N + 1));
    assert_eq!(fake.launched.lock().unwrap().len(), N);
    let kill = pb::MasterMessage {
        term: 1,
        msg: Some(Msg::KillTask(pb::master_message::KillTask {
            framework_id: Some(FrameworkId::new("fw")),
            task_id: Some(last.task_id.clone()),
            kill_policy: None,
        })),
    };
    agent.core.on_master_message(now(), kill).unwrap();
    agent.settle(MAX_LAUNCHES).await.unwrap();
    agent.settle(MAX_LAUNCHES).await.unwrap();
    // The other one waiting starts in the same round, after a durable batch as always.
    assert!(fake
        .launched
        .lock()
        .unwrap()
        .contains_key(&TaskKey::new("fw", format!("t{N}"))));
    assert!(!fake.launched.lock().unwrap().contains_key(&last));
    // Its KILLED is in the log.
    let (_, found) = recovery::load(&Layout::new(dir.path())).unwrap();
    let stream = found
        .iter()
        .find(|t| t.key == last)
        .and_then(|t| t.stream.clone())
        .unwrap();
    assert_eq!(stream.latest_state, TaskState::TaskKilled as i32);
}
