//! Real processes: the test binary re-executes itself as a supervisor (see the
//! constructor in `lib.rs`), exactly as the agent does in production.

use super::*;
use std::fs;
use std::os::unix::process::CommandExt;
use std::process::Child;

use crate::fsutil::create_dir_all_durable;

struct Task {
    _dir: tempfile::TempDir,
    spec: SupervisorSpec,
    meta: TaskMeta,
}

fn task(program: &str, argv: &[&str]) -> Task {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = dir.path().join("sandbox");
    let meta_dir = dir.path().join("meta");
    create_dir_all_durable(&sandbox).unwrap();
    create_dir_all_durable(&meta_dir).unwrap();
    let spec = SupervisorSpec {
        framework_id: "fw".into(),
        task_id: "t".into(),
        sandbox,
        meta_dir: meta_dir.clone(),
        program: program.into(),
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec![("GREETING".into(), "hello".into())],
        user: None,
        default_grace_secs: 5.0,
        container: None,
    };
    Task {
        _dir: dir,
        spec,
        meta: TaskMeta::new(meta_dir),
    }
}

fn shell(script: &str) -> Task {
    task("/bin/sh", &["sh", "-c", script])
}

/// Starts a supervisor the way the process containerizer does: own session, SIGTERM and
/// SIGCHLD blocked.
fn start(t: &Task) -> Child {
    let spec_path = t.meta.spec_file();
    write_json_atomic(&spec_path, &t.spec).unwrap();
    let log = fs::File::create(t.meta.supervisor_log()).unwrap();
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg(SUPERVISE_ARG)
        .arg(&spec_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    // SAFETY: async-signal-safe calls only.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            let set = SignalSet::of(&[libc::SIGTERM, libc::SIGCHLD]);
            libc::sigprocmask(libc::SIG_SETMASK, &set.0, std::ptr::null_mut());
            Ok(())
        });
    }
    cmd.spawn().unwrap()
}

fn finish(t: &Task, mut child: Child) -> ExitRecord {
    let status = child.wait().unwrap();
    let log = fs::read_to_string(t.meta.supervisor_log()).unwrap_or_default();
    assert!(status.success(), "supervisor failed: {status}\n{log}");
    read_json::<ExitRecord>(&t.meta.exit_file())
        .unwrap()
        .unwrap_or_else(|| panic!("no exit record\n{log}"))
}

fn sandbox_file(t: &Task, name: &str) -> String {
    fs::read_to_string(t.spec.sandbox.join(name)).unwrap_or_default()
}

/// Polls (bounded by count) until `cond` holds.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn records_a_non_zero_exit_code_and_output_lands_in_files() {
    let t = shell("echo out $GREETING $DROVER_NOT_SET; echo err >&2; pwd; exit 3");
    let record = finish(&t, start(&t));
    assert_eq!(record.outcome, ExitOutcome::Exited { code: 3 });
    assert!(!record.killed);
    assert_eq!(
        sandbox_file(&t, "stdout"),
        format!("out hello\n{}\n", t.spec.sandbox.display())
    );
    assert_eq!(sandbox_file(&t, "stderr"), "err\n");
    // The claim names the supervisor and the task's pid.
    match read_json::<SupervisorClaim>(&t.meta.supervisor_file())
        .unwrap()
        .unwrap()
    {
        SupervisorClaim::Started {
            task_pid: Some(pid),
            ..
        } => assert_eq!(Some(pid), record.task_pid),
        other => panic!("unexpected claim {other:?}"),
    }
}

#[test]
fn records_exit_zero_and_a_signal() {
    let t = shell("exit 0");
    assert_eq!(
        finish(&t, start(&t)).outcome,
        ExitOutcome::Exited { code: 0 }
    );
    let t = shell("kill -9 $$");
    let r = finish(&t, start(&t));
    assert_eq!(r.outcome, ExitOutcome::Signaled { signal: 9 });
    assert!(!r.killed);
}

