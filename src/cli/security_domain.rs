//! `p11vault security-domain …`: the Managed HSM security domain from the operator's side,
//! with az's flag names (security-domain.md §10), so an operator can switch between the two.
//! `restore-blob` and `reshare` work on files only and never open a connection; `download`,
//! `init-recovery` and `upload` talk to the service's `/securitydomain` endpoints. No command
//! overwrites a file: each refuses an existing output path before doing anything.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use openssl::pkey::{PKey, Private};
use openssl::x509::X509;
use serde_json::Value;

use super::ServiceArgs;
use crate::client::{CliError, Client};
use crate::pem::{PemError, read_private_key, read_secret_file};
use crate::secdomain::{self, WrappingCert};

/// The api-version sent to the security-domain endpoints: az 2.91's (§2.1).
const API_VERSION: &str = "7.5";
/// How long `download` and `upload` follow their operation before giving up.
const FOLLOW_FOR: Duration = Duration::from_secs(30 * 60);
/// The wait between polls when the service names none.
const DEFAULT_POLL: Duration = Duration::from_secs(2);

#[derive(Subcommand)]
pub enum SecurityDomainCommand {
    /// Offline: make the restore blob that activates a new HSM with an existing security
    /// domain (az keyvault security-domain restore-blob). Needs the SD file, the new HSM's
    /// exchange key (from init-recovery) and at least the quorum of the SD's wrapping keys.
    RestoreBlob(RestoreBlobArgs),
    /// Offline: the same security domain under a new master key, shared out to new wrapping
    /// certificates with a new quorum (what a second download does on Azure). The old file and
    /// its keys still open the domain: destroy them if they are being retired.
    Reshare(ReshareArgs),
    /// Activate the service by downloading its security domain, encrypted to 3 to 10 wrapping
    /// certificates of which any `--sd-quorum` recover it.
    Download(DownloadArgs),
    /// Put the service into recovery: fetch its transfer key and write its certificate as the
    /// exchange key for restore-blob.
    InitRecovery(InitRecoveryArgs),
    /// Activate the service with an existing security domain: a restore blob, or an SD file
    /// with the wrapping keys to make one on the spot.
    Upload(UploadArgs),
}

/// The wrapping private keys of an SD file.
#[derive(Args)]
pub struct WrappingKeys {
    /// PEM private keys of the SD's wrapping certificates, at least its quorum. As with az,
    /// KEY.pem's certificate must be beside it as KEY.cer (PEM).
    #[arg(long, num_args = 1.., required = true, value_name = "KEY.pem")]
    sd_wrapping_keys: Vec<PathBuf>,
    /// Passwords of encrypted keys, in the order of --sd-wrapping-keys ("" for a key without
    /// one). Other users of this machine can read them while the command runs.
    #[arg(long, num_args = 1..)]
    passwords: Vec<String>,
}

#[derive(Args)]
pub struct RestoreBlobArgs {
    /// The security-domain file a download wrote.
    #[arg(long, value_name = "SD.json")]
    sd_file: PathBuf,
    /// The new HSM's exchange key, as init-recovery wrote it (a PEM certificate).
    #[arg(long, value_name = "EXCH.pem")]
    sd_exchange_key: PathBuf,
    #[command(flatten)]
    keys: WrappingKeys,
    /// Where to write the restore blob (must not exist).
    #[arg(long, value_name = "OUT.json")]
    sd_file_restore_blob: PathBuf,
}

#[derive(Args)]
pub struct ReshareArgs {
    /// The security-domain file to reshare.
    #[arg(long, value_name = "OLD.json")]
    sd_file: PathBuf,
    #[command(flatten)]
    keys: WrappingKeys,
    /// The new wrapping certificates (PEM), 3 to 10.
    #[arg(long, num_args = 1.., required = true, value_name = "CERT.cer")]
    new_wrapping_keys: Vec<PathBuf>,
    /// How many of the new wrapping keys recover the domain (2 to 10, at most their number).
    #[arg(long)]
    sd_quorum: u8,
    /// Where to write the new security-domain file (must not exist).
    #[arg(long, value_name = "NEW.json")]
    security_domain_file: PathBuf,
}

