//! Where the Raft node keeps its log: the [`LogStore`] trait, its RocksDB implementation
//! for the daemon ([`RocksStorage`]) and an in-memory one for tests and the simulator
//! ([`MemLogStore`]), and [`RaftStorage`], raft-rs's `Storage` over any of them.
//!
//! A store writes at once (reads see every write) but promises durability only after
//! [`LogStore::sync`]: the Raft thread appends a `Ready`'s entries and hard state and then
//! syncs once, before any message that depends on them leaves (group commit).
//!
//! RocksDB layout (one column family, prefixed keys):
//! - `m/hard_state`, `m/conf_state`: raft's hard state and membership;
//! - `m/snap_meta`, `m/snap_data`: the latest registry snapshot and its (index, term,
//!   conf state); the log starts right after it;
//! - `l/<index as 8 big-endian bytes>`: log entries, so that index order is key order.
//!
//! The first/last index and hard state are cached in memory. Each write is one
//! `WriteBatch` written without sync; [`LogStore::sync`] fsyncs RocksDB's write-ahead log,
//! which makes every earlier write durable at once.

use std::path::Path;

use protobuf::Message as PbMessage;
use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use rocksdb::{WriteBatch, WriteOptions, DB};

use crate::error::{MasterError, Result};

/// The Raft node's durable state, as the node writes it: the log, the hard state, the
/// commit index, the applied membership and the registry snapshot, and an explicit `sync`.
///
/// Writes are visible to reads at once; they are durable only after [`LogStore::sync`]
/// (except where a method says otherwise). Each write is atomic: a crash leaves it whole
/// or absent.
pub trait LogStore: Send + 'static {
    /// Raft's term, vote and commit index.
    fn hard_state(&self) -> &HardState;
    /// The membership the store holds (the latest applied membership entry's).
    fn conf_state(&self) -> &ConfState;
    /// Log index of the last membership entry [`LogStore::conf_state`] includes: on
    /// restart, the log is replayed from the snapshot, and membership entries up to here
    /// must not be applied to Raft twice.
    fn conf_index(&self) -> u64;
    /// The latest snapshot's (index, term, membership); the log starts right after it.
    fn snapshot_meta(&self) -> &SnapshotMetadata;
    /// The latest snapshot's bytes (the serialized registry).
    fn snapshot_data(&self) -> Result<Vec<u8>>;
    /// Index of the last log entry (the snapshot's index when the log is empty).
    fn last_index(&self) -> u64;
    /// The stored entries with indexes in `low..high`, in order, stopping before the total
    /// size passes `max_size` (but always at least one entry when there is one).
    fn entries(&self, low: u64, high: u64, max_size: u64) -> Result<Vec<Entry>>;

    /// Appends entries, dropping any stored suffix from the first one's index on (a new
    /// leader's log wins over conflicting entries).
    fn append(&mut self, entries: &[Entry]) -> Result<()>;
    /// Records raft's term, vote and commit index.
    fn set_hard_state(&mut self, hs: &HardState) -> Result<()>;
    /// Records a new commit index. Need not be synced: a commit index lost in a crash is
    /// learned again from the log and the peers, while term and vote (which must never go
    /// back) are synced with the entries.
    fn set_commit(&mut self, commit: u64) -> Result<()>;
    /// Records an applied membership change, with the index of its entry.
    fn set_conf_state(&mut self, cs: ConfState, index: u64) -> Result<()>;
    /// Stores a snapshot of the applied registry (`meta` says at which index and term, and
    /// the membership at that index) and compacts the log through that index. Ignored
    /// when the store already holds a snapshot at least as recent.
    fn save_snapshot(&mut self, meta: SnapshotMetadata, data: &[u8]) -> Result<()>;
    /// Installs a snapshot received from the leader: the log restarts after it.
    fn apply_snapshot(&mut self, snap: &Snapshot) -> Result<()>;
    /// Makes every earlier write durable.
    fn sync(&mut self) -> Result<()>;
}

/// raft-rs's `Storage` over a [`LogStore`]. Derefs to the store, so that the node writes
/// through it directly.
pub struct RaftStorage<S>(pub S);

