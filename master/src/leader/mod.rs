//! The leader's decisions, as a pure value: [`Leader`] holds the leader-only soft state
//! (sessions, offers, filters, deadlines) and its methods take the registry (read-only),
//! the time and one input (a scheduler call, an agent message, an apply outcome, a tick),
//! change that state and return [`Effect`]s. It holds no channel, does no I/O, reads no
//! clock and draws no randomness (ids come from an injected [`IdSource`]); the server
//! shell ([`crate::server`]) carries the effects out: it owns the streams, proposes
//! through Raft and feeds apply outcomes and broken streams back in. The same inputs
//! always give the same effects: every map whose iteration order could decide an effect
//! is ordered.
//!
//! - [`frameworks`]: subscribe, calls (accept, decline, revive, suppress, kill,
//!   acknowledge, reconcile, teardown), failover deadlines.
//! - [`offers`]: allocation cycles, offer bookkeeping, rescinds, offer timeouts.
//! - [`gate`]: the ACCEPT gate, a pure check of a request against current state.
//! - [`agents`]: agent sessions, liveness, the status-update batcher's outcomes.
//! - [`launches`]: the messages that launch committed tasks.
//! - [`task_checks`]: validation of tasks' checks for the gate.
//!
//! Time is an input too: the leader's deadlines (offer expiry, agent liveness, failover)
//! are acted on by [`Leader::tick`], and the leader says when it needs one with
//! [`Effect::Wake`]: whenever it creates a deadline earlier than the wake it already
//! asked for, and after every tick for the next one ([`Leader::next_deadline`]). The
//! shell's periodic tick is only a safety net.
//!
//! Multi-step flows are split at Raft: a step returns [`Effect::Propose`] with a
//! [`Then`] saying what to do once the command is applied, and [`Leader::applied`] takes
//! the outcome (see the SUBSCRIBE walk in `docs/architecture.md`).

/// A [`TaskRefusal`] with a formatted message.
macro_rules! refuse {
    ($($arg:tt)*) => {
        $crate::leader::TaskRefusal(format!($($arg)*))
    };
}

pub mod agents;
pub mod frameworks;
pub mod gate;
pub mod launches;
pub mod offers;
pub mod task_checks;

#[cfg(test)]
mod harness;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;

use drover_proto::pb;
use drover_proto::{AgentId, ExecutorId, FrameworkId, OfferId, Resources};

use crate::error::MasterError;
use crate::metrics::Metrics;
use crate::registry::{ApplyOutcome, Command, Registry, StatusUpdate, TaskKey};

/// Why the ACCEPT gate refuses a task (or a task group): the message of the TASK_ERROR
/// the framework gets for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRefusal(pub String);

impl std::fmt::Display for TaskRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for TaskRefusal {
    fn from(why: String) -> Self {
        TaskRefusal(why)
    }
}

impl From<&str> for TaskRefusal {
    fn from(why: &str) -> Self {
        TaskRefusal(why.to_string())
    }
}

/// Where fresh ids (framework, agent, offer and stream ids) come from: random in the
/// daemon, sequential in tests, so that a test can name what the leader will create.
pub trait IdSource: Send {
    /// A new id, never returned before.
    fn fresh(&mut self) -> String;
}

/// Ids `{prefix}-1`, `{prefix}-2`, … (tests and simulations).
#[derive(Debug, Clone)]
pub struct SequentialIds {
    prefix: String,
    next: u64,
}

impl SequentialIds {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            next: 0,
        }
    }
}

impl IdSource for SequentialIds {
    fn fresh(&mut self) -> String {
        self.next += 1;
        format!("{}-{}", self.prefix, self.next)
    }
}

/// What the leader needs to know of the master's configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This master's Raft id and gRPC address (for SUBSCRIBED's `master_info`).
    pub master_id: u64,
    pub master_address: String,
    /// Sent to frameworks in SUBSCRIBED.
    pub heartbeat_interval_seconds: f64,
    /// Sent to agents in Registered.
    pub agent_ping_interval_seconds: f64,
    /// An agent silent this long is marked UNREACHABLE.
    pub agent_timeout_ms: u64,
    /// An offer outstanding this long is rescinded.
    pub offer_timeout_ms: u64,
}

/// A framework subscribed to this leader, on stream `stream_id`.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameworkSession {
    pub stream_id: String,
    pub suppressed: bool,
    /// Agent → time (ms) until which offers from it are filtered out.
    pub filters: BTreeMap<AgentId, u64>,
}

