//! Shared harness of the integration tests: starts the real `p11vault` binary on a port-0
//! listener over a fresh data dir (a real PKCS#11 token, a real SQLite file), reads back the
//! URL it prints, and talks to it over real HTTPS trusting the CA it generated.
//!
//! One switch selects the token: `P11VAULT_TEST_TOKEN=softhsm` (the default: the service's
//! embedded SoftHSM2 token under the data dir) or `kryoptic` (with
//! `P11VAULT_KRYOPTIC_MODULE=/path/libkryoptic_pkcs11.so`, built by
//! `scripts/install-kryoptic.sh`). With kryoptic, [`data_dir`] prepares each data dir for an
//! external module, the way an operator of a vendor HSM would: a kryoptic config and its
//! sqlite token file beside the data dir (`{dir}.kryoptic/`), test-only PIN files there, and a
//! `p11vault.toml` in the data dir naming the module, the label and the PIN files.

#![allow(dead_code)]

pub mod versions;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const API: &str = "api-version=2025-07-01";

pub struct Service {
    child: Option<Child>,
    pub url: String,
    pub dir: PathBuf,
    pub token: String,
    agent: ureq::Agent,
}

/// How a start ended when it did not reach "listening".
#[derive(Debug)]
pub struct FailedStart {
    pub status: ExitStatus,
    pub stderr: String,
}

impl Service {
    /// Starts the service over `dir` and waits until it listens.
    pub fn start(dir: &Path) -> Service {
        Self::start_with(dir, &[]).unwrap_or_else(|f| panic!("the service did not start: {f:?}"))
    }

    /// Starts the service with extra environment (for example armed failpoints). Returns how it
    /// ended if it exited before listening.
    pub fn start_with(dir: &Path, env: &[(&str, &str)]) -> Result<Service, FailedStart> {
        let stderr_path = dir.with_extension("stderr.log");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_path)
            .expect("stderr log opens");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_p11vault"));
        cmd.args(["serve", "--data-dir"])
            .arg(dir)
            .args(["--listen", "127.0.0.1:0"])
            .env_remove("P11VAULT_TEST_FAILPOINTS")
            .env("P11VAULT_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(stderr);
        if let Some(conf) = kryoptic_conf_of(dir) {
            cmd.env("KRYOPTIC_CONF", conf);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("the p11vault binary starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        let url = loop {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
                break line
                    .strip_prefix("p11vault listening on ")
                    .unwrap_or_else(|| panic!("unexpected first line: {line}"))
                    .to_owned();
            }
            if let Some(status) = child.try_wait().expect("wait works") {
                return Err(FailedStart {
                    status,
                    stderr: std::fs::read_to_string(&stderr_path).unwrap_or_default(),
                });
            }
            assert!(
                Instant::now() < deadline,
                "the service did not start within 120 s"
            );
        };
        let token = std::fs::read_to_string(dir.join("admin.token"))
            .expect("admin.token exists")
            .trim()
            .to_owned();
        let agent = agent_trusting(&dir.join("ca.pem"));
        let service = Service {
            child: Some(child),
            url,
            dir: dir.to_owned(),
            token,
            agent,
        };
        // The initial administrator holds only the Administrator role, which uses no keys. The
        // tests' default caller is that principal with the key roles added, as an operator
        // would do after activating a Managed HSM.
        let admin = service.admin_principal();
        if !admin["roles"].to_string().contains("Crypto User") {
            let id = admin["id"].as_str().expect("an id").to_owned();
            for role in ["Managed HSM Crypto User", "Managed HSM Crypto Officer"] {
                service.cli(&["role", "assign", "--principal", &id, "--role", role]);
            }
        }
        Ok(service)
    }

