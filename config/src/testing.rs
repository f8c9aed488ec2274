//! Test support for the daemons' configuration tests (cargo feature `testing`, enabled
//! only in their dev-dependencies): what the agent's and the master's tests share, so that
//! each keeps only what is specific to its settings.
//!
//! - [`Env`]: [`load`](crate::load) over a made-up environment instead of the process's.
//! - [`write`]: a config file in a test's directory.
//! - [`reload_printed`], [`keys_unset_by_default`]: `--print-config` reads back, and what
//!   it leaves out.
//! - [`assert_packaged_example`]: the shipped example file is valid, complete and shown
//!   in the docs as it is.
//! - [`run`], [`refused`], [`print_config`]: the built daemon binary as an operator runs it.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::path::Path;
use std::process::{Command, Output};

use clap::{CommandFactory, FromArgMatches};
use serde::Serialize;

use crate::{Daemon, Error, Loaded};

/// A daemon's environment in a test: only the variables given, never the caller's shell.
pub struct Env<T> {
    daemon: Daemon,
    vars: HashMap<String, String>,
    settings: PhantomData<fn() -> T>,
}

impl<T: CommandFactory + FromArgMatches> Env<T> {
    pub fn new(daemon: Daemon, vars: &[(&str, &str)]) -> Env<T> {
        Env {
            daemon,
            vars: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            settings: PhantomData,
        }
    }

    /// Loads `args` (without the binary's name) over this environment.
    pub fn load(&self, args: &[&str]) -> Result<Loaded<T>, Error> {
        crate::load(
            &self.daemon,
            std::iter::once(self.daemon.name).chain(args.iter().copied()),
            |name| self.vars.get(name).map(Into::into),
        )
    }
}

/// Writes `text` to `dir/name` and returns the path, as `--config` takes it.
pub fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// Prints `first` as `--print-config` does, loads the printed file back (as
/// `dir/printed.toml`, with no environment) and asserts that it holds the same settings;
/// returns what was printed and what was read back.
pub fn reload_printed<T>(daemon: Daemon, first: &Loaded<T>, dir: &Path) -> (String, Loaded<T>)
where
    T: CommandFactory + FromArgMatches + Serialize,
{
    let printed = first.to_toml().unwrap();
    let again = write(dir, "printed.toml", &printed);
    let second = Env::<T>::new(daemon, &[])
        .load(&["--config", &again])
        .unwrap();
    assert_eq!(
        toml::Table::try_from(&first.settings).unwrap(),
        toml::Table::try_from(&second.settings).unwrap(),
        "{printed}"
    );
    (printed, second)
}

/// The file keys that have no value when nothing is configured (optional settings), in
/// `--help` order: the keys `--print-config` can only show commented out.
pub fn keys_unset_by_default<T>(daemon: Daemon) -> Vec<String>
where
    T: CommandFactory + FromArgMatches + Serialize,
{
    let defaults = Env::<T>::new(daemon, &[]).load(&[]).unwrap().settings;
    let printed = toml::Table::try_from(defaults).unwrap();
    crate::keys::<T>(&daemon)
        .into_iter()
        .filter(|k| !printed.contains_key(k))
        .collect()
}

/// The example file `root/example` (e.g. `packaging/agent.toml`) loads, passes the
/// daemon's own checks (`check`), names every setting (set or commented out, so a new flag
/// needs its line), and `root/docs/operations.md` shows it as it is.
pub fn assert_packaged_example<T: CommandFactory + FromArgMatches>(
    daemon: Daemon,
    root: &str,
    example: &str,
    check: impl FnOnce(&T),
) {
    let path = format!("{root}/{example}");
    let loaded = Env::<T>::new(daemon, &[])
        .load(&["--config", &path])
        .unwrap();
    check(&loaded.settings);
    let text = std::fs::read_to_string(&path).unwrap();
    for key in crate::keys::<T>(&daemon) {
        let line = format!("{key} = ");
        assert!(
            text.lines()
                .any(|l| l.starts_with(&line) || l.starts_with(&format!("# {line}"))),
            "{path} does not name {key}"
        );
    }
    let docs = std::fs::read_to_string(format!("{root}/docs/operations.md")).unwrap();
    assert!(
        docs.contains(&format!("```toml\n{text}```")),
        "docs/operations.md must show {path} as it is"
    );
}

/// Runs `binary` with `args` and only the environment variables `env`: no DROVER_* from
/// the caller's shell.
pub fn run(binary: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(binary)
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// Runs `binary` as [`run`] does, asserts it refused its settings (exit status 2) and
/// returns what it said on stderr.
pub fn refused(binary: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = run(binary, args, env);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    stderr
}

/// Runs `binary` with `args` and `--print-config`, asserts it succeeded and returns the
/// printed file, as text and as a table.
pub fn print_config(binary: &str, args: &[&str], env: &[(&str, &str)]) -> (String, toml::Table) {
    let args: Vec<&str> = args.iter().copied().chain(["--print-config"]).collect();
    let out = run(binary, &args, env);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    let table = printed.parse().unwrap();
    (printed, table)
}

/// `printed` (a `--print-config` output) read back by `binary` prints the same table.
pub fn assert_reads_back(binary: &str, dir: &Path, printed: &str, table: &toml::Table) {
    let again = write(dir, "printed.toml", printed);
    let (_, reread) = print_config(binary, &["--config", &again], &[]);
    assert_eq!(&reread, table);
}
