//! Turns an imported JWK into key material for the token, after checking that it is a whole,
//! consistent key: a key whose parts do not belong together would sign and decrypt wrongly,
//! so it is refused with a 400 before anything reaches the token. Every secret byte is held in
//! zeroizing buffers.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use openssl::bn::{BigNum, BigNumContext};
use openssl::ec::{EcGroup, EcKey, EcPoint};
use openssl::nid::Nid;
use openssl::rsa::Rsa;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::error::Error;
use crate::hsm::ImportMaterial;
use crate::model::{Curve, KeyFamily, KeyKind, OCT_SIZES, RSA_SIZES};

/// A JSON Web Key as a client sends it for import. Private members are zeroized on drop.
#[derive(Default, Deserialize)]
pub struct JwkIn {
    pub kty: Option<String>,
    #[serde(default)]
    pub key_ops: Option<Vec<String>>,
    pub n: Option<String>,
    pub e: Option<String>,
    pub d: Option<Zeroizing<String>>,
    pub p: Option<Zeroizing<String>>,
    pub q: Option<Zeroizing<String>>,
    pub dp: Option<Zeroizing<String>>,
    pub dq: Option<Zeroizing<String>>,
    pub qi: Option<Zeroizing<String>>,
    pub k: Option<Zeroizing<String>>,
    pub crv: Option<String>,
    pub x: Option<String>,
    pub y: Option<String>,
    pub key_hsm: Option<String>,
}

/// Decodes base64url (or standard base64), padded or not, as the SDKs send either.
pub fn decode_b64(field: &str, raw: &str) -> Result<Vec<u8>, Error> {
    let trimmed = raw.trim_end_matches('=');
    URL_SAFE_NO_PAD
        .decode(trimmed)
        .or_else(|_| STANDARD_NO_PAD.decode(trimmed))
        .map_err(|_| Error::BadParameter(format!("The member '{field}' is not valid base64url.")))
}

fn secret(field: &str, raw: &Option<Zeroizing<String>>) -> Result<Zeroizing<Vec<u8>>, Error> {
    let raw = raw.as_ref().ok_or_else(|| missing(field))?;
    Ok(Zeroizing::new(decode_b64(field, raw)?))
}

fn public(field: &str, raw: &Option<String>) -> Result<Vec<u8>, Error> {
    decode_b64(field, raw.as_deref().ok_or_else(|| missing(field))?)
}

fn missing(field: &str) -> Error {
    Error::BadParameter(format!("The JWK to import lacks the member '{field}'."))
}

fn inconsistent(what: &str) -> Error {
    Error::BadParameter(format!(
        "The {what} key in the JWK is not consistent: its members do not form one valid key."
    ))
}

/// Checks the JWK and returns its material and the kind of key it is.
pub fn material_from_jwk(jwk: &JwkIn) -> Result<(ImportMaterial, KeyKind), Error> {
    if jwk.key_hsm.is_some() {
        return Err(Error::BadParameter(
            "BYOK key transfer blobs (key_hsm) are not supported; import the key as a JWK with its private members.".into(),
        ));
    }
    let kty = jwk.kty.as_deref().ok_or_else(|| missing("kty"))?;
    match KeyFamily::parse_kty(kty)? {
        KeyFamily::Oct => oct(jwk),
        KeyFamily::Rsa => rsa(jwk),
        KeyFamily::Ec => ec(jwk),
    }
}

fn oct(jwk: &JwkIn) -> Result<(ImportMaterial, KeyKind), Error> {
    let k = secret("k", &jwk.k)?;
    let bits = (k.len() * 8) as u32;
    if !OCT_SIZES.contains(&bits) {
        return Err(Error::BadParameter(format!(
            "An oct key must be 128, 192 or 256 bits long; this one is {bits} bits."
        )));
    }
    Ok((ImportMaterial::Oct { k }, KeyKind::Oct { bits }))
}

fn rsa(jwk: &JwkIn) -> Result<(ImportMaterial, KeyKind), Error> {
    if jwk.d.is_none() {
        return Err(Error::BadParameter(
            "The JWK has no private key member 'd'; importing a public key alone is not supported."
                .into(),
        ));
    }
    let n = strip_zeros(public("n", &jwk.n)?);
    let e = strip_zeros(public("e", &jwk.e)?);
    let d = secret("d", &jwk.d)?;
    let p = secret("p", &jwk.p)?;
    let q = secret("q", &jwk.q)?;
    let dp = secret("dp", &jwk.dp)?;
    let dq = secret("dq", &jwk.dq)?;
    let qi = secret("qi", &jwk.qi)?;

    let bits = bit_length(&n);
    if !RSA_SIZES.contains(&bits) {
        return Err(Error::BadParameter(format!(
            "An RSA key must be 2048, 3072 or 4096 bits long; this one is {bits} bits."
        )));
    }
    let bn = |v: &[u8]| BigNum::from_slice(v).map_err(|_| inconsistent("RSA"));
    let key = Rsa::from_private_components(
        bn(&n)?,
        bn(&e)?,
        bn(&d)?,
        bn(&p)?,
        bn(&q)?,
        bn(&dp)?,
        bn(&dq)?,
        bn(&qi)?,
    )
    .map_err(|_| inconsistent("RSA"))?;
    // check_key tests p and q for primality, n = p·q, and d·e ≡ 1 (mod λ(n)); a separate check
    // covers the CRT members, which check_key leaves out on some OpenSSL versions.
    if !key.check_key().unwrap_or(false) || !crt_members_match(&d, &p, &q, &dp, &dq, &qi)? {
        return Err(inconsistent("RSA"));
    }
    Ok((
        ImportMaterial::Rsa {
            n,
            e,
            d,
            p,
            q,
            dp,
            dq,
            qi,
        },
        KeyKind::Rsa { bits },
    ))
}

