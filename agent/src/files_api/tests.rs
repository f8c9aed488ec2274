use super::*;
use std::fs;
use std::os::unix::fs::symlink;
use std::time::Duration;

use crate::layout::TaskKey;
use drover_proto::{ExecutorId, FrameworkId, TaskId};

struct Fixture {
    _dir: tempfile::TempDir,
    layout: Layout,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::new(dir.path());
    let sb = layout.sandbox(&TaskKey::new("fw", "t"));
    fs::create_dir_all(sb.join("sub/deeper")).unwrap();
    fs::write(sb.join("stdout"), b"hello world\n").unwrap();
    fs::write(sb.join("sub/deeper/file.txt"), b"deep").unwrap();
    // Escape attempts planted by a hostile task.
    symlink("/etc", sb.join("etc_link")).unwrap();
    symlink("/etc/passwd", sb.join("passwd_link")).unwrap();
    symlink("/etc", sb.join("sub/inner_link")).unwrap();
    symlink("../../..", sb.join("up_link")).unwrap();
    Fixture { _dir: dir, layout }
}

fn read(f: &Fixture, path: &str) -> Result<pb::ReadFileResponse, AgentError> {
    read_file(&f.layout, &TaskKey::new("fw", "t"), path, 0, 0)
}

#[test]
fn reads_a_file_with_offset_and_length() {
    let f = fixture();
    let r = read(&f, "stdout").unwrap();
    assert_eq!(r.data, b"hello world\n");
    assert_eq!(r.size, 12);
    let r = read_file(&f.layout, &TaskKey::new("fw", "t"), "stdout", 6, 5).unwrap();
    assert_eq!(
        (r.data.as_slice(), r.offset, r.size),
        (&b"world"[..], 6, 12)
    );
    let r = read_file(&f.layout, &TaskKey::new("fw", "t"), "stdout", 100, 5).unwrap();
    assert!(r.data.is_empty());
    let r = read(&f, "sub/deeper/file.txt").unwrap();
    assert_eq!(r.data, b"deep");
    let r = read(&f, "./sub/./deeper/file.txt").unwrap();
    assert_eq!(r.data, b"deep");
}

#[test]
fn length_is_capped_at_one_mebibyte() {
    let f = fixture();
    let sb = f.layout.sandbox(&TaskKey::new("fw", "t"));
    fs::write(sb.join("big"), vec![7u8; 3 << 20]).unwrap();
    let r = read_file(&f.layout, &TaskKey::new("fw", "t"), "big", 0, 10 << 20).unwrap();
    assert_eq!(r.data.len() as u64, MAX_READ_LENGTH);
    assert_eq!(r.size, 3 << 20);
}

#[test]
fn refuses_absolute_paths() {
    let f = fixture();
    let e = read(&f, "/etc/passwd").unwrap_err();
    assert!(matches!(e, AgentError::InvalidPath(_)), "{e:?}");
    assert_eq!(e.to_status().code(), tonic::Code::InvalidArgument);
    assert!(e.to_string().contains("absolute"), "{e}");
}

#[test]
fn refuses_dot_dot_anywhere() {
    let f = fixture();
    for p in [
        "..",
        "../t/stdout",
        "sub/../stdout",
        "sub/..",
        "../../../../etc/passwd",
    ] {
        let e = read(&f, p).unwrap_err();
        assert!(matches!(e, AgentError::InvalidPath(_)), "{p}: {e:?}");
        assert!(e.to_string().contains(".."), "{p}: {e}");
    }
}

#[test]
fn refuses_empty_components() {
    let f = fixture();
    for p in ["sub//deeper/file.txt", "sub/", "stdout/"] {
        let e = read(&f, p).unwrap_err();
        assert!(matches!(e, AgentError::InvalidPath(_)), "{p}: {e:?}");
    }
    assert!(matches!(read(&f, ""), Err(AgentError::InvalidPath(_))));
    assert!(matches!(read(&f, "a\0b"), Err(AgentError::InvalidPath(_))));
}

#[test]
fn refuses_a_symlink_as_the_file() {
    let f = fixture();
    let e = read(&f, "passwd_link").unwrap_err();
    assert!(matches!(e, AgentError::Symlink(_)), "{e:?}");
    assert_eq!(e.to_status().code(), tonic::Code::PermissionDenied);
}

