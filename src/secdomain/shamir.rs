//! Shamir secret sharing over GF(257), byte by byte, in the share encoding az's decoder reads
//! (security-domain.md §4.4): share i (x = i + 1) holds, for every byte of the secret, the
//! little-endian 16-bit word `(x << 9) | y` with `y = f_j(x) mod 257`.
//!
//! Every byte gets its own polynomial with fresh uniform coefficients in 0..=256 (az's own
//! splitter reuses one set of coefficients for all bytes; it is not copied). Field arithmetic
//! has no branch on secret values.

use zeroize::Zeroizing;

use super::Result;
use super::jose::random;

const P: u32 = 257;
/// x takes the 7 bits above y's 9; az accepts at most 126 shares.
pub(super) const MAX_SHARES: usize = 126;

/// One share, decoded: its x and one y per secret byte.
pub(super) struct Share {
    pub x: u16,
    ys: Zeroizing<Vec<u16>>,
}

/// Splits `secret` into `n` encoded shares, any `m` of which recombine it.
pub(super) fn split(secret: &[u8], n: usize, m: usize) -> Result<Vec<Zeroizing<Vec<u8>>>> {
    let mut pool: Zeroizing<Vec<u8>> = Zeroizing::new(Vec::new());
    split_with(secret, n, m, &mut || {
        loop {
            if pool.is_empty() {
                // Two bytes per coefficient, with some spare for the rare rejection; replaced,
                // never grown, so no copy is left behind in a freed allocation.
                pool = random(2 * secret.len() * m + 16)?;
            }
            let (Some(lo), Some(hi)) = (pool.pop(), pool.pop()) else {
                continue;
            };
            let v = u16::from_le_bytes([lo, hi]);
            // 65536 = 255 · 257 + 1: dropping the one value 65535 leaves an exact multiple of
            // 257 values, so `v % 257` is uniform.
            if v != u16::MAX {
                return Ok(u32::from(v) % P);
            }
        }
    })
}

/// [`split`] with the coefficients drawn from `coefficient` (uniform in 0..=256), so tests can
/// choose them.
pub(super) fn split_with(
    secret: &[u8],
    n: usize,
    m: usize,
    coefficient: &mut dyn FnMut() -> Result<u32>,
) -> Result<Vec<Zeroizing<Vec<u8>>>> {
    if m < 2 || m > n || n > MAX_SHARES {
        return Err(super::Error::Internal(format!(
            "cannot split into {n} shares with a quorum of {m}"
        )));
    }
    let mut shares: Vec<Zeroizing<Vec<u8>>> = (0..n)
        .map(|_| Zeroizing::new(Vec::with_capacity(2 * secret.len())))
        .collect();
    let mut coefficients = Zeroizing::new(vec![0u32; m]);
    for &byte in secret {
        coefficients[0] = u32::from(byte);
        for c in coefficients[1..].iter_mut() {
            *c = coefficient()?;
        }
        for (i, share) in shares.iter_mut().enumerate() {
            let x = (i + 1) as u32;
            // Horner's rule, highest coefficient first.
            let y = coefficients
                .iter()
                .rev()
                .fold(0, |acc, c| (acc * x + c) % P);
            let word = ((x << 9) | y) as u16;
            share.extend_from_slice(&word.to_le_bytes());
        }
    }
    Ok(shares)
}

/// Decodes one share. The error says what is wrong with it.
pub(super) fn decode(bytes: &[u8]) -> std::result::Result<Share, String> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(2) {
        return Err(format!(
            "a share is whole 16-bit words; this one is {} bytes",
            bytes.len()
        ));
    }
    let mut x = None;
    let mut ys = Zeroizing::new(Vec::with_capacity(bytes.len() / 2));
    for pair in bytes.chunks_exact(2) {
        let word = u16::from_le_bytes([pair[0], pair[1]]);
        let (wx, y) = (word >> 9, word & 0x1ff);
        if wx == 0 || x.is_some_and(|x| x != wx) {
            return Err("its points do not all have the same non-zero x".into());
        }
        // A y out of the field is a damaged share; the check reads a secret value, but only
        // to refuse it.
        if u32::from(y) >= P {
            return Err("a point's y is outside GF(257)".into());
        }
        x = Some(wx);
        ys.push(y);
    }
    Ok(Share {
        x: x.unwrap_or_default(),
        ys,
    })
}

/// a^(p-2) = a^-1 in GF(257), for a != 0.
fn inverse(a: u32) -> u32 {
    let mut result = 1;
    let mut base = a % P;
    let mut e = P - 2;
    while e > 0 {
        if e & 1 == 1 {
            result = result * base % P;
        }
        base = base * base % P;
        e >>= 1;
    }
    result
}

