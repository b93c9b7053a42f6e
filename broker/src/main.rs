//! `walarchive-broker`: the service broker, its cell agent and the single-machine mode.
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use walarchive_broker::{app, AppState, BrokerConfig, EtcdClient, NoBinder, Store};

#[derive(Parser)]
#[command(name = "walarchive-broker", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the Open Service Broker API.
    Serve {
        /// The broker's configuration file (see broker.example.toml).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Run the cell agent: start and supervise the Patroni nodes placed on this machine.
    Cell {
        /// The cell's configuration file (TOML).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => serve(&config),
        Command::Cell { config } => cell(&config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("walarchive-broker: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config_path: &std::path::Path) -> anyhow::Result<()> {
    let config = BrokerConfig::load(config_path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime.block_on(async move {
        let etcd = EtcdClient::new(&config.etcd.endpoints, config.etcd.timeout.0)?;
        let store = Store::new(etcd, config.etcd.prefix.clone());
        let listen = config.listen;
        // The real binder (a PostgreSQL role per binding) and the provisioning worker are
        // not wired in yet: bindings are refused and operations stay recorded.
        let state = AppState::new(config, store, Arc::new(NoBinder));
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listen on {listen}"))?;
        tracing::info!(%listen, "serving the Open Service Broker API");
        axum::serve(listener, app(state))
            .with_graceful_shutdown(shutdown())
            .await
            .context("serve the OSB API")
    })
}

fn cell(config_path: &std::path::Path) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime
        .block_on(walarchive_broker::cell::main(config_path))
        .context("cell agent")
}

async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install the SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
