//! The server shell around the pure [`Leader`]: it owns what the leader must not touch
//! (the streams to frameworks and agents, the Raft handle, the clock, the loops) and
//! carries out the [`Effect`]s the leader returns.
//!
//! - [`streams`]: the queue behind each framework stream and agent connection, and what
//!   happens when one is full (the peer is disconnected and the leader told).
//! - [`calls`]: the flows the services call (subscribe, accept, an agent's session, …):
//!   one step of the leader, then its effects.
//! - [`loops`]: allocation, housekeeping, heartbeats, the status-update batcher,
//!   leadership and upgrade loops.
//! - [`upgrade`]: rolling upgrades: the registry-version gate in front of every proposal,
//!   raising the recorded version, assigning the cluster id.
//!
//! Locking: the leader and the streams live under one std mutex (`core`), never held
//! across an `.await`; it is taken before the registry's read lock. The registry is
//! written only by the Raft thread when it applies entries. A step of the leader and
//! the effects it returns are carried out in one hold of the lock, in order, up to the
//! first [`Effect::Propose`]: nothing can change the leader's sessions or offers
//! between a decision and its sends. At a proposal the lock is released, the command
//! proposed, and the leader's step for its outcome taken in a new hold, with its
//! effects and then the ones that followed the proposal.

pub mod calls;
pub mod loops;
pub mod streams;
pub mod upgrade;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};

use tokio::sync::{mpsc, watch, Notify};

use drover_proto::{AgentId, FrameworkId};

use crate::clock::Clock;
use crate::config::Config;
use crate::error::MasterError;
use crate::leader::{Effect, IdSource, Leader, Settings, Then};
use crate::metrics::Metrics;
use crate::raft::{ProposeError, RaftHandle};
use crate::registry::{ApplyOutcome, Command, Registry, StatusUpdate};

pub use streams::{AgentTx, EventTx, Outlets, Streams, STREAM_QUEUE};

/// Random (UUID v4) ids, for the daemon.
pub struct RandomIds;

impl IdSource for RandomIds {
    fn fresh(&mut self) -> String {
        uuid::Uuid::new_v4().to_string()
    }
}

/// The leader and the streams its effects go to, kept together so that the leader's
/// sessions and the shell's streams always agree.
pub struct Core {
    pub leader: Leader,
    pub streams: Streams,
}

/// The stream a caller opened, for the effect that makes it a framework's or agent's.
pub enum Attach {
    None,
    Framework(EventTx),
    Agent(AgentTx),
}

/// What a run of effects opened.
#[derive(Default)]
pub struct Opened {
    pub framework: Option<(FrameworkId, String)>,
    pub agent: Option<(AgentId, u64)>,
}

/// A run of effects in progress: the stream the caller opened (until an open effect
/// takes it), what was opened, and the first error to answer the caller with.
pub struct Run {
    pub attach: Attach,
    pub opened: Opened,
    pub first_error: Option<MasterError>,
}

impl Run {
    pub fn new(attach: Attach) -> Self {
        Run {
            attach,
            opened: Opened::default(),
            first_error: None,
        }
    }
}

impl Core {
    /// The leader drops its soft state (see [`Leader::reset`]) and every stream and
    /// connection the shell holds ends with NotLeader: the sessions' ones and any other
    /// (one whose session was already gone), so that no peer stays attached to a
    /// follower.
    pub fn reset(&mut self, term: u64, now_ms: u64, out: &Outlets<'_>) {
        let mut queue: VecDeque<Effect> = self.leader.reset(term, now_ms).into();
        let mut run = Run::new(Attach::None);
        if self
            .carry_out_until_proposal(&mut queue, &mut run, out)
            .is_some()
        {
            tracing::error!("a reset of the leader proposed a command; not carried out");
        }
        let not_leader = || tonic::Status::from((out.named)(crate::leader::not_leader()));
        for (_, s) in std::mem::take(&mut self.streams.frameworks) {
            let _ = s.tx.try_send(Err(not_leader()));
        }
        for (_, c) in std::mem::take(&mut self.streams.agents) {
            let _ = c.tx.try_send(Err(not_leader()));
        }
    }

