//! Provisioning never destroys what it did not make (ARCHITECTURE.md, invariant 9): every way
//! a data dir and a token can disagree, against the real binary and real tokens (SoftHSM2 or
//! kryoptic, whichever the harness selects). A data dir that does not belong to the token it
//! finds is refused before anything is written to the token; the test counts the token's
//! objects directly (cryptoki, bypassing the service) before and after each refused start.
//!
//! One test in this binary: it points the module at the first instance's tokens through the
//! process environment (`SOFTHSM2_CONF` at its SoftHSM2 token directory, or `KRYOPTIC_CONF` at
//! its kryoptic config, which on kryoptic is given empty slots beside the first instance's
//! before its first start). Every other token of the test is made there, under its own label,
//! and the other data dirs reach them through a vendor-style `p11vault.toml`.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{API, FailedStart, Service, TestToken, data_dir};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, AttributeType};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use serde_json::json;

/// The module: SoftHSM2 as the service's embedded default finds it, or kryoptic's.
fn module() -> PathBuf {
    match common::test_token() {
        TestToken::SoftHsm => p11vault::config::SOFTHSM2_CANDIDATES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .expect("SoftHSM2 is installed"),
        TestToken::Kryoptic { module } => module,
    }
}

/// The tokens the first instance's module configuration holds besides its own: one for each
/// case that makes a token (`Tokens::init`).
const EXTRA_TOKENS: usize = 5;

/// Points this process's module at the first instance's tokens (its SoftHSM2 token directory,
/// or its kryoptic config with the extra slots); returns the environment variable and its
/// value, for the service processes of the other data dirs.
fn share_first_instance_tokens(a_dir: &Path) -> (&'static str, PathBuf) {
    let (var, conf) = match common::test_token() {
        TestToken::SoftHsm => (
            "SOFTHSM2_CONF",
            p11vault::provision::softhsm_conf_path(a_dir),
        ),
        TestToken::Kryoptic { .. } => ("KRYOPTIC_CONF", common::kryoptic_files(a_dir).conf),
    };
    // SAFETY: this binary holds one test, and nothing else in the process reads the
    // environment while it changes; the module reads the variable in C_Initialize.
    #[expect(
        unsafe_code,
        reason = "point the module at the first instance's tokens"
    )]
    unsafe {
        std::env::set_var(var, &conf);
    }
    (var, conf)
}

/// On kryoptic, before the first instance's first start: its config gets [`EXTRA_TOKENS`]
/// empty slots, each with its own sqlite file, after its own (the service's `init_token`
/// takes the first empty slot, slot 1). Only this test's: every other data dir keeps the
/// harness's one-slot config, so no other start can initialise a token it was not meant to.
/// (SoftHSM2 makes a new slot for every token initialised in a token directory.)
fn give_first_instance_extra_slots(a_dir: &Path) {
    if common::on_kryoptic() {
        let files = common::kryoptic_files(a_dir);
        let mut dbs = vec![files.db.clone()];
        dbs.extend((1..=EXTRA_TOKENS).map(|i| files.dir.join(format!("extra-{i}.sql"))));
        std::fs::write(&files.conf, common::kryoptic_conf(&dbs)).expect("kryoptic.conf");
    }
}

fn read_pin(path: &Path) -> String {
    std::fs::read_to_string(path)
        .expect("PIN file")
        .trim()
        .to_owned()
}

/// The test's own view of the token directory.
struct Tokens {
    ctx: Pkcs11,
}

impl Tokens {
    fn slot(&self, label: &str) -> Option<cryptoki::slot::Slot> {
        self.ctx
            .get_slots_with_token()
            .expect("slots")
            .into_iter()
            .find(|s| {
                self.ctx
                    .get_token_info(*s)
                    .map(|i| i.token_initialized() && i.label() == label)
                    .unwrap_or(false)
            })
    }

