//! The Raft thread: one dedicated OS thread owns the raft-rs `RawNode` (its `Storage` is
//! synchronous and RocksDB blocks). Proposals, peer messages and control requests arrive on
//! one inbox; each loop drains everything queued before handling one `Ready`, so a burst of
//! proposals shares one fsync (group commit).
//!
//! A proposal succeeds only when its entry is applied at the (index, term) it was given.
//! If leadership changes first, the entry may be overwritten; the caller then gets
//! `ProposeError::Unavailable` and must reconcile rather than retry blindly.
//!
//! Each `Ready` is handled through [`super::ready`]; this module applies what it hands
//! back to the registry. Every [`SNAPSHOT_EVERY`] entries the registry is copied at the
//! applied index and serialised on a thread of its own, so that a large registry does
//! not hold up heartbeats; the bytes come back to the Raft thread, which stores them as
//! the snapshot at that index and compacts the log. When a master is added, the snapshot
//! is taken on the Raft thread at once instead: the new master must catch up from it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use protobuf::Message as PbMessage;
use raft::prelude::{
    ConfChange, ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType,
    Message, Snapshot, SnapshotMetadata,
};
use raft::{RawNode, SnapshotStatus, StateRole};
use tokio::sync::{oneshot, watch};

use super::ready;
use super::storage::{LogStore, RaftStorage};
use crate::error::{MasterError, Result};
use crate::metrics::Metrics;
use crate::registry::{self, ApplyOutcome, Command, Registry};

/// Take a registry snapshot (and compact the log) every this many applied entries.
pub const SNAPSHOT_EVERY: u64 = 10_000;

/// After a background snapshot fails, the next is tried once this many more entries are
/// applied (not at once: a serialiser that fails every time would otherwise copy the
/// registry at every `Ready`).
const SNAPSHOT_RETRY_AFTER: u64 = SNAPSHOT_EVERY / 10;

/// A learner within this many entries of the commit index counts as caught up and is
/// promoted to voter.
const PROMOTE_LAG: u64 = 64;

/// Ticks between the leader's checks for learners ready to be promoted.
const PROMOTE_CHECK_TICKS: u64 = 5;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ProposeError {
    #[error("this master is not the leader")]
    NotLeader,
    #[error("leadership changed before the proposal was applied; reconcile and retry")]
    Unavailable,
    #[error("the raft thread stopped")]
    Stopped,
    #[error("another membership change is still in progress; retry when it has been applied")]
    ConfChangePending,
}

/// Who leads, as this node sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RaftRole {
    pub is_leader: bool,
    pub term: u64,
    /// 0 when unknown.
    pub leader_id: u64,
}

/// How far this node's log and registry have come, published by the Raft thread.
#[derive(Debug, Default)]
pub struct Progress {
    pub commit: AtomicU64,
    pub applied: AtomicU64,
    /// Voting members of the applied configuration.
    pub voters: Mutex<Vec<u64>>,
    /// Learners of the applied configuration.
    pub learners: Mutex<Vec<u64>>,
    /// Replication progress of every member, as the leader tracks it (empty on followers).
    pub members: Mutex<Vec<MemberProgress>>,
    /// A follower that has not heard its leader for two heartbeat intervals: the leader is
    /// probably gone, so clients should not be sent to it.
    pub leader_silent: std::sync::atomic::AtomicBool,
    /// The address book (Raft id -> gRPC address), as applied: a copy of the registry's,
    /// behind its own small lock so that readers never wait on the registry.
    pub masters: Mutex<BTreeMap<u64, String>>,
    /// The highest registry version each other master reported with its Raft messages
    /// since this one started (see `registry::version`): what the leader gates new
    /// commands, version raises and promotions on. Soft state: every master records what
    /// it hears, so a new leader knows every member as soon as they answer it.
    pub member_versions: Mutex<BTreeMap<u64, u32>>,
}

/// One member's replication progress, as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberProgress {
    pub id: u64,
    pub voter: bool,
    pub matched: u64,
    pub recently_active: bool,
}

/// What a membership proposal asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipChange {
    /// Add a master as a learner (it is promoted once caught up), at this address.
    AddLearner { id: u64, address: String },
    /// Remove a master (voter or learner).
    Remove { id: u64 },
}

/// The context carried by membership entries: the address of an added master, so that
/// every replica's address book (in the registry) follows the log.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct ChangeContext {
    #[serde(default)]
    address: String,
}

/// Where peer messages go: [`NoPeers`] for a single-voter cluster, the gRPC transport
/// (`crate::peers::GrpcTransport`) between masters, and later a simulated network for
/// deterministic tests. `send` must not block: the Raft thread calls it. Delivery is best
/// effort; Raft retransmits what is lost. A transport reports peers it cannot reach through
/// [`RaftHandle::report_unreachable`] and [`RaftHandle::report_snapshot`].
pub trait Transport: Send + 'static {
    fn send(&mut self, msgs: Vec<Message>);
}

/// The transport of a one-member cluster: there is nobody to talk to.
pub struct NoPeers;

impl<T: Transport + ?Sized> Transport for Box<T> {
    fn send(&mut self, msgs: Vec<Message>) {
        (**self).send(msgs)
    }
}

impl Transport for NoPeers {
    fn send(&mut self, msgs: Vec<Message>) {
        if !msgs.is_empty() {
            tracing::warn!(
                count = msgs.len(),
                "dropping raft messages: no peers configured"
            );
        }
    }
}

type Reply = oneshot::Sender<std::result::Result<ApplyOutcome, ProposeError>>;

enum Input {
    Propose {
        data: Vec<u8>,
        reply: Reply,
        at: Instant,
    },
    ProposeChange {
        change: MembershipChange,
        reply: Reply,
        at: Instant,
    },
    Transfer {
        to: u64,
    },
    Step(Box<Message>),
    Unreachable(u64),
    SnapshotStatus {
        to: u64,
        ok: bool,
    },
    Stop,
}

/// Cheap handle to the Raft thread.
#[derive(Clone)]
pub struct RaftHandle {
    tx: Sender<Input>,
    role: watch::Receiver<RaftRole>,
    progress: Arc<Progress>,
}