#[derive(Args)]
pub struct DownloadArgs {
    /// As a principal with the download action (Managed HSM Administrator).
    #[command(flatten)]
    service: ServiceArgs,
    /// The wrapping certificates (PEM), 3 to 10; each gets one share of the domain.
    #[arg(long, num_args = 1.., required = true, value_name = "CERT.cer")]
    sd_wrapping_keys: Vec<PathBuf>,
    /// How many of the wrapping keys recover the domain (2 to 10, at most their number).
    #[arg(long)]
    sd_quorum: u8,
    /// Where to write the security-domain file (must not exist).
    #[arg(long, value_name = "SD.json")]
    security_domain_file: PathBuf,
}

#[derive(Args)]
pub struct InitRecoveryArgs {
    /// As a principal with the transfer-key read action (Managed HSM Administrator).
    #[command(flatten)]
    service: ServiceArgs,
    /// Where to write the exchange key, a PEM certificate (must not exist).
    #[arg(long, value_name = "EXCH.pem")]
    sd_exchange_key: PathBuf,
}

#[derive(Args)]
pub struct UploadArgs {
    /// As a principal with the upload action (Managed HSM Administrator).
    #[command(flatten)]
    service: ServiceArgs,
    /// The security-domain file, or with --restore-blob the restore blob.
    #[arg(long, value_name = "FILE")]
    sd_file: PathBuf,
    /// --sd-file is a restore blob (from restore-blob): send it as it is.
    #[arg(long, conflicts_with_all = ["sd_exchange_key", "sd_wrapping_keys", "passwords"])]
    restore_blob: bool,
    /// The service's exchange key, as init-recovery wrote it.
    #[arg(
        long,
        value_name = "EXCH.pem",
        required_unless_present = "restore_blob"
    )]
    sd_exchange_key: Option<PathBuf>,
    /// PEM private keys of the SD's wrapping certificates (KEY.pem beside KEY.cer).
    #[arg(
        long,
        num_args = 1..,
        value_name = "KEY.pem",
        required_unless_present = "restore_blob"
    )]
    sd_wrapping_keys: Vec<PathBuf>,
    /// Passwords of encrypted keys, in the order of --sd-wrapping-keys.
    #[arg(long, num_args = 1..)]
    passwords: Vec<String>,
}

pub fn run(cmd: SecurityDomainCommand) -> Result<(), CliError> {
    match cmd {
        SecurityDomainCommand::RestoreBlob(args) => restore_blob(&args),
        SecurityDomainCommand::Reshare(args) => reshare(&args),
        SecurityDomainCommand::Download(args) => download(&args),
        SecurityDomainCommand::InitRecovery(args) => init_recovery(&args),
        SecurityDomainCommand::Upload(args) => upload(&args),
    }
}

fn restore_blob(args: &RestoreBlobArgs) -> Result<(), CliError> {
    refuse_existing(&args.sd_file_restore_blob)?;
    let blob = make_blob(
        &args.sd_file,
        &args.sd_exchange_key,
        &args.keys.sd_wrapping_keys,
        &args.keys.passwords,
    )?;
    write_new(&args.sd_file_restore_blob, blob.as_bytes())?;
    println!(
        "wrote the restore blob to {}",
        args.sd_file_restore_blob.display()
    );
    Ok(())
}

/// §5 on files: the SD file, the exchange key and the wrapping keys read, the blob made.
fn make_blob(
    sd_file: &Path,
    exchange: &Path,
    key_paths: &[PathBuf],
    passwords: &[String],
) -> Result<String, CliError> {
    let sd = read_text(sd_file)?;
    let exchange =
        std::fs::read(exchange).map_err(|e| format!("cannot read {}: {e}", exchange.display()))?;
    let keys = load_keys(key_paths, passwords)?;
    secdomain::restore_blob_offline(&sd, &exchange, &keys)
        .map_err(|e| name_keys(e, sd_file, key_paths))
}

