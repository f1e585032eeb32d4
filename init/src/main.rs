//! `outrigger-init`: see the library documentation. This file only wires argv, logging and exit
//! codes.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use outrigger_init::config::Config;
use outrigger_init::exec::{Executor, RealExecutor, StubExecutor};
use outrigger_init::flags::{self, Cli, Invocation, ProcessEnv, Settings};
use outrigger_init::host::RealHost;
use outrigger_init::run::{self, Options};
use tracing_subscriber::EnvFilter;

/// The level of the `default` scope of Istio's `--log_output_level` (`default:info,ads:debug`).
fn log_level(spec: &str) -> &'static str {
    let level = spec
        .split(',')
        .find_map(|part| match part.split_once(':') {
            Some(("default", level)) => Some(level),
            Some(_) => None,
            None => Some(part),
        })
        .unwrap_or("info");
    match level {
        "none" => "off",
        "fatal" | "error" => "error",
        "warn" | "warning" => "warn",
        "debug" => "debug",
        _ => "info",
    }
}

fn init_logging(s: &Settings) {
    let filter = EnvFilter::try_from_env("OUTRIGGER_LOG")
        .unwrap_or_else(|_| EnvFilter::new(log_level(&s.log_output_level)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    if s.log_as_json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn fail(json: bool, code: u8, message: impl std::fmt::Display) -> ExitCode {
    if json {
        tracing::error!("{message}");
    } else {
        eprintln!("outrigger-init: error: {message}");
    }
    ExitCode::from(code)
}

fn main() -> ExitCode {
    let argv = match flags::invocation(std::env::args().collect()) {
        Invocation::IstioIptables(argv) => argv,
        Invocation::UnsupportedPilotAgentCommand(cmd) => {
            eprintln!(
                "outrigger-init: error: as pilot-agent only the 'istio-iptables' command is provided (got '{cmd}')"
            );
            return ExitCode::from(1);
        }
    };
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // Help and version exit 0; usage errors exit 1 as cobra does upstream.
            return ExitCode::from(if e.use_stderr() { 1 } else { 0 });
        }
    };
    let settings = Settings::resolve(cli, &ProcessEnv);
    init_logging(&settings);
    let json = settings.log_as_json;

    let built = match Config::build(&settings, &RealHost) {
        Ok(built) => built,
        Err(e) => return fail(json, 1, e),
    };
    for warning in &built.warnings {
        tracing::warn!("{warning}");
    }
    let cfg = built.config;
    tracing::info!(config = ?cfg, dry_run = settings.dry_run, "running with config");

    let opts = Options::from_settings(&settings, &cfg);

    let mut stub = StubExecutor::default();
    let mut real = RealExecutor::default();
    if settings.cni_mode && !settings.network_namespace.is_empty() {
        // Pod-scoped xtables lock, so that we never wait on the node's lock.
        real.env.push((
            "XTABLES_LOCKFILE".into(),
            settings.network_namespace.clone(),
        ));
    }
    let exec: &mut dyn Executor = if settings.dry_run {
        &mut stub
    } else {
        &mut real
    };
    let result = run::program(&cfg, &opts, exec);

    if settings.dry_run {
        let mut record = stub.record.join("\n");
        record.push('\n');
        print!("{record}");
        if let Some(path) = &settings.dry_run_file_path
            && let Err(e) = std::fs::write(path, &record)
        {
            return fail(json, 1, format!("writing DRY_RUN_FILE_PATH {path}: {e}"));
        }
    }
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => fail(json, e.exit_code() as u8, e),
    }
}
