//! A Nomad-style harness for the leader: a registry seeded by applying commands (it is a
//! pure state machine), a [`Leader`] with sequential ids, and a clock moved by hand. A
//! test feeds calls, agent messages, ticks and apply outcomes, and asserts on the
//! effects. [`Harness::settle`] plays the shell with a Raft that commits every proposal
//! at once: it applies each proposed command to the registry, hands the outcome back to
//! [`Leader::applied`], and returns everything else in the order the shell would carry
//! it out.

use std::sync::Arc;

use drover_proto::pb;
use drover_proto::{AgentId, FrameworkId, Resources, TaskId};

use super::{Effect, Leader, SequentialIds, Settings, Then};
use crate::error::MasterError;
use crate::metrics::Metrics;
use crate::registry::{ApplyOutcome, Command, Registry};

/// Agent timeout of the harness's leader.
pub const AGENT_TIMEOUT_MS: u64 = 15_000;
/// Offer timeout of the harness's leader.
pub const OFFER_TIMEOUT_MS: u64 = 60_000;
/// When the harness's leader was elected.
pub const ELECTED_MS: u64 = 1_000_000;
/// The harness leader's term.
pub const TERM: u64 = 3;

pub struct Harness {
    pub reg: Registry,
    pub leader: Leader,
    pub now: u64,
    pub metrics: Arc<Metrics>,
    /// Every command proposed through [`Harness::settle`], in order.
    pub proposed: Vec<Command>,
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness {
    /// A serving leader (term [`TERM`], elected at [`ELECTED_MS`]) over an empty registry.
    pub fn new() -> Self {
        let metrics = Arc::new(Metrics::default());
        let settings = Settings {
            master_id: 1,
            master_address: "127.0.0.1:5050".into(),
            heartbeat_interval_seconds: 15.0,
            agent_ping_interval_seconds: 5.0,
            agent_timeout_ms: AGENT_TIMEOUT_MS,
            offer_timeout_ms: OFFER_TIMEOUT_MS,
        };
        let mut leader = Leader::new(
            settings,
            Box::new(SequentialIds::new("id")),
            metrics.clone(),
        );
        let _ = leader.reset(TERM, ELECTED_MS);
        let _ = leader.start_serving(&Registry::default(), TERM, ELECTED_MS);
        Self {
            reg: Registry::default(),
            leader,
            now: ELECTED_MS,
            metrics,
            proposed: Vec::new(),
        }
    }

    /// Applies a command straight to the registry (seeding, or what another leader did).
    pub fn apply(&mut self, cmd: Command) -> ApplyOutcome {
        self.reg.apply(&cmd)
    }

    pub fn advance(&mut self, ms: u64) {
        self.now += ms;
    }

    /// Plays the shell with a Raft that commits every proposal (see the module doc).
    pub fn settle(&mut self, effects: Vec<Effect>) -> Result<Vec<Effect>, MasterError> {
        match self.settle_with(effects, |_| None) {
            (_, Some(e)) => Err(e),
            (out, None) => Ok(out),
        }
    }

    /// Plays the shell with a Raft that answers each proposal as `raft` says: `None`
    /// commits it (applies it to the registry), `Some(e)` fails it with `e`. Returns
    /// everything else, in the order the shell would carry it out, and the first error.
    pub fn settle_with(
        &mut self,
        effects: Vec<Effect>,
        mut raft: impl FnMut(&Command) -> Option<MasterError>,
    ) -> (Vec<Effect>, Option<MasterError>) {
        let mut out = Vec::new();
        let mut first_error = None;
        let mut queue: std::collections::VecDeque<Effect> = effects.into();
        while let Some(e) = queue.pop_front() {
            match e {
                Effect::Propose { command, then } => {
                    let outcome = match raft(&command) {
                        None => Ok(self.reg.apply(&command)),
                        Some(e) => Err(e),
                    };
                    self.proposed.push(command);
                    match self.leader.applied(&self.reg, self.now, then, outcome) {
                        Ok(more) => {
                            for m in more.into_iter().rev() {
                                queue.push_front(m);
                            }
                        }
                        Err(e) => {
                            first_error.get_or_insert(e);
                        }
                    }
                }
                other => out.push(other),
            }
        }
        (out, first_error)
    }

    /// Subscribes a new framework (failover timeout in seconds, partition-aware or not);
    /// returns its id and stream id.
    pub fn subscribe(
        &mut self,
        name: &str,
        failover_secs: f64,
        aware: bool,
    ) -> (FrameworkId, String) {
        let info = pb::FrameworkInfo {
            name: name.into(),
            failover_timeout: failover_secs,
            capabilities: if aware {
                vec![pb::framework_info::Capability::PartitionAware as i32]
            } else {
                Vec::new()
            },
            ..Default::default()
        };
        self.subscribe_with(info)
    }

    /// Subscribes with `info` (a resubscription when it names an id).
    pub fn subscribe_with(&mut self, info: pb::FrameworkInfo) -> (FrameworkId, String) {
        let first = self
            .leader
            .subscribe(
                &self.reg,
                self.now,
                pb::SubscribeRequest {
                    framework_info: Some(info),
                    ..Default::default()
                },
            )
            .expect("subscribe");
        let effects = self.settle(first).expect("subscribed");
        effects
            .iter()
            .find_map(|e| match e {
                Effect::OpenFrameworkStream {
                    framework,
                    stream_id,
                } => Some((framework.clone(), stream_id.clone())),
                _ => None,
            })
            .expect("a stream opened")
    }

    /// Registers a new agent with `resources`; returns its id and connection id.
    pub fn add_agent(&mut self, resources: &str) -> (AgentId, u64) {
        let effects = self.register_agent(resources);
        effects
            .iter()
            .find_map(|e| match e {
                Effect::OpenAgentConnection { agent, conn_id } => Some((agent.clone(), *conn_id)),
                _ => None,
            })
            .expect("a connection opened")
    }

    /// Registers a new agent with `resources`; returns the effects of the whole
    /// registration.
    pub fn register_agent(&mut self, resources: &str) -> Vec<Effect> {
        let register = pb::agent_message::Register {
            info: Some(pb::AgentInfo {
                hostname: "host".into(),
                address: "10.0.0.1:5051".into(),
                resources: Resources::parse(resources).expect("resources").to_proto(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let first = self
            .leader
            .register_agent(self.now, register)
            .expect("register");
        self.settle(first).expect("registered")
    }

    /// The agent registers again (a new connection), reporting `tasks`; returns the
    /// effects of the whole re-registration.
    pub fn reregister(
        &mut self,
        agent: &AgentId,
        tasks: Vec<pb::AgentTask>,
    ) -> Result<Vec<Effect>, MasterError> {
        let register = pb::agent_message::Register {
            agent_id: Some(agent.clone()),
            info: Some(pb::AgentInfo {
                hostname: "host".into(),
                address: "10.0.0.1:5051".into(),
                resources: Resources::parse("cpus:4;mem:4096")
                    .expect("resources")
                    .to_proto(),
                ..Default::default()
            }),
            tasks,
            ..Default::default()
        };
        let first = self.leader.register_agent(self.now, register)?;
        self.settle(first)
    }

    /// The header of `fw`'s calls on its current stream.
    pub fn header(&self, fw: &FrameworkId) -> Option<pb::CallHeader> {
        Some(pb::CallHeader {
            framework_id: Some(fw.clone()),
            stream_id: self.leader.frameworks[fw].stream_id.clone(),
        })
    }

    /// One allocation cycle; returns the offers made, per framework (the wake for their
    /// expiry is left out: see [`wakes`]).
    pub fn allocate(&mut self) -> Vec<(FrameworkId, Vec<pb::Offer>)> {
        let effects = self.leader.allocate(&self.reg, self.now);
        effects
            .into_iter()
            .filter_map(|e| match e {
                Effect::Event {
                    framework,
                    event: pb::event::Event::Offers(o),
                    ..
                } => Some((framework, o.offers)),
                Effect::Wake { .. } => None,
                other => panic!("an allocation cycle only sends offers, not {other:?}"),
            })
            .collect()
    }

    /// One housekeeping tick at the current time, settled.
    pub fn tick(&mut self) -> Vec<Effect> {
        let effects = self.leader.tick(&self.reg, self.now);
        self.settle(effects).expect("tick")
    }

    /// Launches `tasks` (`(id, resources)`) of `fw` on `agent` through the gate, from
    /// an offer made now; returns the effects of the whole ACCEPT.
    pub fn launch(
        &mut self,
        fw: &FrameworkId,
        tasks: &[(&str, &str)],
    ) -> Result<Vec<Effect>, MasterError> {
        let offers = self.allocate();
        let offer_ids: Vec<_> = offers
            .iter()
            .filter(|(f, _)| f == fw)
            .flat_map(|(_, o)| o.iter().filter_map(|o| o.id.clone()))
            .collect();
        let call = pb::AcceptCall {
            header: self.header(fw),
            offer_ids,
            operations: vec![launch_op(tasks)],
            // Leftovers return to the pool at once, so the next cycle offers them again.
            filters: Some(pb::Filters {
                refuse_seconds: Some(0.0),
            }),
        };
        let first = self.leader.accept(&self.reg, self.now, call)?;
        self.settle(first)
    }
}

/// A LAUNCH of command tasks `(id, resources)`.
pub fn launch_op(tasks: &[(&str, &str)]) -> pb::Operation {
    pb::Operation {
        r#type: pb::operation::Type::Launch as i32,
        launch: Some(pb::operation::Launch {
            task_infos: tasks
                .iter()
                .map(|(id, res)| pb::TaskInfo {
                    name: id.to_string(),
                    task_id: Some(TaskId::new(*id)),
                    resources: Resources::parse(res).expect("resources").to_proto(),
                    command: Some(pb::CommandInfo {
                        value: "sleep 1000".into(),
                        shell: true,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
        }),
        ..Default::default()
    }
}

/// The events sent to `fw`, in order.
pub fn events_to<'a>(effects: &'a [Effect], fw: &FrameworkId) -> Vec<&'a pb::event::Event> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Event {
                framework, event, ..
            }
            | Effect::EventOrDrop {
                framework, event, ..
            } if framework == fw => Some(event),
            _ => None,
        })
        .collect()
}

/// The statuses of the UPDATE events sent to `fw`, in order.
pub fn updates_to(effects: &[Effect], fw: &FrameworkId) -> Vec<pb::TaskStatus> {
    events_to(effects, fw)
        .into_iter()
        .filter_map(|e| match e {
            pb::event::Event::Update(u) => u.status.clone(),
            _ => None,
        })
        .collect()
}

/// The messages sent to `agent`, in order.
pub fn messages_to<'a>(effects: &'a [Effect], to: &AgentId) -> Vec<&'a pb::MasterMessage> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::ToAgent { agent, message, .. } | Effect::Relay { agent, message, .. }
                if agent == to =>
            {
                Some(message)
            }
            _ => None,
        })
        .collect()
}

/// The times of the wakes in `effects`, in order.
pub fn wakes(effects: &[Effect]) -> Vec<u64> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Wake { at_ms } => Some(*at_ms),
            _ => None,
        })
        .collect()
}

/// The commands proposed by `effects` (without settling them) and what follows each.
pub fn proposals(effects: &[Effect]) -> Vec<(&Command, &Then)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Propose { command, then } => Some((command, then)),
            _ => None,
        })
        .collect()
}
