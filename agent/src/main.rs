//! `drover-agent`: see `drover_agent` for the map of the crate.

use std::process::ExitCode;

use drover_agent::{Agent, Config};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // Supervisor, container init or check helper first: a hidden argument, never parsed
    // by clap, no tokio.
    let args: Vec<_> = std::env::args_os().collect();
    if let Some(code) = drover_agent::dispatch(&args) {
        return ExitCode::from(code.clamp(0, 255) as u8);
    }

    let loaded = match Config::load(args, |name| std::env::var_os(name)) {
        Ok(loaded) => loaded,
        Err(e) => e.exit("drover-agent"),
    };
    // Bad settings stop here, whichever layer they came from, before anything is bound or
    // touched; --print-config shows only settings the agent would accept.
    if let Err(e) = loaded.settings.validate() {
        return refuse(&e);
    }
    if loaded.settings.file.print_config {
        return match loaded.to_toml() {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => e.exit("drover-agent"),
        };
    }
    let config = loaded.settings;
    let filter = match EnvFilter::try_new(&config.log_level) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("drover-agent: --log-level '{}': {e}", config.log_level);
            return ExitCode::from(2);
        }
    };
    // Colours only for people: logs piped to files or journald stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("drover-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let agent = Agent::bind(config).await?;
        agent.run(shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("drover-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Settings refused: exit status 2, as for a bad command line.
fn refuse(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("drover-agent: {e}");
    ExitCode::from(2)
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot watch SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
}
