//! `drover-batch` end to end against an in-process fake master that plays allocator and
//! agent: it offers resources while the framework is not suppressed, and answers every
//! launched task with RUNNING and then FINISHED, or FAILED for the attempts a test picks,
//! delivering some updates twice as a master failover would.

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_sdk::proto::pb::{self, event, scheduler_server};
use drover_sdk::proto::{OfferId, Resources};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status};

#[derive(Default)]
struct State {
    /// Task ids whose attempts fail.
    failing: HashSet<String>,
    stream: Option<mpsc::Sender<Result<pb::Event, Status>>>,
    suppressed: bool,
    offers: u32,
    launched: Vec<pb::TaskInfo>,
    acks: usize,
    torn_down: bool,
}

#[derive(Clone)]
struct Fake(Arc<Mutex<State>>);

type Answer = Result<Response<pb::CallResponse>, Status>;

impl Fake {
    /// Sends a fresh offer unless the framework suppressed offers.
    fn offer(&self) {
        let mut s = self.0.lock().unwrap();
        if s.suppressed {
            return;
        }
        s.offers += 1;
        let offer = pb::Offer {
            id: Some(OfferId::new(format!("o-{}", s.offers))),
            agent_id: Some("agent-1".into()),
            resources: Resources::parse("cpus:0.35;mem:1024").unwrap().to_proto(),
            ..Default::default()
        };
        if let Some(tx) = &s.stream {
            let _ = tx.try_send(Ok(pb::Event {
                event: Some(event::Event::Offers(event::Offers {
                    offers: vec![offer],
                })),
            }));
        }
    }

    fn offer_later(&self) {
        let fake = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            fake.offer();
        });
    }

    // tonic handlers answer with this type; the large error is not ours to shrink.
    #[allow(clippy::result_large_err)]
    fn ok(&self) -> Answer {
        Ok(Response::new(pb::CallResponse {}))
    }
}

fn update(task: &pb::TaskInfo, state: pb::TaskState, n: usize) -> pb::Event {
    pb::Event {
        event: Some(event::Event::Update(event::Update {
            status: Some(pb::TaskStatus {
                task_id: task.task_id.clone(),
                agent_id: task.agent_id.clone(),
                state: state as i32,
                uuid: format!("u-{n}").into_bytes(),
                exit_code: matches!(state, pb::TaskState::TaskFailed).then_some(1),
                ..Default::default()
            }),
        })),
    }
}

#[tonic::async_trait]
impl scheduler_server::Scheduler for Fake {
    type SubscribeStream = ReceiverStream<Result<pb::Event, Status>>;

