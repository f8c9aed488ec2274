//! `drover`: the command line of a Drover cluster.
//!
//! Module map:
//! - `main` (this file): flags and subcommands (clap derive), logging, exit codes.
//! - [`masters`]: connection to the masters given by `--master`, following `NotLeader`
//!   redirects to the leader, and the "no master answered" errors.
//! - [`inspect`]: `drover status | agents | frameworks | tasks`, as tables or `--json`.
//! - [`table`] and [`format`]: aligned text tables and resource/state/duration formatting.
//! - [`local`]: `drover local`, a whole cluster of child processes on one machine
//!   (`local::plan` decides flags, ports and folders; `local::daemon` spawns, supervises
//!   and stops the processes).
//! - [`images`]: `drover images import | list | remove`, an agent's image store through
//!   that agent's API (`--agent`).
//! - [`logs`]: `drover logs TASK [--follow] [--stderr]`, a task's output from its agent.
//! - `run`: `drover run -- CMD`, one command run on the cluster as a small framework.
//! - [`membership`]: `drover masters list | add | remove | replace | transfer`.
//!
//! Output for people goes to stdout; progress, warnings and errors go to stderr, so that
//! `drover tasks --json | jq` and friends see only data.

mod format;
mod images;
mod inspect;
mod local;
mod logs;
mod masters;
mod membership;
mod run;
mod table;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::masters::Masters;

