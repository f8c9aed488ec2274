//! The queues behind framework streams and agent connections, and the execution of the
//! leader's send, open and close effects on them.
//!
//! Every queue is bounded ([`STREAM_QUEUE`]): a peer that falls that far behind is
//! disconnected rather than allowed to grow the master's memory without bound. The
//! leader hears of it ([`crate::leader::Leader::framework_stream_lost`],
//! [`crate::leader::Leader::agent_connection_lost`])
//! and decides what follows. Best-effort messages (executor messages either way) join a
//! queue only while it has plenty of room ([`best_effort_room`]), so that they can never
//! be what fills it.

use std::collections::BTreeMap;

use tokio::sync::mpsc::{self, error::TrySendError};
use tonic::Status;

use drover_proto::pb;
use drover_proto::{AgentId, FrameworkId};

use super::{Attach, Core, Opened};
use crate::error::MasterError;
use crate::leader::{agent_not_connected, agent_too_busy, best_effort_room, Effect, Farewell};
use crate::metrics::Metrics;
use crate::registry::StatusUpdate;

/// Capacity of each framework's and agent's outgoing queue.
pub const STREAM_QUEUE: usize = 65_536;

pub type EventTx = mpsc::Sender<Result<pb::Event, Status>>;
pub type AgentTx = mpsc::Sender<Result<pb::MasterMessage, Status>>;

/// A framework's open stream.
pub struct FrameworkStream {
    pub stream_id: String,
    pub tx: EventTx,
}

/// An agent's open connection.
pub struct AgentConnection {
    pub conn_id: u64,
    pub tx: AgentTx,
}

/// The open streams, by framework and agent (the same keys as the leader's sessions).
#[derive(Default)]
pub struct Streams {
    pub frameworks: BTreeMap<FrameworkId, FrameworkStream>,
    pub agents: BTreeMap<AgentId, AgentConnection>,
}

impl Streams {
    /// The framework's stream, if it is still `stream_id` (the one an effect was decided
    /// for).
    fn framework(&self, fw: &FrameworkId, stream_id: &str) -> Option<&FrameworkStream> {
        self.frameworks.get(fw).filter(|s| s.stream_id == stream_id)
    }

    /// The agent's connection, if it is still `conn_id`.
    fn agent(&self, agent: &AgentId, conn_id: u64) -> Option<&AgentConnection> {
        self.agents.get(agent).filter(|c| c.conn_id == conn_id)
    }

    /// Removes the framework's stream if it is still `stream_id`.
    fn take_framework(&mut self, fw: &FrameworkId, stream_id: &str) -> Option<FrameworkStream> {
        self.framework(fw, stream_id)?;
        self.frameworks.remove(fw)
    }

    /// Removes the agent's connection if it is still `conn_id`.
    fn take_agent(&mut self, agent: &AgentId, conn_id: u64) -> Option<AgentConnection> {
        self.agent(agent, conn_id)?;
        self.agents.remove(agent)
    }
}

/// The agent's connection `conn_id` is full or closed: it ends, and the leader decides
/// what follows.
fn agent_lost(
    leader: &mut crate::leader::Leader,
    streams: &mut Streams,
    agent: &AgentId,
    conn_id: u64,
) -> Vec<Effect> {
    tracing::warn!(agent = %agent, "agent stream is full or closed; disconnecting it");
    streams.agents.remove(agent);
    leader.agent_connection_lost(agent, conn_id)
}

fn wrap(event: pb::event::Event) -> pb::Event {
    pb::Event { event: Some(event) }
}

/// Where the effects that are not sends go.
pub struct Outlets<'a> {
    pub metrics: &'a Metrics,
    /// The status-update batcher.
    pub updates: &'a mpsc::UnboundedSender<StatusUpdate>,
    /// Wakes the allocation loop.
    pub allocate_now: &'a tokio::sync::Notify,
    /// The earliest wake the leader asked for (the housekeeping loop's).
    pub wake: &'a tokio::sync::watch::Sender<Option<u64>>,
    /// Names the leader in a NotLeader error.
    pub named: &'a dyn Fn(MasterError) -> MasterError,
}

