//! The operator's security-domain CLI end to end, as an operator without az runs it: the real
//! `p11vault security-domain …` binary against real not-activated services over HTTPS
//! (`download`, `init-recovery`, `upload`) and on files alone (`restore-blob`, `reshare`), with
//! wrapping keys made by the `openssl` command as an administrator would. What each command did
//! is checked over the REST API: the HSM it activated serves keys, and it reads the backups of
//! the HSM whose domain it holds. Refusals are checked by exit code and message, and leave
//! files and services as they were.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::{API, Service};
use openssl::x509::X509;
use serde_json::{Value, json};

/// What a refused command exits with (`ExitCode::FAILURE`).
const REFUSED: i32 = 1;

/// One run of the CLI.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self, what: &str) -> Run {
        assert_eq!(
            self.code,
            Some(0),
            "{what}: exit {:?}\nstdout: {}\nstderr: {}",
            self.code,
            self.stdout,
            self.stderr
        );
        self
    }

    /// A refusal: exit 1 and a message on stderr that says `needle`.
    fn refused(self, what: &str, needle: &str) -> Run {
        assert_eq!(
            self.code,
            Some(REFUSED),
            "{what}: exit {:?}\nstdout: {}\nstderr: {}",
            self.code,
            self.stdout,
            self.stderr
        );
        assert!(
            self.stderr.starts_with("p11vault: ") && self.stderr.contains(needle),
            "{what}: the refusal says {needle:?}: {}",
            self.stderr
        );
        self
    }
}

/// `p11vault security-domain ARGS` with no P11VAULT_* variable of the test's environment.
fn sd(args: &[&str]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_p11vault"));
    cmd.arg("security-domain").args(args);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("P11VAULT_") {
            cmd.env_remove(name);
        }
    }
    let out = cmd.output().expect("the p11vault binary runs");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// An online command against `svc`, with az's connection flags.
fn sd_online(svc: &Service, command: &str, args: &[&str]) -> Run {
    let url = svc.url.clone();
    let token = svc.dir.join("admin.token");
    let ca = svc.dir.join("ca.pem");
    let mut all = vec![
        command,
        "--url",
        &url,
        "--token-file",
        token.to_str().expect("utf-8"),
        "--ca-file",
        ca.to_str().expect("utf-8"),
    ];
    all.extend_from_slice(args);
    sd(&all)
}

