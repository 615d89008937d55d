//! The JOSE pieces of the security-domain formats (security-domain.md §4.1–4.3): base64url,
//! compact JWE with A256CBC-HS512 under `dir` or `RSA-OAEP-256`, and the SP 800-108 KDF that
//! gives each item of a domain its own content key.
//!
//! Opening a JWE checks the tag before anything is decrypted, over the protected header exactly
//! as it was transmitted, in constant time; a JWE whose tag is not 32 bytes is refused (az skips
//! its check for an empty tag, §4.2; this code never does).

use base64::Engine;
use base64::alphabet;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use openssl::encrypt::{Decrypter, Encrypter};
use openssl::hash::MessageDigest;
use openssl::pkey::{HasPublic, PKey, PKeyRef, Private};
use openssl::rsa::Padding;
use openssl::sign::Signer;
use openssl::symm::{Cipher, Crypter, Mode};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::{Error, Result};

/// The one content encryption of every JWE in these formats.
pub(super) const ENC: &str = "A256CBC-HS512";
pub(super) const ALG_DIR: &str = "dir";
pub(super) const ALG_RSA_OAEP_256: &str = "RSA-OAEP-256";
/// az also opens shares under SHA-1 OAEP (§4.2); nothing writes it.
pub(super) const ALG_RSA_OAEP: &str = "RSA-OAEP";

/// A256CBC-HS512's content key: the MAC key, then the AES key.
pub(super) const CEK_LEN: usize = 64;
const IV_LEN: usize = 16;
const TAG_LEN: usize = 32;

/// Base64url without padding, as every JWE part and thumbprint is written.
pub(super) fn b64u(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

const URL_SAFE_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

const STANDARD_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Base64url, with or without padding (az decodes with `+ '==='`, §4.1).
pub(super) fn b64u_decode(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_LENIENT.decode(text).ok()
}

/// Standard base64 (an `x5c` entry), with or without padding.
pub(super) fn b64_decode(text: &str) -> Option<Vec<u8>> {
    STANDARD_LENIENT.decode(text).ok()
}

/// HMAC-SHA-512 over the concatenation of `parts`.
fn hmac_sha512(key: &[u8], parts: &[&[u8]]) -> Result<Zeroizing<[u8; 64]>> {
    let key = PKey::hmac(key)?;
    let mut signer = Signer::new(MessageDigest::sha512(), &key)?;
    for part in parts {
        signer.update(part)?;
    }
    let mut out = Zeroizing::new([0u8; 64]);
    signer.sign(&mut *out)?;
    Ok(out)
}

/// NIST SP 800-108 in counter mode with HMAC-SHA-512 and a 32-bit counter (§4.3), for outputs
/// of at most one block: az's implementation differs from the standard beyond 512 bits, so
/// longer outputs are refused rather than computed two ways.
pub(super) fn sp800_108(
    ki: &[u8],
    label: &[u8],
    context: &[u8],
    bits: u32,
) -> Result<Zeroizing<Vec<u8>>> {
    if bits == 0 || bits > 512 || !bits.is_multiple_of(8) {
        return Err(Error::Internal(format!(
            "SP 800-108 output of {bits} bits is not supported"
        )));
    }
    let block = hmac_sha512(
        ki,
        &[
            &1u32.to_be_bytes(),
            label,
            &[0],
            context,
            &bits.to_be_bytes(),
        ],
    )?;
    Ok(Zeroizing::new(block[..(bits / 8) as usize].to_vec()))
}

/// The content key of the item tagged `tag` under `master`: CEK(tag) of §4.3.
pub(super) fn item_key(master: &[u8], tag: &str) -> Result<Zeroizing<Vec<u8>>> {
    sp800_108(master, tag.as_bytes(), b"", 512)
}

/// Random bytes from OpenSSL's CSPRNG, in a zeroizing buffer.
pub(super) fn random(len: usize) -> Result<Zeroizing<Vec<u8>>> {
    let mut out = Zeroizing::new(vec![0u8; len]);
    openssl::rand::rand_bytes(&mut out)?;
    Ok(out)
}

/// The protected header as written: `{"alg":…,"enc":…,"kid":…}`, compact, in that order.
#[derive(Serialize)]
struct HeaderOut<'a> {
    alg: &'a str,
    enc: &'a str,
    kid: &'a str,
}

/// The protected header as read; other members are ignored, as az does.
#[derive(Deserialize)]
pub(super) struct Header {
    pub alg: String,
    pub enc: String,
    #[serde(default)]
    pub kid: Option<String>,
}

/// A compact JWE split into its five parts; the header's base64url text is kept as it was
/// transmitted, because that text, not a re-serialisation, is what the tag covers.
pub(super) struct Compact {
    header_b64: String,
    pub header: Header,
    pub encrypted_key: Vec<u8>,
    iv: Vec<u8>,
    ciphertext: Vec<u8>,
    tag: Vec<u8>,
}