impl<S> std::ops::Deref for RaftStorage<S> {
    type Target = S;
    fn deref(&self) -> &S {
        &self.0
    }
}

impl<S> std::ops::DerefMut for RaftStorage<S> {
    fn deref_mut(&mut self) -> &mut S {
        &mut self.0
    }
}

fn store_err(e: impl std::fmt::Display) -> raft::Error {
    raft::Error::Store(StorageError::Other(e.to_string().into()))
}

impl<S: LogStore> raft::Storage for RaftStorage<S> {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.0.hard_state().clone(),
            self.0.conf_state().clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.0.snapshot_meta().index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.0.last_index() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max = max_size.into().unwrap_or(u64::MAX);
        let out = self.0.entries(low, high, max).map_err(store_err)?;
        if out.is_empty() && low < high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let meta = self.0.snapshot_meta();
        if idx == meta.index {
            return Ok(meta.term);
        }
        if idx < meta.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.0.last_index() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        match self
            .0
            .entries(idx, idx + 1, u64::MAX)
            .map_err(store_err)?
            .first()
        {
            Some(e) if e.index == idx => Ok(e.term),
            _ => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.0.snapshot_meta().index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.0.last_index())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let meta = self.0.snapshot_meta().clone();
        if meta.index < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let data = self.0.snapshot_data().map_err(store_err)?;
        let mut snap = Snapshot::default();
        snap.set_metadata(meta);
        snap.set_data(data.into());
        Ok(snap)
    }
}

/// The snapshot metadata of a brand-new store: index 0, the seeded membership.
fn seed_meta(cs: &ConfState, index: u64, term: u64) -> SnapshotMetadata {
    let mut meta = SnapshotMetadata {
        index,
        term,
        ..Default::default()
    };
    meta.set_conf_state(cs.clone());
    meta
}

/// A [`LogStore`] in memory: the Raft node of unit tests and of the simulator. Counts its
/// syncs, and keeps what the last sync made durable apart from what was written since, so
/// that a test can check the order of writes and syncs and [`MemLogStore::crash`] it.
#[derive(Debug, Default, Clone)]
pub struct MemLogStore {
    /// Every write, as reads see it.
    live: MemState,
    /// What the last sync made durable: what a crash leaves.
    durable: MemState,
    /// Writes since the last sync, replayed onto `durable` by the next.
    pending: Vec<MemWrite>,
    unsynced: bool,
    syncs: u64,
}

/// The contents of a [`MemLogStore`].
#[derive(Debug, Default, Clone)]
struct MemState {
    hard_state: HardState,
    conf_state: ConfState,
    conf_index: u64,
    snap_meta: SnapshotMetadata,
    snap_data: Vec<u8>,
    /// The log after the snapshot: `log[i]` has index `snap_meta.index + 1 + i`.
    log: Vec<Entry>,
}

/// One write to a [`MemLogStore`].
#[derive(Debug, Clone)]
enum MemWrite {
    Append(Vec<Entry>),
    HardState(HardState),
    Commit(u64),
    ConfState(ConfState, u64),
    SaveSnapshot(SnapshotMetadata, Vec<u8>),
    ApplySnapshot(Snapshot),
}

impl MemState {
    fn last_index(&self) -> u64 {
        self.snap_meta.index + self.log.len() as u64
    }

