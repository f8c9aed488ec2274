//! The job as a pure state machine: which tasks wait, which run, which finished, and what
//! to do about each task update. No I/O and no clock, so every rule is unit-tested.
//!
//! Each of the job's `N` tasks (its *index*, 0-based) is launched as a series of attempts
//! with task ids `<job>-<index>-<attempt>`. An index finishes the first time any of its
//! attempts reports FINISHED, and counts once however often that update is delivered.
//! A failed attempt (FAILED, LOST, DROPPED, ERROR, GONE, UNKNOWN, or KILLED by someone
//! else) is rerun until the index has failed `1 + max_retries` times; then the job fails.
//! UNREACHABLE is not a failure: the agent may come back, so the attempt is waited for.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;

use drover_sdk::proto::pb::{TaskState, TaskStatus};
use drover_sdk::proto::{states, AgentId, TaskId};

/// What a job is: its name, size and limits.
#[derive(Clone, Debug)]
pub struct JobSpec {
    /// Used in task ids, so it must be a valid id (letters, digits, `-_.:@`).
    pub name: String,
    /// Number of tasks.
    pub tasks: usize,
    /// Reruns allowed per task after its first attempt fails.
    pub max_retries: u32,
    /// Most tasks in flight at once; `None` for no limit.
    pub parallelism: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    /// Waiting for an offer.
    Pending,
    /// An attempt is in flight.
    Active,
    Finished,
    /// Failed more often than allowed.
    Exhausted,
}

#[derive(Clone, Debug)]
struct Slot {
    state: SlotState,
    /// The attempt in flight, when `Active`.
    current: Option<TaskId>,
    /// Number for the next attempt (attempts abandoned before launch count too, so ids
    /// are never reused).
    next_attempt: u32,
    /// Failed attempts, counted against the retry limit.
    failures: u32,
    /// The current attempt's agent is unreachable.
    unreachable: bool,
    /// The last attempt that failed, and how.
    last_failure: Option<(TaskId, String)>,
}

/// What the framework should do after an update.
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    /// The progress counts changed.
    pub changed: bool,
    /// A line worth showing people (a failure, a retry, giving up).
    pub note: Option<String>,
    /// Attempts to kill: duplicates of an index that is already done or running again.
    pub kill: Vec<(TaskId, Option<AgentId>)>,
}

/// Counts for progress lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub total: usize,
    pub finished: usize,
    /// Attempts in flight (launched, not yet terminal), unreachable ones included.
    pub running: usize,
    /// In-flight attempts whose agent is unreachable.
    pub unreachable: usize,
    /// Tasks waiting for an offer.
    pub pending: usize,
    /// Failed attempts so far (each may have been retried).
    pub failed: usize,
    /// Tasks that exhausted their retries.
    pub exhausted: usize,
}

impl fmt::Display for Progress {
    /// `17/100 finished, 3 running, 0 failed`, with unreachable and exhausted counts when
    /// there are any.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} finished, {} running, {} failed",
            self.finished, self.total, self.running, self.failed
        )?;
        if self.unreachable > 0 {
            write!(f, ", {} unreachable", self.unreachable)?;
        }
        if self.exhausted > 0 {
            write!(f, ", {} out of retries", self.exhausted)?;
        }
        Ok(())
    }
}

/// The job's state. See the module docs for the rules.
#[derive(Debug)]
pub struct Job {
    spec: JobSpec,
    slots: Vec<Slot>,
    pending: VecDeque<usize>,
    /// Every attempt ever launched: task id to (index, attempt).
    attempts: HashMap<TaskId, (usize, u32)>,
    /// Attempts this job killed itself; their KILLED is expected, not a failure.
    killed: HashSet<TaskId>,
    finished: usize,
    failed_attempts: usize,
    exhausted: Vec<usize>,
}