/// An agent connected to this leader, on connection `conn_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentSession {
    pub conn_id: u64,
}

/// An outstanding offer.
#[derive(Debug, Clone, PartialEq)]
pub struct OfferRec {
    pub framework_id: FrameworkId,
    pub agent_id: AgentId,
    pub resources: Resources,
    pub created_ms: u64,
}

/// How a stream or connection ends.
#[derive(Debug)]
pub enum Farewell {
    /// It just ends.
    Quietly,
    /// A framework stream gets a last ERROR event with this message.
    ErrorEvent(String),
    /// The call ends with this error (a gRPC status for the peer).
    Error(MasterError),
}

/// What the shell does for the leader.
#[derive(Debug)]
pub enum Effect {
    /// Propose `command` through Raft, wait until it is applied, and hand the outcome to
    /// [`Leader::applied`] with `then`.
    Propose { command: Command, then: Then },
    /// Send an event on the framework's stream `stream_id` (the subscription the leader
    /// decided for). A full or closed stream disconnects the framework: the shell reports
    /// it with [`Leader::framework_stream_lost`]. When that stream is not the framework's
    /// open one (it ended, or was replaced), the event is not sent and the shell hands it
    /// back with [`Leader::event_not_sent`].
    Event {
        framework: FrameworkId,
        stream_id: String,
        event: pb::event::Event,
    },
    /// A best-effort event (an executor's message) for stream `stream_id`: dropped, the
    /// framework staying connected, when its stream has little room left (see
    /// [`best_effort_room`]), and when that stream is no longer open.
    EventOrDrop {
        framework: FrameworkId,
        stream_id: String,
        event: pb::event::Event,
    },
    /// Send a message on the agent's connection `conn_id`; dropped when that connection
    /// is no longer open (the agent registers again and is told what it missed). A full
    /// or closed connection disconnects the agent: the shell reports it with
    /// [`Leader::agent_connection_lost`].
    ToAgent {
        agent: AgentId,
        conn_id: u64,
        message: pb::MasterMessage,
    },
    /// Relay a framework's request (SHUTDOWN, MESSAGE) to an agent; if it cannot be sent
    /// the caller is answered UNAVAILABLE. `lossy`: a stream short of room refuses the
    /// message instead of disconnecting the agent.
    Relay {
        agent: AgentId,
        conn_id: u64,
        executor: ExecutorId,
        /// What the caller should do, in the error ("ask again", …).
        what: &'static str,
        lossy: bool,
        message: pb::MasterMessage,
    },
    /// Make the stream the subscribing caller opened the framework's stream `stream_id`.
    OpenFrameworkStream {
        framework: FrameworkId,
        stream_id: String,
    },
    /// End the framework's stream `stream_id` (if it is still the current one).
    CloseFrameworkStream {
        framework: FrameworkId,
        stream_id: String,
        farewell: Farewell,
    },
    /// Make the connection the registering agent opened its connection `conn_id`.
    OpenAgentConnection { agent: AgentId, conn_id: u64 },
    /// End the agent's connection `conn_id` (if it is still the current one).
    CloseAgentConnection {
        agent: AgentId,
        conn_id: u64,
        farewell: Farewell,
    },
    /// Hand a validated status update to the batcher (one Raft entry per batch).
    CommitUpdate(StatusUpdate),
    /// Run an allocation cycle soon (resources were freed or a framework arrived).
    Allocate,
    /// Tick the leader ([`Leader::tick`]) no later than `at_ms`: a deadline falls due
    /// then (an offer's expiry, an agent's liveness, a framework's failover). Returned
    /// when a new deadline is earlier than the wake already asked for (or that one has
    /// passed), and by every tick for the next deadline; the shell keeps the earliest it
    /// was asked for.
    Wake { at_ms: u64 },
}

/// What to do once a proposed command is applied.
#[derive(Debug, Clone, PartialEq)]
pub enum Then {
    /// Nothing (failures are only logged).
    Nothing,
    /// SUBSCRIBE: open the stream, send SUBSCRIBED and what was kept undelivered.
    Subscribed {
        framework: FrameworkId,
        info: pb::FrameworkInfo,
        suppressed: bool,
    },
    /// ACCEPT: send the launches that committed, TASK_ERROR for the others.
    Launched {
        framework: FrameworkId,
        agent: AgentId,
        /// Resources the launch holds in `pending` until now.
        used: Resources,
        launch: Vec<pb::TaskInfo>,
        /// The term whose offers the gate checked.
        term: u64,
    },
    /// TEARDOWN or failover timeout: shut the framework down on its agents, end its stream.
    FrameworkRemoved {
        framework: FrameworkId,
        reason: String,
    },
    /// An agent (re)registered: open its connection, send Registered and what it must run.
    AgentRegistered { agent: AgentId },
    /// An agent was marked UNREACHABLE: end its connection, rescind, report its tasks.
    AgentUnreachable { agent: AgentId },
    /// A batch of status updates committed: forward them, acknowledge the stale ones.
    StatusUpdates { updates: Vec<StatusUpdate> },
}