    fn write(&mut self, w: &MemWrite) -> Result<()> {
        match w {
            MemWrite::Append(entries) => {
                let Some(first) = entries.first() else {
                    return Ok(());
                };
                if first.index <= self.snap_meta.index || first.index > self.last_index() + 1 {
                    return Err(MasterError::Internal(format!(
                        "appending entry {} to a log holding {} to {}",
                        first.index,
                        self.snap_meta.index + 1,
                        self.last_index()
                    )));
                }
                self.log
                    .truncate((first.index - self.snap_meta.index - 1) as usize);
                self.log.extend_from_slice(entries);
            }
            MemWrite::HardState(hs) => self.hard_state = hs.clone(),
            MemWrite::Commit(commit) => self.hard_state.commit = *commit,
            MemWrite::ConfState(cs, index) => {
                self.conf_state = cs.clone();
                self.conf_index = *index;
            }
            MemWrite::SaveSnapshot(meta, data) => {
                if meta.index <= self.snap_meta.index {
                    return Ok(());
                }
                let drop = ((meta.index - self.snap_meta.index) as usize).min(self.log.len());
                self.log.drain(..drop);
                self.snap_meta = meta.clone();
                self.snap_data = data.clone();
            }
            MemWrite::ApplySnapshot(snap) => {
                let meta = snap.get_metadata().clone();
                self.log.clear();
                self.hard_state.term = self.hard_state.term.max(meta.term);
                self.hard_state.commit = meta.index;
                self.conf_state = meta.get_conf_state().clone();
                self.conf_index = meta.index;
                self.snap_data = snap.get_data().to_vec();
                self.snap_meta = meta;
            }
        }
        Ok(())
    }
}

impl MemLogStore {
    /// A store seeded like a new cluster's member: `voters`, and `registry` (the initial
    /// registry's bytes) as the snapshot at index 0.
    pub fn bootstrap(voters: Vec<u64>, registry: &[u8]) -> Self {
        let cs = ConfState {
            voters,
            ..Default::default()
        };
        let seeded = MemState {
            snap_meta: seed_meta(&cs, 0, 0),
            conf_state: cs,
            snap_data: registry.to_vec(),
            ..Default::default()
        };
        Self {
            durable: seeded.clone(),
            live: seeded,
            ..Default::default()
        }
    }

    /// A store for a master that joins a running cluster: no membership (the leader's
    /// snapshot brings it).
    pub fn joining() -> Self {
        Self::default()
    }

    /// How many times [`LogStore::sync`] made writes durable.
    pub fn syncs(&self) -> u64 {
        self.syncs
    }

    /// True when some write has not been synced yet.
    pub fn has_unsynced(&self) -> bool {
        self.unsynced
    }

    /// The store as a crash now would leave it: what the last sync made durable, every
    /// later write lost.
    pub fn crash(&self) -> Self {
        Self {
            live: self.durable.clone(),
            durable: self.durable.clone(),
            pending: Vec::new(),
            unsynced: false,
            syncs: self.syncs,
        }
    }

    /// Applies a write; `needs_sync`: it counts as unsynced until the next sync (a commit
    /// index does not, but is lost in a crash all the same).
    fn write(&mut self, w: MemWrite, needs_sync: bool) -> Result<()> {
        self.live.write(&w)?;
        self.pending.push(w);
        self.unsynced |= needs_sync;
        Ok(())
    }
}

impl LogStore for MemLogStore {
    fn hard_state(&self) -> &HardState {
        &self.live.hard_state
    }

    fn conf_state(&self) -> &ConfState {
        &self.live.conf_state
    }

    fn conf_index(&self) -> u64 {
        self.live.conf_index
    }

    fn snapshot_meta(&self) -> &SnapshotMetadata {
        &self.live.snap_meta
    }

    fn snapshot_data(&self) -> Result<Vec<u8>> {
        Ok(self.live.snap_data.clone())
    }

    fn last_index(&self) -> u64 {
        self.live.last_index()
    }

    fn entries(&self, low: u64, high: u64, max_size: u64) -> Result<Vec<Entry>> {
        let first = self.live.snap_meta.index + 1;
        let (low, high) = (low.max(first), high.min(self.last_index() + 1));
        let mut out = Vec::new();
        let mut size = 0u64;
        for e in self
            .live
            .log
            .iter()
            .skip((low - first) as usize)
            .take(high.saturating_sub(low) as usize)
        {
            size += u64::from(e.compute_size());
            // raft-rs expects at least one entry even when it alone exceeds the limit.
            if !out.is_empty() && size > max_size {
                break;
            }
            out.push(e.clone());
        }
        Ok(out)
    }

    fn append(&mut self, entries: &[Entry]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        self.write(MemWrite::Append(entries.to_vec()), true)
    }

    fn set_hard_state(&mut self, hs: &HardState) -> Result<()> {
        self.write(MemWrite::HardState(hs.clone()), true)
    }

