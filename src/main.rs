//! The `walarchive` command.
//!
//! `main` stays thin: parse arguments, set up logging, run one command on a small tokio
//! runtime, and turn the outcome into an explicit exit status (see `exit`). Everything a
//! user or PostgreSQL can observe — status, the one-line error on stderr, log lines — is
//! decided here, never deep inside the libraries.
#![forbid(unsafe_code)]

mod cli;
mod commands;
mod exit;
mod progress;
mod report;
mod settings;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    // Decide up front whether this is wal-fetch: its failures, usage errors and panics
    // included, must exit above 125 so PostgreSQL aborts recovery instead of promoting.
    let is_fetch = std::env::args().skip(1).any(|a| a == "wal-fetch");
    let adjust = move |c: u8| if is_fetch { exit::for_fetch(c) } else { c };
    std::panic::set_hook(Box::new(move |info| {
        eprintln!("walarchive: internal error: {info}");
        std::process::exit(i32::from(adjust(exit::INTERNAL)));
    }));

    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                adjust(exit::USAGE)
            } else {
                exit::OK
            };
            let _ = e.print();
            return exit::code(code);
        }
    };
    init_logging(&cli);
    let command = cli.command.name();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("walarchive {command}: error: cannot start the runtime: {e}");
            return exit::code(adjust(exit::INTERNAL));
        }
    };
    match rt.block_on(commands::run(&cli)) {
        Ok(code) => exit::code(code),
        Err(e) => {
            let code = exit::exit_status(&e);
            if code == exit::NOT_FOUND
                && matches!(cli.command, Command::WalFetch { .. })
                && !exit::standby_waits(&e)
            {
                // PostgreSQL probes for files that may not exist: not an error.
                tracing::debug!("{e:#}");
            } else {
                let msg = one_line(&e);
                eprintln!("walarchive {command}: error: {msg}");
            }
            exit::code(adjust(code))
        }
    }
}

fn init_logging(cli: &Cli) {
    let default = match (cli.global.quiet, cli.global.verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        _ => "trace",
    };
    let filter = std::env::var("WALARCHIVE_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| {
            EnvFilter::new(format!(
                "warn,walarchive={default},walarchive_cli={default},walarchive_restore={default}"
            ))
        });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

/// The error and its causes on one line, each cause once: library errors already quote
/// their cause in their own message, so a cause whose text is already there is skipped.
fn one_line(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !msg.contains(&text) {
            if !msg.is_empty() {
                msg.push_str(": ");
            }
            msg.push_str(&text);
        }
    }
    msg.replace('\n', " ")
}