/// Lagrange interpolation at 0 of each byte position. The shares must have distinct x and
/// equal lengths; a result outside 0..=255 means the shares do not belong together.
pub(super) fn combine(shares: &[Share]) -> std::result::Result<Zeroizing<Vec<u8>>, String> {
    let Some(first) = shares.first() else {
        return Err("no shares to combine".into());
    };
    let len = first.ys.len();
    if shares.iter().any(|s| s.ys.len() != len) {
        return Err("the shares have different lengths".into());
    }
    for (i, a) in shares.iter().enumerate() {
        if shares[..i].iter().any(|b| b.x == a.x) {
            return Err(format!("two shares have the same x ({})", a.x));
        }
    }
    // The Lagrange basis at 0 depends on the (public) x values only.
    let basis: Vec<u32> = shares
        .iter()
        .map(|si| {
            let xi = u32::from(si.x);
            shares.iter().filter(|sk| sk.x != si.x).fold(1, |acc, sk| {
                let xk = u32::from(sk.x);
                acc * xk % P * inverse((xk + P - xi) % P) % P
            })
        })
        .collect();
    let mut secret = Zeroizing::new(Vec::with_capacity(len));
    let mut out_of_range = 0u32;
    for j in 0..len {
        let s = shares
            .iter()
            .zip(&basis)
            .fold(0, |acc, (share, l)| (acc + u32::from(share.ys[j]) * l) % P);
        out_of_range |= s >> 8;
        secret.push(s as u8);
    }
    if out_of_range != 0 {
        return Err("the shares do not fit together (they come from different files)".into());
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(shares: &[Zeroizing<Vec<u8>>], pick: &[usize]) -> Vec<Share> {
        pick.iter()
            .map(|&i| decode(&shares[i]).expect("decodes"))
            .collect()
    }

    /// Every subset of 0..n as a list of indices.
    fn subsets(n: usize) -> impl Iterator<Item = Vec<usize>> {
        (0u32..1 << n).map(move |mask| (0..n).filter(|i| mask & (1 << i) != 0).collect())
    }

    #[test]
    fn any_quorum_recombines_and_fewer_shares_do_not() {
        let mut saw_256 = 0;
        for round in 0..300 {
            let n = 3 + round % 8;
            let m = 2 + round % (n - 1);
            let secret = random(32).expect("random");
            let shares = split(&secret, n, m).expect("split");
            assert_eq!(shares.len(), n);
            for (i, share) in shares.iter().enumerate() {
                assert_eq!(share.len(), 64);
                let s = decode(share).expect("decodes");
                assert_eq!(usize::from(s.x), i + 1);
                saw_256 += s.ys.iter().filter(|&&y| y == 256).count();
            }
            // Every subset for small n, about 128 spread over all of them for larger n.
            let stride = 1 + (1 << n) / 128;
            for pick in subsets(n).step_by(stride).filter(|p| p.len() >= m - 1) {
                let result = combine(&decoded(&shares, &pick));
                if pick.len() >= m {
                    assert_eq!(
                        &result.expect("a quorum combines")[..],
                        &secret[..],
                        "n={n} m={m} {pick:?}"
                    );
                } else if let Ok(wrong) = result {
                    assert_ne!(&wrong[..], &secret[..], "n={n} m={m} {pick:?}");
                }
            }
        }
        // Each point is 256 with probability 1/257: tens of thousands of points show it.
        assert!(saw_256 > 0, "no y = 256 was ever produced");
    }

    #[test]
    fn y_256_is_encoded_in_nine_bits_and_recombines() {
        // f(x) = 255 + 1·x: share 1 has y = 256, which an 8-bit shift (az's to_uint16) would
        // corrupt.
        let shares = split_with(&[255], 3, 2, &mut || Ok(1)).expect("split");
        assert_eq!(&shares[0][..], &((1u16 << 9) | 256).to_le_bytes());
        assert_eq!(&shares[1][..], &(2u16 << 9).to_le_bytes());
        for pick in [[0, 1], [0, 2], [1, 2]] {
            assert_eq!(
                &combine(&decoded(&shares, &pick)).expect("combine")[..],
                &[255]
            );
        }
        // The top coefficient may be 256 too.
        let shares = split_with(&[0, 7, 255], 5, 3, &mut || Ok(256)).expect("split");
        assert_eq!(
            &combine(&decoded(&shares, &[4, 0, 2])).expect("combine")[..],
            &[0, 7, 255]
        );
    }

    #[test]
    fn coefficients_are_fresh_for_every_byte() {
        // Equal secret bytes must not give equal points (az's splitter reuses coefficients).
        let shares = split(&[0x42; 32], 3, 2).expect("split");
        let s = decode(&shares[0]).expect("decodes");
        let distinct: std::collections::BTreeSet<u16> = s.ys.iter().copied().collect();
        assert!(distinct.len() > 10, "{distinct:?}");
    }

    #[test]
    fn damaged_shares_are_refused() {
        assert!(decode(&[]).is_err());
        assert!(decode(&[1, 2, 3]).is_err());
        assert!(decode(&[0, 0]).is_err(), "x = 0 is the secret itself");
        let mixed = [(1u16 << 9) | 5, (2u16 << 9) | 5];
        let bytes: Vec<u8> = mixed.iter().flat_map(|w| w.to_le_bytes()).collect();
        assert!(decode(&bytes).is_err(), "one share, two x");
        assert!(decode(&((1u16 << 9) | 257).to_le_bytes()).is_err());
        let shares = split(&[1, 2], 3, 2).expect("split");
        let twice = decoded(&shares, &[1, 1]);
        assert!(
            combine(&twice)
                .expect_err("the same share twice")
                .contains("same x")
        );
        let short = split(&[1], 3, 2).expect("split");
        let mixed = vec![
            decode(&shares[0]).expect("decodes"),
            decode(&short[1]).expect("decodes"),
        ];
        assert!(combine(&mixed).is_err());
        assert!(combine(&[]).is_err());
        assert!(split(&[1], 3, 4).is_err());
        assert!(split(&[1], 3, 1).is_err());
        assert!(split(&[1], 127, 2).is_err());
    }

    #[test]
    fn inverses_hold_in_the_whole_field() {
        for a in 1..P {
            assert_eq!(a * inverse(a) % P, 1, "{a}");
        }
    }
}
