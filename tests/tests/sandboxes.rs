//! Sandboxes seen from outside, against a real master and a real agent: `drover logs`
//! prints a task's stdout and stderr, follows a running task until it ends, and explains
//! an unknown task id; a task over its `disk` fails with the disk reason.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use drover_proto::pb;
use drover_tests::{bin_dir, wait_until, Cluster, Timing};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The id of the first task the master lists as running (or as completed).
fn task_id_of(cluster: &Cluster, completed: bool) -> String {
    wait_until(
        "the task to be listed",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || {
            let (active, done) = cluster.tasks();
            let list = if completed { done } else { active };
            list.iter()
                .find(|t| completed || t.state == pb::TaskState::TaskRunning as i32)
                .and_then(|t| t.task_id.as_ref())
                .map(|t| t.as_str().to_string())
        },
    )
}

#[test]
fn drover_logs_prints_follows_and_explains() {
    let mut cluster = Cluster::start(Timing::default());
    cluster.add_agent("cpus:2;mem:1024");
    cluster.wait_for_active_agents(1);

    let out = cluster.drover(&[
        "run",
        "--containerizer",
        "process",
        "--",
        "echo out-line; echo err-line >&2",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = task_id_of(&cluster, true);
    let out = cluster.drover(&["logs", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out-line\n");
    let out = cluster.drover(&["logs", "--stderr", &id]);
    assert_eq!(text(&out.stdout), "err-line\n", "{}", text(&out.stderr));
    let out = cluster.drover(&["logs", "--tail", "5", &id]);
    assert_eq!(text(&out.stdout), "line\n", "{}", text(&out.stderr));
    // Following a task that has ended prints what it wrote and returns.
    let out = cluster.drover(&["logs", "--follow", &id]);
    assert_eq!(text(&out.stdout), "out-line\n", "{}", text(&out.stderr));

    let out = cluster.drover(&["logs", "no-such-task"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no task 'no-such-task' is known to the master"),
        "{}",
        text(&out.stderr)
    );
    let out = cluster.drover(&["logs", "--framework", "no-such-framework", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("of framework 'no-such-framework'"),
        "{}",
        text(&out.stderr)
    );

    // A running task, followed from the start until it ends on its own.
    let mut run = Command::new(bin_dir().join("drover"))
        .arg("--master")
        .arg(cluster.master_addr())
        .args([
            "run",
            "--containerizer",
            "process",
            "--",
            "i=0; while [ $i -lt 15 ]; do echo line-$i; i=$((i+1)); sleep 0.2; done",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let id = task_id_of(&cluster, false);
    let mut follow = Command::new(bin_dir().join("drover"))
        .arg("--master")
        .arg(cluster.master_addr())
        .args(["logs", "--follow", &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Ends by itself once the task has ended (its output is small enough for the pipe).
    let status = wait_until(
        "drover logs --follow to end with the task",
        Duration::from_secs(120),
        Duration::from_millis(100),
        || follow.try_wait().unwrap(),
    );
    let mut followed = String::new();
    follow
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut followed)
        .unwrap();
    let mut err = String::new();
    follow
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{err}");
    let expected: String = (0..15).map(|i| format!("line-{i}\n")).collect();
    assert_eq!(followed, expected, "{err}");
    assert!(run.wait().unwrap().success());
}

/// A task writing 4 MB into a 1 MB `disk` is killed by its agent, and the framework (here
/// `drover run`) and the master's task view see TASK_FAILED with the disk reason.
#[test]
fn a_task_over_its_disk_fails_with_the_reason_through_the_cluster() {
    let mut cluster = Cluster::start(Timing::default());
    cluster.add_agent("cpus:2;mem:1024;disk:1000");
    cluster.wait_for_active_agents(1);
    let out = cluster.drover(&[
        "run",
        "--disk",
        "1",
        "--",
        "dd if=/dev/zero of=big bs=1M count=4 2>/dev/null; exec sleep 600",
    ]);
    let stderr = text(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("FAILED"), "{stderr}");
    assert!(
        stderr.contains("over its disk resource of 1.0 MB"),
        "{stderr}"
    );
    let (_, completed) = cluster.tasks();
    let task = completed.first().expect("the task is listed as completed");
    let status = task.last_status.as_ref().unwrap();
    assert_eq!(
        status.reason,
        pb::task_status::Reason::ContainerLimitationDisk as i32,
        "{status:?}"
    );
}
