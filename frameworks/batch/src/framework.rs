//! The scheduler: a thin shell that feeds offers and updates to the [`Job`] and carries
//! out what it decides (launch, kill, suppress, revive, tear down).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use drover_sdk::proto::pb;
use drover_sdk::proto::{AgentId, FrameworkId, TaskId};
use drover_sdk::{
    async_trait, AgentFiles, Driver, OfferPacker, Scheduler, TaskBuilder, TaskRequest,
};
use tracing::{debug, warn};

use crate::job::{Job, Progress};

/// Seconds a declined offer stays away while the job still has tasks to place (short: a
/// retry may need it soon).
const REFUSE_WHILE_PENDING: f64 = 5.0;

/// Seconds a declined offer stays away when the job needs nothing (long: a revive clears
/// the filter anyway when a task must be rerun).
const REFUSE_WHEN_IDLE: f64 = 120.0;

/// Bytes of a failed task's stderr shown when the job gives up on it.
const STDERR_TAIL: u64 = 2048;

/// State shared between the scheduler callbacks and `main` (progress ticker, Ctrl-C,
/// final report). Locked briefly, never across an await.
#[derive(Debug)]
pub struct Shared {
    pub job: Job,
    pub driver: Option<Driver>,
    pub framework_id: Option<FrameworkId>,
    /// Where each attempt ran (the agent API address), to read its sandbox.
    pub agents: HashMap<TaskId, String>,
    /// The job is over and the framework is being torn down.
    pub finishing: bool,
    /// The last progress line printed, so that none is printed twice.
    pub last_progress: Option<Progress>,
    /// Launches whose ACCEPT failed ambiguously (the master may have committed them before
    /// failing over): asked about by reconciliation until an update for them arrives, so
    /// a job index never runs twice.
    pub uncertain: Vec<TaskId>,
}

impl Shared {
    /// A `[batch] …` progress line when the counts changed since the last one.
    pub fn progress_line(&mut self) -> Option<String> {
        let progress = self.job.progress();
        if self.last_progress == Some(progress) {
            return None;
        }
        self.last_progress = Some(progress);
        Some(format!("[batch] {progress}"))
    }
}

/// Locks the shared state; a panic elsewhere leaves plain data behind, so go on.
pub fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// The batch scheduler.
pub struct Batch {
    shared: Arc<Mutex<Shared>>,
    command: String,
    request: TaskRequest,
}

impl Batch {
    pub fn new(shared: Arc<Mutex<Shared>>, command: String, request: TaskRequest) -> Batch {
        Batch {
            shared,
            command,
            request,
        }
    }

    fn state(&self) -> MutexGuard<'_, Shared> {
        lock(&self.shared)
    }

    /// Suppresses offers when the job needs none, revives them when it does.
    async fn sync_offer_interest(&self, driver: &Driver) {
        let wants = {
            let s = self.state();
            !s.finishing && s.job.wants_offers()
        };
        let result = match (wants, driver.is_suppressed()) {
            (true, true) => driver.revive().await,
            (false, false) => driver.suppress().await,
            _ => Ok(()),
        };
        if let Err(e) = result {
            // The next event tries again; after a resubscription the SDK restores the
            // suppression itself.
            debug!("suppress/revive not sent: {e}");
        }
    }

    /// Asks the master about launches that failed ambiguously; the answers (STAGING and
    /// on, or LOST for a launch that never committed) arrive as updates.
    async fn reconcile_uncertain(&self, driver: &Driver) {
        let tasks: Vec<(TaskId, Option<AgentId>)> = self
            .state()
            .uncertain
            .iter()
            .map(|t| (t.clone(), None))
            .collect();
        if tasks.is_empty() {
            return;
        }
        if let Err(e) = driver.reconcile(tasks).await {
            debug!("reconciliation not sent ({e}); retrying once resubscribed");
        }
    }

    /// The job is over: report failures, then tear the framework down (killing whatever
    /// still runs). A failed teardown is retried after the next resubscription.
    async fn finish(&self, driver: &Driver) {
        let (exhausted, framework_id, agents) = {
            let mut s = self.state();
            s.finishing = true;
            let exhausted = s.job.exhausted();
            let agents: Vec<Option<String>> = exhausted
                .iter()
                .map(|(_, id, _)| s.agents.get(id).cloned())
                .collect();
            (exhausted, s.framework_id.clone(), agents)
        };
        if let Some(fw) = framework_id {
            for ((index, task_id, _), address) in exhausted.iter().zip(agents) {
                if let Some(tail) = stderr_tail(address.as_deref(), &fw, task_id).await {
                    println!(
                        "[batch] stderr of task {index} ({task_id}), last {STDERR_TAIL} bytes:"
                    );
                    println!("{}", tail.trim_end());
                }
            }
        }
        if let Err(e) = driver.teardown().await {
            warn!("teardown failed ({e}); retrying once resubscribed");
        }
    }
}

