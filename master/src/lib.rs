//! The Drover master.
//!
//! Module map:
//! - [`config`]: flags and runtime settings.
//! - [`registry`]: the replicated registry, a deterministic state machine (commands in,
//!   state out; no I/O, no clock).
//! - [`raft`]: raft-rs on a dedicated thread, writing through a small store trait
//!   (RocksDB for the daemon, memory for tests); one `Ready` handled by a step function;
//!   proposals tracked by (index, term); registry snapshots serialised off the thread;
//!   Raft messages to the other masters over gRPC.
//! - [`allocator`]: hierarchical weighted DRF as a pure function of a snapshot.
//! - [`leader`]: the leader's decisions as a pure value: soft state (sessions, offers,
//!   filters, deadlines), the ACCEPT gate, agent liveness, framework calls and failover;
//!   inputs in, effects out, no I/O, no clock, no channels.
//! - [`server`]: the shell around the leader: streams to frameworks and agents, the
//!   loops (allocation, housekeeping, heartbeats, status batcher, leadership, upgrade),
//!   proposals through Raft; it carries out the leader's effects.
//! - [`views`]: the operator views (`GetState`, `GetTasks`, …) as functions of the
//!   registry and the leader.
//! - [`services`]: tonic glue for the scheduler, agent, operator and Raft peer services.
//! - [`http`]: `/metrics`, `/health`, `/state` over HTTP (axum routes on `drover_http`).
//! - [`membership`]: seeding a new cluster and joining an existing one safely.
//! - [`backup`]: registry backups (online through the leader, or offline from a data
//!   folder) and restoring one into new data folders.
//! - [`error`]: [`error::MasterError`], the one error type of the library, Raft, storage,
//!   membership, backup and settings included (mapped to gRPC statuses only in
//!   [`services::status`]; the binary prints it).
//! - [`metrics`], [`clock`]: counters and timings; the one clock abstraction.
//!
//! Start a master with [`serve`], giving it already-bound listeners and a shutdown future.

// The services return `tonic::Status` (and the library `MasterError`), the errors every
// caller sees; boxing them everywhere would only add noise.
#![allow(clippy::result_large_err)]

pub mod allocator;
pub mod backup;
pub mod clock;
pub mod config;
pub mod error;
pub mod http;
pub mod leader;
pub mod membership;
pub mod metrics;
pub mod raft;
pub mod registry;
pub mod server;
pub mod services;
pub mod views;

use std::future::Future;
use std::sync::{Arc, RwLock};

use tokio::net::TcpListener;

use drover_proto::limits::{self, Limited};
use drover_proto::pb;

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::error::{IoContext, MasterError, Result};
use crate::metrics::Metrics;
use crate::raft::transport::AddressBook;
use crate::raft::{GrpcTransport, NodeConfig, RaftHandle, RocksStorage, Transport};
use crate::registry::Registry;
use crate::server::loops;
use crate::server::Master;

/// How long a stopping master waits for open calls to finish.
const GRACEFUL_STOP: std::time::Duration = std::time::Duration::from_secs(5);

/// Concurrent streams allowed on one HTTP/2 connection.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1000;

/// Opens the registry's storage, checking that it belongs to this master. An empty data
/// folder either joins an existing cluster (`--join`: the members' addresses learned there
/// are added to `config.peers`) or seeds a brand-new one, whose voters are the ids of
/// `--peers` (or this master alone) and whose address book is `--peers`; seeding is
/// refused when a named peer already runs a cluster (see [`membership`]). A new cluster's
/// first snapshot is at registry version 1 and has no cluster id, so that every seeding
/// member writes the same bytes; its first leader raises the version and assigns the id
/// through the log (see [`server::upgrade`]).
async fn open_storage(config: &mut Config) -> Result<RocksStorage> {
    std::fs::create_dir_all(&config.data_dir)
        .io_ctx(|| format!("cannot create {}", config.data_dir.display()))?;
    let mut storage = RocksStorage::open(&config.data_dir.join("registry"))?;
    if let Some(id) = storage.node_id()? {
        if id != config.id {
            return Err(MasterError::Membership(format!(
                "data folder {} belongs to master {id}, not {}; a master never takes another's identity",
                config.data_dir.display(),
                config.id
            )));
        }
    }
    if !storage.is_empty() {
        if !config.join.is_empty() {
            tracing::info!("the data folder holds cluster state: --join is ignored");
        }
        return Ok(storage);
    }
    if !config.join.is_empty() || storage.node_id()?.is_some() {
        // Joining (or restarted while joining): no membership of our own; the leader's
        // snapshot brings it.
        let seeds = if config.join.is_empty() {
            config.peers.values().cloned().collect()
        } else {
            config.join.clone()
        };
        let book = membership::join(
            config.id,
            &config.advertise,
            config.max_registry_version,
            &seeds,
        )
        .await?;
        storage.record_joining(config.id)?;
        for (id, addr) in book {
            config.peers.entry(id).or_insert(addr);
        }
        tracing::info!(id = config.id, peers = ?config.peers, "joining the cluster as a learner");
        return Ok(storage);
    }
    let mut book = config.peers.clone();
    if book.is_empty() {
        book.insert(config.id, config.advertise.clone());
    } else {
        membership::refuse_if_cluster_exists(config.id, &config.peers).await?;
    }
    let voters: Vec<u64> = book.keys().copied().collect();
    tracing::info!(id = config.id, ?voters, dir = %config.data_dir.display(), "new cluster: seeding its membership");
    let registry = Registry {
        masters: book,
        ..Default::default()
    };
    storage.bootstrap(config.id, voters, &registry.to_snapshot())?;
    Ok(storage)
}

