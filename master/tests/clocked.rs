//! Time-dependent master logic under a controlled clock: a real master (real Raft, real
//! RocksDB, real gRPC on loopback) whose clock only moves when the test says so. The agent
//! here is the test itself speaking the agent protocol, so that nothing but the clock decides
//! when a timeout passes.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use drover_master::clock::ManualClock;
use drover_master::config::{Config, Flags};
use drover_proto::pb::{
    self, agent_master_client::AgentMasterClient, operator_client::OperatorClient,
};
use drover_proto::pb::{agent_message::Msg as AgentMsg, scheduler_client::SchedulerClient};
use drover_proto::Resources;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const START_MS: u64 = 1_700_000_000_000;

struct Master {
    addr: String,
    clock: ManualClock,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<()>>,
}

impl Master {
    /// Stops the master and waits until it has stopped (its Raft thread joined), so that
    /// RocksDB is closed before the test process exits.
    async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.served.take() {
            let _ = h.await;
        }
    }
}

async fn start_master(agent_timeout_secs: &str) -> Master {
    let dir = tempfile::tempdir().unwrap();
    let flags = Flags::parse_from([
        "drover-master",
        "--agent-ping-interval-secs",
        "5",
        "--agent-timeout-secs",
        agent_timeout_secs,
        "--offer-timeout-secs",
        "60",
        "--allocation-interval-ms",
        "50",
    ]);
    let mut config = Config::from_flags(&flags).unwrap();
    config.data_dir = dir.path().join("master");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    config.listen = listener.local_addr().unwrap();
    config.http_listen = http.local_addr().unwrap();
    let addr = config.listen.to_string();
    let clock = ManualClock::new(START_MS);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let c = clock.clone();
    let served = tokio::spawn(async move {
        let _ = drover_master::serve_with_clock(config, listener, http, Arc::new(c), async {
            let _ = stopped.await;
        })
        .await;
    });
    let m = Master {
        addr,
        clock,
        _dir: dir,
        stop: Some(stop),
        served: Some(served),
    };
    eventually("the master to lead", || async {
        let mut op = OperatorClient::connect(format!("http://{}", m.addr))
            .await
            .ok()?;
        op.get_health(pb::GetHealthRequest {})
            .await
            .ok()?
            .into_inner()
            .leader
            .then_some(())
    })
    .await;
    m
}

/// Polls `f` (bounded) until it yields `Some`.
async fn eventually<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    drover_testkit::eventually(what, Duration::from_secs(10), Duration::from_millis(25), f).await
}

/// The test speaking the agent protocol: registers and then stays silent unless told.
struct FakeAgent {
    _tx: mpsc::Sender<pb::AgentMessage>,
    _rx: tonic::Streaming<pb::MasterMessage>,
}