fn reshare(args: &ReshareArgs) -> Result<(), CliError> {
    refuse_existing(&args.security_domain_file)?;
    let sd = read_text(&args.sd_file)?;
    let certs = read_wrapping_certs(&args.new_wrapping_keys)?;
    let keys = load_keys(&args.keys.sd_wrapping_keys, &args.keys.passwords)?;
    let text = secdomain::reshare_offline(&sd, &keys, &certs, args.sd_quorum)
        .map_err(|e| name_keys(e, &args.sd_file, &args.keys.sd_wrapping_keys))?;
    write_new(&args.security_domain_file, text.as_bytes())?;
    println!(
        "wrote the security domain to {}: {} of its {} new wrapping keys recover it",
        args.security_domain_file.display(),
        args.sd_quorum,
        certs.len()
    );
    eprintln!(
        "note: {} and its wrapping keys still recover the same domain",
        args.sd_file.display()
    );
    Ok(())
}

fn download(args: &DownloadArgs) -> Result<(), CliError> {
    refuse_existing(&args.security_domain_file)?;
    let body = download_body(&args.sd_wrapping_keys, args.sd_quorum)?;
    let client = args.service.client()?;
    let response = client.answer(
        client
            .request("POST", "/securitydomain/download")
            .query("api-version", API_VERSION)
            .set("Content-Type", "application/json")
            .send_string(&body),
    )?;
    let accepted = Accepted::from_response(response, "/securitydomain/download/pending")?;
    let value = accepted.body["value"].as_str().ok_or(
        "the service accepted the download but its answer holds no security domain ('value')",
    )?;
    // As az: the file is the value's text, verbatim, written before the operation is followed.
    write_new(&args.security_domain_file, value.as_bytes())?;
    eprintln!(
        "wrote the security domain to {}",
        args.security_domain_file.display()
    );
    finish(&client, &accepted)
}

/// The body az sends to `POST /securitydomain/download` for these certificate files, with the
/// limits checked before anything is sent (az leaves M ≤ N to the server).
fn download_body(cert_paths: &[PathBuf], quorum: u8) -> Result<String, CliError> {
    let certs = read_wrapping_certs(cert_paths)?;
    let required = secdomain::check_quorum(certs.len(), u64::from(quorum))?;
    Ok(secdomain::download_request_body(&certs, required)?)
}

fn init_recovery(args: &InitRecoveryArgs) -> Result<(), CliError> {
    refuse_existing(&args.sd_exchange_key)?;
    let client = args.service.client()?;
    let answer: Value = client
        .answer(
            client
                .request("GET", "/securitydomain/upload")
                .query("api-version", API_VERSION)
                .call(),
        )?
        .into_json()?;
    let (pem, x5t) = exchange_pem(&answer)?;
    write_new(&args.sd_exchange_key, &pem)?;
    println!(
        "wrote the exchange key (the service's transfer key, x5t#S256 {x5t}) to {}",
        args.sd_exchange_key.display()
    );
    Ok(())
}

/// The exchange key's PEM certificate, and its thumbprint, from the transfer-key answer
/// (§2.4): `x5c[0]` of the JWK that `transfer_key` holds as a string (an object is read too).
fn exchange_pem(answer: &Value) -> Result<(Vec<u8>, String), String> {
    let jwk = match &answer["transfer_key"] {
        Value::String(text) => serde_json::from_str::<Value>(text)
            .map_err(|e| format!("the service's transfer_key is not a JWK: {e}"))?,
        object @ Value::Object(_) => object.clone(),
        _ => return Err("the service's answer holds no transfer_key".into()),
    };
    let first = jwk["x5c"]
        .get(0)
        .and_then(Value::as_str)
        .ok_or("the service's transfer key has no certificate (Insufficient x5c)")?;
    use base64::Engine;
    let der = base64::engine::general_purpose::STANDARD
        .decode(first)
        .map_err(|_| "the transfer key's x5c[0] is not base64")?;
    let cert =
        X509::from_der(&der).map_err(|_| "the transfer key's x5c[0] is not a certificate")?;
    let pem = cert
        .to_pem()
        .map_err(|e| format!("cannot write PEM: {e}"))?;
    Ok((pem, secdomain::x5t_256(&der)))
}