    fn set_commit(&mut self, commit: u64) -> Result<()> {
        self.write(MemWrite::Commit(commit), false)
    }

    fn set_conf_state(&mut self, cs: ConfState, index: u64) -> Result<()> {
        self.write(MemWrite::ConfState(cs, index), true)
    }

    fn save_snapshot(&mut self, meta: SnapshotMetadata, data: &[u8]) -> Result<()> {
        if meta.index <= self.live.snap_meta.index {
            return Ok(());
        }
        self.write(MemWrite::SaveSnapshot(meta, data.to_vec()), true)
    }

    fn apply_snapshot(&mut self, snap: &Snapshot) -> Result<()> {
        self.write(MemWrite::ApplySnapshot(snap.clone()), true)
    }

    fn sync(&mut self) -> Result<()> {
        for w in self.pending.drain(..) {
            self.durable
                .write(&w)
                .expect("a write the live state took applies to the durable state");
        }
        if self.unsynced {
            self.unsynced = false;
            self.syncs += 1;
        }
        Ok(())
    }
}

const HARD_STATE: &[u8] = b"m/hard_state";
const CONF_STATE: &[u8] = b"m/conf_state";
const SNAP_META: &[u8] = b"m/snap_meta";
const SNAP_DATA: &[u8] = b"m/snap_data";
const NODE_ID: &[u8] = b"m/node_id";
/// Log index of the last membership entry reflected in `m/conf_state` (see
/// [`LogStore::conf_index`]).
const CONF_INDEX: &[u8] = b"m/conf_index";

fn log_key(index: u64) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[0] = b'l';
    k[1] = b'/';
    k[2..].copy_from_slice(&index.to_be_bytes());
    k
}

fn rocks(context: &'static str) -> impl FnOnce(rocksdb::Error) -> MasterError {
    move |e| MasterError::rocks(context, e)
}

fn encode(what: &str, m: &impl PbMessage) -> Result<Vec<u8>> {
    m.write_to_bytes()
        .map_err(|e| MasterError::Internal(format!("cannot encode the {what}: {e}")))
}

fn decode<M: PbMessage>(what: &str, bytes: &[u8]) -> Result<M> {
    M::parse_from_bytes(bytes)
        .map_err(|e| MasterError::Corrupt(format!("the stored {what} cannot be decoded: {e}")))
}

/// Raft log, hard state and snapshots in one RocksDB database.
pub struct RocksStorage {
    db: DB,
    hard_state: HardState,
    conf_state: ConfState,
    snap_meta: SnapshotMetadata,
    last_index: u64,
    conf_index: u64,
    /// A write since the last sync needs one (everything but commit indexes).
    unsynced: bool,
}