impl Compact {
    /// Splits and decodes a compact JWE, checking its shape: five parts, a JSON header with
    /// `alg` and `enc = A256CBC-HS512`, a 16-byte IV, whole AES blocks and a 32-byte tag. The
    /// error says which part is wrong.
    pub fn parse(text: &str) -> std::result::Result<Compact, String> {
        let parts: Vec<&str> = text.split('.').collect();
        let [header_b64, encrypted_key, iv, ciphertext, tag] = parts[..] else {
            return Err(format!(
                "a compact JWE has 5 parts separated by '.', this one has {}",
                parts.len()
            ));
        };
        let decode = |part: &str, name: &str| {
            b64u_decode(part).ok_or_else(|| format!("its {name} is not base64url"))
        };
        let header_json = decode(header_b64, "protected header")?;
        let header: Header = serde_json::from_slice(&header_json)
            .map_err(|e| format!("its protected header is not a JWE header: {e}"))?;
        if header.enc != ENC {
            return Err(format!(
                "its enc is '{}'; only {ENC} is used",
                truncate(&header.enc)
            ));
        }
        let compact = Compact {
            header_b64: header_b64.to_owned(),
            header,
            encrypted_key: decode(encrypted_key, "encrypted key")?,
            iv: decode(iv, "IV")?,
            ciphertext: decode(ciphertext, "ciphertext")?,
            tag: decode(tag, "tag")?,
        };
        if compact.iv.len() != IV_LEN {
            return Err(format!(
                "its IV is {} bytes, not {IV_LEN}",
                compact.iv.len()
            ));
        }
        if compact.ciphertext.is_empty() || !compact.ciphertext.len().is_multiple_of(16) {
            return Err(format!(
                "its ciphertext is {} bytes, not a whole number of AES blocks",
                compact.ciphertext.len()
            ));
        }
        if compact.tag.len() != TAG_LEN {
            return Err(format!(
                "its authentication tag is {} bytes, not {TAG_LEN}",
                compact.tag.len()
            ));
        }
        Ok(compact)
    }

    /// Verifies the tag under `cek` (constant-time) and only then decrypts. `Invalid` when the
    /// tag does not verify or the padding is wrong.
    pub fn open(&self, cek: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        if cek.len() != CEK_LEN {
            return Err(Error::Invalid(format!(
                "the content key is {} bytes, not {CEK_LEN}",
                cek.len()
            )));
        }
        let (mac_key, aes_key) = cek.split_at(32);
        let expected = mac(mac_key, &self.header_b64, &self.iv, &self.ciphertext)?;
        if !bool::from(expected[..TAG_LEN].ct_eq(&self.tag)) {
            return Err(Error::Invalid(
                "its authentication tag does not verify: the data was changed, or it was not made with this key".into(),
            ));
        }
        cbc(Mode::Decrypt, aes_key, &self.iv, &self.ciphertext)
            .map_err(|_| Error::Invalid("its ciphertext does not decrypt".into()))
    }
}

