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

    use protobuf::Message as PbMessage;
    use raft::prelude::{
        ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, EntryType, Message, MessageType,
        SnapshotMetadata,
    };
    use raft::{Config, StateRole, Storage};

    use super::*;
    use crate::raft::storage::MemLogStore;

    /// Messages a node sent, not yet delivered.
    #[derive(Default)]
    struct Outbox(Vec<Message>);

    impl Transport for Outbox {
        fn send(&mut self, msgs: Vec<Message>) {
            self.0.extend(msgs);
        }
    }

    /// A node whose state machine is the list of applied payloads.
    struct TestNode {
        raw: RawNode<RaftStorage<MemLogStore>>,
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
            Self {
                raw: RawNode::new(&cfg, RaftStorage(store), &logger).unwrap(),
                applied: Vec::new(),
                applied_index: 0,
                snapshots_installed: 0,
            }
        }

        fn state(&self) -> Vec<u8> {
            self.applied.join(&b'\n')
        }

        /// One `Ready` handled, and what the state machine does with it; the messages it
        /// sent.
        fn step(&mut self) -> Vec<Message> {
            let mut outbox = Outbox::default();
            let Some(mut step) = step(&mut self.raw, &mut outbox).unwrap() else {
                return outbox.0;
            };
            if let Some(snap) = step.snapshot.take() {
                self.applied = snap
                    .get_data()
                    .split(|b| *b == b'\n')
                    .filter(|p| !p.is_empty())
                    .map(<[u8]>::to_vec)
                    .collect();
                self.applied_index = snap.get_metadata().index;
                self.snapshots_installed += 1;
            }
            // What is already committed and durable is applied before the new entries'
            // fsync, as the Raft thread does.
            self.apply(std::mem::take(&mut step.committed));
            let sent_before_sync = outbox.0.len();
            let committed = step.persist(&mut self.raw, &mut outbox).unwrap();
            // Whatever was sent after the entries went out only once they were synced.
            assert!(!self.raw.store().has_unsynced());
            assert!(outbox.0[..sent_before_sync]
                .iter()
                .all(|m| !needs_durable_log(m)));
            self.apply(committed);
            finish(&mut self.raw).unwrap();
            outbox.0
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
