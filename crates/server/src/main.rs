//! `flashmart`: one binary for every role and tool.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use flashmart_domain::Role;
use flashmart_server::config::Config;
use flashmart_server::{Roles, commands, logging, wiring};
use mimalloc::MiMalloc;

/// glibc's allocator spent a tenth of the server's time under reservation load (arena locks,
/// consolidation); mimalloc's thread-local free lists do not. Built without its transparent huge
/// pages (feature `no_thp`): with them every first touch of a 2 MiB region zeroes all of it, which
/// was a fifth of the workers' time in the contest sale (docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "flashmart",
    version,
    about = "E-commerce backend with a flash-sale engine"
)]
struct Cli {
    /// Configuration file (default: ./flashmart.toml when it exists).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve: every role in this process by default, on embedded storage unless database.url
    /// and redis.url (or redis.cluster_nodes) are set.
    Serve {
        /// The roles this process runs, comma-separated: api (the API), worker (storing
        /// reservations from the sales' logs, refunds), scheduler (scheduled sales, expiry, the
        /// payment closer; one instance at a time). Split only in scaled mode.
        #[arg(long, env = "FLASHMART_ROLE", default_value = "api,worker,scheduler")]
        role: Roles,
    },
    /// Seed demo accounts, then serve.
    Demo {
        /// Seed and exit without serving.
        #[arg(long)]
        seed_only: bool,
    },
    /// Bring the database schema up to date and exit.
    Migrate,
    /// Scaled mode: store what Redis decided and no instance stored, compare every live sale
    /// between Redis and the records, and mark sales Redis lost for rebuilding.
    Reconcile,
    /// Embedded mode: write a backup of data_dir (databases, the reservation outbox, uploads,
    /// generated keys) to FILE, consistent while the server runs.
    Backup {
        /// The archive to write (must not exist).
        #[arg(long)]
        to: std::path::PathBuf,
    },
    /// Embedded mode: restore a backup into data_dir, which must be empty (or --force) and not
    /// in use by a server.
    Restore {
        /// The archive `flashmart backup` wrote.
        #[arg(long)]
        from: std::path::PathBuf,
        /// Replace what data_dir holds.
        #[arg(long)]
        force: bool,
    },
    /// Administrative tasks.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Load a running server and check the flash-sale invariants from its own view.
    Stampede {
        #[command(subcommand)]
        scenario: flashmart_stampede::Scenario,
    },
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Create an account with any role.
    CreateUser {
        #[arg(long)]
        email: String,
        #[arg(long)]
        password: String,
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Display name (default: the part of the email before @).
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration as TOML, secrets shown as ***.
    Print,
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
        .map_err(|e: flashmart_domain::RoleError| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve { role: Roles::ALL });
    if let Command::Stampede { scenario } = &command {
        return stampede(scenario);
    }
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("flashmart: {err}");
            return ExitCode::from(2);
        }
    };
    if let Command::Config {
        command: ConfigCommand::Print,
    } = command
    {
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("flashmart: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    // Inside the runtime: the OpenTelemetry exporter, when there is one, runs on it.
    let telemetry = {
        let _runtime = runtime.enter();
        match logging::init(&config.log, &config.otel) {
            Ok(telemetry) => telemetry,
            Err(err) => {
                eprintln!("flashmart: {err:#}");
                return ExitCode::FAILURE;
            }
        }
    };
    let result = runtime.block_on(run(command, &config, cli.config.as_deref()));
    if let Some(telemetry) = telemetry {
        // Whatever spans are still queued go out before the process ends.
        let _runtime = runtime.enter();
        telemetry.shutdown();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("flashmart: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The load generator needs no configuration of its own: it talks to a server over HTTP.
fn stampede(scenario: &flashmart_stampede::Scenario) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("flashmart stampede: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(flashmart_stampede::run(scenario)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(3),
        Err(err) => {
            eprintln!("flashmart stampede: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    command: Command,
    config: &Config,
    config_path: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    match command {
        Command::Serve { role } => wiring::serve(config, role, config_path).await,
        Command::Demo { seed_only } => {
            commands::seed_demo(config).await?;
            if seed_only {
                Ok(())
            } else {
                wiring::serve(config, Roles::ALL, config_path).await
            }
        }
        Command::Migrate => commands::migrate(config).await,
        Command::Reconcile => commands::reconcile(config).await,
        Command::Backup { to } => flashmart_server::backup::backup(config, &to).await,
        Command::Restore { from, force } => flashmart_server::backup::restore(config, &from, force),
        Command::Admin {
            command:
                AdminCommand::CreateUser {
                    email,
                    password,
                    role,
                    name,
                },
        } => {
            let user =
                commands::create_user(config, &email, password, name.as_deref(), role).await?;
            println!("created {} {} ({})", user.role, user.email, user.id);
            Ok(())
        }
        Command::Config { .. } | Command::Stampede { .. } => Ok(()),
    }
}
