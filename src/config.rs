//! The service's configuration: command-line flags, then `P11VAULT_*` environment variables,
//! then the config file, then defaults — validated once, here. This is the only module that
//! reads the environment.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::auth::oidc::{JwksSource, OidcSettings};

use crate::model::Retention;

/// Where the embedded default finds SoftHSM2 (Debian's package puts it here).
pub const SOFTHSM2_CANDIDATES: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
];

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";
pub const DEFAULT_DATA_DIR: &str = "./p11vault-data";
pub const DEFAULT_TOKEN_LABEL: &str = "p11vault";
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;
pub const DEFAULT_SESSIONS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid setting {setting}: {message}")]
    Invalid {
        setting: &'static str,
        message: String,
    },
}

/// Flags of `p11vault serve`. Each also reads a `P11VAULT_*` variable.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ServeArgs {
    /// Directory for the database, TLS files, PINs and (embedded default) the SoftHSM2 token.
    #[arg(long, env = "P11VAULT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free port (the URL is printed).
    #[arg(long, env = "P11VAULT_LISTEN")]
    pub listen: Option<String>,
    /// The externally reachable base URL, used in key ids and paging links.
    #[arg(long, env = "P11VAULT_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Config file (TOML). Default: DATA_DIR/p11vault.toml if it exists.
    #[arg(long, env = "P11VAULT_CONFIG")]
    pub config: Option<PathBuf>,
    /// PKCS#11 module of a vendor HSM. Unset: the embedded SoftHSM2 token under DATA_DIR.
    #[arg(long, env = "P11VAULT_PKCS11_MODULE")]
    pub pkcs11_module: Option<PathBuf>,
    /// Label of the token to use.
    #[arg(long, env = "P11VAULT_TOKEN_LABEL")]
    pub token_label: Option<String>,
    /// File holding the token user PIN. Default (embedded): DATA_DIR/user.pin.
    #[arg(long, env = "P11VAULT_PIN_FILE")]
    pub pin_file: Option<PathBuf>,
    /// Soft-delete retention in days (7–90), fixed when the service is first initialised.
    #[arg(long, env = "P11VAULT_RETENTION_DAYS")]
    pub retention_days: Option<u32>,
}

/// Flags of the admin commands that work on a data dir.
#[derive(Clone, Debug, clap::Args)]
pub struct AdminArgs {
    /// The service's data directory.
    #[arg(long, env = "P11VAULT_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
}

