//! Dominant resource fairness on a contended cluster of 8 equal agents: two frameworks that
//! both want everything, subscribed before any agent registers, with short tasks that keep
//! churning. Equal role weights share about evenly; weights 1 and 3 share about 1:3.
//! (Exact ratios are checked in the allocator's unit tests.)

use std::time::Duration;

use drover_tests::{Cluster, Framework, Report, Timing};

/// Seconds each task runs: one task's resource-seconds is this times one cpu.
const TASK_SECS: f64 = 5.0;

fn contend(weights: Option<&str>) -> (Report, Report) {
    let extra = weights
        .map(|w| vec!["--weights".to_string(), w.to_string()])
        .unwrap_or_default();
    let mut cluster = Cluster::start_with(Timing::default(), extra);
    // One absolute deadline for both, so neither gets the cluster to itself at the end.
    let until = format!("{:.3}", drover_proto::unix_seconds() + 40.0);
    let args = |role: &'static str| {
        vec![
            "--role".to_string(),
            role.to_string(),
            "--until-unix-secs".to_string(),
            until.clone(),
            "--cpus".to_string(),
            "1".to_string(),
            "--mem".to_string(),
            "256".to_string(),
            "--cmd".to_string(),
            "sleep 5".to_string(),
            "--refuse-secs".to_string(),
            "0".to_string(),
        ]
    };
    let a = Framework::start(
        &cluster,
        "fw-a",
        &args("a").iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let b = Framework::start(
        &cluster,
        "fw-b",
        &args("b").iter().map(String::as_str).collect::<Vec<_>>(),
    );
    // Both subscribed before the agents arrive.
    drover_tests::wait_until(
        "both frameworks to subscribe",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || {
            let n = cluster
                .operator(async |mut c| {
                    Some(
                        c.get_frameworks(drover_proto::pb::GetFrameworksRequest {})
                            .await
                            .ok()?
                            .into_inner()
                            .frameworks
                            .len(),
                    )
                })
                .unwrap_or(0);
            (n == 2).then_some(())
        },
    );
    for _ in 0..8 {
        cluster.add_agent("cpus:1;mem:256");
    }
    cluster.wait_for_active_agents(8);
    let ra = a.finish(Duration::from_secs(300));
    let rb = b.finish(Duration::from_secs(300));
    drop(cluster);
    (ra, rb)
}

#[test]
fn equal_weights_share_evenly() {
    let (a, b) = contend(None);
    eprintln!("cpu-seconds: a={:.1} b={:.1}", a.cpu_seconds, b.cpu_seconds);
    assert!(
        a.cpu_seconds > 20.0 && b.cpu_seconds > 20.0,
        "both ran work"
    );
    // Alone on the machine the two end within a task's worth (156.7 vs 156.7 in three
    // runs). Shares tie often and ties go to the lower role name, so on a machine loaded by
    // the rest of the suite one framework can lead by an agent for several rounds (seen:
    // 162.3 vs 152.5, and once 166.5 vs 146.9). Allow 15% of the mean (two tasks' worth at
    // least): an allocator that is not fair at all misses that by far, and exact DRF ratios
    // are checked in the allocator's unit tests.
    let mean = (a.cpu_seconds + b.cpu_seconds) / 2.0;
    assert!(
        (a.cpu_seconds - b.cpu_seconds).abs() <= (2.0 * TASK_SECS + 1.0).max(0.15 * mean),
        "uneven shares: a={:.1} b={:.1}",
        a.cpu_seconds,
        b.cpu_seconds
    );
}

#[test]
fn weights_one_and_three_share_one_to_three() {
    let (a, b) = contend(Some("a=1,b=3"));
    eprintln!("cpu-seconds: a={:.1} b={:.1}", a.cpu_seconds, b.cpu_seconds);
    let ratio = b.cpu_seconds / a.cpu_seconds;
    assert!(
        (2.4..=3.6).contains(&ratio),
        "ratio b/a = {ratio:.2} (a={:.1} b={:.1})",
        a.cpu_seconds,
        b.cpu_seconds
    );
}
