//! The stream form (`subscribe`) against the in-process fake master: events arrive in
//! order and only when asked for, acknowledgements and reconciliation wait until the
//! previous event was handled, and the driver handle stops and tears down before, during
//! and after the first subscription, ending the stream with `Event::Ended`.

mod fake_master;

use std::time::Duration;

use drover_sdk::proto::pb::{self, event};
use drover_sdk::proto::{AgentId, ExecutorId, OfferId};
use drover_sdk::{
    subscribe, Driver, Event, Events, RunOutcome, SchedulerConfig, SdkError, StreamExt as _,
};
use fake_master::{offer, update, wait_for, Behavior, Call, Fake};
use futures::FutureExt as _;

fn config(masters: &[String]) -> SchedulerConfig {
    SchedulerConfig::builder("stream")
        .masters(masters)
        .backoff(Duration::from_millis(20), Duration::from_millis(100))
        .connect_timeout(Duration::from_millis(500))
        .build()
        .unwrap()
}

/// The next event; a guard against a hang, not a bound on the SDK.
async fn next(events: &mut Events) -> Option<Event> {
    tokio::time::timeout(Duration::from_secs(30), events.next())
        .await
        .expect("no event within 30 s")
}

async fn ended(events: &mut Events) -> Result<RunOutcome, SdkError> {
    match next(events).await {
        Some(Event::Ended(result)) => {
            assert!(next(events).await.is_none(), "nothing after Ended");
            result
        }
        other => panic!("expected Ended, got {other:?}"),
    }
}

async fn subscribed(events: &mut Events) -> (String, bool) {
    match next(events).await {
        Some(Event::Subscribed {
            framework_id,
            resubscribed,
        }) => (framework_id.to_string(), resubscribed),
        other => panic!("expected Subscribed, got {other:?}"),
    }
}

fn acks(m: &Fake) -> usize {
    m.calls()
        .iter()
        .filter(|c| matches!(c, Call::Acknowledge(_)))
        .count()
}

#[test]
fn the_handles_can_move_anywhere() {
    fn send_sync<T: Send + Sync + Clone + 'static>() {}
    fn send<T: Send + 'static>() {}
    send_sync::<Driver>();
    send::<Events>();
}

#[tokio::test]
async fn events_arrive_in_order_and_updates_are_acknowledged_once_handled() {
    let m = Fake::start(Behavior::default()).await;
    let (driver, mut events) = subscribe(config(&[m.address()]));
    assert!(driver.framework_id().is_none());
    assert_eq!(subscribed(&mut events).await, ("fw-1".to_string(), false));
    assert_eq!(driver.framework_id().unwrap().as_str(), "fw-1");
    assert_eq!(driver.master(), Some(m.address()));

    m.send(offer("o-1", "cpus:1;mem:64")).await;
    m.send(event::Event::Rescind(event::Rescind {
        offer_id: Some(OfferId::new("o-1")),
    }))
    .await;
    m.send(update("t-1", pb::TaskState::TaskRunning, b"u-1"))
        .await;
    m.send(event::Event::Message(event::Message {
        agent_id: Some(AgentId::new("agent-1")),
        executor_id: Some(ExecutorId::new("ex-1")),
        data: b"hi".to_vec(),
    }))
    .await;
    // Heartbeats never reach the framework.
    m.send(event::Event::Heartbeat(event::Heartbeat {})).await;
    m.send(event::Event::Failure(event::Failure {
        agent_id: Some(AgentId::new("agent-2")),
        executor_id: None,
        status: None,
    }))
    .await;

    assert!(
        matches!(next(&mut events).await, Some(Event::Offers(o)) if o[0].id == Some(OfferId::new("o-1")))
    );
    assert!(matches!(next(&mut events).await, Some(Event::Rescind(id)) if id.as_str() == "o-1"));
    match next(&mut events).await {
        Some(Event::Update(s)) => {
            assert_eq!(s.state(), pb::TaskState::TaskRunning);
            assert_eq!(s.task_id.unwrap().as_str(), "t-1");
        }
        other => panic!("expected the update, got {other:?}"),
    }
    // The update is being handled: it is acknowledged only once the next event is asked
    // for, so a framework that dies while handling it sees it again.
    assert_eq!(acks(&m), 0);
    match next(&mut events).await {
        Some(Event::Message {
            agent_id,
            executor_id,
            data,
        }) => assert_eq!(
            (agent_id.as_str(), executor_id.as_str(), data.as_slice()),
            ("agent-1", "ex-1", &b"hi"[..])
        ),
        other => panic!("expected the message, got {other:?}"),
    }
    let Call::Acknowledge(ack) = m
        .wait_call("ack", |c| matches!(c, Call::Acknowledge(_)))
        .await
    else {
        unreachable!()
    };
    assert_eq!(
        (ack.task_id.unwrap().as_str(), ack.uuid.as_slice()),
        ("t-1", &b"u-1"[..])
    );
    assert!(matches!(
        next(&mut events).await,
        Some(Event::Failure { agent_id, executor_id: None, status: None }) if agent_id.as_str() == "agent-2"
    ));
    assert_eq!(acks(&m), 1);

    driver.stop();
    assert!(matches!(ended(&mut events).await, Ok(RunOutcome::Stopped)));
    assert!(matches!(driver.revive().await, Err(SdkError::Stopped)));
    assert!(!m.calls().iter().any(|c| matches!(c, Call::Teardown)));
}

