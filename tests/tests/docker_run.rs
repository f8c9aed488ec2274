//! `drover run --containerizer docker` against a real master, a real agent and the real
//! Docker engine (skipped with a printed reason where no engine answers; failing under
//! `CI=true` then): the task runs in the image, its output comes back, and its exit code
//! becomes `drover run`'s; a missing image fails the task with a message naming it.

use std::process::Command;

use drover_agent::containerizer::docker::testing::{engine_missing, TestImage};
use drover_tests::{bin_dir, Cluster, Timing};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn drover_run_runs_a_docker_image_and_reports_its_exit_code() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    if runtime
        .block_on(engine_missing(
            "drover_run_runs_a_docker_image_and_reports_its_exit_code",
        ))
        .is_some()
    {
        return;
    }
    let image = TestImage::import().unwrap();
    let mut cluster = Cluster::start(Timing::default());
    cluster.add_agent("cpus:2;mem:1024");
    cluster.wait_for_active_agents(1);
    let drover = |args: &[&str]| {
        Command::new(bin_dir().join("drover"))
            .arg("--master")
            .arg(cluster.master_addr())
            .arg("run")
            .args(args)
            .output()
            .unwrap()
    };

    let out = drover(&[
        "--containerizer",
        "docker",
        "--image",
        &image.name,
        "--mem",
        "64",
        "--",
        "echo hi from $DROVER_SANDBOX; echo oops >&2; exit 3",
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(3), "{stdout}\n{stderr}");
    assert_eq!(stdout, "hi from /mnt/sandbox\n", "{stderr}");
    assert!(stderr.contains("oops"), "{stderr}");
    assert!(stderr.contains("FAILED (exit 3)"), "{stderr}");

    let missing = "drover-test-no-such-image:never";
    let out = drover(&[
        "--containerizer",
        "docker",
        "--image",
        missing,
        "--",
        "true",
    ]);
    let stderr = text(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains(missing), "{stderr}");
    assert!(stderr.contains("never pulls"), "{stderr}");
}
