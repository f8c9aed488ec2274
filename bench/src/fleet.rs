//! A simulated agent fleet: thousands of agents in one process, each speaking the real
//! agent protocol (`AgentMaster.Session`) to the leading master.
//!
//! Every simulated agent registers with its resources, pings at the interval the master
//! asks for, "runs" each task it is sent for a configured time (RUNNING at once, FINISHED
//! when the time is up), keeps each status update until the master acknowledges it and
//! sends it again after reconnecting, follows `NotLeader` redirects, and re-registers under
//! the same agent id with the tasks it still runs after a failover, like a real agent.
//!
//! Streams are multiplexed: agents share one HTTP/2 connection per
//! [`FleetConfig::agents_per_connection`], so 50,000 agents need a few hundred sockets,
//! not 50,000 ephemeral ports.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_proto::leader::{Backoff, Round};
use drover_proto::pb::{
    self, agent_master_client::AgentMasterClient, agent_message, master_message,
};
use drover_proto::{AgentId, FrameworkId};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

/// What the fleet simulates.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// Masters to dial (the leader is found from them).
    pub masters: Vec<String>,
    pub agents: usize,
    pub cpus: f64,
    pub mem_mb: f64,
    /// How long each task "runs" before it FINISHES.
    pub task_secs: f64,
    /// Agents sharing one HTTP/2 connection (the master allows 1,000 streams each).
    pub agents_per_connection: usize,
    /// Agents registering per second while the fleet starts (0: all at once).
    pub register_rate: f64,
}

/// Counters the fleet keeps, read by benchmarks.
#[derive(Debug, Default)]
pub struct FleetStats {
    pub registered: AtomicU64,
    pub sessions: AtomicU64,
    pub tasks_started: AtomicU64,
    pub tasks_finished: AtomicU64,
    pub running: AtomicU64,
    pub reconnects: AtomicU64,
}

/// Shared connections, one per (group, master address), reused by every agent of a group.
struct Connections {
    channels: Mutex<HashMap<(usize, String), Channel>>,
}

impl Connections {
    fn get(&self, group: usize, addr: &str) -> anyhow::Result<Channel> {
        let mut map = self.channels.lock().expect("channels lock");
        if let Some(c) = map.get(&(group, addr.to_string())) {
            return Ok(c.clone());
        }
        let url = format!("http://{addr}");
        let ch = Endpoint::from_shared(url)?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true)
            .connect_lazy();
        map.insert((group, addr.to_string()), ch.clone());
        Ok(ch)
    }

    fn forget(&self, group: usize, addr: &str) {
        self.channels
            .lock()
            .expect("channels lock")
            .remove(&(group, addr.to_string()));
    }
}

/// Starts the fleet on the current runtime; agents run until the runtime stops.
pub fn start(cfg: FleetConfig) -> Arc<FleetStats> {
    raise_nofile_limit();
    let stats = Arc::new(FleetStats::default());
    let conns = Arc::new(Connections {
        channels: Mutex::new(HashMap::new()),
    });
    let cfg = Arc::new(cfg);
    for i in 0..cfg.agents {
        let (cfg, stats, conns) = (cfg.clone(), stats.clone(), conns.clone());
        tokio::spawn(async move {
            if cfg.register_rate > 0.0 {
                tokio::time::sleep(Duration::from_secs_f64(i as f64 / cfg.register_rate)).await;
            }
            SimAgent::new(i, cfg, stats, conns).run().await;
        });
    }
    stats
}

