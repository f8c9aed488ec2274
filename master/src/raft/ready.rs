//! Handling one raft-rs `Ready`: a synchronous step function over a [`LogStore`] and a
//! [`Transport`], which the Raft thread calls after every input and a simulation can call
//! in a loop of its own.
//!
//! Handling a `Ready` takes three calls, in the order raft-rs requires:
//! 1. [`step`] sends the messages that need nothing durable (a leader's appends, so that
//!    replication overlaps its own fsync), stores the leader's snapshot, and hands back
//!    that snapshot and the entries already committed and durable here: the state machine
//!    installs the one and may apply the others now, before the fsync below;
//! 2. [`Step::persist`] appends the new entries and the hard state and syncs once (group
//!    commit), only then sends the messages that promise them (votes, acknowledgements),
//!    advances, records the new commit index and sends the leader's next messages; it
//!    returns the entries still to apply, in order;
//! 3. [`finish`], once they are applied, tells raft-rs so and syncs what applying wrote
//!    (membership).

use raft::prelude::{Entry, Snapshot};
use raft::RawNode;

use super::node::Transport;
use super::storage::{LogStore, RaftStorage};
use crate::error::Result;

/// One `Ready` being handled. Take [`Step::snapshot`] (install it first) and
/// [`Step::committed`] (apply them in order), then call [`Step::persist`].
pub struct Step {
    ready: raft::Ready,
    /// A snapshot from the leader, already stored: the state machine becomes it (it
    /// replaces everything applied before).
    pub snapshot: Option<Snapshot>,
    /// Entries committed and durable here, to apply in order after the snapshot. Any left
    /// here are returned by [`Step::persist`], ahead of the entries it commits.
    pub committed: Vec<Entry>,
}

/// Starts handling one `Ready` if raft-rs has one (None otherwise).
pub fn step<S: LogStore>(
    raw: &mut RawNode<RaftStorage<S>>,
    transport: &mut impl Transport,
) -> Result<Option<Step>> {
    if !raw.has_ready() {
        return Ok(None);
    }
    let mut ready = raw.ready();
    // A leader's appends and heartbeats may leave before its own log is durable (they
    // promise nothing about it): replication overlaps the local fsync.
    if !ready.messages().is_empty() {
        transport.send(ready.take_messages());
    }
    let mut snapshot = None;
    if !ready.snapshot().is_empty() {
        let snap = ready.snapshot().clone();
        raw.mut_store().apply_snapshot(&snap)?;
        snapshot = Some(snap);
    }
    let committed = ready.take_committed_entries();
    Ok(Some(Step {
        ready,
        snapshot,
        committed,
    }))
}

impl Step {
    /// Writes the `Ready`'s entries and hard state, syncs, sends what waited for the sync
    /// and advances raft-rs. Returns the entries to apply now, in order: those left in
    /// [`Step::committed`], then those the advance committed. Then call [`finish`].
    pub fn persist<S: LogStore>(
        self,
        raw: &mut RawNode<RaftStorage<S>>,
        transport: &mut impl Transport,
    ) -> Result<Vec<Entry>> {
        let Step {
            mut ready,
            mut committed,
            ..
        } = self;
        raw.mut_store().append(ready.entries())?;
        if let Some(hs) = ready.hs() {
            raw.mut_store().set_hard_state(hs)?;
        }
        // Group commit: one sync for everything this Ready (and the inputs drained before
        // it) wrote.
        raw.mut_store().sync()?;
        // Votes and append acknowledgements: only now is what they promise durable.
        if !ready.persisted_messages().is_empty() {
            transport.send(ready.take_persisted_messages());
        }
        let mut light = raw.advance_append(ready);
        if let Some(commit) = light.commit_index() {
            raw.mut_store().set_commit(commit)?;
        }
        if !light.messages().is_empty() {
            transport.send(light.take_messages());
        }
        committed.extend(light.take_committed_entries());
        Ok(committed)
    }
}