/// Leader-only state, rebuilt from scratch on every election.
pub struct Leader {
    pub settings: Settings,
    ids: Box<dyn IdSource>,
    metrics: Arc<Metrics>,
    /// True once this node leads and has applied everything committed before its term.
    pub serving: bool,
    pub term: u64,
    pub elected_ms: u64,
    pub frameworks: BTreeMap<FrameworkId, FrameworkSession>,
    pub agents: BTreeMap<AgentId, AgentSession>,
    /// When each agent was last heard from, kept across disconnections: an agent's
    /// timeout runs from the last message it sent, not from when its stream broke.
    pub agent_seen: BTreeMap<AgentId, u64>,
    /// When this leader first saw each framework without a subscription (see
    /// [`Leader::expire_frameworks`]).
    pub framework_away: BTreeMap<FrameworkId, u64>,
    pub offers: BTreeMap<OfferId, OfferRec>,
    /// Resources of accepted launches whose proposal is not applied yet.
    pub pending: BTreeMap<AgentId, Resources>,
    /// Updates that could not be delivered because their framework was disconnected;
    /// sent when it resubscribes (latest per task).
    pub undelivered: BTreeMap<FrameworkId, BTreeMap<TaskKey, pb::TaskStatus>>,
    /// The latest container usage each agent reported with its pings, for the task view.
    /// Kept per agent so an agent can only ever describe its own tasks.
    pub usage: BTreeMap<AgentId, BTreeMap<TaskKey, pb::ResourceStatistics>>,
    /// Acknowledgements this leader relayed, so that a repeat of one (a framework that got
    /// an update twice acknowledges it twice) still answers OK after the agent moved on.
    pub recent_acks: frameworks::RecentAcks,
    next_conn_id: u64,
    /// The earliest wake asked for (see [`Effect::Wake`]), so that a stream of inputs
    /// that each push a deadline later (an agent's pings) asks for nothing.
    armed: Option<u64>,
}

/// Most messages queued on one stream for a best-effort send to join them (64 KiB each at
/// most, so 16 MiB per connection).
pub const BEST_EFFORT_QUEUED: usize = 256;

/// Whether a best-effort message may join a stream with `free` of `max` slots free: only
/// while fewer than [`BEST_EFFORT_QUEUED`] (and less than half the stream) are queued,
/// whatever they are, so the rest always stays free for what must arrive.
pub fn best_effort_room(free: usize, max: usize) -> bool {
    let queued = max.saturating_sub(free);
    queued < BEST_EFFORT_QUEUED.min(max / 2)
}

/// Checks a role name: `*` or a non-empty name of letters, digits, `-`, `_`, `.`.
pub fn validate_role(role: &str) -> Result<(), MasterError> {
    let invalid = MasterError::InvalidArgument;
    if role == "*" {
        return Ok(());
    }
    if role.is_empty() || role.len() > 128 {
        return Err(invalid("role must be '*' or 1-128 characters".into()));
    }
    if role.starts_with('.') || role.starts_with('-') {
        return Err(invalid(format!(
            "role '{role}' must not start with '.' or '-'"
        )));
    }
    if let Some(c) = role
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(invalid(format!("role '{role}' contains '{c}'")));
    }
    Ok(())
}

/// [`drover_proto::ids::validate_id`], as the master's error.
pub(crate) fn valid_id(kind: &str, id: &str) -> Result<(), MasterError> {
    drover_proto::ids::validate_id(kind, id).map_err(MasterError::InvalidArgument)
}

/// Whether an active task of `fw` on `agent` names `executor`: what lets a framework
/// shut down or message that executor, and an agent speak for it. A scan of the active
/// tasks, fine for these rare calls (an index would be needed if they became frequent).
pub fn executor_runs_on(
    reg: &Registry,
    fw: &FrameworkId,
    agent: &AgentId,
    executor: &ExecutorId,
) -> bool {
    reg.tasks.values().any(|t| {
        &t.framework_id == fw
            && &t.agent_id == agent
            && t.info
                .executor
                .as_ref()
                .and_then(|e| e.executor_id.as_ref())
                == Some(executor)
    })
}

