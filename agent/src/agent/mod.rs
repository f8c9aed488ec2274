//! The agent process: [`Agent::bind`] prepares everything (work dir, lock, listeners,
//! recovery), [`Agent::run`] serves until shutdown.
//!
//! The core, synchronous and free of I/O but for its journal's staging (see `core.rs`):
//! - `core.rs`: `AgentCore`, the state, the inputs of the master link, and the `Effect`s
//!   its handlers stage for the driver;
//! - `tasks.rs`: launch, kill, launch results and container-end handlers;
//! - `groups.rs`: task groups under the built-in default executor (shared namespaces and
//!   volume, all-or-nothing launch, one task's failure ending the group);
//! - `executors/`: custom executors (their containers, subscriptions and updates);
//! - `health.rs`: checks of running tasks (status updates, unhealthy kills);
//! - `restart.rs`: rebuilding the state after a restart from the log and the containers
//!   found;
//! - `views.rs`: `GetState`, the registration and other views of the state.
//!
//! The shell:
//! - `driver.rs`: `AgentLoop`, the driver: the event loop, the clock, the containerizer,
//!   the master session, reply channels and executors' streams; it commits each batch and
//!   then carries its effects out;
//! - `recovery.rs`: reading checkpointed tasks after a restart.
//!
//! Checkpoints go to one append-only log per agent, group-committed per batch of events
//! (see [`crate::journal`] and `driver.rs`). Tests: `core_tests/` (the core on a
//! controlled clock), `tests.rs` and `executor_tests.rs` (the driver against containerizer
//! doubles).

mod core;
#[cfg(test)]
mod core_tests;
mod driver;
#[cfg(test)]
mod executor_tests;
pub mod executors;
mod groups;
mod health;
mod recovery;
mod restart;
mod tasks;
#[cfg(test)]
mod tests;
mod views;

pub use self::core::Exit;
pub use driver::Event;

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use drover_proto::limits::{self, Limited};
use drover_proto::pb::{self, task_status::Reason};
use drover_proto::AgentId;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::TcpListenerStream;

use crate::api::{AgentApiService, ExecutorService};
use crate::config::{Config, Settings};
use crate::containerizer::{Containerizer, Containerizers};
use crate::error::{AgentError, IoContext};
use crate::files_api::rotation::Rotations;
use crate::fsutil::create_dir_all_durable;
use crate::images::ImageStore;
use crate::layout::Layout;
use crate::master_link::{MasterLink, TermFence};
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use driver::AgentLoop;

/// A bound, recovered agent, ready to [`run`](Agent::run).
pub struct Agent {
    settings: Arc<Settings>,
    layout: Layout,
    api_listener: TcpListener,
    http_listener: TcpListener,
    api_address: SocketAddr,
    http_address: SocketAddr,
    driver: AgentLoop,
    events_tx: mpsc::Sender<Event>,
    events_rx: mpsc::Receiver<Event>,
    fence: TermFence,
    metrics: Arc<Metrics>,
    /// The same containerizers the loop uses: pings sample their usage.
    containerizers: Arc<Containerizers>,
    images: Arc<ImageStore>,
    /// Held for the agent's lifetime: one agent per work dir.
    _lock: File,
}

