//! The security domain's operations against the raw token, in one run on one token
//! (`cargo bench --bench security_domain`, run by `scripts/bench.sh` after the backup
//! benchmark).
//!
//! Raw: cryptoki in this process on a service's own token (SoftHSM2 or kryoptic): what each
//! operation needs from the token — an RSA-4096 key pair made (the transfer key), an RSA-4096
//! decryption of a 64-byte content key (an upload: OAEP-SHA-256 where the token has it, else raw
//! RSA), and the three objects of a domain created from their values and destroyed (a download
//! or an upload). Service: the release binary over HTTPS on loopback: a download with three
//! certificates and its confirming poll, the first transfer key (made) and a second (read
//! back), and an upload (the blob made offline beforehand), each on a fresh not-activated HSM,
//! `BENCH_SD_RUNS` times (default 5). Printed as Markdown for BENCHMARKS.md.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::MechanismType;
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::object::Attribute;
use openssl::x509::X509;
use p11vault::model::VersionId;
use serde_json::{Value, json};

use common::Service;

const SD_API: &str = "api-version=7.5";

fn main() {
    // `cargo test --all-targets` runs this binary without `--bench`: nothing to do then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let runs: usize = std::env::var("BENCH_SD_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let keys: Vec<_> = (1..=3)
        .map(|i| p11vault::secdomain::generate_wrapping_key(&format!("bench {i}")).expect("key"))
        .collect();
    let certs: Vec<X509> = keys.iter().map(|(_, c)| c.clone()).collect();
    let two = [keys[0].clone(), keys[1].clone()];

    let mut download = Vec::new();
    let mut first_transfer = Vec::new();
    let mut second_transfer = Vec::new();
    let mut upload = Vec::new();
    let mut raw_pair = Vec::new();
    let mut raw_decrypt = Vec::new();
    let mut raw_objects = Vec::new();
    let mut last = None;
    for _ in 0..runs {
        // A download on a fresh HSM.
        let (_tmp_a, dir_a) = common::not_activated_data_dir();
        let a = Service::start(&dir_a);
        let t = Instant::now();
        let (status, answer) = a.call(
            "POST",
            &format!("/securitydomain/download?{SD_API}"),
            Some(&download_body(&certs)),
        );
        assert_eq!(status, 202, "{answer}");
        let (status, _) = a.call(
            "GET",
            &format!("/securitydomain/download/pending?{SD_API}"),
            None,
        );
        assert_eq!(status, 200);
        download.push(t.elapsed());
        let sd_file = answer["value"].as_str().expect("file").to_owned();
        a.stop();

        // A recovery on another fresh HSM.
        let (tmp_b, dir_b) = common::not_activated_data_dir();
        let b = Service::start(&dir_b);
        let t = Instant::now();
        let exchange = common::transfer_certificate_pem(&b);
        first_transfer.push(t.elapsed());
        let t = Instant::now();
        assert_eq!(common::transfer_certificate_pem(&b), exchange);
        second_transfer.push(t.elapsed());
        let blob =
            p11vault::secdomain::restore_blob_offline(&sd_file, &exchange, &two).expect("blob");
        let body = json!({ "value": blob }).to_string();
        let t = Instant::now();
        let (status, answer) = b.call(
            "POST",
            &format!("/securitydomain/upload?{SD_API}"),
            Some(&body),
        );
        assert_eq!(status, 202, "{answer}");
        upload.push(t.elapsed());
        b.stop();

        last = Some((tmp_b, dir_b));
    }

    // The same token work, raw, on the last HSM's token (opened once: a module is
    // initialised once per process).
    let (_tmp_b, dir_b) = last.expect("at least one run");
    let (_ctx, session) = common::open_token_as_user(&dir_b);
    for _ in 0..runs {
        let id = VersionId::random();
        let (public_t, private_t) = p11vault::hsm::templates::transfer_pair(id, 4096);
        let t = Instant::now();
        let (public, private) = session
            .generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &public_t, &private_t)
            .expect("pair");
        raw_pair.push(t.elapsed());
        let modulus = match session
            .get_attributes(public, &[cryptoki::object::AttributeType::Modulus])
            .expect("modulus")
            .first()
        {
            Some(Attribute::Modulus(n)) => n.clone(),
            _ => panic!("no modulus"),
        };
        let rsa = openssl::rsa::Rsa::from_public_components(
            openssl::bn::BigNum::from_slice(&modulus).expect("n"),
            openssl::bn::BigNum::from_u32(65537).expect("e"),
        )
        .expect("rsa");
        let pkey = openssl::pkey::PKey::from_rsa(rsa).expect("pkey");
        let mut ctx = openssl::pkey_ctx::PkeyCtx::new(&pkey).expect("ctx");
        ctx.encrypt_init().expect("init");
        ctx.set_rsa_padding(openssl::rsa::Padding::PKCS1_OAEP)
            .expect("pad");
        ctx.set_rsa_oaep_md(openssl::md::Md::sha256()).expect("md");
        ctx.set_rsa_mgf1_md(openssl::md::Md::sha256()).expect("mgf");
        let mut ct = Vec::new();
        ctx.encrypt_to_vec(&[7u8; 64], &mut ct).expect("encrypt");
        let oaep = PkcsOaepParams::new(
            MechanismType::SHA256,
            PkcsMgfType::MGF1_SHA256,
            PkcsOaepSource::empty(),
        );
        let t = Instant::now();
        if session
            .decrypt(&Mechanism::RsaPkcsOaep(oaep), private, &ct)
            .is_err()
        {
            // SoftHSM2: OAEP with SHA-1 only; the service does raw RSA and decodes itself.
            session
                .decrypt(&Mechanism::RsaX509, private, &ct)
                .expect("raw");
        }
        raw_decrypt.push(t.elapsed());
        let t = Instant::now();
        let value = vec![9u8; 32];
        let mut made = Vec::new();
        for template in domain_templates(id, &value) {
            made.push(session.create_object(&template).expect("create"));
        }
        for h in made {
            session.destroy_object(h).expect("destroy");
        }
        raw_objects.push(t.elapsed());
        session.destroy_object(private).expect("destroy");
        session.destroy_object(public).expect("destroy");
    }

    let token = common::token_name();
    println!("### Security domain on {token} ({runs} runs, median; min–max)\n");
    println!("| operation | service over HTTPS | raw token work |");
    println!("|---|---|---|");
    println!(
        "| download (3 certificates, quorum 2) and its confirming poll | {} | {} (three objects from values, made and destroyed) |",
        stats(&download),
        stats(&raw_objects)
    );
    println!(
        "| first transfer key (`GET /securitydomain/upload`) | {} | {} (RSA-4096 key pair) |",
        stats(&first_transfer),
        stats(&raw_pair)
    );
    println!("| transfer key again | {} | — |", stats(&second_transfer));
    println!(
        "| upload (restore blob opened, domain installed) | {} | {} (RSA-4096 decryption of the content key) |",
        stats(&upload),
        stats(&raw_decrypt)
    );
}

/// The templates `Hsm::install_domain` creates a domain's objects with.
fn domain_templates(id: VersionId, value: &[u8]) -> Vec<Vec<Attribute>> {
    let mut wrap = p11vault::hsm::templates::domain_wrap_half(id, value, true);
    wrap.extend([
        Attribute::Token(true),
        Attribute::Modifiable(false),
        Attribute::Copyable(false),
    ]);
    vec![
        wrap,
        p11vault::hsm::templates::domain_unwrap_half(id, value),
        p11vault::hsm::templates::domain_mac_import(id, value),
    ]
}

fn stats(samples: &[Duration]) -> String {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(|a, b| a.partial_cmp(b).expect("numbers"));
    let median = ms[ms.len() / 2];
    format!("{median:.1} ms ({:.1}–{:.1})", ms[0], ms[ms.len() - 1])
}

fn download_body(certs: &[X509]) -> String {
    let list: Vec<Value> = certs
        .iter()
        .map(|c| json!({"kty": "RSA", "x5c": [STANDARD.encode(c.to_der().expect("der"))]}))
        .collect();
    json!({"certificates": list, "required": 2}).to_string()
}
