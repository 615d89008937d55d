//! `p11vault serve` once the configuration is loaded: the listener, the store and the token,
//! the services and their background tasks, HTTPS, and a graceful shutdown on SIGTERM or
//! SIGINT.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use crate::access::AccessControl;
use crate::audit::AuditLog;
use crate::auth::oidc::{JwksSource, OidcVerifier};
use crate::backup::location::DirLocation;
use crate::backup::{BackupSettings, Backups};
use crate::clock::{Clock, FileOffsetClock, SystemClock};
use crate::config::Config;
use crate::keys::KeyService;
use crate::keys::domain::SecurityDomain;
use crate::{AppState, provision, tls};

/// How often the service purges keys whose retention ended and settles abandoned intents.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(60);

/// How often a JWKS fetched from a URL is fetched again (the issuer's key rollover).
const JWKS_REFRESH: Duration = Duration::from_secs(600);

/// How long in-flight requests get to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Binds the listener, opens the data dir and serves until a shutdown signal. `main` has
/// already pointed SoftHSM2 at its configuration, before any thread existed.
pub fn run(cfg: Config) -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind(cfg.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
    let bound = listener.local_addr()?;
    let public_url = cfg
        .public_url
        .clone()
        .map(|u| u.trim_end_matches('/').to_owned())
        .unwrap_or_else(|| default_public_url(bound));
    let ready = provision::open(&cfg, &tls_hosts(bound, &public_url, &cfg.tls_names))?;

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
        let audit_path = cfg.data_dir.join(crate::audit::FILE_NAME);
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
        let host = public_url
            .split("://")
            .nth(1)
            .and_then(|rest| rest.split([':', '/']).next())
            .unwrap_or("localhost")
            .to_owned();
        let domain = SecurityDomain::new(Arc::clone(keys.store()), Arc::clone(keys.hsm()), host)?;
        // Half-made domains and transfer keys a crash left are taken away before anything is served.
        domain.recover().await?;
        // A full restore a crash interrupted is finished before anything else looks at keys.
        backups.recover().await?;
        // So is a purge of the whole HSM.
        let hsm_state = keys.load_hsm_state().await?;
        if !hsm_state.is_active() {
            tracing::warn!(?hsm_state, "the HSM is not live: the data plane refuses every request");
        }
        let report = keys.reconcile().await?;
        tracing::info!(?report, "reconciled the token with the database");
        let mechanisms: Vec<String> = keys.hsm().mechanisms().iter().map(|m| m.to_string()).collect();
        tracing::info!(mechanisms = %mechanisms.join(" "), "mechanisms the token offers");
        let (rotated, rotations) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(record_rotations(rotations, audit.clone()));
        keys.spawn_maintenance(maintenance_every, rotated);
        let authority = cfg
            .challenge_authority
            .clone()
            .unwrap_or_else(|| format!("{public_url}/p11vault"));
        let state = AppState {
            keys,
            access,
            backups,
            domain,
            audit: audit.clone(),
            audit_path: Arc::new(audit_path),
            public_url: public_url.as_str().into(),
            challenge: AppState::challenge_for(&authority, &cfg.challenge_resource),
            max_body_bytes: cfg.max_body_bytes,
            hsm_name: cfg.hsm_name.as_str().into(),
            storage_account: cfg.storage_account.as_str().into(),
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
            .serve(crate::app(state).into_make_service_with_connect_info::<SocketAddr>())
            .await?;
        if audit.flush().await.is_err() {
            tracing::error!("stopping with audit records that could not be written: they are lost, and no outage record says so");
        }
        tracing::info!("stopped");
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}

/// Writes an audit record of every rotation the maintenance task makes (a key's rotation
/// policy made it due): the service's own change, recorded as the rotate request a client would
/// have sent. The version is committed first; a crash before its record is written loses the
/// record, not the version (whose `created` still says when it was made).
async fn record_rotations(
    mut rotations: tokio::sync::mpsc::UnboundedReceiver<crate::model::VersionRecord>,
    audit: AuditLog,
) {
    while let Some(version) = rotations.recv().await {
        let event = crate::audit::Event {
            time: crate::audit::Event::now(),
            request_id: uuid::Uuid::new_v4().to_string(),
            client_request_id: None,
            source: Some("maintenance".into()),
            principal: None,
            principal_name: Some("p11vault (rotation policy)".into()),
            method: "SERVICE".into(),
            path: format!("/keys/{}/rotate", version.name),
            action: Some(crate::auth::roles::Action::KeysRotate.name()),
            key: Some(version.name.to_string()),
            version: Some(version.version.to_string()),
            outcome: crate::audit::Outcome::Allowed,
            status: 200,
            answered: None,
            outage: None,
        };
        if audit.record_durably(event).await.is_err() {
            tracing::error!(key = %version.name, version = %version.version, "the audit record of an automatic rotation is not on disk yet (the log cannot be written); it is kept and written late, as a request's would be");
        }
    }
}

fn default_public_url(bound: SocketAddr) -> String {
    match bound {
        SocketAddr::V4(a) if a.ip().is_unspecified() => format!("https://127.0.0.1:{}", a.port()),
        SocketAddr::V6(a) if a.ip().is_unspecified() => format!("https://[::1]:{}", a.port()),
        other => format!("https://{other}"),
    }
}

/// Names the generated certificate is valid for: loopback, the bound address, the host of
/// the public URL, and the configured names (`{hsm_name}.localhost`, `tls.names`).
fn tls_hosts(bound: SocketAddr, public_url: &str, names: &[String]) -> Vec<String> {
    let mut hosts = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    hosts.extend(names.iter().cloned());
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