impl Agent {
    /// Validates the flags, takes the work dir's lock, binds both listeners (port 0
    /// allowed), detects resources and recovers checkpointed tasks. Nothing talks to a
    /// master yet.
    pub async fn bind(config: Config) -> Result<Agent, AgentError> {
        let mut settings = config.validate()?;
        create_dir_all_durable(&settings.work_dir)
            .ctx(|| format!("creating {}", settings.work_dir.display()))?;
        // Supervisors run with cwd "/" and outlive us: every path they get is absolute.
        settings.work_dir = std::fs::canonicalize(&settings.work_dir)
            .ctx(|| format!("resolving {}", settings.work_dir.display()))?;
        let settings = Arc::new(settings);
        let layout = Layout::new(&settings.work_dir);
        for dir in [
            layout.root().to_path_buf(),
            layout.frameworks_meta(),
            layout.sandboxes_root(),
        ] {
            create_dir_all_durable(&dir).ctx(|| format!("creating {}", dir.display()))?;
        }
        let lock = lock_work_dir(&layout)?;
        // After the lock: opening removes the leftovers of interrupted imports.
        let images = Arc::new(ImageStore::open(
            layout.images_dir(),
            settings.image_limits,
        )?);

        let api_listener = TcpListener::bind(&settings.listen)
            .await
            .ctx(|| format!("binding --listen {}", settings.listen))?;
        let http_listener = TcpListener::bind(&settings.http_listen)
            .await
            .ctx(|| format!("binding --http-listen {}", settings.http_listen))?;
        let api_address = api_listener
            .local_addr()
            .ctx(|| "--listen address".into())?;
        let http_address = http_listener
            .local_addr()
            .ctx(|| "--http-listen address".into())?;

        let hostname = settings.hostname.clone().unwrap_or_else(local_hostname);
        let advertised = match &settings.advertise_address {
            Some(a) => a.clone(),
            // 0.0.0.0 is not an address anyone can dial; the hostname is.
            None if api_address.ip().is_unspecified() => {
                format!("{hostname}:{}", api_address.port())
            }
            None => api_address.to_string(),
        };
        let detected = crate::resources::detect(layout.root());
        let offered =
            crate::resources::reserve(&detected, settings.reserved_cpus, settings.reserved_mem_mb);
        let resources = crate::resources::apply_overrides(&offered, &settings.resource_overrides);
        let info = pb::AgentInfo {
            hostname,
            address: advertised,
            resources: resources.to_proto(),
            attributes: settings.attributes.clone(),
        };
        let agent_id = read_agent_id(&layout.agent_id_file())?;
        let fence = TermFence::load(layout.term_file())?;
        let metrics = Arc::new(Metrics::new());
        let options = crate::containerizer::Options {
            containerizers: settings.containerizers.clone(),
            cgroups_root: settings.cgroups_root.clone(),
            pids_limit: settings.pids_limit,
            default_grace: settings.default_grace,
            docker_socket: settings.docker_socket.clone(),
        };
        let containerizers =
            Arc::new(crate::containerizer::build(&options, &layout, images.clone()).await?);
        let containerizer: Arc<dyn Containerizer> = containerizers.clone();
        let (journal, found) = recovery::load(&layout)?;
        let (events_tx, events_rx) = mpsc::channel(1024);
        let mut driver = AgentLoop::new(
            settings.clone(),
            info,
            agent_id,
            containerizer,
            metrics.clone(),
            events_tx.clone(),
            journal,
        );
        driver.recover(found).await?;
        // After recovery, before any launch: a labelled container whose task recovery did
        // not claim is an orphan.
        containerizers.remove_orphans().await;
        tracing::info!(
            api = %api_address,
            http = %http_address,
            advertised = %driver.core.info.address,
            resources = %resources,
            work_dir = %layout.root().display(),
            recovered_tasks = driver.core.tasks.len(),
            "agent ready"
        );
        Ok(Agent {
            settings,
            layout,
            api_listener,
            http_listener,
            api_address,
            http_address,
            driver,
            events_tx,
            events_rx,
            fence,
            metrics,
            containerizers,
            images,
            _lock: lock,
        })
    }

    /// The bound address of the agent API (`--listen`).
    pub fn api_address(&self) -> SocketAddr {
        self.api_address
    }

    /// The bound address of the metrics/health endpoint (`--http-listen`).
    pub fn http_address(&self) -> SocketAddr {
        self.http_address
    }

    /// The address the agent gives the master for its API.
    pub fn advertised_address(&self) -> &str {
        &self.driver.core.info.address
    }

    /// The agent's image store (shared with the API and the containerizers).
    pub fn images(&self) -> Arc<ImageStore> {
        self.images.clone()
    }

    /// The agent id from a previous registration, if any.
    pub fn agent_id(&self) -> Option<&AgentId> {
        self.driver.core.agent_id.as_ref()
    }

    /// Serves the agent API and metrics, keeps the master link, and runs tasks until
    /// `shutdown` resolves (Ok) or the master shuts the agent down
    /// ([`AgentError::ShutdownByMaster`]). Tasks keep running afterwards unless
    /// `--shutdown-tasks-on-exit` was given; a master's shutdown kills them, since the
    /// master has given up on this agent and may run that work elsewhere.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };

