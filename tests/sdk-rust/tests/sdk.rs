//! p11vault through the released `azure_security_keyvault_keys` KeyClient: the key lifecycle
//! (create RSA/EC/oct-HSM, get, list with nextLink paging, update, new versions and their
//! listing, rotate), soft-delete, get deleted, recover, purge, backup and restore, and the key
//! operations, each checked against RustCrypto (`rsa`, `p256`/`p384`/`p521`, `aes-gcm`,
//! `aes-kw`, `cbc`) where the service signs or encrypts. Unlike the JavaScript SDK, this client
//! sends every operation to the service (it does no local cryptography).
//!
//! Run through `tests/with_p11vault.py` (see README.md).

use std::collections::{HashMap, HashSet};

use azure_core::http::StatusCode;
use azure_core::time::{Duration, OffsetDateTime};
use azure_security_keyvault_keys::models::{
    BackupKeyResult, CreateKeyParameters, CurveName, EncryptionAlgorithm, GetRandomBytesParameters,
    ImportKeyParameters, JsonWebKey, Key, KeyAttributes, KeyClientDecryptOptions,
    KeyClientEncryptOptions, KeyClientGetKeyOptions, KeyClientListDeletedKeyPropertiesOptions,
    KeyClientListKeyPropertiesOptions, KeyClientListKeyPropertiesVersionsOptions,
    KeyClientSignOptions, KeyClientUpdateKeyPropertiesOptions, KeyClientWrapKeyOptions,
    KeyOperation, KeyOperationParameters, KeyType, RestoreKeyParameters, SignParameters,
    SignatureAlgorithm, UpdateKeyPropertiesParameters, VerifyParameters,
};
use azure_security_keyvault_keys::{KeyClient, ResourceExt};
use futures::TryStreamExt;
use p11vault_sdk_rust_interop::{
    TestResult, client, client_with, credential, refusal, service, unique, version_of,
};
use rand::RngCore;
use sha2::{Digest, Sha256, Sha384, Sha512};

// ------------------------------------------------------------------------------------------
// Small helpers
// ------------------------------------------------------------------------------------------

fn random(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut v);
    v
}

fn jwk(key: &Key) -> &JsonWebKey {
    key.key.as_ref().expect("the key carries its JWK")
}

fn kid(key: &Key) -> String {
    jwk(key).kid.clone().expect("the JWK carries its kid")
}

async fn create(c: &KeyClient, name: &str, body: CreateKeyParameters) -> azure_core::Result<Key> {
    c.create_key(name, body.try_into()?, None)
        .await?
        .into_model()
}

fn ec(curve: CurveName) -> CreateKeyParameters {
    CreateKeyParameters {
        kty: Some(KeyType::EcHsm),
        curve: Some(curve),
        ..Default::default()
    }
}

fn rsa(bits: i32) -> CreateKeyParameters {
    CreateKeyParameters {
        kty: Some(KeyType::RsaHsm),
        key_size: Some(bits),
        ..Default::default()
    }
}

fn oct(bits: i32) -> CreateKeyParameters {
    CreateKeyParameters {
        kty: Some(KeyType::OctHsm),
        key_size: Some(bits),
        ..Default::default()
    }
}

async fn get(c: &KeyClient, name: &str, version: Option<&str>) -> azure_core::Result<Key> {
    let options = KeyClientGetKeyOptions {
        key_version: version.map(str::to_owned),
        ..Default::default()
    };
    c.get_key(name, Some(options)).await?.into_model()
}

/// Names of every key in every page of a key listing, and how many pages the service sent.
async fn list_keys(
    c: &KeyClient,
    maxresults: Option<i32>,
) -> azure_core::Result<(Vec<String>, usize)> {
    let options = KeyClientListKeyPropertiesOptions {
        maxresults,
        ..Default::default()
    };
    let mut pages = c.list_key_properties(Some(options))?.into_pages();
    let (mut names, mut count) = (Vec::new(), 0);
    while let Some(page) = pages.try_next().await? {
        count += 1;
        let page = page.into_model()?;
        if let Some(max) = maxresults {
            assert!(
                page.value.len() <= max as usize,
                "a page of {} > {max}",
                page.value.len()
            );
        }
        for p in page.value {
            names.push(p.resource_id()?.name);
        }
    }
    Ok((names, count))
}

/// Version ids of every version of a key, and how many pages the service sent.
async fn list_versions(
    c: &KeyClient,
    name: &str,
    maxresults: Option<i32>,
) -> azure_core::Result<(Vec<String>, usize)> {
    let options = KeyClientListKeyPropertiesVersionsOptions {
        maxresults,
        ..Default::default()
    };
    let mut pages = c
        .list_key_properties_versions(name, Some(options))?
        .into_pages();
    let (mut versions, mut count) = (Vec::new(), 0);
    while let Some(page) = pages.try_next().await? {
        count += 1;
        for p in page.into_model()?.value {
            let id = p.resource_id()?;
            assert_eq!(id.name, name);
            versions.push(id.version.expect("a listed version has its version id"));
        }
    }
    Ok((versions, count))
}

async fn deleted_names(c: &KeyClient, maxresults: Option<i32>) -> azure_core::Result<Vec<String>> {
    let options = KeyClientListDeletedKeyPropertiesOptions {
        maxresults,
        ..Default::default()
    };
    let mut pager = c.list_deleted_key_properties(Some(options))?;
    let mut names = Vec::new();
    while let Some(item) = pager.try_next().await? {
        names.push(item.resource_id()?.name);
    }
    Ok(names)
}

async fn delete_and_purge(c: &KeyClient, name: &str) -> TestResult {
    c.delete_key(name, None).await?;
    let purged = c.purge_deleted_key(name, None).await?;
    assert_eq!(purged.status(), StatusCode::NoContent);
    Ok(())
}