    /// The initial administrator as `principal list --json` shows it.
    pub fn admin_principal(&self) -> Value {
        let listed = self.cli(&["principal", "list", "--json"]);
        listed
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("JSON"))
            .find(|p| p["name"] == "administrator")
            .expect("the administrator is listed")
    }

    /// Runs the admin CLI on this service's data dir; fails the test unless it succeeds.
    pub fn cli(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = cli(&self.dir, args);
        assert!(ok, "p11vault {}: {stderr}", args.join(" "));
        stdout
    }

    /// Registers a principal with roles at `scope`; returns (id, token).
    pub fn new_principal(&self, name: &str, roles: &[&str], scope: &str) -> (String, String) {
        let mut args = vec!["principal", "create", "--name", name, "--scope", scope];
        for role in roles {
            args.extend(["--role", role]);
        }
        let out = self.cli(&args);
        let field = |k: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("no {k} in {out}"))
                .to_owned()
        };
        (field("id"), field("token"))
    }

    /// The service's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or_default()
    }

    /// SIGTERM, then waits; the service must exit 0.
    pub fn stop(mut self) {
        let status = self.signal_and_wait("-TERM");
        assert!(
            status.success(),
            "the service exited with {status} after SIGTERM; log:\n{}",
            self.log()
        );
    }

    /// SIGKILL, then waits.
    pub fn kill(mut self) {
        self.signal_and_wait("-KILL");
    }

    /// Waits for the process to end on its own (an armed failpoint) and returns its status.
    pub fn wait_for_exit(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().expect("wait works") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the service did not exit within 60 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal_and_wait(&mut self, signal: &str) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let sent = Command::new("kill")
            .arg(signal)
            .arg(child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(sent.success());
        child.wait().expect("wait works")
    }

    /// What the service wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.with_extension("stderr.log")).unwrap_or_default()
    }

    /// A request with the administrator's token; returns status and JSON body (Null if none).
    pub fn call(&self, method: &str, path_and_query: &str, body: Option<&str>) -> (u16, Value) {
        self.call_as(Some(&self.token), method, path_and_query, body)
    }

    pub fn call_as(
        &self,
        token: Option<&str>,
        method: &str,
        path_and_query: &str,
        body: Option<&str>,
    ) -> (u16, Value) {
        let (status, _, text) = self.raw(token, method, path_and_query, body);
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"))
        };
        (status, json)
    }

    /// A request returning status, the `WWW-Authenticate` header and the body text.
    pub fn raw(
        &self,
        token: Option<&str>,
        method: &str,
        path_and_query: &str,
        body: Option<&str>,
    ) -> (u16, Option<String>, String) {
        let mut req = self
            .agent
            .request(method, &format!("{}{}", self.url, path_and_query))
            .set("Content-Type", "application/json");
        if let Some(t) = token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        let result = match body {
            Some(b) => req.send_string(b),
            None => req.call(),
        };
        let response = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path_and_query}: transport error {e}"),
        };
        let status = response.status();
        let challenge = response.header("www-authenticate").map(str::to_owned);
        let mut text = String::new();
        response
            .into_reader()
            .read_to_string(&mut text)
            .expect("body reads");
        (status, challenge, text)
    }

    /// A request with the administrator's token that may meet a dead process: the status, the
    /// `Retry-After` header and the JSON body, or the transport error.
    pub fn try_call(
        &self,
        method: &str,
        path_and_query: &str,
        body: Option<&str>,
    ) -> Result<(u16, Option<String>, Value), String> {
        let answer = self.try_answer(Some(&self.token), method, path_and_query, body)?;
        if !answer.text.is_empty() && answer.body.is_null() {
            return Err(format!("not JSON ({}): {}", answer.status, answer.text));
        }
        Ok((answer.status, answer.retry_after, answer.body))
    }

    /// A request with the administrator's token (or none), answered with the headers a retry
    /// and the audit log need.
    pub fn answer(
        &self,
        token: Option<&str>,
        method: &str,
        path_and_query: &str,
        body: Option<&str>,
    ) -> Answer {
        self.try_answer(token, method, path_and_query, body)
            .unwrap_or_else(|e| panic!("{method} {path_and_query}: transport error {e}"))
    }

    fn try_answer(
        &self,
        token: Option<&str>,
        method: &str,
        path_and_query: &str,
        body: Option<&str>,
    ) -> Result<Answer, String> {
        let mut req = self
            .agent
            .request(method, &format!("{}{}", self.url, path_and_query))
            .set("Content-Type", "application/json");
        if let Some(t) = token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        let result = match body {
            Some(b) => req.send_string(b),
            None => req.call(),
        };
        let response = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => return Err(e.to_string()),
        };
        let status = response.status();
        let header = |name: &str| response.header(name).map(str::to_owned);
        let (retry_after, request_id) = (header("retry-after"), header("x-ms-request-id"));
        let mut text = String::new();
        response
            .into_reader()
            .read_to_string(&mut text)
            .map_err(|e| e.to_string())?;
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Answer {
            status,
            retry_after,
            request_id,
            body,
            text,
        })
    }

    /// Sends a request to a service armed with a failpoint and checks that it dies with the
    /// process — a transport error, never an answer — and that the process is killed.
    pub fn request_dies_with_the_process(
        self,
        method: &str,
        path_and_query: &str,
        body: Option<&str>,
        what: &str,
    ) {
        let req = self
            .agent
            .request(method, &format!("{}{}", self.url, path_and_query))
            .set("Authorization", &format!("Bearer {}", self.token));
        let answer = match body {
            Some(b) => req.send_string(b),
            None => req.call(),
        };
        assert!(
            answer.is_err() && !matches!(answer, Err(ureq::Error::Status(..))),
            "{what}: the request was answered"
        );
        assert!(
            !self.wait_for_exit().success(),
            "{what}: the failpoint did not kill the process"
        );
    }

    /// Creates a key and returns its bundle, failing the test on any other status.
    pub fn create(&self, name: &str, body: &str) -> Value {
        let (status, json) = self.call("POST", &format!("/keys/{name}/create?{API}"), Some(body));
        assert_eq!(status, 200, "create {name} {body}: {json}");
        json
    }
}