impl Job {
    /// A job with every task pending.
    pub fn new(spec: JobSpec) -> Job {
        let slot = Slot {
            state: SlotState::Pending,
            current: None,
            next_attempt: 0,
            failures: 0,
            unreachable: false,
            last_failure: None,
        };
        Job {
            slots: vec![slot; spec.tasks],
            pending: (0..spec.tasks).collect(),
            spec,
            attempts: HashMap::new(),
            killed: HashSet::new(),
            finished: 0,
            failed_attempts: 0,
            exhausted: Vec::new(),
        }
    }

    /// The job's description.
    pub fn spec(&self) -> &JobSpec {
        &self.spec
    }

    /// The task id of an attempt.
    pub fn task_id(&self, index: usize, attempt: u32) -> TaskId {
        TaskId::new(format!("{}-{index}-{attempt}", self.spec.name))
    }

    fn active(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.state == SlotState::Active)
            .count()
    }

    /// How many more tasks may be in flight now.
    fn headroom(&self) -> usize {
        match self.spec.parallelism {
            Some(p) => p.saturating_sub(self.active()),
            None => usize::MAX,
        }
    }

    /// True when the job has tasks to place and room to place them: it wants offers.
    pub fn wants_offers(&self) -> bool {
        !self.is_done() && !self.pending.is_empty() && self.headroom() > 0
    }

    /// Takes the tasks that may be launched now (pending, within the parallelism), in
    /// order. Give back whatever was not launched with [`Job::requeue`].
    pub fn take_launchable(&mut self) -> VecDeque<usize> {
        if self.is_done() {
            return VecDeque::new();
        }
        let n = self.headroom().min(self.pending.len());
        self.pending.drain(..n).collect()
    }

    /// Puts tasks taken by [`Job::take_launchable`] but not launched back at the front.
    pub fn requeue(&mut self, mut unplaced: VecDeque<usize>) {
        unplaced.retain(|&i| self.slots[i].state == SlotState::Pending);
        unplaced.extend(self.pending.drain(..));
        self.pending = unplaced;
    }

    /// Records a new attempt of `index` and returns its task id.
    pub fn launch(&mut self, index: usize) -> TaskId {
        let attempt = self.slots[index].next_attempt;
        let id = self.task_id(index, attempt);
        let slot = &mut self.slots[index];
        slot.next_attempt += 1;
        slot.state = SlotState::Active;
        slot.unreachable = false;
        slot.current = Some(id.clone());
        self.attempts.insert(id.clone(), (index, attempt));
        id
    }

    /// The launch of `task_id` was not accepted by the master (the call failed): the task
    /// waits for another offer, and the attempt does not count as a failure. Should the
    /// master have launched it after all, its updates are still recognised.
    pub fn launch_failed(&mut self, task_id: &TaskId) {
        let Some(&(index, _)) = self.attempts.get(task_id) else {
            return;
        };
        let slot = &mut self.slots[index];
        if slot.state == SlotState::Active && slot.current.as_ref() == Some(task_id) {
            slot.state = SlotState::Pending;
            slot.current = None;
            self.pending.push_front(index);
        }
    }

    /// Applies a task update. Unknown, stale and duplicate updates change nothing.
    pub fn on_update(&mut self, status: &TaskStatus) -> Outcome {
        let mut out = Outcome::default();
        let Some(task_id) = status.task_id.as_ref() else {
            return out;
        };
        let Some(&(index, attempt)) = self.attempts.get(task_id) else {
            return out;
        };
        let state = status.state();
        let agent_id = status.agent_id.clone().filter(|a| !a.is_empty());
        let slot = &mut self.slots[index];
        if matches!(slot.state, SlotState::Finished | SlotState::Exhausted) {
            // Already decided; a later attempt still running would be a duplicate.
            if !states::is_terminal(state) && self.killed.insert(task_id.clone()) {
                out.kill.push((task_id.clone(), agent_id));
            }
            return out;
        }
        let is_current = slot.current.as_ref() == Some(task_id);
        match state {
            TaskState::TaskFinished => {
                slot.state = SlotState::Finished;
                slot.unreachable = false;
                // An older attempt finished while the index was pending or rerunning:
                // the work is done, so the rerun is not needed.
                if let Some(cur) = slot.current.take().filter(|c| c != task_id) {
                    self.killed.insert(cur.clone());
                    out.kill.push((cur, None));
                }
                self.pending.retain(|&i| i != index);
                self.finished += 1;
                out.changed = true;
            }
            TaskState::TaskUnreachable => {
                if is_current && !slot.unreachable {
                    slot.unreachable = true;
                    out.changed = true;
                    out.note = Some(format!(
                        "task {index} ({task_id}) is unreachable; waiting for its agent to return"
                    ));
                }
            }
            TaskState::TaskStaging
            | TaskState::TaskStarting
            | TaskState::TaskRunning
            | TaskState::TaskKilling => {
                if is_current {
                    out.changed = slot.unreachable;
                    slot.unreachable = false;
                } else if self.killed.insert(task_id.clone()) {
                    // An abandoned attempt runs after all, next to its replacement.
                    out.kill.push((task_id.clone(), agent_id));
                }
            }
            TaskState::TaskKilled if self.killed.contains(task_id) => {}
            TaskState::Unspecified => {}
            _ if !is_current => {}
            _ => {
                slot.current = None;
                slot.unreachable = false;
                slot.failures += 1;
                self.failed_attempts += 1;
                let why = describe(status);
                slot.last_failure = Some((task_id.clone(), why.clone()));
                out.changed = true;
                if slot.failures > self.spec.max_retries {
                    slot.state = SlotState::Exhausted;
                    self.exhausted.push(index);
                    out.note = Some(format!(
                        "task {index} failed {} times, giving up; last attempt {task_id}: {why}",
                        slot.failures
                    ));
                } else {
                    slot.state = SlotState::Pending;
                    self.pending.push_back(index);
                    out.note = Some(format!(
                        "task {index} attempt {attempt} {why}; retrying ({}/{})",
                        slot.failures, self.spec.max_retries
                    ));
                }
            }
        }
        out
    }

    /// True when every task finished, or one ran out of retries.
    pub fn is_done(&self) -> bool {
        self.succeeded() || !self.exhausted.is_empty()
    }

    /// True when every task finished.
    pub fn succeeded(&self) -> bool {
        self.finished == self.spec.tasks
    }

    /// Tasks that ran out of retries, each with its last failed attempt and how it failed.
    pub fn exhausted(&self) -> Vec<(usize, TaskId, String)> {
        self.exhausted
            .iter()
            .filter_map(|&i| {
                let (id, why) = self.slots[i].last_failure.clone()?;
                Some((i, id, why))
            })
            .collect()
    }

    /// Counts for progress lines.
    pub fn progress(&self) -> Progress {
        let active = self.slots.iter().filter(|s| s.state == SlotState::Active);
        Progress {
            total: self.spec.tasks,
            finished: self.finished,
            running: active.clone().count(),
            unreachable: active.filter(|s| s.unreachable).count(),
            pending: self.pending.len(),
            failed: self.failed_attempts,
            exhausted: self.exhausted.len(),
        }
    }
}