/// dp = d mod (p−1), dq = d mod (q−1), qi = q⁻¹ mod p.
fn crt_members_match(
    d: &[u8],
    p: &[u8],
    q: &[u8],
    dp: &[u8],
    dq: &[u8],
    qi: &[u8],
) -> Result<bool, Error> {
    let err = |_| inconsistent("RSA");
    let mut ctx = BigNumContext::new_secure().map_err(err)?;
    let d = BigNum::from_slice(d).map_err(err)?;
    let p = BigNum::from_slice(p).map_err(err)?;
    let q = BigNum::from_slice(q).map_err(err)?;
    let one = BigNum::from_u32(1).map_err(err)?;
    let mut p1 = BigNum::new().map_err(err)?;
    p1.checked_sub(&p, &one).map_err(err)?;
    let mut q1 = BigNum::new().map_err(err)?;
    q1.checked_sub(&q, &one).map_err(err)?;
    let mut want_dp = BigNum::new().map_err(err)?;
    want_dp.nnmod(&d, &p1, &mut ctx).map_err(err)?;
    let mut want_dq = BigNum::new().map_err(err)?;
    want_dq.nnmod(&d, &q1, &mut ctx).map_err(err)?;
    let mut want_qi = BigNum::new().map_err(err)?;
    if want_qi.mod_inverse(&q, &p, &mut ctx).is_err() {
        return Ok(false);
    }
    Ok(want_dp == BigNum::from_slice(dp).map_err(err)?
        && want_dq == BigNum::from_slice(dq).map_err(err)?
        && want_qi == BigNum::from_slice(qi).map_err(err)?)
}

fn ec(jwk: &JwkIn) -> Result<(ImportMaterial, KeyKind), Error> {
    let curve = Curve::parse(jwk.crv.as_deref().ok_or_else(|| missing("crv"))?)?;
    if jwk.d.is_none() {
        return Err(Error::BadParameter(
            "The JWK has no private key member 'd'; importing a public key alone is not supported."
                .into(),
        ));
    }
    let c = curve.coordinate_len();
    let d = secret("d", &jwk.d)?;
    if d.is_empty() || d.len() > c {
        return Err(Error::BadParameter(format!(
            "The private key 'd' of a {} key is {c} bytes long.",
            curve.jwk_name()
        )));
    }
    let d = left_pad(&d, c);

    let err = |_| inconsistent("EC");
    let group = EcGroup::from_curve_name(nid(curve)).map_err(err)?;
    let mut ctx = BigNumContext::new_secure().map_err(err)?;
    let scalar = BigNum::from_slice(&d).map_err(err)?;
    let mut order = BigNum::new().map_err(err)?;
    group.order(&mut order, &mut ctx).map_err(err)?;
    if scalar.num_bits() == 0 || scalar >= order {
        return Err(inconsistent("EC"));
    }
    let mut point = EcPoint::new(&group).map_err(err)?;
    point
        .mul_generator2(&group, &scalar, &mut ctx)
        .map_err(err)?;
    let mut x = BigNum::new().map_err(err)?;
    let mut y = BigNum::new().map_err(err)?;
    point
        .affine_coordinates(&group, &mut x, &mut y, &mut ctx)
        .map_err(err)?;
    let x = x.to_vec_padded(c as i32).map_err(err)?;
    let y = y.to_vec_padded(c as i32).map_err(err)?;

    // If the client sent the public point, it must be the one d gives.
    for (field, given, derived) in [("x", &jwk.x, &x), ("y", &jwk.y, &y)] {
        if let Some(raw) = given
            && left_pad(&decode_b64(field, raw)?, c).as_slice() != derived.as_slice()
        {
            return Err(inconsistent("EC"));
        }
    }
    let key = EcKey::from_private_components(&group, &scalar, &point).map_err(err)?;
    key.check_key().map_err(err)?;
    Ok((ImportMaterial::Ec { curve, d, x, y }, KeyKind::Ec { curve }))
}

fn nid(curve: Curve) -> Nid {
    match curve {
        Curve::P256 => Nid::X9_62_PRIME256V1,
        Curve::P384 => Nid::SECP384R1,
        Curve::P521 => Nid::SECP521R1,
        Curve::P256K => Nid::SECP256K1,
    }
}

