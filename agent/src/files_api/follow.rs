//! `FollowFile`: a sandbox file streamed as it grows.
//!
//! Nothing is held open between reads: every read goes through [`super::read_file`],
//! which opens the sandbox and walks the path component by component again. A task
//! that swaps a symlink in between two reads therefore meets the same refusal as a
//! single `ReadFile` would. Rotations by the agent (see [`super::rotation`]) are known from
//! [`Rotations`]: the rest of the old file is read from its rotated copy, by name and just
//! as safely, before the fresh file is followed from its start.
//!
//! When a read finds nothing new, the follower asks whether the task is still active.
//! Once it is not, one more read drains what the task wrote last and the stream ends;
//! otherwise it waits one poll interval and reads again.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use drover_proto::pb;
use tokio::sync::mpsc;
use tonic::Status;

use super::rotation::{Rotation, Rotations};
use super::{read_file, MAX_READ_LENGTH};
use crate::error::AgentError;
use crate::layout::{Layout, TaskKey};

/// How often a follower that has caught up looks for new bytes.
pub const FOLLOW_POLL: Duration = Duration::from_millis(250);

/// Whether a task may still write to its sandbox.
#[async_trait]
pub trait TaskLiveness: Send + Sync + 'static {
    /// True while the task has not ended. An unknown task has ended.
    /// `key` may be a custom executor's ([`TaskKey::executor`]): true while it runs.
    async fn is_active(&self, key: &TaskKey) -> bool;
}

/// What to follow, and from where.
#[derive(Clone, Debug)]
pub struct FollowRequest {
    /// Whose sandbox: a task's or a custom executor's.
    pub key: TaskKey,
    pub path: String,
    pub offset: u64,
    /// Non-zero: start this many bytes before the end instead of at `offset`.
    pub tail_bytes: u64,
}

impl FollowRequest {
    pub fn from_proto(r: pb::FollowFileRequest) -> Result<Self, AgentError> {
        Ok(FollowRequest {
            key: super::sandbox_key(r.framework_id, r.task_id, r.executor_id)?,
            path: r.path,
            offset: r.offset,
            tail_bytes: r.tail_bytes,
        })
    }
}

async fn read_at(
    layout: &Layout,
    req: &FollowRequest,
    path: &str,
    offset: u64,
    length: u64,
) -> Result<pb::ReadFileResponse, AgentError> {
    let (layout, req, path) = (layout.clone(), req.clone(), path.to_string());
    tokio::task::spawn_blocking(move || read_file(&layout, &req.key, &path, offset, length))
        .await
        .map_err(|e| AgentError::io("reading the file", std::io::Error::other(e.to_string())))?
}

/// Sends `r` as a chunk; false when the client has gone away.
async fn send(
    out: &mpsc::Sender<Result<pb::FollowFileResponse, Status>>,
    data: Vec<u8>,
    offset: u64,
    size: u64,
    truncated: bool,
) -> bool {
    let chunk = pb::FollowFileResponse {
        data,
        offset,
        size,
        truncated,
    };
    out.send(Ok(chunk)).await.is_ok()
}

/// After a rotation the follower had not seen yet: what it had not sent of the old file
/// is in the rotated copy (`<path>.1`, bytes `kept_from..old_size` of the old file), as
/// far as the rotation kept it. Sends that part, in the old file's offsets. False when
/// the client has gone away.
async fn send_rotated_rest(
    layout: &Layout,
    req: &FollowRequest,
    name: &str,
    rotation: Rotation,
    offset: u64,
    out: &mpsc::Sender<Result<pb::FollowFileResponse, Status>>,
) -> bool {
    let copy = format!("{name}.1");
    let mut at = offset.max(rotation.kept_from);
    while at < rotation.old_size {
        let want = (rotation.old_size - at).min(MAX_READ_LENGTH);
        // A copy already rotated further (or removed by the task) just ends the rest.
        let Ok(r) = read_at(layout, req, &copy, at - rotation.kept_from, want).await else {
            return true;
        };
        if r.data.is_empty() {
            return true;
        }
        let n = r.data.len() as u64;
        if !send(out, r.data, at, rotation.old_size, false).await {
            return false;
        }
        at += n;
    }
    true
}

