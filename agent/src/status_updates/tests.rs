use super::*;

/// A fake clock: every instant is `base + offset`, so the schedule is exact.
struct Clock(Instant);

impl Clock {
    fn at(&self, secs: u64) -> Instant {
        self.0 + Duration::from_secs(secs)
    }
}

fn update(task: &str, state: TaskState, n: u8) -> StatusUpdate {
    StatusUpdate {
        framework_id: FrameworkId::new("fw"),
        status: pb::TaskStatus {
            task_id: Some(drover_proto::TaskId::new(task)),
            state: state as i32,
            uuid: vec![n; 16],
            ..Default::default()
        },
    }
}

fn key(task: &str) -> TaskKey {
    TaskKey::new("fw", task)
}

fn states_of(sent: &[(TaskKey, StatusUpdate)]) -> Vec<(String, TaskState)> {
    sent.iter()
        .map(|(k, u)| (k.task_id.to_string(), u.state()))
        .collect()
}

#[test]
fn only_the_head_is_in_flight_and_order_is_kept() {
    let clock = Clock(Instant::now());
    let mut m = StatusUpdateManager::new(RetryPolicy::default());
    let k = key("t1");
    m.enqueue(&k, update("t1", TaskState::TaskStarting, 1))
        .unwrap();
    m.enqueue(&k, update("t1", TaskState::TaskRunning, 2))
        .unwrap();
    m.enqueue(&k, update("t1", TaskState::TaskFinished, 3))
        .unwrap();

    let sent = m.due(clock.at(0));
    assert_eq!(states_of(&sent), [("t1".into(), TaskState::TaskStarting)]);
    assert!(m.due(clock.at(1)).is_empty(), "nothing more until acked");

    assert_eq!(
        m.acknowledge(&k, &[1; 16]),
        Ack::Accepted { completed: false }
    );
    let sent = m.due(clock.at(1));
    assert_eq!(states_of(&sent), [("t1".into(), TaskState::TaskRunning)]);
    assert_eq!(
        m.acknowledge(&k, &[2; 16]),
        Ack::Accepted { completed: false }
    );
    let sent = m.due(clock.at(2));
    assert_eq!(states_of(&sent), [("t1".into(), TaskState::TaskFinished)]);
    assert_eq!(
        m.acknowledge(&k, &[3; 16]),
        Ack::Accepted { completed: true }
    );
    assert_eq!(m.total_pending(), 0);
    assert_eq!(m.acknowledge(&k, &[3; 16]), Ack::UnknownTask);
    assert!(m.due(clock.at(1000)).is_empty());
}

#[test]
fn streams_of_different_tasks_are_independent() {
    let clock = Clock(Instant::now());
    let mut m = StatusUpdateManager::new(RetryPolicy::default());
    m.enqueue(&key("a"), update("a", TaskState::TaskRunning, 1))
        .unwrap();
    m.enqueue(&key("b"), update("b", TaskState::TaskRunning, 2))
        .unwrap();
    let mut sent = states_of(&m.due(clock.at(0)));
    sent.sort();
    assert_eq!(
        sent,
        [
            ("a".into(), TaskState::TaskRunning),
            ("b".into(), TaskState::TaskRunning)
        ]
    );
}

#[test]
fn retries_back_off_exponentially_up_to_the_cap() {
    let clock = Clock(Instant::now());
    let mut m = StatusUpdateManager::new(RetryPolicy::default());
    let k = key("t");
    m.enqueue(&k, update("t", TaskState::TaskRunning, 1))
        .unwrap();

    let mut sends = Vec::new();
    // Step the fake clock one second at a time for two hours.
    for s in 0..7200 {
        if !m.due(clock.at(s)).is_empty() {
            sends.push(s);
        }
    }
    // 10 s doubling: 0, 10, 30, 70, 150, 310, 630, then every 600 s.
    assert_eq!(&sends[..9], &[0, 10, 30, 70, 150, 310, 630, 1230, 1830]);
    assert!(sends.windows(2).skip(6).all(|w| w[1] - w[0] == 600));
    assert_eq!(m.next_retry(), Some(clock.at(*sends.last().unwrap() + 600)));
}