impl Core {
    /// Carries out one effect other than a proposal. Returns the leader's effects for
    /// what broke meanwhile (a full stream), and the error to answer the caller with.
    pub fn execute(
        &mut self,
        effect: Effect,
        attach: &mut Attach,
        opened: &mut Opened,
        out: &Outlets<'_>,
    ) -> (Vec<Effect>, Option<MasterError>) {
        let Core { leader, streams } = self;
        match effect {
            Effect::Propose { .. } => unreachable!("proposals are carried out by Master::run"),
            Effect::Event {
                framework,
                stream_id,
                event,
            } => {
                let Some(s) = streams.framework(&framework, &stream_id) else {
                    // That stream ended or was replaced after the leader decided.
                    return (leader.event_not_sent(&framework, &stream_id, event), None);
                };
                let offers = match &event {
                    pb::event::Event::Offers(o) => o.offers.len() as u64,
                    _ => 0,
                };
                match s.tx.try_send(Ok(wrap(event))) {
                    Ok(()) => {
                        Metrics::add(&out.metrics.offers_sent, offers);
                        (Vec::new(), None)
                    }
                    Err(e) => {
                        tracing::warn!(framework = %framework, "framework stream is full or closed; disconnecting it");
                        streams.frameworks.remove(&framework);
                        let unsent = match e {
                            TrySendError::Full(Ok(ev)) | TrySendError::Closed(Ok(ev)) => ev.event,
                            _ => None,
                        };
                        let more = leader.framework_stream_lost(&framework, &stream_id, unsent);
                        (more, None)
                    }
                }
            }
            Effect::EventOrDrop {
                framework,
                stream_id,
                event,
            } => {
                let Some(s) = streams.framework(&framework, &stream_id) else {
                    return (Vec::new(), None);
                };
                if !best_effort_room(s.tx.capacity(), s.tx.max_capacity()) {
                    tracing::debug!(framework = %framework, "dropping a best-effort event: the stream is short of room");
                    return (Vec::new(), None);
                }
                match s.tx.try_send(Ok(wrap(event))) {
                    Ok(()) | Err(TrySendError::Full(_)) => (Vec::new(), None),
                    Err(TrySendError::Closed(_)) => {
                        streams.frameworks.remove(&framework);
                        (
                            leader.framework_stream_lost(&framework, &stream_id, None),
                            None,
                        )
                    }
                }
            }
            Effect::ToAgent {
                agent,
                conn_id,
                message,
            } => {
                let Some(c) = streams.agent(&agent, conn_id) else {
                    // That connection ended or was replaced after the leader decided.
                    return (Vec::new(), None);
                };
                match c.tx.try_send(Ok(message)) {
                    Ok(()) => (Vec::new(), None),
                    Err(_) => (agent_lost(leader, streams, &agent, conn_id), None),
                }
            }
            Effect::Relay {
                agent,
                conn_id,
                executor,
                what,
                lossy,
                message,
            } => {
                let not_connected = || agent_not_connected(&agent, &executor, what);
                let too_much = || agent_too_busy(&agent, &executor, what);
                let Some(c) = streams.agent(&agent, conn_id) else {
                    return (Vec::new(), Some(not_connected()));
                };
                if lossy && !best_effort_room(c.tx.capacity(), c.tx.max_capacity()) {
                    return (Vec::new(), Some(too_much()));
                }
                match c.tx.try_send(Ok(message)) {
                    Ok(()) => (Vec::new(), None),
                    Err(TrySendError::Full(_)) if lossy => (Vec::new(), Some(too_much())),
                    Err(_) => (
                        agent_lost(leader, streams, &agent, conn_id),
                        Some(not_connected()),
                    ),
                }
            }
            Effect::OpenFrameworkStream {
                framework,
                stream_id,
            } => {
                if let Attach::Framework(tx) = std::mem::replace(attach, Attach::None) {
                    streams.frameworks.insert(
                        framework.clone(),
                        FrameworkStream {
                            stream_id: stream_id.clone(),
                            tx,
                        },
                    );
                    opened.framework = Some((framework, stream_id));
                }
                (Vec::new(), None)
            }
            Effect::CloseFrameworkStream {
                framework,
                stream_id,
                farewell,
            } => {
                if let Some(s) = streams.take_framework(&framework, &stream_id) {
                    let last = match farewell {
                        Farewell::Quietly => None,
                        Farewell::ErrorEvent(message) => {
                            Some(Ok(wrap(pb::event::Event::Error(pb::event::Error {
                                message,
                            }))))
                        }
                        Farewell::Error(e) => Some(Err(Status::from((out.named)(e)))),
                    };
                    if let Some(last) = last {
                        let _ = s.tx.try_send(last);
                    }
                }
                (Vec::new(), None)
            }
            Effect::OpenAgentConnection { agent, conn_id } => {
                if let Attach::Agent(tx) = std::mem::replace(attach, Attach::None) {
                    streams
                        .agents
                        .insert(agent.clone(), AgentConnection { conn_id, tx });
                    opened.agent = Some((agent, conn_id));
                }
                (Vec::new(), None)
            }
            Effect::CloseAgentConnection {
                agent,
                conn_id,
                farewell,
            } => {
                if let Some(c) = streams.take_agent(&agent, conn_id) {
                    if let Farewell::Error(e) = farewell {
                        let _ = c.tx.try_send(Err(Status::from((out.named)(e))));
                    }
                }
                (Vec::new(), None)
            }
            Effect::CommitUpdate(update) => {
                let _ = out.updates.send(update);
                (Vec::new(), None)
            }
            Effect::Allocate => {
                out.allocate_now.notify_one();
                (Vec::new(), None)
            }
            Effect::Wake { at_ms } => {
                out.wake.send_if_modified(|wake| {
                    let earlier = wake.is_none_or(|w| at_ms < w);
                    if earlier {
                        *wake = Some(at_ms);
                    }
                    earlier
                });
                (Vec::new(), None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::{watch, Notify};

    use super::*;
    use crate::leader::{AgentSession, FrameworkSession, Leader, SequentialIds, Settings};

    fn core() -> Core {
        let settings = Settings {
            master_id: 1,
            master_address: "m:1".into(),
            heartbeat_interval_seconds: 1.0,
            agent_ping_interval_seconds: 1.0,
            agent_timeout_ms: 1,
            offer_timeout_ms: 1,
        };
        Core {
            leader: Leader::new(
                settings,
                Box::new(SequentialIds::new("t")),
                Arc::new(Metrics::default()),
            ),
            streams: Streams::default(),
        }
    }

    /// What [`Outlets`] point at, for a test.
    struct Sinks {
        metrics: Metrics,
        updates: mpsc::UnboundedSender<StatusUpdate>,
        allocate_now: Notify,
        wake: watch::Sender<Option<u64>>,
    }

    fn unnamed(e: MasterError) -> MasterError {
        e
    }

    impl Sinks {
        fn new() -> Self {
            Sinks {
                metrics: Metrics::default(),
                updates: mpsc::unbounded_channel().0,
                allocate_now: Notify::new(),
                wake: watch::Sender::new(None),
            }
        }

        fn outlets(&self) -> Outlets<'_> {
            Outlets {
                metrics: &self.metrics,
                updates: &self.updates,
                allocate_now: &self.allocate_now,
                wake: &self.wake,
                named: &unnamed,
            }
        }
    }

    /// The shell holds `fw`'s stream `stream_id`, sending to `tx`.
    fn open_stream(core: &mut Core, fw: &FrameworkId, stream_id: &str, tx: EventTx) {
        let stream_id = stream_id.to_string();
        core.streams
            .frameworks
            .insert(fw.clone(), FrameworkStream { stream_id, tx });
    }

    /// The leader has `fw` subscribed on `stream_id`.
    fn subscribed(core: &mut Core, fw: &FrameworkId, stream_id: &str) {
        let session = FrameworkSession {
            stream_id: stream_id.into(),
            suppressed: false,
            filters: Default::default(),
        };
        core.leader.frameworks.insert(fw.clone(), session);
    }

    fn run(core: &mut Core, effect: Effect) -> (Vec<Effect>, Option<MasterError>) {
        let sinks = Sinks::new();
        let out = sinks.outlets();
        core.execute(effect, &mut Attach::None, &mut Opened::default(), &out)
    }

    #[test]
    fn the_shell_keeps_the_earliest_wake_asked_for() {
        let mut core = core();
        let sinks = Sinks::new();
        let out = sinks.outlets();
        for at_ms in [500, 900, 300, 300, 700] {
            let (more, error) = core.execute(
                Effect::Wake { at_ms },
                &mut Attach::None,
                &mut Opened::default(),
                &out,
            );
            assert!(more.is_empty() && error.is_none());
        }
        assert_eq!(*sinks.wake.borrow(), Some(300));
    }

    fn message(data: &[u8]) -> pb::MasterMessage {
        pb::MasterMessage {
            term: 1,
            msg: Some(pb::master_message::Msg::FrameworkMessage(
                pb::master_message::FrameworkMessage {
                    framework_id: Some(FrameworkId::new("fw")),
                    executor_id: Some(pb::ExecutorId::new("ex")),
                    data: data.to_vec(),
                },
            )),
        }
    }

    fn relay(agent: &AgentId, data: &[u8]) -> Effect {
        Effect::Relay {
            agent: agent.clone(),
            conn_id: 1,
            executor: pb::ExecutorId::new("ex"),
            what: "send the message again",
            lossy: true,
            message: message(data),
        }
    }

    #[test]
    fn best_effort_sends_drop_the_message_not_the_peer() {
        let mut core = core();
        let agent = AgentId::new("a1");
        let (tx, mut rx) = mpsc::channel(8);
        core.streams
            .agents
            .insert(agent.clone(), AgentConnection { conn_id: 1, tx });
        core.leader
            .agents
            .insert(agent.clone(), AgentSession { conn_id: 1 });
        // Up to half the queue for messages; beyond, they are refused and the agent
        // stays connected.
        for i in 0..4 {
            let (_, error) = run(&mut core, relay(&agent, &[i]));
            assert!(error.is_none(), "message {i}");
        }
        let (_, error) = run(&mut core, relay(&agent, b"x"));
        assert_eq!(
            error.unwrap().to_string(),
            "agent a1 has too much queued; send the message again for executor ex later"
        );
        assert!(core.streams.agents.contains_key(&agent));
        // Commands that must arrive still find room behind the refused messages.
        for _ in 0..4 {
            let effect = Effect::ToAgent {
                agent: agent.clone(),
                conn_id: 1,
                message: message(b"must"),
            };
            assert!(run(&mut core, effect).0.is_empty());
        }
        assert!(core.streams.agents.contains_key(&agent));
        // As the agent reads, messages flow again.
        for _ in 0..5 {
            assert!(rx.try_recv().is_ok());
        }
        assert!(run(&mut core, relay(&agent, b"y")).1.is_none());
        drop(rx);
        let (more, error) = run(&mut core, relay(&agent, b"z"));
        assert_eq!(
            error.unwrap().to_string(),
            "agent a1 is not connected; send the message again for executor ex once it is back"
        );
        assert!(
            !core.streams.agents.contains_key(&agent),
            "a closed stream is dropped"
        );
        assert!(
            !core.leader.agents.contains_key(&agent),
            "and the leader is told"
        );
        assert!(matches!(
            more.as_slice(),
            [Effect::CloseAgentConnection { .. }]
        ));

        let fw = FrameworkId::new("fw");
        let (tx, rx) = mpsc::channel(4);
        open_stream(&mut core, &fw, "s", tx);
        subscribed(&mut core, &fw, "s");
        let lossy = || Effect::EventOrDrop {
            framework: fw.clone(),
            stream_id: "s".into(),
            event: pb::event::Event::Heartbeat(pb::event::Heartbeat {}),
        };
        run(&mut core, lossy());
        run(&mut core, lossy());
        run(&mut core, lossy());
        assert!(
            core.streams.frameworks.contains_key(&fw),
            "the framework stays connected"
        );
        assert_eq!(
            core.streams.frameworks[&fw].tx.capacity(),
            2,
            "the third event was dropped"
        );
        let must = Effect::Event {
            framework: fw.clone(),
            stream_id: "s".into(),
            event: pb::event::Event::Heartbeat(pb::event::Heartbeat {}),
        };
        assert!(
            run(&mut core, must).0.is_empty(),
            "room for what must arrive"
        );
        drop(rx);
        run(&mut core, lossy());
        assert!(
            !core.streams.frameworks.contains_key(&fw),
            "a closed stream is dropped"
        );
        assert!(!core.leader.frameworks.contains_key(&fw));
    }

    #[test]
    fn a_full_stream_disconnects_the_framework_and_keeps_the_update() {
        let mut core = core();
        let fw = FrameworkId::new("fw");
        let (tx, _rx) = mpsc::channel(1);
        open_stream(&mut core, &fw, "s", tx);
        subscribed(&mut core, &fw, "s");
        let update = |n: u8| Effect::Event {
            framework: fw.clone(),
            stream_id: "s".into(),
            event: pb::event::Event::Update(pb::event::Update {
                status: Some(pb::TaskStatus {
                    task_id: Some(pb::TaskId::new(format!("t{n}"))),
                    uuid: vec![n; 16],
                    ..Default::default()
                }),
            }),
        };
        assert!(run(&mut core, update(1)).0.is_empty());
        let (more, _) = run(&mut core, update(2));
        assert!(matches!(
            more.as_slice(),
            [Effect::CloseFrameworkStream { .. }]
        ));
        assert!(!core.streams.frameworks.contains_key(&fw));
        assert!(!core.leader.frameworks.contains_key(&fw));
        assert_eq!(
            core.leader.undelivered[&fw].len(),
            1,
            "t2 waits for its return"
        );
    }

    #[test]
    fn a_failed_send_to_a_replaced_stream_leaves_the_new_session() {
        let mut core = core();
        let fw = FrameworkId::new("fw");
        // The shell still holds the old stream s1 (closed by now); the leader already
        // subscribed the framework on s2.
        let (tx, rx) = mpsc::channel(4);
        drop(rx);
        open_stream(&mut core, &fw, "s1", tx);
        subscribed(&mut core, &fw, "s2");
        // An event decided for s1 before the resubscription fails to go out.
        let (more, _) = run(
            &mut core,
            Effect::Event {
                framework: fw.clone(),
                stream_id: "s1".into(),
                event: pb::event::Event::Heartbeat(pb::event::Heartbeat {}),
            },
        );
        assert!(more.is_empty(), "{more:?}");
        assert_eq!(core.leader.frameworks[&fw].stream_id, "s2");

        let agent = AgentId::new("a1");
        let (tx, rx) = mpsc::channel(4);
        drop(rx);
        core.streams
            .agents
            .insert(agent.clone(), AgentConnection { conn_id: 1, tx });
        core.leader
            .agents
            .insert(agent.clone(), AgentSession { conn_id: 2 });
        let (more, _) = run(
            &mut core,
            Effect::ToAgent {
                agent: agent.clone(),
                conn_id: 1,
                message: message(b"x"),
            },
        );
        assert!(more.is_empty(), "{more:?}");
        assert_eq!(core.leader.agents[&agent].conn_id, 2);
    }

    #[test]
    fn an_update_for_a_framework_without_a_stream_is_kept() {
        let mut core = core();
        let fw = FrameworkId::new("fw");
        let status = pb::TaskStatus {
            task_id: Some(pb::TaskId::new("t1")),
            uuid: vec![1; 16],
            ..Default::default()
        };
        let (more, error) = run(
            &mut core,
            Effect::Event {
                framework: fw.clone(),
                stream_id: "s".into(),
                event: pb::event::Event::Update(pb::event::Update {
                    status: Some(status.clone()),
                }),
            },
        );
        assert!(more.is_empty() && error.is_none());
        let kept: Vec<_> = core.leader.undelivered[&fw].values().cloned().collect();
        assert_eq!(
            kept,
            vec![status],
            "delivered when the framework resubscribes"
        );
    }

    #[test]
    fn nothing_decided_for_a_new_stream_goes_to_the_old_one() {
        let mut core = core();
        let fw = FrameworkId::new("fw");
        let agent = AgentId::new("a1");
        // The leader subscribed the framework on s2 and made it an offer; the shell still
        // holds s1, which is closed a moment later.
        let (tx, mut old_rx) = mpsc::channel(8);
        open_stream(&mut core, &fw, "s1", tx);
        subscribed(&mut core, &fw, "s2");
        let offer = drover_proto::OfferId::new("o1");
        core.leader.offers.insert(
            offer.clone(),
            crate::leader::OfferRec {
                framework_id: fw.clone(),
                agent_id: agent.clone(),
                resources: drover_proto::Resources::parse("cpus:1").unwrap(),
                created_ms: 0,
            },
        );
        let offers = pb::event::Event::Offers(pb::event::Offers {
            offers: vec![pb::Offer {
                id: Some(offer.clone()),
                ..Default::default()
            }],
        });
        let status = pb::TaskStatus {
            task_id: Some(pb::TaskId::new("t1")),
            uuid: vec![1; 16],
            ..Default::default()
        };
        let update = pb::event::Event::Update(pb::event::Update {
            status: Some(status.clone()),
        });
        let heartbeat = pb::event::Event::Heartbeat(pb::event::Heartbeat {});
        let mut more = Vec::new();
        for event in [offers, update, heartbeat] {
            let effect = Effect::Event {
                framework: fw.clone(),
                stream_id: "s2".into(),
                event,
            };
            more.extend(run(&mut core, effect).0);
        }
        assert!(old_rx.try_recv().is_err(), "nothing went to s1");
        assert!(
            core.leader.offers.is_empty(),
            "the offer never sent returns to the pool"
        );
        assert!(matches!(more.as_slice(), [Effect::Allocate]), "{more:?}");
        let kept: Vec<_> = core.leader.undelivered[&fw].values().cloned().collect();
        assert_eq!(kept, vec![status]);
        assert_eq!(core.leader.frameworks[&fw].stream_id, "s2");

        // Likewise a message for an agent's new connection is not sent on its old one.
        let (tx, mut old_rx) = mpsc::channel(8);
        core.streams
            .agents
            .insert(agent.clone(), AgentConnection { conn_id: 1, tx });
        core.leader
            .agents
            .insert(agent.clone(), AgentSession { conn_id: 2 });
        let effect = Effect::ToAgent {
            agent: agent.clone(),
            conn_id: 2,
            message: message(b"x"),
        };
        assert!(run(&mut core, effect).0.is_empty());
        assert!(old_rx.try_recv().is_err(), "nothing went to connection 1");
        let mut relayed = relay(&agent, b"y");
        if let Effect::Relay { conn_id, .. } = &mut relayed {
            *conn_id = 2;
        }
        let (_, error) = run(&mut core, relayed);
        assert!(old_rx.try_recv().is_err());
        assert_eq!(
            error.unwrap().to_string(),
            "agent a1 is not connected; send the message again for executor ex once it is back"
        );
    }

    #[test]
    fn effects_are_carried_out_in_order_up_to_the_first_proposal() {
        use std::collections::VecDeque;

        use crate::leader::Then;
        use crate::registry::Command;

        let mut core = core();
        let fw = FrameworkId::new("fw");
        let (tx, mut rx) = mpsc::channel(8);
        open_stream(&mut core, &fw, "s", tx);
        let event = |n: u32| Effect::Event {
            framework: fw.clone(),
            stream_id: "s".into(),
            event: pb::event::Event::Error(pb::event::Error {
                message: n.to_string(),
            }),
        };
        let proposal = Effect::Propose {
            command: Command::Noop,
            then: Then::Nothing,
        };
        let mut queue: VecDeque<Effect> = vec![event(1), event(2), proposal, event(3)].into();
        let sinks = Sinks::new();
        let out = sinks.outlets();
        let mut run = crate::server::Run::new(Attach::None);
        let next = core.carry_out_until_proposal(&mut queue, &mut run, &out);
        assert!(matches!(next, Some((Command::Noop, Then::Nothing))));
        let sent: Vec<String> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|e| match e.unwrap().event {
                Some(pb::event::Event::Error(e)) => e.message,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(sent, ["1", "2"], "what precedes the proposal, in order");
        assert!(
            queue.len() == 1 && matches!(queue[0], Effect::Event { .. }),
            "what follows it waits for its outcome"
        );
        assert!(core
            .carry_out_until_proposal(&mut queue, &mut run, &out)
            .is_none());
        assert!(rx.try_recv().is_ok());
    }

    #[test]
    fn a_reset_ends_every_stream_with_not_leader() {
        let mut core = core();
        core.leader.start_serving(&Default::default(), 2, 0);
        let fw = FrameworkId::new("fw");
        let stray = FrameworkId::new("stray");
        let agent = AgentId::new("a1");
        let mut receivers = Vec::new();
        // The framework's stream has a session; the stray stream and the agent's
        // connection have none (their sessions ended, the streams did not).
        for (id, stream_id) in [(&fw, "s"), (&stray, "x")] {
            let (tx, rx) = mpsc::channel(4);
            open_stream(&mut core, id, stream_id, tx);
            receivers.push(rx);
        }
        subscribed(&mut core, &fw, "s");
        let (tx, mut agent_rx) = mpsc::channel(4);
        core.streams
            .agents
            .insert(agent.clone(), AgentConnection { conn_id: 7, tx });
        let sinks = Sinks::new();
        let out = sinks.outlets();
        core.reset(3, 0, &out);
        assert!(core.streams.frameworks.is_empty() && core.streams.agents.is_empty());
        for rx in &mut receivers {
            let status = rx.try_recv().unwrap().unwrap_err();
            assert!(
                drover_proto::leader::leader_hint(&status).is_some(),
                "{status}"
            );
            assert!(rx.try_recv().is_err(), "the stream ended");
        }
        let status = agent_rx.try_recv().unwrap().unwrap_err();
        assert!(
            drover_proto::leader::leader_hint(&status).is_some(),
            "{status}"
        );
        assert!(!core.leader.serving);
    }
}