/// `FAILED (exit 2): message` for people.
fn describe(status: &TaskStatus) -> String {
    let mut s = states::name(status.state()).to_string();
    if let Some(code) = status.exit_code {
        s.push_str(&format!(" (exit {code})"));
    }
    if !status.message.is_empty() {
        s.push_str(": ");
        s.push_str(&status.message);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(tasks: usize, max_retries: u32, parallelism: Option<usize>) -> Job {
        Job::new(JobSpec {
            name: "j".into(),
            tasks,
            max_retries,
            parallelism,
        })
    }

    fn status(id: &TaskId, state: TaskState) -> TaskStatus {
        TaskStatus {
            task_id: Some(id.clone()),
            state: state as i32,
            agent_id: Some("a1".into()),
            ..Default::default()
        }
    }

    /// Launches everything launchable, returning the task ids.
    fn launch_all(j: &mut Job) -> Vec<TaskId> {
        let q = j.take_launchable();
        q.into_iter().map(|i| j.launch(i)).collect()
    }

    #[test]
    fn completes_when_every_task_finishes_once() {
        let mut j = job(3, 3, None);
        let ids = launch_all(&mut j);
        assert_eq!(
            ids.iter().map(TaskId::as_str).collect::<Vec<_>>(),
            ["j-0-0", "j-1-0", "j-2-0"]
        );
        assert!(!j.wants_offers());
        for id in &ids {
            assert!(!j.on_update(&status(id, TaskState::TaskRunning)).changed);
        }
        assert_eq!(j.progress().running, 3);
        assert!(
            j.on_update(&status(&ids[0], TaskState::TaskFinished))
                .changed
        );
        // The same update again (master failover, reconciliation) counts nothing.
        assert_eq!(
            j.on_update(&status(&ids[0], TaskState::TaskFinished)),
            Outcome::default()
        );
        assert_eq!(
            j.on_update(&status(&ids[0], TaskState::TaskRunning))
                .kill
                .len(),
            1
        );
        assert_eq!(j.progress().finished, 1);
        assert!(!j.is_done());
        j.on_update(&status(&ids[1], TaskState::TaskFinished));
        j.on_update(&status(&ids[2], TaskState::TaskFinished));
        assert!(j.is_done() && j.succeeded());
        assert_eq!(
            j.progress().to_string(),
            "3/3 finished, 0 running, 0 failed"
        );
    }

    #[test]
    fn retries_up_to_the_limit_then_gives_up() {
        let mut j = job(2, 2, None);
        let ids = launch_all(&mut j);
        j.on_update(&status(&ids[1], TaskState::TaskFinished));
        let mut current = ids[0].clone();
        for attempt in 1..=2u32 {
            let mut failed = status(&current, TaskState::TaskFailed);
            failed.exit_code = Some(3);
            let out = j.on_update(&failed);
            assert!(out.note.unwrap().contains("retrying"));
            // A duplicate of the failure must not consume another retry.
            assert_eq!(j.on_update(&failed), Outcome::default());
            assert!(j.wants_offers());
            let next = launch_all(&mut j);
            assert_eq!(next.len(), 1);
            assert_eq!(next[0].as_str(), format!("j-0-{attempt}"));
            current = next[0].clone();
        }
        let out = j.on_update(&status(&current, TaskState::TaskLost));
        assert!(out.note.unwrap().contains("giving up"));
        assert!(j.is_done() && !j.succeeded());
        assert!(!j.wants_offers());
        assert!(j.take_launchable().is_empty());
        let exhausted = j.exhausted();
        assert_eq!(exhausted.len(), 1);
        assert_eq!((exhausted[0].0, exhausted[0].1.as_str()), (0, "j-0-2"));
        assert_eq!(exhausted[0].2, "LOST");
        let p = j.progress();
        assert_eq!((p.failed, p.exhausted, p.finished), (3, 1, 1));
    }

    #[test]
    fn which_states_are_retried() {
        for state in [
            TaskState::TaskFailed,
            TaskState::TaskLost,
            TaskState::TaskDropped,
            TaskState::TaskError,
            TaskState::TaskGone,
            TaskState::TaskGoneByOperator,
            TaskState::TaskUnknown,
            TaskState::TaskKilled,
        ] {
            let mut j = job(1, 1, None);
            let id = launch_all(&mut j).remove(0);
            assert!(j.on_update(&status(&id, state)).changed, "{state:?}");
            assert_eq!(j.progress().pending, 1, "{state:?} is retried");
        }
    }

    #[test]
    fn unreachable_waits_and_may_recover() {
        let mut j = job(1, 0, None);
        let id = launch_all(&mut j).remove(0);
        let out = j.on_update(&status(&id, TaskState::TaskUnreachable));
        assert!(out.changed && out.note.is_some());
        assert_eq!(
            j.on_update(&status(&id, TaskState::TaskUnreachable)),
            Outcome::default()
        );
        let p = j.progress();
        assert_eq!(
            (p.running, p.unreachable, p.pending, p.failed),
            (1, 1, 0, 0)
        );
        assert!(!j.wants_offers(), "not rerun while unreachable");
        // The agent returns and the task is running again.
        assert!(j.on_update(&status(&id, TaskState::TaskRunning)).changed);
        assert_eq!(j.progress().unreachable, 0);
        j.on_update(&status(&id, TaskState::TaskFinished));
        assert!(j.succeeded());
    }

    #[test]
    fn parallelism_limits_tasks_in_flight() {
        let mut j = job(5, 0, Some(2));
        let first = launch_all(&mut j);
        assert_eq!(first.len(), 2);
        assert!(!j.wants_offers());
        j.on_update(&status(&first[0], TaskState::TaskFinished));
        assert!(j.wants_offers());
        // Taken but not placed: back at the front, in order.
        let q = j.take_launchable();
        assert_eq!(q, [2]);
        j.requeue(q);
        assert_eq!(launch_all(&mut j)[0].as_str(), "j-2-0");
    }

    #[test]
    fn failed_launch_is_retried_without_counting_and_late_updates_still_count() {
        let mut j = job(1, 0, None);
        let id = launch_all(&mut j).remove(0);
        j.launch_failed(&id);
        let p = j.progress();
        assert_eq!((p.pending, p.failed, p.running), (1, 0, 0));
        let retry = launch_all(&mut j).remove(0);
        assert_eq!(retry.as_str(), "j-0-1");
        // The master launched the first attempt after all: it runs next to the retry
        // and is killed; its KILLED is then no failure.
        let out = j.on_update(&status(&id, TaskState::TaskRunning));
        assert_eq!(out.kill, vec![(id.clone(), Some("a1".into()))]);
        assert_eq!(
            j.on_update(&status(&id, TaskState::TaskKilled)),
            Outcome::default()
        );
        assert_eq!(j.progress().failed, 0);
        j.on_update(&status(&retry, TaskState::TaskFinished));
        assert!(j.succeeded());
    }

    #[test]
    fn an_older_attempt_finishing_completes_the_task_and_kills_the_rerun() {
        let mut j = job(1, 3, None);
        let first = launch_all(&mut j).remove(0);
        j.launch_failed(&first);
        let second = launch_all(&mut j).remove(0);
        let out = j.on_update(&status(&first, TaskState::TaskFinished));
        assert!(out.changed);
        assert_eq!(out.kill, vec![(second.clone(), None)]);
        assert!(j.succeeded());
        // The killed rerun reports KILLED: ignored, the task stays finished once.
        assert_eq!(
            j.on_update(&status(&second, TaskState::TaskKilled)),
            Outcome::default()
        );
        assert_eq!(j.progress().finished, 1);
    }

    #[test]
    fn unknown_and_stale_updates_are_ignored() {
        let mut j = job(1, 1, None);
        let first = launch_all(&mut j).remove(0);
        assert_eq!(
            j.on_update(&status(&"other-0-0".into(), TaskState::TaskFailed)),
            Outcome::default()
        );
        assert_eq!(j.on_update(&TaskStatus::default()), Outcome::default());
        j.on_update(&status(&first, TaskState::TaskFailed));
        let second = launch_all(&mut j).remove(0);
        // A late LOST for the first attempt must not fail the second.
        assert_eq!(
            j.on_update(&status(&first, TaskState::TaskLost)),
            Outcome::default()
        );
        assert_eq!(j.progress().failed, 1);
        assert_eq!(j.progress().running, 1);
        j.on_update(&status(&second, TaskState::TaskFinished));
        assert!(j.succeeded());
    }
}