impl RaftHandle {
    /// Proposes a command and waits until it is applied (or fails).
    pub async fn propose(&self, cmd: &Command) -> std::result::Result<ApplyOutcome, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Input::Propose {
                data: registry::encode(cmd),
                reply,
                at: Instant::now(),
            })
            .map_err(|_| ProposeError::Stopped)?;
        rx.await.unwrap_or(Err(ProposeError::Stopped))
    }

    /// Proposes a membership change and waits until it is applied. Only one change may be
    /// in flight at a time ([`ProposeError::ConfChangePending`] otherwise).
    pub async fn propose_change(
        &self,
        change: MembershipChange,
    ) -> std::result::Result<ApplyOutcome, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Input::ProposeChange {
                change,
                reply,
                at: Instant::now(),
            })
            .map_err(|_| ProposeError::Stopped)?;
        rx.await.unwrap_or(Err(ProposeError::Stopped))
    }

    /// Asks the leader to hand leadership to `to` (0: the most up-to-date other voter).
    /// Returns at once; watch [`RaftHandle::watch_role`] for the outcome.
    pub fn transfer_leadership(&self, to: u64) {
        let _ = self.tx.send(Input::Transfer { to });
    }

    /// Replication progress of every member (filled on the leader only).
    pub fn members(&self) -> Vec<MemberProgress> {
        self.progress.members.lock().expect("members lock").clone()
    }

    /// The applied address book of masters.
    pub fn master_addresses(&self) -> BTreeMap<u64, String> {
        self.progress.masters.lock().expect("masters lock").clone()
    }

    /// Records the registry version master `id` reported (its Raft messages carry it).
    pub fn record_member_version(&self, id: u64, version: u32) {
        let mut versions = self.progress.member_versions.lock().expect("versions lock");
        if versions.insert(id, version) != Some(version) {
            tracing::info!(
                id,
                version,
                "master reports the registry versions it supports"
            );
        }
    }

    /// The registry version each other master last reported.
    pub fn member_versions(&self) -> BTreeMap<u64, u32> {
        self.progress
            .member_versions
            .lock()
            .expect("versions lock")
            .clone()
    }

    /// One master's address from the applied address book.
    pub fn master_address(&self, id: u64) -> Option<String> {
        self.progress
            .masters
            .lock()
            .expect("masters lock")
            .get(&id)
            .cloned()
    }

    /// True on a follower whose leader has been silent for two heartbeat intervals.
    pub fn leader_silent(&self) -> bool {
        self.progress.leader_silent.load(Ordering::Relaxed)
    }

    /// Voters and learners of the applied configuration.
    pub fn configuration(&self) -> (Vec<u64>, Vec<u64>) {
        (
            self.progress.voters.lock().expect("voters lock").clone(),
            self.progress
                .learners
                .lock()
                .expect("learners lock")
                .clone(),
        )
    }

    /// Delivers a message from a peer.
    pub fn step(&self, msg: Message) {
        let _ = self.tx.send(Input::Step(Box::new(msg)));
    }

    /// Tells Raft that a message to `peer` could not be delivered (it probes instead of
    /// streaming appends to that peer until it answers again).
    pub fn report_unreachable(&self, peer: u64) {
        let _ = self.tx.send(Input::Unreachable(peer));
    }

    /// Tells Raft whether a snapshot sent to `peer` was delivered.
    pub fn report_snapshot(&self, peer: u64, ok: bool) {
        let _ = self.tx.send(Input::SnapshotStatus { to: peer, ok });
    }

    /// Commit index, applied index and voters, as last published by the Raft thread.
    pub fn progress(&self) -> (u64, u64, Vec<u64>) {
        (
            self.progress.commit.load(Ordering::Relaxed),
            self.progress.applied.load(Ordering::Relaxed),
            self.progress.voters.lock().expect("voters lock").clone(),
        )
    }

    pub fn role(&self) -> RaftRole {
        *self.role.borrow()
    }

    /// A receiver that changes whenever leadership or term changes.
    pub fn watch_role(&self) -> watch::Receiver<RaftRole> {
        self.role.clone()
    }

    pub fn stop(&self) {
        let _ = self.tx.send(Input::Stop);
    }
}

/// Raft timing and identity.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: u64,
    pub tick: Duration,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// The highest registry version this master supports: a snapshot or entry that needs
    /// more stops the Raft thread (halting beats diverging).
    pub max_registry_version: u32,
}

struct Pending {
    term: u64,
    reply: Reply,
    at: Instant,
}

/// A registry snapshot being serialised off the Raft thread.
struct SnapshotJob {
    /// Where the log is compacted to once it is stored.
    index: u64,
    done: Receiver<(SnapshotMetadata, Vec<u8>)>,
}

struct Node<T: Transport, S: LogStore> {
    raw: RawNode<RaftStorage<S>>,
    registry: Arc<RwLock<Registry>>,
    transport: T,
    pending: BTreeMap<u64, Pending>,
    role_tx: watch::Sender<RaftRole>,
    applied: u64,
    /// A periodic snapshot is due once this index is applied.
    next_snapshot: u64,
    /// Membership entries up to this index are already in the stored configuration.
    conf_index: u64,
    /// Take a snapshot at the next opportunity (a master was added: it must catch up
    /// from a snapshot, since the seeded membership is not in the log).
    snapshot_soon: bool,
    /// The snapshot being serialised, if any (one at a time).
    snapshot_job: Option<SnapshotJob>,
    ticks: u64,
    tick: Duration,
    /// When the leader last heard from each member.
    last_heard: std::collections::HashMap<u64, Instant>,
    metrics: Arc<Metrics>,
    progress: Arc<Progress>,
    max_registry_version: u32,
    /// Learners whose promotion was refused (and the version they reported), so that the
    /// refusal is logged once rather than at every check.
    promotion_refused: BTreeMap<u64, Option<u32>>,
}

/// Starts the Raft thread over `storage`. The registry is loaded from the stored snapshot
/// and brought up to date by replaying the committed log. `make_transport` receives the
/// node's handle, so that the transport can report unreachable peers.
pub fn start<T: Transport, S: LogStore>(
    cfg: NodeConfig,
    storage: S,
    registry: Arc<RwLock<Registry>>,
    make_transport: impl FnOnce(RaftHandle) -> T,
    metrics: Arc<Metrics>,
) -> Result<(RaftHandle, std::thread::JoinHandle<()>)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let tick = cfg.tick;
    let (mut node, handle) = Node::new(cfg, storage, registry, tx, make_transport, metrics)?;
    let join = std::thread::Builder::new()
        .name("raft".into())
        .spawn(move || node.run(rx, tick))
        .map_err(|e| MasterError::io("cannot start the raft thread", e))?;
    Ok((handle, join))
}

