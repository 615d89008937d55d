//! The admin CLI's subcommands (all but `serve`): their arguments as clap types, and the
//! handlers that run them, on the data dir or through the service's HTTPS API.

pub mod security_domain;

use std::io::Write;

use clap::{Args, Subcommand};

use crate::admin::DataDir;
use crate::client::Client;
use crate::config::AdminArgs;

/// How the CLI reaches the service over HTTPS.
#[derive(Args)]
pub struct ServiceArgs {
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
    #[arg(long, env = "P11VAULT_DATA_DIR", default_value = crate::config::DEFAULT_DATA_DIR)]
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
pub struct Connection {
    #[command(flatten)]
    service: ServiceArgs,
    /// Start the job and print its id without waiting for it.
    #[arg(long)]
    no_wait: bool,
}

#[derive(Subcommand)]
pub enum BackupCommand {
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
pub enum RestoreCommand {
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
pub enum PrincipalCommand {
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
    /// Make the principal the HSM's operator, who alone may do the HSM-level operations
    /// (`az keyvault show | update-hsm | delete | recover | purge`); the previous one no longer
    /// may.
    Operator(PrincipalId),
}

#[derive(Args)]
pub struct PrincipalId {
    #[command(flatten)]
    admin: AdminArgs,
    id: String,
}

#[derive(Subcommand)]
pub enum RoleCommand {
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
pub enum AuditCommand {
    /// Check the hash chain of the whole log against the head the database recorded.
    Verify(AdminArgs),
    /// Read records through the service, as a principal allowed to (Crypto Auditor).
    Show(Box<AuditShow>),
}

#[derive(Args)]
pub struct AuditShow {
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
pub enum KeyCommand {
    /// Import an RSA or EC private key from a PEM file (encrypted PEM included) and print its
    /// key id, as a principal allowed to import keys.
    Import(Box<KeyImport>),
}

#[derive(Args)]
pub struct KeyImport {
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
pub enum SettingsCommand {
    /// Switch purge protection on. It can never be switched off again, by anyone.
    EnablePurgeProtection(AdminArgs),
    /// Show the retention period and whether purge protection is on.
    Show(AdminArgs),
}

pub fn settings(cmd: SettingsCommand) -> Result<(), Box<dyn std::error::Error>> {
    let (args, enable) = match cmd {
        SettingsCommand::EnablePurgeProtection(args) => (args, true),
        SettingsCommand::Show(args) => (args, false),
    };
    let db = args.data_dir.join("p11vault.db");
    if !db.exists() {
        return Err(format!("no p11vault database at {}", db.display()).into());
    }
    let store = crate::store::Store::open(&db)?;
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

pub fn principal(cmd: PrincipalCommand) -> CliResult {
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
        PrincipalCommand::Operator(p) => {
            DataDir::open(&p.admin.data_dir)?.set_operator(&p.id)?;
            println!("operator={}", p.id);
        }
    }
    Ok(())
}

pub fn role(cmd: RoleCommand) -> CliResult {
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

pub fn audit(cmd: AuditCommand) -> CliResult {
    match cmd {
        AuditCommand::Verify(admin) => {
            let dir = DataDir::open(&admin.data_dir)?;
            let recorded = crate::audit::recorded_head(dir.store())?;
            let path = admin.data_dir.join(crate::audit::FILE_NAME);
            match crate::audit::verify(&path, recorded) {
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
        .query("api-version", crate::http::LATEST_API_VERSION)
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
            s("action").trim_start_matches(crate::auth::roles::PREFIX),
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
pub fn key_import(args: &KeyImport) -> CliResult {
    use crate::pem::{PrivateJwk, password_from_file, read_secret_file};
    // Checked here, before the name becomes part of a URL path.
    let name = crate::model::KeyName::parse(&args.name)?;
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
        .query("api-version", crate::http::LATEST_API_VERSION)
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

pub fn backup(cmd: BackupCommand) -> CliResult {
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

pub fn restore(cmd: RestoreCommand) -> CliResult {
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
                    let key = crate::model::KeyName::parse(&key)?;
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
    println!("{}", crate::backup::client::outcome(&status)?);
    Ok(())
}

/// `p11vault az-setup`: prepares an Azure CLI config dir for this service.
#[derive(Args)]
pub struct AzSetupArgs {
    /// The data dir (its ca.pem is the CA az is told to trust).
    #[arg(long, env = "P11VAULT_DATA_DIR", default_value = crate::config::DEFAULT_DATA_DIR)]
    data_dir: std::path::PathBuf,
    /// A file holding the p11vault bearer token of the principal az signs in as.
    #[arg(long)]
    token_file: std::path::PathBuf,
    /// The az config dir to prepare (AZURE_CONFIG_DIR); made if missing.
    #[arg(long)]
    config_dir: std::path::PathBuf,
    /// The HSM name of `az keyvault … --hsm-name NAME`: az then calls
    /// `https://NAME.{host}[:port]`, which must resolve to the service.
    #[arg(long)]
    hsm_name: Option<String>,
    /// The service's URL.
    #[arg(long, env = "P11VAULT_URL", default_value = "https://127.0.0.1:8443")]
    url: String,
    /// The CA certificate to trust (default: the data dir's ca.pem).
    #[arg(long)]
    ca_file: Option<std::path::PathBuf>,
}

/// The az cloud `az-setup` registers and selects.
pub const AZ_CLOUD: &str = "p11vault";

/// Asks the service for the principal's identity header (which proves the token without
/// holding it), writes the cloud into the az config dir, and prints the `export` lines.
/// It writes az's two INI files itself rather than running `az cloud register`: that needs no
/// az on the machine and takes milliseconds, where az takes seconds to start.
pub fn az_setup(args: &AzSetupArgs) -> Result<(), Box<dyn std::error::Error>> {
    let ca = args
        .ca_file
        .clone()
        .unwrap_or_else(|| args.data_dir.join("ca.pem"));
    let ca = std::path::absolute(&ca)?;
    let client = Client::new(&args.url, &ca, &args.token_file)?;
    let answer = client
        .request("POST", "/p11vault/identity/header")
        .send_string("");
    let issued: serde_json::Value = client.answer(answer)?.into_json()?;
    let (Some(header), Some(endpoint)) = (
        issued["identityHeader"].as_str(),
        issued["identityEndpoint"].as_str(),
    ) else {
        return Err("the service's answer holds no identity header".into());
    };
    let base = client.url().to_owned();
    let authority = base
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or(&base)
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let (host, _) = split_authority(&authority);
    let mhsm_suffix = mhsm_suffix(&authority);
    let dir = std::path::absolute(&args.config_dir)?;
    crate::fsutil::create_private_dir(&dir)?;
    let cloud = [
        ("profile", "latest".to_owned()),
        ("endpoint_resource_manager", format!("{base}/")),
        ("endpoint_management", format!("{base}/")),
        ("endpoint_active_directory", base.clone()),
        ("endpoint_active_directory_resource_id", format!("{base}/")),
        // az looks role assignments' principals up in Microsoft Graph (`http/graph.rs`).
        (
            "endpoint_microsoft_graph_resource_id",
            format!("{base}/graph/"),
        ),
        // az refuses `--id` forms without a vault suffix; this service is an HSM, so the
        // vault suffix is a name that never resolves.
        ("suffix_keyvault_dns", ".vault.p11vault.invalid".to_owned()),
        ("suffix_mhsm_dns", mhsm_suffix.clone()),
        // `backup start` / `restore start` build `https://{account}.blob.{suffix}/{container}`
        // (the service reads the container from it); `az storage container create` calls it,
        // and the service answers on that host (`http/storage.rs`).
        (
            "suffix_storage_endpoint",
            mhsm_suffix.trim_start_matches('.').to_owned(),
        ),
    ];
    set_ini_section(&dir.join("clouds.config"), AZ_CLOUD, &cloud)?;
    set_ini_section(
        &dir.join("config"),
        "cloud",
        &[("name", AZ_CLOUD.to_owned())],
    )?;
    set_ini_section(
        &dir.join("config"),
        "core",
        &[
            ("collect_telemetry", "no".to_owned()),
            ("survey_message", "no".to_owned()),
        ],
    )?;
    let mut exports = vec![
        ("AZURE_CONFIG_DIR", dir.display().to_string()),
        ("REQUESTS_CA_BUNDLE", ca.display().to_string()),
        ("IDENTITY_ENDPOINT", endpoint.to_owned()),
        ("IDENTITY_HEADER", header.to_owned()),
        ("AZURE_CORE_COLLECT_TELEMETRY", "no".to_owned()),
        ("NO_PROXY", format!("{host},localhost,.localhost,127.0.0.1")),
    ];
    if let Some(name) = &args.hsm_name {
        exports.push(("P11VAULT_HSM_NAME", name.clone()));
        exports.push(("P11VAULT_HSM_URL", format!("https://{name}{mhsm_suffix}")));
    }
    let mut out = std::io::stdout().lock();
    for (name, value) in exports {
        writeln!(out, "export {name}={}", shell_quote(&value))?;
    }
    Ok(())
}

/// The `mhsmDns` suffix for a service at `host[:port]`: `--hsm-name NAME` makes az call
/// `https://NAME{suffix}`, under the URL's host name, or under `localhost` when the URL names
/// an IP address (NAME.localhost is in the generated certificate; making it resolve is the
/// operator's: README, "Using the Azure CLI").
fn mhsm_suffix(authority: &str) -> String {
    let (host, port) = split_authority(authority);
    let parent = if host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') {
        "localhost"
    } else {
        host.as_str()
    };
    match port {
        Some(port) => format!(".{parent}:{port}"),
        None => format!(".{parent}"),
    }
}

/// The host (IPv6 with its brackets) and port of `host[:port]`.
fn split_authority(authority: &str) -> (String, Option<String>) {
    if let Some(rest) = authority.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').unwrap_or((rest, ""));
        let port = after.strip_prefix(':').map(str::to_owned);
        return (format!("[{inside}]"), port);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => (host.to_owned(), Some(port.to_owned())),
        None => (authority.to_owned(), None),
    }
}

/// POSIX single quotes: safe for any value.
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// Replaces (or adds) one section of an INI file, keeping every other section as it is.
fn set_ini_section(
    path: &std::path::Path,
    section: &str,
    pairs: &[(&str, String)],
) -> Result<(), Box<dyn std::error::Error>> {
    let old = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e.into()),
    };
    let mut kept = String::new();
    let mut skipping = false;
    for line in old.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') && trimmed.ends_with(']') {
            skipping = trimmed[1..trimmed.len() - 1].trim() == section;
        }
        if !skipping {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    if !kept.is_empty() && !kept.ends_with("\n\n") {
        kept.push('\n');
    }
    kept.push_str(&format!("[{section}]\n"));
    for (key, value) in pairs {
        kept.push_str(&format!("{key} = {value}\n"));
    }
    crate::fsutil::write_atomic(path, kept.as_bytes(), 0o600)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mhsm_suffix_is_under_the_host_name_or_localhost() {
        assert_eq!(mhsm_suffix("127.0.0.1:8443"), ".localhost:8443");
        assert_eq!(mhsm_suffix("[::1]:8443"), ".localhost:8443");
        assert_eq!(
            mhsm_suffix("hsm.example.internal:8443"),
            ".hsm.example.internal:8443"
        );
        assert_eq!(mhsm_suffix("hsm.example.internal"), ".hsm.example.internal");
        assert_eq!(
            split_authority("[::1]:8443"),
            ("[::1]".to_owned(), Some("8443".to_owned()))
        );
    }
}