async fn sign(
    c: &KeyClient,
    name: &str,
    version: &str,
    alg: SignatureAlgorithm,
    digest: &[u8],
) -> azure_core::Result<Vec<u8>> {
    let body = SignParameters {
        algorithm: Some(alg),
        value: Some(digest.to_vec()),
    };
    let options = KeyClientSignOptions {
        key_version: Some(version.to_owned()),
        ..Default::default()
    };
    let r = c
        .sign(name, body.try_into()?, Some(options))
        .await?
        .into_model()?;
    Ok(r.result.expect("a signature"))
}

async fn verify(
    c: &KeyClient,
    name: &str,
    version: &str,
    alg: SignatureAlgorithm,
    digest: &[u8],
    signature: &[u8],
) -> azure_core::Result<bool> {
    let body = VerifyParameters {
        algorithm: Some(alg),
        digest: Some(digest.to_vec()),
        signature: Some(signature.to_vec()),
    };
    let r = c
        .verify(name, version, body.try_into()?, None)
        .await?
        .into_model()?;
    Ok(r.value.expect("a verification result"))
}

fn op(alg: EncryptionAlgorithm, value: &[u8]) -> KeyOperationParameters {
    KeyOperationParameters {
        algorithm: Some(alg),
        value: Some(value.to_vec()),
        ..Default::default()
    }
}

/// (result, iv, tag) of an encrypt.
async fn encrypt(
    c: &KeyClient,
    name: &str,
    version: &str,
    params: KeyOperationParameters,
) -> azure_core::Result<(Vec<u8>, Option<Vec<u8>>, Option<Vec<u8>>)> {
    let options = KeyClientEncryptOptions {
        key_version: Some(version.to_owned()),
        ..Default::default()
    };
    let r = c
        .encrypt(name, params.try_into()?, Some(options))
        .await?
        .into_model()?;
    Ok((r.result.expect("a ciphertext"), r.iv, r.authentication_tag))
}

async fn decrypt(
    c: &KeyClient,
    name: &str,
    version: &str,
    params: KeyOperationParameters,
) -> azure_core::Result<Vec<u8>> {
    let options = KeyClientDecryptOptions::default();
    let r = c
        .decrypt(name, version, params.try_into()?, Some(options))
        .await?
        .into_model()?;
    Ok(r.result.expect("a plaintext"))
}

async fn wrap(
    c: &KeyClient,
    name: &str,
    version: &str,
    alg: EncryptionAlgorithm,
    key: &[u8],
) -> azure_core::Result<Vec<u8>> {
    let options = KeyClientWrapKeyOptions {
        key_version: Some(version.to_owned()),
        ..Default::default()
    };
    let r = c
        .wrap_key(name, op(alg, key).try_into()?, Some(options))
        .await?
        .into_model()?;
    Ok(r.result.expect("a wrapped key"))
}

async fn unwrap(
    c: &KeyClient,
    name: &str,
    version: &str,
    alg: EncryptionAlgorithm,
    wrapped: &[u8],
) -> azure_core::Result<Vec<u8>> {
    let r = c
        .unwrap_key(name, version, op(alg, wrapped).try_into()?, None)
        .await?
        .into_model()?;
    Ok(r.result.expect("an unwrapped key"))
}

fn rsa_public(key: &Key) -> rsa::RsaPublicKey {
    let j = jwk(key);
    rsa::RsaPublicKey::new(
        rsa::BigUint::from_bytes_be(j.n.as_deref().expect("n")),
        rsa::BigUint::from_bytes_be(j.e.as_deref().expect("e")),
    )
    .expect("a valid RSA public key")
}

fn ec_point(key: &Key) -> (Vec<u8>, Vec<u8>) {
    let j = jwk(key);
    (j.x.clone().expect("x"), j.y.clone().expect("y"))
}

/// Checks an ECDSA signature (r||s) over a digest with RustCrypto.
fn ecdsa_verifies(curve: &CurveName, key: &Key, digest: &[u8], sig: &[u8]) -> bool {
    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    let (x, y) = ec_point(key);
    match curve {
        CurveName::P256 => {
            let point = p256::EncodedPoint::from_affine_coordinates(
                x.as_slice().into(),
                y.as_slice().into(),
                false,
            );
            let vk = p256::ecdsa::VerifyingKey::from_encoded_point(&point).expect("P-256 point");
            let Ok(s) = p256::ecdsa::Signature::from_slice(sig) else {
                return false;
            };
            vk.verify_prehash(digest, &s).is_ok()
        }
        CurveName::P384 => {
            let point = p384::EncodedPoint::from_affine_coordinates(
                x.as_slice().into(),
                y.as_slice().into(),
                false,
            );
            let vk = p384::ecdsa::VerifyingKey::from_encoded_point(&point).expect("P-384 point");
            let Ok(s) = p384::ecdsa::Signature::from_slice(sig) else {
                return false;
            };
            vk.verify_prehash(digest, &s).is_ok()
        }
        CurveName::P521 => {
            let point = p521::EncodedPoint::from_affine_coordinates(
                x.as_slice().into(),
                y.as_slice().into(),
                false,
            );
            let vk = p521::ecdsa::VerifyingKey::from_encoded_point(&point).expect("P-521 point");
            let Ok(s) = p521::ecdsa::Signature::from_slice(sig) else {
                return false;
            };
            vk.verify_prehash(digest, &s).is_ok()
        }
        other => panic!("no verifier for {other:?}"),
    }
}

