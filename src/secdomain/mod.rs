//! The Managed HSM security domain's formats and cryptography, pure (no token, no store, no
//! HTTP), as `../shared/docs/security-domain.md` specifies them: the SD file a download
//! returns (§3, built by §9), the restore blob an upload carries (§6), the transfer key's JWK
//! and certificate (§2.4, §7), and the offline work of az's `restore-blob` (§5) for the CLI.
//!
//! A domain is a list of [`Item`]s, each `(tag, plaintext)`. For a download they are sealed
//! under a fresh 32-byte master key (one `dir` JWE per item, its key derived from the tag),
//! and the master key is split with Shamir over GF(257) into one share per customer
//! certificate, each share RSA-OAEP-256-encrypted to its certificate. p11vault's own items are
//! [`DomainContents`]. Secrets (master keys, content keys, shares, plaintexts, private keys)
//! live in zeroizing buffers, and no type holding one has `Debug`. Everything read from a
//! client is checked before use and refused as [`Error::Invalid`] with a message that says
//! what is wrong; a changed byte in a file or JWE is refused, never decrypted to something else.
//!
//! Depends on `model` only.

mod certs;
mod files;
mod jose;
mod shamir;
#[cfg(test)]
mod tests;

use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::x509::X509;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::model::VersionId;
pub use certs::{
    CERTIFICATES, MAX_QUORUM, MIN_RSA_BITS, WrappingCert, check_quorum, download_request_body,
    generate_wrapping_key, parse_download_request, transfer_certificate, transfer_key_body,
    wrapping_cert_from_x509, x5t_256,
};
use files::{Blob, DataItem, EncData, SdFile, SharedKeys, Wrapped};
use jose::Compact;

/// Why a security-domain operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client's fault (a bad request, file, blob or key); the message is for the client.
    #[error("{0}")]
    Invalid(String),
    /// Ours (OpenSSL or the random source failed, or the caller passed something impossible).
    #[error("{0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl From<openssl::error::ErrorStack> for Error {
    fn from(e: openssl::error::ErrorStack) -> Self {
        Error::Internal(format!("OpenSSL failed: {e}"))
    }
}

impl Error {
    /// The same error with its client message prefixed by where it was found.
    fn within(self, what: &str) -> Error {
        match self {
            Error::Invalid(m) => Error::Invalid(format!("{what}: {m}")),
            internal => internal,
        }
    }
}

/// The master key's length: 64-byte shares, as the real service writes (§3.2).
const MASTER_KEY_LEN: usize = 32;

/// One secret item of a domain: its tag (KDF label and JWE `kid`) and its plaintext. No
/// `Debug`: it holds a secret.
pub struct Item {
    pub tag: String,
    pub value: Zeroizing<Vec<u8>>,
}

pub const TAG_META: &str = "p11vault_meta";
pub const TAG_WRAP: &str = "p11vault_wrap_key";
pub const TAG_MAC: &str = "p11vault_mac_key";
/// The format of [`DomainContents`] this release writes and reads.
pub const DOMAIN_FORMAT: u64 = 1;

/// The metadata item, `{"format":1,"domain":"<hex>","wrap":"AES-256","mac":"HMAC-SHA-256"}`.
#[derive(Serialize, Deserialize)]
struct Meta {
    format: u64,
    domain: String,
    wrap: String,
    mac: String,
}

const WRAP_ALGORITHM: &str = "AES-256";
const MAC_ALGORITHM: &str = "HMAC-SHA-256";

/// p11vault's domain contents, format 1: the AES-256 wrap key (the token's wrap and unwrap
/// halves hold this one value), the HMAC-SHA-256 key of backup MACs, and the domain id. No
/// `Debug`: it holds secrets.
pub struct DomainContents {
    pub id: VersionId,
    pub wrap: Zeroizing<[u8; 32]>,
    pub mac: Zeroizing<[u8; 32]>,
}