#[test]
fn refuses_a_symlink_to_etc_as_a_directory() {
    let f = fixture();
    for p in ["etc_link/passwd", "up_link/t/stdout"] {
        let e = read(&f, p).unwrap_err();
        assert!(matches!(e, AgentError::Symlink(_)), "{p}: {e:?}");
    }
    let e = list_files(&f.layout, &TaskKey::new("fw", "t"), "etc_link").unwrap_err();
    assert!(matches!(e, AgentError::Symlink(_)), "{e:?}");
}

#[test]
fn refuses_a_symlink_in_an_intermediate_component() {
    let f = fixture();
    let e = read(&f, "sub/inner_link/passwd").unwrap_err();
    assert!(matches!(e, AgentError::Symlink(_)), "{e:?}");
    assert!(e.to_string().contains("sub/inner_link"), "{e}");
    let e = list_files(&f.layout, &TaskKey::new("fw", "t"), "sub/inner_link").unwrap_err();
    assert!(matches!(e, AgentError::Symlink(_)), "{e:?}");
}

#[test]
fn a_swapped_in_sandbox_directory_symlink_is_refused_too() {
    // The task cannot replace its own sandbox dir, but the check does not rely on that.
    let f = fixture();
    let fw_dir = f.layout.sandboxes_root().join("fw");
    symlink("/etc", fw_dir.join("evil")).unwrap();
    let e = read_file(&f.layout, &TaskKey::new("fw", "evil"), "passwd", 0, 0).unwrap_err();
    assert!(matches!(e, AgentError::Symlink(_)), "{e:?}");
}

#[test]
fn a_request_names_a_task_or_a_custom_executor_and_reads_only_that_sandbox() {
    let f = fixture();
    let fw = || Some(FrameworkId::new("fw"));
    let ekey = TaskKey::executor(&FrameworkId::new("fw"), &ExecutorId::new("ex-1"));
    let esb = f.layout.sandbox(&ekey);
    fs::create_dir_all(esb.join("tasks/t1")).unwrap();
    fs::write(esb.join("tasks/t1/stdout"), b"from t1\n").unwrap();

    let key = sandbox_key(fw(), None, Some(ExecutorId::new("ex-1"))).unwrap();
    assert_eq!(key, ekey);
    let r = read_file(&f.layout, &key, "tasks/t1/stdout", 0, 0).unwrap();
    assert_eq!(r.data, b"from t1\n");
    let key = sandbox_key(fw(), Some(TaskId::new("t")), None).unwrap();
    assert_eq!(
        read_file(&f.layout, &key, "stdout", 0, 0).unwrap().data,
        b"hello world\n"
    );
    // An empty executor id is no executor id.
    let key = sandbox_key(fw(), Some(TaskId::new("t")), Some(ExecutorId::new(""))).unwrap();
    assert_eq!(key, TaskKey::new("fw", "t"));

    let refused = |r: Result<TaskKey, AgentError>| {
        let e = r.unwrap_err();
        assert_eq!(e.to_status().code(), tonic::Code::InvalidArgument, "{e}");
        e.to_string()
    };
    let e = refused(sandbox_key(
        fw(),
        Some(TaskId::new("t")),
        Some(ExecutorId::new("ex-1")),
    ));
    assert!(e.contains("not both"), "{e}");
    // The executor form of a key cannot be reached by spelling it as a task id.
    refused(sandbox_key(fw(), Some(TaskId::new("executor+ex-1")), None));
    refused(sandbox_key(fw(), None, Some(ExecutorId::new("../t"))));
    refused(sandbox_key(fw(), None, None));
    refused(sandbox_key(None, Some(TaskId::new("t")), None));

    let key = sandbox_key(fw(), None, Some(ExecutorId::new("ex-2"))).unwrap();
    let e = read_file(&f.layout, &key, "stdout", 0, 0).unwrap_err();
    assert_eq!(e.to_status().code(), tonic::Code::NotFound);
    assert!(e.to_string().contains("executor 'ex-2'"), "{e}");
}