    /// Initialises a new token, as an operator does with the HSM's tools before a first start.
    fn init(&self, label: &str, pins: &Pins) {
        assert!(self.slot(label).is_none(), "no token {label} yet");
        let free = self
            .ctx
            .get_slots_with_token()
            .expect("slots")
            .into_iter()
            .find(|s| {
                self.ctx
                    .get_token_info(*s)
                    .map(|i| !i.token_initialized())
                    .unwrap_or(false)
            })
            .expect("a free slot");
        let so = AuthPin::new(read_pin(&pins.so).into());
        self.ctx.init_token(free, &so, label).expect("init token");
        let slot = self.slot(label).expect("the new token");
        let session = self.ctx.open_rw_session(slot).expect("session");
        session.login(UserType::So, Some(&so)).expect("SO login");
        session
            .init_pin(&AuthPin::new(read_pin(&pins.user).into()))
            .expect("init PIN");
        session.logout().expect("logout");
    }

    /// Every object stored on the token (public and private), as (label, id), sorted.
    fn objects(&self, label: &str, pins: &Pins) -> Vec<(String, Vec<u8>)> {
        let slot = self.slot(label).expect("the token");
        let session = self.ctx.open_ro_session(slot).expect("session");
        session
            .login(
                UserType::User,
                Some(&AuthPin::new(read_pin(&pins.user).into())),
            )
            .expect("user login");
        let mut out: Vec<(String, Vec<u8>)> = session
            // Token objects only: kryoptic also lists built-in session objects (mechanisms).
            .find_objects(&[Attribute::Token(true)])
            .expect("find")
            .into_iter()
            .map(|h| {
                let mut label = String::new();
                let mut id = Vec::new();
                for a in session
                    .get_attributes(h, &[AttributeType::Label, AttributeType::Id])
                    .expect("attributes")
                {
                    match a {
                        Attribute::Label(l) => label = String::from_utf8_lossy(&l).into_owned(),
                        Attribute::Id(i) => id = i,
                        _ => {}
                    }
                }
                (label, id)
            })
            .collect();
        out.sort();
        out
    }
}

/// The security domains whose objects are on the token, from the objects' labels.
fn domains(objects: &[(String, Vec<u8>)]) -> Vec<String> {
    let mut out: Vec<String> = objects
        .iter()
        .filter_map(|(l, _)| l.strip_prefix("p11vault-sd/"))
        .filter_map(|rest| rest.split('/').next())
        .map(str::to_owned)
        .collect();
    out.dedup();
    out
}

struct Pins {
    user: PathBuf,
    so: PathBuf,
}

impl Pins {
    /// The PIN files of a data dir's own token: the embedded SoftHSM2 token's in the data dir,
    /// or the harness's beside it for kryoptic.
    fn of(dir: &Path) -> Pins {
        match common::test_token() {
            TestToken::SoftHsm => Pins {
                user: dir.join("user.pin"),
                so: dir.join("so.pin"),
            },
            TestToken::Kryoptic { .. } => {
                let files = common::kryoptic_files(dir);
                Pins {
                    user: files.user_pin,
                    so: files.so_pin,
                }
            }
        }
    }

    /// New PIN files for a token the test makes.
    fn new_in(dir: &Path, tag: &str) -> Pins {
        std::fs::create_dir_all(dir).expect("pins dir");
        let pins = Pins {
            user: dir.join(format!("{tag}-user.pin")),
            so: dir.join(format!("{tag}-so.pin")),
        };
        std::fs::write(&pins.user, format!("user-{tag}-1234\n")).expect("user pin");
        std::fs::write(&pins.so, format!("so-{tag}-5678\n")).expect("so pin");
        pins
    }
}

