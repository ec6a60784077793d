//! Command-line parsing and dispatch.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(name = "lifeboat", version, about = "Self-hosted cross-region disaster recovery", long_about = None)]
pub struct Cli {
    /// Log filter (RUST_LOG syntax), e.g. "info" or "lifeboat_agent=debug".
    #[arg(long, global = true, env = "LIFEBOAT_LOG", default_value = "info")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the controller (the witness): health quorum, failover, DNS, HTTP API.
    Controller {
        #[arg(long, short)]
        config: PathBuf,
        /// Grant leases and start moves at once instead of first hearing from every
        /// region's agent (with no state on disk: start at the config's initial active
        /// region). Only when an agent is gone for good and its region known dead.
        #[arg(long)]
        no_wait_for_agents: bool,
        /// `[controller] store = "etcd"`: which of `[[controller.members]]` this is
        /// (its API and DNS addresses).
        #[arg(long)]
        member: Option<String>,
    },
    /// Run one region's agent.
    Agent {
        #[arg(long, short)]
        config: PathBuf,
        /// The region this agent runs in (a name from [regions]).
        #[arg(long, short)]
        region: String,
    },
    /// Show the deployment's state: regions, health, lease, epoch.
    Status {
        #[arg(long, short)]
        config: PathBuf,
        /// Machine-readable JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Fail over to a region now (unplanned: the active region is fenced, not waited for).
    Failover {
        #[arg(long, short)]
        config: PathBuf,
        /// The region to promote.
        #[arg(long)]
        to: String,
        /// Promote even if the target's data roles are not ready (lag over the limit).
        #[arg(long)]
        force: bool,
        /// Return at once instead of waiting for the new region to report active.
        #[arg(long)]
        no_wait: bool,
    },
    /// Planned switchover: fence the active region, wait until the target has caught up
    /// (zero data loss), then promote it.
    Switchover {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        to: String,
        #[arg(long)]
        no_wait: bool,
    },
    /// Print the controller's journal (every step, with timestamps).
    Journal {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long, default_value_t = 0)]
        since: u64,
        #[arg(long)]
        json: bool,
    },
    /// Object replication: pending and failed objects, retries, backfill.
    Objects {
        #[command(subcommand)]
        command: ObjectsCommand,
    },
    /// Database orchestration: bootstrap a region's server as the config describes it.
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
    /// Run a disaster-recovery drill against a running deployment and report RTO / RPO.
    Drill {
        #[arg(long, short)]
        config: PathBuf,
        #[command(flatten)]
        drill: DrillArgs,
    },
    /// Start a complete two-region deployment on this machine (loopback) and keep it
    /// up until Ctrl-C; with --drill, run a drill against it and exit.
    Demo(crate::demo::DemoArgs),
    /// The sample application (the demo runs it as each region's pilot-light service).
    #[command(name = "sample-app")]
    SampleApp(lifeboat_sample_app::Options),
    /// Internal: the region guard an agent starts and feeds (fences the region if the
    /// agent dies or freezes). Not for operators.
    #[command(name = "region-guard", hide = true)]
    RegionGuard {
        #[arg(long)]
        region: String,
        #[arg(long)]
        state_dir: PathBuf,
    },
    /// Check a config file without starting anything.
    Validate {
        /// The config file (also accepted as --config).
        #[arg(long, short)]
        config: Option<PathBuf>,
        file: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ObjectsCommand {
    /// Counts and lists of pending and failed objects of a region.
    Status {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long, short)]
        region: String,
        #[arg(long)]
        json: bool,
    },
    /// Retry failed (and backing-off) objects now.
    Retry {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long, short)]
        region: String,
        /// Only keys starting with this prefix.
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Copy every existing object of a region that the other regions lack.
    Backfill {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long, short)]
        region: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum DbCommand {
    /// Create the region's server: a primary in the initially active region, a replica
    /// of it elsewhere (the primary must be up).
    Bootstrap {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long, short)]
        region: String,
    },
}

/// `lifeboat drill --schedule`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrillSchedule {
    Random,
}

/// The drill's options, shared by `lifeboat drill` and `lifeboat demo --drill`.
#[derive(clap::Args, Debug, Clone)]
pub struct DrillArgs {
    /// region-outage (the default), partition, db-crash, app-crash, controller-kill,
    /// controller-pause, agent-kill or agent-pause.
    #[arg(long)]
    pub scenario: Option<lifeboat_drill::Scenario>,
    /// Runs of --scenario (default 1).
    #[arg(long)]
    pub runs: Option<u32>,
    /// How long each fault lasts before it is healed: seconds, or MIN-MAX to draw each
    /// length from. Default: 10 for lifeboat's own processes, 1-45 for a random
    /// schedule; the region scenarios otherwise last until another region is active.
    #[arg(long, value_name = "SECONDS|MIN-MAX")]
    pub fault_seconds: Option<lifeboat_drill::schedule::FaultLength>,
    /// `random`: --faults faults drawn from every scenario the config sets up, each
    /// healed and followed by a wait for the deployment to converge.
    #[arg(long)]
    pub schedule: Option<DrillSchedule>,
    /// The random schedule's seed (printed; the same seed replays the same faults).
    #[arg(long)]
    pub seed: Option<u64>,
    /// How many faults the random schedule draws (default 10).
    #[arg(long)]
    pub faults: Option<u32>,
    /// Write the JSON report to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the HTML report (with an SVG timeline) to this file.
    #[arg(long)]
    pub html: Option<PathBuf>,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
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

async fn dispatch(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Controller {
            config,
            no_wait_for_agents,
            member,
        } => crate::run::controller(&config, no_wait_for_agents, member.as_deref()).await,
        Command::Agent { config, region } => crate::run::agent(&config, &region).await,
        Command::Status { config, json } => crate::ops::status(&config, json).await,
        Command::Failover {
            config,
            to,
            force,
            no_wait,
        } => crate::ops::move_to(&config, &to, force, false, no_wait).await,
        Command::Switchover {
            config,
            to,
            no_wait,
        } => crate::ops::move_to(&config, &to, false, true, no_wait).await,
        Command::Journal {
            config,
            since,
            json,
        } => crate::ops::journal(&config, since, json).await,
        Command::Objects { command } => crate::extra::objects(command).await,
        Command::Db { command } => crate::extra::db(command).await,
        Command::Drill { config, drill } => crate::extra::drill(&config, drill).await,
        Command::Demo(args) => crate::demo::run(args).await,
        Command::SampleApp(opts) => crate::extra::sample_app(opts).await,
        Command::RegionGuard { region, state_dir } => {
            // Blocking by design (threads and timeouts, no runtime in the fence path).
            tokio::task::spawn_blocking(move || {
                lifeboat_agent::guard::run_process(&region, &state_dir)
            })
            .await??;
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { config, file } => match config.or(file) {
            Some(path) => crate::ops::validate(&path),
            None => anyhow::bail!("validate needs a config file: lifeboat validate FILE"),
        },
    }
}
