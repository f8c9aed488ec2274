//! `drover-master`: reads its settings (defaults < `--config` file < environment < flags),
//! binds the listeners and runs the master until SIGINT or SIGTERM.

use std::process::ExitCode;

use drover_master::backup;
use drover_master::config::{parse_peers, Config, Flags, Subcommand};
use drover_master::error::{IoContext, MasterError, Result};

fn main() -> ExitCode {
    let loaded = match Flags::load(std::env::args_os(), |name| std::env::var_os(name)) {
        Ok(loaded) => loaded,
        Err(e) => e.exit("drover-master"),
    };
    let flags = loaded.settings.clone();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&flags.log_level))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match flags.command.clone() {
        Some(cmd) => run(run_subcommand(cmd)),
        None => {
            // Bad settings stop here, before anything is bound or opened, whichever layer
            // they came from; --print-config shows only settings the master would accept.
            let config = match Config::from_flags(&flags) {
                Ok(config) => config,
                Err(e) => return refuse(&e),
            };
            if flags.file.print_config {
                return match loaded.to_toml() {
                    Ok(text) => {
                        print!("{text}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => e.exit("drover-master"),
                };
            }
            run(serve(config))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {}", drover_master::error::with_causes(&e));
            ExitCode::FAILURE
        }
    }
}

/// Settings refused: exit status 2, as for a bad command line.
fn refuse(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("drover-master: {e}");
    ExitCode::from(2)
}

fn run(work: impl std::future::Future<Output = Result<()>>) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| MasterError::io("cannot start the async runtime", e))?
        .block_on(work)
}

async fn serve(config: Config) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .io_ctx(|| format!("cannot listen on {}", config.listen))?;
    let http = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .io_ctx(|| format!("cannot listen on {}", config.http_listen))?;
    let mut config = config;
    config.listen = listener
        .local_addr()
        .io_ctx(|| "cannot read the listener's address".into())?;
    config.http_listen = http
        .local_addr()
        .io_ctx(|| "cannot read the listener's address".into())?;
    drover_master::serve(config, listener, http, shutdown_signal()).await
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

async fn run_subcommand(cmd: Subcommand) -> Result<()> {
    match cmd {
        Subcommand::Backup {
            master,
            from_data_dir,
            out,
        } => {
            let b = match from_data_dir {
                Some(dir) => backup::offline(&dir)?,
                None => backup::online(&master).await?,
            };
            b.write_to(&out)?;
            let cluster = drover_master::registry::Registry::from_snapshot(&b.registry)
                .ok()
                .and_then(|r| r.cluster_id)
                .map(|c| format!(", cluster {c}"))
                .unwrap_or_default();
            println!(
                "backup written to {}: registry at log index {} (term {}), {} bytes, sha256 {}{cluster}",
                out.display(),
                b.header.index,
                b.header.term,
                b.header.size,
                b.header.sha256
            );
        }
        Subcommand::Restore {
            from,
            data_dir,
            id,
            peers,
        } => {
            let b = backup::Backup::read_from(&from)?;
            let peers = parse_peers(&peers)?;
            let cluster = backup::restore(&b, &data_dir, id, &peers)?
                .map(|c| format!(" (cluster id {c}, kept)"))
                .unwrap_or_default();
            println!(
                "{} seeded as master {id} of a new cluster {:?} from the backup at log index {}{cluster}",
                data_dir.display(),
                peers.keys().collect::<Vec<_>>(),
                b.header.index
            );
        }
    }
    Ok(())
}
