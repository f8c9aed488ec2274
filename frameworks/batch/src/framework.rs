//! The framework: a thin shell that feeds the SDK's events (offers, updates, …) to the
//! [`Job`] and carries out what it decides (launch, kill, suppress, revive, tear down).
//! `main` loops over the events and hands each to [`Batch::handle`].

use std::collections::HashMap;
use std::time::Duration;

use drover_sdk::proto::pb;
use drover_sdk::proto::{AgentId, FrameworkId, OfferId, TaskId};
use drover_sdk::{AgentFiles, Driver, Event, OfferPacker, TaskBuilder, TaskRequest};
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

/// The batch framework: the job and what the event handlers, the progress ticker, Ctrl-C
/// and the final report need to know about it. Owned by `main`'s event loop.
#[derive(Debug)]
pub struct Batch {
    pub job: Job,
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
    command: String,
    request: TaskRequest,
}

impl Batch {
    pub fn new(job: Job, command: String, request: TaskRequest) -> Batch {
        Batch {
            job,
            framework_id: None,
            agents: HashMap::new(),
            finishing: false,
            last_progress: None,
            uncertain: Vec::new(),
            command,
            request,
        }
    }

    /// A `[batch] …` progress line when the counts changed since the last one.
    pub fn progress_line(&mut self) -> Option<String> {
        let progress = self.job.progress();
        if self.last_progress == Some(progress) {
            return None;
        }
        self.last_progress = Some(progress);
        Some(format!("[batch] {progress}"))
    }

    /// Acts on one event of the SDK ([`Event::Ended`] is `main`'s).
    pub async fn handle(&mut self, driver: &Driver, event: Event) {
        match event {
            Event::Subscribed {
                framework_id,
                resubscribed,
            } => self.subscribed(driver, framework_id, resubscribed).await,
            Event::Offers(offers) => self.offers(driver, offers).await,
            Event::Update(status) => self.update(driver, status).await,
            Event::Rescind(offer_id) => rescinded(offer_id),
            Event::Failure {
                agent_id,
                executor_id,
                ..
            } => failure(agent_id, executor_id),
            Event::Error(message) => {
                eprintln!("[batch] the master reported an error: {message}")
            }
            Event::Disconnected => {
                println!("[batch] lost the master; reconnecting (tasks keep running)")
            }
            Event::Message { .. } | Event::Ended(_) => {}
        }
    }

    /// Suppresses offers when the job needs none, revives them when it does.
    async fn sync_offer_interest(&self, driver: &Driver) {
        let wants = !self.finishing && self.job.wants_offers();
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
        let tasks: Vec<(TaskId, Option<AgentId>)> =
            self.uncertain.iter().map(|t| (t.clone(), None)).collect();
        if tasks.is_empty() {
            return;
        }
        if let Err(e) = driver.reconcile(tasks).await {
            debug!("reconciliation not sent ({e}); retrying once resubscribed");
        }
    }

    /// The job is over: report failures, then tear the framework down (killing whatever
    /// still runs). A failed teardown is retried after the next resubscription.
    async fn finish(&mut self, driver: &Driver) {
        self.finishing = true;
        let exhausted = self.job.exhausted();
        if let Some(fw) = &self.framework_id {
            for (index, task_id, _) in &exhausted {
                let address = self.agents.get(task_id).map(String::as_str);
                if let Some(tail) = stderr_tail(address, fw, task_id).await {
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

/// An offer was withdrawn: nothing to do (a launch on it fails and its tasks are requeued).
fn rescinded(offer_id: OfferId) {
    debug!(%offer_id, "offer rescinded");
}

fn failure(agent_id: AgentId, executor_id: Option<drover_sdk::proto::ExecutorId>) {
    if executor_id.is_none() {
        // Its tasks' fates arrive as updates (LOST ones are rerun, UNREACHABLE waited for).
        println!("[batch] agent {agent_id} was lost");
    }
}

impl Batch {
    async fn subscribed(&mut self, driver: &Driver, framework_id: FrameworkId, resubscribed: bool) {
        self.framework_id = Some(framework_id.clone());
        if resubscribed {
            println!("[batch] resubscribed as framework {framework_id}");
        } else {
            println!("[batch] subscribed as framework {framework_id}");
        }
        if self.finishing {
            if let Err(e) = driver.teardown().await {
                warn!("teardown failed again: {e}");
            }
            return;
        }
        self.reconcile_uncertain(driver).await;
        self.sync_offer_interest(driver).await;
    }

    async fn offers(&mut self, driver: &Driver, offers: Vec<pb::Offer>) {
        let mut queue = if self.finishing {
            Default::default()
        } else {
            self.job.take_launchable()
        };
        let name = self.job.spec().name.clone();
        let (job, agents, request, command) =
            (&mut self.job, &mut self.agents, self.request, &self.command);
        let packing = OfferPacker::new().pack(
            offers,
            &mut queue,
            |_| request,
            |index, offer, resources| {
                let task_id = job.launch(index);
                agents.insert(task_id.clone(), offer.agent_address.clone());
                TaskBuilder::new(task_id)
                    .name(format!("{name} #{index}"))
                    .shell(command.clone())
                    .env("DROVER_TASK_INDEX", index.to_string())
                    .env("DROVER_JOB_NAME", name.clone())
                    .offer(offer)
                    .resources(&resources)
                    .build()
            },
        );
        self.job.requeue(queue);
        let refuse = if self.job.wants_offers() {
            REFUSE_WHILE_PENDING
        } else {
            REFUSE_WHEN_IDLE
        };
        for (offer_id, tasks) in packing.launches {
            let ids: Vec<TaskId> = tasks.iter().filter_map(|t| t.task_id.clone()).collect();
            if let Err(e) = driver.launch(vec![offer_id], tasks).await {
                if !e.may_have_taken_effect() {
                    warn!(
                        "launching {} task(s) failed: {e}; they wait for another offer",
                        ids.len()
                    );
                    for id in &ids {
                        self.job.launch_failed(id);
                    }
                } else {
                    warn!(
                        "launching {} task(s) may or may not have committed ({e}); reconciling them",
                        ids.len()
                    );
                    self.uncertain.extend(ids);
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
        if let Some(id) = &status.task_id {
            self.uncertain.retain(|u| u != id);
        }
        let outcome = self.job.on_update(&status);
        let (done, finishing) = (self.job.is_done(), self.finishing);
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
}
