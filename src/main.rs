//! The `p11vault` command: configuration, tracing, opening the store and the token, serving
//! HTTPS, and a graceful shutdown on SIGTERM or SIGINT.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use p11vault::auth::Authenticator;
use p11vault::clock::{Clock, FileOffsetClock, SystemClock};
use p11vault::config::{AdminArgs, Config, ServeArgs, TokenSource};
use p11vault::keys::KeyService;
use p11vault::{AppState, provision, tls};

/// How often the service purges keys whose retention ended and settles abandoned intents.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(60);

/// How long in-flight requests get to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

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
}

#[derive(Subcommand)]
enum SettingsCommand {
    /// Switch purge protection on. It can never be switched off again, by anyone.
    EnablePurgeProtection(AdminArgs),
    /// Show the retention period and whether purge protection is on.
    Show(AdminArgs),
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
        Command::Settings(cmd) => settings(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("p11vault: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: &ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let cfg = Config::load(args)?;
    p11vault::failpoint::arm(cfg.test_failpoints.clone());
    if let TokenSource::Embedded { .. } = cfg.token {
        let conf = provision::prepare_embedded_softhsm(&cfg.data_dir)?;
        point_softhsm_at(&conf);
    }

    let listener = TcpListener::bind(cfg.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
    let bound = listener.local_addr()?;
    let public_url = cfg
        .public_url
        .clone()
        .map(|u| u.trim_end_matches('/').to_owned())
        .unwrap_or_else(|| default_public_url(bound));
    let ready = provision::open(&cfg, &tls_hosts(bound, &public_url))?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let auth = Arc::new(Authenticator::from_rows(&ready.store.principals()?));
        let (clock, maintenance_every): (Arc<dyn Clock>, Duration) = match &cfg.test_clock_file {
            Some(path) => (Arc::new(FileOffsetClock::new(path.clone())), Duration::from_millis(500)),
            None => (Arc::new(SystemClock), MAINTENANCE_EVERY),
        };
        let keys = KeyService::new(ready.store, Arc::new(ready.hsm), clock, ready.retention);
        let report = keys.reconcile().await?;
        tracing::info!(?report, "reconciled the token with the database");
        let mechanisms: Vec<String> = keys.hsm().mechanisms().iter().map(|m| m.to_string()).collect();
        tracing::info!(mechanisms = %mechanisms.join(" "), "mechanisms the token offers");
        keys.spawn_maintenance(maintenance_every);
        let authority = cfg
            .challenge_authority
            .clone()
            .unwrap_or_else(|| format!("{public_url}/p11vault"));
        let state = AppState {
            keys,
            auth,
            public_url: public_url.as_str().into(),
            challenge: AppState::challenge_for(&authority, &cfg.challenge_resource),
            max_body_bytes: cfg.max_body_bytes,
        };
        let tls_config = axum_server::tls_rustls::RustlsConfig::from_config(tls::server_config(&ready.tls)?);
        let handle = axum_server::Handle::new();
        // Installed before the service says it is ready, so an early SIGTERM is never met by
        // the default action (immediate death).
        let signals = ShutdownSignals::install()?;
        tokio::spawn(signals.shutdown(handle.clone()));
        listener.set_nonblocking(true)?;
        // TCP_NODELAY: a response goes out as more than one TLS record; with Nagle's algorithm
        // the second waits for the client's delayed ACK (tens of milliseconds on loopback).
        let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(tls_config)
            .acceptor(axum_server::accept::NoDelayAcceptor::new());
        let server = axum_server::from_tcp(listener)?
            .acceptor(acceptor)
            .handle(handle);
        if ready.admin_token_created {
            tracing::info!(file = %cfg.data_dir.join("admin.token").display(), "created the administrator's bearer token");
        }
        println!("p11vault listening on {public_url}");
        std::io::stdout().flush()?;
        server
            .serve(p11vault::app(state).into_make_service_with_connect_info::<SocketAddr>())
            .await?;
        tracing::info!("stopped");
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}

fn settings(cmd: SettingsCommand) -> Result<(), Box<dyn std::error::Error>> {
    let (args, enable) = match cmd {
        SettingsCommand::EnablePurgeProtection(args) => (args, true),
        SettingsCommand::Show(args) => (args, false),
    };
    let db = args.data_dir.join("p11vault.db");
    if !db.exists() {
        return Err(format!("no p11vault database at {}", db.display()).into());
    }
    let store = p11vault::store::Store::open(&db)?;
    if enable {
        store.enable_purge_protection()?;
        println!("purge protection is on; it can never be switched off");
    }
    println!(
        "retention_days={} purge_protection={}",
        store.meta("retention_days")?.unwrap_or_default(),
        store.purge_protection()?
    );
    Ok(())
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

fn default_public_url(bound: SocketAddr) -> String {
    match bound {
        SocketAddr::V4(a) if a.ip().is_unspecified() => format!("https://127.0.0.1:{}", a.port()),
        SocketAddr::V6(a) if a.ip().is_unspecified() => format!("https://[::1]:{}", a.port()),
        other => format!("https://{other}"),
    }
}

/// Names the generated certificate is valid for: loopback, the bound address, and the host
/// of the public URL.
fn tls_hosts(bound: SocketAddr, public_url: &str) -> Vec<String> {
    let mut hosts = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if !bound.ip().is_unspecified() {
        hosts.push(bound.ip().to_string());
    }
    let authority = public_url.trim_start_matches("https://");
    let host = if let Some(rest) = authority.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        authority.split(':').next().unwrap_or_default()
    };
    if !host.is_empty() {
        hosts.push(host.to_owned());
    }
    hosts.sort();
    hosts.dedup();
    hosts
}

/// SIGTERM and SIGINT, registered with the runtime.
struct ShutdownSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    async fn shutdown(mut self, handle: axum_server::Handle<SocketAddr>) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
        tracing::info!("shutting down: finishing in-flight requests");
        handle.graceful_shutdown(Some(SHUTDOWN_GRACE));
    }
}