    /// Carries out the effects at the front of `queue` in order, with what breaks
    /// meanwhile (a full stream) handled before the next one, up to the first proposal:
    /// that proposal is returned and what follows it stays queued.
    pub fn carry_out_until_proposal(
        &mut self,
        queue: &mut VecDeque<Effect>,
        run: &mut Run,
        out: &Outlets<'_>,
    ) -> Option<(Command, Then)> {
        while let Some(effect) = queue.pop_front() {
            if let Effect::Propose { command, then } = effect {
                return Some((command, then));
            }
            let (more, error) = self.execute(effect, &mut run.attach, &mut run.opened, out);
            if let Some(e) = error {
                run.first_error.get_or_insert(e);
            }
            for e in more.into_iter().rev() {
                queue.push_front(e);
            }
        }
        None
    }
}

/// The master: configuration, clock, Raft handle, registry, the leader and its streams,
/// metrics.
pub struct Master {
    pub config: Config,
    pub clock: Arc<dyn Clock>,
    pub raft: RaftHandle,
    pub registry: Arc<RwLock<Registry>>,
    core: Mutex<Core>,
    pub metrics: Arc<Metrics>,
    /// Wakes the allocation loop early.
    pub allocate_now: Notify,
    /// The earliest time (clock ms) the leader asked to be ticked at (its
    /// [`Effect::Wake`]s): the housekeeping loop sleeps until then or its period ends.
    pub wake: watch::Sender<Option<u64>>,
    pub updates_tx: mpsc::UnboundedSender<StatusUpdate>,
    /// Serializes raising the registry version with adding masters (see [`upgrade`]).
    pub version_lock: tokio::sync::Mutex<()>,
}

/// The leader's settings from the master's configuration.
pub fn settings(config: &Config) -> Settings {
    Settings {
        master_id: config.id,
        master_address: config.listen.to_string(),
        heartbeat_interval_seconds: config.heartbeat_interval.as_secs_f64(),
        agent_ping_interval_seconds: config.agent_ping_interval.as_secs_f64(),
        agent_timeout_ms: config.agent_timeout_ms,
        offer_timeout_ms: config.offer_timeout_ms,
    }
}

/// Maps a failed proposal to the error a caller sees (NotLeader without the leader's
/// address; [`Master::named`] adds it).
pub fn propose_error(e: ProposeError) -> MasterError {
    match e {
        ProposeError::NotLeader => MasterError::NotLeader { leader: None },
        ProposeError::Unavailable => MasterError::Unavailable(
            "leadership changed before the change was committed; reconcile and retry".into(),
        ),
        ProposeError::Stopped => MasterError::Unavailable("the master is shutting down".into()),
        ProposeError::ConfChangePending => MasterError::Aborted(e.to_string()),
    }
}

impl Master {
    /// A master that does not lead yet, and the receiver of its status-update batcher.
    pub fn new(
        config: Config,
        clock: Arc<dyn Clock>,
        raft: RaftHandle,
        registry: Arc<RwLock<Registry>>,
        metrics: Arc<Metrics>,
    ) -> (Self, mpsc::UnboundedReceiver<StatusUpdate>) {
        let (updates_tx, updates_rx) = mpsc::unbounded_channel();
        let leader = Leader::new(settings(&config), Box::new(RandomIds), metrics.clone());
        let master = Master {
            config,
            clock,
            raft,
            registry,
            core: Mutex::new(Core {
                leader,
                streams: Streams::default(),
            }),
            metrics,
            allocate_now: Notify::new(),
            wake: watch::Sender::new(None),
            updates_tx,
            version_lock: Default::default(),
        };
        (master, updates_rx)
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    fn core(&self) -> MutexGuard<'_, Core> {
        self.core.lock().expect("leader lock")
    }

