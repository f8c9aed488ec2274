//! The checkpoint log: one append-only file per agent (`meta/checkpoints.log`) that holds
//! every task checkpoint and status update stream, made durable a whole batch at a time.
//!
//! Why a log: the agent used to replace one small file per change (write, fsync, rename,
//! fsync the directory), about ten times per task, and each of those waits for the disk.
//! The agent loop now handles every event that is ready as one batch, [`stage`]s the
//! batch's records and [`commit`]s them with one `write` and one `fdatasync` before it
//! sends or launches anything that depends on them. The guarantees are unchanged (an
//! update is durable before it is sent, a task before it is launched, an acknowledgement
//! before the next update of its task goes out); only their cost is shared.
//!
//! Format: one record per line, `<crc32 of the JSON, 8 hex digits> <JSON>\n`, so the file
//! stays readable with `cut -d' ' -f2- | jq`. Every batch ends with a `commit` record.
//! A batch is only ever appended after the previous one was synced, so whatever a crash
//! can damage lies after the last `commit` record: replay applies the committed batches,
//! and cuts off the rest (nothing in it was acted upon). A damaged record *followed* by a
//! commit is corruption of synced data, and replay stops with an error instead of
//! guessing (guessing could launch a task twice or lose its exit status).
//!
//! The log is rewritten with only the live records ([`compact`]) when it has grown to
//! several times that size, and at every start.
//!
//! [`stage`]: Journal::stage
//! [`commit`]: Journal::commit
//! [`compact`]: Journal::compact

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use drover_proto::{pb, FrameworkId};
use serde::{Deserialize, Serialize};

use crate::fsutil::fsync_dir;
use crate::layout::TaskKey;
use crate::status_updates::checkpoint::StreamChange;
use crate::status_updates::StreamCheckpoint;

/// The log is compacted once it is this large and [`GROWTH`] times its last compacted
/// size: compaction costs O(live tasks) and happens after at least that much appending,
/// so its cost per record stays constant.
const COMPACT_MIN_BYTES: u64 = 4 << 20;
const GROWTH: u64 = 4;

/// Everything needed to report and relaunch-proof a task, checkpointed before its
/// container is started (a `task` record of the log).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskCheckpoint {
    pub framework_id: FrameworkId,
    pub framework_info: Option<pb::FrameworkInfo>,
    pub task: pb::TaskInfo,
}

/// One line of the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// A task as it was launched; written before its container is started.
    Task {
        key: TaskKey,
        task: Box<TaskCheckpoint>,
    },
    /// The task's status update stream as it is now (replaces the previous one).
    Updates {
        key: TaskKey,
        stream: StreamCheckpoint,
    },
    /// The task's terminal update was acknowledged: recovery forgets it.
    Completed { key: TaskKey },
    /// Ends a batch: the records since the previous commit were synced together.
    Commit { seq: u64 },
}

impl From<StreamChange> for Record {
    fn from(change: StreamChange) -> Self {
        match change {
            StreamChange::Updated { key, stream } => Record::Updates { key, stream },
            StreamChange::Completed { key } => Record::Completed { key },
        }
    }
}

/// What replay found for one task that is not completed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LiveTask {
    pub task: Option<TaskCheckpoint>,
    pub stream: Option<StreamCheckpoint>,
}

/// The open log. See the module docs.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    /// Bytes in the file (all committed).
    len: u64,
    /// Size of the file after the last compaction.
    compacted_len: u64,
    seq: u64,
    /// Encoded records of the current batch.
    staged: Vec<u8>,
    /// Directories that gained an entry in this batch; fsynced with it.
    dirs: BTreeSet<PathBuf>,
}