/// The Drover command line: run a local cluster, run commands on a cluster, and inspect
/// it.
#[derive(Parser, Debug)]
#[command(name = "drover", version, propagate_version = true)]
struct Cli {
    /// Masters to talk to, comma-separated. Any master will do: followers name the
    /// leader and drover follows. Not used by `drover local`, which has --master-listen.
    #[arg(
        long,
        global = true,
        env = "DROVER_MASTER",
        default_value = "127.0.0.1:5050",
        value_delimiter = ',',
        value_name = "HOST:PORT[,HOST:PORT…]"
    )]
    master: Vec<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start a whole cluster on this machine (a master and agents) and keep it running
    /// until Ctrl-C.
    Local(local::LocalArgs),
    /// Run one command on the cluster and report its output and final state.
    Run(run::RunArgs),
    /// Summarise the cluster: leader, agents, frameworks, tasks and resources.
    Status(inspect::OutputArgs),
    /// List the agents with their resources (allocated/total) and task counts.
    Agents(inspect::OutputArgs),
    /// List the frameworks with their roles, connection and allocated resources.
    Frameworks(inspect::OutputArgs),
    /// List the tasks (active ones unless --all).
    Tasks(inspect::TasksArgs),
    /// Print a task's stdout (or --stderr) from the agent that runs or ran it;
    /// --follow keeps printing until the task ends.
    Logs(logs::LogsArgs),
    /// The masters of the cluster: list them, add, remove or replace one, move the
    /// leadership.
    #[command(subcommand)]
    Masters(membership::MastersCommand),
    /// Manage an agent's local image store (no registry): import `docker save` or OCI
    /// archives, list and remove images. Talks to the agent given by --agent.
    Images {
        #[command(subcommand)]
        command: images::ImagesCommand,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    match execute(cli).await {
        Ok(code) => exit_code(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the chosen command; the result is the process exit code.
async fn execute(cli: Cli) -> anyhow::Result<i32> {
    // `local` and `run` run on this task, not a spawned one: `drover local` relies on
    // spawning its daemons from the main thread (see `local::daemon`).
    let Cli {
        master: masters,
        command,
    } = cli;
    match command {
        Command::Local(args) => local::run(args).await,
        Command::Run(args) => run::run(masters, args).await,
        Command::Status(out) => inspect::status(&Masters::new(masters)?, &out)
            .await
            .map(|()| 0),
        Command::Agents(out) => inspect::agents(&Masters::new(masters)?, &out)
            .await
            .map(|()| 0),
        Command::Frameworks(out) => inspect::frameworks(&Masters::new(masters)?, &out)
            .await
            .map(|()| 0),
        Command::Tasks(args) => inspect::tasks(&Masters::new(masters)?, &args)
            .await
            .map(|()| 0),
        Command::Logs(args) => logs::logs(&Masters::new(masters)?, &args).await,
        Command::Masters(cmd) => membership::run(&Masters::new(masters)?, cmd)
            .await
            .map(|()| 0),
        Command::Images { command } => images::run(command).await.map(|()| 0),
    }
}

/// Log records (from tonic, hyper and our own `tracing` calls) go to stderr, quiet by
/// default; `RUST_LOG=debug drover …` shows them.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Maps an `i32` exit code onto the 0..=255 a process can return; out-of-range codes
/// become a plain failure rather than wrapping around to success.
fn exit_code(code: i32) -> ExitCode {
    match u8::try_from(code) {
        Ok(c) => ExitCode::from(c),
        Err(_) => ExitCode::FAILURE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_valid_and_every_flag_has_help() {
        Cli::command().debug_assert();
        fn check(cmd: &clap::Command) {
            for arg in cmd.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                assert!(
                    builtin || arg.get_help().is_some(),
                    "{} --{} has no help",
                    cmd.get_name(),
                    arg.get_id()
                );
            }
            for sub in cmd.get_subcommands() {
                check(sub);
            }
        }
        check(&Cli::command());
    }

    #[test]
    fn master_list_is_comma_separated() {
        let cli = Cli::try_parse_from(["drover", "--master", "a:1,b:2", "agents"]).unwrap();
        assert_eq!(cli.master, ["a:1", "b:2"]);
        let cli = Cli::try_parse_from(["drover", "tasks", "--all", "--master", "c:3"]).unwrap();
        assert_eq!(cli.master, ["c:3"]);
        assert!(matches!(cli.command, Command::Tasks(ref t) if t.all));
    }

    #[test]
    fn local_refuses_bad_agent_counts_at_parse_time() {
        assert!(Cli::try_parse_from(["drover", "local", "--agents", "0"]).is_err());
        assert!(Cli::try_parse_from(["drover", "local", "--agents", "35"]).is_err());
        let cli = Cli::try_parse_from(["drover", "local"]).unwrap();
        let Command::Local(args) = cli.command else {
            panic!("not local")
        };
        assert_eq!(args.agents, 2);
        assert_eq!(args.masters, 1);
        assert_eq!(args.master_listen, "127.0.0.1:5050");
        assert_eq!(args.data_dir, std::path::Path::new("./.drover/local"));
    }

    #[test]
    fn images_commands_parse() {
        let cli =
            Cli::try_parse_from(["drover", "images", "import", "a.tar", "--name", "x"]).unwrap();
        let Command::Images {
            command: images::ImagesCommand::Import(args),
        } = cli.command
        else {
            panic!("not images import")
        };
        assert_eq!(args.file, std::path::Path::new("a.tar"));
        assert_eq!(args.name.as_deref(), Some("x"));
        assert_eq!(args.agent.agent, "127.0.0.1:5051");
        let cli =
            Cli::try_parse_from(["drover", "images", "list", "--json", "--agent", "h:1"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Images { command: images::ImagesCommand::List(ref l) } if l.json && l.agent.agent == "h:1"
        ));
        assert!(Cli::try_parse_from(["drover", "images", "import"]).is_err());
        assert!(
            Cli::try_parse_from(["drover", "images", "import", "f", "--format", "rpm"]).is_err()
        );
    }

    #[test]
    fn exit_codes_never_wrap_to_success() {
        assert_eq!(exit_code(0), ExitCode::SUCCESS);
        assert_eq!(exit_code(256), ExitCode::FAILURE);
        assert_eq!(exit_code(-1), ExitCode::FAILURE);
    }
}
