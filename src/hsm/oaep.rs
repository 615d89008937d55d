//! EME-OAEP encoding and decoding (RFC 8017 §7.1), for tokens whose RSA-OAEP mechanism lacks a
//! hash (SoftHSM2 does OAEP only with SHA-1). The RSA operation itself stays in the token
//! (`CKM_RSA_X_509`); only the padding is done here.
//!
//! Decoding is constant-time in everything but the length of the message it returns: every
//! malformed encoding takes the same path and yields the same error, so the answer cannot tell
//! an attacker which check failed (Manger's attack).

use openssl::hash::{MessageDigest, hash};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};
use zeroize::Zeroizing;

/// The hash of OAEP (also the MGF1 hash: JOSE's RSA-OAEP-256 uses SHA-256 for both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OaepHash {
    Sha1,
    Sha256,
}

impl OaepHash {
    fn digest(self) -> MessageDigest {
        match self {
            OaepHash::Sha1 => MessageDigest::sha1(),
            OaepHash::Sha256 => MessageDigest::sha256(),
        }
    }

    pub fn output_len(self) -> usize {
        match self {
            OaepHash::Sha1 => 20,
            OaepHash::Sha256 => 32,
        }
    }

    /// The hash of the empty label.
    fn empty_label_hash(self) -> Vec<u8> {
        // Hashing never fails for these built-in digests; an empty vector would make every
        // decode fail rather than pass.
        hash(self.digest(), b"")
            .map(|d| d.to_vec())
            .unwrap_or_default()
    }
}

/// The largest message OAEP can carry in a `k`-byte modulus.
pub fn max_message_len(k: usize, h: OaepHash) -> usize {
    k.saturating_sub(2 * h.output_len() + 2)
}

/// Builds the `k`-byte encoded message for `message` with a random seed. `None` when the
/// message does not fit.
pub fn encode(message: &[u8], k: usize, h: OaepHash) -> Option<Zeroizing<Vec<u8>>> {
    let hlen = h.output_len();
    if message.len() > max_message_len(k, h) || k < 2 * hlen + 2 {
        return None;
    }
    let mut seed = Zeroizing::new(vec![0u8; hlen]);
    getrandom::fill(&mut seed).ok()?;
    let db_len = k - hlen - 1;
    let mut db = Zeroizing::new(vec![0u8; db_len]);
    db[..hlen].copy_from_slice(&h.empty_label_hash());
    db[db_len - message.len() - 1] = 0x01;
    db[db_len - message.len()..].copy_from_slice(message);
    xor_in(&mut db, &mgf1(&seed, db_len, h));
    let mut masked_seed = seed.clone();
    xor_in(&mut masked_seed, &mgf1(&db, hlen, h));
    let mut em = Zeroizing::new(Vec::with_capacity(k));
    em.push(0);
    em.extend_from_slice(&masked_seed);
    em.extend_from_slice(&db);
    Some(em)
}

/// Recovers the message from a `k`-byte encoded message (the raw RSA decryption, left-padded
/// to `k`). `None` for any malformed encoding, with no hint which check failed.
pub fn decode(em: &[u8], k: usize, h: OaepHash) -> Option<Zeroizing<Vec<u8>>> {
    let hlen = h.output_len();
    if k < 2 * hlen + 2 || em.len() > k {
        return None;
    }
    let mut padded = Zeroizing::new(vec![0u8; k]);
    padded[k - em.len()..].copy_from_slice(em);
    let (y, rest) = (padded[0], &padded[1..]);
    let (masked_seed, masked_db) = rest.split_at(hlen);
    let mut seed = Zeroizing::new(masked_seed.to_vec());
    xor_in(&mut seed, &mgf1(masked_db, hlen, h));
    let mut db = Zeroizing::new(masked_db.to_vec());
    let db_len = db.len();
    xor_in(&mut db, &mgf1(&seed, db_len, h));

    let mut good = y.ct_eq(&0) & h.empty_label_hash()[..].ct_eq(&db[..hlen]);
    // Find the 0x01 after the zero padding without branching on the data.
    let mut looking = Choice::from(1);
    let mut one_at = 0u32;
    let mut stray = Choice::from(0);
    for (i, &b) in db[hlen..].iter().enumerate() {
        let is_zero = b.ct_eq(&0);
        let is_one = b.ct_eq(&1);
        // `i` is below the modulus length, far under u32::MAX.
        one_at.conditional_assign(&(i as u32), looking & is_one);
        stray |= looking & !is_zero & !is_one;
        looking &= !is_one;
    }
    good &= !stray & !looking;
    if bool::from(good) {
        let start = hlen + one_at as usize + 1;
        Some(Zeroizing::new(db[start..].to_vec()))
    } else {
        None
    }
}

