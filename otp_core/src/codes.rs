//! Random numeric one-time codes, uniform over all `10^digits` values.
//!
//! A code is drawn by rejection sampling: a uniform `u64` is accepted only below the largest
//! multiple of `10^digits` that fits in 64 bits, so every residue is equally likely (plain
//! `x % 10^digits` would favour small values). The rejection probability is below 2^-30, so the
//! loop almost never runs twice.
//!
//! A single code reads the OS CSPRNG directly (`getrandom`), keeping no state that a `fork()`
//! of the server (see `serve --workers`) could duplicate. A batch seeds a fresh ChaCha12
//! generator (`rand::rngs::StdRng`) from the OS for that call only: much faster per code, and
//! still stateless between calls, so forked workers never share a stream.

use rand::rngs::{StdRng, SysRng};
use rand::{Rng, SeedableRng};

use crate::error::{OtpError, Result};
use crate::{MAX_DIGITS, MIN_DIGITS};

/// Largest batch `generate_codes` accepts (a guard against accidental huge allocations).
pub const MAX_BATCH: usize = 10_000_000;

/// Checks `digits` and returns `10^digits`.
pub fn modulus(digits: i64) -> Result<u64> {
    if !(MIN_DIGITS..=MAX_DIGITS).contains(&digits) {
        return Err(OtpError::Digits(digits));
    }
    Ok(10u64.pow(digits as u32))
}

/// Maps draws from `next` to a uniform value in `0..m` by rejection sampling.
///
/// `next` must return independent uniform `u64`s. Draws at or above `zone` (the largest multiple
/// of `m` not above 2^64 - 1) are rejected; the accepted range holds every residue equally often.
pub fn sample_below<E>(
    m: u64,
    mut next: impl FnMut() -> std::result::Result<u64, E>,
) -> std::result::Result<u64, E> {
    debug_assert!(m > 0);
    let zone = (u64::MAX / m) * m;
    loop {
        let x = next()?;
        if x < zone {
            return Ok(x % m);
        }
    }
}

/// Writes `value` as exactly `out.len()` decimal digits, zero-padded on the left.
pub fn write_padded(mut value: u64, out: &mut [u8]) {
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Formats `value` as a zero-padded code of `digits` digits.
pub fn format_code(value: u64, digits: usize) -> String {
    let mut buf = [0u8; MAX_DIGITS as usize];
    write_padded(value, &mut buf[..digits]);
    // Every byte is an ASCII digit.
    buf[..digits].iter().map(|&b| b as char).collect()
}

/// One uniform code of `digits` digits, straight from the OS CSPRNG.
pub fn generate_code(digits: i64) -> Result<String> {
    let m = modulus(digits)?;
    let value = sample_below(m, getrandom::u64)?;
    Ok(format_code(value, digits as usize))
}

/// Checks a batch size.
pub fn check_batch(n: i64) -> Result<usize> {
    if !(0..=MAX_BATCH as i64).contains(&n) {
        return Err(OtpError::Count {
            what: "n",
            value: n,
            min: 0,
            max: MAX_BATCH as i64,
        });
    }
    Ok(n as usize)
}

/// `n` uniform codes of `digits` digits, concatenated into one ASCII buffer of `n * digits`
/// bytes (the glue slices it into Python strings; one allocation instead of `n`).
pub fn generate_codes_flat(n: i64, digits: i64) -> Result<Vec<u8>> {
    let m = modulus(digits)?;
    let n = check_batch(n)?;
    let d = digits as usize;
    let mut out = vec![0u8; n * d];
    if n == 0 {
        return Ok(out);
    }
    // A fresh ChaCha12 stream per batch, keyed by 32 bytes from the OS.
    let mut rng = StdRng::try_from_rng(&mut SysRng)?;
    // One monomorphised loop per digit count: with the modulus a constant, `% M` and the
    // rejection bound compile to multiplications instead of a 64-bit division per code.
    match digits {
        6 => fill::<6, 1_000_000>(&mut rng, &mut out),
        7 => fill::<7, 10_000_000>(&mut rng, &mut out),
        8 => fill::<8, 100_000_000>(&mut rng, &mut out),
        9 => fill::<9, 1_000_000_000>(&mut rng, &mut out),
        _ => {
            debug_assert_eq!(m, 10_000_000_000);
            fill::<10, 10_000_000_000>(&mut rng, &mut out)
        }
    }
    Ok(out)
}

/// Fills `out` with `D`-digit codes uniform in `0..M` (`M = 10^D`), by rejection sampling.
fn fill<const D: usize, const M: u64>(rng: &mut StdRng, out: &mut [u8]) {
    let zone = (u64::MAX / M) * M;
    for chunk in out.chunks_exact_mut(D) {
        let value = loop {
            let x = rng.next_u64();
            if x < zone {
                break x % M;
            }
        };
        write_padded(value, chunk);
    }
}

/// `n` uniform codes of `digits` digits.
pub fn generate_codes(n: i64, digits: i64) -> Result<Vec<String>> {
    let d = digits.clamp(MIN_DIGITS, MAX_DIGITS) as usize;
    let flat = generate_codes_flat(n, digits)?;
    Ok(flat
        .chunks_exact(d)
        .map(|c| c.iter().map(|&b| b as char).collect())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_are_checked() {
        assert_eq!(generate_code(5), Err(OtpError::Digits(5)));
        assert_eq!(generate_code(11), Err(OtpError::Digits(11)));
        assert!(generate_codes(3, 0).is_err());
        for d in MIN_DIGITS..=MAX_DIGITS {
            let code = generate_code(d).unwrap();
            assert_eq!(code.len(), d as usize);
            assert!(code.bytes().all(|b| b.is_ascii_digit()));
        }
    }

    #[test]
    fn batch_shape() {
        let codes = generate_codes(1000, 8).unwrap();
        assert_eq!(codes.len(), 1000);
        assert!(
            codes
                .iter()
                .all(|c| c.len() == 8 && c.bytes().all(|b| b.is_ascii_digit()))
        );
        assert!(generate_codes(0, 6).unwrap().is_empty());
        assert!(matches!(generate_codes(-1, 6), Err(OtpError::Count { .. })));
        // Not all equal: the generator is not stuck.
        assert!(codes.iter().any(|c| c != &codes[0]));
    }

    #[test]
    fn rejection_discards_the_biased_tail() {
        let m = 1_000_000u64;
        let zone = (u64::MAX / m) * m;
        // Draws in the tail [zone, 2^64) must be skipped, not reduced modulo m.
        let mut draws = vec![u64::MAX, zone, zone + 5, 123_456_789].into_iter();
        let v = sample_below(m, || Ok::<_, ()>(draws.next().unwrap())).unwrap();
        assert_eq!(v, 123_456_789 % m);
        let mut draws = vec![zone - 1].into_iter();
        assert_eq!(
            sample_below(m, || Ok::<_, ()>(draws.next().unwrap())).unwrap(),
            (zone - 1) % m
        );
    }

    #[test]
    fn padding() {
        assert_eq!(format_code(42, 6), "000042");
        assert_eq!(format_code(9_999_999_999, 10), "9999999999");
        assert_eq!(format_code(0, 8), "00000000");
    }
}
