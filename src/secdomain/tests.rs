//! The security domain end to end, in process: a download's SD file recovered through az's
//! offline `restore-blob` into an upload the server opens, resharing, and every refusal.

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::rsa::Rsa;
use serde_json::Value;

use super::certs::tests::cert_for;
use super::jose::{b64u, b64u_decode};
use super::*;

type KeyPair = (PKey<Private>, X509);

/// Twelve RSA-2048 wrapping keys, made once for every test: six by `generate_wrapping_key`, six
/// by plain OpenSSL.
fn keys() -> &'static [KeyPair] {
    static KEYS: OnceLock<Vec<KeyPair>> = OnceLock::new();
    KEYS.get_or_init(|| {
        (0..12)
            .map(|i| {
                if i % 2 == 0 {
                    generate_wrapping_key(&format!("wrapping key {i}")).expect("generate")
                } else {
                    let key = PKey::from_rsa(Rsa::generate(2048).expect("rsa")).expect("pkey");
                    let cert = cert_for(&key, &format!("wrapping key {i}"));
                    (key, cert)
                }
            })
            .collect()
    })
}

/// The new HSM's transfer key (RSA-4096, as Azure's) and its certificate.
fn transfer() -> &'static KeyPair {
    static TRANSFER: OnceLock<KeyPair> = OnceLock::new();
    TRANSFER.get_or_init(|| {
        let key = PKey::from_rsa(Rsa::generate(4096).expect("rsa")).expect("pkey");
        let cert = cert_for(&key, "hsm2.example.net");
        (key, cert)
    })
}

/// The exchange key file as az's init-recovery writes it: PEM in 65-character lines (§7).
fn exchange_pem(cert: &X509) -> Vec<u8> {
    let b64 = STANDARD.encode(cert.to_der().expect("der"));
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(65)
        .map(|c| std::str::from_utf8(c).expect("ascii"))
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
    .into_bytes()
}

fn wrapping(pairs: &[KeyPair]) -> Vec<WrappingCert> {
    pairs
        .iter()
        .map(|(_, c)| wrapping_cert_from_x509(c).expect("wrapping cert"))
        .collect()
}

fn pick(indices: &[usize]) -> Vec<KeyPair> {
    indices.iter().map(|&i| keys()[i].clone()).collect()
}

fn contents() -> DomainContents {
    let mut wrap = Zeroizing::new([0u8; 32]);
    let mut mac = Zeroizing::new([0u8; 32]);
    openssl::rand::rand_bytes(&mut *wrap).expect("random");
    openssl::rand::rand_bytes(&mut *mac).expect("random");
    DomainContents {
        id: VersionId::random(),
        wrap,
        mac,
    }
}

fn same(a: &DomainContents, b: &DomainContents) -> bool {
    a.id == b.id && *a.wrap == *b.wrap && *a.mac == *b.mac
}

/// The server's side of an upload: parse, decrypt the content key with the transfer key (in
/// process here, in the token in the service), open.
fn server_opens(blob: &str, transfer: &KeyPair) -> Result<Vec<Item>> {
    let der = transfer.1.to_der().expect("der");
    let parsed = parse_restore_blob(blob, &x5t_256(&der))?;
    let cek = jose::rsa_oaep_decrypt(&transfer.0, MessageDigest::sha256(), parsed.encrypted_cek())
        .ok_or_else(|| Error::Invalid("the content key does not decrypt".into()))?;
    parsed.open(&cek)
}

fn recovered(sd: &str, with: &[usize]) -> Result<DomainContents> {
    let blob = restore_blob_offline(sd, &exchange_pem(&transfer().1), &pick(with))?;
    DomainContents::from_items(server_opens(&blob, transfer())?)
}

fn invalid<T>(result: Result<T>) -> String {
    match result {
        Err(Error::Invalid(m)) => m,
        Err(Error::Internal(m)) => panic!("internal, not invalid: {m}"),
        Ok(_) => panic!("accepted"),
    }
}

/// A JWE with one bit flipped in part `part` (0 header … 4 tag).
fn flip(jwe: &str, part: usize) -> String {
    let mut parts: Vec<String> = jwe.split('.').map(str::to_owned).collect();
    let mut bytes = b64u_decode(&parts[part]).expect("b64");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    parts[part] = b64u(&bytes);
    parts.join(".")
}

