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
//! - [`leader`]: the leader's soft state (connections, offers, filters), the ACCEPT gate,
//!   agent sessions and liveness, framework calls and failover.
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

// Handlers return `tonic::Status`, the gRPC error every caller sees; boxing it everywhere
// would only add noise.
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
pub mod services;

use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};

use tokio::net::TcpListener;
use tokio::sync::mpsc;

use drover_proto::pb;

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::error::{IoContext, MasterError, Result};
use crate::leader::{Master, Soft};
use crate::metrics::Metrics;
use crate::raft::transport::AddressBook;
use crate::raft::{GrpcTransport, NodeConfig, RaftHandle, RocksStorage, Transport};
use crate::registry::{Command, Registry};

/// A launch still STAGING this long after its commit is sent to its agent again.
const STAGING_RESEND_MS: u64 = 10_000;

/// How long a stopping master waits for open calls to finish.
const GRACEFUL_STOP: std::time::Duration = std::time::Duration::from_secs(5);

/// Concurrent streams allowed on one HTTP/2 connection.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1000;

/// Largest gRPC message accepted (bigger requests get RESOURCE_EXHAUSTED).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Opens the registry's storage, checking that it belongs to this master. An empty data
/// folder either joins an existing cluster (`--join`: the members' addresses learned there
/// are added to `config.peers`) or seeds a brand-new one, whose voters are the ids of
/// `--peers` (or this master alone) and whose address book is `--peers`; seeding is
/// refused when a named peer already runs a cluster (see [`membership`]). A new cluster's
/// first snapshot is at registry version 1 and has no cluster id, so that every seeding
/// member writes the same bytes; its first leader raises the version and assigns the id
/// through the log (see [`leader::upgrade`]).
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
    let (updates_tx, updates_rx) = mpsc::unbounded_channel();
    let master = Arc::new(Master {
        config: config.clone(),
        clock,
        raft: raft.clone(),
        registry,
        soft: Mutex::new(Soft::default()),
        metrics,
        allocate_now: Default::default(),
        updates_tx,
        version_lock: Default::default(),
    });

    tokio::spawn(master.clone().run_status_batcher(updates_rx));
    tokio::spawn(leadership_loop(master.clone()));
    tokio::spawn(allocation_loop(master.clone()));
    tokio::spawn(housekeeping_loop(master.clone()));
    tokio::spawn(heartbeat_loop(master.clone()));
    tokio::spawn(upgrade_loop(master.clone()));
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
        .add_service(
            pb::scheduler_server::SchedulerServer::new(services::scheduler::SchedulerService {
                master: master.clone(),
            })
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            pb::agent_master_server::AgentMasterServer::new(services::agent::AgentService {
                master: master.clone(),
            })
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            pb::operator_server::OperatorServer::new(services::operator::OperatorService {
                master: master.clone(),
            })
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            pb::raft_peer_server::RaftPeerServer::new(services::peer::PeerService {
                master: master.clone(),
            })
            .max_decoding_message_size(raft::transport::MAX_RAFT_MESSAGE_BYTES),
        )
        // Test-only calls exist only on a master started with --enable-test-commands.
        .add_optional_service(config.enable_test_commands.then(|| {
            pb::registry_testing_server::RegistryTestingServer::new(
                services::testing::TestingService {
                    master: master.clone(),
                },
            )
        }))
        .serve_with_incoming_shutdown(incoming, {
            // On shutdown, end every framework and agent stream first: a graceful stop
            // waits for open calls, and these streams would otherwise never end.
            let master = master.clone();
            let stopping = stopping.clone();
            async move {
                shutdown.await;
                hand_over_leadership(&master).await;
                master.reset_soft(false, 0);
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
    master.reset_soft(false, 0);
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

/// A leader stopping on purpose hands leadership to the most up-to-date voter first, so
/// that the cluster does not wait out an election timeout.
async fn hand_over_leadership(master: &Master) {
    let role = master.raft.role();
    let (voters, _) = master.raft.configuration();
    if !role.is_leader || voters.len() < 2 {
        return;
    }
    master.raft.transfer_leadership(0);
    let mut rx = master.raft.watch_role();
    let moved = tokio::time::timeout(
        master.config.raft_tick * (master.config.raft_election_ticks as u32) * 2,
        rx.wait_for(|r| !r.is_leader),
    )
    .await;
    match moved {
        Ok(Ok(r)) => tracing::info!(
            term = r.term,
            leader = r.leader_id,
            "leadership handed over"
        ),
        _ => tracing::warn!("leadership was not handed over in time; stopping anyway"),
    }
}

/// Follows Raft leadership: a new leader commits a no-op (so everything committed before
/// its term is applied) before serving; a node that stops leading drops all soft state.
async fn leadership_loop(master: Arc<Master>) {
    let mut role_rx = master.raft.watch_role();
    loop {
        let role = *role_rx.borrow_and_update();
        master.reset_soft(false, role.term);
        if role.is_leader {
            let mut started = master.raft.propose(&Command::Noop).await;
            if started.is_ok() && !master.config.weights.is_empty() {
                // Weights given by flag are replicated like any operator change.
                started = master
                    .raft
                    .propose(&Command::SetWeights {
                        weights: master.config.weights.clone(),
                    })
                    .await;
            }
            match started {
                Ok(_) => {
                    let mut soft = master.soft();
                    if master.raft.role() == role {
                        soft.serving = true;
                        soft.term = role.term;
                        soft.elected_ms = master.now_ms();
                        tracing::info!(term = role.term, "leading: serving frameworks and agents");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not start leading"),
            }
            master.allocate_now.notify_one();
        }
        if role_rx.changed().await.is_err() {
            return;
        }
    }
}

async fn allocation_loop(master: Arc<Master>) {
    let mut tick = tokio::time::interval(master.config.allocation_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = master.allocate_now.notified() => {
                // Let a burst of events settle into one cycle.
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
        master.allocate_once();
    }
}

async fn housekeeping_loop(master: Arc<Master>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks = 0u64;
    loop {
        tick.tick().await;
        ticks += 1;
        if ticks.is_multiple_of(20) {
            master.resend_staging(STAGING_RESEND_MS);
        }

        master.expire_offers();
        master.check_agents().await;
        master.expire_frameworks().await;
    }
}

/// The leader's upkeep of the registry version and cluster id (see [`leader::upgrade`]).
/// A loop of its own: a proposal may wait for a quorum, which must not hold up agent
/// liveness or offer expiry.
async fn upgrade_loop(master: Arc<Master>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        master.upgrade_registry().await;
    }
}

async fn heartbeat_loop(master: Arc<Master>) {
    let mut tick = tokio::time::interval(master.config.heartbeat_interval);
    loop {
        tick.tick().await;
        let mut soft = master.soft();
        let ids: Vec<_> = soft.frameworks.keys().cloned().collect();
        for fw in ids {
            Master::send_event(
                &mut soft,
                &fw,
                pb::event::Event::Heartbeat(pb::event::Heartbeat {}),
            );
        }
    }
}