impl Journal {
    /// Opens the log at `path` (creating it, durably, if missing), replays it, and cuts
    /// off an uncommitted tail. Returns the live tasks by key.
    pub fn open(path: &Path) -> io::Result<(Journal, BTreeMap<TaskKey, LiveTask>)> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let replay = replay(&bytes).map_err(|msg| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is damaged: {msg}", path.display()),
            )
        })?;
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        if bytes.is_empty() {
            // A new log: its name must survive a crash like its content.
            fsync_dir(parent(path)?)?;
        }
        if replay.committed_len < bytes.len() as u64 {
            tracing::warn!(
                path = %path.display(),
                bytes = bytes.len() as u64 - replay.committed_len,
                "dropping the uncommitted tail of the checkpoint log (written before a crash, never acted upon)"
            );
            file.set_len(replay.committed_len)?;
            file.sync_all()?;
        }
        let journal = Journal {
            path: path.to_path_buf(),
            file,
            len: replay.committed_len,
            compacted_len: replay.committed_len,
            seq: replay.seq,
            staged: Vec::new(),
            dirs: BTreeSet::new(),
        };
        Ok((journal, replay.live))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Adds a record to the current batch. Nothing is written until [`Self::commit`].
    pub fn stage(&mut self, record: &Record) {
        encode(record, &mut self.staged);
    }

    /// Creates `dir` and its missing parents now; the parents that gained an entry are
    /// fsynced by the next [`Self::commit`], so the directory is durable by the time
    /// anything that relies on it is acted upon. Existing directories cost nothing.
    pub fn create_dir_all(&mut self, dir: &Path) -> io::Result<()> {
        if dir.is_dir() {
            return Ok(());
        }
        let parent = parent(dir)?;
        self.create_dir_all(parent)?;
        match fs::create_dir(dir) {
            Ok(()) => {
                self.dirs.insert(parent.to_path_buf());
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// True when nothing is waiting for [`Self::commit`].
    pub fn is_clean(&self) -> bool {
        self.staged.is_empty() && self.dirs.is_empty()
    }

    /// The batch's durability point: appends the staged records and a commit record with
    /// one write, `fdatasync`s the log, then fsyncs the directories the batch created.
    /// `Ok(true)` when it synced anything.
    ///
    /// The log goes first: on the usual journaling file systems its sync also commits the
    /// directory creations of the batch, so the directory fsyncs that follow find nothing
    /// left to do. A crash between the two may leave a task's meta directory missing
    /// behind a durable task record; recovery recreates it (nothing was launched yet).
    pub fn commit(&mut self) -> io::Result<bool> {
        if self.is_clean() {
            return Ok(false);
        }
        if !self.staged.is_empty() {
            self.seq += 1;
            let seq = self.seq;
            encode(&Record::Commit { seq }, &mut self.staged);
            self.file.write_all(&self.staged)?;
            self.file.sync_data()?;
            self.len += self.staged.len() as u64;
            self.staged.clear();
        }
        for dir in std::mem::take(&mut self.dirs) {
            fsync_dir(&dir)?;
        }
        Ok(true)
    }

    /// True when the log has grown enough that [`Self::compact`] is worth its cost.
    pub fn wants_compaction(&self) -> bool {
        self.len >= COMPACT_MIN_BYTES && self.len >= GROWTH * self.compacted_len.max(1)
    }

    /// Replaces the log with `live` (the records that describe every live task now) and
    /// one commit record: written to a temporary file, fsynced, renamed over the log, and
    /// the directory fsynced, so a crash leaves the old log or the new one. Must be called
    /// with nothing staged (right after a commit), so that `live` is what is durable.
    pub fn compact(&mut self, live: impl IntoIterator<Item = Record>) -> io::Result<()> {
        assert!(self.is_clean(), "compacting with a batch still staged");
        let mut bytes = Vec::new();
        for record in live {
            encode(&record, &mut bytes);
        }
        self.seq += 1;
        encode(&Record::Commit { seq: self.seq }, &mut bytes);
        crate::fsutil::write_atomic(&self.path, &bytes)?;
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.len = bytes.len() as u64;
        self.compacted_len = self.len;
        Ok(())
    }
}

fn parent(path: &Path) -> io::Result<&Path> {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} has no parent directory", path.display()),
            )
        })
}

fn encode(record: &Record, out: &mut Vec<u8>) {
    // Serializing these plain data types cannot fail; compact JSON has no raw newline.
    let json = serde_json::to_vec(record).expect("checkpoint records serialize");
    out.extend_from_slice(format!("{:08x} ", crc32(&json)).as_bytes());
    out.extend_from_slice(&json);
    out.push(b'\n');
}

/// One line decoded: `None` when it is damaged (torn or corrupt).
fn decode(line: &[u8]) -> Option<Result<Record, serde_json::Error>> {
    let (crc, json) = (line.get(..8)?, line.get(9..)?);
    if line[8] != b' ' {
        return None;
    }
    let crc = u32::from_str_radix(std::str::from_utf8(crc).ok()?, 16).ok()?;
    (crc32(json) == crc).then(|| serde_json::from_slice(json))
}