/// What [`Service::answer`] returns.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    pub request_id: Option<String>,
    /// The body as JSON (Null if it is not JSON).
    pub body: Value,
    pub text: String,
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs the admin CLI on a data dir; returns (success, stdout, stderr).
pub fn cli(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_p11vault"));
    cmd.args(args).arg("--data-dir").arg(dir);
    if let Some(conf) = kryoptic_conf_of(dir) {
        cmd.env("KRYOPTIC_CONF", conf);
    }
    let out = cmd.output().expect("the p11vault binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An HTTPS client that trusts exactly the given CA.
pub fn agent_trusting(ca: &Path) -> ureq::Agent {
    p11vault::tls::client_agent(ca, Duration::from_secs(120)).expect("the CA file is usable")
}

/// The token the integration tests run on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TestToken {
    /// The service's embedded SoftHSM2 token under the data dir.
    SoftHsm,
    /// kryoptic, as an external module: `P11VAULT_KRYOPTIC_MODULE`.
    Kryoptic { module: PathBuf },
}

/// The token selected by `P11VAULT_TEST_TOKEN` (`softhsm`, the default, or `kryoptic`).
pub fn test_token() -> TestToken {
    match std::env::var("P11VAULT_TEST_TOKEN").as_deref() {
        Err(_) | Ok("") | Ok("softhsm") => TestToken::SoftHsm,
        Ok("kryoptic") => {
            let module = std::env::var_os("P11VAULT_KRYOPTIC_MODULE")
                .map(PathBuf::from)
                .expect(
                    "P11VAULT_TEST_TOKEN=kryoptic needs P11VAULT_KRYOPTIC_MODULE=/path/libkryoptic_pkcs11.so \
                     (scripts/install-kryoptic.sh prints it)",
                );
            assert!(
                module.exists(),
                "P11VAULT_KRYOPTIC_MODULE={} does not exist",
                module.display()
            );
            TestToken::Kryoptic { module }
        }
        Ok(other) => panic!("P11VAULT_TEST_TOKEN={other}: expected softhsm or kryoptic"),
    }
}

/// The padded AES key wrap the service chooses on the selected token at its first start
/// (ARCHITECTURE.md, "Protection models per token").
pub fn key_wrap() -> cryptoki::mechanism::Mechanism<'static> {
    if on_kryoptic() {
        p11vault::hsm::KeyWrap::Kwp
    } else {
        p11vault::hsm::KeyWrap::Pad
    }
    .mechanism()
}