/// Configures a data dir for a token reached as a vendor HSM would be: module, label, PINs.
fn configure_external(dir: &Path, label: &str, pins: &Pins) {
    std::fs::create_dir_all(dir).expect("data dir");
    let toml = format!(
        "[pkcs11]\nmodule = {:?}\ntoken_label = {label:?}\npin_file = {:?}\nso_pin_file = {:?}\n\
         [keys]\nbackups = true\n[security_domain]\nauto_activate = true\n",
        module(),
        pins.user,
        pins.so
    );
    std::fs::write(dir.join("p11vault.toml"), toml).expect("config");
}

fn sign_ok(svc: &Service, name: &str) {
    let (status, sig) = svc.call(
        "POST",
        &format!("/keys/{name}//sign?{API}"),
        Some(
            &json!({"alg": "ES256", "value": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"})
                .to_string(),
        ),
    );
    assert_eq!(status, 200, "{name} signs: {sig}");
}

fn backup(svc: &Service, name: &str) -> String {
    let (status, body) = svc.call("POST", &format!("/keys/{name}/backup?{API}"), None);
    assert_eq!(status, 200, "{body}");
    body["value"].as_str().expect("a blob").to_owned()
}

/// Purges the key and restores it from `blob`.
fn purge_and_restore(svc: &Service, name: &str, blob: &str) {
    assert_eq!(
        svc.call("DELETE", &format!("/keys/{name}?{API}"), None).0,
        200
    );
    assert_eq!(
        svc.call("DELETE", &format!("/deletedkeys/{name}?{API}"), None)
            .0,
        204
    );
    let (status, body) = svc.call(
        "POST",
        &format!("/keys/restore?{API}"),
        Some(&json!({ "value": blob }).to_string()),
    );
    assert_eq!(status, 200, "the backup of {name} restores: {body}");
}

fn refused(result: Result<Service, FailedStart>, what: &str, says: &str) -> String {
    match result {
        Ok(_) => panic!("{what}: the service started"),
        Err(f) => {
            assert!(!f.status.success(), "{what}: exit status {}", f.status);
            assert!(
                f.stderr.contains(says),
                "{what}: the refusal says '{says}':\n{}",
                f.stderr
            );
            f.stderr
        }
    }
}

#[test]
fn a_start_never_destroys_what_its_data_dir_did_not_make() {
    let (tmp, a_dir) = data_dir();
    give_first_instance_extra_slots(&a_dir);
    // The first instance (the embedded default on SoftHSM2, the harness's kryoptic token
    // otherwise), with a key and a backup of it.
    let a = Service::start(&a_dir);
    a.create("signer", r#"{"kty":"EC","crv":"P-256"}"#);
    sign_ok(&a, "signer");
    let blob = backup(&a, "signer");

    let (var, conf) = share_first_instance_tokens(&a_dir);
    let ctx = Pkcs11::new(module()).expect("module loads");
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("initialises");
    let tokens = Tokens { ctx };
    let conf = conf.to_string_lossy().into_owned();
    let env: &[(&str, &str)] = &[(var, conf.as_str())];

    let a = new_dir_on_a_used_token(&tokens, tmp.path(), a, env, &blob);
    old_dir_on_another_token(&tokens, tmp.path(), &a_dir, env);
    two_dirs_racing_for_one_token(&tokens, tmp.path(), env);
    half_made_first_start_on_a_used_token(&tokens, tmp.path(), env);
    half_made_first_start_finishes_with_its_recorded_domain(&tokens, tmp.path(), env);
    external_first_start_needs_the_backups_choice(&tokens, tmp.path(), env);
    a.stop();
}

/// Case 1: a new data dir configured for the token a first instance uses, while it runs and
/// after it stopped. Refused, nothing on the token changes, and the first instance keeps
/// working: its keys sign and its earlier backup restores.
fn new_dir_on_a_used_token(
    tokens: &Tokens,
    tmp: &Path,
    a: Service,
    env: &[(&str, &str)],
    blob: &str,
) -> Service {
    let a_pins = Pins::of(&a.dir);
    let before = tokens.objects("p11vault", &a_pins);
    assert_eq!(domains(&before).len(), 1, "{before:?}");

    let b_dir = tmp.join("second");
    configure_external(&b_dir, "p11vault", &a_pins);
    let second = Service::start_with(&b_dir, env);
    assert_eq!(
        tokens.objects("p11vault", &a_pins),
        before,
        "the second start changed nothing on the token"
    );
    refused(
        second,
        "a new data dir on a running instance's token",
        "already holds",
    );
    sign_ok(&a, "signer");

    let a_dir = a.dir.clone();
    a.stop();
    refused(
        Service::start_with(&b_dir, env),
        "a new data dir on a stopped instance's token",
        "already holds",
    );
    assert_eq!(tokens.objects("p11vault", &a_pins), before);

    let a = Service::start(&a_dir);
    sign_ok(&a, "signer");
    purge_and_restore(&a, "signer", blob);
    sign_ok(&a, "signer");
    a
}

/// Case 2: an initialised data dir pointed at a new, empty token with its token's label, and
/// at another instance's token. Refused both times without a write (no domain, no MAC key),
/// and the data dir still starts on its own token afterwards. Its own token is an embedded
/// SoftHSM2 token, or on kryoptic one of its own config (never among the first instance's).
fn old_dir_on_another_token(tokens: &Tokens, tmp: &Path, a_dir: &Path, env: &[(&str, &str)]) {
    let dir = tmp.join("old");
    common::prepare_data_dir(&dir);
    std::fs::create_dir_all(&dir).expect("data dir");
    let own = common::token_config_labelled(&dir, "prov-old");
    std::fs::write(dir.join("p11vault.toml"), &own).expect("config");
    let svc = Service::start(&dir);
    svc.create("old", r#"{"kty":"EC","crv":"P-256"}"#);
    svc.stop();

    let pins = Pins::of(&dir);
    tokens.init("prov-old", &pins);
    configure_external(&dir, "prov-old", &pins);
    let start = Service::start_with(&dir, env);
    assert_eq!(
        tokens.objects("prov-old", &pins),
        Vec::new(),
        "nothing was written on the new token"
    );
    refused(
        start,
        "an initialised data dir on a new token of the same label",
        "does not hold security domain",
    );

    let a_pins = Pins::of(a_dir);
    let before = tokens.objects("p11vault", &a_pins);
    configure_external(&dir, "p11vault", &a_pins);
    let start = Service::start_with(&dir, env);
    assert_eq!(tokens.objects("p11vault", &a_pins), before);
    refused(
        start,
        "an initialised data dir on another instance's token",
        "does not hold security domain",
    );

    std::fs::write(dir.join("p11vault.toml"), &own).expect("config");
    let svc = Service::start(&dir);
    sign_ok(&svc, "old");
    svc.stop();
}

/// Waits until a start armed with a pause has reached it.
fn wait_for_pause(
    dir: &Path,
    point: &str,
    started: &std::thread::ScopedJoinHandle<'_, impl Sized>,
) {
    let log = dir.with_extension("stderr.log");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains(&format!("failpoint {point} reached"))
    {
        assert!(!started.is_finished(), "the start ended before its pause");
        assert!(Instant::now() < deadline, "the start never paused");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Case 3: two new data dirs both trying to be first on one empty token: each has looked at
/// the empty token and recorded its domain id before either made a domain object (each pauses
/// there; the second pauses longer, so the two never use the token at the same instant, which
/// SoftHSM2's file store does not survive reliably across processes). The first to finish
/// gets the token; the other sees its objects once its own domain is made, takes its own
/// domain back off and is refused, leaving exactly the winner's objects. Started again, it is
/// refused before any write.
fn two_dirs_racing_for_one_token(tokens: &Tokens, tmp: &Path, env: &[(&str, &str)]) {
    let pins = Pins::new_in(&tmp.join("pins"), "race");
    tokens.init("prov-race", &pins);
    let (first_dir, second_dir) = (tmp.join("race-1"), tmp.join("race-2"));
    configure_external(&first_dir, "prov-race", &pins);
    configure_external(&second_dir, "prov-race", &pins);
    let armed = |point: &'static str| {
        let mut env = env.to_vec();
        env.push(("P11VAULT_TEST_FAILPOINTS", point));
        env
    };
    let first_env = armed("provision.after_domain_record:sleep=4000");
    let second_env = armed("provision.after_domain_record:sleep=8000");
    let (first, winners_objects, second) = std::thread::scope(|s| {
        let first = s.spawn(|| Service::start_with(&first_dir, &first_env));
        wait_for_pause(&first_dir, "provision.after_domain_record", &first);
        let second = s.spawn(|| Service::start_with(&second_dir, &second_env));
        wait_for_pause(&second_dir, "provision.after_domain_record", &second);
        assert!(
            !first.is_finished(),
            "both must have passed the empty token before either made a domain"
        );
        let first = first.join().expect("no panic");
        let objects = tokens.objects("prov-race", &pins);
        assert!(
            !second.is_finished(),
            "the second start woke before the first was done; lengthen its pause"
        );
        (first, objects, second.join().expect("no panic"))
    });
    let winner = first.unwrap_or_else(|f| panic!("the first start failed: {}", f.stderr));
    refused(
        second,
        "the second of two first starts",
        "started on the token 'prov-race' at the same time",
    );
    let kept = tokens.objects("prov-race", &pins);
    assert_eq!(
        kept, winners_objects,
        "the loser took back its own domain and nothing of the winner's"
    );
    assert_eq!(
        domains(&kept).len(),
        1,
        "only the winner's domain: {kept:?}"
    );

    refused(
        Service::start_with(&second_dir, env),
        "the loser started again",
        "already holds",
    );
    assert_eq!(tokens.objects("prov-race", &pins), kept);
    winner.create("raced", r#"{"kty":"EC","crv":"P-256"}"#);
    sign_ok(&winner, "raced");
    purge_and_restore(&winner, "raced", &backup(&winner, "raced"));
    winner.stop();
}

/// Case 4: a first start records its domain, pauses, and meanwhile another data dir takes the
/// still-empty token and makes keys; the first then makes its wrap half and dies. Its restart
/// is refused before any write: the other domain and its keys are untouched (and so is its own
/// leftover, which its records name).
fn half_made_first_start_on_a_used_token(tokens: &Tokens, tmp: &Path, env: &[(&str, &str)]) {
    let pins = Pins::new_in(&tmp.join("pins"), "half");
    tokens.init("prov-half", &pins);
    let (e_dir, f_dir) = (tmp.join("half-e"), tmp.join("half-f"));
    configure_external(&e_dir, "prov-half", &pins);
    configure_external(&f_dir, "prov-half", &pins);
    let mut armed = env.to_vec();
    armed.push((
        "P11VAULT_TEST_FAILPOINTS",
        "provision.after_domain_record:sleep=20000,provision.after_wrap_half",
    ));
    std::thread::scope(|s| {
        let e = s.spawn(|| Service::start_with(&e_dir, &armed));
        wait_for_pause(&e_dir, "provision.after_domain_record", &e);

        let f = Service::start(&f_dir);
        f.create("f1", r#"{"kty":"EC","crv":"P-256"}"#);
        let blob = backup(&f, "f1");
        let before = tokens.objects("prov-half", &pins);
        assert!(
            !e.is_finished(),
            "the first start woke before the other was ready; lengthen its pause"
        );
        refused(
            e.join().expect("no panic"),
            "a start killed between the domain halves",
            "failpoint provision.after_wrap_half reached",
        );
        let half_made = tokens.objects("prov-half", &pins);
        let leftover: Vec<_> = half_made.iter().filter(|o| !before.contains(o)).collect();
        assert_eq!(leftover.len(), 1, "one wrap half: {half_made:?}");
        assert!(leftover[0].0.ends_with("/wrap"), "{leftover:?}");
        assert!(
            before.iter().all(|o| half_made.contains(o)),
            "nothing of the other domain went"
        );

        refused(
            Service::start_with(&e_dir, env),
            "the restart of the half-made first start on a used token",
            "already holds",
        );
        assert_eq!(
            tokens.objects("prov-half", &pins),
            half_made,
            "the refused restart wrote nothing"
        );

        sign_ok(&f, "f1");
        f.stop();
        let f = Service::start(&f_dir);
        sign_ok(&f, "f1");
        purge_and_restore(&f, "f1", &blob);
        sign_ok(&f, "f1");
        f.stop();
    });
}

/// A first start that died between the two domain halves on a token nobody else uses finishes
/// on the next start, with the domain id it recorded.
fn half_made_first_start_finishes_with_its_recorded_domain(
    tokens: &Tokens,
    tmp: &Path,
    env: &[(&str, &str)],
) {
    let pins = Pins::new_in(&tmp.join("pins"), "alone");
    tokens.init("prov-alone", &pins);
    let dir = tmp.join("alone");
    configure_external(&dir, "prov-alone", &pins);
    let mut armed = env.to_vec();
    armed.push(("P11VAULT_TEST_FAILPOINTS", "provision.after_wrap_half"));
    refused(
        Service::start_with(&dir, &armed),
        "a start killed between the domain halves",
        "failpoint provision.after_wrap_half reached",
    );
    let half = tokens.objects("prov-alone", &pins);
    assert_eq!(half.len(), 1, "{half:?}");
    let recorded = domains(&half);

    let svc = Service::start_with(&dir, env).expect("the restart finishes the first start");
    let (sign_in, done): (Vec<_>, Vec<_>) = tokens
        .objects("prov-alone", &pins)
        .into_iter()
        .partition(|(l, _)| l.starts_with("p11vault-id/"));
    // Beside the domain, the sign-in's own HMAC key, under an id of its own.
    assert_eq!(sign_in.len(), 1, "{sign_in:?}");
    assert_ne!(sign_in[0].1, done[0].1, "{sign_in:?}");
    assert_eq!(domains(&done), recorded, "the recorded domain, no other");
    let roles: Vec<_> = done.iter().map(|(l, _)| l.rsplit('/').next()).collect();
    assert_eq!(
        roles,
        [Some("mac"), Some("unwrap"), Some("wrap")],
        "{done:?}"
    );
    assert!(done.iter().all(|(_, id)| *id == done[0].1), "{done:?}");
    svc.create("alone", r#"{"kty":"EC","crv":"P-256"}"#);
    purge_and_restore(&svc, "alone", &backup(&svc, "alone"));
    sign_ok(&svc, "alone");
    svc.stop();
}

/// An external token's first start with key backups left to their default is refused before
/// anything is written: with backups on, a holder of the user PIN can extract every key, and
/// that is the operator's choice to make (ARCHITECTURE.md, "Protection models").
fn external_first_start_needs_the_backups_choice(
    tokens: &Tokens,
    tmp: &Path,
    env: &[(&str, &str)],
) {
    let pins = Pins::new_in(&tmp.join("pins"), "choice");
    tokens.init("prov-choice", &pins);
    let dir = tmp.join("choice");
    configure_external(&dir, "prov-choice", &pins);
    let config = dir.join("p11vault.toml");
    let chosen = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, chosen.replace("backups = true", "")).expect("config");
    refused(
        Service::start_with(&dir, env),
        "a first start with the backups choice unmade",
        "a holder of the user PIN can extract every key",
    );
    assert_eq!(tokens.objects("prov-choice", &pins), Vec::new());

    std::fs::write(&config, chosen).expect("config");
    let svc = Service::start_with(&dir, env).expect("the choice made, it starts");
    assert_eq!(domains(&tokens.objects("prov-choice", &pins)).len(), 1);
    svc.stop();
}
