//! `outrigger-proxy`: for now, offline validation of Envoy configuration
//! (`outrigger-proxy validate FILE`, or Envoy's `--mode validate -c FILE`).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use outrigger_proxy::{dump, validate};

#[derive(Parser)]
#[command(
    name = "outrigger-proxy",
    version,
    about = "Envoy-compatible sidecar proxy for Istio",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Envoy compatibility: `--mode validate` checks the config given with -c and exits.
    #[arg(long, value_name = "serve|validate")]
    mode: Option<String>,
    /// Envoy compatibility: the bootstrap or config dump file.
    #[arg(short = 'c', long = "config-path", value_name = "FILE")]
    config_path: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load a config dump (admin /config_dump output) or a bootstrap, JSON or YAML, and report
    /// which resources would be accepted, rejected (with the reason) or partly ignored.
    /// Exit 0 if nothing is rejected, 1 if something is, 2 if the file cannot be read.
    Validate {
        file: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn run_validate(file: &std::path::Path, json: bool) -> ExitCode {
    let dump = match dump::load(file) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("outrigger-proxy: error: {e}");
            return ExitCode::from(2);
        }
    };
    let report = validate::validate(&dump);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&validate::to_json(&report)).unwrap_or_default()
        );
    } else {
        print!("{}", validate::render(&report));
    }
    if report.rejected.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match (cli.cmd, cli.mode.as_deref(), cli.config_path) {
        (Some(Cmd::Validate { file, json }), _, _) => run_validate(&file, json),
        (None, Some("validate"), Some(file)) => run_validate(&file, false),
        (None, Some("validate"), None) => {
            eprintln!("outrigger-proxy: error: --mode validate needs -c FILE");
            ExitCode::from(2)
        }
        _ => {
            eprintln!(
                "outrigger-proxy: error: serving traffic is not implemented yet; use `outrigger-proxy validate FILE`"
            );
            ExitCode::from(2)
        }
    }
}
