//! `drover-agent --config` and `--print-config` as an operator runs them: the built
//! binary, a real file, the exit status and the message.

use drover_config::testing::{assert_reads_back, print_config, refused, write};

const AGENT: &str = env!("CARGO_BIN_EXE_drover-agent");

#[test]
fn a_bad_file_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let work_dir = work.to_str().unwrap();
    let path = write(
        dir.path(),
        "agent.toml",
        "gc-delay-secs = \"5x\"\nwork_dir = \"/srv\"\n",
    );
    let stderr = refused(AGENT, &["--config", &path, "--work-dir", work_dir], &[]);
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
    let stderr = refused(AGENT, &["--config", &path, "--work-dir", work_dir], &[]);
    assert!(
        stderr.contains("--pids-limit must be between 1 and"),
        "{stderr}"
    );
    assert!(!work.exists());

    // A bad environment variable is named as such (not as the flag it stands for).
    let stderr = refused(
        AGENT,
        &["--work-dir", work_dir],
        &[("DROVER_AGENT_PIDS_LIMIT", "lots")],
    );
    assert!(
        stderr.contains(
            "environment variable DROVER_AGENT_PIDS_LIMIT (key \"pids-limit\"): invalid value \"lots\""
        ),
        "{stderr}"
    );
    assert!(!work.exists());

    let missing = dir.path().join("missing.toml");
    let stderr = refused(AGENT, &["--config", missing.to_str().unwrap()], &[]);
    assert!(stderr.contains("missing.toml: "), "{stderr}");
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
    let (printed, table) = print_config(
        AGENT,
        &["--config", &path, "--work-dir", work.to_str().unwrap()],
        &[("DROVER_AGENT_PIDS_LIMIT", "77")],
    );
    assert_eq!(table["log-max-files"].as_integer(), Some(9));
    assert_eq!(table["pids-limit"].as_integer(), Some(77));
    assert_eq!(table["master"].as_array().map(Vec::len), Some(2));
    assert!(
        printed.contains("pids-limit = 77  # from DROVER_AGENT_PIDS_LIMIT"),
        "{printed}"
    );
    assert!(!work.exists(), "printing starts nothing");
    assert_reads_back(AGENT, dir.path(), &printed, &table);
}
