//! The fake master of the SDK's tests: a real tonic server on a loopback port that
//! answers Subscribe like a well-mannered leader (or, by [`Behavior`], like a follower, a
//! refusing master or a master that steps down), records every call, and sends the events
//! a test hands it on the current stream.

// Each test file uses its own part of the fake.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_sdk::proto::leader::not_leader_status;
use drover_sdk::proto::pb::{self, event, scheduler_server};
use drover_sdk::proto::{FrameworkId, OfferId, Resources, TaskId};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status};

/// What a fake master does besides behaving as a well-mannered leader.
#[derive(Clone, Default)]
pub struct Behavior {
    /// Answer Subscribe with NotLeader naming this leader.
    pub follower_of: Option<String>,
    /// Answer every call with NotLeader naming this leader.
    pub calls_not_leader: Option<String>,
    /// Answer Subscribe with this error.
    pub subscribe_error: Option<(tonic::Code, String)>,
    /// Heartbeat interval announced in SUBSCRIBED.
    pub heartbeat: f64,
    /// On TEARDOWN, close the event stream a while before answering.
    pub close_before_teardown_answer: bool,
}

#[derive(Debug, Clone)]
pub enum Call {
    Accept(pb::AcceptCall),
    Decline(pb::DeclineCall),
    Revive,
    Suppress,
    Acknowledge(pb::AcknowledgeCall),
    Reconcile(pb::ReconcileCall),
    Teardown,
    Other(&'static str),
}

#[derive(Default)]
pub struct FakeState {
    pub behavior: Behavior,
    /// Subscribe requests received, refused ones included.
    pub attempts: usize,
    pub subscribes: Vec<pb::SubscribeRequest>,
    pub calls: Vec<Call>,
    pub stream: Option<mpsc::Sender<Result<pb::Event, Status>>>,
    pub stream_id: String,
}

#[derive(Clone)]
pub struct Fake {
    pub state: Arc<Mutex<FakeState>>,
    pub addr: SocketAddr,
}

impl Fake {
    pub async fn start(behavior: Behavior) -> Fake {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(FakeState {
            behavior,
            ..Default::default()
        }));
        let svc = scheduler_server::SchedulerServer::new(Service(state.clone()));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        Fake { state, addr }
    }

    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    pub fn subscribes(&self) -> Vec<pb::SubscribeRequest> {
        self.state.lock().unwrap().subscribes.clone()
    }

    pub fn attempts(&self) -> usize {
        self.state.lock().unwrap().attempts
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    pub async fn send(&self, e: event::Event) {
        let tx = self
            .state
            .lock()
            .unwrap()
            .stream
            .clone()
            .expect("no open stream");
        tx.send(Ok(pb::Event { event: Some(e) })).await.unwrap();
    }

    /// Ends the current event stream, as a master that restarts would.
    pub fn close_stream(&self) {
        self.state.lock().unwrap().stream = None;
    }

    pub fn set_behavior(&self, behavior: Behavior) {
        self.state.lock().unwrap().behavior = behavior;
    }

    /// Waits until a recorded call matches.
    pub async fn wait_call(&self, what: &str, f: impl Fn(&Call) -> bool) -> Call {
        wait_for(what, || self.calls().into_iter().find(|c| f(c))).await
    }
}

pub async fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    drover_testkit::eventually(
        what,
        Duration::from_secs(30),
        Duration::from_millis(10),
        || std::future::ready(f()),
    )
    .await
}

struct Service(Arc<Mutex<FakeState>>);

impl Service {
    // The signature tonic's handlers return, so the large error is not ours to shrink.
    #[allow(clippy::result_large_err)]
    fn record(
        &self,
        header: Option<&pb::CallHeader>,
        call: Call,
    ) -> Result<Response<pb::CallResponse>, Status> {
        let mut s = self.0.lock().unwrap();
        if let Some(leader) = &s.behavior.calls_not_leader {
            return Err(not_leader_status(Some(leader)));
        }
        let header = header.ok_or_else(|| Status::invalid_argument("no header"))?;
        if header.stream_id != s.stream_id {
            return Err(Status::failed_precondition("stale stream id"));
        }
        s.calls.push(call);
        Ok(Response::new(pb::CallResponse {}))
    }
}