    pub fn registry(&self) -> RwLockReadGuard<'_, Registry> {
        self.registry.read().expect("registry lock")
    }

    /// Reads the registry and the leader together (the operator views).
    pub fn view<R>(&self, f: impl FnOnce(&Registry, &Leader) -> R) -> R {
        let core = self.core();
        let reg = self.registry();
        f(&reg, &core.leader)
    }

    /// Whether this master serves as the leader.
    pub fn serving(&self) -> bool {
        self.core().leader.serving
    }

    /// A look at the leader that decides nothing to carry out (a check): `f` gets the
    /// leader, the registry and the time. Steps with effects go through [`Master::run`]
    /// or [`Master::run_now`], which carry them out in the same hold of the lock.
    pub fn step<R>(&self, f: impl FnOnce(&mut Leader, &Registry, u64) -> R) -> R {
        let now = self.now_ms();
        let mut core = self.core();
        let reg = self.registry();
        f(&mut core.leader, &reg, now)
    }

    /// A step of the leader whose effects are carried out at once (see the module doc);
    /// proposals are awaited. Returns the first error the steps or a relay answered.
    pub async fn run(
        &self,
        f: impl FnOnce(&mut Leader, &Registry, u64) -> Result<Vec<Effect>, MasterError>,
    ) -> Result<(), MasterError> {
        self.run_attached(f, Attach::None).await.map(|_| ())
    }

    /// [`Master::run`] for a flow that opens a stream: `attach` is the stream the caller
    /// opened, for the open effect. Returns what was opened.
    pub async fn run_attached(
        &self,
        f: impl FnOnce(&mut Leader, &Registry, u64) -> Result<Vec<Effect>, MasterError>,
        attach: Attach,
    ) -> Result<Opened, MasterError> {
        let mut queue = VecDeque::new();
        let mut run = Run::new(attach);
        let proposal = self.hold(f, &mut queue, &mut run);
        self.finish(proposal, queue, run).await
    }

    /// A step of the leader from a context that cannot wait (a dropped stream, a loop):
    /// it and its effects up to the first proposal are carried out now, in one hold of
    /// the lock; that proposal and everything after it go on in a task of their own.
    pub fn run_now(self: &Arc<Self>, f: impl FnOnce(&mut Leader, &Registry, u64) -> Vec<Effect>) {
        let mut queue = VecDeque::new();
        let mut run = Run::new(Attach::None);
        let proposal = self.hold(
            |leader, reg, now| Ok(f(leader, reg, now)),
            &mut queue,
            &mut run,
        );
        if let Some(e) = run.first_error.take() {
            tracing::debug!(error = %e, "carrying out a step failed");
        }
        if proposal.is_none() {
            return;
        }
        let master = self.clone();
        tokio::spawn(async move {
            if let Err(e) = master.finish(proposal, queue, run).await {
                tracing::debug!(error = %e, "effects after a proposal failed");
            }
        });
    }

    /// One hold of the lock: the step `f`, then its effects (ahead of what is already
    /// queued) up to the first proposal, which is returned. An error of the step is
    /// recorded in `run` and what is queued still carried out.
    fn hold(
        &self,
        f: impl FnOnce(&mut Leader, &Registry, u64) -> Result<Vec<Effect>, MasterError>,
        queue: &mut VecDeque<Effect>,
        run: &mut Run,
    ) -> Option<(Command, Then)> {
        let named = |e: MasterError| self.named(e);
        let out = self.outlets(&named);
        let now = self.now_ms();
        let mut core = self.core();
        let stepped = {
            let reg = self.registry();
            f(&mut core.leader, &reg, now)
        };
        match stepped {
            Ok(effects) => {
                for e in effects.into_iter().rev() {
                    queue.push_front(e);
                }
            }
            Err(e) => {
                run.first_error.get_or_insert(e);
            }
        }
        core.carry_out_until_proposal(queue, run, &out)
    }

    /// Refuses calls unless this master is the serving leader.
    pub fn ensure_leader(&self) -> Result<u64, MasterError> {
        let serving = self.core().leader.ensure_serving();
        serving.map_err(|e| self.named(e))
    }

    /// The leader's gRPC address when known (this master's own address when it leads).
    /// A leader this follower has not heard from lately is not named: it is probably
    /// dead, and an election is coming.
    pub fn leader_address(&self) -> Option<String> {
        let role = self.raft.role();
        if role.leader_id == 0 || self.raft.leader_silent() {
            return None;
        }
        if role.leader_id == self.config.id && !role.is_leader {
            return None;
        }
        self.peer_address(role.leader_id)
    }

    /// The gRPC address of master `id`: the replicated address book first (it follows
    /// membership changes), then `--peers` / what `--join` learned at start. Never waits
    /// on the registry lock: it is called with the leader's lock held.
    pub fn peer_address(&self, id: u64) -> Option<String> {
        if id == self.config.id {
            return Some(self.config.advertise.clone());
        }
        self.raft
            .master_address(id)
            .or_else(|| self.config.peers.get(&id).cloned())
    }

    /// Holds a stream-opening call (a framework's Subscribe, an agent's Session) while
    /// this master knows no live leader, for up to three election timeouts: answered at
    /// once with "no leader known", clients would back off and retry; held, they are
    /// served (or redirected) as soon as the election ends. Returns at once when this
    /// master serves or names a live leader.
    pub async fn await_known_leader(&self) {
        let limit = self.config.raft_tick * (self.config.raft_election_ticks as u32 * 3);
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.serving()
                || self
                    .leader_address()
                    .is_some_and(|_| !self.raft.role().is_leader)
            {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// The NotLeader answer, naming the leader when known.
    pub fn not_leader(&self) -> MasterError {
        MasterError::NotLeader {
            leader: self.leader_address(),
        }
    }

    /// The error as callers see it: a NotLeader names the leader when it is known.
    pub fn named(&self, e: MasterError) -> MasterError {
        match e {
            MasterError::NotLeader { leader: None } => self.not_leader(),
            e => e,
        }
    }

    /// Proposes a command through Raft and waits for it to be applied. A command of a
    /// registry version some master does not support is refused first (see
    /// [`Master::require_registry_version`]).
    pub async fn propose(&self, cmd: Command) -> Result<ApplyOutcome, MasterError> {
        self.require_registry_version(&cmd).await?;
        self.raft
            .propose(&cmd)
            .await
            .map_err(|e| self.named(propose_error(e)))
    }

    /// Carries out a run from `proposal` on: proposes, and in one hold of the lock
    /// hands the outcome to the leader and carries out its effects and what followed
    /// the proposal, up to the next proposal; until none is left. Returns what was
    /// opened, or the first error a step or a relay answered (the remaining effects are
    /// still carried out).
    async fn finish(
        &self,
        mut proposal: Option<(Command, Then)>,
        mut queue: VecDeque<Effect>,
        mut run: Run,
    ) -> Result<Opened, MasterError> {
        while let Some((command, then)) = proposal {
            let outcome = self.propose(command).await;
            proposal = self.hold(
                |leader, reg, now| {
                    leader.applied(reg, now, then, outcome).inspect_err(
                        |e| tracing::debug!(error = %e, "a step after a proposal failed"),
                    )
                },
                &mut queue,
                &mut run,
            );
        }
        match run.first_error {
            Some(e) => Err(self.named(e)),
            None => Ok(run.opened),
        }
    }

    fn outlets<'a>(&'a self, named: &'a dyn Fn(MasterError) -> MasterError) -> Outlets<'a> {
        Outlets {
            metrics: &self.metrics,
            updates: &self.updates_tx,
            allocate_now: &self.allocate_now,
            wake: &self.wake,
            named,
        }
    }

    /// Drops every session and offer: this node no longer leads (or is starting to).
    /// Every stream and connection ends with NotLeader (see [`Core::reset`]).
    pub fn reset_soft(&self, term: u64) {
        let named = |e: MasterError| self.named(e);
        let out = self.outlets(&named);
        let now = self.now_ms();
        self.core().reset(term, now, &out);
    }

    /// Refreshes the gauges exported with the metrics.
    pub fn update_gauges(&self) {
        let gauges = self.view(crate::views::gauges);
        self.metrics.set_gauges(gauges);
    }

    /// The master's identity for the views.
    pub fn master_info(&self) -> drover_proto::pb::MasterInfo {
        drover_proto::pb::MasterInfo {
            id: self.config.id,
            address: self.config.listen.to_string(),
            term: self.raft.role().term,
        }
    }
}