    async fn subscribe(
        &self,
        _r: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let (tx, rx) = mpsc::channel(1024);
        tx.try_send(Ok(pb::Event {
            event: Some(event::Event::Subscribed(event::Subscribed {
                framework_id: Some("fw-batch".into()),
                stream_id: "s-1".into(),
                heartbeat_interval_seconds: 5.0,
                master_info: None,
            })),
        }))
        .unwrap();
        self.0.lock().unwrap().stream = Some(tx);
        self.offer_later();
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn accept(&self, r: Request<pb::AcceptCall>) -> Answer {
        let tasks: Vec<pb::TaskInfo> = r
            .into_inner()
            .operations
            .into_iter()
            .filter_map(|op| op.launch)
            .flat_map(|l| l.task_infos)
            .collect();
        let (tx, failing) = {
            let mut s = self.0.lock().unwrap();
            s.launched.extend(tasks.iter().cloned());
            (s.stream.clone().unwrap(), s.failing.clone())
        };
        for (n, task) in tasks.into_iter().enumerate() {
            let tx = tx.clone();
            let fails = failing.contains(task.task_id.as_ref().unwrap().as_str());
            tokio::spawn(async move {
                let _ = tx
                    .send(Ok(update(&task, pb::TaskState::TaskRunning, 2 * n)))
                    .await;
                let end = if fails {
                    pb::TaskState::TaskFailed
                } else {
                    pb::TaskState::TaskFinished
                };
                let last = update(&task, end, 2 * n + 1);
                // Terminal updates arrive twice, as after a master failover.
                let _ = tx.send(Ok(last.clone())).await;
                let _ = tx.send(Ok(last)).await;
            });
        }
        self.offer_later();
        self.ok()
    }
    async fn decline(&self, _r: Request<pb::DeclineCall>) -> Answer {
        self.offer_later();
        self.ok()
    }
    async fn revive(&self, _r: Request<pb::ReviveCall>) -> Answer {
        self.0.lock().unwrap().suppressed = false;
        self.offer_later();
        self.ok()
    }
    async fn suppress(&self, _r: Request<pb::SuppressCall>) -> Answer {
        self.0.lock().unwrap().suppressed = true;
        self.ok()
    }
    async fn kill(&self, _r: Request<pb::KillCall>) -> Answer {
        self.ok()
    }
    async fn shutdown(&self, _r: Request<pb::ShutdownCall>) -> Answer {
        self.ok()
    }
    async fn acknowledge(&self, _r: Request<pb::AcknowledgeCall>) -> Answer {
        self.0.lock().unwrap().acks += 1;
        self.ok()
    }
    async fn reconcile(&self, _r: Request<pb::ReconcileCall>) -> Answer {
        self.ok()
    }
    async fn message(&self, _r: Request<pb::MessageCall>) -> Answer {
        self.ok()
    }
    async fn teardown(&self, _r: Request<pb::TeardownCall>) -> Answer {
        let mut s = self.0.lock().unwrap();
        s.torn_down = true;
        s.stream = None;
        self.ok()
    }
}

async fn start(failing: &[&str]) -> (Fake, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let fake = Fake(Arc::new(Mutex::new(State {
        failing: failing.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    })));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(scheduler_server::SchedulerServer::new(fake.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (fake, addr)
}

/// Runs the binary and returns (exit code, stdout, stderr).
async fn batch(master: &str, extra: &[&str]) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_drover-batch"));
    cmd.args(["--master", master, "--name", "job"])
        .args(extra)
        .args(["--", "echo", "$DROVER_TASK_INDEX"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .expect("drover-batch did not finish")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn job_finishes_with_retries_duplicates_and_parallelism() {
    let (fake, master) = start(&["job-1-0", "job-1-1"]).await;
    let (code, stdout, stderr) = batch(&master, &["--tasks", "7", "--parallelism", "2"]).await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("[batch] 7/7 finished, 0 running, 2 failed"),
        "{stdout}"
    );
    assert!(stdout.contains("job job succeeded"), "{stdout}");
    assert!(
        stdout.contains("task 1 attempt 0 FAILED (exit 1); retrying (1/3)"),
        "{stdout}"
    );

    let s = fake.0.lock().unwrap();
    assert!(s.torn_down);
    let ids: Vec<&str> = s
        .launched
        .iter()
        .map(|t| t.task_id.as_ref().unwrap().as_str())
        .collect();
    assert_eq!(ids.len(), 9, "7 tasks plus 2 retries: {ids:?}");
    assert!(ids.contains(&"job-1-2"));
    // Every task carries its index and the job name, and the command as a shell string.
    let t = s
        .launched
        .iter()
        .find(|t| t.task_id.as_ref().unwrap().as_str() == "job-3-0")
        .unwrap();
    let cmd = t.command.as_ref().unwrap();
    assert!(cmd.shell);
    assert_eq!(cmd.value, "echo $DROVER_TASK_INDEX");
    let env: Vec<(&str, &str)> = cmd
        .environment
        .iter()
        .map(|e| (e.name.as_str(), e.value.as_str()))
        .collect();
    assert!(env.contains(&("DROVER_TASK_INDEX", "3")) && env.contains(&("DROVER_JOB_NAME", "job")));
    assert!(s.acks >= 9 * 2, "updates are acknowledged");
}

#[tokio::test]
async fn job_fails_when_a_task_runs_out_of_retries() {
    let (fake, master) = start(&["job-0-0", "job-0-1"]).await;
    let (code, stdout, stderr) = batch(&master, &["--tasks", "3", "--max-retries", "1"]).await;
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("task 0 failed 2 times, giving up"),
        "{stdout}"
    );
    assert!(stderr.contains("job job failed"), "{stderr}");
    assert!(
        fake.0.lock().unwrap().torn_down,
        "the framework is torn down on failure too"
    );
}