/// The selected token, for reports.
pub fn token_name() -> &'static str {
    match test_token() {
        TestToken::SoftHsm => "SoftHSM2 (embedded default)",
        TestToken::Kryoptic { .. } => "kryoptic 1.5.4 (external module, SQLite store)",
    }
}

pub fn on_kryoptic() -> bool {
    matches!(test_token(), TestToken::Kryoptic { .. })
}

/// The label the harness gives the tests' token.
pub const TOKEN_LABEL: &str = "p11vault";

/// The files of a data dir's kryoptic token, beside the data dir (never inside it: a test that
/// wipes or copies the data dir must not take the token with it).
pub struct KryopticFiles {
    pub dir: PathBuf,
    pub conf: PathBuf,
    pub db: PathBuf,
    pub user_pin: PathBuf,
    pub so_pin: PathBuf,
}

pub fn kryoptic_files(data_dir: &Path) -> KryopticFiles {
    let dir = data_dir.with_extension("kryoptic");
    KryopticFiles {
        conf: dir.join("kryoptic.conf"),
        db: dir.join("token.sql"),
        user_pin: dir.join("TEST-ONLY-user.pin"),
        so_pin: dir.join("TEST-ONLY-so.pin"),
        dir,
    }
}

/// `KRYOPTIC_CONF` for a data dir prepared for kryoptic, `None` otherwise.
fn kryoptic_conf_of(data_dir: &Path) -> Option<PathBuf> {
    let conf = kryoptic_files(data_dir).conf;
    conf.exists().then_some(conf)
}