/// `sd` with `edit` applied to its JSON (serde_json's sorted maps keep the same text, since
/// every member of the formats is already in alphabetical order).
fn edited(sd: &str, edit: impl FnOnce(&mut Value)) -> String {
    let mut value: Value = serde_json::from_str(sd).expect("JSON");
    assert_eq!(value.to_string(), sd, "re-serialising keeps the text");
    edit(&mut value);
    value.to_string()
}

fn jwe_at<'a>(value: &'a mut Value, path: &[&str], index: usize, member: &str) -> &'a mut Value {
    let mut v = value;
    for p in path {
        v = &mut v[*p];
    }
    &mut v[index][member]
}

fn flip_at(value: &mut Value, path: &[&str], index: usize, member: &str, part: usize) {
    let slot = jwe_at(value, path, index, member);
    let changed = flip(slot.as_str().expect("string"), part);
    *slot = changed.into();
}

const DATA: &[&str] = &["EncData", "data"];
const SHARES: &[&str] = &["SharedKeys", "enc_shares"];

#[test]
fn a_download_recovers_from_every_quorum_of_its_keys() {
    let domain = contents();
    let sd = build_sd_file(&domain.to_items(), &wrapping(&keys()[..3]), 2).expect("sd file");
    for with in [
        &[0, 1][..],
        &[0, 2],
        &[1, 2],
        &[2, 1],
        &[0, 1, 2],
        &[2, 1, 0],
    ] {
        let back = recovered(&sd, with).unwrap_or_else(|e| panic!("{with:?}: {e}"));
        assert!(same(&back, &domain), "{with:?}");
    }
}

#[test]
fn larger_domains_need_exactly_their_quorum() {
    let domain = contents();
    for (n, m) in [(5, 3), (10, 10), (4, 2)] {
        let sd = build_sd_file(&domain.to_items(), &wrapping(&keys()[..n]), m).expect("sd");
        let m = usize::from(m);
        // The last m keys, in reverse: any order and any subset works.
        let with: Vec<usize> = (n - m..n).rev().collect();
        assert!(same(&recovered(&sd, &with).expect("recovers"), &domain));
        let short = invalid(recovered(&sd, &with[1..]));
        assert!(short.contains(&format!("needs {m}")), "{short}");
    }
}