fn upload(args: &UploadArgs) -> Result<(), CliError> {
    let text = if args.restore_blob {
        let text = read_text(&args.sd_file)?;
        check_blob(&text).map_err(|m| format!("{}: {m}", args.sd_file.display()))?;
        text
    } else {
        let exchange = args
            .sd_exchange_key
            .as_ref()
            .ok_or("--sd-exchange-key is needed to make the restore blob")?;
        make_blob(
            &args.sd_file,
            exchange,
            &args.sd_wrapping_keys,
            &args.passwords,
        )?
    };
    let client = args.service.client()?;
    let response = client.answer(
        client
            .request("POST", "/securitydomain/upload")
            .query("api-version", API_VERSION)
            .set("Content-Type", "application/json")
            .send_string(&upload_body(&text)),
    )?;
    let accepted = Accepted::from_response(response, "/securitydomain/upload/pending")?;
    finish(&client, &accepted)
}

/// `{"value": blob text}` (§2.5).
fn upload_body(blob: &str) -> String {
    serde_json::json!({ "value": blob }).to_string()
}

/// A file given with --restore-blob must be one: a JSON object with `WrappedKey`.
fn check_blob(text: &str) -> Result<(), String> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| format!("not a restore blob (not JSON: {e})"))?;
    if value.get("SharedKeys").is_some() {
        return Err("this is a security-domain file, not a restore blob; without --restore-blob, give --sd-exchange-key and --sd-wrapping-keys to make the blob".into());
    }
    if value.get("WrappedKey").is_none() || value.get("EncData").is_none() {
        return Err("not a restore blob (no EncData and WrappedKey)".into());
    }
    Ok(())
}

/// A `202 Accepted` of a security-domain operation: its body and where to follow it.
struct Accepted {
    body: Value,
    status_url: String,
    retry_after: Option<Duration>,
}

impl Accepted {
    fn from_response(response: ureq::Response, default_status: &str) -> Result<Self, CliError> {
        let code = response.status();
        let status_url = response.header("azure-asyncoperation").map(str::to_owned);
        let retry_after = response.header("retry-after").map(str::to_owned);
        let body = response.into_string()?;
        Ok(Self::from_parts(
            code,
            status_url,
            retry_after.as_deref(),
            &body,
            default_status,
        )?)
    }

    fn from_parts(
        code: u16,
        status_url: Option<String>,
        retry_after: Option<&str>,
        body: &str,
        default_status: &str,
    ) -> Result<Self, String> {
        if code != 202 {
            return Err(format!("the service answered {code}, not 202 Accepted"));
        }
        let body = serde_json::from_str(body)
            .map_err(|e| format!("the service's answer is not JSON: {e}"))?;
        Ok(Accepted {
            body,
            status_url: status_url.unwrap_or_else(|| default_status.to_owned()),
            retry_after: retry_after.and_then(parse_retry_after),
        })
    }
}

fn parse_retry_after(value: &str) -> Option<Duration> {
    value
        .trim()
        .parse::<u64>()
        .ok()
        .map(|s| Duration::from_secs(s.clamp(1, 30)))
}

/// Follows an operation to its end and prints its last status, as az does.
fn finish(client: &Client, accepted: &Accepted) -> Result<(), CliError> {
    let started = Instant::now();
    let mut wait = accepted.retry_after.unwrap_or(DEFAULT_POLL);
    let mut last = String::new();
    loop {
        let response = client.answer(client.request("GET", &accepted.status_url).call())?;
        if let Some(next) = response.header("retry-after").and_then(parse_retry_after) {
            wait = next;
        }
        let status: Value = response.into_json()?;
        match outcome(&status) {
            Some(result) => {
                println!("{status}");
                return result.map_err(Into::into);
            }
            None if started.elapsed() > FOLLOW_FOR => {
                return Err(format!(
                    "the operation is still in progress after {} minutes; follow it with GET {}",
                    FOLLOW_FOR.as_secs() / 60,
                    accepted.status_url
                )
                .into());
            }
            None => {
                let line = format!(
                    "{}: {}",
                    status["status"].as_str().unwrap_or("?"),
                    status["status_details"].as_str().unwrap_or("")
                );
                if line != last {
                    eprintln!("{line}");
                    last = line;
                }
                std::thread::sleep(wait);
            }
        }
    }
}