#[tokio::test]
async fn stop_before_the_first_poll_ends_the_stream_without_subscribing() {
    let m = Fake::start(Behavior::default()).await;
    let (driver, mut events) = subscribe(config(&[m.address()]));
    // Before the first subscription, calls are refused at once, not queued.
    assert!(matches!(
        driver.suppress().await,
        Err(SdkError::Disconnected)
    ));
    driver.stop();
    assert!(matches!(ended(&mut events).await, Ok(RunOutcome::Stopped)));
    assert_eq!(m.attempts(), 0, "no subscription was attempted");
    assert!(m.calls().is_empty(), "the refused suppress was never sent");
    assert!(matches!(driver.revive().await, Err(SdkError::Stopped)));
}

#[tokio::test]
async fn teardown_before_the_first_subscription_ends_the_stream_without_a_call() {
    let m = Fake::start(Behavior::default()).await;
    let (driver, mut events) = subscribe(config(&[m.address()]));
    // No framework id yet: no master knows the framework, so there is nothing to remove.
    driver.teardown().await.unwrap();
    assert!(matches!(ended(&mut events).await, Ok(RunOutcome::TornDown)));
    assert_eq!(m.attempts(), 0);
    assert!(m.calls().is_empty());
    assert!(matches!(driver.teardown().await, Err(SdkError::Stopped)));
}

#[tokio::test]
async fn stop_from_another_task_ends_the_stream_while_no_master_answers() {
    // The master answers UNAVAILABLE (still starting) for as long as the test wants.
    let m = Fake::start(Behavior {
        subscribe_error: Some((tonic::Code::Unavailable, "starting".into())),
        ..Default::default()
    })
    .await;
    let (driver, mut events) = subscribe(config(&[m.address()]));
    let consumer = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(event) = events.next().await {
            seen.push(event);
        }
        seen
    });
    // Retrying: the loop is inside its backoff between rounds.
    wait_for("two subscription attempts", || {
        (m.attempts() >= 2).then_some(())
    })
    .await;
    driver.stop();
    let seen = tokio::time::timeout(Duration::from_secs(30), consumer)
        .await
        .expect("the stream did not end")
        .unwrap();
    assert!(
        matches!(seen.as_slice(), [Event::Ended(Ok(RunOutcome::Stopped))]),
        "{seen:?}"
    );
    assert!(m.subscribes().is_empty());
}

#[tokio::test]
async fn teardown_after_subscribing_ends_the_stream_before_further_events() {
    let m = Fake::start(Behavior::default()).await;
    let (driver, mut events) = subscribe(config(&[m.address()]));
    subscribed(&mut events).await;
    m.send(offer("o-1", "cpus:1;mem:64")).await;
    m.send(offer("o-2", "cpus:1;mem:64")).await;
    assert!(matches!(next(&mut events).await, Some(Event::Offers(_))));

    // From another task, as a signal handler would.
    let handle = driver.clone();
    tokio::spawn(async move { handle.teardown().await })
        .await
        .unwrap()
        .unwrap();
    // The second offer is not handed out: the framework is gone.
    assert!(matches!(ended(&mut events).await, Ok(RunOutcome::TornDown)));
    assert_eq!(
        m.calls()
            .iter()
            .filter(|c| matches!(c, Call::Teardown))
            .count(),
        1
    );
    assert_eq!(m.subscribes().len(), 1, "no resubscription");
    assert!(matches!(
        driver.kill("t-1".into(), None).await,
        Err(SdkError::Stopped)
    ));
}

