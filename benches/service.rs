//! The service against the raw token, in one run on one token (`cargo bench --bench service`,
//! wrapped by `scripts/bench.sh`).
//!
//! Raw: cryptoki in this process on the service's own token (SoftHSM2, or kryoptic with
//! `P11VAULT_TEST_TOKEN=kryoptic`), the same mechanisms and
//! objects the service uses, 1 and 2 threads. Service: the release binary over HTTPS on
//! loopback, driven by `wrk` (closed loop, keep-alive) at concurrency 1, 2, 8 and 32. Then the
//! token is filled to 10,000 keys and the latency of sign and get measured again, with the
//! service's resident memory.
//!
//! `BENCH_SECONDS` (default 5) is the length of each measurement, after a 2-second warm-up at
//! the same concurrency. The results are printed as Markdown for BENCHMARKS.md.

#[path = "../tests/common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::MechanismType;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use p11vault::hsm::templates::{Extraction, aes_generate, live_label};
use p11vault::model::{KeyFamily, KeyOps, VersionId};
use serde_json::Value;

use common::{API, Service, data_dir};

/// One raw token operation, run in a loop on a thread's own session.
type RawOp<'a> = Box<dyn Fn(&Session) + Sync + 'a>;

const CONCURRENCY: [usize; 4] = [1, 2, 8, 32];
const WARMUP_SECONDS: u64 = 2;
const TOTAL_KEYS: u64 = 10_000;
const SHA256_DIGEST_INFO: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];

