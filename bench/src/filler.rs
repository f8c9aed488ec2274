//! [`Filler`]: a framework that launches long-running tasks (`sleep infinity`) until a
//! given number run, for benchmarks that measure a cluster holding work rather than
//! pushing it through.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use drover_sdk::proto::{pb, states};
use drover_sdk::{async_trait, Driver, OfferPacker, Scheduler, TaskBuilder, TaskRequest};

/// Launches `count` tasks named `<prefix>-<i>` that never end, packing several per offer.
pub struct Filler {
    prefix: String,
    pending: VecDeque<usize>,
    request: TaskRequest,
    container: Option<pb::ContainerInfo>,
    /// Tasks seen RUNNING (each once, however many RUNNING updates it gets).
    seen_running: HashSet<String>,
    running: Arc<AtomicUsize>,
    /// Tasks that ended (they should not: a benchmark reads it to fail loudly).
    ended: Arc<AtomicUsize>,
}

impl Filler {
    /// `cpus` and `mem` (MB) per task; tasks run in the agent's default containerizer.
    pub fn new(prefix: &str, count: usize, cpus: f64, mem: f64) -> Self {
        Filler {
            prefix: prefix.to_string(),
            pending: (0..count).collect(),
            request: TaskRequest::new(cpus, mem),
            container: None,
            seen_running: HashSet::new(),
            running: Arc::default(),
            ended: Arc::default(),
        }
    }

    /// Every task asks for this container (containerizer type, image).
    pub fn container(mut self, container: Option<pb::ContainerInfo>) -> Self {
        self.container = container;
        self
    }

    /// Counters to read while the framework runs: (running, ended).
    pub fn counters(&self) -> (Arc<AtomicUsize>, Arc<AtomicUsize>) {
        (self.running.clone(), self.ended.clone())
    }

    fn index(&self, t: &pb::TaskInfo) -> Option<usize> {
        t.task_id
            .as_ref()?
            .as_str()
            .strip_prefix(&self.prefix)?
            .strip_prefix('-')?
            .parse()
            .ok()
    }
}

#[async_trait]
impl Scheduler for Filler {
    async fn offers(&mut self, driver: &Driver, offers: Vec<pb::Offer>) {
        let request = self.request;
        let prefix = self.prefix.clone();
        let container = self.container.clone();
        let packing = OfferPacker::new().pack(
            offers,
            &mut self.pending,
            |_| request,
            |i, offer, resources| {
                let mut task = TaskBuilder::new(format!("{prefix}-{i}"))
                    .shell("sleep infinity")
                    .offer(offer)
                    .resources(&resources)
                    .build();
                task.container = container.clone();
                task
            },
        );
        for (offer_id, tasks) in packing.launches {
            let ids: Vec<usize> = tasks.iter().filter_map(|t| self.index(t)).collect();
            let op = pb::Operation {
                r#type: pb::operation::Type::Launch as i32,
                launch: Some(pb::operation::Launch { task_infos: tasks }),
                ..Default::default()
            };
            let result = driver
                .accept(
                    vec![offer_id],
                    vec![op],
                    pb::Filters {
                        refuse_seconds: Some(3600.0),
                    },
                )
                .await;
            if result.is_err() {
                // The offer went away (e.g. rescinded): put the tasks back and ask again.
                self.pending.extend(ids);
                let _ = driver.revive().await;
            }
        }
        // With work left, declined agents come back soon; without, stay quiet.
        let refuse = if self.pending.is_empty() { 3600.0 } else { 1.0 };
        let _ = driver.decline(packing.unused, Some(refuse)).await;
    }

    async fn update(&mut self, _: &Driver, status: pb::TaskStatus) {
        let state = status.state();
        if state == pb::TaskState::TaskRunning {
            let id = status
                .task_id
                .map(|t| t.as_str().to_string())
                .unwrap_or_default();
            if self.seen_running.insert(id) {
                self.running
                    .store(self.seen_running.len(), Ordering::Relaxed);
            }
        } else if states::is_terminal(state) {
            self.ended.fetch_add(1, Ordering::Relaxed);
        }
    }
}