#[tokio::test]
async fn a_lost_stream_is_a_disconnected_event_then_a_resubscription() {
    let m = Fake::start(Behavior::default()).await;
    let (driver, mut events) = subscribe(config(&[m.address()]));
    subscribed(&mut events).await;
    m.close_stream();
    assert!(matches!(next(&mut events).await, Some(Event::Disconnected)));
    assert!(!driver.is_connected());
    assert!(matches!(driver.revive().await, Err(SdkError::Disconnected)));
    assert_eq!(subscribed(&mut events).await, ("fw-1".to_string(), true));
    let subs = m.subscribes();
    assert_eq!(
        subs[1]
            .framework_info
            .as_ref()
            .unwrap()
            .id
            .as_ref()
            .unwrap()
            .as_str(),
        "fw-1"
    );
    // Implicit reconciliation waits until the Subscribed event was handled.
    assert!(!m.calls().iter().any(|c| matches!(c, Call::Reconcile(_))));
    m.send(offer("o-9", "cpus:1;mem:64")).await;
    assert!(matches!(next(&mut events).await, Some(Event::Offers(_))));
    // Sent (and answered) on the new stream before the offer was handed out.
    assert!(m.calls().iter().any(|c| matches!(c,
        Call::Reconcile(r) if r.tasks.is_empty() && r.header.as_ref().unwrap().stream_id == "stream-2")));
    driver.stop();
    assert!(matches!(ended(&mut events).await, Ok(RunOutcome::Stopped)));
}

#[tokio::test]
async fn an_error_event_is_followed_by_the_end_of_the_stream() {
    let m = Fake::start(Behavior::default()).await;
    let (driver, mut events) = subscribe(config(&[m.address()]));
    subscribed(&mut events).await;
    m.send(event::Event::Error(event::Error {
        message: "framework removed".into(),
    }))
    .await;
    m.send(offer("o-1", "cpus:1;mem:64")).await;
    assert!(matches!(next(&mut events).await, Some(Event::Error(e)) if e == "framework removed"));
    assert!(matches!(
        ended(&mut events).await,
        Err(SdkError::Framework(e)) if e == "framework removed"
    ));
    assert!(matches!(driver.revive().await, Err(SdkError::Stopped)));
}

#[tokio::test]
async fn a_refused_subscription_is_the_only_event() {
    let m = Fake::start(Behavior {
        subscribe_error: Some((tonic::Code::PermissionDenied, "role not allowed".into())),
        ..Default::default()
    })
    .await;
    let (_driver, mut events) = subscribe(config(&[m.address()]));
    match ended(&mut events).await {
        Err(SdkError::Subscribe { master, status }) => {
            assert_eq!(master, m.address());
            assert_eq!(status.message(), "role not allowed");
        }
        other => panic!("expected a refused subscription, got {other:?}"),
    }
}

#[tokio::test]
async fn abandoned_next_calls_lose_no_event() {
    let m = Fake::start(Behavior::default()).await;
    let (driver, mut events) = subscribe(config(&[m.address()]));
    subscribed(&mut events).await;
    for i in 0..20 {
        m.send(update(&format!("t-{i}"), pb::TaskState::TaskRunning, b"u"))
            .await;
    }
    // Every `next()` is polled once and dropped, as the losing branch of a select is.
    let mut tasks = Vec::new();
    while tasks.len() < 20 {
        match events.next().now_or_never() {
            Some(Some(Event::Update(s))) => tasks.push(s.task_id.unwrap().to_string()),
            Some(other) => panic!("unexpected {other:?}"),
            None => tokio::task::yield_now().await,
        }
    }
    let want: Vec<String> = (0..20).map(|i| format!("t-{i}")).collect();
    assert_eq!(tasks, want);
    wait_for("19 acks", || (acks(&m) >= 19).then_some(())).await;
    driver.stop();
    assert!(matches!(ended(&mut events).await, Ok(RunOutcome::Stopped)));
}

#[tokio::test]
async fn dropping_the_events_finishes_the_driver() {
    let m = Fake::start(Behavior::default()).await;
    let (driver, mut events) = subscribe(config(&[m.address()]));
    subscribed(&mut events).await;
    driver.revive().await.unwrap();
    drop(events);
    assert!(!driver.is_connected());
    assert!(matches!(driver.revive().await, Err(SdkError::Stopped)));
    assert_eq!(
        m.calls()
            .iter()
            .filter(|c| matches!(c, Call::Revive))
            .count(),
        1
    );
}