/// Runs a master until `shutdown` resolves.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    http_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    serve_with_clock(
        config,
        listener,
        http_listener,
        Arc::new(SystemClock),
        shutdown,
    )
    .await
}

/// [`serve`] with an explicit clock (tests).
pub async fn serve_with_clock(
    config: Config,
    listener: TcpListener,
    http_listener: TcpListener,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let mut config = config;
    let storage = open_storage(&mut config).await?;
    let registry = Arc::new(RwLock::new(Registry::default()));
    let metrics = Arc::new(Metrics::default());
    let seed = config.peers.clone();
    let id = config.id;
    let max_version = config.max_registry_version;
    let transport_metrics = metrics.clone();
    let make_transport = move |handle: RaftHandle| -> Box<dyn Transport> {
        let book = AddressBook::new(handle.clone(), seed);
        Box::new(GrpcTransport::start(
            id,
            max_version,
            book,
            handle,
            transport_metrics,
        ))
    };
    let (raft, raft_thread) = raft::node::start(
        NodeConfig {
            id: config.id,
            tick: config.raft_tick,
            election_ticks: config.raft_election_ticks,
            heartbeat_ticks: config.raft_heartbeat_ticks,
            max_registry_version: config.max_registry_version,
        },
        storage,
        registry.clone(),
        make_transport,
        metrics.clone(),
    )?;
    let (master, updates_rx) = Master::new(config.clone(), clock, raft.clone(), registry, metrics);
    let master = Arc::new(master);

    tokio::spawn(master.clone().run_status_batcher(updates_rx));
    tokio::spawn(loops::leadership_loop(master.clone()));
    tokio::spawn(loops::allocation_loop(master.clone()));
    tokio::spawn(loops::housekeeping_loop(master.clone()));
    tokio::spawn(loops::heartbeat_loop(master.clone()));
    tokio::spawn(loops::upgrade_loop(master.clone()));
    // The HTTP listener stops with the rest of the master (after the gRPC server), so that
    // /health and /metrics answer during the hand-over of leadership.
    let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http_server = tokio::spawn(http::serve(http_listener, master.clone(), async {
        let _ = http_stopped.await;
    }));

    tracing::info!(listen = %config.listen, http = %config.http_listen, "drover-master serving");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let stopping = Arc::new(tokio::sync::Notify::new());
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
        // Agent sessions are long-lived streams; a proxy or a simulated fleet may carry
        // many of them on one connection (hyper's default is 200).
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        // Every service holds requests to its link's limit (drover_proto::limits), answering
        // RESOURCE_EXHAUSTED beyond it; tonic's own limit, the same, is the backstop.
        .add_service(Limited::new(
            pb::scheduler_server::SchedulerServer::new(services::scheduler::SchedulerService {
                master: master.clone(),
            })
            .max_decoding_message_size(limits::MAX_SCHEDULER_CALL_BYTES),
            limits::MAX_SCHEDULER_CALL_BYTES,
            "MAX_SCHEDULER_CALL_BYTES",
        ))
        .add_service(Limited::new(
            pb::agent_master_server::AgentMasterServer::new(services::agent::AgentService {
                master: master.clone(),
            })
            .max_decoding_message_size(limits::MAX_AGENT_MESSAGE_BYTES),
            limits::MAX_AGENT_MESSAGE_BYTES,
            "MAX_AGENT_MESSAGE_BYTES",
        ))
        .add_service(Limited::new(
            pb::operator_server::OperatorServer::new(services::operator::OperatorService {
                master: master.clone(),
            })
            .max_decoding_message_size(limits::MAX_OPERATOR_CALL_BYTES),
            limits::MAX_OPERATOR_CALL_BYTES,
            "MAX_OPERATOR_CALL_BYTES",
        ))
        .add_service(Limited::new(
            pb::raft_peer_server::RaftPeerServer::new(services::peer::PeerService {
                master: master.clone(),
            })
            .max_decoding_message_size(raft::transport::MAX_RAFT_MESSAGE_BYTES),
            raft::transport::MAX_RAFT_MESSAGE_BYTES,
            "MAX_RAFT_MESSAGE_BYTES",
        ))
        // Test-only calls exist only on a master started with --enable-test-commands.
        .add_optional_service(config.enable_test_commands.then(|| {
            Limited::new(
                pb::registry_testing_server::RegistryTestingServer::new(
                    services::testing::TestingService {
                        master: master.clone(),
                    },
                )
                .max_decoding_message_size(limits::MAX_OPERATOR_CALL_BYTES),
                limits::MAX_OPERATOR_CALL_BYTES,
                "MAX_OPERATOR_CALL_BYTES",
            )
        }))
        .serve_with_incoming_shutdown(incoming, {
            // On shutdown, end every framework and agent stream first: a graceful stop
            // waits for open calls, and these streams would otherwise never end.
            let master = master.clone();
            let stopping = stopping.clone();
            async move {
                shutdown.await;
                loops::hand_over_leadership(&master).await;
                master.reset_soft(0);
                stopping.notify_one();
            }
        });
    // A peer that keeps its half of a stream open must not hold the master up for ever.
    let result = tokio::select! {
        r = server => r,
        _ = async {
            stopping.notified().await;
            tokio::time::sleep(GRACEFUL_STOP).await;
        } => {
            tracing::warn!("open calls did not finish within {GRACEFUL_STOP:?}; stopping anyway");
            Ok(())
        }
    };
    master.reset_soft(0);
    let _ = http_stop.send(());
    let _ = http_server.await;
    raft.stop();
    let _ = tokio::task::spawn_blocking(move || raft_thread.join()).await;
    tracing::info!("drover-master stopped");
    result.map_err(|source| MasterError::Grpc {
        context: "the gRPC server failed".into(),
        source,
    })
}
