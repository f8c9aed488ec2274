//! The driver against in-process fake masters: subscription, offers and launches,
//! acknowledgements, leader following, resubscription after stream loss, missed
//! heartbeats and NotLeader answers, and every way `run` ends.

mod fake_master;

use std::time::Duration;

use drover_sdk::proto::pb::{self, event};
use drover_sdk::proto::{FrameworkId, OfferId, TaskId};
use drover_sdk::{
    async_trait, run, Driver, OfferPacker, RunOutcome, Scheduler, SchedulerConfig, SdkError,
};
use drover_sdk::{TaskBuilder, TaskRequest};
use fake_master::{offer, update, Behavior, Call, Fake};
use tokio::sync::{mpsc, oneshot};

// ------------------------------------------------------------------ test scheduler

#[derive(Debug)]
enum Seen {
    Subscribed(Driver, FrameworkId, bool),
    Update(pb::TaskStatus),
    Disconnected,
    Error(String),
}

/// Launches 0.1-cpu tasks on every offer while it has some queued, reports everything
/// else to the test.
struct TestScheduler {
    seen: mpsc::UnboundedSender<Seen>,
    pending: std::collections::VecDeque<usize>,
}

#[async_trait]
impl Scheduler for TestScheduler {
    async fn subscribed(&mut self, driver: &Driver, id: FrameworkId, resubscribed: bool) {
        let _ = self
            .seen
            .send(Seen::Subscribed(driver.clone(), id, resubscribed));
    }

    async fn offers(&mut self, driver: &Driver, offers: Vec<pb::Offer>) {
        let p = OfferPacker::new().pack(
            offers,
            &mut self.pending,
            |_| TaskRequest::new(0.1, 10.0),
            |i, o, r| {
                TaskBuilder::new(format!("t-{i}"))
                    .shell("true")
                    .offer(o)
                    .resources(&r)
                    .build()
            },
        );
        for (offer, tasks) in p.launches {
            driver.launch(vec![offer], tasks).await.unwrap();
        }
        driver.decline(p.unused, Some(1.0)).await.unwrap();
    }

    async fn update(&mut self, _driver: &Driver, status: pb::TaskStatus) {
        let _ = self.seen.send(Seen::Update(status));
    }

    async fn error(&mut self, _driver: &Driver, message: String) {
        let _ = self.seen.send(Seen::Error(message));
    }

    async fn disconnected(&mut self, _driver: &Driver) {
        let _ = self.seen.send(Seen::Disconnected);
    }
}

struct Harness {
    seen: mpsc::UnboundedReceiver<Seen>,
    done: oneshot::Receiver<Result<RunOutcome, SdkError>>,
}

fn start(
    masters: &[String],
    configure: impl FnOnce(drover_sdk::SchedulerConfigBuilder) -> drover_sdk::SchedulerConfigBuilder,
) -> Harness {
    let builder = SchedulerConfig::builder("test")
        .masters(masters)
        .backoff(Duration::from_millis(20), Duration::from_millis(100))
        .connect_timeout(Duration::from_millis(500));
    let config = configure(builder).build().unwrap();
    let (tx, seen) = mpsc::unbounded_channel();
    let (done_tx, done) = oneshot::channel();
    tokio::spawn(async move {
        let r = run(
            config,
            TestScheduler {
                seen: tx,
                pending: (0..10).collect(),
            },
        )
        .await;
        let _ = done_tx.send(r);
    });
    Harness { seen, done }
}

impl Harness {
    async fn next(&mut self) -> Seen {
        tokio::time::timeout(Duration::from_secs(5), self.seen.recv())
            .await
            .expect("timed out waiting for a callback")
            .expect("scheduler gone")
    }

    async fn subscribed(&mut self) -> (Driver, FrameworkId, bool) {
        match self.next().await {
            Seen::Subscribed(d, id, re) => (d, id, re),
            other => panic!("expected subscribed, got {other:?}"),
        }
    }

    async fn outcome(&mut self) -> Result<RunOutcome, SdkError> {
        tokio::time::timeout(Duration::from_secs(5), &mut self.done)
            .await
            .expect("run did not end")
            .unwrap()
    }
}

// ------------------------------------------------------------------ tests

