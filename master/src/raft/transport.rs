//! Raft messages between masters over gRPC (the `RaftPeer` service).
//!
//! The Raft thread must never block on the network, so [`GrpcTransport::send`] only sorts
//! messages into one bounded queue per peer. One tokio task per peer drains its queue in
//! batches and sends each batch with one unary call on a client it (re)connects lazily.
//! When a peer is down or its queue is full, messages are dropped: Raft retransmits, and
//! the peer is reported unreachable so that its leader probes instead of streaming.
//!
//! Peers are found in an [`AddressBook`] that follows membership changes: a queue and its
//! task are created the first time a message goes to a master, and replaced when its
//! address changes. Snapshots, which can exceed any sane gRPC message, travel as a stream
//! of chunks (`SendSnapshot`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use protobuf::Message as PbMessage;
use raft::prelude::{Message, MessageType};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

use drover_proto::pb::{self, raft_peer_client::RaftPeerClient};

use super::node::{RaftHandle, Transport};
use crate::metrics::Metrics;

/// Messages waiting for one peer; beyond this, new ones are dropped.
pub const PEER_QUEUE: usize = 4096;
/// Most messages sent in one call.
const BATCH: usize = 256;
/// Size of one snapshot chunk.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
/// A snapshot stream may take this long (a large registry over a slow link).
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(300);
/// Pause after a failed connection attempt, so a dead peer costs little.
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest batch of Raft messages a master accepts or sends in one call. Appends are
/// bounded by `max_size_per_msg` (1 MiB) and `BATCH`; snapshots are streamed in chunks.
pub const MAX_RAFT_MESSAGE_BYTES: usize = 320 * 1024 * 1024;

/// Where the other masters are: the replicated address book (it follows membership
/// changes, see [`RaftHandle::master_address`]), then the addresses this master started
/// with (`--peers`, or what `--join` learned).
#[derive(Clone)]
pub struct AddressBook {
    raft: RaftHandle,
    seed: BTreeMap<u64, String>,
}

impl AddressBook {
    pub fn new(raft: RaftHandle, seed: BTreeMap<u64, String>) -> Self {
        Self { raft, seed }
    }

    pub fn get(&self, id: u64) -> Option<String> {
        self.raft
            .master_address(id)
            .or_else(|| self.seed.get(&id).cloned())
    }
}

struct PeerQueue {
    addr: String,
    tx: mpsc::Sender<Message>,
}

/// Sends Raft messages to the other masters over gRPC.
pub struct GrpcTransport {
    my_id: u64,
    /// The highest registry version this master supports, sent with every batch.
    my_version: u32,
    book: AddressBook,
    raft: RaftHandle,
    runtime: tokio::runtime::Handle,
    metrics: Arc<Metrics>,
    queues: BTreeMap<u64, PeerQueue>,
}

impl GrpcTransport {
    /// A transport whose sender tasks run on the current tokio runtime. `my_version`, the
    /// highest registry version this master supports, goes with every batch (see
    /// `registry::version`).
    pub fn start(
        my_id: u64,
        my_version: u32,
        book: AddressBook,
        raft: RaftHandle,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            my_id,
            my_version,
            book,
            raft,
            runtime: tokio::runtime::Handle::current(),
            metrics,
            queues: BTreeMap::new(),
        }
    }

    /// The queue for `peer`, (re)started when the peer is new or has moved.
    fn queue(&mut self, peer: u64) -> Option<&mpsc::Sender<Message>> {
        let addr = self.book.get(peer)?;
        let stale = self.queues.get(&peer).is_none_or(|q| q.addr != addr);
        if stale {
            let (tx, rx) = mpsc::channel(PEER_QUEUE);
            let _guard = self.runtime.enter();
            tokio::spawn(peer_sender(
                (self.my_id, self.my_version),
                peer,
                addr.clone(),
                rx,
                self.raft.clone(),
                self.metrics.clone(),
            ));
            // Replacing the old queue drops its sender: that task ends.
            self.queues.insert(peer, PeerQueue { addr, tx });
        }
        self.queues.get(&peer).map(|q| &q.tx)
    }
}

impl Transport for GrpcTransport {
    fn send(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            let Some(q) = self.queue(m.to) else {
                tracing::debug!(
                    to = m.to,
                    "dropping a raft message to a master with no known address"
                );
                continue;
            };
            if let Err(e) = q.try_send(m) {
                // Full: the peer is slow or down; Raft will send again.
                tracing::trace!(error = %e, "peer queue full; dropping a raft message");
            }
        }
    }
}

fn endpoint(addr: &str) -> Option<Endpoint> {
    let url = if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    Some(
        Endpoint::from_shared(url)
            .ok()?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5)),
    )
}