/// Lets one process hold many sockets.
pub fn raise_nofile_limit() {
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

struct RunningTask {
    framework_id: FrameworkId,
    task: pb::TaskInfo,
}

struct SimAgent {
    index: usize,
    cfg: Arc<FleetConfig>,
    stats: Arc<FleetStats>,
    conns: Arc<Connections>,
    agent_id: Option<AgentId>,
    tasks: HashMap<String, RunningTask>,
    /// Updates not yet acknowledged, by uuid.
    unacked: HashMap<Vec<u8>, pb::agent_message::StatusUpdate>,
    highest_term: u64,
    /// The current session got as far as Registered.
    was_registered: bool,
}

enum Event {
    FromMaster(Box<Result<Option<pb::MasterMessage>, tonic::Status>>),
    TaskDone(String),
    Ping,
}

impl SimAgent {
    fn new(
        index: usize,
        cfg: Arc<FleetConfig>,
        stats: Arc<FleetStats>,
        conns: Arc<Connections>,
    ) -> Self {
        Self {
            index,
            cfg,
            stats,
            conns,
            agent_id: None,
            tasks: HashMap::new(),
            unacked: HashMap::new(),
            highest_term: 0,
            was_registered: false,
        }
    }

    fn group(&self) -> usize {
        self.index / self.cfg.agents_per_connection.max(1)
    }

    fn info(&self) -> pb::AgentInfo {
        pb::AgentInfo {
            hostname: format!("sim-{}", self.index),
            // Simulated agents serve no API; the address only has to be well formed.
            address: format!("127.0.0.1:{}", 10_000 + self.index % 50_000),
            resources: vec![
                scalar("cpus", self.cfg.cpus),
                scalar("mem", self.cfg.mem_mb),
            ],
            attributes: Vec::new(),
        }
    }

    /// Dials the masters in the rounds of `drover_proto::leader`, like the real agent: a
    /// named leader is followed at once (a bounded number of times per round), and rounds
    /// that found no leader are separated by the shared jittered backoff.
    async fn run(mut self) {
        let mut backoff = Backoff::default();
        // Seeded per agent, so a run is repeatable and agents still draw different delays.
        let mut rng = StdRng::seed_from_u64(self.index as u64);
        // Each agent starts at its own master, spreading the fleet over them.
        let mut preferred = Some(self.cfg.masters[self.index % self.cfg.masters.len()].clone());
        loop {
            let mut round = Round::new(&self.cfg.masters, preferred.take().as_deref());
            while let Some(addr) = round.next() {
                self.was_registered = false;
                let ended = self.session(&addr).await;
                if self.was_registered {
                    // A session that worked starts the next round from the shortest pause.
                    backoff.reset();
                }
                let followed = match ended {
                    Err(Some(hint)) => round.follow(&addr, &hint).followed(),
                    _ => false,
                };
                if !followed {
                    self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    self.conns.forget(self.group(), &addr);
                }
            }
            tokio::time::sleep(backoff.next_delay(&mut rng)).await;
        }
    }

    /// One session with one master; returns `Err(leader hint)` when it ends.
    async fn session(&mut self, addr: &str) -> Result<(), Option<String>> {
        let ch = self.conns.get(self.group(), addr).map_err(|_| None)?;
        let (tx, rx) = mpsc::channel::<pb::AgentMessage>(64);
        let register = pb::AgentMessage {
            msg: Some(agent_message::Msg::Register(agent_message::Register {
                agent_id: self.agent_id.clone(),
                info: Some(self.info()),
                tasks: self
                    .tasks
                    .values()
                    .map(|t| pb::AgentTask {
                        framework_id: Some(t.framework_id.clone()),
                        task: Some(t.task.clone()),
                        state: pb::TaskState::TaskRunning as i32,
                    })
                    .collect(),
                frameworks: {
                    let mut f: Vec<FrameworkId> = self
                        .tasks
                        .values()
                        .map(|t| t.framework_id.clone())
                        .collect();
                    f.sort();
                    f.dedup();
                    f
                },
            })),
        };
        tx.send(register).await.map_err(|_| None)?;
        let mut client = AgentMasterClient::new(ch).max_decoding_message_size(16 * 1024 * 1024);
        let mut inbound = match client.session(ReceiverStream::new(rx)).await {
            Ok(r) => r.into_inner(),
            Err(s) => return Err(drover_proto::leader::leader_hint(&s)),
        };
        let (events_tx, mut events) = mpsc::channel::<Event>(256);
        let mut ping = tokio::time::interval(Duration::from_secs(5));
        let mut registered = false;
        loop {
            let ev = tokio::select! {
                m = inbound.message() => Event::FromMaster(Box::new(m)),
                Some(e) = events.recv() => e,
                _ = ping.tick(), if registered => Event::Ping,
            };
            match ev {
                Event::FromMaster(m) => match *m {
                    Ok(Some(m)) => {
                        if m.term < self.highest_term {
                            continue; // fenced: an old leader's command
                        }
                        self.highest_term = m.term;
                        match m.msg {
                            Some(master_message::Msg::Registered(r)) => {
                                if !registered {
                                    registered = true;
                                    self.was_registered = true;
                                    self.stats.registered.fetch_add(1, Ordering::Relaxed);
                                    self.stats.sessions.fetch_add(1, Ordering::Relaxed);
                                }
                                self.agent_id = r.agent_id;
                                let every = Duration::from_secs_f64(
                                    r.ping_interval_seconds.clamp(0.5, 60.0),
                                );
                                ping = tokio::time::interval(every);
                                // Updates the previous leader never acknowledged.
                                for u in self.unacked.values() {
                                    let _ = tx.try_send(status_msg(u.clone()));
                                }
                            }
                            Some(master_message::Msg::RunTask(run)) => {
                                let (Some(fw), Some(task)) = (run.framework_id, run.task) else {
                                    continue;
                                };
                                let id = task.task_id.clone().unwrap_or_default().to_string();
                                if self.tasks.contains_key(&id) {
                                    continue; // launches are idempotent
                                }
                                self.stats.tasks_started.fetch_add(1, Ordering::Relaxed);
                                self.stats.running.fetch_add(1, Ordering::Relaxed);
                                let u = self.update(&fw, &task, pb::TaskState::TaskRunning);
                                let _ = tx.send(status_msg(u)).await;
                                self.tasks.insert(
                                    id.clone(),
                                    RunningTask {
                                        framework_id: fw,
                                        task,
                                    },
                                );
                                let done = events_tx.clone();
                                let secs = self.cfg.task_secs;
                                tokio::spawn(async move {
                                    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                                    let _ = done.send(Event::TaskDone(id)).await;
                                });
                            }
                            Some(master_message::Msg::KillTask(k)) => {
                                let id = k.task_id.unwrap_or_default().to_string();
                                if let Some(t) = self.tasks.remove(&id) {
                                    self.stats.running.fetch_sub(1, Ordering::Relaxed);
                                    let u = self.update(
                                        &t.framework_id,
                                        &t.task,
                                        pb::TaskState::TaskKilled,
                                    );
                                    let _ = tx.send(status_msg(u)).await;
                                }
                            }
                            Some(master_message::Msg::StatusAck(a)) => {
                                self.unacked.remove(&a.uuid);
                            }
                            Some(master_message::Msg::Shutdown(s)) => {
                                eprintln!(
                                    "sim agent {} told to shut down: {}",
                                    self.index, s.reason
                                );
                                std::future::pending::<()>().await;
                            }
                            _ => {}
                        }
                    }
                    Ok(None) => return Err(None),
                    Err(s) => return Err(drover_proto::leader::leader_hint(&s)),
                },
                Event::TaskDone(id) => {
                    if let Some(t) = self.tasks.remove(&id) {
                        self.stats.running.fetch_sub(1, Ordering::Relaxed);
                        self.stats.tasks_finished.fetch_add(1, Ordering::Relaxed);
                        let u = self.update(&t.framework_id, &t.task, pb::TaskState::TaskFinished);
                        let _ = tx.send(status_msg(u)).await;
                    }
                }
                Event::Ping => {
                    let ping = pb::AgentMessage {
                        msg: Some(agent_message::Msg::Ping(agent_message::Ping::default())),
                    };
                    if tx.send(ping).await.is_err() {
                        return Err(None);
                    }
                }
            }
        }
    }

    fn update(
        &mut self,
        fw: &FrameworkId,
        task: &pb::TaskInfo,
        state: pb::TaskState,
    ) -> pb::agent_message::StatusUpdate {
        let uuid = uuid_bytes();
        let u = pb::agent_message::StatusUpdate {
            framework_id: Some(fw.clone()),
            status: Some(pb::TaskStatus {
                task_id: task.task_id.clone(),
                state: state as i32,
                source: pb::task_status::Source::Executor as i32,
                agent_id: self.agent_id.clone(),
                timestamp: drover_proto::unix_seconds(),
                uuid: uuid.clone(),
                exit_code: (state == pb::TaskState::TaskFinished).then_some(0),
                ..Default::default()
            }),
        };
        self.unacked.insert(uuid, u.clone());
        u
    }
}

fn status_msg(u: pb::agent_message::StatusUpdate) -> pb::AgentMessage {
    pb::AgentMessage {
        msg: Some(agent_message::Msg::StatusUpdate(u)),
    }
}

fn scalar(name: &str, v: f64) -> pb::Resource {
    pb::Resource {
        name: name.to_string(),
        kind: pb::resource::Kind::Scalar as i32,
        scalar: v,
        ..Default::default()
    }
}

fn uuid_bytes() -> Vec<u8> {
    static SEQ: AtomicU64 = AtomicU64::new(1);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id() as u64;
    let mut b = Vec::with_capacity(16);
    b.extend_from_slice(&pid.to_be_bytes());
    b.extend_from_slice(&n.to_be_bytes());
    b
}