/// Ends handling a `Ready` once its snapshot is installed and its entries applied:
/// raft-rs learns they are applied, and what applying wrote (membership) is synced.
pub fn finish<S: LogStore>(raw: &mut RawNode<RaftStorage<S>>) -> Result<()> {
    raw.advance_apply();
    raw.mut_store().sync()
}

#[cfg(test)]
mod tests {
    //! A three-node cluster in one thread: every message is delivered by hand, so each run
    //! is the same.

    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use protobuf::Message as PbMessage;
    use raft::prelude::{
        ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, EntryType, Message, MessageType,
        SnapshotMetadata,
    };
    use raft::{Config, StateRole, Storage};

    use super::*;
    use crate::raft::storage::MemLogStore;

    /// A [`MemLogStore`] that publishes whether it holds unsynced writes, so that the
    /// node's transport can record it at every send. Reads go to the store (it derefs to
    /// it); writes go through here.
    struct Watched {
        store: MemLogStore,
        unsynced: Arc<AtomicBool>,
    }

    impl Watched {
        fn new(store: MemLogStore) -> Self {
            let unsynced = Arc::new(AtomicBool::new(store.has_unsynced()));
            Self { store, unsynced }
        }

        fn written<T>(&mut self, result: Result<T>) -> Result<T> {
            self.unsynced
                .store(self.store.has_unsynced(), Ordering::SeqCst);
            result
        }
    }

    impl std::ops::Deref for Watched {
        type Target = MemLogStore;
        fn deref(&self) -> &MemLogStore {
            &self.store
        }
    }

    impl LogStore for Watched {
        fn hard_state(&self) -> &raft::prelude::HardState {
            self.store.hard_state()
        }
        fn conf_state(&self) -> &ConfState {
            self.store.conf_state()
        }
        fn conf_index(&self) -> u64 {
            self.store.conf_index()
        }
        fn snapshot_meta(&self) -> &SnapshotMetadata {
            self.store.snapshot_meta()
        }
        fn snapshot_data(&self) -> Result<Vec<u8>> {
            self.store.snapshot_data()
        }
        fn last_index(&self) -> u64 {
            self.store.last_index()
        }
        fn entries(&self, low: u64, high: u64, max_size: u64) -> Result<Vec<Entry>> {
            self.store.entries(low, high, max_size)
        }
        fn append(&mut self, entries: &[Entry]) -> Result<()> {
            let r = self.store.append(entries);
            self.written(r)
        }
        fn set_hard_state(&mut self, hs: &raft::prelude::HardState) -> Result<()> {
            let r = self.store.set_hard_state(hs);
            self.written(r)
        }
        fn set_commit(&mut self, commit: u64) -> Result<()> {
            let r = self.store.set_commit(commit);
            self.written(r)
        }
        fn set_conf_state(&mut self, cs: ConfState, index: u64) -> Result<()> {
            let r = self.store.set_conf_state(cs, index);
            self.written(r)
        }
        fn save_snapshot(&mut self, meta: SnapshotMetadata, data: &[u8]) -> Result<()> {
            let r = self.store.save_snapshot(meta, data);
            self.written(r)
        }
        fn apply_snapshot(&mut self, snap: &Snapshot) -> Result<()> {
            let r = self.store.apply_snapshot(snap);
            self.written(r)
        }
        fn sync(&mut self) -> Result<()> {
            let r = self.store.sync();
            self.written(r)
        }
    }

    /// Messages a node sent, not yet delivered, each with whether its store held unsynced
    /// writes when it was sent.
    struct Outbox {
        sent: Vec<(Message, bool)>,
        unsynced: Arc<AtomicBool>,
    }

    impl Transport for Outbox {
        fn send(&mut self, msgs: Vec<Message>) {
            let unsynced = self.unsynced.load(Ordering::SeqCst);
            self.sent.extend(msgs.into_iter().map(|m| (m, unsynced)));
        }
    }