/// A kryoptic config with one sqlite slot per database file, numbered from 1 in this order.
pub fn kryoptic_conf(dbs: &[PathBuf]) -> String {
    dbs.iter()
        .enumerate()
        .map(|(i, db)| {
            format!(
                "[[slots]]\nslot = {}\ndbtype = \"sqlite\"\ndbargs = {:?}\n",
                i + 1,
                db.display().to_string()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `[pkcs11]` section of a data dir's `p11vault.toml` for the selected token: empty for
/// the embedded SoftHSM2 default.
pub fn token_config(data_dir: &Path) -> String {
    token_config_labelled(data_dir, TOKEN_LABEL)
}

/// [`token_config`] for a token with another label than [`TOKEN_LABEL`].
pub fn token_config_labelled(data_dir: &Path, label: &str) -> String {
    match test_token() {
        TestToken::SoftHsm if label == TOKEN_LABEL => String::new(),
        TestToken::SoftHsm => format!("[pkcs11]\ntoken_label = {label:?}\n"),
        TestToken::Kryoptic { module } => {
            let files = kryoptic_files(data_dir);
            format!(
                "[pkcs11]\nmodule = {:?}\ntoken_label = {label:?}\npin_file = {:?}\nso_pin_file = {:?}\n\
                 # A soft token: the service initialises an empty slot on the first start.\n\
                 init_token = true\n\n\
                 [keys]\n\
                 # An external token's first start needs the choice made (ARCHITECTURE.md,\n\
                 # \"Protection models\"): keys extractable under the security domain.\n\
                 backups = true\n\n\
                 [security_domain]\n\
                 # A software token: activated automatically, as the embedded default is.\n\
                 auto_activate = true\n",
                module.display().to_string(),
                files.user_pin.display().to_string(),
                files.so_pin.display().to_string(),
            )
        }
    }
}

/// Writes the data dir's `p11vault.toml`: the token's settings, then `extra` (TOML without a
/// `[pkcs11]` or `[keys]` table of its own on kryoptic; see [`token_config`]).
pub fn write_config(data_dir: &Path, extra: &str) {
    std::fs::create_dir_all(data_dir).expect("data dir");
    let text = format!("{extra}\n{}", token_config(data_dir));
    std::fs::write(data_dir.join("p11vault.toml"), text).expect("p11vault.toml");
}

/// Makes a data dir ready for the selected token before its first start: nothing for
/// SoftHSM2 (the service makes it all); for kryoptic the token's config, its PIN files and the
/// data dir's `p11vault.toml`.
pub fn prepare_data_dir(data_dir: &Path) {
    if let TestToken::Kryoptic { .. } = test_token() {
        let files = kryoptic_files(data_dir);
        std::fs::create_dir_all(&files.dir).expect("kryoptic dir");
        std::fs::write(&files.conf, kryoptic_conf(std::slice::from_ref(&files.db)))
            .expect("kryoptic.conf");
        // TEST-ONLY PINs (kryoptic wants at least 8 characters). Never use these anywhere else.
        std::fs::write(&files.user_pin, "TEST-ONLY-user-pin-0000\n").expect("user pin");
        std::fs::write(&files.so_pin, "TEST-ONLY-so-pin-0000\n").expect("so pin");
        create_private_dir(data_dir);
        write_config(data_dir, "");
    }
}

fn create_private_dir(dir: &Path) {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .expect("data dir");
}

/// Unpadded base64url, as the API's `value` fields want.
pub fn b64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether the selected token generates keys on this curve (JWK name): kryoptic has no
/// secp256k1 (P-256K).
pub fn curve_supported(crv: &str) -> bool {
    !(on_kryoptic() && crv == "P-256K")
}

/// Checks the service's refusal of a curve the token lacks: a 400 that names the curve and
/// the token.
pub fn assert_curve_refused(status: u16, body: &Value, crv: &str) {
    assert_eq!(status, 400, "{crv} on a token without it: {body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(crv) && message.contains(&format!("token '{TOKEN_LABEL}'")),
        "the refusal names the curve and the token's limit: {message}"
    );
}

/// The token user PIN of a data dir, wherever the selected token keeps it.
pub fn user_pin(data_dir: &Path) -> String {
    let path = match test_token() {
        TestToken::SoftHsm => data_dir.join("user.pin"),
        TestToken::Kryoptic { .. } => kryoptic_files(data_dir).user_pin,
    };
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_owned()
}

/// A fresh data dir inside a temporary directory that lives as long as the returned guard.
/// With kryoptic it is prepared for the external module ([`prepare_data_dir`]).
pub fn data_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("data");
    prepare_data_dir(&dir);
    (tmp, dir)
}

/// Every file the selected token keeps a data dir's token in: SoftHSM2's object files, or
/// kryoptic's SQLite database (with its journal, if any).
pub fn token_files(dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("token dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    match test_token() {
        TestToken::SoftHsm => walk(&dir.join("softhsm").join("tokens"), &mut out),
        TestToken::Kryoptic { .. } => {
            let db = kryoptic_files(dir).db;
            walk(db.parent().expect("the kryoptic dir"), &mut out);
            out.retain(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("token.sql"))
            });
        }
    }
    out
}

/// Opens the service's token in this process, logged in as the user, bypassing the service.
/// Only for test binaries that hold a single test: it points the module at the token through
/// the process environment (`SOFTHSM2_CONF` or `KRYOPTIC_CONF`).
pub fn open_token_as_user(dir: &Path) -> (cryptoki::context::Pkcs11, cryptoki::session::Session) {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;
    let (var, conf, module) = match test_token() {
        TestToken::SoftHsm => (
            "SOFTHSM2_CONF",
            dir.join("softhsm").join("softhsm2.conf"),
            p11vault::config::SOFTHSM2_CANDIDATES
                .iter()
                .map(PathBuf::from)
                .find(|p| p.exists())
                .expect("SoftHSM2 is installed"),
        ),
        TestToken::Kryoptic { module } => ("KRYOPTIC_CONF", kryoptic_files(dir).conf, module),
    };
    // SAFETY: the calling binary holds one test, and nothing else in the process reads the
    // environment while it changes; the module reads its config variable in C_Initialize below.
    #[expect(
        unsafe_code,
        reason = "point the PKCS#11 module at the service's token"
    )]
    unsafe {
        std::env::set_var(var, conf);
    }
    let ctx = Pkcs11::new(module).expect("module loads");
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("initialises");
    let slot = ctx
        .get_slots_with_token()
        .expect("slots")
        .into_iter()
        .find(|s| {
            ctx.get_token_info(*s)
                .map(|i| i.label() == TOKEN_LABEL)
                .unwrap_or(false)
        })
        .expect("the token is found by its label");
    let session = ctx.open_rw_session(slot).expect("session");
    session
        .login(UserType::User, Some(&AuthPin::new(user_pin(dir).into())))
        .expect("user login");
    (ctx, session)
}