/// MGF1 (RFC 8017 B.2.1).
fn mgf1(seed: &[u8], len: usize, h: OaepHash) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(len + h.output_len()));
    let mut counter = 0u32;
    while out.len() < len {
        let mut input = Zeroizing::new(seed.to_vec());
        input.extend_from_slice(&counter.to_be_bytes());
        match hash(h.digest(), &input) {
            Ok(d) => out.extend_from_slice(&d),
            // Unreachable for built-in digests; a zero mask fails every later check.
            Err(_) => out.resize(len, 0),
        }
        counter += 1;
    }
    out.truncate(len);
    out
}

fn xor_in(target: &mut [u8], mask: &[u8]) {
    for (t, m) in target.iter_mut().zip(mask) {
        *t ^= m;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::pkey::PKey;
    use openssl::rsa::{Padding, Rsa};

    /// OpenSSL's OAEP (SHA-256 + MGF1-SHA-256) against ours, both ways, through raw RSA.
    #[test]
    fn matches_openssl_both_ways() {
        let rsa = Rsa::generate(2048).expect("rsa");
        let pkey = PKey::from_rsa(rsa.clone()).expect("pkey");
        let k = rsa.size() as usize;
        for (h, md) in [
            (OaepHash::Sha1, MessageDigest::sha1()),
            (OaepHash::Sha256, MessageDigest::sha256()),
        ] {
            for len in [0usize, 1, 32, max_message_len(k, h)] {
                let msg: Vec<u8> = (0..len).map(|i| i as u8).collect();
                // OpenSSL encrypts, we decode.
                let mut enc = openssl::encrypt::Encrypter::new(&pkey).expect("enc");
                enc.set_rsa_padding(Padding::PKCS1_OAEP).expect("pad");
                enc.set_rsa_oaep_md(md).expect("md");
                enc.set_rsa_mgf1_md(md).expect("mgf");
                let mut ct = vec![0u8; enc.encrypt_len(&msg).expect("len")];
                let n = enc.encrypt(&msg, &mut ct).expect("encrypt");
                ct.truncate(n);
                let mut em = vec![0u8; k];
                let n = rsa
                    .private_decrypt(&ct, &mut em, Padding::NONE)
                    .expect("raw");
                assert_eq!(decode(&em[..n], k, h).expect("decodes").as_slice(), msg);
                // We encode, OpenSSL decrypts.
                let em = encode(&msg, k, h).expect("fits");
                let mut ct = vec![0u8; k];
                rsa.public_encrypt(&em, &mut ct, Padding::NONE)
                    .expect("raw");
                let mut dec = openssl::encrypt::Decrypter::new(&pkey).expect("dec");
                dec.set_rsa_padding(Padding::PKCS1_OAEP).expect("pad");
                dec.set_rsa_oaep_md(md).expect("md");
                dec.set_rsa_mgf1_md(md).expect("mgf");
                let mut out = vec![0u8; dec.decrypt_len(&ct).expect("len")];
                let n = dec.decrypt(&ct, &mut out).expect("decrypt");
                assert_eq!(&out[..n], msg.as_slice());
            }
        }
    }

    #[test]
    fn every_malformed_encoding_is_refused() {
        let k = 256;
        let h = OaepHash::Sha256;
        let good = encode(b"secret", k, h).expect("fits");
        assert!(decode(&good, k, h).is_some());
        // A flipped bit in the leading byte, the masked seed, the label hash or the zero
        // padding is caught (the message bytes themselves are not authenticated by OAEP).
        for pos in [0, 1, 20, 40, 100] {
            let mut bad = good.to_vec();
            bad[pos] ^= 0x80;
            assert!(decode(&bad, k, h).is_none(), "bit flip at {pos} accepted");
        }
        assert!(decode(&vec![0u8; k], k, h).is_none());
        assert!(decode(&vec![0u8; k + 1], k, h).is_none());
        assert!(encode(&vec![0u8; max_message_len(k, h) + 1], k, h).is_none());
    }
}