    impl Outbox {
        /// The messages, after checking that none promising the sender's log or vote left
        /// before what it promises was synced.
        fn checked(self) -> Vec<Message> {
            for (m, unsynced) in &self.sent {
                assert!(
                    !(*unsynced && needs_durable_log(m)),
                    "{:?} to {} sent before the sync",
                    m.get_msg_type(),
                    m.to
                );
            }
            self.sent.into_iter().map(|(m, _)| m).collect()
        }
    }

    /// A node whose state machine is the list of applied payloads.
    struct TestNode {
        raw: RawNode<RaftStorage<Watched>>,
        applied: Vec<Vec<u8>>,
        applied_index: u64,
        snapshots_installed: usize,
    }

    impl TestNode {
        fn new(id: u64, store: MemLogStore) -> Self {
            let cfg = Config {
                id,
                election_tick: 10,
                heartbeat_tick: 2,
                applied: store.snapshot_meta().index,
                check_quorum: true,
                pre_vote: true,
                ..Default::default()
            };
            let logger = slog::Logger::root(slog::Discard, slog::o!());
            // The state machine starts from the stored snapshot; raft-rs hands back the
            // committed log after it.
            let applied = split(&store.snapshot_data().unwrap());
            let applied_index = store.snapshot_meta().index;
            Self {
                raw: RawNode::new(&cfg, RaftStorage(Watched::new(store)), &logger).unwrap(),
                applied,
                applied_index,
                snapshots_installed: 0,
            }
        }

        fn outbox(&self) -> Outbox {
            Outbox {
                sent: Vec::new(),
                unsynced: self.raw.store().unsynced.clone(),
            }
        }

        /// Handles one `Ready` up to its fsync and the messages that waited for it, and
        /// crashes: the node restarts from what its store synced. The messages it sent.
        fn step_and_crash(&mut self) -> Vec<Message> {
            let mut outbox = self.outbox();
            if let Some(step) = step(&mut self.raw, &mut outbox).unwrap() {
                step.persist(&mut self.raw, &mut outbox).unwrap();
            }
            let id = self.raw.raft.id;
            *self = TestNode::new(id, self.raw.store().crash());
            outbox.checked()
        }

        fn state(&self) -> Vec<u8> {
            self.applied.join(&b'\n')
        }

        /// One `Ready` handled, and what the state machine does with it; the messages it
        /// sent.
        fn step(&mut self) -> Vec<Message> {
            let mut outbox = self.outbox();
            let Some(mut step) = step(&mut self.raw, &mut outbox).unwrap() else {
                return outbox.checked();
            };
            if let Some(snap) = step.snapshot.take() {
                self.applied = split(snap.get_data());
                self.applied_index = snap.get_metadata().index;
                self.snapshots_installed += 1;
            }
            // What is already committed and durable is applied before the new entries'
            // fsync, as the Raft thread does.
            self.apply(std::mem::take(&mut step.committed));
            let committed = step.persist(&mut self.raw, &mut outbox).unwrap();
            assert!(!self.raw.store().has_unsynced());
            self.apply(committed);
            finish(&mut self.raw).unwrap();
            outbox.checked()
        }

        fn apply(&mut self, entries: Vec<Entry>) {
            for e in entries {
                assert_eq!(e.index, self.applied_index + 1, "applied in order");
                self.applied_index = e.index;
                match e.get_entry_type() {
                    EntryType::EntryNormal if e.data.is_empty() => {}
                    EntryType::EntryNormal => self.applied.push(e.data.to_vec()),
                    EntryType::EntryConfChangeV2 => {
                        let cc = ConfChangeV2::parse_from_bytes(&e.data).unwrap();
                        let cs = self.raw.apply_conf_change(&cc).unwrap();
                        self.raw.mut_store().set_conf_state(cs, e.index).unwrap();
                    }
                    EntryType::EntryConfChange => unreachable!("the tests propose v2 changes"),
                }
            }
        }

