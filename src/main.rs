//! The `p11vault` command: configuration, tracing, opening the store and the token, serving
//! HTTPS, and a graceful shutdown on SIGTERM or SIGINT.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use p11vault::access::AccessControl;
use p11vault::admin::DataDir;
use p11vault::audit::AuditLog;
use p11vault::auth::oidc::{JwksSource, OidcVerifier};
use p11vault::backup::location::DirLocation;
use p11vault::backup::{BackupSettings, Backups};
use p11vault::client::Client;
use p11vault::clock::{Clock, FileOffsetClock, SystemClock};
use p11vault::config::{AdminArgs, Config, ServeArgs, TokenSource};
use p11vault::keys::KeyService;
use p11vault::{AppState, provision, tls};

/// How often the service purges keys whose retention ended and settles abandoned intents.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(60);

/// How often a JWKS fetched from a URL is fetched again (the issuer's key rollover).
const JWKS_REFRESH: Duration = Duration::from_secs(600);

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
}

/// How the CLI reaches the service over HTTPS.
#[derive(Args)]
struct ServiceArgs {
    /// The service's URL.
    #[arg(long, env = "P11VAULT_URL", default_value = "https://127.0.0.1:8443")]
    url: String,
    /// A file holding the bearer token of the principal to act as (default: the data dir's
    /// admin.token).
    #[arg(long, env = "P11VAULT_TOKEN_FILE")]
    token_file: Option<std::path::PathBuf>,
    /// The CA certificate to trust (default: the data dir's ca.pem).
    #[arg(long)]
    ca_file: Option<std::path::PathBuf>,
    #[arg(long, env = "P11VAULT_DATA_DIR", default_value = p11vault::config::DEFAULT_DATA_DIR)]
    data_dir: std::path::PathBuf,
}

impl ServiceArgs {
    fn client(&self) -> Result<Client, Box<dyn std::error::Error>> {
        let token = self
            .token_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("admin.token"));
        let ca = self
            .ca_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("ca.pem"));
        Client::new(&self.url, &ca, &token)
    }
}

/// The service, and whether to follow a job.
#[derive(Args)]
struct Connection {
    #[command(flatten)]
    service: ServiceArgs,
    /// Start the job and print its id without waiting for it.
    #[arg(long)]
    no_wait: bool,
}