/// The end of a task's stderr, or `None` when it cannot be read (it is only a hint).
async fn stderr_tail(address: Option<&str>, fw: &FrameworkId, task_id: &TaskId) -> Option<String> {
    let read = async {
        let mut files = AgentFiles::connect(address?).await.ok()?;
        files.tail(fw, task_id, "stderr", STDERR_TAIL).await.ok()
    };
    let bytes = tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .ok()??;
    (!bytes.is_empty()).then(|| String::from_utf8_lossy(&bytes).into_owned())
}

#[async_trait]
impl Scheduler for Batch {
    async fn subscribed(&mut self, driver: &Driver, framework_id: FrameworkId, resubscribed: bool) {
        let finishing = {
            let mut s = self.state();
            s.driver = Some(driver.clone());
            s.framework_id = Some(framework_id.clone());
            s.finishing
        };
        if resubscribed {
            println!("[batch] resubscribed as framework {framework_id}");
        } else {
            println!("[batch] subscribed as framework {framework_id}");
        }
        if finishing {
            if let Err(e) = driver.teardown().await {
                warn!("teardown failed again: {e}");
            }
            return;
        }
        self.reconcile_uncertain(driver).await;
        self.sync_offer_interest(driver).await;
    }

    async fn offers(&mut self, driver: &Driver, offers: Vec<pb::Offer>) {
        let (packing, refuse) = {
            let mut guard = self.state();
            let s = &mut *guard;
            let mut queue = if s.finishing {
                Default::default()
            } else {
                s.job.take_launchable()
            };
            let name = s.job.spec().name.clone();
            let packing = OfferPacker::new().pack(
                offers,
                &mut queue,
                |_| self.request,
                |index, offer, resources| {
                    let task_id = s.job.launch(index);
                    s.agents
                        .insert(task_id.clone(), offer.agent_address.clone());
                    TaskBuilder::new(task_id)
                        .name(format!("{name} #{index}"))
                        .shell(self.command.clone())
                        .env("DROVER_TASK_INDEX", index.to_string())
                        .env("DROVER_JOB_NAME", name.clone())
                        .offer(offer)
                        .resources(&resources)
                        .build()
                },
            );
            s.job.requeue(queue);
            let refuse = if s.job.wants_offers() {
                REFUSE_WHILE_PENDING
            } else {
                REFUSE_WHEN_IDLE
            };
            (packing, refuse)
        };
        for (offer_id, tasks) in packing.launches {
            let ids: Vec<TaskId> = tasks.iter().filter_map(|t| t.task_id.clone()).collect();
            if let Err(e) = driver.launch(vec![offer_id], tasks).await {
                if !e.may_have_taken_effect() {
                    warn!(
                        "launching {} task(s) failed: {e}; they wait for another offer",
                        ids.len()
                    );
                    let mut s = self.state();
                    for id in &ids {
                        s.job.launch_failed(id);
                    }
                } else {
                    warn!(
                        "launching {} task(s) may or may not have committed ({e}); reconciling them",
                        ids.len()
                    );
                    self.state().uncertain.extend(ids);
                    self.reconcile_uncertain(driver).await;
                }
            }
        }
        if let Err(e) = driver.decline(packing.unused, Some(refuse)).await {
            debug!("decline not sent: {e}");
        }
        self.sync_offer_interest(driver).await;
    }

    async fn update(&mut self, driver: &Driver, status: pb::TaskStatus) {
        let (outcome, done, finishing) = {
            let mut s = self.state();
            if let Some(id) = &status.task_id {
                s.uncertain.retain(|u| u != id);
            }
            let outcome = s.job.on_update(&status);
            (outcome, s.job.is_done(), s.finishing)
        };
        if let Some(note) = &outcome.note {
            println!("[batch] {note}");
        }
        for (task_id, agent_id) in outcome.kill {
            if let Err(e) = driver.kill(task_id.clone(), agent_id).await {
                warn!(%task_id, "kill failed: {e}");
            }
        }
        if done && !finishing {
            self.finish(driver).await;
        } else if !finishing {
            self.sync_offer_interest(driver).await;
        }
    }

    async fn rescinded(&mut self, _driver: &Driver, offer_id: drover_sdk::proto::OfferId) {
        debug!(%offer_id, "offer rescinded");
    }

    async fn failure(
        &mut self,
        _driver: &Driver,
        agent_id: drover_sdk::proto::AgentId,
        executor_id: Option<drover_sdk::proto::ExecutorId>,
        _status: Option<i32>,
    ) {
        if executor_id.is_none() {
            // Its tasks' fates arrive as updates (LOST ones are rerun, UNREACHABLE waited for).
            println!("[batch] agent {agent_id} was lost");
        }
    }

    async fn error(&mut self, _driver: &Driver, message: String) {
        eprintln!("[batch] the master reported an error: {message}");
    }

    async fn disconnected(&mut self, _driver: &Driver) {
        println!("[batch] lost the master; reconnecting (tasks keep running)");
    }
}