        /// Stores a snapshot of the applied state and compacts the log through it.
        fn compact(&mut self) {
            let index = self.applied_index;
            let term = self.raw.store().term(index).unwrap();
            let mut meta = SnapshotMetadata {
                index,
                term,
                ..Default::default()
            };
            meta.set_conf_state(self.raw.store().conf_state().clone());
            let data = self.state();
            self.raw.mut_store().save_snapshot(meta, &data).unwrap();
            self.raw.mut_store().sync().unwrap();
        }
    }

    /// A state machine's payloads, as stored in a snapshot (one a line).
    fn split(data: &[u8]) -> Vec<Vec<u8>> {
        data.split(|b| *b == b'\n')
            .filter(|p| !p.is_empty())
            .map(<[u8]>::to_vec)
            .collect()
    }

    /// Messages that promise something about the sender's log or vote (acknowledged
    /// appends, granted votes): they may only leave once it is durable.
    fn needs_durable_log(m: &Message) -> bool {
        !m.reject
            && matches!(
                m.get_msg_type(),
                MessageType::MsgAppendResponse | MessageType::MsgRequestVoteResponse
            )
    }

    struct Cluster {
        nodes: Vec<TestNode>,
        /// Messages in flight, delivered in the order sent.
        net: VecDeque<Message>,
        /// Nodes cut off: their messages, both ways, are lost.
        cut: Vec<u64>,
    }

    impl Cluster {
        fn new(n: u64) -> Self {
            let voters: Vec<u64> = (1..=n).collect();
            Self {
                nodes: voters
                    .iter()
                    .map(|&id| TestNode::new(id, MemLogStore::bootstrap(voters.clone(), b"")))
                    .collect(),
                net: VecDeque::new(),
                cut: Vec::new(),
            }
        }

        fn node(&mut self, id: u64) -> &mut TestNode {
            &mut self.nodes[id as usize - 1]
        }

        /// Steps every node and delivers every message until nothing moves.
        fn settle(&mut self) {
            loop {
                for n in &mut self.nodes {
                    let sent = n.step();
                    self.net.extend(sent);
                }
                if self.net.is_empty() {
                    return;
                }
                while let Some(m) = self.net.pop_front() {
                    if self.cut.contains(&m.from) || self.cut.contains(&m.to) {
                        continue;
                    }
                    let _ = self.node(m.to).raw.step(m);
                }
            }
        }

        fn leader(&self) -> Option<u64> {
            self.nodes
                .iter()
                .find(|n| n.raw.raft.state == StateRole::Leader)
                .map(|n| n.raw.raft.id)
        }

        fn propose(&mut self, data: &str) {
            let leader = self.leader().expect("a leader");
            self.node(leader)
                .raw
                .propose(vec![], data.as_bytes().to_vec())
                .unwrap();
            self.settle();
        }
    }

    #[test]
    fn three_nodes_elect_a_leader_and_commit_proposals_in_order() {
        let mut c = Cluster::new(3);
        c.node(1).raw.campaign().unwrap();
        c.settle();
        assert_eq!(c.leader(), Some(1));
        for i in 0..5 {
            c.propose(&format!("cmd {i}"));
        }
        let want = b"cmd 0\ncmd 1\ncmd 2\ncmd 3\ncmd 4".to_vec();
        for n in &c.nodes {
            assert_eq!(n.state(), want, "node {}", n.raw.raft.id);
            // The store holds the whole log, synced, with the commit index.
            let store = n.raw.store();
            assert!(!store.has_unsynced());
            assert_eq!(store.hard_state().commit, n.raw.raft.raft_log.committed);
            assert_eq!(store.0.last_index(), n.raw.raft.raft_log.last_index());
        }
        // Leadership moves and the log goes on.
        c.node(1).raw.transfer_leader(2);
        c.settle();
        assert_eq!(c.leader(), Some(2));
        c.propose("after");
        assert!(c
            .nodes
            .iter()
            .all(|n| n.applied.last().unwrap() == b"after"));
    }