/// The answer to a relay (SHUTDOWN, MESSAGE) for an agent that is not connected.
pub fn agent_not_connected(agent: &AgentId, executor: &ExecutorId, what: &str) -> MasterError {
    MasterError::Unavailable(format!(
        "agent {agent} is not connected; {what} for executor {executor} once it is back"
    ))
}

/// The answer to a best-effort relay the agent's stream is too short of room for.
pub fn agent_too_busy(agent: &AgentId, executor: &ExecutorId, what: &str) -> MasterError {
    MasterError::Unavailable(format!(
        "agent {agent} has too much queued; {what} for executor {executor} later"
    ))
}

/// The answer to a call made to a master that does not serve; the shell names the leader.
pub fn not_leader() -> MasterError {
    MasterError::NotLeader { leader: None }
}

impl Leader {
    /// A leader that does not serve yet.
    pub fn new(settings: Settings, ids: Box<dyn IdSource>, metrics: Arc<Metrics>) -> Self {
        Self {
            settings,
            ids,
            metrics,
            serving: false,
            term: 0,
            elected_ms: 0,
            frameworks: BTreeMap::new(),
            agents: BTreeMap::new(),
            agent_seen: BTreeMap::new(),
            framework_away: BTreeMap::new(),
            offers: BTreeMap::new(),
            pending: BTreeMap::new(),
            undelivered: BTreeMap::new(),
            usage: BTreeMap::new(),
            recent_acks: Default::default(),
            next_conn_id: 0,
            armed: None,
        }
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub(crate) fn fresh_id(&mut self) -> String {
        self.ids.fresh()
    }

    /// Refuses calls unless this master is the serving leader.
    pub fn ensure_serving(&self) -> Result<u64, MasterError> {
        if self.serving {
            Ok(self.term)
        } else {
            Err(not_leader())
        }
    }

    /// Drops every session and offer: this node no longer leads (or is starting to lead
    /// in `term`). Every stream and connection ends with NotLeader.
    pub fn reset(&mut self, term: u64, now_ms: u64) -> Vec<Effect> {
        let mut effects = Vec::new();
        for (framework, s) in std::mem::take(&mut self.frameworks) {
            effects.push(Effect::CloseFrameworkStream {
                framework,
                stream_id: s.stream_id,
                farewell: Farewell::Error(not_leader()),
            });
        }
        for (agent, s) in std::mem::take(&mut self.agents) {
            effects.push(Effect::CloseAgentConnection {
                agent,
                conn_id: s.conn_id,
                farewell: Farewell::Error(not_leader()),
            });
        }
        self.offers.clear();
        self.pending.clear();
        self.agent_seen.clear();
        self.framework_away.clear();
        self.undelivered.clear();
        self.usage.clear();
        self.recent_acks = Default::default();
        self.armed = None;
        self.serving = false;
        self.term = term;
        self.elected_ms = now_ms;
        effects
    }

    /// Starts serving in `term`: everything committed before it is applied. The agents
    /// and frameworks the registry holds have deadlines from now on (see
    /// [`Leader::check_agents`], [`Leader::expire_frameworks`]): the leader asks to be
    /// woken for the first.
    pub fn start_serving(&mut self, reg: &Registry, term: u64, now_ms: u64) -> Vec<Effect> {
        self.serving = true;
        self.term = term;
        self.elected_ms = now_ms;
        let mut effects = vec![Effect::Allocate];
        self.rearm(reg, now_ms, &mut effects);
        effects
    }

    /// Housekeeping, one round: rescinds offers past the offer timeout (and drops
    /// expired filters), proposes UNREACHABLE for agents silent past theirs, removes
    /// frameworks past their failover timeout, and asks to be woken at the next
    /// deadline ([`Leader::next_deadline`]).
    pub fn tick(&mut self, reg: &Registry, now_ms: u64) -> Vec<Effect> {
        let mut effects = self.expire_offers(now_ms);
        effects.extend(self.check_agents(reg, now_ms));
        effects.extend(self.expire_frameworks(reg, now_ms));
        self.rearm(reg, now_ms, &mut effects);
        effects
    }

    /// The earliest deadline after `now_ms` a tick has something to do at: an offer's
    /// expiry, an active agent's liveness deadline, a framework's failover deadline.
    /// Deadlines already passed are not counted: the tick at or after them acted on them
    /// (a proposal that failed is tried again by the shell's periodic tick). Never later
    /// than the real next deadline; it may be earlier for a framework whose failover
    /// clock a tick has not started yet (see [`Leader::failover_deadline`]).
    pub fn next_deadline(&self, reg: &Registry, now_ms: u64) -> Option<u64> {
        if !self.serving {
            return None;
        }
        let offers = self.offers.values().map(|o| self.offer_deadline(o));
        let agents = reg
            .agents
            .values()
            .filter(|a| a.state == crate::registry::AgentState::Active)
            .map(|a| self.liveness_deadline(&a.id));
        let frameworks = reg
            .frameworks
            .values()
            .filter(|f| !self.frameworks.contains_key(&f.id))
            .map(|f| self.failover_deadline(f, now_ms));
        offers
            .chain(agents)
            .chain(frameworks)
            .filter(|at| *at > now_ms)
            .min()
    }

    /// The wake asked for last and not superseded (see [`Effect::Wake`]).
    pub fn armed(&self) -> Option<u64> {
        self.armed
    }

    /// A deadline at `at_ms` was created: asks to be woken for it unless an earlier
    /// wake, not passed yet, is asked for already.
    pub(crate) fn wake_by(&mut self, at_ms: u64, now_ms: u64, effects: &mut Vec<Effect>) {
        if self
            .armed
            .is_some_and(|armed| armed <= at_ms && armed > now_ms)
        {
            return;
        }
        self.armed = Some(at_ms);
        effects.push(Effect::Wake { at_ms });
    }

    /// Asks to be woken at the next deadline (after a tick, or on election).
    fn rearm(&mut self, reg: &Registry, now_ms: u64, effects: &mut Vec<Effect>) {
        self.armed = self.next_deadline(reg, now_ms);
        if let Some(at_ms) = self.armed {
            effects.push(Effect::Wake { at_ms });
        }
    }

    /// An event for a subscribed framework, on its current stream (`None` when it is not
    /// subscribed).
    pub(crate) fn event(&self, framework: &FrameworkId, event: pb::event::Event) -> Option<Effect> {
        let s = self.frameworks.get(framework)?;
        Some(Effect::Event {
            framework: framework.clone(),
            stream_id: s.stream_id.clone(),
            event,
        })
    }

    /// A message to a connected agent, on its current connection, stamped with the
    /// leader's term (fencing). `None` when the agent is not connected: it is told what
    /// it missed when it registers again.
    pub(crate) fn to_agent(&self, agent: &AgentId, msg: pb::master_message::Msg) -> Option<Effect> {
        let s = self.agents.get(agent)?;
        Some(Effect::ToAgent {
            agent: agent.clone(),
            conn_id: s.conn_id,
            message: self.stamp(msg),
        })
    }

    pub(crate) fn stamp(&self, msg: pb::master_message::Msg) -> pb::MasterMessage {
        pb::MasterMessage {
            term: self.term,
            msg: Some(msg),
        }
    }

    /// Forwards a status update to its framework, or keeps it for when it resubscribes.
    pub(crate) fn forward_update(
        &mut self,
        fw: &FrameworkId,
        status: pb::TaskStatus,
        effects: &mut Vec<Effect>,
    ) {
        match self.frameworks.get(fw) {
            Some(s) => effects.push(Effect::Event {
                framework: fw.clone(),
                stream_id: s.stream_id.clone(),
                event: pb::event::Event::Update(pb::event::Update {
                    status: Some(status),
                }),
            }),
            None => self.keep_undelivered(fw, status),
        }
    }

    fn keep_undelivered(&mut self, fw: &FrameworkId, status: pb::TaskStatus) {
        if status.uuid.is_empty() {
            return;
        }
        let key = TaskKey::new(fw, status.task_id.clone().unwrap_or_default());
        self.undelivered
            .entry(fw.clone())
            .or_default()
            .insert(key, status);
    }

    /// The shell could not send to the framework's stream `stream_id` (full or closed).
    /// If it is still the framework's current stream, the framework is disconnected (it
    /// will resubscribe) and its offers return to the pool; a stream already replaced
    /// changes nothing. `unsent` is the event that did not go out: an acknowledgeable
    /// update is kept for later.
    pub fn framework_stream_lost(
        &mut self,
        fw: &FrameworkId,
        stream_id: &str,
        unsent: Option<pb::event::Event>,
    ) -> Vec<Effect> {
        let mut effects = Vec::new();
        if self
            .frameworks
            .get(fw)
            .is_some_and(|s| s.stream_id == stream_id)
        {
            self.frameworks.remove(fw);
            effects.push(Effect::CloseFrameworkStream {
                framework: fw.clone(),
                stream_id: stream_id.to_string(),
                farewell: Farewell::Quietly,
            });
            self.offers.retain(|_, o| &o.framework_id != fw);
        }
        if let Some(unsent) = unsent {
            effects.extend(self.event_not_sent(fw, stream_id, unsent));
        }
        effects
    }

    /// The framework's `event` for stream `stream_id` did not go out: that stream ended
    /// (or was replaced) before it was sent. An acknowledgeable update goes to the
    /// framework's current stream if it has another one, or is kept for its return;
    /// offers it never saw return to the pool.
    pub fn event_not_sent(
        &mut self,
        fw: &FrameworkId,
        stream_id: &str,
        event: pb::event::Event,
    ) -> Vec<Effect> {
        match event {
            pb::event::Event::Update(pb::event::Update {
                status: Some(status),
            }) => {
                let mut effects = Vec::new();
                match self.frameworks.get(fw) {
                    // Resubscribed meanwhile: the update goes to the new stream.
                    Some(s) if s.stream_id != stream_id => {
                        self.forward_update(fw, status, &mut effects)
                    }
                    _ => self.keep_undelivered(fw, status),
                }
                effects
            }
            pb::event::Event::Offers(o) => {
                let mut returned = false;
                for id in o.offers.iter().filter_map(|o| o.id.as_ref()) {
                    if self.offers.get(id).is_some_and(|o| &o.framework_id == fw) {
                        self.offers.remove(id);
                        returned = true;
                    }
                }
                if returned {
                    vec![Effect::Allocate]
                } else {
                    Vec::new()
                }
            }
            _ => Vec::new(),
        }
    }

    /// The shell could not send to the agent's connection `conn_id` (full or closed). If
    /// it is still the agent's current connection, the agent is disconnected (it will
    /// register again) and its offers are rescinded; a connection already replaced
    /// changes nothing.
    pub fn agent_connection_lost(&mut self, agent: &AgentId, conn_id: u64) -> Vec<Effect> {
        let mut effects = Vec::new();
        if self.agents.get(agent).map(|s| s.conn_id) != Some(conn_id) {
            return effects;
        }
        self.agents.remove(agent);
        effects.push(Effect::CloseAgentConnection {
            agent: agent.clone(),
            conn_id,
            farewell: Farewell::Quietly,
        });
        self.rescind_agent_offers(agent, &mut effects);
        effects
    }

    /// The outcome of a proposal made for `then`: what to do next. An error answers the
    /// caller that made the proposal (or is logged when there is none).
    pub fn applied(
        &mut self,
        reg: &Registry,
        now_ms: u64,
        then: Then,
        outcome: Result<ApplyOutcome, MasterError>,
    ) -> Result<Vec<Effect>, MasterError> {
        match then {
            Then::Nothing => outcome.map(|_| Vec::new()),
            Then::Subscribed {
                framework,
                info,
                suppressed,
            } => {
                outcome?;
                self.subscribed(reg, framework, info, suppressed)
            }
            Then::Launched {
                framework,
                agent,
                used,
                launch,
                term,
            } => self.launched(reg, now_ms, framework, agent, used, launch, term, outcome),
            Then::FrameworkRemoved { framework, reason } => {
                Ok(self.framework_removed(&framework, &reason, outcome?))
            }
            Then::AgentRegistered { agent } => self.agent_registered(reg, now_ms, agent, outcome?),
            Then::AgentUnreachable { agent } => Ok(self.agent_unreachable(&agent, outcome?)),
            Then::StatusUpdates { updates } => Ok(self.updates_committed(updates, outcome?)),
        }
    }
}

#[cfg(test)]
mod room_tests {
    use super::*;

    #[test]
    fn best_effort_room_is_bounded_and_leaves_half() {
        assert!(best_effort_room(65_536, 65_536));
        assert!(best_effort_room(65_536 - 255, 65_536));
        assert!(!best_effort_room(65_536 - 256, 65_536));
        assert!(best_effort_room(9, 10) && !best_effort_room(5, 10));
        assert!(!best_effort_room(0, 1));
    }
}
