//! `drover-master --config` and `--print-config` as an operator runs them: the built
//! binary, a real file, the exit status and the message.

use drover_config::testing::{assert_reads_back, print_config, refused, write};

const MASTER: &str = env!("CARGO_BIN_EXE_drover-master");

#[test]
fn a_bad_file_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_dir = data.to_str().unwrap();
    let path = write(
        dir.path(),
        "master.toml",
        "listne = \"127.0.0.1:0\"\nheartbeat-interval-secs = \"5x\"\n",
    );
    let stderr = refused(MASTER, &["--config", &path, "--data-dir", data_dir], &[]);
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
    let stderr = refused(MASTER, &["--config", &path, "--data-dir", data_dir], &[]);
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
    let (printed, table) = print_config(MASTER, &["--config", &path, "--raft-tick-ms", "20"], &[]);
    assert_eq!(table["id"].as_integer(), Some(2));
    assert_eq!(table["raft-tick-ms"].as_integer(), Some(20));
    assert_eq!(table["listen"].as_str(), Some("127.0.0.1:5050"));
    assert!(
        printed.contains("raft-tick-ms = 20  # from the command line"),
        "{printed}"
    );
    assert_reads_back(MASTER, dir.path(), &printed, &table);
}