    #[test]
    fn a_lagging_node_catches_up_from_a_snapshot() {
        let mut c = Cluster::new(3);
        c.node(1).raw.campaign().unwrap();
        c.settle();
        c.propose("before");
        c.cut.push(3);
        for i in 0..20 {
            c.propose(&format!("while away {i}"));
        }
        assert_eq!(c.node(3).applied, vec![b"before".to_vec()]);
        // The leader compacts its log: node 3's next entries are gone.
        c.node(1).compact();
        let first = c.node(1).raw.store().first_index().unwrap();
        assert!(first > c.node(3).applied_index + 1);
        c.cut.clear();
        // The next heartbeat finds node 3 behind; the leader sends its snapshot.
        for _ in 0..2 {
            c.node(1).raw.tick();
        }
        c.settle();
        c.propose("after");
        let leader = c.node(1).state();
        let lagging = c.node(3);
        assert_eq!(lagging.snapshots_installed, 1);
        assert_eq!(lagging.state(), leader);
        assert_eq!(
            lagging.raw.store().snapshot_meta().index,
            first - 1,
            "the snapshot is stored at the index it claims"
        );
        assert_eq!(lagging.raw.store().conf_state().voters, vec![1, 2, 3]);
    }

    #[test]
    fn what_followers_acknowledged_survives_their_crash() {
        let mut c = Cluster::new(3);
        c.node(1).raw.campaign().unwrap();
        c.settle();
        c.propose("before");
        // The leader's appends reach 2 and 3, which acknowledge them and crash before
        // they finish that Ready.
        c.node(1)
            .raw
            .propose(vec![], b"acknowledged".to_vec())
            .unwrap();
        let appends = c.node(1).step();
        for m in appends {
            let _ = c.node(m.to).raw.step(m);
        }
        for id in [2, 3] {
            let acks = c.node(id).step_and_crash();
            assert!(acks.iter().any(needs_durable_log), "node {id} acknowledged");
            c.net.extend(acks);
        }
        // Their acknowledgements commit the entry on the leader.
        c.settle();
        assert_eq!(c.node(1).state(), b"before\nacknowledged".to_vec());
        // The leader is lost; the two that crashed elect one of them, and what they
        // acknowledged is still there.
        c.cut.push(1);
        // As the leader's last act, it hands over to 2 (so 3 votes without waiting out
        // its leader's lease).
        let mut timeout_now = Message::default();
        timeout_now.set_msg_type(MessageType::MsgTimeoutNow);
        timeout_now.from = 1;
        timeout_now.to = 2;
        timeout_now.term = c.node(1).raw.raft.term;
        c.node(2).raw.step(timeout_now).unwrap();
        c.settle();
        assert_eq!(c.node(2).raw.raft.state, StateRole::Leader);
        c.node(2).raw.propose(vec![], b"after".to_vec()).unwrap();
        c.settle();
        for id in [2, 3] {
            assert_eq!(
                c.node(id).state(),
                b"before\nacknowledged\nafter".to_vec(),
                "node {id}"
            );
        }
    }

    #[test]
    fn membership_changes_are_applied_and_stored() {
        let mut c = Cluster::new(3);
        c.node(1).raw.campaign().unwrap();
        c.settle();
        let mut cc = ConfChangeV2::default();
        let mut change = ConfChangeSingle {
            node_id: 3,
            ..Default::default()
        };
        change.set_change_type(ConfChangeType::RemoveNode);
        cc.set_changes(vec![change].into());
        c.node(1).raw.propose_conf_change(vec![], cc).unwrap();
        c.settle();
        let want = ConfState {
            voters: vec![1, 2],
            ..Default::default()
        };
        for id in [1, 2] {
            let n = c.node(id);
            assert_eq!(n.raw.store().conf_state().voters, want.voters);
            assert_eq!(n.raw.store().conf_index(), n.applied_index);
        }
        c.propose("two of us");
        assert_eq!(c.node(2).applied, vec![b"two of us".to_vec()]);
    }
}