fn s(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

/// `NAME.pem` (an RSA-2048 private key, encrypted if a password is given) beside `NAME.cer`
/// (its self-signed certificate, PEM), made with the `openssl` command.
fn openssl_key(dir: &Path, name: &str, password: Option<&str>) -> PathBuf {
    let key = dir.join(format!("{name}.pem"));
    let mut cmd = Command::new("openssl");
    cmd.args(["req", "-x509", "-newkey", "rsa:2048", "-days", "30"])
        .args(["-subj", &format!("/CN=sd administrator {name}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(key.with_extension("cer"));
    match password {
        Some(p) => cmd.args(["-passout", &format!("pass:{p}")]),
        None => cmd.arg("-noenc"),
    };
    let out = cmd.output().expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    key
}

fn openssl_keys(dir: &Path, prefix: &str, n: usize) -> Vec<PathBuf> {
    (1..=n)
        .map(|i| openssl_key(dir, &format!("{prefix}{i}"), None))
        .collect()
}

fn cert_of(key: &Path) -> PathBuf {
    key.with_extension("cer")
}

fn x5t_256_of(cert: &Path) -> String {
    let cert = X509::from_pem(&std::fs::read(cert).expect("cert")).expect("PEM");
    URL_SAFE_NO_PAD.encode(openssl::sha::sha256(&cert.to_der().expect("DER")))
}

/// Whether key operations are refused as on an HSM that is not activated.
fn assert_not_activated(svc: &Service) {
    let (status, answer) = svc.call(
        "POST",
        &format!("/keys/probe/create?{API}"),
        Some(r#"{"kty":"EC"}"#),
    );
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["error"]["innererror"]["code"], "HSMNotActivated");
}

/// `download` with these wrapping certificates and quorum into `out`.
fn run_download(svc: &Service, certs: &[PathBuf], quorum: u8, out: &Path) -> Run {
    let quorum = quorum.to_string();
    let mut args = vec!["--sd-wrapping-keys"];
    args.extend(certs.iter().map(|c| s(c)));
    args.extend(["--sd-quorum", &quorum, "--security-domain-file", s(out)]);
    sd_online(svc, "download", &args)
}

/// A download through the CLI, the certificates beside `keys`; checks the file and the
/// printed status, and returns the file.
fn download(svc: &Service, keys: &[PathBuf], quorum: u8, out: &Path) -> Value {
    let certs: Vec<PathBuf> = keys.iter().map(|k| cert_of(k)).collect();
    let run = run_download(svc, &certs, quorum, out).ok("download");
    let last: Value = serde_json::from_str(run.stdout.trim()).expect("the last status as JSON");
    assert_eq!(
        last,
        json!({"status": "Success", "status_details": "The resource is active."})
    );
    assert!(
        run.stderr.contains("wrote the security domain to"),
        "{}",
        run.stderr
    );
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(out).expect("SD file")).expect("JSON text");
    check_file(&file, &certs, quorum);
    file
}

/// The shares of an SD file are for these certificates, in order, with this quorum.
fn check_file(file: &Value, certs: &[PathBuf], quorum: u8) {
    assert_eq!(file["version"], 2);
    assert_eq!(file["SharedKeys"]["key_algorithm"], "shamir_share");
    assert_eq!(file["SharedKeys"]["required"], quorum);
    let shares: Vec<&Value> = file["SharedKeys"]["enc_shares"]
        .as_array()
        .expect("shares")
        .iter()
        .map(|s| &s["x5t_256"])
        .collect();
    let expected: Vec<String> = certs.iter().map(|c| x5t_256_of(c)).collect();
    assert_eq!(shares, expected.iter().collect::<Vec<_>>());
    assert_eq!(file["EncData"]["kdf"], "sp108_kdf");
}

/// init-recovery into `out`; checks the file is the transfer key the service serves.
fn init_recovery(svc: &Service, out: &Path) {
    let run = sd_online(svc, "init-recovery", &["--sd-exchange-key", s(out)]).ok("init-recovery");
    let (status, body) = svc.call("GET", "/securitydomain/upload?api-version=7.5", None);
    assert_eq!(status, 200, "{body}");
    let jwk: Value =
        serde_json::from_str(body["transfer_key"].as_str().expect("a string")).expect("JWK");
    let x5t = jwk["x5t#S256"].as_str().expect("x5t#S256");
    assert_eq!(x5t_256_of(out), x5t, "the exchange key is the transfer key");
    let der = STANDARD
        .decode(jwk["x5c"][0].as_str().expect("x5c"))
        .expect("b64");
    assert_eq!(
        X509::from_pem(&std::fs::read(out).expect("PEM"))
            .expect("PEM")
            .to_der()
            .expect("DER"),
        der
    );
    assert!(run.stdout.contains(x5t), "{}", run.stdout);
}

fn restore_blob(sd_file: &Path, exchange: &Path, keys: &[&PathBuf], out: &Path) -> Run {
    let mut args = vec![
        "restore-blob",
        "--sd-file",
        s(sd_file),
        "--sd-exchange-key",
        s(exchange),
        "--sd-wrapping-keys",
    ];
    args.extend(keys.iter().map(|k| s(k)));
    args.extend(["--sd-file-restore-blob", s(out)]);
    sd(&args)
}

/// The printed last status of a successful upload.
fn assert_uploaded(run: &Run) {
    let last: Value = serde_json::from_str(run.stdout.trim()).expect("the last status as JSON");
    assert_eq!(
        last,
        json!({"status": "Success", "status_details": "The resource is active."})
    );
}

/// Makes an RSA key on `svc`, signs a digest with it and backs it up: (digest, version,
/// signature, backup).
fn sign_and_back_up(svc: &Service, name: &str) -> (String, String, String, String) {
    let bundle = svc.create(name, r#"{"kty":"RSA","key_size":2048}"#);
    let version = bundle["key"]["kid"]
        .as_str()
        .and_then(|k| k.rsplit('/').next())
        .expect("a kid")
        .to_owned();
    let digest = URL_SAFE_NO_PAD.encode(openssl::sha::sha256(name.as_bytes()));
    let (status, signed) = svc.call(
        "POST",
        &format!("/keys/{name}/{version}/sign?{API}"),
        Some(&json!({"alg": "RS256", "value": digest}).to_string()),
    );
    assert_eq!(status, 200, "{signed}");
    let (status, backup) = svc.call("POST", &format!("/keys/{name}/backup?{API}"), None);
    assert_eq!(status, 200, "{backup}");
    (
        digest,
        version,
        signed["value"].as_str().expect("a signature").to_owned(),
        backup["value"].as_str().expect("a blob").to_owned(),
    )
}

/// Restores a key backup made elsewhere; returns the status and answer.
fn restore_key(svc: &Service, backup: &str) -> (u16, Value) {
    svc.call(
        "POST",
        &format!("/keys/restore?{API}"),
        Some(&json!({ "value": backup }).to_string()),
    )
}

fn assert_verifies(svc: &Service, name: &str, version: &str, digest: &str, signature: &str) {
    let (status, out) = svc.call(
        "POST",
        &format!("/keys/{name}/{version}/verify?{API}"),
        Some(&json!({"alg": "RS256", "digest": digest, "value": signature}).to_string()),
    );
    assert_eq!((status, &out["value"]), (200, &json!(true)), "{out}");
}

#[test]
fn download_activates_and_restore_blob_or_one_step_upload_recovers_new_hsms() {
    let work = tempfile::tempdir().expect("tmp");
    let w = work.path();
    // The second administrator keeps an encrypted key.
    let keys = vec![
        openssl_key(w, "k1", None),
        openssl_key(w, "k2", Some("pw2")),
        openssl_key(w, "k3", None),
    ];
    let (_tmp_a, dir_a) = common::not_activated_data_dir();
    let a = Service::start(&dir_a);
    assert_not_activated(&a);

    // Refused: too few certificates and a quorum over their number before anything is sent, a
    // certificate given twice by the service, an output file that exists (kept as it was).
    let sd_file = w.join("SD.json");
    let certs: Vec<PathBuf> = keys.iter().map(|k| cert_of(k)).collect();
    run_download(&a, &certs[..2], 2, &sd_file)
        .refused("two certificates", "3 to 10 certificates; 2");
    run_download(&a, &certs, 4, &sd_file).refused("quorum 4 of 3", "only 3 certificates");
    // az leaves duplicates to the service, and so does the CLI: the service's 400 is shown.
    let twice = [certs[0].clone(), certs[1].clone(), certs[0].clone()];
    run_download(&a, &twice, 2, &sd_file).refused(
        "a certificate twice",
        "the service answered 400: BadParameter: certificates[0] and certificates[2] are the same certificate",
    );
    assert!(!sd_file.exists(), "a refused download writes no file");
    std::fs::write(&sd_file, "keep me").expect("write");
    run_download(&a, &certs, 2, &sd_file).refused(
        "an existing output file",
        "already exists; it is not overwritten",
    );
    assert_eq!(std::fs::read_to_string(&sd_file).expect("read"), "keep me");
    assert_not_activated(&a);
    std::fs::remove_file(&sd_file).expect("rm");

    // The download activates A; a second one is refused by the service and writes nothing.
    download(&a, &keys, 2, &sd_file);
    let again = w.join("SD-again.json");
    run_download(&a, &certs, 2, &again)
        .refused("a download once active", "This HSM is already activated");
    assert!(!again.exists());
    let (digest, version, signature, backup) = sign_and_back_up(&a, "made-on-a");

    // B: init-recovery, restore-blob offline with keys 1 and 3, upload --restore-blob.
    let (_tmp_b, dir_b) = common::not_activated_data_dir();
    let b = Service::start(&dir_b);
    let exchange_b = w.join("B-exchange.pem");
    init_recovery(&b, &exchange_b);
    let before = std::fs::read(&exchange_b).expect("read");
    sd_online(&b, "init-recovery", &["--sd-exchange-key", s(&exchange_b)])
        .refused("an existing exchange key file", "already exists");
    assert_eq!(std::fs::read(&exchange_b).expect("read"), before);
    let blob_b = w.join("B-blob.json");
    restore_blob(&sd_file, &exchange_b, &[&keys[0]], &blob_b).refused(
        "one key of a quorum of two",
        "The security domain needs 2 of its wrapping keys; 1 given.",
    );
    assert!(!blob_b.exists(), "a refused restore-blob writes no file");
    let other = openssl_key(w, "stranger", None);
    restore_blob(&sd_file, &exchange_b, &[&keys[0], &other], &blob_b)
        .refused("a key of no share", "matches no share");
    restore_blob(&sd_file, &exchange_b, &[&keys[0], &keys[2]], &blob_b).ok("restore-blob");
    restore_blob(&sd_file, &exchange_b, &[&keys[0], &keys[2]], &blob_b)
        .refused("an existing blob file", "already exists");
    assert_not_activated(&b);

    // C: a blob made for B's transfer key is refused by C's service; then the one-step upload
    // (the SD file and two keys, the blob made on the spot) recovers C.
    let (_tmp_c, dir_c) = common::not_activated_data_dir();
    let c = Service::start(&dir_c);
    let exchange_c = w.join("C-exchange.pem");
    init_recovery(&c, &exchange_c);
    sd_online(&c, "upload", &["--sd-file", s(&blob_b), "--restore-blob"]).refused(
        "B's blob uploaded to C",
        "The restore blob was made for another HSM's transfer key",
    );
    sd_online(
        &c,
        "upload",
        &[
            "--sd-file",
            s(&sd_file),
            "--sd-exchange-key",
            s(&exchange_c),
            "--sd-wrapping-keys",
            s(&keys[2]),
        ],
    )
    .refused("one step with one key", "needs 2");
    sd_online(&c, "upload", &["--sd-file", s(&sd_file), "--restore-blob"])
        .refused("an SD file as a blob", "not a restore blob");
    assert_not_activated(&c);
    let one_step = [
        "--sd-file",
        s(&sd_file),
        "--sd-exchange-key",
        s(&exchange_c),
        "--sd-wrapping-keys",
        s(&keys[1]),
        s(&keys[2]),
    ];
    sd_online(&c, "upload", &one_step).refused(
        "an encrypted key without its password",
        "k2.pem is encrypted; give its password with --passwords",
    );
    assert_not_activated(&c);
    let run = sd_online(
        &c,
        "upload",
        &[&one_step[..], &["--passwords", "pw2", ""]].concat(),
    )
    .ok("one-step upload");
    assert_uploaded(&run);

    // B's blob, uploaded as it is, recovers B.
    let run = sd_online(&b, "upload", &["--sd-file", s(&blob_b), "--restore-blob"]).ok("upload B");
    assert_uploaded(&run);
    sd_online(&b, "upload", &["--sd-file", s(&blob_b), "--restore-blob"])
        .refused("an upload once active", "This HSM is already activated");

    // Both hold A's domain: A's key backup restores and A's signature verifies; their own keys
    // work, and their backups restore on A.
    for (svc, name) in [(&b, "made-on-b"), (&c, "made-on-c")] {
        let (status, restored) = restore_key(svc, &backup);
        assert_eq!(status, 200, "{restored}");
        assert_verifies(svc, "made-on-a", &version, &digest, &signature);
        let (d, v, sig, own) = sign_and_back_up(svc, name);
        assert_verifies(svc, name, &v, &d, &sig);
        let (status, back) = restore_key(&a, &own);
        assert_eq!(status, 200, "{back}");
        assert_verifies(&a, name, &v, &d, &sig);
    }
    a.stop();
    b.stop();
    c.stop();
}

#[test]
fn reshare_moves_the_domain_to_new_keys_and_a_new_quorum() {
    let work = tempfile::tempdir().expect("tmp");
    let w = work.path();
    let old = openssl_keys(w, "k", 3);
    let new = openssl_keys(w, "n", 3);
    let (_tmp_a, dir_a) = common::not_activated_data_dir();
    let a = Service::start(&dir_a);
    let sd_file = w.join("SD.json");
    download(&a, &old, 2, &sd_file);
    let (digest, version, signature, backup) = sign_and_back_up(&a, "made-on-a");
    a.stop();

    let new_file = w.join("NEW.json");
    let new_certs: Vec<PathBuf> = new.iter().map(|k| cert_of(k)).collect();
    let reshare_to = |keys: &[&PathBuf], quorum: &str, out: &Path| {
        let mut args = vec!["reshare", "--sd-file", s(&sd_file), "--sd-wrapping-keys"];
        args.extend(keys.iter().map(|k| s(k)));
        args.push("--new-wrapping-keys");
        args.extend(new_certs.iter().map(|c| s(c)));
        args.extend(["--sd-quorum", quorum, "--security-domain-file", s(out)]);
        sd(&args)
    };
    let reshare = |keys: &[&PathBuf], out: &Path| reshare_to(keys, "3", out);
    reshare(&[&old[0]], &new_file).refused(
        "one old key of a quorum of two",
        "The security domain needs 2 of its wrapping keys; 1 given.",
    );
    reshare_to(&[&old[0], &old[1]], "4", &new_file)
        .refused("a new quorum over the new keys", "only 3 certificates");
    assert!(!new_file.exists());
    let run = reshare(&[&old[0], &old[1]], &new_file).ok("reshare");
    assert!(
        run.stdout
            .contains("3 of its 3 new wrapping keys recover it"),
        "{}",
        run.stdout
    );
    let text = std::fs::read_to_string(&new_file).expect("NEW.json");
    reshare(&[&old[1], &old[2]], &new_file).refused("an existing output file", "already exists");
    assert_eq!(std::fs::read_to_string(&new_file).expect("NEW.json"), text);
    let file: Value = serde_json::from_str(&text).expect("JSON");
    check_file(&file, &new_certs, 3);

    // A fourth HSM: the new file opens with the three new keys, not with two of them (below
    // its quorum) and not with the old keys.
    let (_tmp_d, dir_d) = common::not_activated_data_dir();
    let d = Service::start(&dir_d);
    let exchange = w.join("D-exchange.pem");
    init_recovery(&d, &exchange);
    let blob = w.join("D-blob.json");
    restore_blob(&new_file, &exchange, &[&old[0], &old[1], &old[2]], &blob)
        .refused("the old keys on the new file", "matches no share");
    restore_blob(&new_file, &exchange, &[&new[0], &new[2]], &blob).refused(
        "two new keys of a quorum of three",
        "The security domain needs 3 of its wrapping keys; 2 given.",
    );
    assert!(!blob.exists());
    assert_not_activated(&d);
    restore_blob(&new_file, &exchange, &[&new[0], &new[1], &new[2]], &blob).ok("restore-blob");
    let run = sd_online(&d, "upload", &["--sd-file", s(&blob), "--restore-blob"]).ok("upload");
    assert_uploaded(&run);

    // D holds A's domain: A's backup restores and A's signature verifies.
    let (status, restored) = restore_key(&d, &backup);
    assert_eq!(status, 200, "{restored}");
    assert_verifies(&d, "made-on-a", &version, &digest, &signature);
    d.stop();
}
