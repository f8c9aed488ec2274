//! Raft messages between masters over gRPC (the `RaftPeer` service).
//!
//! The Raft thread must never block on the network, so [`GrpcTransport::send`] only sorts
//! messages into one bounded queue per peer. One tokio task per peer drains its queue in
//! batches and sends each batch with one unary call on a client it (re)connects lazily.
//! When a peer is down or its queue is full, messages are dropped: Raft retransmits, and
//! the peer is reported unreachable so that its leader probes instead of streaming.

use std::collections::BTreeMap;
use std::time::Duration;

use protobuf::Message as PbMessage;
use raft::prelude::{Message, MessageType};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

use drover_proto::pb::{self, raft_peer_client::RaftPeerClient};

use super::node::{RaftHandle, Transport};

/// Messages waiting for one peer; beyond this, new ones are dropped.
pub const PEER_QUEUE: usize = 4096;
/// Most messages sent in one call.
const BATCH: usize = 256;
/// Pause after a failed connection attempt, so a dead peer costs little.
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest Raft batch a master accepts or sends (a snapshot travels in one message until
/// chunked snapshot streaming arrives).
pub const MAX_RAFT_MESSAGE_BYTES: usize = 512 * 1024 * 1024;

/// Sends Raft messages to the other masters over gRPC.
pub struct GrpcTransport {
    queues: BTreeMap<u64, mpsc::Sender<Message>>,
}

impl GrpcTransport {
    /// Starts one sender task per peer on the current tokio runtime. `peers` maps Raft ids
    /// to gRPC addresses (`HOST:PORT`) and must not contain this master.
    pub fn start(my_id: u64, peers: &BTreeMap<u64, String>, raft: RaftHandle) -> Self {
        let mut queues = BTreeMap::new();
        for (&id, addr) in peers {
            if id == my_id {
                continue;
            }
            let (tx, rx) = mpsc::channel(PEER_QUEUE);
            queues.insert(id, tx);
            tokio::spawn(peer_sender(my_id, id, addr.clone(), rx, raft.clone()));
        }
        Self { queues }
    }
}

impl Transport for GrpcTransport {
    fn send(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            let Some(q) = self.queues.get(&m.to) else {
                tracing::debug!(to = m.to, "dropping a raft message to an unknown peer");
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
            .timeout(CALL_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5)),
    )
}

/// Drains one peer's queue until the transport is dropped.
async fn peer_sender(
    my_id: u64,
    peer: u64,
    addr: String,
    mut rx: mpsc::Receiver<Message>,
    raft: RaftHandle,
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
        let snapshots: Vec<u64> = batch
            .iter()
            .filter(|m| m.get_msg_type() == MessageType::MsgSnapshot)
            .map(|m| m.to)
            .collect();
        let messages: Vec<Vec<u8>> = batch
            .drain(..)
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
        match c
            .send(pb::RaftBatch {
                from: my_id,
                messages,
            })
            .await
        {
            Ok(_) => {
                for &to in &snapshots {
                    raft.report_snapshot(to, true);
                }
            }
            Err(status) => {
                tracing::debug!(peer, %addr, error = %status, "raft batch not delivered");
                client = None;
                failed(&raft, peer, &snapshots);
            }
        }
    }
}

fn failed(raft: &RaftHandle, peer: u64, snapshots: &[u64]) {
    raft.report_unreachable(peer);
    for &to in snapshots {
        raft.report_snapshot(to, false);
    }
}