#[test]
fn unknown_tasks_and_files() {
    let f = fixture();
    let e = read_file(&f.layout, &TaskKey::new("fw", "nope"), "stdout", 0, 0).unwrap_err();
    assert_eq!(e.to_status().code(), tonic::Code::NotFound);
    let e = read_file(&f.layout, &TaskKey::new("nope", "t"), "stdout", 0, 0).unwrap_err();
    assert_eq!(e.to_status().code(), tonic::Code::NotFound);
    let e = read_file(&f.layout, &TaskKey::new("fw", "../fw"), "stdout", 0, 0).unwrap_err();
    assert_eq!(e.to_status().code(), tonic::Code::InvalidArgument);
    let e = read(&f, "missing").unwrap_err();
    assert_eq!(e.to_status().code(), tonic::Code::NotFound);
    let e = read(&f, "stdout/x").unwrap_err();
    assert_eq!(e.to_status().code(), tonic::Code::InvalidArgument);
}

#[test]
fn refuses_directories_fifos_and_devices_without_opening_them() {
    let f = fixture();
    let sb = f.layout.sandbox(&TaskKey::new("fw", "t"));
    let e = read(&f, "sub").unwrap_err();
    assert!(matches!(e, AgentError::WrongFileType(_)), "{e:?}");
    let fifo = CString::new(sb.join("fifo").as_os_str().as_bytes()).unwrap();
    // SAFETY: valid path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let e = read(&f, "fifo").unwrap_err();
    assert!(matches!(e, AgentError::WrongFileType(_)), "{e:?}");
    // A device node is refused without being opened: major 240 is reserved for local use
    // and has no driver here, so opening it would fail with ENXIO instead.
    let dev = CString::new(sb.join("dev").as_os_str().as_bytes()).unwrap();
    // SAFETY: valid path.
    if unsafe { libc::mknod(dev.as_ptr(), libc::S_IFCHR | 0o644, libc::makedev(240, 0)) } != 0 {
        eprintln!("skipping the device-node case: mknod needs CAP_MKNOD (run as root)");
        return;
    }
    let e = read(&f, "dev").unwrap_err();
    assert!(matches!(e, AgentError::WrongFileType(_)), "{e:?}");
}

#[test]
fn lists_directories_without_following_symlinks() {
    let f = fixture();
    let r = list_files(&f.layout, &TaskKey::new("fw", "t"), "").unwrap();
    let names: Vec<_> = r.entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        names,
        ["etc_link", "passwd_link", "stdout", "sub", "up_link"]
    );
    let stdout = r.entries.iter().find(|e| e.path == "stdout").unwrap();
    assert_eq!((stdout.size, stdout.is_dir), (12, false));
    let link = r.entries.iter().find(|e| e.path == "etc_link").unwrap();
    assert!(
        !link.is_dir,
        "a symlink to a directory is not listed as one"
    );

    let r = list_files(&f.layout, &TaskKey::new("fw", "t"), "sub").unwrap();
    let names: Vec<_> = r.entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(names, ["sub/deeper", "sub/inner_link"]);
    assert!(r.entries[0].is_dir);

    let r = list_files(&f.layout, &TaskKey::new("fw", "t"), "stdout").unwrap();
    assert_eq!(r.entries.len(), 1);
    assert_eq!(r.entries[0].path, "stdout");

    assert!(matches!(
        list_files(&f.layout, &TaskKey::new("fw", "t"), "/"),
        Err(AgentError::InvalidPath(_))
    ));
    assert!(matches!(
        list_files(&f.layout, &TaskKey::new("fw", "t"), ".."),
        Err(AgentError::InvalidPath(_))
    ));
}

/// What the task in the swap tests runs (in its sandbox, until a file `stop` appears):
/// `f` alternates between a file of its own ("inside") and a symlink to `outside/secret`,
/// `d` between a directory of its own (holding `secret`, "inside") and a symlink to
/// `outside`.
pub(crate) fn swap_script(outside: &std::path::Path) -> String {
    format!(
        "mkdir -p mine && echo inside > mine/secret\n\
         while [ ! -e stop ]; do\n\
           echo inside > f.new && mv -f f.new f\n\
           ln -sfn '{out}/secret' f.tmp && mv -Tf f.tmp f\n\
           mv -T mine d\n\
           mv -T d mine && ln -sfn '{out}' d.tmp && mv -Tf d.tmp d\n\
           rm -f d\n\
         done\n",
        out = outside.display()
    )
}