/// What a status body (`{"status","status_details"}`, §2.1) means: `None` while in progress;
/// the statuses az treats as terminal otherwise.
fn outcome(status: &Value) -> Option<Result<(), String>> {
    let details = status["status_details"].as_str().unwrap_or("no details");
    let Some(state) = status["status"].as_str() else {
        return Some(Err(format!(
            "the service's status has no 'status': {status}"
        )));
    };
    match state.to_ascii_lowercase().as_str() {
        "success" | "succeeded" => Some(Ok(())),
        "failed" | "canceled" => Some(Err(format!("the operation {state}: {details}"))),
        _ => None,
    }
}

/// Prefixes an error with the SD file's name and, where it names wrapping keys by number,
/// says which file each number is.
fn name_keys(e: secdomain::Error, sd_file: &Path, keys: &[PathBuf]) -> CliError {
    let message = e.to_string();
    let legend = if message.contains("rapping key ") {
        let names: Vec<String> = keys
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{} = {}", i + 1, p.display()))
            .collect();
        format!(" [wrapping keys: {}]", names.join(", "))
    } else {
        String::new()
    };
    format!("{}: {message}{legend}", sd_file.display()).into()
}

/// Each private key with the certificate az expects beside it (`KEY.cer`, PEM).
fn load_keys(
    paths: &[PathBuf],
    passwords: &[String],
) -> Result<Vec<(PKey<Private>, X509)>, CliError> {
    if passwords.len() > paths.len() {
        return Err(format!(
            "{} passwords for {} wrapping keys",
            passwords.len(),
            paths.len()
        )
        .into());
    }
    paths
        .iter()
        .enumerate()
        .map(|(i, path)| {
            let pem = read_secret_file(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let password = passwords
                .get(i)
                .filter(|p| !p.is_empty())
                .map(String::as_bytes);
            let key = read_private_key(&pem, password).map_err(|e| match e {
                PemError::NeedsPassword => format!(
                    "{} is encrypted; give its password with --passwords, in the order of --sd-wrapping-keys",
                    path.display()
                ),
                other => format!("{}: {other}", path.display()),
            })?;
            let cert_path = path.with_extension("cer");
            let cert = read_certificate(&cert_path).map_err(|e| {
                format!(
                    "{e} (the certificate of {} must be beside it as {}, in PEM, as az expects)",
                    path.display(),
                    cert_path.display()
                )
            })?;
            Ok((key, cert))
        })
        .collect()
}

fn read_wrapping_certs(paths: &[PathBuf]) -> Result<Vec<WrappingCert>, CliError> {
    paths
        .iter()
        .map(|path| {
            let cert = read_certificate(path)?;
            secdomain::wrapping_cert_from_x509(&cert)
                .map_err(|e| format!("{}: {e}", path.display()).into())
        })
        .collect()
}

/// A certificate file: PEM, as az writes and reads them (DER accepted too).
fn read_certificate(path: &Path) -> Result<X509, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    X509::from_pem(&bytes)
        .or_else(|_| X509::from_der(&bytes))
        .map_err(|_| format!("{} is not a certificate", path.display()))
}

fn read_text(path: &Path) -> Result<String, CliError> {
    Ok(
        std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
    )
}

fn exists_error(path: &Path) -> String {
    format!(
        "{} already exists; it is not overwritten (choose another path or move it away)",
        path.display()
    )
}

fn refuse_existing(path: &Path) -> Result<(), String> {
    if path.symlink_metadata().is_ok() {
        return Err(exists_error(path));
    }
    Ok(())
}