impl RocksStorage {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        let db = DB::open(&opts, dir).map_err(|e| {
            MasterError::rocks(format!("cannot open the database in {}", dir.display()), e)
        })?;
        let get = |key: &[u8]| db.get(key).map_err(rocks("cannot read the database"));
        let hard_state = match get(HARD_STATE)? {
            Some(b) => decode("hard state", &b)?,
            None => HardState::default(),
        };
        let conf_state = match get(CONF_STATE)? {
            Some(b) => decode("membership", &b)?,
            None => ConfState::default(),
        };
        let snap_meta = match get(SNAP_META)? {
            Some(b) => decode("snapshot metadata", &b)?,
            None => SnapshotMetadata::default(),
        };
        let conf_index = match get(CONF_INDEX)? {
            Some(b) => u64::from_be_bytes(b.as_slice().try_into().unwrap_or([0; 8])),
            None => 0,
        };
        let mut last_index = snap_meta.index;
        {
            let mut it = db.raw_iterator();
            it.seek_for_prev(log_key(u64::MAX));
            if it.valid() {
                if let Some(k) = it.key() {
                    if k.len() == 10 && k.starts_with(b"l/") {
                        last_index = u64::from_be_bytes(k[2..].try_into().expect("8 bytes"));
                    }
                }
            }
        }
        Ok(Self {
            db,
            hard_state,
            conf_state,
            snap_meta,
            last_index,
            conf_index,
            unsynced: false,
        })
    }

    /// True when this database has never held raft state (a brand-new member).
    pub fn is_empty(&self) -> bool {
        self.conf_state.voters.is_empty()
            && self.conf_state.learners.is_empty()
            && self.last_index == 0
            && self.snap_meta.index == 0
    }

    /// The node id this database belongs to, if recorded.
    pub fn node_id(&self) -> Result<Option<u64>> {
        Ok(self
            .db
            .get(NODE_ID)
            .map_err(rocks("cannot read the node id"))?
            .map(|b| u64::from_be_bytes(b.as_slice().try_into().unwrap_or([0; 8]))))
    }

    /// Seeds a brand-new cluster's membership (and records which node this is). `registry`
    /// is the initial registry (its address book of masters), stored as the snapshot at
    /// index 0; every seeded member must be given the same one.
    pub fn bootstrap(&mut self, node_id: u64, voters: Vec<u64>, registry: &[u8]) -> Result<()> {
        let cs = ConfState {
            voters,
            ..Default::default()
        };
        let meta = seed_meta(&cs, 0, 0);
        let mut batch = WriteBatch::default();
        batch.put(CONF_STATE, encode("membership", &cs)?);
        batch.put(NODE_ID, node_id.to_be_bytes());
        batch.put(SNAP_META, encode("snapshot metadata", &meta)?);
        batch.put(SNAP_DATA, registry);
        self.write_synced(batch, "cannot seed the cluster's membership")?;
        self.conf_state = cs;
        self.snap_meta = meta;
        Ok(())
    }

    /// Seeds a new cluster's member from a registry backup: the backup becomes the
    /// snapshot at (`index`, `term`), and the log starts after it. Every member of the new
    /// cluster is restored from the same backup with the same voters.
    pub fn restore(
        &mut self,
        node_id: u64,
        voters: Vec<u64>,
        index: u64,
        term: u64,
        registry: &[u8],
    ) -> Result<()> {
        if !self.is_empty() {
            return Err(MasterError::Backup(
                "the data folder already holds cluster state".into(),
            ));
        }
        let cs = ConfState {
            voters,
            ..Default::default()
        };
        let meta = seed_meta(&cs, index, term);
        let hs = HardState {
            term,
            commit: index,
            ..Default::default()
        };
        let mut batch = WriteBatch::default();
        batch.put(CONF_STATE, encode("membership", &cs)?);
        batch.put(CONF_INDEX, index.to_be_bytes());
        batch.put(NODE_ID, node_id.to_be_bytes());
        batch.put(SNAP_META, encode("snapshot metadata", &meta)?);
        batch.put(SNAP_DATA, registry);
        batch.put(HARD_STATE, encode("hard state", &hs)?);
        self.write_synced(batch, "cannot restore the registry")?;
        self.conf_state = cs;
        self.conf_index = index;
        self.snap_meta = meta;
        self.hard_state = hs;
        self.last_index = index;
        Ok(())
    }

    /// Records that this node will join an existing cluster: its id, and no membership
    /// (the leader's snapshot brings it).
    pub fn record_joining(&mut self, node_id: u64) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.put(NODE_ID, node_id.to_be_bytes());
        self.write_synced(batch, "cannot record the node id")
    }

    /// Writes and fsyncs at once (the setup steps before the Raft thread starts).
    fn write_synced(&mut self, batch: WriteBatch, context: &'static str) -> Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch, &wo).map_err(rocks(context))
    }

    /// Writes without fsync; [`LogStore::sync`] makes it durable.
    fn write(&mut self, batch: WriteBatch, context: &'static str) -> Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(false);
        self.db.write_opt(batch, &wo).map_err(rocks(context))
    }
}

impl LogStore for RocksStorage {
    fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    fn conf_index(&self) -> u64 {
        self.conf_index
    }

    fn snapshot_meta(&self) -> &SnapshotMetadata {
        &self.snap_meta
    }

    fn snapshot_data(&self) -> Result<Vec<u8>> {
        Ok(self
            .db
            .get(SNAP_DATA)
            .map_err(rocks("cannot read the registry snapshot"))?
            .unwrap_or_default())
    }