        let rotations = Arc::new(Rotations::default());
        let api = AgentApiService::new(
            self.layout.clone(),
            Outbox::new(self.events_tx.clone()),
            self.images.clone(),
        )
        .with_rotations(rotations.clone());
        let api_server = tokio::spawn(
            tonic::transport::Server::builder()
                // Requests are held to their link's limit (drover_proto::limits), answering
                // RESOURCE_EXHAUSTED beyond it; tonic's own limit, the same, is the backstop.
                .add_service(Limited::new(
                    pb::agent_api_server::AgentApiServer::new(api)
                        .max_decoding_message_size(limits::MAX_AGENT_API_CALL_BYTES),
                    limits::MAX_AGENT_API_CALL_BYTES,
                    "MAX_AGENT_API_CALL_BYTES",
                ))
                .add_service(Limited::new(
                    pb::executor_server::ExecutorServer::new(ExecutorService::new(Outbox::new(
                        self.events_tx.clone(),
                    )))
                    .max_decoding_message_size(limits::MAX_EXECUTOR_CALL_BYTES),
                    limits::MAX_EXECUTOR_CALL_BYTES,
                    "MAX_EXECUTOR_CALL_BYTES",
                ))
                .serve_with_incoming_shutdown(
                    TcpListenerStream::new(self.api_listener),
                    stopped(stop_rx.clone()),
                ),
        );
        let http_server = tokio::spawn(crate::metrics::http::serve(
            self.http_listener,
            self.metrics.clone(),
            stopped(stop_rx.clone()),
        ));
        let disk_watcher = tokio::spawn(crate::disk::watch(
            self.layout.clone(),
            self.settings.sandbox.clone(),
            Outbox::new(self.events_tx.clone()),
            self.containerizers.clone(),
            self.containerizers.disk_usage(),
            rotations,
            stop_rx.clone(),
        ));
        let collector = tokio::spawn(crate::gc::collect(
            self.layout.clone(),
            self.settings.sandbox.gc_delay,
            Outbox::new(self.events_tx.clone()),
            stop_rx.clone(),
        ));
        let (link_tx, mut link_rx) = mpsc::channel(1024);
        let containerizers = self.containerizers.clone();
        let link = MasterLink::new(self.settings.masters.clone(), self.fence, link_tx)
            .with_usage(Arc::new(move || containerizers.usage_all()));
        let link_task = tokio::spawn(link.run(stop_rx.clone()));

        let mut result = self
            .driver
            .run(&mut link_rx, &mut self.events_rx, shutdown)
            .await;
        let kill_reason = match &result {
            Ok(Exit::ShutdownByMaster(_)) => Some(Reason::AgentRemoved),
            Ok(Exit::Requested) if self.settings.shutdown_tasks_on_exit => {
                Some(Reason::AgentRestarted)
            }
            _ => None,
        };
        if let Some(reason) = kill_reason {
            if let Err(e) = self
                .driver
                .kill_all_and_wait(&mut link_rx, &mut self.events_rx, reason)
                .await
            {
                result = Err(e);
            }
        }

        let _ = stop_tx.send(true);
        drop(link_rx);
        // Pending GetState calls must fail now rather than hold the server's shutdown.
        drop(self.events_rx);
        let _ = link_task.await;
        let _ = disk_watcher.await;
        let _ = collector.await;
        if let Ok(Err(e)) = api_server.await {
            tracing::warn!("agent API server: {e}");
        }
        let _ = http_server.await;
        match result {
            Ok(Exit::Requested) => {
                tracing::info!("agent stopped");
                Ok(())
            }
            Ok(Exit::ShutdownByMaster(reason)) => Err(AgentError::ShutdownByMaster(reason)),
            Err(e) => Err(e),
        }
    }
}

/// Binds, recovers and runs an agent until `shutdown` resolves. See [`Agent::run`].
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    Agent::bind(config).await?.run(shutdown).await
}

fn lock_work_dir(layout: &Layout) -> Result<File, AgentError> {
    let path = layout.lock_file();
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .ctx(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(AgentError::WorkDirLocked(layout.root().to_path_buf()));
        }
        return Err(AgentError::io(format!("locking {}", path.display()), e));
    }
    Ok(file)
}

fn read_agent_id(path: &std::path::Path) -> Result<Option<AgentId>, AgentError> {
    match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => Ok(Some(AgentId::new(s.trim()))),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AgentError::io(format!("reading {}", path.display()), e)),
    }
}

fn local_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
