//! Command-line parsing and dispatch: the `lifeboat` command's subcommands, each run
//! by its module under [`crate::cmd`] (which also owns its flags).

use crate::cmd;
use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(name = "lifeboat", version, about = "Self-hosted cross-region disaster recovery", long_about = None)]
pub struct Cli {
    /// Log filter (RUST_LOG syntax), e.g. "info" or "lifeboat_agent=debug".
    #[arg(long, global = true, env = "LIFEBOAT_LOG", default_value = "info")]
    pub log: String,
    /// Log lines as text for people, or one JSON object per line for log shippers.
    #[arg(long, global = true, env = "LIFEBOAT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the controller (the witness): health quorum, failover, DNS, HTTP API.
    Controller(cmd::controller::ControllerArgs),
    /// Run one region's agent.
    Agent(cmd::agent::AgentArgs),
    /// Show the deployment's state: regions, health, lease, epoch.
    Status(cmd::status::StatusArgs),
    /// Fail over to a region now (unplanned: the active region is fenced, not waited for).
    Failover(cmd::moves::FailoverArgs),
    /// Planned switchover: fence the active region, wait until the target has caught up
    /// (zero data loss), then promote it.
    Switchover(cmd::moves::SwitchoverArgs),
    /// Print the controller's journal (every step, with timestamps).
    Journal(cmd::journal::JournalArgs),
    /// Object replication: pending and failed objects, retries, backfill.
    Objects {
        #[command(subcommand)]
        command: cmd::objects::ObjectsCommand,
    },
    /// Global tables: run a region's DynamoDB-compatible table server; list conflicts.
    #[command(alias = "table")]
    Tables {
        #[command(subcommand)]
        command: cmd::tables::TablesCommand,
    },
    /// Database orchestration: bootstrap a region's server as the config describes it.
    Db {
        #[command(subcommand)]
        command: cmd::db::DbCommand,
    },
    /// Run a disaster-recovery drill against a running deployment and report RTO / RPO.
    Drill(cmd::drill::DrillCommandArgs),
    /// Start a complete two-region deployment on this machine (loopback) and keep it
    /// up until Ctrl-C; with --drill, run a drill against it and exit.
    Demo(cmd::demo::DemoArgs),
    /// The sample application (the demo runs it as each region's pilot-light service).
    #[command(name = "sample-app")]
    SampleApp(lifeboat_sample_app::Options),
    /// Internal: the region guard an agent starts and feeds (fences the region if the
    /// agent dies or freezes). Not for operators.
    #[command(name = "region-guard", hide = true)]
    RegionGuard(cmd::region_guard::RegionGuardArgs),
    /// Check a config file without starting anything.
    Validate(cmd::validate::ValidateArgs),
}

/// How log lines are written (to stderr).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One line of text per event.
    Text,
    /// One JSON object per event: timestamp, level, target, fields, spans.
    Json,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // A filter that does not parse is refused: silently logging at another level would
    // hide what the operator asked to see.
    let filter = match tracing_subscriber::EnvFilter::try_new(&cli.log) {
        Ok(filter) => filter,
        Err(e) => {
            eprintln!(
                "error: --log / LIFEBOAT_LOG {:?} is not a log filter: {e}",
                cli.log
            );
            return ExitCode::from(2);
        }
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Controller(args) => cmd::controller::run(args).await,
        Command::Agent(args) => cmd::agent::run(args).await,
        Command::Status(args) => cmd::status::run(args).await,
        Command::Failover(args) => cmd::moves::failover(args).await,
        Command::Switchover(args) => cmd::moves::switchover(args).await,
        Command::Journal(args) => cmd::journal::run(args).await,
        Command::Objects { command } => cmd::objects::run(command).await,
        Command::Tables { command } => cmd::tables::run(command).await,
        Command::Db { command } => cmd::db::run(command).await,
        Command::Drill(args) => cmd::drill::run(args).await,
        Command::Demo(args) => cmd::demo::run(args).await,
        Command::SampleApp(opts) => cmd::sample_app::run(opts).await,
        Command::RegionGuard(args) => cmd::region_guard::run(args).await,
        Command::Validate(args) => cmd::validate::run(args),
    }
}