#[test]
fn the_sd_file_has_the_shape_az_reads() {
    let domain = contents();
    let certs = wrapping(&keys()[..3]);
    let sd = build_sd_file(&domain.to_items(), &certs, 2).expect("sd");
    assert!(
        sd.starts_with(r#"{"EncData":{"data":[{"compact_jwe":"#),
        "{sd}"
    );
    assert!(sd.contains(r#""kdf":"sp108_kdf"},"SharedKeys":{"enc_shares":[{"enc_key":"#));
    assert!(sd.ends_with(r#""key_algorithm":"shamir_share","required":2},"version":2}"#));
    let value: Value = serde_json::from_str(&sd).expect("JSON");
    let tags: Vec<&str> = value["EncData"]["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|i| i["tag"].as_str().expect("tag"))
        .collect();
    assert_eq!(tags, [TAG_META, TAG_WRAP, TAG_MAC]);
    let shares = value["SharedKeys"]["enc_shares"]
        .as_array()
        .expect("shares");
    assert_eq!(shares.len(), 3);
    for (i, (share, cert)) in shares.iter().zip(&certs).enumerate() {
        assert_eq!(share["x5t_256"], cert.x5t_256(), "request order");
        let text = share["enc_key"].as_str().expect("enc_key");
        let parts: Vec<Vec<u8>> = text
            .split('.')
            .map(|p| b64u_decode(p).expect("b64u"))
            .collect();
        let header: Value = serde_json::from_slice(&parts[0]).expect("header");
        assert_eq!(header["alg"], "RSA-OAEP-256");
        assert_eq!(header["enc"], "A256CBC-HS512");
        assert_eq!(
            (
                parts[1].len(),
                parts[2].len(),
                parts[3].len(),
                parts[4].len()
            ),
            (256, 16, 80, 32),
            "§3.2: an RSA-2048 part, then 64 bytes of share"
        );
        assert!(!text.contains('='), "no padding");
        // The share itself: 32 words of x = i + 1.
        let opened = open_share(text, &keys()[i].0).expect("opens");
        assert_eq!(usize::from(opened.x), i + 1);
    }
    // Item headers are byte for byte the real service's.
    let first = value["EncData"]["data"][0]["compact_jwe"]
        .as_str()
        .expect("jwe");
    let header = b64u_decode(first.split('.').next().expect("header")).expect("b64");
    assert_eq!(
        header,
        br#"{"alg":"dir","enc":"A256CBC-HS512","kid":"p11vault_meta"}"#
    );
    assert!(first.contains(".."), "dir: empty encrypted key");
    // Two downloads of the same domain share nothing but the tags and thumbprints.
    let again = build_sd_file(&domain.to_items(), &certs, 2).expect("sd");
    let again: Value = serde_json::from_str(&again).expect("JSON");
    assert_ne!(
        again["EncData"]["data"][1]["compact_jwe"],
        value["EncData"]["data"][1]["compact_jwe"]
    );
}

#[test]
fn the_restore_blob_is_az_s_text_for_the_exchange_key() {
    let domain = contents();
    let sd = build_sd_file(&domain.to_items(), &wrapping(&keys()[..3]), 2).expect("sd");
    let blob =
        restore_blob_offline(&sd, &exchange_pem(&transfer().1), &pick(&[0, 1])).expect("blob");
    assert!(
        blob.starts_with(r#"{"EncData": {"data": [{"compact_jwe": ""#),
        "{blob}"
    );
    let der = transfer().1.to_der().expect("der");
    assert!(blob.ends_with(&format!(
        r#""kdf": "sp108_kdf"}}, "WrappedKey": {{"enc_key": "{}", "x5t_256": "{}"}}}}"#,
        blob.split(r#""enc_key": ""#)
            .nth(1)
            .and_then(|r| r.split('"').next())
            .expect("enc_key"),
        x5t_256(&der)
    )));
    let value: Value = serde_json::from_str(&blob).expect("JSON");
    assert!(value.get("SharedKeys").is_none() && value.get("version").is_none());
    let enc_key = value["WrappedKey"]["enc_key"].as_str().expect("enc_key");
    let parts: Vec<Vec<u8>> = enc_key
        .split('.')
        .map(|p| b64u_decode(p).expect("b64u"))
        .collect();
    assert_eq!(
        parts[0],
        br#"{"alg":"RSA-OAEP-256","enc":"A256CBC-HS512","kid":"not used"}"#
    );
    assert_eq!(
        (parts[1].len(), parts[3].len()),
        (512, 48),
        "RSA-4096, 32-byte key"
    );
    // A fresh master key: the items are sealed anew.
    let sd_value: Value = serde_json::from_str(&sd).expect("JSON");
    assert_ne!(
        value["EncData"]["data"][0]["compact_jwe"],
        sd_value["EncData"]["data"][0]["compact_jwe"]
    );
    // The exchange key in one-line PEM or DER works as well.
    let pem = transfer().1.to_pem().expect("pem");
    assert!(restore_blob_offline(&sd, &pem, &pick(&[0, 1])).is_ok());
    assert!(restore_blob_offline(&sd, &der, &pick(&[0, 1])).is_ok());
}

#[test]
fn any_sd_file_az_can_read_is_recovered_item_for_item() {
    // Azure's own tags, and an item of another size: restore-blob is not p11vault-specific.
    let items = vec![
        Item {
            tag: "hsm_backup".into(),
            value: Zeroizing::new(vec![7; 7500]),
        },
        Item {
            tag: "base_enclave_backup".into(),
            value: Zeroizing::new(b"x".to_vec()),
        },
    ];
    let sd = build_sd_file(&items, &wrapping(&keys()[..3]), 3).expect("sd");
    let blob =
        restore_blob_offline(&sd, &exchange_pem(&transfer().1), &pick(&[2, 0, 1])).expect("blob");
    let back = server_opens(&blob, transfer()).expect("opens");
    assert_eq!(back.len(), 2);
    for (a, b) in back.iter().zip(&items) {
        assert_eq!((&a.tag, &a.value[..]), (&b.tag, &b.value[..]));
    }
    assert!(invalid(DomainContents::from_items(back)).contains("not made by p11vault"));
}

#[test]
fn reshare_keeps_the_domain_under_new_keys_only() {
    let domain = contents();
    let old = build_sd_file(&domain.to_items(), &wrapping(&keys()[..3]), 2).expect("sd");
    let new_certs = wrapping(&keys()[3..7]);
    let new = reshare_offline(&old, &pick(&[2, 0]), &new_certs, 3).expect("reshare");
    let value: Value = serde_json::from_str(&new).expect("JSON");
    assert_eq!(value["SharedKeys"]["required"], 3);
    assert_eq!(
        value["SharedKeys"]["enc_shares"]
            .as_array()
            .expect("shares")
            .len(),
        4
    );
    assert!(same(
        &recovered(&new, &[6, 3, 5]).expect("new keys"),
        &domain
    ));
    let old_keys = invalid(recovered(&new, &[0, 1, 2]));
    assert!(old_keys.contains("matches no share"), "{old_keys}");
    // And again, from the reshared file.
    let third =
        reshare_offline(&new, &pick(&[4, 5, 6]), &wrapping(&keys()[..3]), 2).expect("again");
    assert!(same(
        &recovered(&third, &[1, 2]).expect("recovers"),
        &domain
    ));
    // The new quorum is checked before the old file is opened.
    assert!(invalid(reshare_offline(&old, &pick(&[0]), &new_certs, 5)).contains("only 4"));
    assert!(invalid(reshare_offline(&old, &pick(&[0, 1]), &new_certs[..2], 2)).contains("3 to 10"));
    let twice = vec![
        new_certs[0].clone(),
        new_certs[1].clone(),
        new_certs[0].clone(),
    ];
    assert!(invalid(reshare_offline(&old, &pick(&[0, 1]), &twice, 2)).contains("same certificate"));
}

#[test]
fn too_few_foreign_repeated_or_mismatched_keys_are_refused() {
    let domain = contents();
    let sd = build_sd_file(&domain.to_items(), &wrapping(&keys()[..3]), 2).expect("sd");
    let exchange = exchange_pem(&transfer().1);
    let m = invalid(restore_blob_offline(&sd, &exchange, &pick(&[0])));
    assert!(m.contains("needs 2 of its wrapping keys; 1 given"), "{m}");
    let m = invalid(restore_blob_offline(&sd, &exchange, &pick(&[0, 9])));
    assert!(
        m.contains("Insufficient shares") && m.contains("wrapping key 2 (x5t#S256"),
        "{m}"
    );
    assert!(m.contains("matches no share"), "{m}");
    let m = invalid(restore_blob_offline(&sd, &exchange, &pick(&[1, 1])));
    assert!(m.contains("same share as an earlier one"), "{m}");
    let swapped = vec![
        (keys()[0].0.clone(), keys()[1].1.clone()),
        keys()[2].clone(),
    ];
    let m = invalid(restore_blob_offline(&sd, &exchange, &swapped));
    assert!(
        m.contains("Wrapping key 1 is not the private key of its certificate"),
        "{m}"
    );
    // A key of another domain opens nothing there, even with the right count of keys.
    let other = build_sd_file(&contents().to_items(), &wrapping(&keys()[3..6]), 2).expect("sd");
    assert!(
        invalid(restore_blob_offline(&other, &exchange, &pick(&[0, 1])))
            .contains("matches no share")
    );
}

#[test]
fn a_changed_sd_file_is_refused_and_a_damaged_share_is_skipped() {
    let domain = contents();
    let sd = build_sd_file(&domain.to_items(), &wrapping(&keys()[..3]), 2).expect("sd");
    let exchange = exchange_pem(&transfer().1);
    let with = |text: &str, keys: &[usize]| restore_blob_offline(text, &exchange, &pick(keys));
    // An item's ciphertext, IV, tag or header.
    for part in [0, 2, 3, 4] {
        let changed = edited(&sd, |v| flip_at(v, DATA, 1, "compact_jwe", part));
        let m = invalid(with(&changed, &[0, 1]));
        assert!(
            m.contains("EncData.data[1] ('p11vault_wrap_key')"),
            "part {part}: {m}"
        );
    }
    // An item's tag renamed: its kid no longer matches, and its key would differ.
    let renamed = edited(&sd, |v| {
        v["EncData"]["data"][2]["tag"] = "p11vault_mac_kez".into()
    });
    assert!(invalid(with(&renamed, &[0, 1])).contains("its kid is not its tag"));
    // An item's kid and tag both renamed: the header is covered by the tag.
    let relabelled = edited(&sd, |v| {
        let slot = jwe_at(v, DATA, 2, "compact_jwe");
        let rest = slot
            .as_str()
            .expect("jwe")
            .split_once('.')
            .expect("parts")
            .1
            .to_owned();
        let header = b64u(br#"{"alg":"dir","enc":"A256CBC-HS512","kid":"other"}"#);
        *slot = format!("{header}.{rest}").into();
        v["EncData"]["data"][2]["tag"] = "other".into();
    });
    assert!(invalid(with(&relabelled, &[0, 1])).contains("tag does not verify"));
    // An item removed is fine for az; p11vault's format then misses it.
    let fewer = edited(&sd, |v| {
        v["EncData"]["data"].as_array_mut().expect("data").remove(2);
    });
    let blob = with(&fewer, &[0, 1]).expect("az would make this blob");
    let items = server_opens(&blob, transfer()).expect("opens");
    assert!(invalid(DomainContents::from_items(items)).contains("no p11vault_mac_key"));
    // A share's RSA part, ciphertext or tag: with only the quorum given, too few shares.
    for part in [1, 3, 4] {
        let changed = edited(&sd, |v| flip_at(v, SHARES, 0, "enc_key", part));
        let m = invalid(with(&changed, &[0, 1]));
        assert!(
            m.contains("Insufficient shares") && m.contains("share 0 (wrapping key 1) is damaged"),
            "{m}"
        );
        // With a third key the damaged share is skipped, as az does.
        assert!(same(
            &DomainContents::from_items(
                server_opens(&with(&changed, &[0, 1, 2]).expect("blob"), transfer())
                    .expect("opens")
            )
            .expect("domain"),
            &domain
        ));
    }
    // A share's thumbprint changed: it no longer belongs to its key.
    let moved = edited(&sd, |v| {
        v["SharedKeys"]["enc_shares"][1]["x5t_256"] = "AAAA".into()
    });
    assert!(invalid(with(&moved, &[0, 1])).contains("wrapping key 2 (x5t#S256"));
    // Shares swapped between files do not recombine (or give another key, which the items'
    // tags refuse).
    let other = build_sd_file(&domain.to_items(), &wrapping(&keys()[..3]), 2).expect("sd");
    let other: Value = serde_json::from_str(&other).expect("JSON");
    let mixed = edited(&sd, |v| {
        v["SharedKeys"]["enc_shares"][1] = other["SharedKeys"]["enc_shares"][1].clone()
    });
    let m = invalid(with(&mixed, &[0, 1]));
    assert!(
        m.contains("do not recombine") || m.contains("tag does not verify"),
        "{m}"
    );
    // The quorum lowered to 1 or raised to 3 is seen.
    let lowered = edited(&sd, |v| v["SharedKeys"]["required"] = 1.into());
    assert!(invalid(with(&lowered, &[0])).contains("must be 2 to 10"));
    let raised = edited(&sd, |v| v["SharedKeys"]["required"] = 3.into());
    assert!(invalid(with(&raised, &[0, 1])).contains("needs 3"));
    // Not an SD file at all.
    assert!(invalid(with("{}", &[0, 1])).contains("Not a security-domain file"));
    assert!(invalid(with("", &[0, 1])).contains("not JSON"));
}

#[test]
fn a_changed_or_misdirected_restore_blob_is_refused() {
    let domain = contents();
    let sd = build_sd_file(&domain.to_items(), &wrapping(&keys()[..3]), 2).expect("sd");
    let blob =
        restore_blob_offline(&sd, &exchange_pem(&transfer().1), &pick(&[0, 1])).expect("blob");
    let other_key = &keys()[11];
    let elsewhere =
        restore_blob_offline(&sd, &exchange_pem(&other_key.1), &pick(&[0, 1])).expect("blob");
    assert!(
        invalid(server_opens(&elsewhere, transfer()))
            .contains("made for another HSM's transfer key")
    );
    // Changed bytes, re-serialised compactly (the server does not care about the separators).
    let change = |edit: &dyn Fn(&mut Value)| {
        let mut v: Value = serde_json::from_str(&blob).expect("JSON");
        edit(&mut v);
        v.to_string()
    };
    assert!(server_opens(&change(&|_| {}), transfer()).is_ok());
    for part in [1, 2, 3, 4] {
        let changed = change(&|v| {
            let slot = &mut v["WrappedKey"]["enc_key"];
            *slot = flip(slot.as_str().expect("jwe"), part).into();
        });
        let result = server_opens(&changed, transfer());
        assert!(matches!(result, Err(Error::Invalid(_))), "part {part}");
    }
    for part in [0, 2, 3, 4] {
        let changed = change(&|v| flip_at(v, DATA, 0, "compact_jwe", part));
        assert!(invalid(server_opens(&changed, transfer())).contains("EncData.data[0]"));
    }
    let wrong_kdf = change(&|v| v["EncData"]["kdf"] = "other".into());
    assert!(invalid(server_opens(&wrong_kdf, transfer())).contains("kdf"));
    let empty = change(&|v| v["EncData"]["data"] = serde_json::json!([]));
    assert!(invalid(server_opens(&empty, transfer())).contains("no items"));
    // Wrong-length content keys and master keys.
    let der = transfer().1.to_der().expect("der");
    let parsed = parse_restore_blob(&blob, &x5t_256(&der)).expect("parses");
    assert!(invalid(parsed.open(&[0; 32])).contains("content key is 32 bytes"));
    let short = change(&|v| {
        v["WrappedKey"]["enc_key"] = jose::seal_to(&transfer().0, "not used", &[1; 16])
            .expect("seal")
            .into();
    });
    assert!(invalid(server_opens(&short, transfer())).contains("holds 16 bytes"));
    let dir_wrapped = change(&|v| {
        v["WrappedKey"]["enc_key"] = v["EncData"]["data"][0]["compact_jwe"].clone();
    });
    assert!(invalid(server_opens(&dir_wrapped, transfer())).contains("not RSA-OAEP-256"));
    // The SD file itself is not a blob.
    assert!(invalid(parse_restore_blob(&sd, &x5t_256(&der))).contains("not a restore blob"));
}

#[test]
fn counts_quorums_duplicates_and_weak_certificates_are_refused() {
    let items = contents().to_items();
    let certs = wrapping(&keys()[..11]);
    assert!(invalid(build_sd_file(&items, &certs[..3], 4)).contains("only 3 certificates"));
    assert!(invalid(build_sd_file(&items, &certs[..2], 2)).contains("3 to 10 certificates; 2"));
    assert!(invalid(build_sd_file(&items, &certs, 2)).contains("3 to 10 certificates; 11"));
    assert!(invalid(build_sd_file(&items, &certs[..3], 1)).contains("2 to 10, not 1"));
    let twice = [certs[0].clone(), certs[1].clone(), certs[0].clone()];
    assert!(invalid(build_sd_file(&items, &twice, 2)).contains("same certificate"));
    // Certificates that are not RSA-2048 or more.
    let small = PKey::from_rsa(Rsa::generate(1024).expect("rsa")).expect("pkey");
    let small = cert_for(&small, "small");
    assert!(invalid(wrapping_cert_from_x509(&small)).contains("1024 bits"));
    let ec = PKey::from_ec_key(
        EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("group"))
            .expect("ec"),
    )
    .expect("pkey");
    let ec = cert_for(&ec, "ec");
    assert!(invalid(wrapping_cert_from_x509(&ec)).contains("key is EC"));
    // The same for the exchange key.
    let sd = build_sd_file(&items, &certs[..3], 2).expect("sd");
    for (cert, reason) in [(&small, "1024 bits"), (&ec, "key is EC")] {
        let m = invalid(restore_blob_offline(
            &sd,
            &cert.to_pem().expect("pem"),
            &pick(&[0, 1]),
        ));
        assert!(
            m.starts_with("The exchange key") && m.contains(reason),
            "{m}"
        );
    }
    assert!(
        invalid(restore_blob_offline(&sd, b"junk", &pick(&[0, 1])))
            .contains("not a PEM certificate")
    );
    // The server's own items must make sense: that is an internal error.
    assert!(matches!(
        build_sd_file(&[], &certs[..3], 2),
        Err(Error::Internal(_))
    ));
}

#[test]
fn domain_contents_round_trip_and_refuse_other_formats() {
    let domain = contents();
    assert!(same(
        &DomainContents::from_items(domain.to_items()).expect("back"),
        &domain
    ));
    let meta = String::from_utf8(domain.to_items()[0].value.to_vec()).expect("utf8");
    assert_eq!(
        meta,
        format!(
            r#"{{"format":1,"domain":"{}","wrap":"AES-256","mac":"HMAC-SHA-256"}}"#,
            domain.id
        )
    );
    // The items in another order are the same domain.
    let mut items = domain.to_items();
    items.reverse();
    assert!(same(
        &DomainContents::from_items(items).expect("back"),
        &domain
    ));

    let with_meta = |meta: &str| {
        let mut items = domain.to_items();
        items[0].value = Zeroizing::new(meta.as_bytes().to_vec());
        DomainContents::from_items(items)
    };
    let newer = invalid(with_meta(r#"{"format":2,"anything":"else"}"#));
    assert!(
        newer.contains("made by a newer release") && newer.contains("format 2"),
        "{newer}"
    );
    assert!(invalid(with_meta(r#"{"format":0}"#)).contains("no valid format"));
    assert!(invalid(with_meta("{}")).contains("no valid format"));
    assert!(invalid(with_meta("not json")).contains("not JSON"));
    let id = domain.id.to_string();
    assert!(invalid(with_meta(&format!(r#"{{"format":1,"domain":"{id}"}}"#))).contains("wrap"));
    assert!(
        invalid(with_meta(
            r#"{"format":1,"domain":"xyz","wrap":"AES-256","mac":"HMAC-SHA-256"}"#
        ))
        .contains("not 32 hex digits")
    );
    assert!(
        invalid(with_meta(&format!(
            r#"{{"format":1,"domain":"{id}","wrap":"AES-128","mac":"HMAC-SHA-256"}}"#
        )))
        .contains("AES-128")
    );

    let changed = |edit: &dyn Fn(&mut Vec<Item>)| {
        let mut items = domain.to_items();
        edit(&mut items);
        invalid(DomainContents::from_items(items))
    };
    assert!(changed(&|i| i.truncate(2)).contains("no p11vault_mac_key"));
    assert!(
        changed(&|i| {
            i.remove(0);
        })
        .contains("no p11vault_meta")
    );
    assert!(changed(&|i| i[2].value = Zeroizing::new(vec![0; 31])).contains("31 bytes"));
    assert!(changed(&|i| i[1].value = Zeroizing::new(vec![0; 33])).contains("33 bytes"));
    assert!(
        changed(&|i| i.push(Item {
            tag: "extra".into(),
            value: Zeroizing::new(vec![])
        }))
        .contains("'extra'")
    );
    assert!(
        changed(&|i| {
            let copy = Item {
                tag: TAG_WRAP.into(),
                value: i[1].value.clone(),
            };
            i.push(copy);
        })
        .contains("two items")
    );
}

#[test]
fn the_transfer_key_round_trip_through_a_remote_signer() {
    // What the service does: its transfer key's certificate signed "in the token", its JWK
    // read by init-recovery, the blob made for it and opened with the private key.
    let (key, _) = transfer();
    let sign = |tbs: &[u8]| -> Result<Vec<u8>> {
        let mut signer = openssl::sign::Signer::new(MessageDigest::sha256(), key)?;
        signer.update(tbs)?;
        Ok(signer.sign_to_vec()?)
    };
    let der = transfer_certificate(&key.public_key_to_der().expect("spki"), "hsm2", &sign)
        .expect("certificate");
    let body = transfer_key_body(&der).expect("body");
    let jwk: Value =
        serde_json::from_str(body["transfer_key"].as_str().expect("string")).expect("JWK");
    let x5c = STANDARD
        .decode(jwk["x5c"][0].as_str().expect("x5c"))
        .expect("b64");
    let cert = X509::from_der(&x5c).expect("cert");
    let domain = contents();
    let sd = build_sd_file(&domain.to_items(), &wrapping(&keys()[..3]), 2).expect("sd");
    let blob = restore_blob_offline(&sd, &exchange_pem(&cert), &pick(&[0, 2])).expect("blob");
    let opened = server_opens(&blob, &(key.clone(), cert)).expect("opens");
    assert!(same(
        &DomainContents::from_items(opened).expect("domain"),
        &domain
    ));
    assert_eq!(jwk["x5t#S256"], x5t_256(&der));
}