impl<T: Transport, S: LogStore> Node<T, S> {
    /// The node over `storage`, with the registry loaded from its snapshot (the log after
    /// it is replayed by the first [`Node::on_ready`]), and the handle that feeds `tx`.
    fn new(
        cfg: NodeConfig,
        storage: S,
        registry: Arc<RwLock<Registry>>,
        tx: Sender<Input>,
        make_transport: impl FnOnce(RaftHandle) -> T,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, RaftHandle)> {
        let meta = storage.snapshot_meta().clone();
        let data = storage.snapshot_data()?;
        *registry.write().expect("registry lock") =
            Registry::from_snapshot_up_to(&data, cfg.max_registry_version).map_err(|e| {
                MasterError::Incompatible(format!(
                    "the data folder's registry cannot be read by this master: {e}"
                ))
            })?;
        let single_voter = storage.conf_state().voters == vec![cfg.id];
        let conf_index = storage.conf_index();
        let progress = Arc::new(Progress {
            commit: AtomicU64::new(storage.hard_state().commit),
            applied: AtomicU64::new(meta.index),
            voters: Mutex::new(storage.conf_state().voters.clone()),
            learners: Mutex::new(storage.conf_state().learners.clone()),
            members: Mutex::new(Vec::new()),
            leader_silent: Default::default(),
            masters: Mutex::new(registry.read().expect("registry lock").masters.clone()),
            member_versions: Mutex::new(BTreeMap::new()),
        });
        let config = raft::Config {
            id: cfg.id,
            election_tick: cfg.election_ticks,
            heartbeat_tick: cfg.heartbeat_ticks,
            applied: meta.index,
            check_quorum: true,
            pre_vote: true,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            ..Default::default()
        };
        config
            .validate()
            .map_err(|e| MasterError::raft("invalid raft settings", e))?;
        let logger = slog::Logger::root(super::TracingDrain, slog::o!());
        let mut raw = RawNode::new(&config, RaftStorage(storage), &logger)
            .map_err(|e| MasterError::raft("cannot start raft", e))?;
        if single_voter {
            // Nobody else can win: skip the randomized election timeout.
            raw.campaign()
                .map_err(|e| MasterError::raft("cannot campaign", e))?;
        }
        let (role_tx, role_rx) = watch::channel(RaftRole::default());
        let handle = RaftHandle {
            tx,
            role: role_rx,
            progress: progress.clone(),
        };
        let transport = make_transport(handle.clone());
        let node = Node {
            raw,
            registry,
            transport,
            pending: BTreeMap::new(),
            role_tx,
            applied: meta.index,
            next_snapshot: meta.index + SNAPSHOT_EVERY,
            conf_index,
            snapshot_soon: false,
            snapshot_job: None,
            ticks: 0,
            tick: cfg.tick,
            last_heard: Default::default(),
            metrics,
            progress,
            max_registry_version: cfg.max_registry_version,
            promotion_refused: BTreeMap::new(),
        };
        Ok((node, handle))
    }

