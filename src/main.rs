//! The `p11vault` command: parses the command line, sets up tracing, and hands each
//! subcommand to its handler (`p11vault::serve`, `p11vault::cli`). What needs `unsafe` stays
//! here: pointing SoftHSM2 at its configuration before any thread exists.

use std::path::Path;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use p11vault::cli::security_domain::SecurityDomainCommand;
use p11vault::cli::{
    self, AuditCommand, BackupCommand, KeyCommand, PrincipalCommand, RestoreCommand, RoleCommand,
    SettingsCommand,
};
use p11vault::config::{Config, ServeArgs, TokenSource};
use p11vault::provision;

#[derive(Parser)]
#[command(
    name = "p11vault",
    version,
    about = "An on-premises key service in the style of Azure Managed HSM"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (initialising the data dir on first start).
    Serve(ServeArgs),
    /// Service settings.
    #[command(subcommand)]
    Settings(SettingsCommand),
    /// Principals (users, applications) and their bearer tokens.
    #[command(subcommand)]
    Principal(PrincipalCommand),
    /// Role assignments, for bootstrapping and recovery (day-to-day: the RBAC API).
    #[command(subcommand)]
    Role(RoleCommand),
    /// The tamper-evident audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Keys, through the service's HTTPS API.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Full backups, through the service's HTTPS API (as the administrator by default).
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Full restores and selective key restores, through the service's HTTPS API.
    #[command(subcommand)]
    Restore(RestoreCommand),
    /// The Managed HSM security domain, with az's flags: activation (download), recovery
    /// (init-recovery, restore-blob, upload) and new wrapping keys (reshare).
    #[command(subcommand)]
    SecurityDomain(SecurityDomainCommand),
    /// Prepares an Azure CLI config dir for this service and prints the `export` lines that
    /// make `az login --identity --allow-no-subscriptions` sign in as a principal.
    AzSetup(cli::AzSetupArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("P11VAULT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Serve(args) => serve(&args),
        Command::Settings(cmd) => cli::settings(cmd),
        Command::Principal(cmd) => cli::principal(cmd),
        Command::Role(cmd) => cli::role(cmd),
        Command::Audit(cmd) => cli::audit(cmd),
        Command::Key(KeyCommand::Import(args)) => cli::key_import(&args),
        Command::Backup(cmd) => cli::backup(cmd),
        Command::Restore(cmd) => cli::restore(cmd),
        Command::SecurityDomain(cmd) => cli::security_domain::run(cmd),
        Command::AzSetup(args) => cli::az_setup(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("p11vault: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `p11vault serve`: the configuration, SoftHSM2's config file for the embedded token, then
/// [`p11vault::serve::run`].
fn serve(args: &ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let cfg = Config::load(args)?;
    p11vault::failpoint::arm(cfg.test_failpoints.clone());
    if let TokenSource::Embedded { .. } = cfg.token {
        let conf = provision::prepare_embedded_softhsm(&cfg.data_dir)?;
        point_softhsm_at(&conf);
    }
    p11vault::serve::run(cfg)
}

/// SoftHSM2 reads its configuration file from `SOFTHSM2_CONF` when the module initialises.
#[expect(
    unsafe_code,
    reason = "setting an environment variable is unsafe in Rust 2024"
)]
fn point_softhsm_at(conf: &Path) {
    // SAFETY: this runs in `main` before the tokio runtime or any other thread exists, so no
    // other thread can be reading the environment while it changes.
    unsafe { std::env::set_var("SOFTHSM2_CONF", conf) };
}