/// A fresh data dir whose first start leaves the HSM not activated
/// (`security_domain.auto_activate = false`), on the selected token.
pub fn not_activated_data_dir() -> (tempfile::TempDir, PathBuf) {
    let (tmp, dir) = data_dir();
    std::fs::create_dir_all(&dir).expect("data dir");
    let config = dir.join("p11vault.toml");
    let text = std::fs::read_to_string(&config).unwrap_or_default();
    let text = if text.contains("auto_activate = true") {
        text.replace("auto_activate = true", "auto_activate = false")
    } else {
        format!("{text}\n[security_domain]\nauto_activate = false\n")
    };
    std::fs::write(&config, text).expect("p11vault.toml");
    (tmp, dir)
}

/// The transfer key of a not-activated service (`GET /securitydomain/upload`), as az's
/// init-recovery writes it: the certificate of its JWK's `x5c[0]`, in PEM.
pub fn transfer_certificate_pem(svc: &Service) -> Vec<u8> {
    use base64::Engine as _;
    let (status, body) = svc.call("GET", "/securitydomain/upload?api-version=7.5", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["key_format"], "jwk");
    let jwk: Value =
        serde_json::from_str(body["transfer_key"].as_str().expect("a JSON string")).expect("JWK");
    assert_eq!(jwk["kty"], "RSA");
    let der = base64::engine::general_purpose::STANDARD
        .decode(jwk["x5c"][0].as_str().expect("x5c"))
        .expect("b64");
    openssl::x509::X509::from_der(&der)
        .expect("a certificate")
        .to_pem()
        .expect("PEM")
}

/// The roles (`wrap`, `unwrap`, `mac`, `transfer-…`) of every security-domain object
/// (`p11vault-sd/…`) on the data dir's token, sorted by label, read by going around the
/// service. For test binaries that hold a single test (see [`open_token_as_user`]).
pub fn domain_object_roles(dir: &Path) -> Vec<String> {
    use cryptoki::object::{Attribute, AttributeType};
    let (_ctx, session) = open_token_as_user(dir);
    let mut labels: Vec<String> = session
        .find_objects(&[])
        .expect("find")
        .into_iter()
        .filter_map(|h| {
            session
                .get_attributes(h, &[AttributeType::Label])
                .ok()
                .and_then(|a| match a.first() {
                    Some(Attribute::Label(l)) => Some(String::from_utf8_lossy(l).into_owned()),
                    _ => None,
                })
        })
        .filter(|l| l.starts_with("p11vault-sd/"))
        .collect();
    labels.sort();
    labels
        .iter()
        .filter_map(|l| l.rsplit('/').next().map(str::to_owned))
        .collect()
}