#[test]
fn a_kill_with_grace_escalates_to_sigkill_and_is_recorded_as_killed() {
    // The task ignores SIGTERM (inherited by sleep), so only SIGKILL ends it.
    let t = shell("trap '' TERM; echo ready; exec sleep 60");
    let child = start(&t);
    eventually("the task to start", || {
        sandbox_file(&t, "stdout") == "ready\n"
    });
    let request = KillRequest {
        grace_secs: 0.3,
        requested_at: unix_seconds(),
        reason: 17,
    };
    write_json_atomic(&t.meta.kill_request_file(), &request).unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let record = finish(&t, child);
    assert_eq!(record.outcome, ExitOutcome::Signaled { signal: 9 });
    assert!(record.killed);
    assert_eq!(record.kill_reason, Some(17));
}

#[test]
fn a_task_that_honours_sigterm_is_killed_without_waiting_for_the_grace() {
    let t = shell("echo ready; exec sleep 60");
    let child = start(&t);
    eventually("the task to start", || {
        sandbox_file(&t, "stdout") == "ready\n"
    });
    let request = KillRequest {
        grace_secs: 3600.0,
        requested_at: unix_seconds(),
        reason: 17,
    };
    write_json_atomic(&t.meta.kill_request_file(), &request).unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let record = finish(&t, child);
    assert_eq!(record.outcome, ExitOutcome::Signaled { signal: 15 });
    assert!(record.killed);
}

#[test]
fn a_sigterm_without_a_kill_request_is_not_a_requested_kill() {
    let t = shell("echo ready; exec sleep 60");
    let child = start(&t);
    eventually("the task to start", || {
        sandbox_file(&t, "stdout") == "ready\n"
    });
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let record = finish(&t, child);
    assert_eq!(record.outcome, ExitOutcome::Signaled { signal: 15 });
    assert!(!record.killed);
}

#[test]
fn a_kill_requested_before_start_means_the_command_never_runs() {
    let t = shell("echo ran > marker");
    let request = KillRequest {
        grace_secs: 1.0,
        requested_at: unix_seconds(),
        reason: 9,
    };
    write_json_atomic(&t.meta.kill_request_file(), &request).unwrap();
    let record = finish(&t, start(&t));
    assert_eq!(record.outcome, ExitOutcome::NotStarted);
    assert!(record.killed);
    assert!(!t.spec.sandbox.join("marker").exists());
}

#[test]
fn an_abandoned_launch_is_never_started() {
    let t = shell("echo ran > marker");
    let abandoned = SupervisorClaim::Abandoned { at: unix_seconds() };
    assert!(create_json_exclusive(&t.meta.supervisor_file(), &abandoned).unwrap());
    let mut child = start(&t);
    assert!(child.wait().unwrap().success());
    assert!(!t.meta.exit_file().exists());
    assert!(!t.spec.sandbox.join("marker").exists());
}

#[test]
fn a_missing_program_is_a_launch_failure() {
    let t = task("/nonexistent/program", &["program"]);
    let record = finish(&t, start(&t));
    match record.outcome {
        ExitOutcome::LaunchFailed { message } => {
            assert!(message.contains("/nonexistent/program"), "{message}")
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn processes_left_behind_are_killed_when_the_task_ends() {
    // The background sleep double-forks away from sh; it must not survive the task.
    let t = shell("(sleep 60 & echo $! > bg.pid) ; exit 0");
    let record = finish(&t, start(&t));
    assert_eq!(record.outcome, ExitOutcome::Exited { code: 0 });
    let pid: i32 = fs::read_to_string(t.spec.sandbox.join("bg.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let alive = matches!(procfs::stat(pid), Ok(Some(s)) if s.state != 'Z');
    assert!(!alive, "background process {pid} survived");
}

#[test]
fn dispatch_ignores_ordinary_command_lines() {
    let args: Vec<OsString> = vec!["drover-agent".into(), "--help".into()];
    assert_eq!(dispatch(&args), None);
    let args: Vec<OsString> = vec!["drover-agent".into(), SUPERVISE_ARG.into()];
    assert_eq!(dispatch(&args), Some(2));
}