/// Reads `f` and `d/secret`, lists the sandbox and `d`, and follows `f` through the API
/// of task `fw`/`task` (whose sandbox runs [`swap_script`]) until both sides of each swap
/// were met, at least 1,000 rounds: no answer may carry `TOPSECRET` (what the outside
/// files hold) or name `outside-only-name`.
pub(crate) async fn hammer_swaps(
    client: &mut drover_proto::pb::agent_api_client::AgentApiClient<tonic::transport::Channel>,
    fw: &str,
    task: &str,
) {
    let ids = || {
        (
            Some(drover_proto::FrameworkId::new(fw)),
            Some(drover_proto::TaskId::new(task)),
        )
    };
    let leaked = |bytes: &[u8]| String::from_utf8_lossy(bytes).contains("TOPSECRET");

    // Counted, not timed: go on until both sides of each swap were met (a test that
    // never saw a symlink or never saw the real file would prove nothing).
    let (mut read_inside, mut read_refused, mut dir_inside, mut dir_refused) = (0, 0, 0, 0);
    let mut rounds = 0;
    while rounds < 1000
        || read_inside == 0
        || read_refused == 0
        || dir_inside == 0
        || dir_refused == 0
    {
        rounds += 1;
        assert!(rounds < 200_000, "the swaps were never observed both ways");
        for path in ["f", "d/secret"] {
            let (framework_id, task_id) = ids();
            match client
                .read_file(pb::ReadFileRequest {
                    executor_id: None,
                    framework_id,
                    task_id,
                    path: path.into(),
                    offset: 0,
                    length: 0,
                })
                .await
            {
                Ok(r) => {
                    let r = r.into_inner();
                    assert!(!leaked(&r.data), "{path} leaked: {r:?}");
                    if r.data.starts_with(b"inside") {
                        match path {
                            "f" => read_inside += 1,
                            _ => dir_inside += 1,
                        }
                    }
                }
                Err(s) => {
                    assert!(!leaked(s.message().as_bytes()), "{s:?}");
                    if s.code() == tonic::Code::PermissionDenied {
                        match path {
                            "f" => read_refused += 1,
                            _ => dir_refused += 1,
                        }
                    }
                }
            }
        }
        for path in ["", "d"] {
            let (framework_id, task_id) = ids();
            if let Ok(r) = client
                .list_files(pb::ListFilesRequest {
                    executor_id: None,
                    framework_id,
                    task_id,
                    path: path.into(),
                })
                .await
            {
                let r = r.into_inner();
                assert!(
                    !r.entries
                        .iter()
                        .any(|e| e.path.contains("outside-only-name")),
                    "listing '{path}' shows the outside: {r:?}"
                );
                if let Some(secret) = r.entries.iter().find(|e| e.path == "d/secret") {
                    assert_eq!(secret.size, 7, "only the task's own 'inside\\n'");
                }
            }
        }
        if rounds % 10 == 0 {
            let (framework_id, task_id) = ids();
            if let Ok(stream) = client
                .follow_file(pb::FollowFileRequest {
                    executor_id: None,
                    framework_id,
                    task_id,
                    path: "f".into(),
                    offset: 0,
                    tail_bytes: 0,
                })
                .await
            {
                // The first answer, then cancel: a follower of a live task never ends.
                let mut stream = stream.into_inner();
                let first = tokio::time::timeout(Duration::from_secs(60), stream.message())
                    .await
                    .expect("FollowFile answered nothing within a minute");
                match first {
                    Ok(Some(c)) => assert!(!leaked(&c.data), "follow leaked: {c:?}"),
                    Ok(None) => {}
                    Err(s) => assert!(!leaked(s.message().as_bytes()), "{s:?}"),
                }
            }
        }
    }
}

/// Stops the swapping task however the test ends.
pub(crate) struct Swapper(pub(crate) std::process::Child);

impl Drop for Swapper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
