//! `walarchive-broker`: the service broker, its cell agent and the single-machine mode.
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use walarchive_broker::admin::Selector;
use walarchive_broker::cell::CellBinder;
use walarchive_broker::dev::{Dev, DevOptions};
use walarchive_broker::recover::{outcomes_text, RecoverError, Recovery};
use walarchive_broker::sampler::Sampler;
use walarchive_broker::statebackup::StateBackup;
use walarchive_broker::stats::Stats;
use walarchive_broker::{app, AppState, BrokerConfig, EtcdClient, Store, Worker};

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
    /// Seal every secret kept in etcd with the current key (`secrets.key_file`), after a key
    /// rotation: the old key goes to `secrets.old_key_files` until this has run.
    RotateSecrets {
        /// The broker's configuration file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Check the whole system end to end on instances of its own (storage credentials, the
    /// OSB API, provision, backup, clone, deprovision, purge, state snapshot); exit status 0
    /// only when every step passed, 1 otherwise (the last line names the failed step).
    Selftest {
        /// The broker's configuration file (of a running broker: its API is used).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Every incarnation of an instance (live, deleted or purged) and its archive's restorable
    /// window: what a clone of it could copy.
    RestorableWindow {
        /// The broker's configuration file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The instance id; with --org and --space, the instance's name on the platform.
        #[arg(value_name = "INSTANCE_ID|NAME")]
        instance: String,
        /// The organization's GUID: the argument is then a name in this organization's SPACE.
        #[arg(long, value_name = "ORG", requires = "space")]
        org: Option<String>,
        /// The space's GUID: the argument is then a name in this space.
        #[arg(long, value_name = "SPACE", requires = "org")]
        space: Option<String>,
        /// Print the list as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print an instance's dashboard link (the `dashboard_url` its user got), or with
    /// --rotate replace it: the old link and the sessions it opened stop working.
    DashboardLink {
        /// The broker's configuration file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The instance id.
        #[arg(value_name = "INSTANCE_ID")]
        instance: String,
        /// Make a new link, invalidating the current one.
        #[arg(long)]
        rotate: bool,
    },
    /// Look at the snapshots of the broker's state (`[state_backup]`).
    StateBackup {
        #[command(subcommand)]
        command: StateBackupCommand,
    },
    /// Restore the broker's records from a state snapshot into an empty etcd, after the loss
    /// of etcd and the cells, then re-create every instance from its own archive (a worker
    /// runs until they are done) and print what each recovered to. Exit 0: all recovered;
    /// 1: some not (named); 2: refused, nothing written.
    DisasterRecovery {
        /// The broker's configuration file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The snapshot's revision (`state-backup list`); default: the newest.
        #[arg(long, value_name = "REV")]
        snapshot: Option<i64>,
        /// Print the plan and write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Write the records and stop, without re-creating the instances (a broker started
        /// afterwards does it, without the per-instance report).
        #[arg(long, conflicts_with = "dry_run")]
        records_only: bool,
        /// Print the plan or the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the cell agent: start and supervise the Patroni nodes placed on this machine.
    Cell {
        /// The cell's configuration file (TOML).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Run everything on this machine (etcd, cell agents, the broker) until Ctrl-C.
    Dev {
        /// Directory of everything (default: a fresh one under /tmp, removed on exit).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Number of cell agents (zones z1..zN).
        #[arg(long, default_value_t = 3)]
        cells: usize,
        /// Provision a two-node instance through the OSB API, bind it and print a psql
        /// command.
        #[arg(long)]
        demo: bool,
        /// The walarchive executable (default: next to this one).
        #[arg(long, value_name = "PATH", env = "WALARCHIVE_BIN")]
        walarchive: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum StateBackupCommand {
    /// Open the newest snapshot, decode every record, report its age and its lag behind etcd.
    Verify {
        /// The broker's configuration file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the snapshots, oldest first.
    List {
        /// The broker's configuration file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Print the list as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only for a person: a log file, journald or a test's capture gets plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Selftest { config } => {
            return match selftest(&config) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("walarchive-broker: error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Serve { config } => serve(&config),
        Command::Cell { config } => cell(&config),
        Command::RotateSecrets { config } => rotate_secrets(&config),
        Command::StateBackup { command } => state_backup(command),
        Command::DashboardLink {
            config,
            instance,
            rotate,
        } => dashboard_link(&config, &instance, rotate),
        Command::RestorableWindow {
            config,
            instance,
            org,
            space,
            json,
        } => {
            let selector = match (org, space) {
                (Some(org), Some(space)) => Selector::Name {
                    org,
                    space,
                    name: instance,
                },
                _ => Selector::Id(instance),
            };
            restorable_window(&config, &selector, json)
        }
        Command::DisasterRecovery {
            config,
            snapshot,
            dry_run,
            records_only,
            json,
        } => disaster_recovery(&config, snapshot, dry_run || records_only, dry_run, json),
        Command::Dev {
            dir,
            cells,
            demo,
            walarchive,
        } => dev(
            DevOptions {
                dir,
                cells,
                walarchive,
                ..DevOptions::default()
            },
            demo,
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("walarchive-broker: error: {e:#}");
            // A refused disaster recovery wrote nothing: 2, told apart from a failure.
            match e.downcast_ref::<RecoverError>() {
                Some(r) if r.is_refusal() => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// How many threads a subcommand's runtime has: a server many; a one-shot command (or one
/// whose children are tied to its thread) one.
enum Threads {
    Multi,
    Current,
}

fn runtime(threads: Threads) -> anyhow::Result<tokio::runtime::Runtime> {
    match threads {
        Threads::Multi => tokio::runtime::Builder::new_multi_thread(),
        Threads::Current => tokio::runtime::Builder::new_current_thread(),
    }
    .enable_all()
    .build()
    .context("start the async runtime")
}

/// The broker's records, as configured (etcd and the keyring); called inside the runtime.
fn open_store(config: &BrokerConfig) -> anyhow::Result<Store> {
    let etcd = EtcdClient::from_config(&config.etcd)?;
    Ok(Store::new(
        etcd,
        config.etcd.prefix.clone(),
        config.keyring(),
    ))
}

fn serve(config_path: &std::path::Path) -> anyhow::Result<()> {
    let config = BrokerConfig::load(config_path)?;
    let runtime = runtime(Threads::Multi)?;
    runtime.block_on(async move {
        let store = open_store(&config)?;
        let listen = config.listen;
        let tls = match &config.tls {
            Some(files) => Some(
                walarchive_broker::tls::server_config(files, false)
                    .context("the OSB API's TLS certificate")?,
            ),
            None => None,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let binder = CellBinder::from_config(&config).context("the cells' clients")?;
        let binder = Arc::new(binder);
        let mut state = AppState::new(config, store.clone(), binder.clone());
        state.leader_wal = Some(binder.clone());
        state.cell_majors = Some(binder);
        let sampler = if state.config.stats.enabled {
            let stats = Stats::open(&state.config);
            state.stats = Some(stats.clone());
            Some(
                Sampler::new(state.config.clone(), store.clone(), stats)
                    .context("the sampler's cell clients")?,
            )
        } else {
            None
        };
        let backup = StateBackup::open(&state.config, store.clone())
            .context("open the state backup's store")?;
        let worker = Worker::new(state.config.clone(), store, state.provisioner.clone())
            .context("start the provisioning worker")?;
        let listener = walarchive_broker::tls::Incoming::bind(listen, tls)
            .await
            .with_context(|| format!("listen on {listen}"))?;
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let mut backup_stop = stop_rx.clone();
        let mut sampler_stop = stop_rx.clone();
        let sampler = sampler.map(|s| {
            tokio::spawn(s.run(async move {
                let _ = sampler_stop.changed().await;
            }))
        });
        let worker = tokio::spawn(worker.run(async move {
            let _ = stop_rx.changed().await;
        }));
        let backup = match backup {
            Some(b) => Some(tokio::spawn(b.run(
                state.state_changed.clone(),
                state.config.worker.poll_interval.0,
                async move {
                    let _ = backup_stop.changed().await;
                },
            ))),
            None => {
                tracing::warn!("no [state_backup]: the broker's state is not backed up; a lost etcd cannot be recovered");
                None
            }
        };
        tracing::info!(%listen, scheme, "serving the Open Service Broker API");
        let served = axum::serve(listener, app(state))
            .with_graceful_shutdown(shutdown())
            .await
            .context("serve the OSB API");
        // The worker stops between steps; an operation it was on resumes at the next start.
        let _ = stop_tx.send(true);
        if let Err(e) = worker.await {
            tracing::error!(error = %e, "the provisioning worker panicked");
        }
        if let Some(Err(e)) = match sampler {
            Some(s) => Some(s.await),
            None => None,
        } {
            tracing::error!(error = %e, "the sampler panicked");
        }
        if let Some(Err(e)) = match backup {
            Some(b) => Some(b.await),
            None => None,
        } {
            tracing::error!(error = %e, "the state backup panicked");
        }
        served
    })
}

fn rotate_secrets(config_path: &std::path::Path) -> anyhow::Result<()> {
    let config = BrokerConfig::load(config_path)?;
    let runtime = runtime(Threads::Current)?;
    runtime.block_on(async move {
        let etcd = EtcdClient::from_config(&config.etcd)?;
        let keyring = config.keyring();
        let store = Store::new(etcd, config.etcd.prefix.clone(), keyring.clone());
        let done = store.reseal_all().await?;
        println!(
            "every secret is sealed with key {}: {} sealed again from an older key, {} were in clear, {} already were",
            keyring.current_id(),
            done.rekeyed,
            done.were_clear,
            done.current
        );
        Ok(())
    })
}

/// `selftest`: its steps print their own lines; `Ok(false)` when one failed.
fn selftest(config_path: &std::path::Path) -> anyhow::Result<bool> {
    let config = BrokerConfig::load(config_path)?;
    let runtime = runtime(Threads::Multi)?;
    runtime
        .block_on(walarchive_broker::selftest::run(config, shutdown()))
        .map_err(anyhow::Error::msg)
        .context("selftest")
}

fn restorable_window(
    config_path: &std::path::Path,
    selector: &Selector,
    json: bool,
) -> anyhow::Result<()> {
    let config = BrokerConfig::load(config_path)?;
    let runtime = runtime(Threads::Current)?;
    runtime.block_on(async move {
        let store = open_store(&config)?;
        let rows = walarchive_broker::admin::restorable_windows(&config, &store, selector).await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&rows)?);
        } else {
            print!("{}", walarchive_broker::admin::table(&rows));
        }
        Ok(())
    })
}

fn dashboard_link(config_path: &std::path::Path, id: &str, rotate: bool) -> anyhow::Result<()> {
    let config = BrokerConfig::load(config_path)?;
    let runtime = runtime(Threads::Current)?;
    runtime.block_on(async move {
        let store = open_store(&config)?;
        match walarchive_broker::links::rotate(&config, &store, id, rotate).await? {
            Some(url) => {
                println!("{url}");
                Ok(())
            }
            None => anyhow::bail!("no live instance {id:?}"),
        }
    })
}

fn state_backup(command: StateBackupCommand) -> anyhow::Result<()> {
    let (StateBackupCommand::Verify { config, json } | StateBackupCommand::List { config, json }) =
        &command;
    let json = *json;
    let config = BrokerConfig::load(config)?;
    let runtime = runtime(Threads::Current)?;
    runtime.block_on(async move {
        let store = open_store(&config)?;
        let backup = StateBackup::open(&config, store)?
            .context("no [state_backup] in the configuration")?;
        match command {
            StateBackupCommand::List { .. } => {
                let listed = backup.list().await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&listed)?);
                } else {
                    for l in &listed {
                        println!("{}  revision {}  {} bytes  stored {}", l.name, l.revision, l.size, l.stored_at.to_rfc3339());
                    }
                }
            }
            StateBackupCommand::Verify { .. } => {
                let v = backup.verify().await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    let kinds: Vec<String> =
                        v.records.iter().map(|(k, n)| format!("{k} {n}")).collect();
                    println!(
                        "{}: revision {}, written {} ({} s ago); {} records decode ({}); etcd is at revision {}, {} keys changed since",
                        v.name,
                        v.revision,
                        v.written_at.to_rfc3339(),
                        v.age_seconds,
                        v.records.values().sum::<usize>(),
                        kinds.join(", "),
                        v.etcd_revision,
                        v.changed_keys
                    );
                }
            }
        }
        Ok(())
    })
}

fn disaster_recovery(
    config_path: &std::path::Path,
    snapshot: Option<i64>,
    stop_early: bool,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<()> {
    let config = BrokerConfig::load(config_path)?;
    let runtime = runtime(Threads::Multi)?;
    runtime.block_on(async move {
        let store = open_store(&config)?;
        let recovery = Recovery::new(&config, store)?;
        let report = recovery.run(snapshot, dry_run).await?;
        if stop_early {
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else if dry_run {
                print!("{}", report.plan_text());
            } else {
                print!("{}", report.done_text());
            }
            return Ok(());
        }
        if !json {
            print!("{}", report.done_text());
        }
        let outcomes = recovery.wait(&report).await?;
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &serde_json::json!({"report": report, "outcomes": outcomes})
                )?
            );
        } else {
            print!("{}", outcomes_text(&outcomes));
        }
        let failed: Vec<&str> = outcomes
            .iter()
            .filter(|o| !o.ok)
            .map(|o| o.id.as_str())
            .collect();
        if !failed.is_empty() {
            anyhow::bail!("not recovered: {}", failed.join(", "));
        }
        Ok(())
    })
}

fn dev(opts: DevOptions, demo: bool) -> anyhow::Result<()> {
    // A current-thread runtime: the children's death signal is tied to the thread that
    // started them, which must live as long as the process (see walarchive_broker::dev).
    let runtime = runtime(Threads::Current)?;
    runtime.block_on(async move {
        let mut dev = Dev::prepare(&opts)?;
        eprintln!(
            "walarchive-broker dev: starting etcd, {} cell agents and the broker in {}",
            opts.cells,
            dev.dir.display()
        );
        let outcome = tokio::select! {
            r = async {
                dev.start().await?;
                println!("{}", dev.banner());
                if demo {
                    walarchive_broker::dev::demo(&dev).await?;
                }
                Ok::<bool, anyhow::Error>(true)
            } => r,
            _ = shutdown() => Ok(false),
        };
        let outcome = match outcome {
            Ok(true) => {
                shutdown().await;
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(e) => Err(e),
        };
        eprintln!("walarchive-broker dev: stopping the broker, the cells (PostgreSQL) and etcd");
        dev.stop().await;
        outcome
    })
}

fn cell(config_path: &std::path::Path) -> anyhow::Result<()> {
    let runtime = runtime(Threads::Multi)?;
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

#[cfg(test)]
mod tests {
    /// clap's own consistency checks of the definition (conflicts, defaults, names).
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