struct Replay {
    live: BTreeMap<TaskKey, LiveTask>,
    committed_len: u64,
    seq: u64,
}

fn replay(bytes: &[u8]) -> Result<Replay, String> {
    let mut live: BTreeMap<TaskKey, LiveTask> = BTreeMap::new();
    let mut batch: Vec<Record> = Vec::new();
    let mut committed_len = 0u64;
    let mut seq = 0u64;
    let mut offset = 0usize;
    let mut damaged_at = None;
    while offset < bytes.len() {
        let Some(end) = bytes[offset..].iter().position(|b| *b == b'\n') else {
            damaged_at = Some(offset);
            break;
        };
        let line = &bytes[offset..offset + end];
        let record = match decode(line) {
            None => {
                damaged_at = Some(offset);
                break;
            }
            // An intact line that does not parse was written by a newer agent, or by a
            // bug: refuse rather than skip something that may matter.
            Some(Err(e)) => return Err(format!("record at byte {offset}: {e}")),
            Some(Ok(r)) => r,
        };
        offset += end + 1;
        match record {
            Record::Commit { seq: s } => {
                for r in batch.drain(..) {
                    apply(&mut live, r);
                }
                seq = s;
                committed_len = offset as u64;
            }
            r => batch.push(r),
        }
    }
    if let Some(at) = damaged_at {
        // Only an uncommitted tail may be damaged; a later commit means synced data is.
        let rest = &bytes[at..];
        let later_commit = rest
            .split(|b| *b == b'\n')
            .filter_map(decode)
            .any(|r| matches!(r, Ok(Record::Commit { .. })));
        if later_commit {
            return Err(format!(
                "damaged record at byte {at} before a committed batch"
            ));
        }
    }
    Ok(Replay {
        live,
        committed_len,
        seq,
    })
}

fn apply(live: &mut BTreeMap<TaskKey, LiveTask>, record: Record) {
    match record {
        Record::Task { key, task } => live.entry(key).or_default().task = Some(*task),
        Record::Updates { key, stream } => live.entry(key).or_default().stream = Some(stream),
        Record::Completed { key } => {
            live.remove(&key);
        }
        Record::Commit { .. } => {}
    }
}