/// The A256CBC-HS512 tag input of RFC 7518 §5.2.2: AAD ‖ IV ‖ ciphertext ‖ BE64(AAD bits).
fn mac(
    mac_key: &[u8],
    header_b64: &str,
    iv: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<[u8; 64]>> {
    let aad_bits = (header_b64.len() as u64) * 8;
    hmac_sha512(
        mac_key,
        &[
            header_b64.as_bytes(),
            iv,
            ciphertext,
            &aad_bits.to_be_bytes(),
        ],
    )
}

/// AES-256-CBC with PKCS#7 padding into a zeroizing buffer allocated once.
fn cbc(
    mode: Mode,
    key: &[u8],
    iv: &[u8],
    data: &[u8],
) -> std::result::Result<Zeroizing<Vec<u8>>, openssl::error::ErrorStack> {
    let cipher = Cipher::aes_256_cbc();
    let mut crypter = Crypter::new(cipher, mode, key, Some(iv))?;
    crypter.pad(true);
    let mut out = Zeroizing::new(vec![0u8; data.len() + cipher.block_size()]);
    let mut written = crypter.update(data, &mut out)?;
    written += crypter.finalize(&mut out[written..])?;
    out.truncate(written);
    Ok(out)
}

/// Seals `plaintext` under `cek` as a compact JWE with header `{"alg","enc","kid"}` and the
/// given encrypted-key part (empty for `dir`).
fn seal(
    alg: &str,
    kid: &str,
    encrypted_key: &[u8],
    cek: &[u8],
    plaintext: &[u8],
) -> Result<String> {
    let header = serde_json::to_string(&HeaderOut { alg, enc: ENC, kid })
        .map_err(|e| Error::Internal(format!("cannot write a JWE header: {e}")))?;
    let header_b64 = b64u(header.as_bytes());
    let (mac_key, aes_key) = cek.split_at(32);
    let iv = random(IV_LEN)?;
    let ciphertext = cbc(Mode::Encrypt, aes_key, &iv, plaintext)?;
    let tag = mac(mac_key, &header_b64, &iv, &ciphertext)?;
    Ok(format!(
        "{header_b64}.{}.{}.{}.{}",
        b64u(encrypted_key),
        b64u(&iv),
        b64u(&ciphertext),
        b64u(&tag[..TAG_LEN])
    ))
}

/// An item's JWE: `alg = dir` under CEK(tag), `kid = tag`.
pub(super) fn seal_item(master: &[u8], tag: &str, plaintext: &[u8]) -> Result<String> {
    let cek = item_key(master, tag)?;
    seal(ALG_DIR, tag, b"", &cek, plaintext)
}

/// A JWE to an RSA public key: a fresh 64-byte content key, RSA-OAEP-256-encrypted.
pub(super) fn seal_to<T: HasPublic>(
    key: &PKeyRef<T>,
    kid: &str,
    plaintext: &[u8],
) -> Result<String> {
    let cek = random(CEK_LEN)?;
    let encrypted_key = rsa_oaep_encrypt(key, &cek)?;
    seal(ALG_RSA_OAEP_256, kid, &encrypted_key, &cek, plaintext)
}

/// RSA-OAEP with SHA-256 and MGF1-SHA-256, empty label (JOSE's RSA-OAEP-256).
pub(super) fn rsa_oaep_encrypt<T: HasPublic>(key: &PKeyRef<T>, data: &[u8]) -> Result<Vec<u8>> {
    let mut enc = Encrypter::new(key)?;
    enc.set_rsa_padding(Padding::PKCS1_OAEP)?;
    enc.set_rsa_oaep_md(MessageDigest::sha256())?;
    enc.set_rsa_mgf1_md(MessageDigest::sha256())?;
    let mut out = vec![0u8; enc.encrypt_len(data)?];
    let written = enc.encrypt(data, &mut out)?;
    out.truncate(written);
    Ok(out)
}

/// RSA-OAEP decryption with `digest` for both OAEP and MGF1, into a zeroizing buffer. `None`
/// when the ciphertext does not decrypt under this key.
pub(super) fn rsa_oaep_decrypt(
    key: &PKeyRef<Private>,
    digest: MessageDigest,
    data: &[u8],
) -> Option<Zeroizing<Vec<u8>>> {
    let attempt = || -> std::result::Result<Zeroizing<Vec<u8>>, openssl::error::ErrorStack> {
        let mut dec = Decrypter::new(key)?;
        dec.set_rsa_padding(Padding::PKCS1_OAEP)?;
        dec.set_rsa_oaep_md(digest)?;
        dec.set_rsa_mgf1_md(digest)?;
        let mut out = Zeroizing::new(vec![0u8; dec.decrypt_len(data)?]);
        let written = dec.decrypt(data, &mut out)?;
        out.truncate(written);
        Ok(out)
    };
    attempt().ok()
}

/// Client text quoted in a message, cut to a readable length.
pub(super) fn truncate(text: &str) -> String {
    const MAX: usize = 64;
    match text.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::rsa::Rsa;

    #[test]
    fn sp800_108_matches_the_test_vector_of_the_spec() {
        // security-domain.md §4.3 (az's sp800_108.py:35-45).
        let out = sp800_108(&[0x41; 32], b"label", b"context", 256).expect("kdf");
        assert_eq!(
            hex::encode(&*out),
            "f0ca51f6308791404bf68b56024ee7c64d6c737716f81d47e1e68b5c4e399575"
        );
        // The item key is the first (and only) block for L = 512, with an empty context.
        let master = [7u8; 32];
        let cek = item_key(&master, "p11vault_meta").expect("kdf");
        let block = hmac_sha512(
            &master,
            &[&[0, 0, 0, 1], b"p11vault_meta", &[0], &[0, 0, 2, 0]],
        )
        .expect("hmac");
        assert_eq!(&cek[..], &block[..]);
        assert!(sp800_108(&master, b"x", b"", 1024).is_err());
        assert!(sp800_108(&master, b"x", b"", 0).is_err());
    }

    #[test]
    fn a_dir_jwe_round_trips_and_has_the_spec_header() {
        let master = [9u8; 32];
        let text = seal_item(&master, "hsm_backup", b"secret bytes").expect("seal");
        let parts: Vec<&str> = text.split('.').collect();
        assert_eq!(parts.len(), 5);
        assert_eq!(parts[1], "", "dir has an empty encrypted key");
        assert_eq!(
            b64u_decode(parts[0]).expect("b64"),
            br#"{"alg":"dir","enc":"A256CBC-HS512","kid":"hsm_backup"}"#
        );
        let jwe = Compact::parse(&text).expect("parse");
        let cek = item_key(&master, "hsm_backup").expect("kdf");
        assert_eq!(&jwe.open(&cek).expect("open")[..], b"secret bytes");
        // 12 bytes of plaintext pad to one block.
        assert_eq!(jwe.ciphertext.len(), 16);
        let other = item_key(&master, "other").expect("kdf");
        assert!(matches!(jwe.open(&other), Err(Error::Invalid(_))));
    }

    #[test]
    fn every_changed_byte_of_a_jwe_is_refused() {
        let master = [3u8; 32];
        let cek = item_key(&master, "t").expect("kdf");
        let text = seal_item(&master, "t", &[0x55; 40]).expect("seal");
        for at in 0..text.len() {
            let mut bytes = text.clone().into_bytes();
            if bytes[at] == b'.' {
                continue;
            }
            // Another base64url character, so the change is not simply a decoding error.
            bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
            let changed = String::from_utf8(bytes).expect("ascii");
            // A change to the last character of a part may flip only unused bits, which the
            // decoder refuses; any other change alters the header, IV, ciphertext or tag.
            let opened = Compact::parse(&changed)
                .map_err(Error::Invalid)
                .and_then(|j| j.open(&cek));
            assert!(opened.is_err(), "a change at {at} was accepted");
        }
    }

    #[test]
    fn a_header_change_that_keeps_the_json_the_same_is_refused() {
        // The tag covers the header as transmitted: a re-encoding of the same JSON must fail.
        let master = [1u8; 32];
        let cek = item_key(&master, "t").expect("kdf");
        let text = seal_item(&master, "t", b"x").expect("seal");
        let rest = text.split_once('.').expect("parts").1;
        let spaced = b64u(br#"{"alg": "dir", "enc": "A256CBC-HS512", "kid": "t"}"#);
        let jwe = Compact::parse(&format!("{spaced}.{rest}")).expect("parse");
        assert!(matches!(jwe.open(&cek), Err(Error::Invalid(_))));
    }

    #[test]
    fn malformed_jwes_are_refused_with_a_reason() {
        let master = [1u8; 32];
        let good = seal_item(&master, "t", b"x").expect("seal");
        let parts: Vec<&str> = good.split('.').collect();
        let with = |i: usize, v: &str| {
            let mut p = parts.clone();
            p[i] = v;
            p.join(".")
        };
        let cases = [
            ("a.b.c".to_owned(), "5 parts"),
            (with(0, "!!"), "protected header is not base64url"),
            (with(0, &b64u(b"[1]")), "not a JWE header"),
            (
                with(0, &b64u(br#"{"alg":"dir","enc":"A128GCM"}"#)),
                "only A256CBC-HS512",
            ),
            (with(2, &b64u(&[0; 12])), "IV is 12 bytes"),
            (with(3, &b64u(&[0; 15])), "not a whole number"),
            (with(3, ""), "not a whole number"),
            (with(4, ""), "tag is 0 bytes"),
            (with(4, &b64u(&[0; 31])), "tag is 31 bytes"),
        ];
        for (text, reason) in cases {
            match Compact::parse(&text) {
                Err(e) => assert!(e.contains(reason), "{e} lacks {reason}"),
                Ok(_) => panic!("{text} was accepted"),
            }
        }
        // Padding is accepted, as az writes none but decodes with '==='.
        assert!(Compact::parse(&with(2, &format!("{}==", parts[2]))).is_ok());
    }

    #[test]
    fn an_rsa_jwe_opens_with_the_private_key_only() {
        let key = PKey::from_rsa(Rsa::generate(2048).expect("rsa")).expect("pkey");
        let other = PKey::from_rsa(Rsa::generate(2048).expect("rsa")).expect("pkey");
        let text = seal_to(&key, "not used", &[0xAB; 64]).expect("seal");
        let jwe = Compact::parse(&text).expect("parse");
        assert_eq!(jwe.header.alg, ALG_RSA_OAEP_256);
        assert_eq!(jwe.header.kid.as_deref(), Some("not used"));
        assert_eq!(jwe.encrypted_key.len(), 256);
        assert_eq!(jwe.ciphertext.len(), 80, "64 bytes pad to 5 blocks (§3.2)");
        let cek =
            rsa_oaep_decrypt(&key, MessageDigest::sha256(), &jwe.encrypted_key).expect("decrypts");
        assert_eq!(&jwe.open(&cek).expect("open")[..], &[0xAB; 64]);
        assert!(rsa_oaep_decrypt(&other, MessageDigest::sha256(), &jwe.encrypted_key).is_none());
        assert!(rsa_oaep_decrypt(&key, MessageDigest::sha1(), &jwe.encrypted_key).is_none());
    }
}