#[test]
fn an_ack_for_the_wrong_uuid_is_ignored() {
    let clock = Clock(Instant::now());
    let mut m = StatusUpdateManager::new(RetryPolicy::default());
    let k = key("t");
    m.enqueue(&k, update("t", TaskState::TaskRunning, 1))
        .unwrap();
    m.enqueue(&k, update("t", TaskState::TaskFailed, 2))
        .unwrap();
    m.due(clock.at(0));
    // The second update's uuid is not the head's: nothing changes.
    assert_eq!(m.acknowledge(&k, &[2; 16]), Ack::WrongUuid);
    assert_eq!(m.acknowledge(&k, &[9; 16]), Ack::WrongUuid);
    assert_eq!(m.pending(&k), 2);
    // The head is still retried on schedule.
    assert!(m.due(clock.at(9)).is_empty());
    assert_eq!(
        states_of(&m.due(clock.at(10))),
        [("t".into(), TaskState::TaskRunning)]
    );
    assert_eq!(m.acknowledge(&key("other"), &[1; 16]), Ack::UnknownTask);
}

#[test]
fn reregistration_resends_every_head_at_once() {
    let clock = Clock(Instant::now());
    let mut m = StatusUpdateManager::new(RetryPolicy::default());
    m.enqueue(&key("a"), update("a", TaskState::TaskRunning, 1))
        .unwrap();
    m.enqueue(&key("b"), update("b", TaskState::TaskRunning, 2))
        .unwrap();
    assert_eq!(m.due(clock.at(0)).len(), 2);
    assert!(m.due(clock.at(5)).is_empty());
    m.resend_all();
    assert!(m.has_unsent());
    assert_eq!(m.due(clock.at(5)).len(), 2);
    // The backoff restarted from the initial 10 s.
    assert_eq!(m.next_retry(), Some(clock.at(15)));
}

#[test]
fn nothing_is_accepted_after_a_terminal_update() {
    let mut m = StatusUpdateManager::new(RetryPolicy::default());
    let k = key("t");
    m.enqueue(&k, update("t", TaskState::TaskFinished, 1))
        .unwrap();
    assert_eq!(
        m.enqueue(&k, update("t", TaskState::TaskRunning, 2)),
        Err(EnqueueError::AfterTerminal(k.clone()))
    );
    let mut no_uuid = update("u", TaskState::TaskRunning, 0);
    no_uuid.status.uuid.clear();
    assert!(matches!(
        m.enqueue(&key("u"), no_uuid),
        Err(EnqueueError::NoUuid(_))
    ));
    m.enqueue(&key("v"), update("v", TaskState::TaskRunning, 5))
        .unwrap();
    assert!(matches!(
        m.enqueue(&key("v"), update("v", TaskState::TaskFailed, 5)),
        Err(EnqueueError::DuplicateUuid(_))
    ));
}

#[test]
fn a_restored_stream_resumes_where_it_stopped() {
    let clock = Clock(Instant::now());
    let mut m = StatusUpdateManager::new(RetryPolicy::default());
    let k = key("t");
    m.enqueue(&k, update("t", TaskState::TaskRunning, 1))
        .unwrap();
    m.enqueue(&k, update("t", TaskState::TaskFailed, 2))
        .unwrap();
    m.due(clock.at(0));
    m.acknowledge(&k, &[1; 16]);
    let cp = m.checkpoint(&k).unwrap();
    assert_eq!(cp.latest_state, TaskState::TaskFailed as i32);
    assert_eq!(cp.pending.len(), 1);

    let mut restored = StatusUpdateManager::new(RetryPolicy::default());
    restored.restore(k.clone(), cp);
    assert_eq!(restored.latest_state(&k), Some(TaskState::TaskFailed));
    assert_eq!(
        states_of(&restored.due(clock.at(100))),
        [("t".into(), TaskState::TaskFailed)]
    );
    assert_eq!(
        restored.acknowledge(&k, &[2; 16]),
        Ack::Accepted { completed: true }
    );
}