/// Writes a new file, failing if the path exists by now.
fn write_new(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => exists_error(path),
            _ => format!("cannot create {}: {e}", path.display()),
        })?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::hash::MessageDigest;
    use openssl::symm::Cipher;
    use secdomain::{DomainContents, Item};

    /// `n` wrapping keys written as az users keep them: `kI.pem` (the first encrypted with
    /// "pw1") beside `kI.cer`.
    fn write_keys(dir: &Path, prefix: &str, n: usize) -> Vec<PathBuf> {
        (1..=n)
            .map(|i| {
                let (key, cert) =
                    secdomain::generate_wrapping_key(&format!("{prefix}{i}")).expect("key");
                let pem = if i == 1 {
                    key.private_key_to_pem_pkcs8_passphrase(Cipher::aes_256_cbc(), b"pw1")
                } else {
                    key.private_key_to_pem_pkcs8()
                }
                .expect("pem");
                let path = dir.join(format!("{prefix}{i}.pem"));
                std::fs::write(&path, pem).expect("write key");
                std::fs::write(path.with_extension("cer"), cert.to_pem().expect("pem"))
                    .expect("write cert");
                path
            })
            .collect()
    }

    fn certs_of(keys: &[PathBuf]) -> Vec<PathBuf> {
        keys.iter().map(|k| k.with_extension("cer")).collect()
    }

    fn domain() -> DomainContents {
        DomainContents {
            id: crate::model::VersionId::random(),
            wrap: zeroize::Zeroizing::new([1; 32]),
            mac: zeroize::Zeroizing::new([2; 32]),
        }
    }

    /// The service's side of an upload, in process.
    fn open_blob(blob: &str, key: &PKey<Private>, cert: &X509) -> Vec<Item> {
        let der = cert.to_der().expect("der");
        let parsed = secdomain::parse_restore_blob(blob, &secdomain::x5t_256(&der)).expect("blob");
        let mut dec = openssl::encrypt::Decrypter::new(key).expect("decrypter");
        dec.set_rsa_padding(openssl::rsa::Padding::PKCS1_OAEP)
            .expect("oaep");
        dec.set_rsa_oaep_md(MessageDigest::sha256()).expect("md");
        dec.set_rsa_mgf1_md(MessageDigest::sha256()).expect("mgf1");
        let mut cek = vec![0; dec.decrypt_len(parsed.encrypted_cek()).expect("len")];
        let n = dec
            .decrypt(parsed.encrypted_cek(), &mut cek)
            .expect("decrypt");
        cek.truncate(n);
        parsed.open(&cek).expect("opens")
    }

    #[test]
    fn restore_blob_and_reshare_work_on_files_as_az_lays_them_out() {
        let dir = tempfile::tempdir().expect("dir");
        let keys = write_keys(dir.path(), "k", 3);
        let original = domain();
        let certs = read_wrapping_certs(&certs_of(&keys)).expect("certs");
        let sd = secdomain::build_sd_file(&original.to_items(), &certs, 2).expect("sd");
        let sd_path = dir.path().join("SD.json");
        std::fs::write(&sd_path, &sd).expect("write");
        let (exchange_key, exchange_cert) =
            secdomain::generate_wrapping_key("hsm2.example.net").expect("exchange");
        let exchange = dir.path().join("EXCH.pem");
        std::fs::write(&exchange, exchange_cert.to_pem().expect("pem")).expect("write");

        let out = dir.path().join("OUT.json");
        let args = RestoreBlobArgs {
            sd_file: sd_path.clone(),
            sd_exchange_key: exchange.clone(),
            keys: WrappingKeys {
                sd_wrapping_keys: vec![keys[0].clone(), keys[2].clone()],
                passwords: vec!["pw1".into()],
            },
            sd_file_restore_blob: out.clone(),
        };
        restore_blob(&args).expect("restore-blob");
        let blob = std::fs::read_to_string(&out).expect("blob");
        let back = DomainContents::from_items(open_blob(&blob, &exchange_key, &exchange_cert))
            .expect("domain");
        assert_eq!(back.id, original.id);
        assert_eq!(*back.wrap, *original.wrap);
        // Never overwritten.
        let again = restore_blob(&args).expect_err("exists");
        assert!(again.to_string().contains("already exists"), "{again}");
        assert_eq!(std::fs::read_to_string(&out).expect("blob"), blob);

        // Reshare to three new keys with quorum 3, then recover with all of them.
        let new_keys = write_keys(dir.path(), "n", 3);
        let new_sd = dir.path().join("NEW.json");
        reshare(&ReshareArgs {
            sd_file: sd_path.clone(),
            keys: WrappingKeys {
                sd_wrapping_keys: keys[1..].to_vec(),
                passwords: vec![],
            },
            new_wrapping_keys: certs_of(&new_keys),
            sd_quorum: 3,
            security_domain_file: new_sd.clone(),
        })
        .expect("reshare");
        let blob = make_blob(&new_sd, &exchange, &new_keys, &["pw1".into()]).expect("blob");
        let back = DomainContents::from_items(open_blob(&blob, &exchange_key, &exchange_cert))
            .expect("domain");
        assert_eq!(back.id, original.id);
        let short = make_blob(&new_sd, &exchange, &new_keys[1..], &[]).expect_err("two of three");
        assert!(short.to_string().contains("needs 3"), "{short}");
    }

    #[test]
    fn missing_passwords_certificates_and_keys_are_named() {
        let dir = tempfile::tempdir().expect("dir");
        let keys = write_keys(dir.path(), "k", 3);
        let certs = read_wrapping_certs(&certs_of(&keys)).expect("certs");
        let sd = secdomain::build_sd_file(&domain().to_items(), &certs, 2).expect("sd");
        let sd_path = dir.path().join("SD.json");
        std::fs::write(&sd_path, sd).expect("write");
        let exchange = dir.path().join("EXCH.pem");
        std::fs::copy(keys[2].with_extension("cer"), &exchange).expect("copy");
        let err = |keys: &[PathBuf], passwords: &[String]| {
            make_blob(&sd_path, &exchange, keys, passwords)
                .expect_err("refused")
                .to_string()
        };
        let m = err(&keys[..2], &[]);
        assert!(
            m.contains("k1.pem is encrypted; give its password with --passwords"),
            "{m}"
        );
        let m = err(&keys[..2], &["wrong".into()]);
        assert!(m.contains("k1.pem") && m.contains("password"), "{m}");
        let m = err(&keys[1..2], &[]);
        assert!(m.contains("SD.json: The security domain needs 2"), "{m}");
        let m = err(&keys[..1], &["pw1".into(), "x".into()]);
        assert!(m.contains("2 passwords for 1 wrapping keys"), "{m}");
        std::fs::remove_file(keys[1].with_extension("cer")).expect("rm");
        let m = err(&keys[..2], &["pw1".into()]);
        assert!(m.contains("k2.cer") && m.contains("beside it"), "{m}");
        // A key of another domain is named by its file.
        let others = write_keys(dir.path(), "o", 1);
        let m = err(
            &[keys[2].clone(), others[0].clone()],
            &[String::new(), "pw1".into()],
        );
        assert!(
            m.contains("matches no share") && m.contains("2 = ") && m.contains("o1.pem"),
            "{m}"
        );
    }

    #[test]
    fn the_download_body_is_az_s_and_checked_before_sending() {
        let dir = tempfile::tempdir().expect("dir");
        let keys = write_keys(dir.path(), "c", 4);
        let certs = certs_of(&keys);
        let body = download_body(&certs[..3], 2).expect("body");
        let (parsed, required) =
            secdomain::parse_download_request(body.as_bytes()).expect("the server accepts it");
        assert_eq!((parsed.len(), required), (3, 2));
        let value: Value = serde_json::from_str(&body).expect("JSON");
        let first = &value["certificates"][0];
        assert_eq!(first["kty"], "RSA");
        assert_eq!(first["alg"], "RSA-OAEP-256");
        assert_eq!(
            first["key_ops"],
            serde_json::json!(["verify", "encrypt", "wrapKey"])
        );
        assert_eq!(first["x5c"].as_array().expect("x5c").len(), 1);
        assert!(first.get("kid").is_none(), "az sends no kid");
        let der = read_certificate(&certs[0])
            .expect("cert")
            .to_der()
            .expect("der");
        assert_eq!(first["x5t#S256"], secdomain::x5t_256(&der));
        for (paths, m, reason) in [
            (&certs[..3], 4, "only 3 certificates"),
            (&certs[..2], 2, "3 to 10 certificates; 2"),
            (&certs[..4], 1, "2 to 10, not 1"),
        ] {
            let e = download_body(paths, m).expect_err("refused").to_string();
            assert!(e.contains(reason), "{e}");
        }
        let missing = download_body(&[dir.path().join("none.cer")], 2).expect_err("missing");
        assert!(missing.to_string().contains("cannot read"));
    }

    #[test]
    fn the_upload_body_carries_the_blob_text_verbatim() {
        let blob = r#"{"EncData": {"data": [], "kdf": "sp108_kdf"}, "WrappedKey": {"enc_key": "a.b.c.d.e", "x5t_256": "x"}}"#;
        let body = upload_body(blob);
        let value: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(value, serde_json::json!({ "value": blob }));
        assert!(check_blob(blob).is_ok());
        let sd = r#"{"EncData": {}, "SharedKeys": {}, "version": 2}"#;
        assert!(
            check_blob(sd)
                .expect_err("an SD file")
                .contains("without --restore-blob")
        );
        assert!(check_blob("{}").is_err());
        assert!(check_blob("nope").is_err());
    }

    #[test]
    fn init_recovery_writes_the_transfer_certificate_as_pem() {
        let (_, cert) = secdomain::generate_wrapping_key("hsm").expect("key");
        let der = cert.to_der().expect("der");
        let answer = secdomain::transfer_key_body(&der).expect("body");
        let (pem, x5t) = exchange_pem(&answer).expect("pem");
        assert_eq!(
            X509::from_pem(&pem).expect("PEM").to_der().expect("der"),
            der
        );
        assert_eq!(x5t, secdomain::x5t_256(&der));
        // The object form the spec describes is read too.
        let jwk: Value =
            serde_json::from_str(answer["transfer_key"].as_str().expect("string")).expect("JWK");
        assert!(exchange_pem(&serde_json::json!({ "transfer_key": jwk })).is_ok());
        for bad in [
            serde_json::json!({}),
            serde_json::json!({ "transfer_key": "not json" }),
            serde_json::json!({ "transfer_key": "{\"x5c\": []}" }),
            serde_json::json!({ "transfer_key": "{\"x5c\": [\"AAAA\"]}" }),
        ] {
            assert!(exchange_pem(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn accepted_operations_and_their_statuses_are_read_as_az_does() {
        let a = Accepted::from_parts(
            202,
            Some("https://h/securitydomain/download/pending?api-version=7.5".into()),
            Some("1"),
            r#"{"value": "{}"}"#,
            "/securitydomain/download/pending",
        )
        .expect("accepted");
        assert_eq!(
            a.status_url,
            "https://h/securitydomain/download/pending?api-version=7.5"
        );
        assert_eq!(a.retry_after, Some(Duration::from_secs(1)));
        let a = Accepted::from_parts(
            202,
            None,
            Some("600"),
            "{}",
            "/securitydomain/upload/pending",
        )
        .expect("accepted");
        assert_eq!(a.status_url, "/securitydomain/upload/pending");
        assert_eq!(a.retry_after, Some(Duration::from_secs(30)));
        assert!(Accepted::from_parts(200, None, None, "{}", "/p").is_err());
        assert!(Accepted::from_parts(202, None, None, "", "/p").is_err());

        let status = |s: &str| serde_json::json!({ "status": s, "status_details": "d" });
        assert!(outcome(&status("InProgress")).is_none());
        assert!(matches!(outcome(&status("Success")), Some(Ok(()))));
        assert!(matches!(outcome(&status("Succeeded")), Some(Ok(()))));
        assert!(matches!(outcome(&status("Failed")), Some(Err(m)) if m.contains(": d")));
        assert!(matches!(outcome(&status("Canceled")), Some(Err(_))));
        assert!(matches!(outcome(&serde_json::json!({})), Some(Err(_))));
    }

    #[test]
    fn outputs_are_never_overwritten() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("x.json");
        write_new(&path, b"one").expect("new");
        assert!(refuse_existing(&path).is_err());
        assert!(
            write_new(&path, b"two")
                .expect_err("exists")
                .to_string()
                .contains("already exists")
        );
        assert_eq!(std::fs::read(&path).expect("read"), b"one");
        assert!(refuse_existing(&dir.path().join("y.json")).is_ok());
    }
}