#[tonic::async_trait]
impl scheduler_server::Scheduler for Service {
    type SubscribeStream = ReceiverStream<Result<pb::Event, Status>>;

    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let req = req.into_inner();
        let mut s = self.0.lock().unwrap();
        s.attempts += 1;
        if let Some(leader) = &s.behavior.follower_of {
            return Err(not_leader_status(Some(leader)));
        }
        if let Some((code, msg)) = &s.behavior.subscribe_error {
            return Err(Status::new(*code, msg.clone()));
        }
        let framework_id = req
            .framework_info
            .as_ref()
            .and_then(|f| f.id.clone())
            .unwrap_or_else(|| FrameworkId::new("fw-1"));
        s.subscribes.push(req);
        s.stream_id = format!("stream-{}", s.subscribes.len());
        let (tx, rx) = mpsc::channel(64);
        let subscribed = event::Event::Subscribed(event::Subscribed {
            framework_id: Some(framework_id),
            stream_id: s.stream_id.clone(),
            heartbeat_interval_seconds: s.behavior.heartbeat,
            master_info: None,
        });
        tx.try_send(Ok(pb::Event {
            event: Some(subscribed),
        }))
        .unwrap();
        s.stream = Some(tx);
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn accept(
        &self,
        r: Request<pb::AcceptCall>,
    ) -> Result<Response<pb::CallResponse>, Status> {
        let r = r.into_inner();
        self.record(r.header.as_ref(), Call::Accept(r.clone()))
    }
    async fn decline(
        &self,
        r: Request<pb::DeclineCall>,
    ) -> Result<Response<pb::CallResponse>, Status> {
        let r = r.into_inner();
        self.record(r.header.as_ref(), Call::Decline(r.clone()))
    }
    async fn revive(
        &self,
        r: Request<pb::ReviveCall>,
    ) -> Result<Response<pb::CallResponse>, Status> {
        self.record(r.get_ref().header.as_ref(), Call::Revive)
    }
    async fn suppress(
        &self,
        r: Request<pb::SuppressCall>,
    ) -> Result<Response<pb::CallResponse>, Status> {
        self.record(r.get_ref().header.as_ref(), Call::Suppress)
    }
    async fn kill(&self, r: Request<pb::KillCall>) -> Result<Response<pb::CallResponse>, Status> {
        self.record(r.get_ref().header.as_ref(), Call::Other("kill"))
    }
    async fn shutdown(
        &self,
        r: Request<pb::ShutdownCall>,
    ) -> Result<Response<pb::CallResponse>, Status> {
        self.record(r.get_ref().header.as_ref(), Call::Other("shutdown"))
    }
    async fn acknowledge(
        &self,
        r: Request<pb::AcknowledgeCall>,
    ) -> Result<Response<pb::CallResponse>, Status> {
        let r = r.into_inner();
        self.record(r.header.as_ref(), Call::Acknowledge(r.clone()))
    }
    async fn reconcile(
        &self,
        r: Request<pb::ReconcileCall>,
    ) -> Result<Response<pb::CallResponse>, Status> {
        let r = r.into_inner();
        self.record(r.header.as_ref(), Call::Reconcile(r.clone()))
    }
    async fn message(
        &self,
        r: Request<pb::MessageCall>,
    ) -> Result<Response<pb::CallResponse>, Status> {
        self.record(r.get_ref().header.as_ref(), Call::Other("message"))
    }
    async fn teardown(
        &self,
        r: Request<pb::TeardownCall>,
    ) -> Result<Response<pb::CallResponse>, Status> {
        let answer = self.record(r.get_ref().header.as_ref(), Call::Teardown);
        let close_first = {
            let mut s = self.0.lock().unwrap();
            s.behavior.close_before_teardown_answer && s.stream.take().is_some()
        };
        if close_first {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        answer
    }
}

/// An OFFERS event with one offer of `resources` on agent-1.
pub fn offer(id: &str, resources: &str) -> event::Event {
    event::Event::Offers(event::Offers {
        offers: vec![pb::Offer {
            id: Some(OfferId::new(id)),
            agent_id: Some("agent-1".into()),
            resources: Resources::parse(resources).unwrap().to_proto(),
            ..Default::default()
        }],
    })
}

/// An UPDATE event for `task` on agent-1.
pub fn update(task: &str, state: pb::TaskState, uuid: &[u8]) -> event::Event {
    event::Event::Update(event::Update {
        status: Some(pb::TaskStatus {
            task_id: Some(TaskId::new(task)),
            agent_id: Some("agent-1".into()),
            state: state as i32,
            uuid: uuid.to_vec(),
            ..Default::default()
        }),
    })
}