fn main() {
    // `cargo test --all-targets` runs this binary without `--bench`: nothing to do then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let total_keys: u64 = std::env::var("BENCH_KEYS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(TOTAL_KEYS);
    let wrk = which("wrk").expect("wrk is installed (scripts/bench.sh installs it)");
    let (_tmp, dir) = data_dir();
    let svc = Service::start(&dir);
    let work = dir.parent().expect("data dir has a parent").to_owned();

    // The keys every operation uses, and the filler that makes 100 keys.
    let rsa = version_of(&svc.create("bench-rsa", r#"{"kty":"RSA","key_size":2048}"#));
    let ec = version_of(&svc.create("bench-ec", r#"{"kty":"EC","crv":"P-256"}"#));
    let aes = version_of(&svc.create("bench-aes", r#"{"kty":"oct-HSM","key_size":256}"#));
    for i in 0..97 {
        svc.create(
            &format!("filler-{i}"),
            r#"{"kty":"oct-HSM","key_size":256}"#,
        );
    }
    let mut keys: u64 = 100;
    let digest = [7u8; 32];
    let plaintext = vec![42u8; 1024];
    let (status, sealed) = svc.call(
        "POST",
        &format!("/keys/bench-rsa//encrypt?{API}"),
        Some(&format!(
            r#"{{"alg":"RSA-OAEP","value":"{}"}}"#,
            b64(b"a 32-byte content-encryption key")
        )),
    );
    assert_eq!(status, 200, "{sealed}");
    let oaep_ct = URL_SAFE_NO_PAD
        .decode(sealed["value"].as_str().expect("ciphertext"))
        .expect("base64url");

    // ----- raw -------------------------------------------------------------------------------
    let (ctx, session) = common::open_token_as_user(&dir);
    let rsa_key = find(&session, "bench-rsa", rsa, ObjectClass::PRIVATE_KEY);
    let ec_key = find(&session, "bench-ec", ec, ObjectClass::PRIVATE_KEY);
    let aes_key = find(&session, "bench-aes", aes, ObjectClass::SECRET_KEY);
    let slot = session.get_session_info().expect("session info").slot_id();
    let raw_session = || ctx.open_rw_session(slot).expect("session");
    let mut signed = SHA256_DIGEST_INFO.to_vec();
    signed.extend_from_slice(&digest);
    let iv_counter = AtomicU64::new(0);
    let made: std::sync::Mutex<Vec<ObjectHandle>> = Default::default();

    let mut raw: Vec<(&str, [f64; 3], f64)> = Vec::new();
    {
        let ops: Vec<(&str, RawOp)> = vec![
            (
                "RSA-2048 sign (RS256)",
                Box::new(|s: &Session| {
                    s.sign(&Mechanism::RsaPkcs, rsa_key, &signed).expect("sign");
                }),
            ),
            (
                "RSA-2048 decrypt (RSA-OAEP)",
                Box::new(|s: &Session| {
                    let m = Mechanism::RsaPkcsOaep(PkcsOaepParams::new(
                        MechanismType::SHA1,
                        PkcsMgfType::MGF1_SHA1,
                        PkcsOaepSource::empty(),
                    ));
                    s.decrypt(&m, rsa_key, &oaep_ct).expect("decrypt");
                }),
            ),
            (
                "P-256 sign (ES256)",
                Box::new(|s: &Session| {
                    s.sign(&Mechanism::Ecdsa, ec_key, &digest).expect("sign");
                }),
            ),
            (
                "AES-256-GCM encrypt 1 KiB",
                Box::new(|s: &Session| {
                    let mut iv = [0u8; 12];
                    iv[..8]
                        .copy_from_slice(&iv_counter.fetch_add(1, Ordering::Relaxed).to_be_bytes());
                    let params = GcmParams::new(&mut iv, b"", 128.into()).expect("params");
                    s.encrypt(&Mechanism::AesGcm(params), aes_key, &plaintext)
                        .expect("encrypt");
                }),
            ),
            (
                "create oct key (AES-256 token keygen)",
                Box::new(|s: &Session| {
                    let id = VersionId::random();
                    let template = aes_generate(
                        id,
                        &live_label("raw-keygen", id),
                        256,
                        &KeyOps::all_for(KeyFamily::Oct),
                        Extraction::Wrapped,
                    );
                    let h = s
                        .generate_key(&Mechanism::AesKeyGen, &template)
                        .expect("keygen");
                    made.lock().expect("lock").push(h);
                }),
            ),
        ];
        for (label, op) in &ops {
            let one = run_raw(&raw_session, 1, seconds, op.as_ref());
            let two = run_raw(&raw_session, 2, seconds, op.as_ref());
            let eight = run_raw(&raw_session, 8, seconds, op.as_ref());
            raw.push((label, [one.0, two.0, eight.0], one.1));
            eprintln!(
                "raw {label}: {:.0} / {:.0} / {:.0} ops/s",
                one.0, two.0, eight.0
            );
        }
    }
    // The raw keygen objects go, so the token holds only the service's keys.
    for h in made.lock().expect("lock").drain(..) {
        session.destroy_object(h).expect("destroy");
    }

    // ----- service ---------------------------------------------------------------------------
    let bodies = [
        (
            "RSA-2048 sign (RS256)",
            "POST",
            "/keys/bench-rsa//sign".to_owned(),
            format!(r#"{{"alg":"RS256","value":"{}"}}"#, b64(&digest)),
        ),
        (
            "RSA-2048 decrypt (RSA-OAEP)",
            "POST",
            "/keys/bench-rsa//decrypt".to_owned(),
            format!(r#"{{"alg":"RSA-OAEP","value":"{}"}}"#, b64(&oaep_ct)),
        ),
        (
            "P-256 sign (ES256)",
            "POST",
            "/keys/bench-ec//sign".to_owned(),
            format!(r#"{{"alg":"ES256","value":"{}"}}"#, b64(&digest)),
        ),
        (
            "AES-256-GCM encrypt 1 KiB",
            "POST",
            "/keys/bench-aes//encrypt".to_owned(),
            format!(r#"{{"alg":"A256GCM","value":"{}"}}"#, b64(&plaintext)),
        ),
        ("get key", "GET", "/keys/bench-ec".to_owned(), String::new()),
        (
            "create oct key (AES-256 token keygen)",
            "POST",
            "/keys/{unique}/create".to_owned(),
            r#"{"kty":"oct-HSM","key_size":256}"#.to_owned(),
        ),
    ];
    let mut service: Vec<(&str, Vec<WrkResult>)> = Vec::new();
    for (label, method, path, body) in &bodies {
        let mut row = Vec::new();
        for c in CONCURRENCY {
            let run = |secs: u64, tag: &str| {
                wrk_run(
                    &wrk,
                    &svc,
                    &work,
                    method,
                    path,
                    body,
                    c,
                    secs,
                    &format!("{tag}{c}"),
                )
            };
            let warm = run(WARMUP_SECONDS, "w");
            let r = run(seconds, "m");
            if path.contains("{unique}") {
                keys += warm.ok() + r.ok();
            }
            eprintln!(
                "service {label} c={c}: {:.0} req/s p50 {} µs p99 {} µs",
                r.rps, r.p50_us, r.p99_us
            );
            row.push(r);
        }
        service.push((label, row));
    }
    let at_100 = latency_pair(&wrk, &svc, &work, &bodies, seconds);

    // ----- 10,000 keys -----------------------------------------------------------------------
    let fill_started = Instant::now();
    let remaining = total_keys.saturating_sub(keys);
    let total_keys = keys.max(total_keys);
    fill(&svc, remaining);
    eprintln!(
        "filled {remaining} keys in {:.0} s",
        fill_started.elapsed().as_secs_f64()
    );
    let at_10k = latency_pair(&wrk, &svc, &work, &bodies, seconds);
    let rss_kib = rss_kib(svc.pid());
    let objects = ctx_object_count(&session);

    // ----- report ----------------------------------------------------------------------------
    let mut out = String::new();
    let _ = writeln!(out, "Token: {}\n", common::token_name());
    let _ = writeln!(
        out,
        "### Raw PKCS#11 (cryptoki, this process, same token and objects)\n"
    );
    let _ = writeln!(
        out,
        "| operation | 1 thread ops/s | 2 threads ops/s | 8 threads ops/s | p50 µs (1 thread) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|");
    for (label, ops, p50) in &raw {
        let _ = writeln!(
            out,
            "| {label} | {:.0} | {:.0} | {:.0} | {:.0} |",
            ops[0], ops[1], ops[2], p50
        );
    }
    let _ = writeln!(
        out,
        "\n### Service over HTTPS (wrk, keep-alive, loopback)\n"
    );
    let _ = writeln!(
        out,
        "| operation | c | req/s | p50 µs | p99 µs | non-2xx | socket errors |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for (label, row) in &service {
        for (c, r) in CONCURRENCY.iter().zip(row) {
            let _ = writeln!(
                out,
                "| {label} | {c} | {:.0} | {} | {} | {} | {} |",
                r.rps, r.p50_us, r.p99_us, r.non_2xx, r.socket_errors
            );
        }
    }
    let _ = writeln!(out, "\n### Service peak against raw peak\n");
    let _ = writeln!(
        out,
        "| operation | service peak req/s | raw peak ops/s | ratio | target |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|");
    for (label, row) in &service {
        let peak = row.iter().map(|r| r.rps).fold(0.0, f64::max);
        let target = match *label {
            l if l.starts_with("RSA") => "≥ 0.9×",
            l if l.starts_with("P-256") || l.starts_with("AES") => "≥ 0.5×",
            "get key" => "≥ 10,000 req/s",
            _ => "≥ 0.9×",
        };
        match raw.iter().find(|(l, _, _)| l == label) {
            Some((_, ops, _)) => {
                let raw_peak = ops.iter().copied().fold(0.0, f64::max);
                let _ = writeln!(
                    out,
                    "| {label} | {peak:.0} | {raw_peak:.0} | {:.2}× | {target} |",
                    peak / raw_peak
                );
            }
            None => {
                let _ = writeln!(out, "| {label} | {peak:.0} | – | – | {target} |");
            }
        }
    }
    let _ = writeln!(
        out,
        "\n### Latency with 100 and with {total_keys} keys (c = 1)\n"
    );
    let _ = writeln!(
        out,
        "| operation | p50 µs, 100 keys | p50 µs, {total_keys} keys | change | p99 µs, 100 | p99 µs, {total_keys} |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for (i, label) in ["P-256 sign (ES256)", "get key"].iter().enumerate() {
        let (a, b) = (&at_100[i], &at_10k[i]);
        let change = (b.p50_us as f64 / a.p50_us.max(1) as f64 - 1.0) * 100.0;
        let _ = writeln!(
            out,
            "| {label} | {} | {} | {change:+.1}% | {} | {} |",
            a.p50_us, b.p50_us, a.p99_us, b.p99_us
        );
    }
    let _ = writeln!(
        out,
        "\nResident memory of the service with {total_keys} keys ({objects} token objects): {} MiB",
        rss_kib / 1024
    );
    println!("{out}");
    let report = std::env::var("BENCH_REPORT").map(PathBuf::from).ok();
    if let Some(path) = report {
        std::fs::write(&path, &out).expect("report written");
    }
    drop(session);
    drop(ctx);
    svc.stop();
}

/// Runs `op` on `threads` sessions for `seconds` after a 1-second warm-up. Returns ops/s and
/// the median latency of one call in µs.
fn run_raw(
    open: &(dyn Fn() -> Session + Sync),
    threads: usize,
    seconds: u64,
    op: &(dyn Fn(&Session) + Sync),
) -> (f64, f64) {
    let stop = AtomicBool::new(false);
    let counting = AtomicBool::new(false);
    let total = AtomicU64::new(0);
    let mut samples = Vec::new();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let session = open();
                let (stop, counting, total) = (&stop, &counting, &total);
                scope.spawn(move || {
                    let mut lat = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        op(&session);
                        if counting.load(Ordering::Relaxed) {
                            total.fetch_add(1, Ordering::Relaxed);
                            if lat.len() < 200_000 {
                                lat.push(t.elapsed().as_secs_f64() * 1e6);
                            }
                        }
                    }
                    lat
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs(1));
        counting.store(true, Ordering::Relaxed);
        let started = Instant::now();
        std::thread::sleep(Duration::from_secs(seconds));
        counting.store(false, Ordering::Relaxed);
        let elapsed = started.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            samples.extend(h.join().expect("bench thread"));
        }
        samples.sort_by(f64::total_cmp);
        let p50 = samples.get(samples.len() / 2).copied().unwrap_or_default();
        (total.load(Ordering::Relaxed) as f64 / elapsed, p50)
    })
}

#[derive(Clone, Debug, Default)]
struct WrkResult {
    requests: u64,
    rps: f64,
    p50_us: u64,
    p99_us: u64,
    non_2xx: u64,
    socket_errors: u64,
}

impl WrkResult {
    fn ok(&self) -> u64 {
        self.requests.saturating_sub(self.non_2xx)
    }
}

const WRK_SCRIPT: &str = r#"
local body_file = os.getenv("BENCH_BODY")
local f = io.open(body_file, "rb")
local body = f:read("*a")
f:close()
local path = os.getenv("BENCH_PATH")
local method = os.getenv("BENCH_METHOD")
local prefix = os.getenv("BENCH_PREFIX")
local headers = {}
headers["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")
if body ~= "" then headers["Content-Type"] = "application/json" end
local n = 0
request = function()
  n = n + 1
  local p = string.gsub(path, "{unique}", prefix .. "-" .. n)
  if body == "" then
    return wrk.format(method, p, headers)
  end
  return wrk.format(method, p, headers, body)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d %d\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), e.status,
    e.connect + e.read + e.write + e.timeout))
end
"#;

#[allow(clippy::too_many_arguments)]
fn wrk_run(
    wrk: &Path,
    svc: &Service,
    work: &Path,
    method: &str,
    path: &str,
    body: &str,
    connections: usize,
    seconds: u64,
    tag: &str,
) -> WrkResult {
    let script = work.join("bench.lua");
    if !script.exists() {
        std::fs::write(&script, WRK_SCRIPT).expect("script written");
    }
    let body_file = work.join("bench-body.json");
    std::fs::write(&body_file, body).expect("body written");
    let separator = if path.contains('?') { '&' } else { '?' };
    let prefix = format!("b{}-{tag}", VersionId::random());
    let output = Command::new(wrk)
        .args([
            "-t1",
            "-c",
            &connections.to_string(),
            "-d",
            &format!("{seconds}s"),
            "--timeout",
            "30s",
            "-s",
        ])
        .arg(&script)
        .arg(format!("{}{path}{separator}{API}", svc.url))
        .env("BENCH_BODY", &body_file)
        .env("BENCH_PATH", format!("{path}{separator}{API}"))
        .env("BENCH_METHOD", method)
        .env("BENCH_PREFIX", prefix)
        .env("BENCH_TOKEN", &svc.token)
        .output()
        .expect("wrk runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| {
            panic!(
                "wrk printed no result: {stdout} {}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    let v: Vec<u64> = line
        .split_whitespace()
        .map(|x| x.parse().expect("number"))
        .collect();
    WrkResult {
        requests: v[0],
        rps: v[0] as f64 / (v[1] as f64 / 1e6),
        p50_us: v[2],
        p99_us: v[3],
        non_2xx: v[4],
        socket_errors: v[5],
    }
}

/// Sign and get at concurrency 1, for the latency comparison across key counts.
fn latency_pair(
    wrk: &Path,
    svc: &Service,
    work: &Path,
    bodies: &[(&str, &str, String, String); 6],
    seconds: u64,
) -> [WrkResult; 2] {
    let pick = |label: &str| {
        let (_, method, path, body) = bodies.iter().find(|b| b.0 == label).expect("known op");
        wrk_run(wrk, svc, work, method, path, body, 1, WARMUP_SECONDS, "lw");
        wrk_run(wrk, svc, work, method, path, body, 1, seconds, "lm")
    };
    [pick("P-256 sign (ES256)"), pick("get key")]
}

/// Creates `count` more oct keys through the service, 8 at a time.
fn fill(svc: &Service, count: u64) {
    let next = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    svc.create(&format!("fill-{i}"), r#"{"kty":"oct-HSM","key_size":256}"#);
                }
            });
        }
    });
}

fn find(session: &Session, name: &str, version: VersionId, class: ObjectClass) -> ObjectHandle {
    let found = session
        .find_objects(&[
            Attribute::Label(live_label(name, version)),
            Attribute::Class(class),
        ])
        .expect("find");
    *found.first().expect("the key's object is on the token")
}

fn ctx_object_count(session: &Session) -> usize {
    session
        .find_objects(&[])
        .map(|v| v.len())
        .unwrap_or_default()
}

fn version_of(bundle: &Value) -> VersionId {
    let kid = bundle["key"]["kid"].as_str().expect("kid");
    VersionId::parse_hex(kid.rsplit('/').next().expect("version")).expect("hex version")
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or_default()
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(program))
            .find(|p| p.is_file())
    })
}