/// Streams `req` into `out` until the task has ended and everything was sent, the
/// receiver goes away (the client cancelled), or a read fails (sent as the last item).
/// `poll` is the wait between reads that found nothing new.
///
/// Rotations by the agent (see [`Rotations`]) are followed without a gap: the rest of the
/// old file comes from its rotated copy, then a `truncated` note, then the new file from
/// its start. A read that raced a rotation is thrown away and done again. A file that
/// shrinks for another reason (the task truncated it) gets the note and is followed from
/// its start.
pub async fn follow(
    layout: Layout,
    req: FollowRequest,
    liveness: Arc<dyn TaskLiveness>,
    rotations: Arc<Rotations>,
    out: mpsc::Sender<Result<pb::FollowFileResponse, Status>>,
    poll: Duration,
) {
    let key = req.key.clone();
    // Rotations are recorded under the plain name ("stdout"), whatever way it was written.
    let name = super::split_path(&req.path)
        .map(|c| c.join("/"))
        .unwrap_or_default();
    let settle = poll.min(Duration::from_millis(10));
    let mut seen = rotations.state(&key, &name);
    let mut offset = req.offset;
    let mut ended = false;
    let mut started = req.tail_bytes == 0;
    loop {
        let now = rotations.state(&key, &name);
        if now.generation % 2 == 1 {
            // A rotation is under way: read once it is done.
            tokio::time::sleep(settle).await;
            continue;
        }
        if now.generation < seen.generation {
            // The task ended and its rotations were forgotten: no more will come.
            seen = now;
        } else if now.generation > seen.generation {
            let just_one = now.generation == seen.generation + 2;
            if let (true, true, Some(rotation)) = (started, just_one, now.last) {
                if !send_rotated_rest(&layout, &req, &name, rotation, offset, &out).await {
                    return;
                }
            }
            seen = now;
            if started {
                offset = 0;
                if !send(&out, Vec::new(), 0, 0, true).await {
                    return;
                }
            }
            continue;
        }
        if !started {
            match read_at(&layout, &req, &req.path, 0, 1).await {
                Ok(r) => offset = r.size.saturating_sub(req.tail_bytes),
                Err(e) => {
                    let _ = out.send(Err(e.to_status())).await;
                    return;
                }
            }
            started = rotations.state(&key, &name) == seen;
            continue;
        }
        let r = match read_at(&layout, &req, &req.path, offset, MAX_READ_LENGTH).await {
            Ok(r) => r,
            Err(e) => {
                let _ = out.send(Err(e.to_status())).await;
                return;
            }
        };
        if rotations.state(&key, &name) != seen {
            continue;
        }
        if r.size < offset {
            // Truncated by someone else than the agent: what is in the file now was
            // written after that, from its start.
            offset = 0;
            if !send(&out, Vec::new(), 0, r.size, true).await {
                return;
            }
            continue;
        }
        if !r.data.is_empty() {
            offset = r.offset + r.data.len() as u64;
            if !send(&out, r.data, r.offset, r.size, false).await {
                return;
            }
            continue;
        }
        if ended {
            return;
        }
        if !liveness.is_active(&req.key).await {
            // Drain once more: the task may have written between the read and now.
            ended = true;
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = out.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::TaskKey;
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};

    struct Flag(AtomicBool);

    #[async_trait]
    impl TaskLiveness for Flag {
        async fn is_active(&self, _: &TaskKey) -> bool {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn request(path: &str, offset: u64, tail_bytes: u64) -> FollowRequest {
        FollowRequest {
            key: TaskKey::new("fw", "t"),
            path: path.into(),
            offset,
            tail_bytes,
        }
    }

    async fn next_data(
        rx: &mut mpsc::Receiver<Result<pb::FollowFileResponse, Status>>,
    ) -> pb::FollowFileResponse {
        tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("no chunk within a minute")
            .expect("the stream ended")
            .expect("a chunk, not an error")
    }

    #[tokio::test]
    async fn follows_growth_then_ends_after_the_task() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let sb = layout.sandbox(&TaskKey::new("fw", "t"));
        std::fs::create_dir_all(&sb).unwrap();
        let mut file = std::fs::File::create(sb.join("stdout")).unwrap();
        file.write_all(b"one\n").unwrap();
        let alive = Arc::new(Flag(AtomicBool::new(true)));
        let (tx, mut rx) = mpsc::channel(4);
        let task = tokio::spawn(follow(
            layout.clone(),
            request("stdout", 0, 0),
            alive.clone(),
            Arc::default(),
            tx,
            Duration::from_millis(5),
        ));
        let c = next_data(&mut rx).await;
        assert_eq!((c.data.as_slice(), c.offset), (&b"one\n"[..], 0));
        file.write_all(b"two\n").unwrap();
        let c = next_data(&mut rx).await;
        assert_eq!((c.data.as_slice(), c.offset), (&b"two\n"[..], 4));

        // Truncated (rotation): following restarts at 0 and says so.
        file.set_len(0).unwrap();
        // The handle's position stays past the end; append like O_APPEND writers do.
        drop(file);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(sb.join("stdout"))
            .unwrap();
        let note = next_data(&mut rx).await;
        assert!(note.truncated && note.data.is_empty(), "{note:?}");
        file.write_all(b"three\n").unwrap();
        let c = next_data(&mut rx).await;
        assert_eq!((c.data.as_slice(), c.offset), (&b"three\n"[..], 0));

        // The task writes its last words and ends: they arrive, then the stream ends.
        file.write_all(b"last\n").unwrap();
        alive.0.store(false, Ordering::SeqCst);
        let c = next_data(&mut rx).await;
        assert_eq!(c.data, b"last\n");
        assert!(rx.recv().await.is_none(), "the stream ends with the task");
        task.await.unwrap();
    }

    #[tokio::test]
    async fn tail_bytes_errors_and_cancellation() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let sb = layout.sandbox(&TaskKey::new("fw", "t"));
        std::fs::create_dir_all(&sb).unwrap();
        std::fs::write(sb.join("stdout"), b"0123456789").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", sb.join("link")).unwrap();
        let done = Arc::new(Flag(AtomicBool::new(false)));

        let (tx, mut rx) = mpsc::channel(4);
        follow(
            layout.clone(),
            request("stdout", 0, 3),
            done.clone(),
            Arc::default(),
            tx,
            Duration::from_millis(5),
        )
        .await;
        let c = next_data(&mut rx).await;
        assert_eq!((c.data.as_slice(), c.offset), (&b"789"[..], 7));
        assert!(rx.recv().await.is_none());

        for (path, code) in [
            ("link", tonic::Code::PermissionDenied),
            ("../t/stdout", tonic::Code::InvalidArgument),
            ("missing", tonic::Code::NotFound),
        ] {
            let (tx, mut rx) = mpsc::channel(4);
            follow(
                layout.clone(),
                request(path, 0, 0),
                done.clone(),
                Arc::default(),
                tx,
                Duration::from_millis(5),
            )
            .await;
            let err = rx.recv().await.unwrap().unwrap_err();
            assert_eq!(err.code(), code, "{path}: {err:?}");
            assert!(rx.recv().await.is_none());
        }

        // A client that goes away ends a follower of a task that never ends.
        let alive = Arc::new(Flag(AtomicBool::new(true)));
        let (tx, mut rx) = mpsc::channel(4);
        let task = tokio::spawn(follow(
            layout.clone(),
            request("stdout", 0, 0),
            alive,
            Arc::default(),
            tx,
            Duration::from_secs(3600),
        ));
        next_data(&mut rx).await;
        drop(rx);
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the follower stops when its client goes away")
            .unwrap();
    }

    /// Appends to `stdout` and rotates it (as the disk watcher would) the first time the
    /// follower finds nothing new: the follower has then not seen the appended bytes,
    /// which only the rotated copy still holds.
    struct RotateOnFirstIdle {
        sandbox: std::path::PathBuf,
        rotations: Arc<Rotations>,
        done: AtomicBool,
        ended: AtomicBool,
    }

    #[async_trait]
    impl TaskLiveness for RotateOnFirstIdle {
        async fn is_active(&self, _: &TaskKey) -> bool {
            if !self.done.swap(true, Ordering::SeqCst) {
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(self.sandbox.join("stdout"))
                    .unwrap();
                f.write_all(&[b'b'; 50]).unwrap();
                let dir = crate::files_api::rotation::open_dir(&self.sandbox).unwrap();
                let key = TaskKey::new("fw", "t");
                assert!(crate::files_api::rotation::rotate(
                    &dir,
                    "stdout",
                    120,
                    2,
                    Some((&self.rotations, &key))
                )
                .unwrap());
                f.write_all(b"new\n").unwrap();
            }
            !self.ended.load(Ordering::SeqCst)
        }
    }

    #[tokio::test]
    async fn follows_across_a_rotation_without_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let sandbox = layout.sandbox(&TaskKey::new("fw", "t"));
        std::fs::create_dir_all(&sandbox).unwrap();
        std::fs::write(sandbox.join("stdout"), [b'a'; 150]).unwrap();
        let rotations = Arc::new(Rotations::default());
        let liveness = Arc::new(RotateOnFirstIdle {
            sandbox: sandbox.clone(),
            rotations: rotations.clone(),
            done: AtomicBool::new(false),
            ended: AtomicBool::new(false),
        });
        let (tx, mut rx) = mpsc::channel(16);
        let task = tokio::spawn(follow(
            layout.clone(),
            request("stdout", 0, 0),
            liveness.clone(),
            rotations,
            tx,
            Duration::from_millis(5),
        ));
        let mut got = Vec::new();
        let mut notes = 0;
        while !got.ends_with(b"new\n") {
            let c = next_data(&mut rx).await;
            notes += usize::from(c.truncated);
            got.extend_from_slice(&c.data);
        }
        // Everything once, in order: the 50 bytes appended just before the rotation came
        // from the rotated copy (which kept the newest 120 of the 200).
        let mut expected = vec![b'a'; 150];
        expected.extend_from_slice(&[b'b'; 50]);
        expected.extend_from_slice(b"new\n");
        assert_eq!(got, expected);
        assert_eq!(notes, 1);
        liveness.ended.store(true, Ordering::SeqCst);
        assert!(rx.recv().await.is_none());
        task.await.unwrap();
    }
}