impl DomainContents {
    /// The items of a download: `p11vault_meta`, `p11vault_wrap_key`, `p11vault_mac_key`.
    pub fn to_items(&self) -> Vec<Item> {
        let meta = Meta {
            format: DOMAIN_FORMAT,
            domain: self.id.to_string(),
            wrap: WRAP_ALGORITHM.into(),
            mac: MAC_ALGORITHM.into(),
        };
        let meta = serde_json::to_vec(&meta)
            .expect("serialising a struct of strings and an integer cannot fail");
        vec![
            Item {
                tag: TAG_META.into(),
                value: Zeroizing::new(meta),
            },
            Item {
                tag: TAG_WRAP.into(),
                value: Zeroizing::new(self.wrap.to_vec()),
            },
            Item {
                tag: TAG_MAC.into(),
                value: Zeroizing::new(self.mac.to_vec()),
            },
        ]
    }

    /// The contents back from a restore blob's items: exactly the three tags, once each; a
    /// format newer than this release's is refused as such before anything else.
    pub fn from_items(items: Vec<Item>) -> Result<Self> {
        let invalid = |m: String| Error::Invalid(m);
        let meta = items.iter().find(|i| i.tag == TAG_META).ok_or_else(|| {
            invalid(format!(
                "The security domain has no {TAG_META} item: it was not made by p11vault."
            ))
        })?;
        let value: serde_json::Value = serde_json::from_slice(&meta.value)
            .map_err(|e| invalid(format!("The security domain's {TAG_META} is not JSON: {e}")))?;
        match value.get("format").and_then(serde_json::Value::as_u64) {
            Some(f) if f > DOMAIN_FORMAT => {
                return Err(invalid(format!(
                    "The security domain was made by a newer release of p11vault (format {f}); this release reads format {DOMAIN_FORMAT}."
                )));
            }
            Some(f) if f >= 1 => {}
            _ => {
                return Err(invalid(format!(
                    "The security domain's {TAG_META} has no valid format number."
                )));
            }
        }
        let meta: Meta = serde_json::from_value(value)
            .map_err(|e| invalid(format!("The security domain's {TAG_META}: {e}")))?;
        let id = VersionId::parse_hex(&meta.domain).ok_or_else(|| {
            invalid(format!(
                "The security domain's id '{}' is not 32 hex digits.",
                jose::truncate(&meta.domain)
            ))
        })?;
        if meta.wrap != WRAP_ALGORITHM || meta.mac != MAC_ALGORITHM {
            return Err(invalid(format!(
                "The security domain's keys are {} and {}; this release knows {WRAP_ALGORITHM} and {MAC_ALGORITHM}.",
                jose::truncate(&meta.wrap),
                jose::truncate(&meta.mac)
            )));
        }
        for (i, item) in items.iter().enumerate() {
            if ![TAG_META, TAG_WRAP, TAG_MAC].contains(&item.tag.as_str()) {
                return Err(invalid(format!(
                    "The security domain holds an item '{}' that p11vault's format 1 does not have.",
                    jose::truncate(&item.tag)
                )));
            }
            if items[..i].iter().any(|other| other.tag == item.tag) {
                return Err(invalid(format!(
                    "The security domain holds two items '{}'.",
                    item.tag
                )));
            }
        }
        let key = |tag: &str| -> Result<Zeroizing<[u8; 32]>> {
            let item = items
                .iter()
                .find(|i| i.tag == tag)
                .ok_or_else(|| invalid(format!("The security domain has no {tag} item.")))?;
            let mut out = Zeroizing::new([0u8; 32]);
            if item.value.len() != out.len() {
                return Err(invalid(format!(
                    "The security domain's {tag} is {} bytes, not 32.",
                    item.value.len()
                )));
            }
            out.copy_from_slice(&item.value);
            Ok(out)
        };
        Ok(DomainContents {
            id,
            wrap: key(TAG_WRAP)?,
            mac: key(TAG_MAC)?,
        })
    }
}

/// Tags must be non-empty and distinct, and there must be at least one item.
fn check_items(items: &[Item]) -> std::result::Result<(), String> {
    if items.is_empty() {
        return Err("a security domain needs at least one item".into());
    }
    for (i, item) in items.iter().enumerate() {
        if item.tag.is_empty() {
            return Err(format!("item {i} has an empty tag"));
        }
        if items[..i].iter().any(|other| other.tag == item.tag) {
            return Err(format!("two items have the tag '{}'", item.tag));
        }
    }
    Ok(())
}

