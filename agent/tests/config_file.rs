//! `drover-agent --config` and `--print-config` as an operator runs them: the built
//! binary, a real file, the exit status and the message.

use std::path::Path;
use std::process::{Command, Output};

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_drover-agent"))
        .args(args)
        // Only what the test sets: no DROVER_* from the caller's shell.
        .env_clear()
        .output()
        .unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn a_bad_file_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let path = write(
        dir.path(),
        "agent.toml",
        "gc-delay-secs = \"5x\"\nwork_dir = \"/srv\"\n",
    );
    let out = agent(&["--config", &path, "--work-dir", work.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{path}: key \"gc-delay-secs\": invalid value \"5x\""
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{path}: key \"work_dir\": unknown key (did you mean \"work-dir\"?)"
        )),
        "{stderr}"
    );
    assert!(!work.exists(), "nothing may start on a bad file");

    // The agent's own checks apply to the file's values too.
    let path = write(dir.path(), "pids.toml", "pids-limit = 0\n");
    let out = agent(&["--config", &path, "--work-dir", work.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--pids-limit must be between 1 and"),
        "{stderr}"
    );
    assert!(!work.exists());

    // A bad environment variable is named as such (not as the flag it stands for).
    let out = Command::new(env!("CARGO_BIN_EXE_drover-agent"))
        .args(["--work-dir", work.to_str().unwrap()])
        .env_clear()
        .env("DROVER_AGENT_PIDS_LIMIT", "lots")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "environment variable DROVER_AGENT_PIDS_LIMIT (key \"pids-limit\"): invalid value \"lots\""
        ),
        "{stderr}"
    );
    assert!(!work.exists());

    let out = agent(&[
        "--config",
        dir.path().join("missing.toml").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml: "));
}

#[test]
fn print_config_shows_the_merged_settings_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let path = write(
        dir.path(),
        "agent.toml",
        "master = [\"10.0.0.1:5050\", \"10.0.0.2:5050\"]\nlog-max-files = 9\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_drover-agent"))
        .args([
            "--config",
            &path,
            "--work-dir",
            work.to_str().unwrap(),
            "--print-config",
        ])
        .env_clear()
        .env("DROVER_AGENT_PIDS_LIMIT", "77")
        .output()
        .unwrap();
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table: toml::Table = printed.parse().unwrap();
    assert_eq!(table["log-max-files"].as_integer(), Some(9));
    assert_eq!(table["pids-limit"].as_integer(), Some(77));
    assert_eq!(table["master"].as_array().map(Vec::len), Some(2));
    assert!(
        printed.contains("pids-limit = 77  # from DROVER_AGENT_PIDS_LIMIT"),
        "{printed}"
    );
    assert!(!work.exists(), "printing starts nothing");

    let again = write(dir.path(), "printed.toml", &printed);
    let out = agent(&["--config", &again, "--print-config"]);
    assert_eq!(out.status.code(), Some(0));
    let reread: toml::Table = String::from_utf8(out.stdout).unwrap().parse().unwrap();
    assert_eq!(reread, table);
}