/// CRC-32 (IEEE), small and dependency-free: it only guards a few KiB per batch.
fn crc32(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut crc = !0u32;
    for b in bytes {
        crc = TABLE[((crc ^ u32::from(*b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_proto::pb;

    fn task(key: &TaskKey) -> Record {
        Record::Task {
            key: key.clone(),
            task: Box::new(TaskCheckpoint {
                framework_id: key.framework_id.clone(),
                framework_info: None,
                task: pb::TaskInfo {
                    name: key.task_id.to_string(),
                    ..Default::default()
                },
            }),
        }
    }

    fn updates(key: &TaskKey, state: i32) -> Record {
        Record::Updates {
            key: key.clone(),
            stream: StreamCheckpoint {
                latest_state: state,
                ..Default::default()
            },
        }
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn replays_committed_batches_and_drops_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoints.log");
        let (a, b) = (TaskKey::new("fw", "a"), TaskKey::new("fw", "b"));
        {
            let (mut j, live) = Journal::open(&path).unwrap();
            assert!(live.is_empty());
            assert!(!j.commit().unwrap(), "nothing staged, nothing synced");
            j.stage(&task(&a));
            j.stage(&updates(&a, 1));
            j.stage(&task(&b));
            assert!(j.commit().unwrap());
            j.stage(&updates(&a, 2));
            j.stage(&Record::Completed { key: b.clone() });
            assert!(j.commit().unwrap());
        }
        let good = fs::read(&path).unwrap();
        // A crash in the middle of a batch: its records but no commit, then a torn line.
        let mut torn = good.clone();
        encode(&Record::Completed { key: a.clone() }, &mut torn);
        torn.extend_from_slice(b"0badc0de {\"kind\":\"ta");
        fs::write(&path, &torn).unwrap();

        let (mut j, live) = Journal::open(&path).unwrap();
        assert_eq!(
            fs::read(&path).unwrap(),
            good,
            "the uncommitted tail is cut off"
        );
        assert_eq!(live.len(), 1);
        let a_live = &live[&a];
        assert!(a_live.task.is_some());
        assert_eq!(a_live.stream.as_ref().unwrap().latest_state, 2);

        // Appending goes on after the committed part, and compaction keeps only `live`.
        j.stage(&updates(&a, 3));
        j.commit().unwrap();
        j.compact([task(&a), updates(&a, 3)]).unwrap();
        drop(j);
        let (_, again) = Journal::open(&path).unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[&a].stream.as_ref().unwrap().latest_state, 3);
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
    }

    #[test]
    fn damage_before_a_commit_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoints.log");
        let key = TaskKey::new("fw", "a");
        {
            let (mut j, _) = Journal::open(&path).unwrap();
            j.stage(&task(&key));
            j.commit().unwrap();
            j.stage(&updates(&key, 1));
            j.commit().unwrap();
        }
        let mut bytes = fs::read(&path).unwrap();
        bytes[12] ^= 0x20; // inside the first, committed record
        fs::write(&path, &bytes).unwrap();
        let err = Journal::open(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("damaged"), "{err}");

        // An intact line this agent cannot parse (a newer agent's) is refused too.
        let mut bytes = Vec::new();
        let json = br#"{"kind":"from_the_future"}"#;
        bytes.extend_from_slice(format!("{:08x} ", crc32(json)).as_bytes());
        bytes.extend_from_slice(json);
        bytes.push(b'\n');
        fs::write(&path, &bytes).unwrap();
        assert!(Journal::open(&path).is_err());
    }

    #[test]
    fn created_directories_are_synced_with_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(&dir.path().join("checkpoints.log")).unwrap();
        let deep = dir.path().join("x/y/z");
        j.create_dir_all(&deep).unwrap();
        assert!(deep.is_dir());
        assert!(!j.is_clean());
        assert_eq!(j.dirs.len(), 3, "{:?}", j.dirs);
        assert!(j.commit().unwrap());
        assert!(j.is_clean());
        j.create_dir_all(&deep).unwrap();
        assert!(j.is_clean(), "an existing directory needs no sync");
    }

    /// A status update stream checkpointed through the log comes back exactly: what a
    /// restarted agent restores is what was left unacknowledged.
    #[test]
    fn status_update_streams_round_trip() {
        use crate::status_updates::checkpoint::StatusUpdates;
        use crate::status_updates::{Ack, RetryPolicy, StatusUpdate};
        use drover_proto::pb::TaskState;
        use std::time::Instant;

        fn update(state: TaskState, n: u8) -> StatusUpdate {
            StatusUpdate {
                framework_id: FrameworkId::new("fw"),
                status: pb::TaskStatus {
                    task_id: Some(drover_proto::TaskId::new("t")),
                    state: state as i32,
                    uuid: vec![n; 16],
                    exit_code: (state == TaskState::TaskFailed).then_some(3),
                    ..Default::default()
                },
            }
        }
        fn commit(su: &mut StatusUpdates, journal: &mut Journal) {
            for change in su.take_checkpoints() {
                journal.stage(&change.into());
            }
            journal.commit().unwrap();
        }

        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("checkpoints.log");
        let (mut journal, _) = Journal::open(&log).unwrap();
        let key = TaskKey::new("fw", "t");

        let mut su = StatusUpdates::new(RetryPolicy::default());
        su.enqueue(&key, update(TaskState::TaskRunning, 1));
        su.enqueue(&key, update(TaskState::TaskFailed, 2));
        commit(&mut su, &mut journal);
        su.due(Instant::now());
        su.acknowledge(&key, &[1; 16]);
        assert!(su.is_dirty());
        commit(&mut su, &mut journal);

        // A new agent restores exactly the remaining queue.
        drop(journal);
        let (mut journal, live) = Journal::open(&log).unwrap();
        let cp = live[&key].stream.clone().unwrap();
        assert_eq!(cp.pending.len(), 1);
        assert_eq!(cp.latest_state, TaskState::TaskFailed as i32);
        assert_eq!(cp.latest_exit_code, Some(3));
        let mut again = StatusUpdates::new(RetryPolicy::default());
        again.restore(key.clone(), cp);
        let sent = again.due(Instant::now());
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].1.status.uuid, vec![2; 16]);
        assert_eq!(
            again.acknowledge(&key, &[2; 16]),
            Ack::Accepted { completed: true }
        );
        commit(&mut again, &mut journal);
        drop(journal);
        assert!(Journal::open(&log).unwrap().1.is_empty());
    }
}