/// Every item as a `dir` JWE under CEK(tag) of `master`, in order.
fn seal_items(master: &[u8], items: &[Item]) -> Result<Vec<DataItem>> {
    items
        .iter()
        .map(|item| {
            Ok(DataItem {
                compact_jwe: jose::seal_item(master, &item.tag, &item.value)?,
                tag: item.tag.clone(),
            })
        })
        .collect()
}

/// The security-domain file of a download (§9 steps 2–6): a fresh master key, every item as a
/// `dir` JWE, the key split into one share per certificate (quorum `required`), each share
/// sealed to its certificate in request order, as compact JSON text in the real service's
/// member order. The master key is wiped when this returns.
pub fn build_sd_file(items: &[Item], certs: &[WrappingCert], required: u8) -> Result<String> {
    let required = check_quorum(certs.len(), u64::from(required))?;
    certs::check_distinct(certs)?;
    check_items(items).map_err(|m| Error::Internal(format!("the domain's items: {m}")))?;
    let master = jose::random(MASTER_KEY_LEN)?;
    let data = seal_items(&master, items)?;
    let shares = shamir::split(&master, certs.len(), usize::from(required))?;
    let enc_shares = certs
        .iter()
        .zip(&shares)
        .map(|(cert, share)| {
            Ok(Wrapped {
                // A random GUID per share, as the real service writes; az ignores it.
                enc_key: jose::seal_to(
                    cert.public_key(),
                    &uuid::Uuid::new_v4().to_string(),
                    share,
                )?,
                x5t_256: cert.x5t_256().to_owned(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    SdFile {
        enc_data: EncData {
            data,
            kdf: files::KDF.into(),
        },
        shared_keys: SharedKeys {
            enc_shares,
            key_algorithm: files::KEY_ALGORITHM.into(),
            required: u64::from(required),
        },
        version: files::SD_VERSION,
    }
    .to_text()
}

/// Checks an item's JWE for what an item must be: `alg = dir`, an empty encrypted key, and
/// `kid` equal to the item's tag.
fn parse_item(index: usize, item: &DataItem) -> Result<Compact> {
    let at = || format!("EncData.data[{index}] ('{}')", jose::truncate(&item.tag));
    let jwe =
        Compact::parse(&item.compact_jwe).map_err(|m| Error::Invalid(format!("{}: {m}.", at())))?;
    let problem = if jwe.header.alg != jose::ALG_DIR {
        Some(format!(
            "its alg is '{}', not dir",
            jose::truncate(&jwe.header.alg)
        ))
    } else if !jwe.encrypted_key.is_empty() {
        Some("a dir JWE has an empty encrypted key".into())
    } else if jwe.header.kid.as_deref() != Some(item.tag.as_str()) {
        Some("its kid is not its tag".into())
    } else {
        None
    };
    match problem {
        Some(m) => Err(Error::Invalid(format!("{}: {m}.", at()))),
        None => Ok(jwe),
    }
}

/// Opens the items of `data` under `master`, in order.
fn open_items(master: &[u8], data: &[(String, Compact)]) -> Result<Vec<Item>> {
    data.iter()
        .enumerate()
        .map(|(index, (tag, jwe))| {
            let cek = jose::item_key(master, tag)?;
            let value = jwe.open(&cek).map_err(|e| {
                e.within(&format!(
                    "EncData.data[{index}] ('{}')",
                    jose::truncate(tag)
                ))
            })?;
            Ok(Item {
                tag: tag.clone(),
                value,
            })
        })
        .collect()
}

fn parse_items(data: &[DataItem]) -> Result<Vec<(String, Compact)>> {
    if data.is_empty() {
        return Err(Error::Invalid("EncData.data holds no items.".into()));
    }
    data.iter()
        .enumerate()
        .map(|(i, item)| Ok((item.tag.clone(), parse_item(i, item)?)))
        .collect()
}

/// A restore blob (§6) whose shape has been checked, waiting for its content key.
pub struct RestoreBlob {
    wrapped: Compact,
    items: Vec<(String, Compact)>,
}

/// Parses an upload's `value` (§6 steps 2–3): the blob's members, every JWE's shape, and its
/// `x5t_256` against this HSM's transfer certificate (`expected_x5t_256`, b64u SHA-256).
pub fn parse_restore_blob(value: &str, expected_x5t_256: &str) -> Result<RestoreBlob> {
    let blob = Blob::parse(value)?;
    if blob.wrapped_key.x5t_256 != expected_x5t_256 {
        return Err(Error::Invalid(format!(
            "The restore blob was made for another HSM's transfer key (x5t_256 {}, this HSM's is {expected_x5t_256}); fetch this HSM's exchange key with init-recovery and make the blob again.",
            jose::truncate(&blob.wrapped_key.x5t_256)
        )));
    }
    let wrapped = Compact::parse(&blob.wrapped_key.enc_key)
        .map_err(|m| Error::Invalid(format!("WrappedKey.enc_key: {m}.")))?;
    if wrapped.header.alg != jose::ALG_RSA_OAEP_256 {
        return Err(Error::Invalid(format!(
            "WrappedKey.enc_key: its alg is '{}', not {}.",
            jose::truncate(&wrapped.header.alg),
            jose::ALG_RSA_OAEP_256
        )));
    }
    if wrapped.encrypted_key.is_empty() {
        return Err(Error::Invalid(
            "WrappedKey.enc_key: its encrypted key is empty.".into(),
        ));
    }
    Ok(RestoreBlob {
        wrapped,
        items: parse_items(&blob.enc_data.data)?,
    })
}

impl RestoreBlob {
    /// The RSA part of `enc_key`: the 64-byte content key, RSA-OAEP-256-encrypted to the
    /// transfer key, for the token to decrypt.
    pub fn encrypted_cek(&self) -> &[u8] {
        &self.wrapped.encrypted_key
    }

    /// Given the decrypted content key: verifies `enc_key`'s tag, decrypts the 32-byte master
    /// key, and opens every item with CEK(tag), tags verified in constant time over each
    /// header as transmitted. The items come back in the blob's order.
    pub fn open(&self, cek: &[u8]) -> Result<Vec<Item>> {
        let master = self
            .wrapped
            .open(cek)
            .map_err(|e| e.within("WrappedKey.enc_key"))?;
        if master.len() != MASTER_KEY_LEN {
            return Err(Error::Invalid(format!(
                "WrappedKey.enc_key holds {} bytes; the master key is {MASTER_KEY_LEN}.",
                master.len()
            )));
        }
        open_items(&master, &self.items)
    }
}

/// Decrypts one share with `key`. The error says why it cannot be used.
fn open_share(enc_key: &str, key: &PKey<Private>) -> std::result::Result<shamir::Share, String> {
    let jwe = Compact::parse(enc_key)?;
    let digest = match jwe.header.alg.as_str() {
        jose::ALG_RSA_OAEP_256 => MessageDigest::sha256(),
        jose::ALG_RSA_OAEP => MessageDigest::sha1(),
        other => return Err(format!("its alg is '{}'", jose::truncate(other))),
    };
    let cek = jose::rsa_oaep_decrypt(key, digest, &jwe.encrypted_key)
        .ok_or("its content key does not decrypt")?;
    let share = jwe.open(&cek).map_err(|e| e.to_string())?;
    shamir::decode(&share)
}

/// §5 steps 1–4: the file's items, decrypted with the master key recombined from the shares
/// that `keys` open (each key with its certificate; shares found by the certificate's
/// thumbprint). A damaged share is skipped, as az does, and named if too few remain.
fn open_sd_file(text: &str, keys: &[(PKey<Private>, X509)]) -> Result<Vec<Item>> {
    let file = SdFile::parse(text)?;
    let required = usize::try_from(file.shared_keys.required).unwrap_or(usize::MAX);
    if keys.len() < required {
        return Err(Error::Invalid(format!(
            "The security domain needs {required} of its wrapping keys; {} given.",
            keys.len()
        )));
    }
    let mut thumbprints = Vec::with_capacity(keys.len());
    for (i, (key, cert)) in keys.iter().enumerate() {
        let public = cert.public_key().map_err(|_| {
            Error::Invalid(format!(
                "The certificate of wrapping key {} has no readable public key.",
                i + 1
            ))
        })?;
        if !public.public_eq(key) {
            return Err(Error::Invalid(format!(
                "Wrapping key {} is not the private key of its certificate.",
                i + 1
            )));
        }
        thumbprints.push(x5t_256(&cert.to_der()?));
    }
    // Items are checked before any share is decrypted: a damaged file fails fast.
    let items = parse_items(&file.enc_data.data)?;
    let enc_shares = &file.shared_keys.enc_shares;
    let mut shares = Vec::with_capacity(required);
    let mut used = Vec::new();
    let mut notes = Vec::new();
    for (i, ((key, _), thumbprint)) in keys.iter().zip(&thumbprints).enumerate() {
        if shares.len() == required {
            break;
        }
        let matching: Vec<usize> = (0..enc_shares.len())
            .filter(|&j| enc_shares[j].x5t_256 == *thumbprint)
            .collect();
        if matching.is_empty() {
            notes.push(format!(
                "wrapping key {} (x5t#S256 {thumbprint}) matches no share of this file",
                i + 1
            ));
            continue;
        }
        let fresh: Vec<usize> = matching.into_iter().filter(|j| !used.contains(j)).collect();
        if fresh.is_empty() {
            notes.push(format!(
                "wrapping key {} opens the same share as an earlier one",
                i + 1
            ));
            continue;
        }
        for j in fresh {
            if shares.len() == required {
                break;
            }
            match open_share(&enc_shares[j].enc_key, key) {
                Ok(share) => {
                    shares.push(share);
                    used.push(j);
                }
                Err(m) => notes.push(format!(
                    "share {j} (wrapping key {}) is damaged: {m}",
                    i + 1
                )),
            }
        }
    }
    if shares.len() < required {
        return Err(Error::Invalid(format!(
            "Insufficient shares: the security domain needs {required}, {} could be opened ({}).",
            shares.len(),
            notes.join("; ")
        )));
    }
    let master = shamir::combine(&shares)
        .map_err(|m| Error::Invalid(format!("The shares do not recombine: {m}.")))?;
    open_items(&master, &items)
}

/// An exchange-key certificate: PEM as az writes it (DER accepted too), RSA ≥ 2048 bits.
fn exchange_certificate(bytes: &[u8]) -> Result<WrappingCert> {
    let cert = X509::from_pem(bytes)
        .or_else(|_| X509::from_der(bytes))
        .map_err(|_| Error::Invalid("The exchange key is not a PEM certificate.".into()))?;
    wrapping_cert_from_x509(&cert).map_err(|e| e.within("The exchange key"))
}

/// The restore blob of `items` for `exchange` (§5 steps 5–6): a fresh master key, every item
/// re-sealed under it with the same tags in the same order, the key wrapped to the exchange
/// certificate.
fn blob_for(items: &[Item], exchange: &WrappingCert) -> Result<String> {
    let master = jose::random(MASTER_KEY_LEN)?;
    Blob {
        enc_data: EncData {
            data: seal_items(&master, items)?,
            kdf: files::KDF.into(),
        },
        wrapped_key: Wrapped {
            enc_key: jose::seal_to(exchange.public_key(), "not used", &master)?,
            x5t_256: exchange.x5t_256().to_owned(),
        },
    }
    .to_text()
}

/// az's `restore-blob`, offline (§5): recombines the master key from the shares `keys` open,
/// decrypts every item, and re-encrypts them for the HSM whose exchange (transfer)
/// certificate is `exchange_cert_pem`. The text is what az writes. Works on any SD file az can
/// read, not only p11vault's.
pub fn restore_blob_offline(
    sd_file: &str,
    exchange_cert_pem: &[u8],
    keys: &[(PKey<Private>, X509)],
) -> Result<String> {
    let exchange = exchange_certificate(exchange_cert_pem)?;
    let items = open_sd_file(sd_file, keys)?;
    blob_for(&items, &exchange)
}

/// The same domain under a new master key and new shares for `new_certs` with quorum
/// `required`: p11vault's answer to "download again with new wrapping keys" (§8), done offline
/// with the old file and enough of its keys.
pub fn reshare_offline(
    sd_file: &str,
    keys: &[(PKey<Private>, X509)],
    new_certs: &[WrappingCert],
    required: u8,
) -> Result<String> {
    // The new quorum is checked before any share is decrypted.
    check_quorum(new_certs.len(), u64::from(required))?;
    certs::check_distinct(new_certs)?;
    let items = open_sd_file(sd_file, keys)?;
    check_items(&items).map_err(|m| Error::Invalid(format!("The security domain: {m}.")))?;
    build_sd_file(&items, new_certs, required)
}