/// Drains one peer's queue until the transport is dropped.
async fn peer_sender(
    (my_id, my_version): (u64, u32),
    peer: u64,
    addr: String,
    mut rx: mpsc::Receiver<Message>,
    raft: RaftHandle,
    metrics: Arc<Metrics>,
) {
    let Some(endpoint) = endpoint(&addr) else {
        tracing::error!(peer, %addr, "peer address is not a valid HOST:PORT; not sending to it");
        while rx.recv().await.is_some() {}
        return;
    };
    let mut client: Option<RaftPeerClient<Channel>> = None;
    let mut batch = Vec::with_capacity(BATCH);
    let mut down_logged = false;
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let (snapshot_msgs, others): (Vec<Message>, Vec<Message>) = batch
            .drain(..)
            .partition(|m| m.get_msg_type() == MessageType::MsgSnapshot);
        let snapshots: Vec<u64> = snapshot_msgs.iter().map(|m| m.to).collect();
        let messages: Vec<Vec<u8>> = others
            .into_iter()
            .filter_map(|m| m.write_to_bytes().ok())
            .collect();
        if client.is_none() {
            match endpoint.connect().await {
                Ok(ch) => {
                    if down_logged {
                        tracing::info!(peer, %addr, "peer reachable again");
                    }
                    down_logged = false;
                    client = Some(
                        RaftPeerClient::new(ch)
                            .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES)
                            .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES),
                    );
                }
                Err(e) => {
                    if !down_logged {
                        tracing::warn!(peer, %addr, error = %e, "cannot reach peer; dropping its raft messages until it answers");
                        down_logged = true;
                    }
                    failed(&raft, peer, &snapshots);
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                    // What queued meanwhile is stale; Raft sends fresh messages.
                    while let Ok(m) = rx.try_recv() {
                        if m.get_msg_type() == MessageType::MsgSnapshot {
                            raft.report_snapshot(m.to, false);
                        }
                    }
                    continue;
                }
            }
        }
        let c = client.as_mut().expect("connected above");
        if !messages.is_empty() {
            // Per call, not per channel: a channel-wide timeout would also cut snapshot
            // streams short.
            let mut req = tonic::Request::new(pb::RaftBatch {
                from: my_id,
                messages,
                max_registry_version: my_version,
            });
            req.set_timeout(CALL_TIMEOUT);
            if let Err(status) = c.send(req).await {
                tracing::debug!(peer, %addr, error = %status, "raft batch not delivered");
                client = None;
                failed(&raft, peer, &snapshots);
                continue;
            }
        }
        for m in snapshot_msgs {
            let size = m.get_snapshot().get_data().len();
            match send_snapshot(c, my_id, m).await {
                Ok(()) => {
                    Metrics::inc(&metrics.snapshots_sent);
                    tracing::info!(peer, bytes = size, "registry snapshot streamed");
                    raft.report_snapshot(peer, true);
                }
                Err(status) => {
                    tracing::warn!(peer, %addr, error = %status, "registry snapshot not delivered");
                    client = None;
                    raft.report_unreachable(peer);
                    raft.report_snapshot(peer, false);
                    break;
                }
            }
        }
    }
}

/// Streams one snapshot message: the message without its data first, then the data in
/// [`SNAPSHOT_CHUNK_BYTES`] slices.
async fn send_snapshot(
    client: &mut RaftPeerClient<Channel>,
    my_id: u64,
    mut m: Message,
) -> Result<(), tonic::Status> {
    let data = m.mut_snapshot().take_data();
    let header = m
        .write_to_bytes()
        .map_err(|e| tonic::Status::internal(format!("cannot encode a snapshot message: {e}")))?;
    let total = data.len();
    let mut chunks = Vec::with_capacity(total / SNAPSHOT_CHUNK_BYTES + 1);
    chunks.push(pb::SnapshotChunk {
        from: my_id,
        message: header,
        total_size: total as u64,
        data: Vec::new(),
    });
    for slice in data.chunks(SNAPSHOT_CHUNK_BYTES) {
        chunks.push(pb::SnapshotChunk {
            data: slice.to_vec(),
            ..Default::default()
        });
    }
    let mut req = tonic::Request::new(tokio_stream::iter(chunks));
    req.set_timeout(SNAPSHOT_TIMEOUT);
    client.send_snapshot(req).await.map(|_| ())
}

fn failed(raft: &RaftHandle, peer: u64, snapshots: &[u64]) {
    raft.report_unreachable(peer);
    for &to in snapshots {
        raft.report_snapshot(to, false);
    }
}