    fn last_index(&self) -> u64 {
        self.last_index
    }

    fn entries(&self, low: u64, high: u64, max_size: u64) -> Result<Vec<Entry>> {
        let mut out = Vec::with_capacity(high.saturating_sub(low).min(1024) as usize);
        let mut size = 0u64;
        let mut it = self.db.raw_iterator();
        it.seek(log_key(low));
        while it.valid() {
            let Some(k) = it.key() else { break };
            if k.len() != 10 || !k.starts_with(b"l/") {
                break;
            }
            let idx = u64::from_be_bytes(k[2..].try_into().expect("8 bytes"));
            if idx >= high {
                break;
            }
            let e: Entry = decode("log entry", it.value().unwrap_or_default())?;
            size += u64::from(e.compute_size());
            // raft-rs expects at least one entry even when it alone exceeds the limit.
            if !out.is_empty() && size > max_size {
                break;
            }
            out.push(e);
            it.next();
        }
        it.status().map_err(rocks("cannot read the log"))?;
        Ok(out)
    }

    fn append(&mut self, entries: &[Entry]) -> Result<()> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(());
        };
        debug_assert!(first.index > self.snap_meta.index);
        let mut batch = WriteBatch::default();
        for e in entries {
            batch.put(log_key(e.index), encode("log entry", e)?);
        }
        // Entries past the new end conflict with the leader's log: drop them.
        if self.last_index > last.index {
            batch.delete_range(log_key(last.index + 1), log_key(self.last_index + 1));
        }
        self.write(batch, "cannot append to the log")?;
        self.last_index = last.index;
        self.unsynced = true;
        Ok(())
    }

    fn set_hard_state(&mut self, hs: &HardState) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.put(HARD_STATE, encode("hard state", hs)?);
        self.write(batch, "cannot write the hard state")?;
        self.hard_state = hs.clone();
        self.unsynced = true;
        Ok(())
    }

    fn set_commit(&mut self, commit: u64) -> Result<()> {
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        let mut batch = WriteBatch::default();
        batch.put(HARD_STATE, encode("hard state", &hs)?);
        self.write(batch, "cannot write the commit index")?;
        self.hard_state = hs;
        Ok(())
    }

    fn set_conf_state(&mut self, cs: ConfState, index: u64) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.put(CONF_STATE, encode("membership", &cs)?);
        batch.put(CONF_INDEX, index.to_be_bytes());
        self.write(batch, "cannot write the membership")?;
        self.conf_state = cs;
        self.conf_index = index;
        self.unsynced = true;
        Ok(())
    }

    fn save_snapshot(&mut self, meta: SnapshotMetadata, data: &[u8]) -> Result<()> {
        if meta.index <= self.snap_meta.index {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        batch.put(SNAP_META, encode("snapshot metadata", &meta)?);
        batch.put(SNAP_DATA, data);
        batch.delete_range(log_key(0), log_key(meta.index + 1));
        self.write(batch, "cannot store the registry snapshot")?;
        self.last_index = self.last_index.max(meta.index);
        self.snap_meta = meta;
        self.unsynced = true;
        Ok(())
    }

    fn apply_snapshot(&mut self, snap: &Snapshot) -> Result<()> {
        let meta = snap.get_metadata().clone();
        let mut hs = self.hard_state.clone();
        hs.term = hs.term.max(meta.term);
        hs.commit = meta.index;
        let mut batch = WriteBatch::default();
        batch.delete_range(log_key(0), log_key(u64::MAX));
        batch.put(SNAP_META, encode("snapshot metadata", &meta)?);
        batch.put(SNAP_DATA, snap.get_data());
        batch.put(CONF_STATE, encode("membership", meta.get_conf_state())?);
        batch.put(CONF_INDEX, meta.index.to_be_bytes());
        batch.put(HARD_STATE, encode("hard state", &hs)?);
        self.write(batch, "cannot install the leader's snapshot")?;
        self.hard_state = hs;
        self.conf_state = meta.get_conf_state().clone();
        self.conf_index = meta.index;
        self.last_index = meta.index;
        self.snap_meta = meta;
        self.unsynced = true;
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        if self.unsynced {
            // Every write went to the write-ahead log; one fsync makes them all durable.
            self.db
                .flush_wal(true)
                .map_err(rocks("cannot sync the write-ahead log"))?;
            self.unsynced = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: format!("e{index}").into_bytes().into(),
            ..Default::default()
        }
    }

    fn meta(index: u64, term: u64, voters: Vec<u64>) -> SnapshotMetadata {
        seed_meta(
            &ConfState {
                voters,
                ..Default::default()
            },
            index,
            term,
        )
    }

    /// Appends, truncates a conflicting suffix and compacts through a snapshot: the same
    /// answers from every store.
    fn log_behaves(s: &mut RaftStorage<impl LogStore>) {
        let hs = HardState {
            term: 2,
            vote: 1,
            commit: 3,
            ..Default::default()
        };
        s.append(&(1..=5).map(|i| entry(i, 2)).collect::<Vec<_>>())
            .unwrap();
        s.set_hard_state(&hs).unwrap();
        s.sync().unwrap();
        // A new leader overwrites index 4 onwards with a shorter log.
        s.append(&[entry(4, 3)]).unwrap();
        assert_eq!(Storage::last_index(s).unwrap(), 4);
        assert_eq!(s.term(4).unwrap(), 3);
        assert_eq!(s.term(3).unwrap(), 2);
        assert_eq!(s.initial_state().unwrap().hard_state, hs);
        let es = s
            .entries(1, 5, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(es.iter().map(|e| e.index).collect::<Vec<_>>(), [1, 2, 3, 4]);
        // At least one entry, however small the limit.
        let es = s
            .entries(2, 5, Some(1), GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(es.len(), 1);
        assert!(matches!(
            s.entries(1, 6, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Unavailable))
        ));

        s.append(&(5..=10).map(|i| entry(i, 3)).collect::<Vec<_>>())
            .unwrap();
        s.save_snapshot(meta(7, 3, vec![1]), b"registry").unwrap();
        assert_eq!(s.first_index().unwrap(), 8);
        assert_eq!(Storage::last_index(s).unwrap(), 10);
        assert_eq!(s.term(7).unwrap(), 3);
        assert!(matches!(
            s.term(3),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert!(matches!(
            s.entries(7, 9, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        let snap = s.snapshot(7, 2).unwrap();
        assert_eq!(snap.get_data(), b"registry");
        assert_eq!(snap.get_metadata().get_conf_state().voters, vec![1]);
        assert!(matches!(
            s.snapshot(8, 2),
            Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable
            ))
        ));
        // An older snapshot changes nothing.
        s.save_snapshot(meta(5, 3, vec![1]), b"older").unwrap();
        assert_eq!(s.snapshot(7, 2).unwrap().get_data(), b"registry");

        // The leader's snapshot replaces the log.
        let mut leaders = Snapshot::default();
        leaders.set_metadata(meta(20, 4, vec![1, 2, 3]));
        leaders.set_data(b"leader's".to_vec().into());
        s.apply_snapshot(&leaders).unwrap();
        assert_eq!(s.first_index().unwrap(), 21);
        assert_eq!(Storage::last_index(s).unwrap(), 20);
        assert_eq!(s.hard_state().commit, 20);
        assert_eq!(s.hard_state().term, 4);
        assert_eq!(s.conf_state().voters, vec![1, 2, 3]);
        assert_eq!(s.conf_index(), 20);
        s.append(&[entry(21, 4)]).unwrap();
        s.set_commit(21).unwrap();
        s.sync().unwrap();
        assert_eq!(s.term(21).unwrap(), 4);
        assert_eq!(s.hard_state().commit, 21);
    }

    #[test]
    fn the_rocksdb_store_keeps_the_log_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = RocksStorage::open(dir.path()).unwrap();
            assert!(s.is_empty());
            s.bootstrap(1, vec![1], b"").unwrap();
            let mut s = RaftStorage(s);
            log_behaves(&mut s);
            s.set_conf_state(
                ConfState {
                    voters: vec![1, 2],
                    ..Default::default()
                },
                21,
            )
            .unwrap();
            s.sync().unwrap();
        }
        let s = RaftStorage(RocksStorage::open(dir.path()).unwrap());
        assert!(!s.is_empty());
        assert_eq!(s.node_id().unwrap(), Some(1));
        assert_eq!(s.first_index().unwrap(), 21);
        assert_eq!(Storage::last_index(&s).unwrap(), 21);
        assert_eq!(s.term(21).unwrap(), 4);
        assert_eq!(s.initial_state().unwrap().hard_state.commit, 21);
        assert_eq!(s.conf_state().voters, vec![1, 2]);
        assert_eq!(s.conf_index(), 21);
        assert_eq!(s.snapshot(20, 2).unwrap().get_data(), b"leader's");
    }

    #[test]
    fn the_memory_store_keeps_the_log_and_counts_syncs() {
        let mut s = RaftStorage(MemLogStore::bootstrap(vec![1], b""));
        assert_eq!(s.initial_state().unwrap().conf_state.voters, vec![1]);
        log_behaves(&mut s);
        // Writes wait for a sync; a commit index alone does not need one.
        assert!(!s.has_unsynced());
        let syncs = s.syncs();
        s.set_commit(21).unwrap();
        assert!(!s.has_unsynced());
        s.append(&[entry(22, 4)]).unwrap();
        assert!(s.has_unsynced());
        s.sync().unwrap();
        assert_eq!(s.syncs(), syncs + 1);
    }

    #[test]
    fn a_crashed_memory_store_keeps_only_what_was_synced() {
        let mut s = MemLogStore::bootstrap(vec![1], b"seed");
        s.append(&[entry(1, 1), entry(2, 1)]).unwrap();
        let hs = HardState {
            term: 1,
            vote: 1,
            ..Default::default()
        };
        s.set_hard_state(&hs).unwrap();
        assert_eq!(s.crash().last_index(), 0, "nothing synced yet");
        s.sync().unwrap();
        // Written since the sync: all lost in a crash.
        s.append(&[entry(3, 2)]).unwrap();
        s.set_commit(2).unwrap();
        s.set_conf_state(
            ConfState {
                voters: vec![1, 2],
                ..Default::default()
            },
            3,
        )
        .unwrap();
        let mut meta = SnapshotMetadata {
            index: 2,
            term: 1,
            ..Default::default()
        };
        meta.set_conf_state(s.conf_state().clone());
        s.save_snapshot(meta, b"at 2").unwrap();
        assert_eq!(s.last_index(), 3);

        let crashed = s.crash();
        assert!(!crashed.has_unsynced());
        assert_eq!(crashed.last_index(), 2);
        assert_eq!(crashed.hard_state(), &hs);
        assert_eq!(crashed.conf_state().voters, vec![1]);
        assert_eq!(crashed.snapshot_meta().index, 0);
        assert_eq!(crashed.snapshot_data().unwrap(), b"seed");
        assert_eq!(
            crashed.entries(1, 3, u64::MAX).unwrap(),
            vec![entry(1, 1), entry(2, 1)]
        );

        // Once synced, they survive it.
        s.sync().unwrap();
        let crashed = s.crash();
        assert_eq!(crashed.last_index(), 3);
        assert_eq!(crashed.hard_state().commit, 2);
        assert_eq!(crashed.conf_state().voters, vec![1, 2]);
        assert_eq!(crashed.snapshot_meta().index, 2);
        assert_eq!(crashed.entries(3, 4, u64::MAX).unwrap(), vec![entry(3, 2)]);
    }

    #[test]
    fn a_restored_store_starts_after_the_backup() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = RocksStorage::open(dir.path()).unwrap();
        s.restore(2, vec![1, 2], 1234, 7, b"backup").unwrap();
        assert!(s.restore(2, vec![1, 2], 1234, 7, b"backup").is_err());
        let s = RaftStorage(s);
        assert_eq!(s.first_index().unwrap(), 1235);
        assert_eq!(s.term(1234).unwrap(), 7);
        assert_eq!(s.hard_state().commit, 1234);
        assert_eq!(s.snapshot(1234, 1).unwrap().get_data(), b"backup");
    }
}