// ------------------------------------------------------------------------------------------
// Lifecycle
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_sdk_takes_the_challenge_and_then_sends_the_static_token() -> TestResult {
    let cred = credential();
    let c = client_with(cred.clone());
    let key = create(&c, &unique("rs-challenge"), ec(CurveName::P256)).await?;
    assert!(
        kid(&key).starts_with(&format!("{}/keys/", service().url)),
        "{}",
        kid(&key)
    );
    let scopes = cred.scopes.lock().expect("scopes").clone();
    assert!(!scopes.is_empty(), "get_token was never called");
    for s in &scopes {
        // The scope the challenge named (its resource + "/.default").
        assert!(
            s.starts_with("https://") && s.ends_with("/.default"),
            "scope {s}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn create_rsa_ec_and_oct_hsm_keys_and_get_them_back() -> TestResult {
    let c = client();
    let rsa_name = unique("rs-rsa");
    let r = create(&c, &rsa_name, rsa(2048)).await?;
    let j = jwk(&r);
    assert_eq!(j.kty, Some(KeyType::RsaHsm));
    assert_eq!(j.n.as_ref().map(Vec::len), Some(256), "RSA-2048 modulus");
    assert_eq!(j.e.as_deref(), Some(&[1u8, 0, 1][..]));
    assert!(
        j.d.is_none() && j.p.is_none(),
        "no private member leaves the service"
    );
    let attrs = r.attributes.as_ref().expect("attributes");
    assert_eq!(attrs.enabled, Some(true));
    assert!(attrs.created.is_some() && attrs.recovery_level.is_some());

    let ec_name = unique("rs-ec");
    let e = create(&c, &ec_name, ec(CurveName::P384)).await?;
    let j = jwk(&e);
    assert_eq!(j.kty, Some(KeyType::EcHsm));
    assert_eq!(j.crv, Some(CurveName::P384));
    assert_eq!(
        (j.x.as_ref().map(Vec::len), j.y.as_ref().map(Vec::len)),
        (Some(48), Some(48))
    );
    assert!(j.d.is_none());

    let oct_name = unique("rs-oct");
    let o = create(&c, &oct_name, oct(256)).await?;
    assert_eq!(jwk(&o).kty, Some(KeyType::OctHsm));
    assert!(
        jwk(&o).k.is_none(),
        "an oct key's material never leaves the service"
    );

    for (name, created) in [(&rsa_name, &r), (&ec_name, &e), (&oct_name, &o)] {
        let latest = get(&c, name, None).await?;
        assert_eq!(kid(&latest), kid(created));
        assert_eq!(jwk(&latest).kty, jwk(created).kty);
        let v = version_of(&kid(created));
        let pinned = get(&c, name, Some(&v)).await?;
        assert_eq!(kid(&pinned), kid(created));
        assert_eq!(created.resource_id()?.version.as_deref(), Some(v.as_str()));
        assert_eq!(created.resource_id()?.name, *name);
    }
    assert_eq!(jwk(&get(&c, &ec_name, None).await?).x, jwk(&e).x);
    Ok(())
}

#[tokio::test]
async fn a_key_that_does_not_exist_is_a_404_key_not_found() -> TestResult {
    let r = refusal(get(&client(), &unique("rs-missing"), None).await);
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(r.code.as_deref(), Some("KeyNotFound"), "{r:?}");
    Ok(())
}

#[tokio::test]
async fn list_keys_follows_next_link_over_several_pages() -> TestResult {
    let c = client();
    let prefix = unique("rs-page");
    let mut names = Vec::new();
    for i in 0..30 {
        let name = format!("{prefix}-{i:02}");
        let body = CreateKeyParameters {
            tags: Some(HashMap::from([("n".to_owned(), i.to_string())])),
            ..ec(CurveName::P256)
        };
        create(&c, &name, body).await?;
        names.push(name);
    }
    // A small page size: several pages for these 30 keys alone.
    let (small, pages) = list_keys(&c, Some(7)).await?;
    assert!(pages >= 5, "only {pages} pages of at most 7");
    assert_eq!(
        small.iter().collect::<HashSet<_>>().len(),
        small.len(),
        "a key was listed twice"
    );
    for n in &names {
        assert!(small.contains(n), "{n} not listed");
    }
    // The service's default page size (25): over 30 keys take at least two pages.
    let (all, pages) = list_keys(&c, None).await?;
    assert!(pages >= 2, "only {pages} page(s) for {} keys", all.len());
    for n in &names {
        assert!(all.contains(n), "{n} not listed");
    }
    // The item pager sees the tags.
    let mut pager = c.list_key_properties(None)?;
    let mut tagged = 0;
    while let Some(p) = pager.try_next().await? {
        if p.resource_id()?.name == names[3] {
            assert_eq!(
                p.tags.as_ref().and_then(|t| t.get("n")).map(String::as_str),
                Some("3")
            );
            assert_eq!(p.attributes.as_ref().and_then(|a| a.enabled), Some(true));
            tagged += 1;
        }
    }
    assert_eq!(tagged, 1);
    Ok(())
}

#[tokio::test]
async fn update_a_keys_properties() -> TestResult {
    let c = client();
    let name = unique("rs-update");
    let body = CreateKeyParameters {
        key_ops: Some(vec![KeyOperation::Sign, KeyOperation::Verify]),
        ..ec(CurveName::P256)
    };
    let key = create(&c, &name, body).await?;
    let v = version_of(&kid(&key));
    let digest = Sha256::digest(b"update").to_vec();
    let signed = sign(&c, &name, &v, SignatureAlgorithm::Es256, &digest).await?;

    let expires = OffsetDateTime::from_unix_timestamp(OffsetDateTime::now_utc().unix_timestamp())?
        + Duration::days(1);
    let update = UpdateKeyPropertiesParameters {
        key_attributes: Some(KeyAttributes {
            enabled: Some(false),
            expires: Some(expires),
            ..Default::default()
        }),
        tags: Some(HashMap::from([("team".to_owned(), "payments".to_owned())])),
        ..Default::default()
    };
    let options = KeyClientUpdateKeyPropertiesOptions {
        key_version: Some(v.clone()),
        ..Default::default()
    };
    let updated = c
        .update_key_properties(&name, update.try_into()?, Some(options))
        .await?
        .into_model()?;
    let attrs = updated.attributes.as_ref().expect("attributes");
    assert_eq!(attrs.enabled, Some(false));
    assert_eq!(attrs.expires, Some(expires));
    assert_eq!(
        updated
            .tags
            .as_ref()
            .and_then(|t| t.get("team"))
            .map(String::as_str),
        Some("payments")
    );
    let got = get(&c, &name, None).await?;
    assert_eq!(got.attributes.as_ref().and_then(|a| a.enabled), Some(false));

    // A disabled key signs nothing.
    let r = refusal(sign(&c, &name, &v, SignatureAlgorithm::Es256, &digest).await);
    assert_eq!(
        (r.status, r.code.as_deref(), r.inner_code.as_deref()),
        (403, Some("Forbidden"), Some("KeyDisabled")),
        "{r:?}"
    );

    // Without a version: the latest one. key_ops narrowed to verify.
    let update = UpdateKeyPropertiesParameters {
        key_attributes: Some(KeyAttributes {
            enabled: Some(true),
            ..Default::default()
        }),
        key_ops: Some(vec![KeyOperation::Verify]),
        ..Default::default()
    };
    let back = c
        .update_key_properties(&name, update.try_into()?, None)
        .await?
        .into_model()?;
    assert_eq!(back.attributes.as_ref().and_then(|a| a.enabled), Some(true));
    assert_eq!(jwk(&back).key_ops, Some(vec!["verify".to_owned()]));
    let r = refusal(sign(&c, &name, &v, SignatureAlgorithm::Es256, &digest).await);
    assert_eq!(
        (r.status, r.inner_code.as_deref()),
        (403, Some("KeyOperationForbidden")),
        "{r:?}"
    );
    assert!(verify(&c, &name, &v, SignatureAlgorithm::Es256, &digest, &signed).await?);
    Ok(())
}

#[tokio::test]
async fn new_versions_their_listing_with_paging_and_rotate() -> TestResult {
    let c = client();
    let name = unique("rs-versions");
    let mut created = Vec::new();
    for _ in 0..3 {
        created.push(create(&c, &name, ec(CurveName::P256)).await?);
    }
    let versions: Vec<String> = created.iter().map(|k| version_of(&kid(k))).collect();
    assert_eq!(
        versions.iter().collect::<HashSet<_>>().len(),
        3,
        "each create makes a new version"
    );
    assert_ne!(jwk(&created[0]).x, jwk(&created[2]).x);
    assert_eq!(version_of(&kid(&get(&c, &name, None).await?)), versions[2]);
    assert_eq!(
        jwk(&get(&c, &name, Some(&versions[0])).await?).x,
        jwk(&created[0]).x
    );

    let (mut listed, pages) = list_versions(&c, &name, Some(2)).await?;
    assert!(pages >= 2, "versions came in {pages} page(s) of at most 2");
    listed.sort();
    let mut expected = versions.clone();
    expected.sort();
    assert_eq!(listed, expected);

    let rotated = c.rotate_key(&name, None).await?.into_model()?;
    let rv = version_of(&kid(&rotated));
    assert!(!versions.contains(&rv));
    assert_eq!(version_of(&kid(&get(&c, &name, None).await?)), rv);
    assert_eq!(list_versions(&c, &name, None).await?.0.len(), 4);
    Ok(())
}

#[tokio::test]
async fn soft_delete_get_deleted_list_deleted_recover_purge() -> TestResult {
    let c = client();
    let name = unique("rs-delete");
    let body = CreateKeyParameters {
        tags: Some(HashMap::from([("kept".to_owned(), "yes".to_owned())])),
        ..ec(CurveName::P256)
    };
    let key = create(&c, &name, body).await?;
    let v = version_of(&kid(&key));
    let digest = Sha256::digest(b"before deletion").to_vec();
    let before = sign(&c, &name, &v, SignatureAlgorithm::Es256, &digest).await?;

    let deleted = c.delete_key(&name, None).await?.into_model()?;
    assert!(
        deleted
            .recovery_id
            .as_deref()
            .unwrap_or_default()
            .ends_with(&format!("/deletedkeys/{name}")),
        "{:?}",
        deleted.recovery_id
    );
    let (when, purge) = (
        deleted.deleted_date.expect("deletedDate"),
        deleted.scheduled_purge_date.expect("scheduledPurgeDate"),
    );
    assert!(purge > when);
    assert_eq!(
        deleted.key.as_ref().and_then(|k| k.kid.clone()),
        Some(kid(&key))
    );

    assert_eq!(refusal(get(&c, &name, None).await).status, 404);
    let got = c.get_deleted_key(&name, None).await?.into_model()?;
    assert_eq!(got.key.as_ref().and_then(|k| k.x.clone()), jwk(&key).x);
    assert_eq!(
        got.tags
            .as_ref()
            .and_then(|t| t.get("kept"))
            .map(String::as_str),
        Some("yes")
    );
    assert!(
        deleted_names(&c, Some(5)).await?.contains(&name),
        "deleted key not listed"
    );
    // A deleted key can be used by no one.
    assert_eq!(
        refusal(sign(&c, &name, &v, SignatureAlgorithm::Es256, &digest).await).status,
        404
    );
    // The name stays taken while the key is soft-deleted.
    assert_eq!(
        refusal(create(&c, &name, ec(CurveName::P256)).await).status,
        409
    );

    let recovered = c.recover_deleted_key(&name, None).await?.into_model()?;
    assert_eq!(kid(&recovered), kid(&key));
    let back = get(&c, &name, None).await?;
    assert_eq!(jwk(&back).x, jwk(&key).x);
    // The same key material: a signature from before the deletion checks out (RustCrypto).
    assert!(ecdsa_verifies(&CurveName::P256, &back, &digest, &before));
    let after = sign(&c, &name, &v, SignatureAlgorithm::Es256, &digest).await?;
    assert!(ecdsa_verifies(&CurveName::P256, &key, &digest, &after));

    delete_and_purge(&c, &name).await?;
    assert_eq!(refusal(c.get_deleted_key(&name, None).await).status, 404);
    assert!(
        !deleted_names(&c, None).await?.contains(&name),
        "purged key still listed"
    );
    let reborn = create(&c, &name, ec(CurveName::P256)).await?;
    assert_ne!(version_of(&kid(&reborn)), v);
    Ok(())
}

#[tokio::test]
async fn backup_and_restore_bring_back_every_version() -> TestResult {
    let c = client();
    let name = unique("rs-backup");
    let tagged = |v: &str| CreateKeyParameters {
        tags: Some(HashMap::from([("v".to_owned(), v.to_owned())])),
        ..rsa(2048)
    };
    let v1 = create(&c, &name, tagged("1")).await?;
    let v2 = create(&c, &name, tagged("2")).await?;
    let blob: BackupKeyResult = c.backup_key(&name, None).await?.into_model()?;
    let blob = blob.value.expect("a backup blob");
    assert!(blob.len() > 100, "a backup of {} bytes", blob.len());
    let restore = |b: Vec<u8>| RestoreKeyParameters {
        key_backup: Some(b),
    };

    // A live key of that name: refused.
    assert_eq!(
        refusal(c.restore_key(restore(blob.clone()).try_into()?, None).await).status,
        409
    );

    delete_and_purge(&c, &name).await?;
    assert_eq!(refusal(get(&c, &name, None).await).status, 404);
    let restored = c
        .restore_key(restore(blob.clone()).try_into()?, None)
        .await?
        .into_model()?;
    assert_eq!(kid(&restored), kid(&v2));
    assert_eq!(jwk(&restored).n, jwk(&v2).n);
    assert_eq!(
        restored
            .tags
            .as_ref()
            .and_then(|t| t.get("v"))
            .map(String::as_str),
        Some("2")
    );
    let v1v = version_of(&kid(&v1));
    let old = get(&c, &name, Some(&v1v)).await?;
    assert_eq!(jwk(&old).n, jwk(&v1).n);
    let mut listed = list_versions(&c, &name, None).await?.0;
    listed.sort();
    let mut expected = vec![v1v.clone(), version_of(&kid(&v2))];
    expected.sort();
    assert_eq!(listed, expected);

    // The restored key signs with the original material, checked against the public key from
    // before the backup.
    let digest = Sha256::digest(b"after restore").to_vec();
    let sig = sign(&c, &name, &v1v, SignatureAlgorithm::Rs256, &digest).await?;
    rsa_public(&v1).verify(rsa::Pkcs1v15Sign::new::<Sha256>(), &digest, &sig)?;

    // A changed blob is refused and changes nothing.
    delete_and_purge(&c, &name).await?;
    let mut bad = blob;
    let at = bad.len() - 10;
    bad[at] ^= 1;
    assert_eq!(
        refusal(c.restore_key(restore(bad).try_into()?, None).await).status,
        400
    );
    assert_eq!(refusal(get(&c, &name, None).await).status, 404);
    Ok(())
}

#[tokio::test]
async fn random_bytes_from_the_hsm() -> TestResult {
    let c = client();
    let params = || GetRandomBytesParameters { count: Some(32) };
    let a = c
        .get_random_bytes(params().try_into()?, None)
        .await?
        .into_model()?
        .value
        .expect("bytes");
    let b = c
        .get_random_bytes(params().try_into()?, None)
        .await?
        .into_model()?
        .value
        .expect("bytes");
    assert_eq!((a.len(), b.len()), (32, 32));
    assert_ne!(a, b);
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Key operations
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn rsa_the_service_signs_and_rustcrypto_verifies() -> TestResult {
    use rsa::{Pkcs1v15Sign, Pss};
    let c = client();
    let name = unique("rs-rsa-sign");
    let key = create(&c, &name, rsa(2048)).await?;
    let v = version_of(&kid(&key));
    let public = rsa_public(&key);
    let msg = b"signed by p11vault, checked by RustCrypto";
    type Case = (
        SignatureAlgorithm,
        Vec<u8>,
        fn() -> Pkcs1v15Sign,
        fn() -> Pss,
    );
    let cases: Vec<Case> = vec![
        (
            SignatureAlgorithm::Rs256,
            Sha256::digest(msg).to_vec(),
            Pkcs1v15Sign::new::<Sha256>,
            Pss::new::<Sha256>,
        ),
        (
            SignatureAlgorithm::Rs384,
            Sha384::digest(msg).to_vec(),
            Pkcs1v15Sign::new::<Sha384>,
            Pss::new::<Sha384>,
        ),
        (
            SignatureAlgorithm::Rs512,
            Sha512::digest(msg).to_vec(),
            Pkcs1v15Sign::new::<Sha512>,
            Pss::new::<Sha512>,
        ),
    ];
    for (alg, digest, pkcs1, _) in &cases {
        let sig = sign(&c, &name, &v, alg.clone(), digest).await?;
        assert_eq!(sig.len(), 256);
        public
            .verify(pkcs1(), digest, &sig)
            .map_err(|e| format!("{alg:?}: {e}"))?;
        let mut bad = sig.clone();
        bad[7] ^= 1;
        assert!(public.verify(pkcs1(), digest, &bad).is_err());
        assert!(
            verify(&c, &name, &v, alg.clone(), digest, &sig).await?,
            "service verify {alg:?}"
        );
        assert!(
            !verify(&c, &name, &v, alg.clone(), digest, &bad).await?,
            "service verify tampered {alg:?}"
        );
    }
    let pss = [
        SignatureAlgorithm::Ps256,
        SignatureAlgorithm::Ps384,
        SignatureAlgorithm::Ps512,
    ];
    for (alg, (_, digest, _, pss_scheme)) in pss.iter().zip(&cases) {
        let sig = sign(&c, &name, &v, alg.clone(), digest).await?;
        // Pss::new: salt as long as the hash, as the service's PS* use.
        public
            .verify(pss_scheme(), digest, &sig)
            .map_err(|e| format!("{alg:?}: {e}"))?;
        assert!(
            verify(&c, &name, &v, alg.clone(), digest, &sig).await?,
            "service verify {alg:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn rsa_rustcrypto_encrypts_and_wraps_the_service_decrypts_and_unwraps() -> TestResult {
    use rsa::{Oaep, Pkcs1v15Encrypt};
    let c = client();
    let name = unique("rs-rsa-enc");
    let key = create(&c, &name, rsa(3072)).await?;
    let v = version_of(&kid(&key));
    let public = rsa_public(&key);
    let plaintext = random(48);
    let mut rng = rand::thread_rng();
    for alg in [
        EncryptionAlgorithm::Rsa1_5,
        EncryptionAlgorithm::RsaOaep,
        EncryptionAlgorithm::RsaOaep256,
    ] {
        let ours = |rng: &mut rand::rngs::ThreadRng| match alg {
            EncryptionAlgorithm::Rsa1_5 => public.encrypt(rng, Pkcs1v15Encrypt, &plaintext),
            EncryptionAlgorithm::RsaOaep => {
                public.encrypt(rng, Oaep::new::<sha1::Sha1>(), &plaintext)
            }
            _ => public.encrypt(rng, Oaep::new::<Sha256>(), &plaintext),
        };
        let ct = ours(&mut rng)?;
        assert_eq!(
            decrypt(&c, &name, &v, op(alg.clone(), &ct)).await?,
            plaintext,
            "decrypt {alg:?}"
        );
        let wrapped = ours(&mut rng)?;
        assert_eq!(
            unwrap(&c, &name, &v, alg.clone(), &wrapped).await?,
            plaintext,
            "unwrap {alg:?}"
        );
        // The service's own encrypt and wrap, each opened by the service.
        let (ct, _, _) = encrypt(&c, &name, &v, op(alg.clone(), &plaintext)).await?;
        assert_eq!(ct.len(), 384);
        assert_eq!(
            decrypt(&c, &name, &v, op(alg.clone(), &ct)).await?,
            plaintext
        );
        let w = wrap(&c, &name, &v, alg.clone(), &plaintext).await?;
        assert_eq!(unwrap(&c, &name, &v, alg.clone(), &w).await?, plaintext);
    }
    // A ciphertext that does not decrypt is the client's 400.
    let sha1_ct = public.encrypt(&mut rng, Oaep::new::<sha1::Sha1>(), &plaintext)?;
    assert_eq!(
        refusal(decrypt(&c, &name, &v, op(EncryptionAlgorithm::RsaOaep256, &sha1_ct)).await).status,
        400
    );
    Ok(())
}

#[tokio::test]
async fn imported_rsa_key_the_service_encrypts_and_signs_rustcrypto_decrypts_and_verifies()
-> TestResult {
    use rsa::traits::{PrivateKeyParts, PublicKeyParts};
    use rsa::{Oaep, Pkcs1v15Encrypt, Pss, RsaPrivateKey};
    let c = client();
    let mut rng = rand::thread_rng();
    let private = RsaPrivateKey::new(&mut rng, 2048)?;
    let be = |n: &rsa::BigUint| n.to_bytes_be();
    let primes = private.primes();
    let jwk_in = JsonWebKey {
        kty: Some(KeyType::RsaHsm),
        key_ops: Some(
            [
                "encrypt",
                "decrypt",
                "sign",
                "verify",
                "wrapKey",
                "unwrapKey",
            ]
            .map(String::from)
            .to_vec(),
        ),
        n: Some(be(private.n())),
        e: Some(be(private.e())),
        d: Some(be(private.d())),
        p: Some(be(&primes[0])),
        q: Some(be(&primes[1])),
        dp: private.dp().map(be),
        dq: private.dq().map(be),
        qi: private.crt_coefficient().map(|q| q.to_bytes_be()),
        ..Default::default()
    };
    let name = unique("rs-rsa-import");
    let params = ImportKeyParameters {
        hsm: Some(true),
        key: Some(jwk_in),
        ..Default::default()
    };
    let key = c
        .import_key(&name, params.try_into()?, None)
        .await?
        .into_model()?;
    assert_eq!(jwk(&key).kty, Some(KeyType::RsaHsm));
    assert!(jwk(&key).d.is_none());
    assert_eq!(jwk(&key).n, Some(be(private.n())));
    let v = version_of(&kid(&key));

    let plaintext = random(32);
    for alg in [
        EncryptionAlgorithm::RsaOaep256,
        EncryptionAlgorithm::RsaOaep,
        EncryptionAlgorithm::Rsa1_5,
    ] {
        let (ct, _, _) = encrypt(&c, &name, &v, op(alg.clone(), &plaintext)).await?;
        let opened = match alg {
            EncryptionAlgorithm::RsaOaep256 => private.decrypt(Oaep::new::<Sha256>(), &ct)?,
            EncryptionAlgorithm::RsaOaep => private.decrypt(Oaep::new::<sha1::Sha1>(), &ct)?,
            _ => private.decrypt(Pkcs1v15Encrypt, &ct)?,
        };
        assert_eq!(opened, plaintext, "RustCrypto opens the service's {alg:?}");
        let w = wrap(&c, &name, &v, alg.clone(), &plaintext).await?;
        let opened = match alg {
            EncryptionAlgorithm::RsaOaep256 => private.decrypt(Oaep::new::<Sha256>(), &w)?,
            EncryptionAlgorithm::RsaOaep => private.decrypt(Oaep::new::<sha1::Sha1>(), &w)?,
            _ => private.decrypt(Pkcs1v15Encrypt, &w)?,
        };
        assert_eq!(
            opened, plaintext,
            "RustCrypto unwraps the service's {alg:?} wrap"
        );
    }
    // RustCrypto signs, the service verifies (and refuses a signature over another digest).
    let digest = Sha256::digest(b"imported").to_vec();
    let ours = private.sign_with_rng(&mut rng, Pss::new::<Sha256>(), &digest)?;
    assert!(verify(&c, &name, &v, SignatureAlgorithm::Ps256, &digest, &ours).await?);
    let other = Sha256::digest(b"other").to_vec();
    assert!(!verify(&c, &name, &v, SignatureAlgorithm::Ps256, &other, &ours).await?);
    let ours = private.sign(rsa::Pkcs1v15Sign::new::<Sha256>(), &digest)?;
    assert!(verify(&c, &name, &v, SignatureAlgorithm::Rs256, &digest, &ours).await?);
    Ok(())
}

#[tokio::test]
async fn ec_the_service_signs_rustcrypto_verifies_and_the_service_verifies() -> TestResult {
    let c = client();
    for (curve, alg, len) in [
        (CurveName::P256, SignatureAlgorithm::Es256, 64),
        (CurveName::P384, SignatureAlgorithm::Es384, 96),
        (CurveName::P521, SignatureAlgorithm::Es512, 132),
    ] {
        let name = unique("rs-ec-sign");
        let key = create(&c, &name, ec(curve.clone())).await?;
        let v = version_of(&kid(&key));
        let msg = random(100);
        let digest = match alg {
            SignatureAlgorithm::Es256 => Sha256::digest(&msg).to_vec(),
            SignatureAlgorithm::Es384 => Sha384::digest(&msg).to_vec(),
            _ => Sha512::digest(&msg).to_vec(),
        };
        let sig = sign(&c, &name, &v, alg.clone(), &digest).await?;
        assert_eq!(sig.len(), len, "{alg:?} r||s length");
        assert!(
            ecdsa_verifies(&curve, &key, &digest, &sig),
            "{alg:?} does not verify"
        );
        assert!(
            verify(&c, &name, &v, alg.clone(), &digest, &sig).await?,
            "service verify {alg:?}"
        );
        let mut bad = sig.clone();
        bad[5] ^= 0x80;
        assert!(!ecdsa_verifies(&curve, &key, &digest, &bad));
        assert!(
            !verify(&c, &name, &v, alg.clone(), &digest, &bad).await?,
            "service verify tampered {alg:?}"
        );
    }
    // A digest of the wrong length is the client's 400.
    let name = unique("rs-ec-bad");
    let key = create(&c, &name, ec(CurveName::P256)).await?;
    let r = refusal(
        sign(
            &c,
            &name,
            &version_of(&kid(&key)),
            SignatureAlgorithm::Es256,
            &random(20),
        )
        .await,
    );
    assert_eq!(r.status, 400, "{r:?}");
    Ok(())
}

#[tokio::test]
async fn imported_ec_key_rustcrypto_signs_and_the_service_verifies() -> TestResult {
    use p256::ecdsa::signature::hazmat::PrehashSigner;
    let c = client();
    let signing = p256::ecdsa::SigningKey::random(&mut rand::thread_rng());
    let point = signing.verifying_key().to_encoded_point(false);
    let jwk_in = JsonWebKey {
        kty: Some(KeyType::EcHsm),
        crv: Some(CurveName::P256),
        key_ops: Some(vec!["sign".into(), "verify".into()]),
        x: Some(point.x().expect("x").to_vec()),
        y: Some(point.y().expect("y").to_vec()),
        d: Some(signing.to_bytes().to_vec()),
        ..Default::default()
    };
    let name = unique("rs-ec-import");
    let params = ImportKeyParameters {
        hsm: Some(true),
        key: Some(jwk_in),
        ..Default::default()
    };
    let key = c
        .import_key(&name, params.try_into()?, None)
        .await?
        .into_model()?;
    let v = version_of(&kid(&key));
    assert_eq!(jwk(&key).x.as_deref(), point.x().map(|x| x.as_slice()));
    let digest = Sha256::digest(b"signed by RustCrypto").to_vec();
    let ours: p256::ecdsa::Signature = signing.sign_prehash(&digest)?;
    assert!(
        verify(
            &c,
            &name,
            &v,
            SignatureAlgorithm::Es256,
            &digest,
            &ours.to_bytes()
        )
        .await?
    );
    // And the service's signature with the imported key checks out with RustCrypto.
    let theirs = sign(&c, &name, &v, SignatureAlgorithm::Es256, &digest).await?;
    assert!(ecdsa_verifies(&CurveName::P256, &key, &digest, &theirs));
    Ok(())
}

#[tokio::test]
async fn oct_generated_aes_gcm_and_aes_kw_in_the_service() -> TestResult {
    let c = client();
    let name = unique("rs-oct");
    let key = create(&c, &name, oct(256)).await?;
    let v = version_of(&kid(&key));
    let plaintext = random(77);
    let aad = b"header".to_vec();
    let params = KeyOperationParameters {
        additional_authenticated_data: Some(aad.clone()),
        ..op(EncryptionAlgorithm::A256Gcm, &plaintext)
    };
    let (ct, iv, tag) = encrypt(&c, &name, &v, params).await?;
    let (iv, tag) = (iv.expect("the service's IV"), tag.expect("the GCM tag"));
    assert_eq!((iv.len(), tag.len(), ct.len()), (12, 16, plaintext.len()));
    let opening = |tag: Vec<u8>| KeyOperationParameters {
        iv: Some(iv.clone()),
        authentication_tag: Some(tag),
        additional_authenticated_data: Some(aad.clone()),
        ..op(EncryptionAlgorithm::A256Gcm, &ct)
    };
    assert_eq!(
        decrypt(&c, &name, &v, opening(tag.clone())).await?,
        plaintext
    );
    let mut bad = tag;
    bad[0] ^= 1;
    assert_eq!(
        refusal(decrypt(&c, &name, &v, opening(bad)).await).status,
        400
    );

    let cek = random(32);
    let w = wrap(&c, &name, &v, EncryptionAlgorithm::A256Kw, &cek).await?;
    assert_eq!(w.len(), 40);
    assert_eq!(
        unwrap(&c, &name, &v, EncryptionAlgorithm::A256Kw, &w).await?,
        cek
    );
    Ok(())
}

#[tokio::test]
async fn imported_oct_key_aes_gcm_cbc_pad_and_kw_both_ways_against_rustcrypto() -> TestResult {
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit, block_padding::Pkcs7};
    let c = client();
    let k = random(32);
    let jwk_in = JsonWebKey {
        kty: Some(KeyType::OctHsm),
        k: Some(k.clone()),
        key_ops: Some(
            ["encrypt", "decrypt", "wrapKey", "unwrapKey"]
                .map(String::from)
                .to_vec(),
        ),
        ..Default::default()
    };
    let name = unique("rs-oct-import");
    let params = ImportKeyParameters {
        hsm: Some(true),
        key: Some(jwk_in),
        ..Default::default()
    };
    let key = c
        .import_key(&name, params.try_into()?, None)
        .await?
        .into_model()?;
    assert_eq!(jwk(&key).kty, Some(KeyType::OctHsm));
    assert!(jwk(&key).k.is_none());
    let v = version_of(&kid(&key));
    let plaintext = random(50);
    let aad = random(9);
    let gcm = aes_gcm::Aes256Gcm::new_from_slice(&k)?;

    // GCM: the service encrypts, RustCrypto decrypts (ciphertext || tag).
    let params = KeyOperationParameters {
        additional_authenticated_data: Some(aad.clone()),
        ..op(EncryptionAlgorithm::A256Gcm, &plaintext)
    };
    let (ct, iv, tag) = encrypt(&c, &name, &v, params).await?;
    let (iv, tag) = (iv.expect("iv"), tag.expect("tag"));
    let sealed = [ct, tag].concat();
    let opened = gcm
        .decrypt(
            aes_gcm::Nonce::from_slice(&iv),
            Payload {
                msg: &sealed,
                aad: &aad,
            },
        )
        .map_err(|e| format!("RustCrypto cannot open the service's GCM: {e}"))?;
    assert_eq!(opened, plaintext);
    // GCM: RustCrypto encrypts, the service decrypts.
    let iv = random(12);
    let sealed = gcm
        .encrypt(
            aes_gcm::Nonce::from_slice(&iv),
            Payload {
                msg: &plaintext,
                aad: &aad,
            },
        )
        .map_err(|e| format!("{e}"))?;
    let (ct, tag) = sealed.split_at(sealed.len() - 16);
    let params = KeyOperationParameters {
        iv: Some(iv),
        authentication_tag: Some(tag.to_vec()),
        additional_authenticated_data: Some(aad.clone()),
        ..op(EncryptionAlgorithm::A256Gcm, ct)
    };
    assert_eq!(decrypt(&c, &name, &v, params).await?, plaintext);

    // CBC with PKCS#7 padding, both ways.
    let iv = random(16);
    let params = KeyOperationParameters {
        iv: Some(iv.clone()),
        ..op(EncryptionAlgorithm::A256Cbcpad, &plaintext)
    };
    let (ct, _, _) = encrypt(&c, &name, &v, params).await?;
    let dec = cbc::Decryptor::<aes::Aes256>::new_from_slices(&k, &iv)?
        .decrypt_padded_vec_mut::<Pkcs7>(&ct)
        .map_err(|e| format!("RustCrypto cannot open the service's CBC: {e}"))?;
    assert_eq!(dec, plaintext);
    let ours = cbc::Encryptor::<aes::Aes256>::new_from_slices(&k, &iv)?
        .encrypt_padded_vec_mut::<Pkcs7>(&plaintext);
    let params = KeyOperationParameters {
        iv: Some(iv),
        ..op(EncryptionAlgorithm::A256Cbcpad, &ours)
    };
    assert_eq!(decrypt(&c, &name, &v, params).await?, plaintext);

    // AES key wrap (RFC 3394), both ways.
    let kek = aes_kw::KekAes256::try_from(k.as_slice()).map_err(|e| format!("{e}"))?;
    let cek = random(32);
    let w = wrap(&c, &name, &v, EncryptionAlgorithm::A256Kw, &cek).await?;
    assert_eq!(kek.unwrap_vec(&w).map_err(|e| format!("{e}"))?, cek);
    let ours = kek.wrap_vec(&cek).map_err(|e| format!("{e}"))?;
    assert_eq!(
        unwrap(&c, &name, &v, EncryptionAlgorithm::A256Kw, &ours).await?,
        cek
    );
    Ok(())
}