/// The config file's shape. Every field is optional; flags and environment win over it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    public_url: Option<String>,
    #[serde(default)]
    pkcs11: FilePkcs11,
    #[serde(default)]
    keys: FileKeys,
    #[serde(default)]
    http: FileHttp,
    #[serde(default)]
    auth: FileAuth,
    #[serde(default)]
    backup: FileBackup,
    #[serde(default)]
    security_domain: FileSecurityDomain,
    #[serde(default)]
    tls: FileTls,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSecurityDomain {
    /// `true`: a fresh data dir activates itself, writing its security domain and the three
    /// generated wrapping keys under `{data_dir}/security-domain/`. Default `true` only for the
    /// embedded SoftHSM2 token; a vendor HSM never auto-activates.
    auto_activate: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    /// More names the generated server certificate covers: host names, or a wildcard
    /// `*.suffix` for `az … --hsm-name NAME` (`https://NAME{mhsmDns}`).
    names: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBackup {
    /// The directory the default backup location keeps containers in.
    root: Option<PathBuf>,
    /// The name in backup folder names, `mhsm-{name}-{YYYYMMDDHHmmSS}`.
    hsm_name: Option<String>,
    /// The one storage account name the service answers for its backup location (`az storage
    /// account keys list`, `az storage container create`).
    storage_account: Option<String>,
    /// A full restore needs a full backup of the current state at most this many minutes old.
    restore_requires_backup_within_minutes: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePkcs11 {
    module: Option<PathBuf>,
    token_label: Option<String>,
    pin_file: Option<PathBuf>,
    /// Needed only on the first start against a vendor token, to create the security domain.
    so_pin_file: Option<PathBuf>,
    /// `true`: when no token with the label exists, the first start initialises an empty slot
    /// with it (`C_InitToken` with the SO PIN, then `C_InitPIN`): for soft tokens such as
    /// kryoptic. Default `false`: a vendor token is initialised with its vendor's tools.
    init_token: Option<bool>,
    sessions: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileKeys {
    /// `true` (default): keys are extractable wrapped under the security domain, so key
    /// backups work (and a holder of the user PIN can extract them too). `false`: strict,
    /// nothing ever leaves the token. A first start on an external token needs it set.
    backups: Option<bool>,
    retention_days: Option<u32>,
    /// Accepts that a holder of the user PIN can extract keys made for backups: what
    /// `backups = true` now says; kept so the files of data dirs of the trusted domain model on
    /// a token where any user may create `CKA_TRUSTED` keys (kryoptic) still start
    /// (ARCHITECTURE.md, "Protection models").
    accept_user_trusted_keys: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHttp {
    max_body_bytes: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAuth {
    challenge_authority: Option<String>,
    challenge_resource: Option<String>,
    #[serde(default)]
    oidc: Option<FileOidc>,
}

/// Bearer JWTs from an on-premises OpenID Connect issuer, besides p11vault's own tokens.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOidc {
    issuer: Option<String>,
    audience: Option<String>,
    jwks_file: Option<PathBuf>,
    jwks_url: Option<String>,
}

/// Which PKCS#11 token the service uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSource {
    /// A SoftHSM2 token under the data dir, created on first start.
    Embedded { module: PathBuf },
    /// An operator-provided module and token (a vendor HSM).
    External {
        module: PathBuf,
        pin_file: PathBuf,
        so_pin_file: Option<PathBuf>,
        /// Initialise an empty slot when no token has the label (`pkcs11.init_token`).
        init_token: bool,
    },
}

#[derive(Clone, Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// `None`: derived from the bound address at start-up.
    pub public_url: Option<String>,
    pub token: TokenSource,
    pub token_label: String,
    pub sessions: usize,
    /// `keys.backups`: key material may leave the token wrapped under the security domain.
    pub backups: bool,
    /// Whether the operator chose [`Config::backups`] (`keys.backups` is set, or the older
    /// `keys.accept_user_trusted_keys = true`): an external token's first start needs it.
    pub backups_chosen: bool,
    /// `keys.accept_user_trusted_keys`: consulted at the first start only.
    pub accept_user_trusted_keys: bool,
    pub retention_days: u32,
    /// `security_domain.auto_activate`: a fresh data dir activates itself (see
    /// `FileSecurityDomain`); consulted when a data dir is not activated yet.
    pub auto_activate: bool,
    pub max_body_bytes: usize,
    pub challenge_authority: Option<String>,
    pub challenge_resource: String,
    pub oidc: Option<OidcSettings>,
    /// Where full backups are written: `{backup_root}/{container}/{folder}`.
    pub backup_root: PathBuf,
    pub hsm_name: String,
    /// The storage account name of the backup location (`http/storage.rs`): 3 to 24 lowercase
    /// letters and digits, as Azure Storage's; default `{hsm_name}backup` made so.
    pub storage_account: String,
    /// Names the generated certificate covers beyond loopback and the public URL's host:
    /// `{hsm_name}.localhost`, `{storage_account}.blob.localhost` and `tls.names`.
    pub tls_names: Vec<String>,
    pub restore_requires_backup_within_secs: i64,
    /// TEST-ONLY crash points (see `failpoint`), from `P11VAULT_TEST_FAILPOINTS`.
    pub test_failpoints: Vec<String>,
    /// TEST-ONLY: a first start makes a data dir of the older trusted domain model, as data
    /// dirs made before the private model exist (`P11VAULT_TEST_TRUSTED_DOMAIN=1`), so that
    /// the path those data dirs take stays tested.
    pub test_trusted_domain: bool,
    /// TEST-ONLY clock offset file (see `clock::FileOffsetClock`), from
    /// `P11VAULT_TEST_CLOCK_FILE`.
    pub test_clock_file: Option<PathBuf>,
}

impl Config {
    pub fn load(args: &ServeArgs) -> Result<Self, ConfigError> {
        let data_dir = args
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => {
                let default = data_dir.join("p11vault.toml");
                if default.exists() {
                    read_file(&default)?
                } else {
                    FileConfig::default()
                }
            }
        };

        let listen_raw = args
            .listen
            .clone()
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen: SocketAddr = listen_raw.parse().map_err(|_| ConfigError::Invalid {
            setting: "listen",
            message: format!(
                "'{listen_raw}' is not HOST:PORT with a numeric host, e.g. 127.0.0.1:8443"
            ),
        })?;

        let public_url = args.public_url.clone().or(file.public_url);
        if let Some(url) = &public_url {
            validate_public_url(url)?;
        }

        let pin_file = args.pin_file.clone().or(file.pkcs11.pin_file);
        let token = match args.pkcs11_module.clone().or(file.pkcs11.module) {
            Some(module) => TokenSource::External {
                module,
                pin_file: pin_file.ok_or(ConfigError::Invalid {
                    setting: "pkcs11.pin_file",
                    message: "a PIN file is required with an external PKCS#11 module".into(),
                })?,
                so_pin_file: file.pkcs11.so_pin_file,
                init_token: file.pkcs11.init_token.unwrap_or(false),
            },
            None => TokenSource::Embedded {
                module: find_softhsm2().ok_or_else(|| ConfigError::Invalid {
                    setting: "pkcs11.module",
                    message: format!(
                        "no PKCS#11 module configured and SoftHSM2 not found (looked in {}); install softhsm2 or set P11VAULT_PKCS11_MODULE",
                        SOFTHSM2_CANDIDATES.join(", ")
                    ),
                })?,
            },
        };

        let token_label = args
            .token_label
            .clone()
            .or(file.pkcs11.token_label)
            .unwrap_or_else(|| DEFAULT_TOKEN_LABEL.to_owned());
        if token_label.is_empty() || token_label.len() > 32 {
            return Err(ConfigError::Invalid {
                setting: "pkcs11.token_label",
                message: "a token label is 1 to 32 bytes".into(),
            });
        }

        let sessions = file.pkcs11.sessions.unwrap_or(DEFAULT_SESSIONS);
        if !(1..=256).contains(&sessions) {
            return Err(ConfigError::Invalid {
                setting: "pkcs11.sessions",
                message: "between 1 and 256".into(),
            });
        }

        let retention_days = args
            .retention_days
            .or(file.keys.retention_days)
            .unwrap_or(Retention::DEFAULT_DAYS);
        if !(Retention::MIN_DAYS..=Retention::MAX_DAYS).contains(&retention_days) {
            return Err(ConfigError::Invalid {
                setting: "keys.retention_days",
                message: format!(
                    "{retention_days} is outside {}..={}",
                    Retention::MIN_DAYS,
                    Retention::MAX_DAYS
                ),
            });
        }

        let accept_user_trusted_keys = file.keys.accept_user_trusted_keys.unwrap_or(false);
        let backups = file.keys.backups.unwrap_or(true);
        let backups_chosen = file.keys.backups.is_some() || accept_user_trusted_keys;
        let auto_activate = file
            .security_domain
            .auto_activate
            .unwrap_or(matches!(token, TokenSource::Embedded { .. }));

        let max_body_bytes = file.http.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY);
        if !(4096..=64 * 1024 * 1024).contains(&max_body_bytes) {
            return Err(ConfigError::Invalid {
                setting: "http.max_body_bytes",
                message: "between 4096 and 67108864".into(),
            });
        }

        let oidc = file.auth.oidc.map(oidc_settings).transpose()?;

        let backup_root = file.backup.root.unwrap_or_else(|| data_dir.join("backups"));
        // The default comes from the token label, which may hold any characters: made safe
        // for a folder name rather than refused.
        let hsm_name = file.backup.hsm_name.unwrap_or_else(|| {
            let safe: String = token_label
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect();
            safe.trim_matches('-').to_owned()
        });
        let hsm_name = if hsm_name.is_empty() {
            DEFAULT_TOKEN_LABEL.to_owned()
        } else {
            hsm_name
        };
        let name_ok = !hsm_name.is_empty()
            && hsm_name.len() <= 64
            && hsm_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !name_ok {
            return Err(ConfigError::Invalid {
                setting: "backup.hsm_name",
                message: "1 to 64 letters, digits and '-' (it names backup folders)".into(),
            });
        }
        let storage_account = file.backup.storage_account.unwrap_or_else(|| {
            let mut name: String = hsm_name
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .map(|c| c.to_ascii_lowercase())
                .take(18)
                .collect();
            name.push_str("backup");
            name
        });
        let account_ok = (3..=24).contains(&storage_account.len())
            && storage_account
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !account_ok {
            return Err(ConfigError::Invalid {
                setting: "backup.storage_account",
                message: "3 to 24 lowercase letters and digits, as an Azure storage account name"
                    .into(),
            });
        }
        let mut tls_names = vec![
            format!("{}.localhost", hsm_name.to_ascii_lowercase()),
            format!("{storage_account}.blob.localhost"),
        ];
        for name in file.tls.names.unwrap_or_default() {
            let bare = name.strip_prefix("*.").unwrap_or(&name);
            let ok = !bare.is_empty()
                && bare.len() <= 253
                && bare.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        && !label.starts_with('-')
                        && !label.ends_with('-')
                });
            // OpenSSL (Python's ssl, so az) accepts a wildcard only over two labels or more.
            let wildcard_ok = !name.starts_with("*.") || bare.contains('.');
            if !ok || !wildcard_ok {
                return Err(ConfigError::Invalid {
                    setting: "tls.names",
                    message: format!(
                        "'{name}' is not a DNS name or a wildcard '*.a.b' (a wildcard needs two labels after it)"
                    ),
                });
            }
            tls_names.push(name.to_ascii_lowercase());
        }
        let window = file
            .backup
            .restore_requires_backup_within_minutes
            .unwrap_or(30);
        if !(1..=7 * 24 * 60).contains(&window) {
            return Err(ConfigError::Invalid {
                setting: "backup.restore_requires_backup_within_minutes",
                message: "between 1 and 10080 (a week)".into(),
            });
        }

        Ok(Self {
            data_dir,
            listen,
            public_url,
            token,
            token_label,
            sessions,
            backups,
            backups_chosen,
            auto_activate,
            accept_user_trusted_keys,
            retention_days,
            max_body_bytes,
            challenge_authority: file.auth.challenge_authority,
            challenge_resource: file
                .auth
                .challenge_resource
                .unwrap_or_else(|| "https://managedhsm.azure.net".to_owned()),
            oidc,
            backup_root,
            tls_names,
            hsm_name,
            storage_account,
            restore_requires_backup_within_secs: i64::from(window) * 60,
            test_failpoints: std::env::var("P11VAULT_TEST_FAILPOINTS")
                .map(|v| {
                    v.split(',')
                        .filter(|p| !p.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            test_clock_file: std::env::var_os("P11VAULT_TEST_CLOCK_FILE").map(PathBuf::from),
            test_trusted_domain: std::env::var_os("P11VAULT_TEST_TRUSTED_DOMAIN")
                .is_some_and(|v| v == "1"),
        })
    }
}

fn oidc_settings(file: FileOidc) -> Result<OidcSettings, ConfigError> {
    let invalid = |message: &str| ConfigError::Invalid {
        setting: "auth.oidc",
        message: message.to_owned(),
    };
    let jwks = match (file.jwks_file, file.jwks_url) {
        (Some(path), None) => JwksSource::File(path),
        (None, Some(url)) if url.starts_with("https://") => JwksSource::Url(url),
        (None, Some(_)) => return Err(invalid("jwks_url must be an https:// URL")),
        _ => return Err(invalid("set exactly one of jwks_file and jwks_url")),
    };
    Ok(OidcSettings {
        issuer: file
            .issuer
            .filter(|i| !i.is_empty())
            .ok_or_else(|| invalid("issuer is required"))?,
        audience: file
            .audience
            .filter(|a| !a.is_empty())
            .ok_or_else(|| invalid("audience is required"))?,
        jwks,
    })
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

fn find_softhsm2() -> Option<PathBuf> {
    SOFTHSM2_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// A public URL is `https://host[:port]` with no path, query or fragment.
pub fn validate_public_url(url: &str) -> Result<(), ConfigError> {
    let invalid = |message: &str| ConfigError::Invalid {
        setting: "public_url",
        message: format!("'{url}': {message}"),
    };
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| invalid("must start with https:// (the Azure SDKs refuse plain http)"))?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains(['/', '?', '#', '\\', '@', ' ']) {
        return Err(invalid("must be https://host[:port] with no path"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_urls_must_be_bare_https_origins() {
        assert!(validate_public_url("https://hsm.example:8443").is_ok());
        assert!(validate_public_url("https://127.0.0.1:8443/").is_ok());
        assert!(validate_public_url("http://hsm.example").is_err());
        assert!(validate_public_url("https://hsm.example/keys").is_err());
        assert!(validate_public_url("https://").is_err());
    }

    #[test]
    fn every_example_config_in_deploy_is_a_valid_config_that_chooses_backups() {
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
        let mut files = vec![deploy.join("p11vault.toml.example")];
        for entry in std::fs::read_dir(deploy.join("vendors")).expect("deploy/vendors") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                files.push(path);
            }
        }
        assert!(files.len() >= 6, "{files:?}");
        let dir = tempfile::tempdir().expect("temp dir");
        for file in files {
            let args = ServeArgs {
                data_dir: Some(dir.path().to_owned()),
                config: Some(file.clone()),
                ..ServeArgs::default()
            };
            let cfg = Config::load(&args).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            assert!(
                matches!(cfg.token, TokenSource::External { .. }),
                "{}: names a module",
                file.display()
            );
            assert!(cfg.backups_chosen, "{}: sets keys.backups", file.display());
        }
    }

    #[test]
    fn the_config_file_is_read_and_flags_win() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\n[keys]\nretention_days = 30\nbackups = false\n",
        )
        .expect("write config");
        let args = ServeArgs {
            data_dir: Some(dir.path().to_owned()),
            config: Some(file.clone()),
            retention_days: Some(14),
            pkcs11_module: Some("/x/module.so".into()),
            pin_file: Some("/x/pin".into()),
            ..ServeArgs::default()
        };
        let cfg = Config::load(&args).expect("valid config");
        assert_eq!(cfg.listen, "127.0.0.1:9000".parse().expect("addr"));
        assert_eq!(cfg.retention_days, 14);
        assert!(!cfg.backups && cfg.backups_chosen);
        assert!(matches!(cfg.token, TokenSource::External { .. }));
    }

    #[test]
    fn the_storage_account_is_named_from_the_hsm_or_configured_and_checked() {
        let dir = tempfile::tempdir().expect("temp dir");
        let load = |backup: &str| {
            let file = dir.path().join("c.toml");
            std::fs::write(&file, format!("[backup]\n{backup}\n")).expect("write config");
            Config::load(&ServeArgs {
                data_dir: Some(dir.path().to_owned()),
                config: Some(file),
                pkcs11_module: Some("/x/module.so".into()),
                pin_file: Some("/x/pin".into()),
                ..ServeArgs::default()
            })
        };
        let cfg = load("hsm_name = \"Hsm-1\"").expect("valid config");
        assert_eq!(cfg.storage_account, "hsm1backup");
        assert!(
            cfg.tls_names
                .contains(&"hsm1backup.blob.localhost".to_owned())
        );
        let cfg = load("storage_account = \"mhsmdemobackup\"").expect("valid config");
        assert_eq!(cfg.storage_account, "mhsmdemobackup");
        assert!(
            cfg.tls_names
                .contains(&"mhsmdemobackup.blob.localhost".to_owned())
        );
        for bad in ["ab", "Upper", "with-dash", "a2345678901234567890123456"] {
            assert!(
                matches!(
                    load(&format!("storage_account = \"{bad}\"")),
                    Err(ConfigError::Invalid {
                        setting: "backup.storage_account",
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_shipped_example_config_parses() {
        let example: FileConfig = toml::from_str(include_str!("../deploy/p11vault.toml.example"))
            .expect("deploy/p11vault.toml.example matches the config schema");
        assert_eq!(example.pkcs11.token_label.as_deref(), Some("p11vault"));
        assert_eq!(example.keys.retention_days, Some(90));
    }

    #[test]
    fn out_of_range_settings_are_refused() {
        let args = ServeArgs {
            retention_days: Some(3),
            pkcs11_module: Some("/x/module.so".into()),
            pin_file: Some("/x/pin".into()),
            ..ServeArgs::default()
        };
        assert!(matches!(
            Config::load(&args),
            Err(ConfigError::Invalid {
                setting: "keys.retention_days",
                ..
            })
        ));
        let args = ServeArgs {
            listen: Some("localhost".into()),
            pkcs11_module: Some("/x/module.so".into()),
            pin_file: Some("/x/pin".into()),
            ..ServeArgs::default()
        };
        assert!(matches!(
            Config::load(&args),
            Err(ConfigError::Invalid {
                setting: "listen",
                ..
            })
        ));
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "unknown_setting = 1\n").expect("write config");
        let args = ServeArgs {
            config: Some(file),
            pkcs11_module: Some("/x/module.so".into()),
            pin_file: Some("/x/pin".into()),
            ..ServeArgs::default()
        };
        assert!(matches!(
            Config::load(&args),
            Err(ConfigError::Parse { .. })
        ));
    }
}