async fn register_agent(m: &Master) -> FakeAgent {
    let mut client = AgentMasterClient::connect(format!("http://{}", m.addr))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(16);
    tx.send(pb::AgentMessage {
        msg: Some(AgentMsg::Register(pb::agent_message::Register {
            agent_id: None,
            info: Some(pb::AgentInfo {
                hostname: "fake".into(),
                address: "127.0.0.1:1".into(),
                resources: Resources::parse("cpus:2;mem:1024").unwrap().to_proto(),
                attributes: vec![],
            }),
            tasks: vec![],
            frameworks: vec![],
        })),
    })
    .await
    .unwrap();
    let mut inbound = client
        .session(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = inbound.message().await.unwrap().unwrap();
    assert!(matches!(
        first.msg,
        Some(pb::master_message::Msg::Registered(_))
    ));
    assert!(first.term > 0, "commands carry the leader's term");
    FakeAgent {
        _tx: tx,
        _rx: inbound,
    }
}

async fn agent_states(m: &Master) -> Vec<i32> {
    let mut op = OperatorClient::connect(format!("http://{}", m.addr))
        .await
        .unwrap();
    op.get_agents(pb::GetAgentsRequest {})
        .await
        .unwrap()
        .into_inner()
        .agents
        .iter()
        .map(|a| a.state)
        .collect()
}

async fn subscribe(
    m: &Master,
    failover_timeout: f64,
) -> (
    SchedulerClient<tonic::transport::Channel>,
    tonic::Streaming<pb::Event>,
    pb::CallHeader,
) {
    let mut c = SchedulerClient::connect(format!("http://{}", m.addr))
        .await
        .unwrap();
    let mut events = c
        .subscribe(pb::SubscribeRequest {
            framework_info: Some(pb::FrameworkInfo {
                name: "clocked".into(),
                failover_timeout,
                ..Default::default()
            }),
            suppressed_roles: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let Some(pb::event::Event::Subscribed(s)) = events.message().await.unwrap().unwrap().event
    else {
        panic!()
    };
    (
        c,
        events,
        pb::CallHeader {
            framework_id: s.framework_id,
            stream_id: s.stream_id,
        },
    )
}

/// The next OFFERS or RESCIND event, skipping heartbeats; `None` if nothing comes in `within`.
async fn next_offer_event(
    events: &mut tonic::Streaming<pb::Event>,
    within: Duration,
) -> Option<pb::event::Event> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, events.message()).await {
            Err(_) => return None,
            Ok(m) => match m.unwrap().unwrap().event {
                Some(e @ (pb::event::Event::Offers(_) | pb::event::Event::Rescind(_))) => {
                    return Some(e)
                }
                _ => continue,
            },
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_agent_becomes_unreachable_only_after_its_timeout() {
    let m = start_master("30").await;
    let agent = register_agent(&m).await;
    assert_eq!(
        agent_states(&m).await,
        vec![pb::agent_summary::State::Active as i32]
    );
    // 29 s of silence: still within the 30 s timeout.
    m.clock.advance(29_000);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        agent_states(&m).await,
        vec![pb::agent_summary::State::Active as i32]
    );
    m.clock.advance(2_000);
    eventually("the agent to be marked unreachable", || async {
        (agent_states(&m).await == vec![pb::agent_summary::State::Unreachable as i32]).then_some(())
    })
    .await;
    drop(agent);
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_expire_and_decline_filters_last_refuse_seconds() {
    // The agent must not time out while the clock jumps ahead.
    let m = start_master("100000").await;
    let agent = register_agent(&m).await;
    let (mut c, mut events, header) = subscribe(&m, 3600.0).await;
    let Some(pb::event::Event::Offers(o)) =
        next_offer_event(&mut events, Duration::from_secs(10)).await
    else {
        panic!("no offer")
    };
    let offer_id = o.offers[0].id.clone().unwrap();

    // An offer left unanswered past the offer timeout is rescinded, then offered anew.
    m.clock.advance(61_000);
    match next_offer_event(&mut events, Duration::from_secs(10)).await {
        Some(pb::event::Event::Rescind(r)) => assert_eq!(r.offer_id.unwrap(), offer_id),
        other => panic!("expected a rescind, got {other:?}"),
    }
    let Some(pb::event::Event::Offers(o)) =
        next_offer_event(&mut events, Duration::from_secs(10)).await
    else {
        panic!("no new offer")
    };

    // Declined for 60 s: nothing at 30 s, an offer again after 60 s.
    c.decline(pb::DeclineCall {
        header: Some(header.clone()),
        offer_ids: vec![o.offers[0].id.clone().unwrap()],
        filters: Some(pb::Filters {
            refuse_seconds: Some(60.0),
        }),
    })
    .await
    .unwrap();
    m.clock.advance(30_000);
    assert!(
        next_offer_event(&mut events, Duration::from_millis(800))
            .await
            .is_none(),
        "offered while filtered"
    );
    m.clock.advance(31_000);
    assert!(matches!(
        next_offer_event(&mut events, Duration::from_secs(10)).await,
        Some(pb::event::Event::Offers(_))
    ));
    drop(agent);
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_framework_is_removed_only_after_its_failover_timeout() {
    let m = start_master("30").await;
    let (_c, events, _header) = subscribe(&m, 100.0).await;
    drop(events);
    let frameworks = || async {
        let mut op = OperatorClient::connect(format!("http://{}", m.addr))
            .await
            .unwrap();
        op.get_frameworks(pb::GetFrameworksRequest {})
            .await
            .unwrap()
            .into_inner()
            .frameworks
    };
    eventually("the framework to show as disconnected", || async {
        frameworks()
            .await
            .iter()
            .any(|f| !f.connected)
            .then_some(())
    })
    .await;
    m.clock.advance(99_000);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        frameworks().await.len(),
        1,
        "still within its failover timeout"
    );
    m.clock.advance(2_000);
    eventually("the framework to be removed", || async {
        frameworks().await.is_empty().then_some(())
    })
    .await;
    m.shutdown().await;
}
