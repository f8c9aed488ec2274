//! A fake master for agent tests: a real tonic server on a loopback port speaking
//! `AgentMaster.Session`, so the agent under test (in process or as a binary) runs its
//! real master link against it.
//!
//! The fake registers every agent under one agent id and answers its pings by itself;
//! everything else the agent sends reaches the test through [`FakeMaster::next`], and the
//! test sends commands on the current session with [`FakeMaster::send`]. A new session
//! (the agent reconnecting, or restarted) replaces the old one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_proto::leader::not_leader_status;
use drover_proto::pb::{
    self, agent_master_server::AgentMaster, agent_master_server::AgentMasterServer, agent_message,
    master_message::Msg,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tonic::{Request, Response, Status, Streaming};

/// How long [`FakeMaster::next`] waits for the agent before failing the test: generous,
/// agents under test may be starting containers on a loaded machine.
pub const QUIET_LIMIT: Duration = Duration::from_secs(30);

type ToAgent = mpsc::UnboundedSender<Result<pb::MasterMessage, Status>>;

/// How the fake master introduces itself.
#[derive(Debug, Clone)]
pub struct FakeMasterOptions {
    /// The agent id every registration gets.
    pub agent_id: String,
    /// The term on every message the fake sends by itself (and on [`FakeMaster::send`]).
    pub term: u64,
    /// The ping interval announced to the agent.
    pub ping_interval_seconds: f64,
}

impl Default for FakeMasterOptions {
    fn default() -> Self {
        FakeMasterOptions {
            agent_id: "agent-1".into(),
            term: 1,
            ping_interval_seconds: 0.5,
        }
    }
}

/// The service half: answers registrations and pings, forwards every message.
struct Service {
    options: FakeMasterOptions,
    from_agent: mpsc::UnboundedSender<pb::AgentMessage>,
    to_agent: Arc<Mutex<Option<ToAgent>>>,
}

#[tonic::async_trait]
impl AgentMaster for Service {
    type SessionStream = UnboundedReceiverStream<Result<pb::MasterMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::unbounded_channel();
        *lock(&self.to_agent) = Some(tx.clone());
        let forward = self.from_agent.clone();
        let options = self.options.clone();
        tokio::spawn(async move {
            while let Ok(Some(msg)) = inbound.message().await {
                let reply = match &msg.msg {
                    Some(agent_message::Msg::Register(_)) => {
                        Some(Msg::Registered(pb::master_message::Registered {
                            agent_id: Some(pb::AgentId {
                                value: options.agent_id.clone(),
                            }),
                            ping_interval_seconds: options.ping_interval_seconds,
                        }))
                    }
                    Some(agent_message::Msg::Ping(_)) => {
                        Some(Msg::Pong(pb::master_message::Pong {}))
                    }
                    _ => None,
                };
                if let Some(reply) = reply {
                    let _ = tx.send(Ok(pb::MasterMessage {
                        term: options.term,
                        msg: Some(reply),
                    }));
                }
                if forward.send(msg).is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Only single assignments happen under the lock: a poisoned one is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A fake leading master serving on a loopback port. See the module docs.
pub struct FakeMaster {
    address: String,
    options: FakeMasterOptions,
    from_agent: mpsc::UnboundedReceiver<pb::AgentMessage>,
    to_agent: Arc<Mutex<Option<ToAgent>>>,
}

impl FakeMaster {
    /// Starts a fake master with the default options (agent id `agent-1`, term 1).
    pub async fn start() -> FakeMaster {
        Self::start_with(FakeMasterOptions::default()).await
    }

    /// Starts a fake master on a fresh loopback port. Needs a tokio runtime.
    pub async fn start_with(options: FakeMasterOptions) -> FakeMaster {
        let (tx, rx) = mpsc::unbounded_channel();
        let to_agent = Arc::new(Mutex::new(None));
        let address = serve(AgentMasterServer::new(Service {
            options: options.clone(),
            from_agent: tx,
            to_agent: to_agent.clone(),
        }))
        .await;
        FakeMaster {
            address,
            options,
            from_agent: rx,
            to_agent,
        }
    }

    /// The `host:port` the agent dials (its `--master`).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The term the fake announces.
    pub fn term(&self) -> u64 {
        self.options.term
    }

    /// True once an agent has opened a session.
    pub fn has_session(&self) -> bool {
        lock(&self.to_agent).is_some()
    }

    /// Sends `msg` at the fake's term on the current session. Without a session, or on
    /// one the agent already closed, the message is lost, as on a real stream.
    pub fn send(&self, msg: Msg) {
        self.send_at(self.options.term, msg);
    }

    /// [`Self::send`] at another term (to test fencing of deposed leaders).
    pub fn send_at(&self, term: u64, msg: Msg) {
        if let Some(tx) = lock(&self.to_agent).as_ref() {
            let _ = tx.send(Ok(pb::MasterMessage {
                term,
                msg: Some(msg),
            }));
        }
    }

    /// The next message from the agent other than a ping, waiting up to [`QUIET_LIMIT`].
    pub async fn next(&mut self) -> agent_message::Msg {
        loop {
            let msg = tokio::time::timeout(QUIET_LIMIT, self.from_agent.recv())
                .await
                .expect("the agent went quiet")
                .expect("the fake master stopped");
            match msg.msg {
                Some(agent_message::Msg::Ping(_)) | None => continue,
                Some(m) => return m,
            }
        }
    }

    /// A message from the agent already received (pings included), without waiting.
    pub fn try_next(&mut self) -> Option<pb::AgentMessage> {
        self.from_agent.try_recv().ok()
    }

    /// Waits for the agent's next message and asserts it is a registration.
    pub async fn register(&mut self) -> agent_message::Register {
        match self.next().await {
            agent_message::Msg::Register(r) => r,
            other => panic!("expected a registration, got {other:?}"),
        }
    }
}

/// Serves a follower that refuses every session with a `NotLeader` naming `leader`, and
/// returns its address.
pub async fn serve_follower(leader: &str) -> String {
    serve(AgentMasterServer::new(Follower {
        leader: leader.to_string(),
    }))
    .await
}

struct Follower {
    leader: String,
}

#[tonic::async_trait]
impl AgentMaster for Follower {
    type SessionStream = UnboundedReceiverStream<Result<pb::MasterMessage, Status>>;

    async fn session(
        &self,
        _request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        Err(not_leader_status(Some(&self.leader)))
    }
}

/// Serves `service` on a fresh loopback port (port 0: the test learns the address before
/// anything dials it) and returns the address.
async fn serve<S: AgentMaster>(service: AgentMasterServer<S>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let address = listener.local_addr().expect("local address").to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    address
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_proto::pb::agent_master_client::AgentMasterClient;

    fn register() -> pb::AgentMessage {
        pb::AgentMessage {
            msg: Some(agent_message::Msg::Register(
                agent_message::Register::default(),
            )),
        }
    }

    #[tokio::test]
    async fn registers_answers_pings_and_forwards_the_rest() {
        let mut master = FakeMaster::start_with(FakeMasterOptions {
            agent_id: "a7".into(),
            term: 4,
            ..Default::default()
        })
        .await;
        assert!(!master.has_session());
        let mut client = AgentMasterClient::connect(format!("http://{}", master.address()))
            .await
            .unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(register()).unwrap();
        let mut inbound = client
            .session(UnboundedReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let first = inbound.message().await.unwrap().unwrap();
        assert_eq!(first.term, 4);
        let Some(Msg::Registered(r)) = first.msg else {
            panic!("{first:?}")
        };
        assert_eq!(r.agent_id.unwrap().value, "a7");
        master.register().await;
        assert!(master.has_session());

        tx.send(pb::AgentMessage {
            msg: Some(agent_message::Msg::Ping(Default::default())),
        })
        .unwrap();
        let pong = inbound.message().await.unwrap().unwrap();
        assert!(matches!(pong.msg, Some(Msg::Pong(_))));

        master.send_at(9, Msg::Shutdown(Default::default()));
        let shutdown = inbound.message().await.unwrap().unwrap();
        assert_eq!(shutdown.term, 9);
        assert!(matches!(shutdown.msg, Some(Msg::Shutdown(_))));
    }

    #[tokio::test]
    async fn a_follower_names_the_leader() {
        let follower = serve_follower("10.0.0.1:5050").await;
        let mut client = AgentMasterClient::connect(format!("http://{follower}"))
            .await
            .unwrap();
        let (_tx, rx) = mpsc::unbounded_channel::<pb::AgentMessage>();
        let status = client
            .session(UnboundedReceiverStream::new(rx))
            .await
            .unwrap_err();
        assert_eq!(
            drover_proto::leader::leader_hint(&status).as_deref(),
            Some("10.0.0.1:5050")
        );
    }
}
