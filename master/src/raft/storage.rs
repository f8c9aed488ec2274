//! raft-rs `Storage` on RocksDB.
//!
//! Layout (one column family, prefixed keys):
//! - `m/hard_state`, `m/conf_state`: raft's hard state and membership;
//! - `m/snap_meta`, `m/snap_data`: the latest registry snapshot and its (index, term,
//!   conf state); the log starts right after it;
//! - `l/<index as 8 big-endian bytes>`: log entries, so that index order is key order.
//!
//! The first/last index and hard state are cached in memory; every write goes through one
//! `WriteBatch` that is fsynced (`sync = true`) before raft is told it is durable, and a
//! `Ready`'s entries and hard state share one batch (group commit).

use std::path::Path;

use protobuf::Message as PbMessage;
use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use rocksdb::{WriteBatch, WriteOptions, DB};

const HARD_STATE: &[u8] = b"m/hard_state";
const CONF_STATE: &[u8] = b"m/conf_state";
const SNAP_META: &[u8] = b"m/snap_meta";
const SNAP_DATA: &[u8] = b"m/snap_data";
const NODE_ID: &[u8] = b"m/node_id";
/// Log index of the last membership entry reflected in `m/conf_state`: on restart, the log
/// is replayed from the snapshot, and membership entries up to here must not be applied
/// to Raft twice (the stored configuration already includes them).
const CONF_INDEX: &[u8] = b"m/conf_index";

fn log_key(index: u64) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[0] = b'l';
    k[1] = b'/';
    k[2..].copy_from_slice(&index.to_be_bytes());
    k
}

fn store_err(e: impl std::fmt::Display) -> raft::Error {
    raft::Error::Store(StorageError::Other(e.to_string().into()))
}

/// Raft log, hard state and snapshots in one RocksDB database.
pub struct RocksStorage {
    db: DB,
    hard_state: HardState,
    conf_state: ConfState,
    snap_meta: SnapshotMetadata,
    last_index: u64,
    conf_index: u64,
}

impl RocksStorage {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        let db = DB::open(&opts, dir)?;
        let hard_state = match db.get(HARD_STATE)? {
            Some(b) => HardState::parse_from_bytes(&b)?,
            None => HardState::default(),
        };
        let conf_state = match db.get(CONF_STATE)? {
            Some(b) => ConfState::parse_from_bytes(&b)?,
            None => ConfState::default(),
        };
        let snap_meta = match db.get(SNAP_META)? {
            Some(b) => SnapshotMetadata::parse_from_bytes(&b)?,
            None => SnapshotMetadata::default(),
        };
        let conf_index = match db.get(CONF_INDEX)? {
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
    pub fn node_id(&self) -> anyhow::Result<Option<u64>> {
        Ok(self
            .db
            .get(NODE_ID)?
            .map(|b| u64::from_be_bytes(b.as_slice().try_into().unwrap_or([0; 8]))))
    }

    /// Seeds a brand-new cluster's membership (and records which node this is). `registry`
    /// is the initial registry (its address book of masters), stored as the snapshot at
    /// index 0; every seeded member must be given the same one.
    pub fn bootstrap(
        &mut self,
        node_id: u64,
        voters: Vec<u64>,
        registry: &[u8],
    ) -> anyhow::Result<()> {
        let cs = ConfState {
            voters,
            ..Default::default()
        };
        let mut batch = WriteBatch::default();
        batch.put(CONF_STATE, cs.write_to_bytes()?);
        batch.put(NODE_ID, node_id.to_be_bytes());
        let mut meta = SnapshotMetadata::default();
        meta.set_conf_state(cs.clone());
        batch.put(SNAP_META, meta.write_to_bytes()?);
        batch.put(SNAP_DATA, registry);
        self.write(batch)?;
        self.conf_state = cs;
        self.snap_meta = meta;
        Ok(())
    }

    fn write(&self, batch: WriteBatch) -> anyhow::Result<()> {
        self.write_with(batch, true)
    }

    fn write_with(&self, batch: WriteBatch, sync: bool) -> anyhow::Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(batch, &wo)?;
        Ok(())
    }