    fn run(&mut self, rx: Receiver<Input>, tick: Duration) {
        let mut last_tick = Instant::now();
        if let Err(e) = self.on_ready() {
            tracing::error!(error = %e, "cannot start raft (storage failed, or the log holds an entry this master cannot apply)");
            std::process::exit(70);
        }
        loop {
            let timeout = tick.saturating_sub(last_tick.elapsed());
            match rx.recv_timeout(timeout) {
                Ok(input) => {
                    if !self.handle(input) {
                        break;
                    }
                    // Drain everything queued: one Ready (one fsync) for the whole burst.
                    while let Ok(input) = rx.try_recv() {
                        if !self.handle(input) {
                            self.fail_all(ProposeError::Stopped);
                            return;
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if last_tick.elapsed() >= tick {
                self.raw.tick();
                last_tick = Instant::now();
                self.ticks += 1;
                if self.ticks.is_multiple_of(PROMOTE_CHECK_TICKS) {
                    self.maybe_promote();
                }
            }
            if let Err(e) = self.on_ready() {
                // Storage failure: continuing could acknowledge writes that are not durable.
                // An entry (or snapshot) this master cannot apply: continuing would diverge.
                tracing::error!(error = %e, "raft failed (storage, or an entry this master cannot apply); stopping");
                self.fail_all(ProposeError::Stopped);
                std::process::exit(70);
            }
        }
        self.fail_all(ProposeError::Stopped);
    }

    fn handle(&mut self, input: Input) -> bool {
        match input {
            Input::Propose { data, reply, at } => {
                if self.raw.raft.state != StateRole::Leader {
                    let _ = reply.send(Err(ProposeError::NotLeader));
                    return true;
                }
                let before = self.raw.raft.raft_log.last_index();
                if self.raw.propose(vec![], data).is_err()
                    || self.raw.raft.raft_log.last_index() == before
                {
                    let _ = reply.send(Err(ProposeError::NotLeader));
                    return true;
                }
                let index = self.raw.raft.raft_log.last_index();
                let term = self.raw.raft.term;
                self.pending.insert(index, Pending { term, reply, at });
            }
            Input::ProposeChange { change, reply, at } => {
                if self.raw.raft.state != StateRole::Leader {
                    let _ = reply.send(Err(ProposeError::NotLeader));
                    return true;
                }
                if self.raw.raft.has_pending_conf() {
                    let _ = reply.send(Err(ProposeError::ConfChangePending));
                    return true;
                }
                let (cc, context) = match &change {
                    MembershipChange::AddLearner { id, address } => (
                        single_change(*id, ConfChangeType::AddLearnerNode),
                        ChangeContext {
                            address: address.clone(),
                        },
                    ),
                    MembershipChange::Remove { id } => (
                        single_change(*id, ConfChangeType::RemoveNode),
                        ChangeContext::default(),
                    ),
                };
                let before = self.raw.raft.raft_log.last_index();
                let context = serde_json::to_vec(&context).expect("context serializes");
                if self.raw.propose_conf_change(context, cc).is_err()
                    || self.raw.raft.raft_log.last_index() == before
                {
                    let _ = reply.send(Err(ProposeError::ConfChangePending));
                    return true;
                }
                let index = self.raw.raft.raft_log.last_index();
                let term = self.raw.raft.term;
                self.pending.insert(index, Pending { term, reply, at });
            }
            Input::Transfer { to } => {
                if self.raw.raft.state == StateRole::Leader {
                    let me = self.raw.raft.id;
                    let target = if to != 0 {
                        Some(to)
                    } else {
                        // The voter with the longest log takes over soonest.
                        let voters = self.raw.raft.prs().conf().voters().ids();
                        self.raw
                            .raft
                            .prs()
                            .iter()
                            .filter(|(id, _)| **id != me && voters.contains(**id))
                            .max_by_key(|(id, p)| (p.matched, std::cmp::Reverse(**id)))
                            .map(|(id, _)| *id)
                    };
                    if let Some(t) = target.filter(|t| *t != me) {
                        tracing::info!(to = t, "transferring leadership");
                        self.raw.transfer_leader(t);
                    }
                }
            }
            Input::Step(msg) => {
                if let Err(e) = self.raw.step(*msg) {
                    tracing::debug!(error = %e, "raft step failed");
                }
            }
            Input::Unreachable(peer) => self.raw.report_unreachable(peer),
            Input::SnapshotStatus { to, ok } => {
                let status = if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.raw.report_snapshot(to, status);
            }
            Input::Stop => return false,
        }
        true
    }

    fn fail_all(&mut self, err: ProposeError) {
        for (_, p) in std::mem::take(&mut self.pending) {
            let _ = p.reply.send(Err(err.clone()));
        }
    }

    fn publish_role(&mut self) {
        let silent = self.raw.raft.state == StateRole::Follower
            && self.raw.raft.election_elapsed > 2 * self.raw.raft.heartbeat_timeout();
        self.progress.leader_silent.store(silent, Ordering::Relaxed);
        let role = RaftRole {
            is_leader: self.raw.raft.state == StateRole::Leader,
            term: self.raw.raft.term,
            leader_id: self.raw.raft.leader_id,
        };
        if *self.role_tx.borrow() != role {
            if !role.is_leader {
                // Entries proposed under an old leadership may never be applied.
                self.fail_all(ProposeError::Unavailable);
            }
            tracing::info!(
                term = role.term,
                leader = role.leader_id,
                is_leader = role.is_leader,
                "raft role changed"
            );
            let _ = self.role_tx.send(role);
        }
    }

    fn on_ready(&mut self) -> Result<()> {
        self.poll_snapshot(false)?;
        let Some(mut step) = ready::step(&mut self.raw, &mut self.transport)? else {
            self.publish_role();
            self.publish_members();
            return Ok(());
        };
        if let Some(snap) = step.snapshot.take() {
            self.install(&snap)?;
        }
        // Entries already committed and durable here are applied (and their proposals
        // answered) before this Ready's fsync.
        self.apply(std::mem::take(&mut step.committed))?;
        let committed = step.persist(&mut self.raw, &mut self.transport)?;
        self.apply(committed)?;
        ready::finish(&mut self.raw)?;
        self.progress
            .commit
            .store(self.raw.raft.raft_log.committed, Ordering::Relaxed);
        self.progress.applied.store(self.applied, Ordering::Relaxed);
        self.publish_role();
        self.publish_members();
        self.maybe_snapshot()?;
        Ok(())
    }

    /// Replaces the registry with a snapshot from the leader (already stored).
    fn install(&mut self, snap: &Snapshot) -> Result<()> {
        let reg = Registry::from_snapshot_up_to(snap.get_data(), self.max_registry_version)
            .map_err(|e| {
                MasterError::Incompatible(format!("the leader's snapshot cannot be installed: {e}"))
            })?;
        *self.progress.masters.lock().expect("masters lock") = reg.masters.clone();
        *self.registry.write().expect("registry lock") = reg;
        self.applied = snap.get_metadata().index;
        self.next_snapshot = self.applied + SNAPSHOT_EVERY;
        *self.progress.voters.lock().expect("voters lock") =
            snap.get_metadata().get_conf_state().voters.clone();
        *self.progress.learners.lock().expect("learners lock") =
            snap.get_metadata().get_conf_state().learners.clone();
        self.conf_index = self.conf_index.max(snap.get_metadata().index);
        Metrics::inc(&self.metrics.snapshots_received);
        tracing::info!(
            index = snap.get_metadata().index,
            bytes = snap.get_data().len(),
            "installed a registry snapshot from the leader"
        );
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let cs = self.raw.store().conf_state();
        if cs.voters.is_empty() && cs.learners.is_empty() && cs.voters_outgoing.is_empty() {
            // A master that joined with an empty data folder knows neither the membership
            // nor the address book until the leader's snapshot brings them: the log alone,
            // from entry 1, would be applied against an empty configuration.
            return Err(MasterError::Internal(format!(
                "entry {} arrived before any snapshot: this master joined with an empty \
                 data folder and can only start from the leader's snapshot",
                entries[0].index
            )));
        }
        for e in entries {
            self.applied = e.index;
            let outcome = match e.get_entry_type() {
                EntryType::EntryNormal if e.data.is_empty() => ApplyOutcome::None,
                EntryType::EntryNormal => {
                    let cmd = registry::decode(&e.data).map_err(|why| {
                        // Halting beats diverging: a newer master wrote what we cannot read.
                        MasterError::Incompatible(format!(
                            "entry {} cannot be applied: {why}",
                            e.index
                        ))
                    })?;
                    if cmd.required_version() > self.max_registry_version {
                        // What a release that does not know the command would meet (it
                        // halts on the unknown tag): a master capped with
                        // --max-registry-version stands in for one faithfully.
                        return Err(MasterError::Incompatible(format!(
                            "entry {} ({}) needs registry version {}, but this master supports \
                             only up to {}: run a newer release",
                            e.index,
                            cmd.name(),
                            cmd.required_version(),
                            self.max_registry_version
                        )));
                    }
                    self.registry.write().expect("registry lock").apply(&cmd)
                }
                EntryType::EntryConfChange => {
                    let cc = ConfChange::parse_from_bytes(&e.data)
                        .map_err(|err| corrupt_entry(e.index, err))?;
                    let changes = vec![single_change_of(cc.node_id, cc.get_change_type())];
                    let cs = if e.index <= self.conf_index {
                        self.raw.store().conf_state().clone()
                    } else {
                        self.raw.apply_conf_change(&cc)?
                    };
                    self.applied_membership(&e, cs, &changes)?;
                    ApplyOutcome::None
                }
                EntryType::EntryConfChangeV2 => {
                    let cc = ConfChangeV2::parse_from_bytes(&e.data)
                        .map_err(|err| corrupt_entry(e.index, err))?;
                    // A restart replays the log from the last snapshot, but the stored
                    // configuration already includes changes up to `conf_index`: applying
                    // them twice would fail (or corrupt a joint configuration).
                    let cs = if e.index <= self.conf_index {
                        self.raw.store().conf_state().clone()
                    } else {
                        self.raw.apply_conf_change(&cc)?
                    };
                    let changes = cc.get_changes().to_vec();
                    self.applied_membership(&e, cs, &changes)?;
                    ApplyOutcome::None
                }
            };
            // Answer proposals: success only at the (index, term) they were given.
            while let Some((&idx, _)) = self.pending.first_key_value() {
                if idx > e.index {
                    break;
                }
                let p = self.pending.pop_first().expect("checked").1;
                if idx == e.index && p.term == e.term {
                    self.metrics.observe_commit(p.at.elapsed());
                    let _ = p.reply.send(Ok(outcome.clone()));
                } else {
                    let _ = p.reply.send(Err(ProposeError::Unavailable));
                }
            }
        }
        Ok(())
    }

    /// Records an applied membership entry: stored configuration, published voters and
    /// learners, and the address book in the registry.
    fn applied_membership(
        &mut self,
        e: &Entry,
        cs: ConfState,
        changes: &[ConfChangeSingle],
    ) -> Result<()> {
        if e.index > self.conf_index {
            self.raw.mut_store().set_conf_state(cs.clone(), e.index)?;
            self.conf_index = e.index;
        }
        *self.progress.voters.lock().expect("voters lock") = cs.voters.clone();
        *self.progress.learners.lock().expect("learners lock") = cs.learners.clone();
        let ctx: ChangeContext = serde_json::from_slice(&e.context).unwrap_or_default();
        let book = {
            let mut reg = self.registry.write().expect("registry lock");
            for c in changes {
                match c.get_change_type() {
                    ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                        reg.apply_membership(c.node_id, true, Some(&ctx.address));
                        self.snapshot_soon = true;
                    }
                    ConfChangeType::RemoveNode => reg.apply_membership(c.node_id, false, None),
                }
            }
            reg.masters.clone()
        };
        *self.progress.masters.lock().expect("masters lock") = book;
        tracing::info!(index = e.index, voters = ?cs.voters, learners = ?cs.learners, "membership changed");
        Ok(())
    }

    /// The leader promotes one caught-up learner at a time to voter.
    fn maybe_promote(&mut self) {
        if self.raw.raft.state != StateRole::Leader || self.raw.raft.has_pending_conf() {
            return;
        }
        let committed = self.raw.raft.raft_log.committed;
        let learners: Vec<u64> = self
            .raw
            .raft
            .prs()
            .conf()
            .learners()
            .iter()
            .copied()
            .collect();
        let caught_up: Vec<u64> = learners
            .into_iter()
            .filter(|l| {
                self.raw.raft.prs().get(*l).is_some_and(|p| {
                    p.recent_active && p.matched + PROMOTE_LAG >= committed && p.matched > 0
                })
            })
            .collect();
        // A learner is promoted only if its binary can read the registry as it is: one
        // that could not would halt, and as a voter it would weigh on the quorum.
        let recorded = self.registry.read().expect("registry lock").version;
        let versions = self
            .progress
            .member_versions
            .lock()
            .expect("versions lock")
            .clone();
        let ready = caught_up.into_iter().find(|l| {
            let reported = versions.get(l).copied();
            let ok =
                reported.is_some_and(|v| registry::version::check_member(*l, v, recorded).is_ok());
            if ok {
                self.promotion_refused.remove(l);
            } else if self.promotion_refused.get(l) != Some(&reported) {
                self.promotion_refused.insert(*l, reported);
                match reported {
                    Some(v) => tracing::warn!(
                        id = l,
                        "not promoting a caught-up learner: {}",
                        registry::version::VersionError::MemberTooOld {
                            id: *l,
                            supports: v,
                            recorded
                        }
                    ),
                    None => tracing::warn!(
                        id = l,
                        "not promoting a caught-up learner: it has not reported the \
                         registry versions it supports"
                    ),
                }
            }
            ok
        });
        if let Some(id) = ready {
            let address = self
                .registry
                .read()
                .expect("registry lock")
                .masters
                .get(&id)
                .cloned()
                .unwrap_or_default();
            let context = serde_json::to_vec(&ChangeContext { address }).expect("serializes");
            match self
                .raw
                .propose_conf_change(context, single_change(id, ConfChangeType::AddNode))
            {
                Ok(()) => tracing::info!(id, "learner caught up: promoting it to voter"),
                Err(e) => tracing::warn!(id, error = %e, "could not propose a promotion"),
            }
        }
    }

    fn publish_members(&mut self) {
        let mut members = Vec::new();
        if self.raw.raft.state == StateRole::Leader {
            let me = self.raw.raft.id;
            let now = Instant::now();
            // raft-rs clears `recent_active` at every quorum check, so a healthy follower
            // can read inactive for a moment: remember when each was last heard instead.
            let window = self.tick * (2 * self.raw.raft.election_timeout() as u32);
            let voters = self.raw.raft.prs().conf().voters().ids();
            for (id, p) in self.raw.raft.prs().iter() {
                if p.recent_active || *id == me {
                    self.last_heard.insert(*id, now);
                }
                let heard = self
                    .last_heard
                    .get(id)
                    .is_some_and(|t| now.duration_since(*t) <= window);
                members.push(MemberProgress {
                    id: *id,
                    voter: voters.contains(*id),
                    matched: p.matched,
                    recently_active: heard,
                });
            }
            members.sort_by_key(|m| m.id);
        }
        let mut slot = self.progress.members.lock().expect("members lock");
        if *slot != members {
            *slot = members;
        }
    }

    /// Takes a registry snapshot when one is due. Every [`SNAPSHOT_EVERY`] entries the
    /// registry is copied at the applied index (on this thread, so that the copy is
    /// exactly that index) and serialised on another. When a master was added, the
    /// snapshot is taken here and now instead, as is the compaction: the new master starts
    /// with an empty store, and the leader must answer its first probe with a snapshot
    /// that includes it, not with the log from entry 1 (which assumes the seeded
    /// membership and address book). A background job still running is discarded.
    fn maybe_snapshot(&mut self) -> Result<()> {
        let stored = self.raw.store().snapshot_meta().index;
        if self.snapshot_soon && self.applied > stored {
            self.snapshot_soon = false;
            if let Some(job) = self.snapshot_job.take() {
                tracing::info!(
                    index = job.index,
                    "discarding the registry snapshot being serialised: a master was added, \
                     so one is taken now"
                );
            }
            let (meta, registry) = self.snapshot_copy()?;
            let data = registry.to_snapshot();
            self.next_snapshot = meta.index + SNAPSHOT_EVERY;
            return self.store_snapshot(meta, &data).map(drop);
        }
        self.snapshot_soon = false;
        let due = self.applied >= self.next_snapshot;
        if !due || self.snapshot_job.is_some() {
            return Ok(());
        }
        let (meta, registry) = self.snapshot_copy()?;
        let index = meta.index;
        self.next_snapshot = index + SNAPSHOT_EVERY;
        let registry = Arc::new(registry);
        let (copy, job_meta) = (registry.clone(), meta.clone());
        let (tx, done) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("raft-snapshot".into())
            .spawn(move || {
                let data = copy.to_snapshot();
                let _ = tx.send((job_meta, data));
            });
        match spawned {
            Ok(_) => {
                self.snapshot_job = Some(SnapshotJob { index, done });
                Ok(())
            }
            Err(e) => {
                // Out of threads is no reason to stop the master: the snapshot is taken
                // here, as a snapshot for a new master is.
                tracing::warn!(
                    error = %e,
                    "cannot start the snapshot thread; serialising the registry on the Raft thread"
                );
                let data = registry.to_snapshot();
                self.store_snapshot(meta, &data).map(drop)
            }
        }
    }

    /// The metadata of a snapshot at the applied index, and a copy of the registry there.
    fn snapshot_copy(&self) -> Result<(SnapshotMetadata, Registry)> {
        let index = self.applied;
        let term = raft::Storage::term(self.raw.store(), index)
            .map_err(|e| MasterError::raft(format!("no term for applied entry {index}"), e))?;
        let mut meta = SnapshotMetadata {
            index,
            term,
            ..Default::default()
        };
        meta.set_conf_state(self.raw.store().conf_state().clone());
        let registry = self.registry.read().expect("registry lock").clone();
        Ok((meta, registry))
    }

    /// Stores a serialised snapshot and compacts the log through its index. Returns false
    /// when the store kept a newer snapshot instead (one from the leader, installed while
    /// this one was serialised).
    fn store_snapshot(&mut self, meta: SnapshotMetadata, data: &[u8]) -> Result<bool> {
        let index = meta.index;
        self.raw.mut_store().save_snapshot(meta, data)?;
        self.raw.mut_store().sync()?;
        let stored = self.raw.store().snapshot_meta().index;
        if stored == index {
            tracing::info!(
                index,
                bytes = data.len(),
                "registry snapshot taken; log compacted"
            );
            Ok(true)
        } else {
            tracing::info!(
                index,
                stored,
                "registry snapshot dropped: a newer snapshot from the leader was installed \
                 while it was serialised"
            );
            Ok(false)
        }
    }

    /// Stores the snapshot serialised off the thread, if it is ready (`wait`: wait for
    /// it), and compacts the log through its index.
    fn poll_snapshot(&mut self, wait: bool) -> Result<()> {
        let Some(job) = &self.snapshot_job else {
            return Ok(());
        };
        let (meta, data) = if wait {
            match job.done.recv() {
                Ok(done) => done,
                Err(_) => return self.snapshot_lost(),
            }
        } else {
            match job.done.try_recv() {
                Ok(done) => done,
                Err(TryRecvError::Empty) => return Ok(()),
                Err(TryRecvError::Disconnected) => return self.snapshot_lost(),
            }
        };
        debug_assert_eq!(meta.index, job.index);
        self.snapshot_job = None;
        self.store_snapshot(meta, &data).map(drop)
    }

    /// The snapshot thread died without an answer (it panicked): the log stays as it is,
    /// and another snapshot is tried after [`SNAPSHOT_RETRY_AFTER`] more entries.
    fn snapshot_lost(&mut self) -> Result<()> {
        let index = self.snapshot_job.take().map(|job| job.index);
        self.next_snapshot = self.applied + SNAPSHOT_RETRY_AFTER;
        Metrics::inc(&self.metrics.snapshot_failures);
        tracing::error!(
            index,
            retry_at = self.next_snapshot,
            "the registry snapshot thread failed; the log is not compacted until another succeeds"
        );
        Ok(())
    }
}

fn corrupt_entry(index: u64, err: protobuf::ProtobufError) -> MasterError {
    MasterError::Corrupt(format!("log entry {index} cannot be decoded: {err}"))
}

fn single_change(id: u64, ty: ConfChangeType) -> ConfChangeV2 {
    let mut cc = ConfChangeV2::default();
    cc.set_changes(vec![single_change_of(id, ty)].into());
    cc
}

fn single_change_of(id: u64, ty: ConfChangeType) -> ConfChangeSingle {
    let mut c = ConfChangeSingle {
        node_id: id,
        ..Default::default()
    };
    c.set_change_type(ty);
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::storage::MemLogStore;

    fn config() -> NodeConfig {
        config_of(1)
    }

    fn config_of(id: u64) -> NodeConfig {
        NodeConfig {
            id,
            tick: Duration::from_millis(10),
            election_ticks: 10,
            heartbeat_ticks: 2,
            max_registry_version: registry::version::REGISTRY_VERSION,
        }
    }

    /// A single-voter node over `store`, not on a thread: the test drives it.
    fn leader(store: MemLogStore) -> (Node<NoPeers, MemLogStore>, Arc<RwLock<Registry>>) {
        let registry = Arc::new(RwLock::new(Registry::default()));
        let (tx, _rx) = std::sync::mpsc::channel();
        let (mut node, _handle) = Node::new(
            config(),
            store,
            registry.clone(),
            tx,
            |_| NoPeers,
            Arc::new(Metrics::default()),
        )
        .unwrap();
        node.on_ready().unwrap();
        assert_eq!(node.raw.raft.state, StateRole::Leader);
        (node, registry)
    }

    fn set_weight<T: Transport>(node: &mut Node<T, MemLogStore>, role: &str, weight: f64) {
        let cmd = Command::SetWeights {
            weights: vec![(role.to_string(), weight)],
        };
        node.raw.propose(vec![], registry::encode(&cmd)).unwrap();
        node.on_ready().unwrap();
    }

    /// The messages a node sent, for the test to deliver by hand.
    #[derive(Clone, Default)]
    struct Outbox(Arc<Mutex<Vec<Message>>>);

    impl Transport for Outbox {
        fn send(&mut self, msgs: Vec<Message>) {
            self.0.lock().unwrap().extend(msgs);
        }
    }

    impl Outbox {
        fn take(&self) -> Vec<Message> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    /// Node `id` over `store`, sending into `outbox`, not on a thread: the test drives it.
    fn peer(
        id: u64,
        store: MemLogStore,
        outbox: &Outbox,
    ) -> (Node<Outbox, MemLogStore>, Arc<RwLock<Registry>>) {
        let registry = Arc::new(RwLock::new(Registry::default()));
        let (tx, _rx) = std::sync::mpsc::channel();
        let outbox = outbox.clone();
        let (node, _handle) = Node::new(
            config_of(id),
            store,
            registry.clone(),
            tx,
            |_| outbox,
            Arc::new(Metrics::default()),
        )
        .unwrap();
        (node, registry)
    }

    #[test]
    fn a_master_added_while_a_snapshot_is_serialised_catches_up_from_a_snapshot() {
        let seed = Registry {
            masters: [(1, "127.0.0.1:1".to_string())].into_iter().collect(),
            ..Default::default()
        };
        let from_leader = Outbox::default();
        let (mut leader, leader_registry) = peer(
            1,
            MemLogStore::bootstrap(vec![1], &seed.to_snapshot()),
            &from_leader,
        );
        leader.on_ready().unwrap();
        assert_eq!(leader.raw.raft.state, StateRole::Leader);
        for i in 0..5 {
            set_weight(&mut leader, &format!("role{i}"), 1.0);
        }
        // A periodic snapshot is being serialised and has not come back yet (the test
        // holds its sender).
        let (_serialiser, done) = std::sync::mpsc::channel();
        leader.next_snapshot = leader.applied + SNAPSHOT_EVERY;
        leader.snapshot_job = Some(SnapshotJob {
            index: leader.applied,
            done,
        });
        assert_eq!(leader.raw.store().snapshot_meta().index, 0);

        // Master 2 is added as a learner.
        let context = serde_json::to_vec(&ChangeContext {
            address: "127.0.0.1:2".to_string(),
        })
        .unwrap();
        leader
            .raw
            .propose_conf_change(context, single_change(2, ConfChangeType::AddLearnerNode))
            .unwrap();
        leader.on_ready().unwrap();
        let added_at = leader.applied;
        assert_eq!(leader.raw.store().conf_state().learners, vec![2]);
        assert!(
            leader.raw.store().snapshot_meta().index >= added_at,
            "the log is compacted past the new master's addition before it can ask for it"
        );

        // The new master starts from an empty store and hears from the leader.
        let from_joined = Outbox::default();
        let (mut joined, joined_registry) = peer(2, MemLogStore::joining(), &from_joined);
        joined.on_ready().unwrap();
        set_weight(&mut leader, "after", 3.0);
        for _ in 0..20 {
            leader.raw.tick();
            leader.on_ready().unwrap();
            for m in from_leader.take() {
                let snapshot = m.get_msg_type() == raft::prelude::MessageType::MsgSnapshot;
                joined.raw.step(m).unwrap();
                if snapshot {
                    leader.raw.report_snapshot(2, SnapshotStatus::Finish);
                }
            }
            joined.on_ready().unwrap();
            for m in from_joined.take() {
                leader.raw.step(m).unwrap();
            }
        }
        for m in from_leader.take() {
            joined.raw.step(m).unwrap();
        }
        joined.on_ready().unwrap();

        assert_eq!(joined.metrics.snapshots_received.get(), 1);
        assert!(joined.raw.store().snapshot_meta().index >= added_at);
        assert_eq!(joined.applied, leader.applied);
        assert_eq!(
            *joined_registry.read().unwrap(),
            *leader_registry.read().unwrap()
        );
        assert_eq!(joined.raw.store().conf_state().voters, vec![1]);
        assert_eq!(joined.raw.store().conf_state().learners, vec![2]);
        assert_eq!(
            joined
                .progress
                .masters
                .lock()
                .unwrap()
                .get(&1)
                .map(String::as_str),
            Some("127.0.0.1:1"),
            "the address book came with the snapshot"
        );
    }

    #[test]
    fn a_master_that_joined_applies_nothing_before_a_snapshot() {
        let from_leader = Outbox::default();
        let (mut leader, _) = peer(1, MemLogStore::bootstrap(vec![1], b""), &from_leader);
        leader.on_ready().unwrap();
        set_weight(&mut leader, "web", 1.0);
        let from_joined = Outbox::default();
        let (mut joined, _) = peer(2, MemLogStore::joining(), &from_joined);
        // The log from entry 1, as a leader that skipped the snapshot would send it.
        let mut append = Message::default();
        append.set_msg_type(raft::prelude::MessageType::MsgAppend);
        append.from = 1;
        append.to = 2;
        append.term = leader.raw.raft.term;
        append.commit = leader.raw.raft.raft_log.committed;
        append.set_entries(
            raft::Storage::entries(
                leader.raw.store(),
                1,
                leader.applied + 1,
                None,
                raft::GetEntriesContext::empty(false),
            )
            .unwrap()
            .into(),
        );
        joined.raw.step(append).unwrap();
        let err = joined.on_ready().unwrap_err();
        assert!(err.to_string().contains("before any snapshot"), "{err}");
        assert_eq!(joined.applied, 0);
        assert_eq!(joined.registry.read().unwrap().weights.len(), 0);
    }

    #[test]
    fn the_snapshot_serialised_off_the_thread_is_the_registry_at_its_index() {
        let seed = Registry {
            masters: [(1, "127.0.0.1:1".to_string())].into_iter().collect(),
            ..Default::default()
        };
        let (mut node, registry) = leader(MemLogStore::bootstrap(vec![1], &seed.to_snapshot()));
        for i in 0..5 {
            set_weight(&mut node, &format!("role{i}"), 1.0);
        }
        // A snapshot is due: the registry is copied now, at the applied index, and
        // serialised on another thread.
        node.next_snapshot = node.applied;
        node.maybe_snapshot().unwrap();
        assert!(node.snapshot_job.is_some());
        let index = node.applied;
        let term = raft::Storage::term(node.raw.store(), index).unwrap();
        let at_index = registry.read().unwrap().clone();
        assert_eq!(at_index.weights.len(), 5);
        // The registry moves on while the copy is serialised.
        for i in 5..8 {
            set_weight(&mut node, &format!("role{i}"), 2.0);
        }
        node.poll_snapshot(true).unwrap();
        assert!(node.snapshot_job.is_none());

        let store = &node.raw.store().0;
        assert!(!store.has_unsynced());
        assert_eq!(store.snapshot_meta().index, index);
        assert_eq!(store.snapshot_meta().term, term);
        assert_eq!(store.snapshot_meta().get_conf_state().voters, vec![1]);
        let stored = Registry::from_snapshot(&store.snapshot_data().unwrap()).unwrap();
        assert_eq!(
            stored, at_index,
            "the snapshot is the registry at its index"
        );
        assert_ne!(stored, *registry.read().unwrap());
        // The log is compacted through the snapshot and keeps what came after.
        assert_eq!(
            raft::Storage::first_index(node.raw.store()).unwrap(),
            index + 1
        );
        assert_eq!(store.last_index(), node.applied);

        // A restart from the store: the snapshot plus the log after it is the registry.
        let (restarted, registry_after) = leader(store.clone());
        assert_eq!(*registry_after.read().unwrap(), *registry.read().unwrap());
        assert_eq!(restarted.next_snapshot, index + SNAPSHOT_EVERY);
    }

    /// Log lines written while `f` runs, without colours.
    fn logged(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Lines(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Lines {
            type Writer = Lines;
            fn make_writer(&'a self) -> Lines {
                self.clone()
            }
        }
        let lines = Lines::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(lines.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = lines.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn a_background_snapshot_overtaken_by_the_leaders_is_dropped_and_said_so() {
        let (mut node, _registry) = leader(MemLogStore::bootstrap(vec![1], b""));
        for i in 0..3 {
            set_weight(&mut node, &format!("role{i}"), 1.0);
        }
        let (serialiser, done) = std::sync::mpsc::channel();
        let index = node.applied;
        node.snapshot_job = Some(SnapshotJob { index, done });
        // Meanwhile a newer snapshot (from a leader) is installed.
        let mut newer = Snapshot::default();
        newer.mut_metadata().index = index + 5;
        newer.mut_metadata().term = node.raw.raft.term;
        newer
            .mut_metadata()
            .set_conf_state(node.raw.store().conf_state().clone());
        newer.set_data(b"the leader's".to_vec().into());
        node.raw.mut_store().apply_snapshot(&newer).unwrap();
        let mut meta = SnapshotMetadata {
            index,
            ..Default::default()
        };
        meta.set_conf_state(node.raw.store().conf_state().clone());
        serialiser.send((meta, b"ours".to_vec())).unwrap();

        let log = logged(|| node.poll_snapshot(true).unwrap());
        assert!(node.snapshot_job.is_none());
        let store = &node.raw.store().0;
        assert_eq!(store.snapshot_meta().index, index + 5);
        assert_eq!(store.snapshot_data().unwrap(), b"the leader's");
        assert!(log.contains("registry snapshot dropped"), "{log}");
        assert!(!log.contains("log compacted"), "{log}");

        // One that is stored says so.
        let (serialiser, done) = std::sync::mpsc::channel();
        node.snapshot_job = Some(SnapshotJob {
            index: index + 6,
            done,
        });
        let mut meta = SnapshotMetadata {
            index: index + 6,
            ..Default::default()
        };
        meta.set_conf_state(node.raw.store().conf_state().clone());
        serialiser.send((meta, b"ours".to_vec())).unwrap();
        let log = logged(|| node.poll_snapshot(true).unwrap());
        assert_eq!(node.raw.store().snapshot_meta().index, index + 6);
        assert!(
            log.contains("registry snapshot taken; log compacted"),
            "{log}"
        );
    }

    #[test]
    fn a_failed_background_snapshot_is_counted_and_tried_again_later() {
        let (mut node, _registry) = leader(MemLogStore::bootstrap(vec![1], b""));
        for i in 0..3 {
            set_weight(&mut node, &format!("role{i}"), 1.0);
        }
        // The serialiser died without an answer (it panicked).
        let (serialiser, done) = std::sync::mpsc::channel();
        drop(serialiser);
        node.snapshot_job = Some(SnapshotJob {
            index: node.applied,
            done,
        });
        set_weight(&mut node, "web", 1.0);
        assert!(node.snapshot_job.is_none());
        assert_eq!(node.metrics.snapshot_failures.get(), 1);
        let failed_at = node.applied;
        // Not at every Ready that follows...
        let cmd = registry::encode(&Command::SetWeights {
            weights: vec![("web".to_string(), 2.0)],
        });
        while node.applied < failed_at + SNAPSHOT_RETRY_AFTER {
            assert!(node.snapshot_job.is_none());
            assert_eq!(node.raw.store().snapshot_meta().index, 0);
            for _ in 0..100 {
                node.raw.propose(vec![], cmd.clone()).unwrap();
            }
            node.on_ready().unwrap();
        }
        // ...but once enough entries are applied.
        assert_eq!(
            node.snapshot_job.as_ref().map(|j| j.index),
            Some(node.applied)
        );
        node.poll_snapshot(true).unwrap();
        assert_eq!(node.raw.store().snapshot_meta().index, node.applied);
        assert_eq!(node.metrics.snapshot_failures.get(), 1);
    }

    #[test]
    fn a_snapshot_is_taken_every_so_many_entries_and_one_at_a_time() {
        let (mut node, _registry) = leader(MemLogStore::bootstrap(vec![1], b""));
        // Applied entries in batches, as a burst of proposals: no snapshot until
        // SNAPSHOT_EVERY of them.
        let cmd = registry::encode(&Command::SetWeights {
            weights: vec![("web".to_string(), 1.0)],
        });
        while node.applied < SNAPSHOT_EVERY {
            assert!(node.snapshot_job.is_none());
            assert_eq!(node.raw.store().snapshot_meta().index, 0);
            for _ in 0..500 {
                node.raw.propose(vec![], cmd.clone()).unwrap();
            }
            node.on_ready().unwrap();
        }
        let first = node.snapshot_job.as_ref().map(|j| j.index);
        assert_eq!(first, Some(node.applied));
        // Until it is stored, no other starts, however due.
        node.next_snapshot = 0;
        node.maybe_snapshot().unwrap();
        assert_eq!(node.snapshot_job.as_ref().map(|j| j.index), first);
        node.poll_snapshot(true).unwrap();
        assert!(node.snapshot_job.is_none());
        assert_eq!(Some(node.raw.store().snapshot_meta().index), first);
    }
}
