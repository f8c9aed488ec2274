//! `drover-master --config` and `--print-config` as an operator runs them: the built
//! binary, a real file, the exit status and the message.

use std::path::Path;
use std::process::{Command, Output};

fn master(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_drover-master"))
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
    let data = dir.path().join("data");
    let path = write(
        dir.path(),
        "master.toml",
        "listne = \"127.0.0.1:0\"\nheartbeat-interval-secs = \"5x\"\n",
    );
    let out = master(&["--config", &path, "--data-dir", data.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{path}: key \"listne\": unknown key (did you mean \"listen\"?)"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{path}: key \"heartbeat-interval-secs\": invalid value \"5x\""
        )),
        "{stderr}"
    );
    assert!(!data.exists(), "nothing may start on a bad file");

    // The master's own checks apply to the file's values too.
    let path = write(
        dir.path(),
        "peers.toml",
        "id = 3\npeers = \"1=a:1,2=b:2\"\n",
    );
    let out = master(&["--config", &path, "--data-dir", data.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--peers must name this master too"),
        "{stderr}"
    );
    assert!(!data.exists());
}

#[test]
fn print_config_shows_the_merged_settings_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "master.toml",
        "id = 2\npeers = \"1=127.0.0.1:1,2=127.0.0.1:2\"\nweights = \"web=2\"\n",
    );
    let out = master(&["--config", &path, "--raft-tick-ms", "20", "--print-config"]);
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table: toml::Table = printed.parse().unwrap();
    assert_eq!(table["id"].as_integer(), Some(2));
    assert_eq!(table["raft-tick-ms"].as_integer(), Some(20));
    assert_eq!(table["listen"].as_str(), Some("127.0.0.1:5050"));
    assert!(
        printed.contains("raft-tick-ms = 20  # from the command line"),
        "{printed}"
    );

    let again = write(dir.path(), "printed.toml", &printed);
    let out = master(&["--config", &again, "--print-config"]);
    assert_eq!(out.status.code(), Some(0));
    let reread: toml::Table = String::from_utf8(out.stdout).unwrap().parse().unwrap();
    assert_eq!(reread, table);
}