#[tokio::test]
async fn launches_on_offers_acknowledges_updates_and_stops() {
    let m = Fake::start(Behavior::default()).await;
    let mut h = start(&[m.address()], |b| b);
    let (driver, id, resubscribed) = h.subscribed().await;
    assert_eq!(id.as_str(), "fw-1");
    assert!(!resubscribed);
    assert_eq!(driver.framework_id(), Some(id));
    let sub = &m.subscribes()[0];
    let info = sub.framework_info.as_ref().unwrap();
    assert!(info.id.is_none() && info.failover_timeout > 0.0);

    m.send(offer("o-1", "cpus:0.35;mem:100")).await;
    m.send(offer("o-2", "cpus:0.05;mem:100")).await;
    let Call::Accept(accept) = m
        .wait_call("accept", |c| matches!(c, Call::Accept(_)))
        .await
    else {
        unreachable!()
    };
    assert_eq!(accept.offer_ids, vec![OfferId::new("o-1")]);
    let launched = &accept.operations[0].launch.as_ref().unwrap().task_infos;
    assert_eq!(launched.len(), 3);
    assert_eq!(
        accept.header.unwrap().framework_id.unwrap().as_str(),
        "fw-1"
    );
    m.wait_call(
        "decline",
        |c| matches!(c, Call::Decline(d) if d.offer_ids == [OfferId::new("o-2")]),
    )
    .await;

    // Updates with a uuid are acknowledged after the callback; those without are not.
    m.send(update("t-0", pb::TaskState::TaskRunning, b"")).await;
    m.send(update("t-0", pb::TaskState::TaskFinished, b"u-1"))
        .await;
    for want in [pb::TaskState::TaskRunning, pb::TaskState::TaskFinished] {
        assert!(matches!(h.next().await, Seen::Update(s) if s.state() == want));
    }
    let Call::Acknowledge(ack) = m
        .wait_call("ack", |c| matches!(c, Call::Acknowledge(_)))
        .await
    else {
        unreachable!()
    };
    assert_eq!(
        (ack.task_id.unwrap().as_str(), ack.uuid.as_slice()),
        ("t-0", &b"u-1"[..])
    );
    assert_eq!(
        m.calls()
            .iter()
            .filter(|c| matches!(c, Call::Acknowledge(_)))
            .count(),
        1
    );

    driver.kill(TaskId::new("t-1"), None).await.unwrap();
    m.wait_call("kill", |c| matches!(c, Call::Other("kill")))
        .await;

    // A task group: one LAUNCH_GROUP under the default executor.
    let executor = drover_sdk::DefaultExecutor::new("pod")
        .isolated_network()
        .build();
    let tasks = vec![
        TaskBuilder::new("pod-a").shell("true").build(),
        TaskBuilder::new("pod-b").shell("true").build(),
    ];
    driver
        .launch_group(vec![OfferId::new("o-3")], executor, tasks)
        .await
        .unwrap();
    let Call::Accept(group) = m
        .wait_call(
            "launch group",
            |c| matches!(c, Call::Accept(a) if a.offer_ids == [OfferId::new("o-3")]),
        )
        .await
    else {
        unreachable!()
    };
    let op = &group.operations[0];
    assert_eq!(op.r#type, pb::operation::Type::LaunchGroup as i32);
    let g = op.launch_group.as_ref().unwrap();
    let e = g.executor.as_ref().unwrap();
    assert_eq!(e.executor_id.as_ref().unwrap().as_str(), "pod");
    assert_eq!(e.r#type, pb::executor_info::Type::Default as i32);
    assert_eq!(
        e.container.as_ref().unwrap().network,
        pb::container_info::Network::Isolated as i32
    );
    assert_eq!(g.task_group.as_ref().unwrap().tasks.len(), 2);

    driver.stop();
    assert!(matches!(h.outcome().await, Ok(RunOutcome::Stopped)));
    assert!(matches!(driver.revive().await, Err(SdkError::Stopped)));
    assert!(!m.calls().iter().any(|c| matches!(c, Call::Teardown)));
}

#[tokio::test]
async fn follows_the_leader_and_resubscribes_after_the_stream_ends() {
    let leader = Fake::start(Behavior::default()).await;
    let follower = Fake::start(Behavior {
        follower_of: Some(leader.address()),
        ..Default::default()
    })
    .await;
    // Only the follower is configured: the leader is found through its redirect.
    let mut h = start(&[follower.address()], |b| b);
    let (driver, _, _) = h.subscribed().await;
    assert_eq!(driver.master(), Some(leader.address()));

    driver.suppress().await.unwrap();
    leader.close_stream();
    assert!(matches!(h.next().await, Seen::Disconnected));
    let (_, id, resubscribed) = h.subscribed().await;
    assert!(resubscribed);
    let subs = leader.subscribes();
    assert_eq!(subs.len(), 2);
    // Same framework id, and the suppression survives for a new leader's allocator.
    assert_eq!(
        subs[1].framework_info.as_ref().unwrap().id.as_ref(),
        Some(&id)
    );
    assert_eq!(subs[1].suppressed_roles, vec!["*".to_string()]);
    // Implicit reconciliation after resubscribing, on the new stream.
    leader
        .wait_call("reconcile", |c| matches!(c, Call::Reconcile(r) if r.tasks.is_empty() && r.header.as_ref().unwrap().stream_id == "stream-2"))
        .await;

    driver.teardown().await.unwrap();
    assert!(matches!(h.outcome().await, Ok(RunOutcome::TornDown)));
}

#[tokio::test]
async fn missed_heartbeats_trigger_resubscription() {
    let m = Fake::start(Behavior {
        heartbeat: 0.05,
        ..Default::default()
    })
    .await;
    let mut h = start(&[m.address()], |b| b.reconcile_on_resubscribe(false));
    let (driver, _, _) = h.subscribed().await;
    // The master stays silent after SUBSCRIBED: after 3 x 50 ms the driver gives up on it.
    assert!(matches!(h.next().await, Seen::Disconnected));
    let (_, _, resubscribed) = h.subscribed().await;
    assert!(resubscribed);
    assert!(!m.calls().iter().any(|c| matches!(c, Call::Reconcile(_))));
    driver.stop();
    assert!(matches!(h.outcome().await, Ok(RunOutcome::Stopped)));
}

#[tokio::test]
async fn not_leader_answer_to_a_call_moves_to_the_new_leader() {
    let old = Fake::start(Behavior::default()).await;
    let new = Fake::start(Behavior::default()).await;
    let mut h = start(&[old.address()], |b| b);
    let (driver, _, _) = h.subscribed().await;

    // The old leader steps down: calls and new subscriptions are redirected.
    let redirect = Behavior {
        follower_of: Some(new.address()),
        calls_not_leader: Some(new.address()),
        ..Default::default()
    };
    old.set_behavior(redirect);
    match driver.revive().await {
        Err(SdkError::NotLeader { call, leader, .. }) => {
            assert_eq!((call, leader), ("revive", new.address()));
        }
        other => panic!("expected NotLeader, got {other:?}"),
    }
    assert!(matches!(h.next().await, Seen::Disconnected));
    let (_, _, resubscribed) = h.subscribed().await;
    assert!(resubscribed);
    assert_eq!(driver.master(), Some(new.address()));
    driver.revive().await.unwrap();
    driver.stop();
    assert!(matches!(h.outcome().await, Ok(RunOutcome::Stopped)));
}

#[tokio::test]
async fn error_event_ends_run() {
    let m = Fake::start(Behavior::default()).await;
    let mut h = start(&[m.address()], |b| b);
    h.subscribed().await;
    m.send(event::Event::Error(event::Error {
        message: "framework removed".into(),
    }))
    .await;
    assert!(matches!(h.next().await, Seen::Error(m) if m == "framework removed"));
    assert!(matches!(h.outcome().await, Err(SdkError::Framework(m)) if m == "framework removed"));
}

#[tokio::test]
async fn refused_subscription_and_unreachable_masters_end_run() {
    let m = Fake::start(Behavior {
        subscribe_error: Some((tonic::Code::InvalidArgument, "bad role".into())),
        ..Default::default()
    })
    .await;
    let mut h = start(&[m.address()], |b| b);
    match h.outcome().await {
        Err(SdkError::Subscribe { master, status }) => {
            assert_eq!(master, m.address());
            assert_eq!(status.message(), "bad role");
        }
        other => panic!("expected a refused subscription, got {other:?}"),
    }

    // A port nobody listens on (bound, then released).
    let free = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let mut h = start(&[free.to_string()], |b| {
        b.reconnect_timeout(Some(Duration::from_millis(200)))
    });
    assert!(matches!(h.outcome().await, Err(SdkError::NoMaster { .. })));
}

#[tokio::test]
async fn existing_framework_id_resubscribes_from_the_start() {
    let m = Fake::start(Behavior::default()).await;
    let mut h = start(&[m.address()], |b| {
        b.framework_id(FrameworkId::new("fw-old"))
    });
    let (driver, id, resubscribed) = h.subscribed().await;
    assert_eq!(id.as_str(), "fw-old");
    assert!(
        resubscribed,
        "a restarted scheduler takes its framework back"
    );
    m.wait_call("reconcile", |c| matches!(c, Call::Reconcile(_)))
        .await;
    driver.stop();
    assert!(matches!(h.outcome().await, Ok(RunOutcome::Stopped)));
}

#[tokio::test]
async fn stream_closed_by_a_teardown_is_not_a_disconnection() {
    let m = Fake::start(Behavior {
        close_before_teardown_answer: true,
        ..Default::default()
    })
    .await;
    let mut h = start(&[m.address()], |b| b);
    let (driver, _, _) = h.subscribed().await;
    // From outside any callback, as a signal handler would.
    driver.teardown().await.unwrap();
    assert!(matches!(h.outcome().await, Ok(RunOutcome::TornDown)));
    assert!(h.seen.try_recv().is_err(), "no disconnected callback");
    assert_eq!(
        m.subscribes().len(),
        1,
        "no resubscription of a removed framework"
    );
}