#[derive(Subcommand)]
enum BackupCommand {
    /// Back up every key, version, attribute, tag, deletion state and role assignment into a
    /// new folder `mhsm-{name}-{YYYYMMDDHHmmSS}` of the container.
    Start {
        /// The storage container (the default location maps its name to a directory under the
        /// configured backup root).
        #[arg(long, default_value = "https://backup.local/backups")]
        storage_uri: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// A backup job's status (follows it until it ends, unless --no-wait).
    Status {
        job: String,
        #[command(flatten)]
        connection: Connection,
    },
}

#[derive(Subcommand)]
enum RestoreCommand {
    /// Restore from a backup folder: everything (replacing the current state, which needs a
    /// full backup of it from the last 30 minutes), or with --key one key whose name is free.
    Start {
        /// The folder URL a backup printed (`folder_url=`).
        #[arg(long)]
        folder_url: String,
        /// Restore only this key, with all its versions.
        #[arg(long)]
        key: Option<String>,
        #[command(flatten)]
        connection: Connection,
    },
    /// A restore job's status (follows it until it ends, unless --no-wait).
    Status {
        job: String,
        #[command(flatten)]
        connection: Connection,
    },
}

#[derive(Subcommand)]
enum PrincipalCommand {
    /// Register a principal and print its bearer token (shown this once only).
    Create {
        #[command(flatten)]
        admin: AdminArgs,
        #[arg(long)]
        name: String,
        /// The id to use instead of a new GUID: the object id (`oid`) of an OpenID Connect user.
        #[arg(long)]
        id: Option<String>,
        /// A role to assign (name or GUID); repeatable.
        #[arg(long)]
        role: Vec<String>,
        /// Where the roles apply: /, /keys or /keys/NAME.
        #[arg(long, default_value = "/")]
        scope: String,
    },
    /// List principals and their role assignments.
    List {
        #[command(flatten)]
        admin: AdminArgs,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Refuse the principal's requests from now on.
    Disable(PrincipalId),
    /// Accept the principal's requests again.
    Enable(PrincipalId),
    /// Replace the principal's token and print the new one; the old one stops working.
    Rotate(PrincipalId),
    /// Remove the principal and its role assignments.
    Delete(PrincipalId),
}

#[derive(Args)]
struct PrincipalId {
    #[command(flatten)]
    admin: AdminArgs,
    id: String,
}

#[derive(Subcommand)]
enum RoleCommand {
    /// Assign a role to a principal.
    Assign {
        #[command(flatten)]
        admin: AdminArgs,
        #[arg(long)]
        principal: String,
        /// Role name (`Managed HSM Crypto User`) or GUID.
        #[arg(long)]
        role: String,
        #[arg(long, default_value = "/")]
        scope: String,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain of the whole log against the head the database recorded.
    Verify(AdminArgs),
    /// Read records through the service, as a principal allowed to (Crypto Auditor).
    Show(Box<AuditShow>),
}

#[derive(Args)]
struct AuditShow {
    /// As a principal with the audit read action (Crypto Auditor).
    #[command(flatten)]
    service: ServiceArgs,
    /// From this time on: 2026-11-21, 2026-11-21T10:00:00Z or Unix seconds.
    #[arg(long)]
    since: Option<String>,
    /// Before this time.
    #[arg(long)]
    until: Option<String>,
    /// A principal id.
    #[arg(long)]
    principal: Option<String>,
    #[arg(long)]
    key: Option<String>,
    /// Part of a data action, e.g. `deletedKeys/delete`.
    #[arg(long)]
    action: Option<String>,
    /// allowed, denied, unauthenticated or rejected.
    #[arg(long)]
    outcome: Option<String>,
    #[arg(long, default_value_t = 1000)]
    limit: u64,
    /// Print the stored JSON lines (for a SIEM) instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Import an RSA or EC private key from a PEM file (encrypted PEM included) and print its
    /// key id, as a principal allowed to import keys.
    Import(Box<KeyImport>),
}

#[derive(Args)]
struct KeyImport {
    /// The key's name; importing onto an existing key makes a new version.
    #[arg(long)]
    name: String,
    /// PKCS#8 (`BEGIN PRIVATE KEY`, `BEGIN ENCRYPTED PRIVATE KEY`) or a traditional
    /// `BEGIN RSA PRIVATE KEY` / `BEGIN EC PRIVATE KEY`, encrypted or not.
    #[arg(long)]
    pem_file: std::path::PathBuf,
    /// A file holding the password of an encrypted PEM file (a trailing newline is ignored).
    #[arg(long)]
    password_file: Option<std::path::PathBuf>,
    /// The operations the key allows, comma separated (default: every one its type has).
    #[arg(long, value_delimiter = ',')]
    ops: Vec<String>,
    /// Import the key disabled.
    #[arg(long)]
    disabled: bool,
    /// A tag as NAME=VALUE; repeatable.
    #[arg(long = "tag", value_name = "NAME=VALUE", value_parser = parse_tag)]
    tags: Vec<(String, String)>,
    /// As a principal with the key import action (Crypto User).
    #[command(flatten)]
    service: ServiceArgs,
}

fn parse_tag(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("a tag is NAME=VALUE, not '{raw}'"))
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
        Command::Principal(cmd) => principal(cmd),
        Command::Role(cmd) => role(cmd),
        Command::Audit(cmd) => audit(cmd),
        Command::Key(KeyCommand::Import(args)) => key_import(&args),
        Command::Backup(cmd) => backup(cmd),
        Command::Restore(cmd) => restore(cmd),
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
        let (clock, maintenance_every): (Arc<dyn Clock>, Duration) = match &cfg.test_clock_file {
            Some(path) => (Arc::new(FileOffsetClock::new(path.clone())), Duration::from_millis(500)),
            None => (Arc::new(SystemClock), MAINTENANCE_EVERY),
        };
        let oidc = cfg.oidc.clone().map(OidcVerifier::new).transpose()?;
        if let Some(settings) = &cfg.oidc {
            tracing::info!(issuer = %settings.issuer, audience = %settings.audience, "accepting bearer JWTs from this OpenID Connect issuer");
        }
        let refresh_jwks = matches!(cfg.oidc.as_ref().map(|o| &o.jwks), Some(JwksSource::Url(_)));
        let access = Arc::new(AccessControl::load(Arc::clone(&ready.store), Arc::clone(&clock), oidc)?);
        if refresh_jwks {
            let access = Arc::clone(&access);
            tokio::spawn(async move {
                let mut every = tokio::time::interval(JWKS_REFRESH);
                every.tick().await;
                loop {
                    every.tick().await;
                    let access = Arc::clone(&access);
                    let _ = tokio::task::spawn_blocking(move || access.refresh_jwks()).await;
                }
            });
        }
        let audit_path = cfg.data_dir.join(p11vault::audit::FILE_NAME);
        let audit = AuditLog::start(audit_path.clone(), Arc::clone(&ready.store))?;
        let store = Arc::clone(&ready.store);
        let keys = KeyService::new(ready.store, Arc::new(ready.hsm), Arc::clone(&clock), ready.retention);
        let backups = Backups::new(
            Arc::clone(&keys),
            store,
            Arc::new(DirLocation::new(cfg.backup_root.clone())),
            clock,
            BackupSettings {
                hsm_name: cfg.hsm_name.clone(),
                restore_needs_backup_within_secs: cfg.restore_requires_backup_within_secs,
                work_dir: cfg.data_dir.join("restore"),
            },
        );
        // A full restore a crash interrupted is finished before anything else looks at keys.
        backups.recover().await?;
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
            access,
            backups,
            audit: audit.clone(),
            audit_path: Arc::new(audit_path),
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
        if audit.flush().await.is_err() {
            tracing::error!("stopping with audit records that could not be written: they are lost, and no outage record says so");
        }
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

type CliResult = Result<(), Box<dyn std::error::Error>>;

fn principal(cmd: PrincipalCommand) -> CliResult {
    match cmd {
        PrincipalCommand::Create {
            admin,
            name,
            id,
            role,
            scope,
        } => {
            let dir = DataDir::open(&admin.data_dir)?;
            let (id, token) = dir.create_principal(&name, id.as_deref(), &role, &scope)?;
            println!("id={id}");
            // Shown this once; only its hash is kept.
            println!("token={}", token.expose());
        }
        PrincipalCommand::List { admin, json } => {
            for p in DataDir::open(&admin.data_dir)?.list_principals()? {
                if json {
                    println!("{}", serde_json::to_string(&p)?);
                } else {
                    println!(
                        "{}  {:<24} {:<8} {}  {}",
                        p.id,
                        p.name,
                        if p.enabled { "enabled" } else { "disabled" },
                        p.created,
                        if p.roles.is_empty() {
                            "(no roles)".to_owned()
                        } else {
                            p.roles.join("; ")
                        }
                    );
                }
            }
        }
        PrincipalCommand::Disable(p) => {
            DataDir::open(&p.admin.data_dir)?.set_enabled(&p.id, false)?;
            println!("disabled {}", p.id);
        }
        PrincipalCommand::Enable(p) => {
            DataDir::open(&p.admin.data_dir)?.set_enabled(&p.id, true)?;
            println!("enabled {}", p.id);
        }
        PrincipalCommand::Rotate(p) => {
            let token = DataDir::open(&p.admin.data_dir)?.rotate_token(&p.id)?;
            println!("id={}", p.id);
            println!("token={}", token.expose());
        }
        PrincipalCommand::Delete(p) => {
            DataDir::open(&p.admin.data_dir)?.delete_principal(&p.id)?;
            println!("deleted {}", p.id);
        }
    }
    Ok(())
}

fn role(cmd: RoleCommand) -> CliResult {
    match cmd {
        RoleCommand::Assign {
            admin,
            principal,
            role,
            scope,
        } => {
            let name = DataDir::open(&admin.data_dir)?.assign(&principal, &role, &scope)?;
            println!("assignment={name}");
        }
    }
    Ok(())
}

fn audit(cmd: AuditCommand) -> CliResult {
    match cmd {
        AuditCommand::Verify(admin) => {
            let dir = DataDir::open(&admin.data_dir)?;
            let recorded = p11vault::audit::recorded_head(dir.store())?;
            let path = admin.data_dir.join(p11vault::audit::FILE_NAME);
            match p11vault::audit::verify(&path, recorded) {
                Ok(v) if v.outages.is_empty() => {
                    println!("ok: {} records, chain head {}", v.records, v.head.1);
                    Ok(())
                }
                // Exit 0: the chain is whole and every served request is in it, but the log
                // was unwritable for a while, and that must not pass unnoticed.
                Ok(v) => {
                    for outage in &v.outages {
                        eprintln!("WARNING: {outage}");
                    }
                    println!(
                        "WARNING: chain intact ({} records, chain head {}), with {} recorded outage(s): for a while the log could not be written and requests were refused; see above",
                        v.records,
                        v.head.1,
                        v.outages.len()
                    );
                    Ok(())
                }
                Err(broken) => Err(format!("the audit log is broken at {broken}").into()),
            }
        }
        AuditCommand::Show(args) => audit_show(&args),
    }
}

fn audit_show(args: &AuditShow) -> CliResult {
    let client = args.service.client()?;
    let mut req = client
        .request("GET", "/p11vault/audit")
        .query("api-version", p11vault::http::LATEST_API_VERSION)
        .query("limit", &args.limit.to_string());
    for (name, value) in [
        ("since", &args.since),
        ("until", &args.until),
        ("principal", &args.principal),
        ("key", &args.key),
        ("action", &args.action),
        ("outcome", &args.outcome),
    ] {
        if let Some(v) = value {
            req = req.query(name, v);
        }
    }
    let body = client.answer(req.call())?.into_string()?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for line in body.lines() {
        if args.json {
            writeln!(out, "{line}")?;
            continue;
        }
        let r: serde_json::Value = serde_json::from_str(line)?;
        let s = |f: &str| r[f].as_str().unwrap_or("-").to_owned();
        writeln!(
            out,
            "{:>6} {} {:<15} {:<3} {:<24} {:<6} {} key={} principal={} from={}",
            r["seq"],
            s("time"),
            s("outcome"),
            r["status"],
            s("action").trim_start_matches(p11vault::auth::roles::PREFIX),
            s("method"),
            s("path"),
            s("key"),
            r["principalName"]
                .as_str()
                .or(r["principal"].as_str())
                .unwrap_or("-"),
            s("source"),
        )?;
    }
    Ok(())
}

/// Reads the PEM file into a JWK and sends it to `PUT /keys/{name}`. The file, the password and
/// the request body are zeroizing buffers, dropped as soon as they have served.
fn key_import(args: &KeyImport) -> CliResult {
    use p11vault::pem::{PrivateJwk, password_from_file, read_secret_file};
    // Checked here, before the name becomes part of a URL path.
    let name = p11vault::model::KeyName::parse(&args.name)?;
    let jwk = {
        let pem = read_secret_file(&args.pem_file)
            .map_err(|e| format!("cannot read {}: {e}", args.pem_file.display()))?;
        let password = match &args.password_file {
            Some(path) => {
                Some(password_from_file(read_secret_file(path).map_err(|e| {
                    format!("cannot read {}: {e}", path.display())
                })?))
            }
            None => None,
        };
        PrivateJwk::from_pem(&pem, password.as_deref().map(Vec::as_slice))
            .map_err(|e| format!("{}: {e}", args.pem_file.display()))?
    };
    let tags = args.tags.iter().cloned().collect();
    let body = jwk.import_body(&args.ops, !args.disabled, &tags);
    drop(jwk);

    let client = args.service.client()?;
    let answer = client
        .request("PUT", &format!("/keys/{name}"))
        .query("api-version", p11vault::http::LATEST_API_VERSION)
        .set("Content-Type", "application/json")
        .send_bytes(&body);
    drop(body);
    let bundle: serde_json::Value = client.answer(answer)?.into_json()?;
    let kid = bundle["key"]["kid"]
        .as_str()
        .ok_or("the service's answer has no key id")?;
    println!("{kid}");
    Ok(())
}

fn backup(cmd: BackupCommand) -> CliResult {
    match cmd {
        BackupCommand::Start {
            storage_uri,
            connection,
        } => {
            let client = connection.service.client()?;
            let body = serde_json::json!({ "storageResourceUri": storage_uri });
            let url = client.start("POST", "/backup", &body)?;
            follow_job(&client, &url, connection.no_wait)
        }
        BackupCommand::Status { job, connection } => {
            let client = connection.service.client()?;
            follow_job(
                &client,
                &client.status_url("backup", &job),
                connection.no_wait,
            )
        }
    }
}

fn restore(cmd: RestoreCommand) -> CliResult {
    match cmd {
        RestoreCommand::Start {
            folder_url,
            key,
            connection,
        } => {
            // As the Azure SDK splits it: the container is the URL up to the first path
            // segment, the folder the rest.
            let (container, folder) = split_folder_url(&folder_url)?;
            let sas = serde_json::json!({ "storageResourceUri": container });
            let client = connection.service.client()?;
            let url = match key {
                None => client.start(
                    "PUT",
                    "/restore",
                    &serde_json::json!({ "sasTokenParameters": sas, "folderToRestore": folder }),
                )?,
                Some(key) => {
                    let key = p11vault::model::KeyName::parse(&key)?;
                    client.start(
                        "PUT",
                        &format!("/keys/{key}/restore"),
                        &serde_json::json!({ "sasTokenParameters": sas, "folder": folder }),
                    )?
                }
            };
            follow_job(&client, &url, connection.no_wait)
        }
        RestoreCommand::Status { job, connection } => {
            let client = connection.service.client()?;
            follow_job(
                &client,
                &client.status_url("restore", &job),
                connection.no_wait,
            )
        }
    }
}

fn split_folder_url(url: &str) -> Result<(String, String), String> {
    let bad = || format!("'{url}' is not a backup folder URL (https://host/container/folder)");
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(bad)?;
    let mut parts = rest.trim_end_matches('/').splitn(3, '/');
    let (Some(host), Some(container), Some(folder)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let scheme = &url[..url.len() - rest.len()];
    Ok((format!("{scheme}{host}/{container}"), folder.to_owned()))
}

/// Prints the job id, then (unless `no_wait`) follows the job to its end and prints its result.
fn follow_job(client: &Client, status_url: &str, no_wait: bool) -> CliResult {
    use std::io::IsTerminal;
    let job = status_url
        .split('/')
        .rev()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    println!("job={job}");
    let status = if no_wait {
        client.status(status_url)?
    } else {
        let stderr = std::io::stderr();
        let tty = stderr.is_terminal();
        client.follow(status_url, tty, &mut stderr.lock())?
    };
    if no_wait && status["status"] == "InProgress" {
        println!("status=InProgress");
        return Ok(());
    }
    println!("{}", p11vault::backup::client::outcome(&status)?);
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