fn strip_zeros(mut v: Vec<u8>) -> Vec<u8> {
    let zeros = v
        .iter()
        .take_while(|b| **b == 0)
        .count()
        .min(v.len().saturating_sub(1));
    v.drain(..zeros);
    v
}

fn left_pad(v: &[u8], len: usize) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(vec![0u8; len.saturating_sub(v.len())]);
    out.extend_from_slice(v);
    out
}

fn bit_length(big_endian: &[u8]) -> u32 {
    match big_endian.iter().position(|b| *b != 0) {
        Some(i) => ((big_endian.len() - i - 1) * 8) as u32 + (8 - big_endian[i].leading_zeros()),
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::pkey::Private;

    fn b64(v: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(v)
    }

    fn z(v: Vec<u8>) -> Option<Zeroizing<String>> {
        Some(Zeroizing::new(b64(&v)))
    }

    fn rsa_jwk(key: &Rsa<Private>) -> JwkIn {
        JwkIn {
            kty: Some("RSA".into()),
            n: Some(b64(&key.n().to_vec())),
            e: Some(b64(&key.e().to_vec())),
            d: z(key.d().to_vec()),
            p: z(key.p().expect("p").to_vec()),
            q: z(key.q().expect("q").to_vec()),
            dp: z(key.dmp1().expect("dp").to_vec()),
            dq: z(key.dmq1().expect("dq").to_vec()),
            qi: z(key.iqmp().expect("qi").to_vec()),
            ..JwkIn::default()
        }
    }

    #[test]
    fn a_whole_rsa_key_is_accepted_and_a_mixed_one_refused() {
        let a = Rsa::generate(2048).expect("generate");
        let b = Rsa::generate(2048).expect("generate");
        let (_, kind) = material_from_jwk(&rsa_jwk(&a)).expect("consistent key");
        assert_eq!(kind, KeyKind::Rsa { bits: 2048 });
        let mut mixed = rsa_jwk(&a);
        mixed.n = Some(b64(&b.n().to_vec()));
        assert!(matches!(
            material_from_jwk(&mixed),
            Err(Error::BadParameter(_))
        ));
        let mut bad_crt = rsa_jwk(&a);
        bad_crt.qi = rsa_jwk(&b).qi;
        assert!(matches!(
            material_from_jwk(&bad_crt),
            Err(Error::BadParameter(_))
        ));
        let mut public_only = rsa_jwk(&a);
        public_only.d = None;
        assert!(matches!(
            material_from_jwk(&public_only),
            Err(Error::BadParameter(_))
        ));
        let small = Rsa::generate(1024).expect("generate");
        assert!(matches!(
            material_from_jwk(&rsa_jwk(&small)),
            Err(Error::BadParameter(_))
        ));
    }

    #[test]
    fn ec_keys_are_checked_against_their_public_point() {
        for curve in Curve::ALL {
            let group = EcGroup::from_curve_name(nid(curve)).expect("group");
            let key = EcKey::generate(&group).expect("generate");
            let mut ctx = BigNumContext::new().expect("ctx");
            let mut x = BigNum::new().expect("bn");
            let mut y = BigNum::new().expect("bn");
            key.public_key()
                .affine_coordinates(&group, &mut x, &mut y, &mut ctx)
                .expect("coordinates");
            let c = curve.coordinate_len() as i32;
            let jwk = JwkIn {
                kty: Some("EC".into()),
                crv: Some(curve.jwk_name().into()),
                d: z(key.private_key().to_vec_padded(c).expect("d")),
                x: Some(b64(&x.to_vec_padded(c).expect("x"))),
                y: Some(b64(&y.to_vec_padded(c).expect("y"))),
                ..JwkIn::default()
            };
            let (material, kind) = material_from_jwk(&jwk).expect("consistent key");
            assert_eq!(kind, KeyKind::Ec { curve });
            let ImportMaterial::Ec { x: got_x, .. } = material else {
                panic!("EC material expected")
            };
            assert_eq!(got_x, x.to_vec_padded(c).expect("x"));
            let mut wrong = jwk;
            wrong.y = wrong.x.clone();
            assert!(matches!(
                material_from_jwk(&wrong),
                Err(Error::BadParameter(_))
            ));
        }
    }

    #[test]
    fn oct_keys_must_have_an_aes_length() {
        for (len, ok) in [(16, true), (24, true), (32, true), (20, false), (0, false)] {
            let jwk = JwkIn {
                kty: Some("oct-HSM".into()),
                k: z(vec![7u8; len]),
                ..JwkIn::default()
            };
            assert_eq!(material_from_jwk(&jwk).is_ok(), ok, "length {len}");
        }
    }

    #[test]
    fn base64_in_either_alphabet_with_or_without_padding_decodes() {
        assert_eq!(decode_b64("x", "-_8").expect("url-safe"), vec![0xfb, 0xff]);
        assert_eq!(
            decode_b64("x", "+/8=").expect("standard padded"),
            vec![0xfb, 0xff]
        );
        assert!(decode_b64("x", "***").is_err());
    }
}