    /// Appends entries (truncating any conflicting suffix) and, in the same fsynced batch,
    /// the new hard state.
    pub fn append(&mut self, entries: &[Entry], hs: Option<&HardState>) -> anyhow::Result<()> {
        let mut batch = WriteBatch::default();
        if let Some(first) = entries.first() {
            let new_last = entries.last().expect("non-empty").index;
            for e in entries {
                batch.put(log_key(e.index), e.write_to_bytes()?);
            }
            // Entries past the new end conflict with the leader's log: drop them.
            if self.last_index > new_last {
                batch.delete_range(log_key(new_last + 1), log_key(self.last_index + 1));
            }
            debug_assert!(first.index > self.snap_meta.index);
        }
        if let Some(hs) = hs {
            batch.put(HARD_STATE, hs.write_to_bytes()?);
        }
        self.write(batch)?;
        if let Some(last) = entries.last() {
            self.last_index = last.index;
        }
        if let Some(hs) = hs {
            self.hard_state = hs.clone();
        }
        Ok(())
    }

    /// Records a new commit index (from a `LightReady`). Not fsynced: a commit index lost
    /// in a crash is learned again from the log and the peers, while term and vote (which
    /// must never go back) are always written with a sync in [`RocksStorage::append`].
    pub fn set_commit(&mut self, commit: u64) -> anyhow::Result<()> {
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        let mut batch = WriteBatch::default();
        batch.put(HARD_STATE, hs.write_to_bytes()?);
        self.write_with(batch, false)?;
        self.hard_state = hs;
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
    ) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.is_empty(),
            "the data folder already holds cluster state"
        );
        let cs = ConfState {
            voters,
            ..Default::default()
        };
        let mut meta = SnapshotMetadata {
            index,
            term,
            ..Default::default()
        };
        meta.set_conf_state(cs.clone());
        let hs = HardState {
            term,
            commit: index,
            ..Default::default()
        };
        let mut batch = WriteBatch::default();
        batch.put(CONF_STATE, cs.write_to_bytes()?);
        batch.put(CONF_INDEX, index.to_be_bytes());
        batch.put(NODE_ID, node_id.to_be_bytes());
        batch.put(SNAP_META, meta.write_to_bytes()?);
        batch.put(SNAP_DATA, registry);
        batch.put(HARD_STATE, hs.write_to_bytes()?);
        self.write(batch)?;
        self.conf_state = cs;
        self.conf_index = index;
        self.snap_meta = meta;
        self.hard_state = hs;
        self.last_index = index;
        Ok(())
    }

    /// Records that this node will join an existing cluster: its id, and no membership
    /// (the leader's snapshot brings it).
    pub fn record_joining(&mut self, node_id: u64) -> anyhow::Result<()> {
        let mut batch = WriteBatch::default();
        batch.put(NODE_ID, node_id.to_be_bytes());
        self.write(batch)
    }

    /// Records a membership change that was applied, with the index of its entry.
    pub fn set_conf_state(&mut self, cs: ConfState, index: u64) -> anyhow::Result<()> {
        let mut batch = WriteBatch::default();
        batch.put(CONF_STATE, cs.write_to_bytes()?);
        batch.put(CONF_INDEX, index.to_be_bytes());
        self.write(batch)?;
        self.conf_state = cs;
        self.conf_index = index;
        Ok(())
    }

    /// Index of the last membership entry the stored configuration includes.
    pub fn conf_index(&self) -> u64 {
        self.conf_index
    }

    /// Stores a snapshot of the applied registry at (`index`, `term`) and compacts the log
    /// through `index`: a follower that lags further behind receives the snapshot instead.
    pub fn save_snapshot(&mut self, index: u64, term: u64, data: &[u8]) -> anyhow::Result<()> {
        if index <= self.snap_meta.index {
            return Ok(());
        }
        let mut meta = SnapshotMetadata {
            index,
            term,
            ..Default::default()
        };
        meta.set_conf_state(self.conf_state.clone());
        let mut batch = WriteBatch::default();
        batch.put(SNAP_META, meta.write_to_bytes()?);
        batch.put(SNAP_DATA, data);
        batch.delete_range(log_key(0), log_key(index + 1));
        self.write(batch)?;
        self.snap_meta = meta;
        Ok(())
    }

    /// Installs a snapshot received from the leader: the log restarts after it.
    pub fn apply_snapshot(&mut self, snap: &Snapshot) -> anyhow::Result<()> {
        let meta = snap.get_metadata().clone();
        let mut batch = WriteBatch::default();
        batch.delete_range(log_key(0), log_key(u64::MAX));
        batch.put(SNAP_META, meta.write_to_bytes()?);
        batch.put(SNAP_DATA, snap.get_data());
        batch.put(CONF_STATE, meta.get_conf_state().write_to_bytes()?);
        batch.put(CONF_INDEX, meta.index.to_be_bytes());
        let mut hs = self.hard_state.clone();
        hs.term = hs.term.max(meta.term);
        hs.commit = meta.index;
        batch.put(HARD_STATE, hs.write_to_bytes()?);
        self.write(batch)?;
        self.hard_state = hs;
        self.conf_state = meta.get_conf_state().clone();
        self.conf_index = meta.index;
        self.last_index = meta.index;
        self.snap_meta = meta;
        Ok(())
    }

    /// The stored registry snapshot and its metadata.
    pub fn stored_snapshot(&self) -> anyhow::Result<(SnapshotMetadata, Vec<u8>)> {
        Ok((
            self.snap_meta.clone(),
            self.db.get(SNAP_DATA)?.unwrap_or_default(),
        ))
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    fn first_index_inner(&self) -> u64 {
        self.snap_meta.index + 1
    }

    fn get_entry(&self, index: u64) -> raft::Result<Entry> {
        match self.db.get(log_key(index)).map_err(store_err)? {
            Some(b) => Entry::parse_from_bytes(&b).map_err(store_err),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }
}

impl raft::Storage for RocksStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first_index_inner() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last_index + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max = max_size.into().unwrap_or(u64::MAX);
        let mut out = Vec::with_capacity((high - low) as usize);
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
            let e = Entry::parse_from_bytes(it.value().unwrap_or_default()).map_err(store_err)?;
            size += e.compute_size() as u64;
            // raft-rs expects at least one entry even when it alone exceeds the limit.
            if !out.is_empty() && size > max {
                break;
            }
            out.push(e);
            it.next();
        }
        if out.is_empty() && low < high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snap_meta.index {
            return Ok(self.snap_meta.term);
        }
        if idx < self.first_index_inner() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last_index {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(self.get_entry(idx)?.term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first_index_inner())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index)
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let (meta, data) = self.stored_snapshot().map_err(store_err)?;
        if meta.index < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut snap = Snapshot::default();
        snap.set_metadata(meta);
        snap.set_data(data.into());
        Ok(snap)
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

    #[test]
    fn survives_reopen_and_truncates_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = RocksStorage::open(dir.path()).unwrap();
            assert!(s.is_empty());
            s.bootstrap(1, vec![1], b"").unwrap();
            let hs = HardState {
                term: 2,
                vote: 1,
                commit: 3,
                ..Default::default()
            };
            s.append(&(1..=5).map(|i| entry(i, 2)).collect::<Vec<_>>(), Some(&hs))
                .unwrap();
            // A new leader overwrites index 4 onwards with a shorter log.
            s.append(&[entry(4, 3)], None).unwrap();
        }
        let s = RocksStorage::open(dir.path()).unwrap();
        assert!(!s.is_empty());
        assert_eq!(s.last_index().unwrap(), 4);
        assert_eq!(s.term(4).unwrap(), 3);
        assert_eq!(s.initial_state().unwrap().hard_state.commit, 3);
        assert_eq!(s.conf_state().voters, vec![1]);
        assert_eq!(s.node_id().unwrap(), Some(1));
        let es = s
            .entries(1, 5, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(es.len(), 4);
    }

    #[test]
    fn snapshot_compacts_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = RocksStorage::open(dir.path()).unwrap();
        s.bootstrap(1, vec![1], b"").unwrap();
        s.append(&(1..=10).map(|i| entry(i, 1)).collect::<Vec<_>>(), None)
            .unwrap();
        s.save_snapshot(7, 1, b"registry").unwrap();
        assert_eq!(s.first_index().unwrap(), 8);
        assert_eq!(s.term(7).unwrap(), 1);
        assert!(matches!(
            s.term(3),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        let snap = s.snapshot(7, 2).unwrap();
        assert_eq!(snap.get_data(), b"registry");
        drop(s);
        let s = RocksStorage::open(dir.path()).unwrap();
        assert_eq!(s.first_index().unwrap(), 8);
        assert_eq!(s.last_index().unwrap(), 10);
    }
}
