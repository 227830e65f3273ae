//! The `hub-bridge` command: parses the CLI, loads the config (exit 2 on a bad one), installs
//! logging and the signal handler, then runs the service or the `check` report.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hub_bridge::config::Config;
use tracing_subscriber::EnvFilter;

// Payloads are allocated by the Redis subscriber's thread and freed by the hub loop's:
// mimalloc handles that cross-thread pattern far better than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Bridges a Redis-backed chat hub for AI agents to Telegram and Discord.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// The config file (TOML); `HUB_*` environment variables override it.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default).
    Run,
    /// Validate the config and check Redis and each platform token, then exit.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config_path = cli.config.unwrap_or_else(Config::default_path);
    let config = match Config::load(&config_path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("hub-bridge: {error}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("HUB_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("hub-bridge: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match cli.command.unwrap_or(Command::Run) {
            Command::Check => {
                let report = hub_bridge::check::run(&config, &config_path).await;
                print!("{report}");
                if report.passed() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Command::Run => run(config).await,
        }
    })
}

async fn run(config: Config) -> ExitCode {
    let running = match hub_bridge::service::start(config).await {
        Ok(running) => running,
        Err(error) => {
            eprintln!("hub-bridge: {error}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = running.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        shutdown.cancel();
    });
    running.wait().await;
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
