//! HOTP (RFC 4226) and TOTP (RFC 6238) with SHA-1, SHA-256 and SHA-512.
//!
//! The HMAC key schedule (inner and outer padded states) is computed once per call into a
//! [`KeyedMac`] and cloned for each counter: `verify_totp` checks up to `2 * window + 1` steps
//! with one key setup.

use hmac::digest::block_api::EagerHash;
use hmac::{Hmac, KeyInit, Mac};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

use crate::codes::{modulus, write_padded};
use crate::error::{OtpError, Result};

/// Widest accepted verification window (steps on each side of the current one).
pub const MAX_WINDOW: i64 = 10;

/// Largest absolute Unix time (seconds) accepted for TOTP: far beyond any real clock, small
/// enough that every step computation stays exact in integer arithmetic.
pub const MAX_ABS_TIME: f64 = 9.0e15;

/// The HMAC hash function of an OTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha1,
    Sha256,
    Sha512,
}

impl Algorithm {
    /// Parses "sha1", "sha256" or "sha512" (the names pyotp and otpauth URIs use, lower case).
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "sha1" => Ok(Algorithm::Sha1),
            "sha256" => Ok(Algorithm::Sha256),
            "sha512" => Ok(Algorithm::Sha512),
            other => Err(OtpError::UnknownAlgorithm(other.to_owned())),
        }
    }
}

/// An HMAC keyed with an OTP secret, ready to be cloned for each counter.
#[derive(Clone)]
pub enum KeyedMac {
    Sha1(Hmac<sha1::Sha1>),
    Sha256(Hmac<sha2::Sha256>),
    Sha512(Hmac<sha2::Sha512>),
}

fn keyed<D: EagerHash>(secret: &[u8]) -> Hmac<D> {
    // HMAC accepts keys of any length (long keys are hashed first), so this cannot fail.
    <Hmac<D> as KeyInit>::new_from_slice(secret).unwrap_or_else(|_| unreachable!())
}

/// RFC 4226 section 5.3 dynamic truncation of HMAC(counter) to a 31-bit integer.
fn truncate<D: EagerHash>(mac: &Hmac<D>, counter: u64) -> u32
where
    Hmac<D>: Clone,
{
    let mut mac = mac.clone();
    mac.update(&counter.to_be_bytes());
    let h = mac.finalize().into_bytes();
    let offset = (h[h.len() - 1] & 0x0f) as usize;
    u32::from_be_bytes([h[offset], h[offset + 1], h[offset + 2], h[offset + 3]]) & 0x7fff_ffff
}

impl KeyedMac {
    /// Keys an HMAC with `secret`; an empty secret is refused.
    pub fn new(algorithm: Algorithm, secret: &[u8]) -> Result<Self> {
        if secret.is_empty() {
            return Err(OtpError::EmptySecret);
        }
        Ok(match algorithm {
            Algorithm::Sha1 => KeyedMac::Sha1(keyed(secret)),
            Algorithm::Sha256 => KeyedMac::Sha256(keyed(secret)),
            Algorithm::Sha512 => KeyedMac::Sha512(keyed(secret)),
        })
    }

    /// The 31-bit dynamically truncated value for `counter` (before reduction to digits).
    pub fn truncated(&self, counter: u64) -> u32 {
        match self {
            KeyedMac::Sha1(m) => truncate(m, counter),
            KeyedMac::Sha256(m) => truncate(m, counter),
            KeyedMac::Sha512(m) => truncate(m, counter),
        }
    }

    /// Writes the `out.len()`-digit code for `counter` into `out` (`modulus` = 10^len).
    fn write_code(&self, counter: u64, modulus: u64, out: &mut [u8]) {
        write_padded(u64::from(self.truncated(counter)) % modulus, out);
    }
}

fn to_string(ascii: &[u8]) -> String {
    ascii.iter().map(|&b| b as char).collect()
}

/// Checks a HOTP counter given as a wide integer (Python ints are unbounded).
pub fn counter_from_i128(counter: i128) -> Result<u64> {
    if counter < 0 {
        return Err(OtpError::Counter(format!(
            "must not be negative, got {counter}"
        )));
    }
    u64::try_from(counter)
        .map_err(|_| OtpError::Counter(format!("must be below 2**64, got {counter}")))
}

/// RFC 4226 HOTP value of `counter` as a `digits`-digit string.
pub fn hotp(secret: &[u8], counter: u64, digits: i64, algorithm: Algorithm) -> Result<String> {
    let m = modulus(digits)?;
    let mac = KeyedMac::new(algorithm, secret)?;
    let mut buf = [0u8; crate::MAX_DIGITS as usize];
    let out = &mut buf[..digits as usize];
    mac.write_code(counter, m, out);
    Ok(to_string(out))
}

/// RFC 6238 time step: `floor((at - t0) / step)`.
///
/// `floor((at - t0) / step) == floor((floor(at) - t0) / step)` for integer `t0` and `step`, so
/// the division is done exactly on integers (no float rounding near step boundaries).
pub fn time_step(at: f64, step: i64, t0: i64) -> Result<u64> {
    if step < 1 {
        return Err(OtpError::Step(step));
    }
    if !at.is_finite() {
        return Err(OtpError::Time(format!("must be a finite number, got {at}")));
    }
    if at.abs() > MAX_ABS_TIME {
        return Err(OtpError::Time(format!("is out of range, got {at}")));
    }
    let secs = at.floor() as i128;
    let elapsed = secs - i128::from(t0);
    if elapsed < 0 {
        return Err(OtpError::Time(format!("{at} is before t0 = {t0}")));
    }
    // elapsed < 2^63 + 2^54, so the quotient fits in u64.
    Ok((elapsed / i128::from(step)) as u64)
}

/// RFC 6238 TOTP value at Unix time `at`.
pub fn totp(
    secret: &[u8],
    at: f64,
    step: i64,
    digits: i64,
    algorithm: Algorithm,
    t0: i64,
) -> Result<String> {
    let m = modulus(digits)?;
    let mac = KeyedMac::new(algorithm, secret)?;
    let counter = time_step(at, step, t0)?;
    let mut buf = [0u8; crate::MAX_DIGITS as usize];
    let out = &mut buf[..digits as usize];
    mac.write_code(counter, m, out);
    Ok(to_string(out))
}

/// Parameters of a TOTP verification besides the secret and the code.
#[derive(Debug, Clone, Copy)]
pub struct TotpParams {
    pub at: f64,
    pub window: i64,
    pub step: i64,
    pub digits: i64,
    pub algorithm: Algorithm,
    pub t0: i64,
    /// Steps at or below this one never match (they were already used: replay refusal).
    pub last_used_step: Option<i128>,
}

/// Checks `code` against every step in `[T - window, T + window]` and returns the matched step.
///
/// Every step of the window is computed and compared in constant time, and matches are
/// accumulated with `subtle` selects: the work done and the branches taken do not depend on
/// the code or on which step (if any) matched. Only the final `Option` reveals the outcome.
/// Should two steps both match (a 10^-digits coincidence), the later one is returned, so that
/// storing it as `last_used_step` refuses both.
pub fn verify_totp(secret: &[u8], code: &str, p: &TotpParams) -> Result<Option<u64>> {
    let m = modulus(p.digits)?;
    let mac = KeyedMac::new(p.algorithm, secret)?;
    if !code.is_ascii() {
        return Err(OtpError::NonAsciiCode);
    }
    if !(0..=MAX_WINDOW).contains(&p.window) {
        return Err(OtpError::Window(p.window));
    }
    let current = time_step(p.at, p.step, p.t0)?;
    let given = code.as_bytes();
    let d = p.digits as usize;

    let mut found = Choice::from(0);
    let mut matched: u64 = 0;
    for offset in -p.window..=p.window {
        // Steps before the epoch do not exist; which ones exist depends on the time, not on the
        // code, so skipping them leaks nothing.
        let Ok(step) = u64::try_from(i128::from(current) + i128::from(offset)) else {
            continue;
        };
        let mut buf = [0u8; crate::MAX_DIGITS as usize];
        mac.write_code(step, m, &mut buf[..d]);
        // Lengths are public (digits is a parameter); `ct_eq` compares every byte otherwise.
        let equal = buf[..d].ct_eq(given);
        let fresh = match p.last_used_step {
            Some(last) => Choice::from(u8::from(i128::from(step) > last)),
            None => Choice::from(1),
        };
        let hit = equal & fresh;
        matched = u64::conditional_select(&matched, &step, hit);
        found |= hit;
    }
    Ok(if bool::from(found) {
        Some(matched)
    } else {
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC4226_SECRET: &[u8] = b"12345678901234567890";

    #[test]
    fn rfc4226_appendix_d() {
        // (counter, truncated decimal, HOTP value) from RFC 4226 appendix D.
        let table: [(u64, u32, &str); 10] = [
            (0, 1284755224, "755224"),
            (1, 1094287082, "287082"),
            (2, 137359152, "359152"),
            (3, 1726969429, "969429"),
            (4, 1640338314, "338314"),
            (5, 868254676, "254676"),
            (6, 1918287922, "287922"),
            (7, 82162583, "162583"),
            (8, 673399871, "399871"),
            (9, 645520489, "520489"),
        ];
        let mac = KeyedMac::new(Algorithm::Sha1, RFC4226_SECRET).unwrap();
        for (counter, truncated, code) in table {
            assert_eq!(mac.truncated(counter), truncated, "counter {counter}");
            assert_eq!(
                hotp(RFC4226_SECRET, counter, 6, Algorithm::Sha1).unwrap(),
                code
            );
        }
    }

    const SEED_SHA1: &[u8] = b"12345678901234567890";
    const SEED_SHA256: &[u8] = b"12345678901234567890123456789012";
    const SEED_SHA512: &[u8] = b"1234567890123456789012345678901234567890123456789012345678901234";

    #[test]
    fn rfc6238_appendix_b() {
        // (time, SHA1, SHA256, SHA512) 8-digit values from RFC 6238 appendix B, step 30, T0 0.
        let table: [(f64, &str, &str, &str); 6] = [
            (59.0, "94287082", "46119246", "90693936"),
            (1111111109.0, "07081804", "68084774", "25091201"),
            (1111111111.0, "14050471", "67062674", "99943326"),
            (1234567890.0, "89005924", "91819424", "93441116"),
            (2000000000.0, "69279037", "90698825", "38618901"),
            (20000000000.0, "65353130", "77737706", "47863826"),
        ];
        for (t, sha1, sha256, sha512) in table {
            assert_eq!(
                totp(SEED_SHA1, t, 30, 8, Algorithm::Sha1, 0).unwrap(),
                sha1,
                "{t}"
            );
            assert_eq!(
                totp(SEED_SHA256, t, 30, 8, Algorithm::Sha256, 0).unwrap(),
                sha256,
                "{t}"
            );
            assert_eq!(
                totp(SEED_SHA512, t, 30, 8, Algorithm::Sha512, 0).unwrap(),
                sha512,
                "{t}"
            );
        }
    }

    #[test]
    fn time_steps() {
        assert_eq!(time_step(59.0, 30, 0).unwrap(), 1);
        assert_eq!(time_step(59.999, 30, 0).unwrap(), 1);
        assert_eq!(time_step(60.0, 30, 0).unwrap(), 2);
        assert_eq!(time_step(20000000000.0, 30, 0).unwrap(), 666_666_666);
        assert_eq!(time_step(100.0, 30, 40).unwrap(), 2);
        assert!(matches!(time_step(10.0, 30, 40), Err(OtpError::Time(_))));
        assert!(matches!(time_step(f64::NAN, 30, 0), Err(OtpError::Time(_))));
        assert!(matches!(
            time_step(f64::INFINITY, 30, 0),
            Err(OtpError::Time(_))
        ));
        assert_eq!(time_step(10.0, 0, 0), Err(OtpError::Step(0)));
    }

    #[test]
    fn hotp_rejects_bad_input() {
        assert_eq!(hotp(b"", 0, 6, Algorithm::Sha1), Err(OtpError::EmptySecret));
        assert_eq!(hotp(b"k", 0, 5, Algorithm::Sha1), Err(OtpError::Digits(5)));
        assert!(matches!(
            Algorithm::parse("md5"),
            Err(OtpError::UnknownAlgorithm(_))
        ));
        assert!(matches!(counter_from_i128(-1), Err(OtpError::Counter(_))));
        assert!(matches!(
            counter_from_i128(1 << 64),
            Err(OtpError::Counter(_))
        ));
        assert_eq!(counter_from_i128(u64::MAX as i128).unwrap(), u64::MAX);
        // Ten digits: the whole 31-bit value, zero-padded.
        assert_eq!(
            hotp(RFC4226_SECRET, 0, 10, Algorithm::Sha1).unwrap(),
            "1284755224"
        );
        assert_eq!(
            hotp(RFC4226_SECRET, 7, 10, Algorithm::Sha1).unwrap(),
            "0082162583"
        );
    }

    fn params(at: f64, window: i64, last: Option<i128>) -> TotpParams {
        TotpParams {
            at,
            window,
            step: 30,
            digits: 8,
            algorithm: Algorithm::Sha1,
            t0: 0,
            last_used_step: last,
        }
    }

    #[test]
    fn verify_window_and_replay() {
        // 07081804 is the code of step 37037036 (time 1111111109).
        let step = 1111111109 / 30;
        let p = params(1111111109.0, 1, None);
        assert_eq!(verify_totp(SEED_SHA1, "07081804", &p).unwrap(), Some(step));
        // One step later the previous code is still inside a window of 1 ...
        let p = params(1111111109.0 + 30.0, 1, None);
        assert_eq!(verify_totp(SEED_SHA1, "07081804", &p).unwrap(), Some(step));
        // ... but not inside a window of 0, nor two steps later.
        let p = params(1111111109.0 + 30.0, 0, None);
        assert_eq!(verify_totp(SEED_SHA1, "07081804", &p).unwrap(), None);
        let p = params(1111111109.0 + 60.0, 1, None);
        assert_eq!(verify_totp(SEED_SHA1, "07081804", &p).unwrap(), None);
        // Replay refusal: a step at or below last_used_step never matches.
        let p = params(1111111109.0, 1, Some(i128::from(step)));
        assert_eq!(verify_totp(SEED_SHA1, "07081804", &p).unwrap(), None);
        let p = params(1111111109.0, 1, Some(i128::from(step) - 1));
        assert_eq!(verify_totp(SEED_SHA1, "07081804", &p).unwrap(), Some(step));
        // Wrong code, wrong length.
        let p = params(1111111109.0, 1, None);
        assert_eq!(verify_totp(SEED_SHA1, "07081805", &p).unwrap(), None);
        assert_eq!(verify_totp(SEED_SHA1, "0708180", &p).unwrap(), None);
        assert_eq!(verify_totp(SEED_SHA1, "", &p).unwrap(), None);
        assert_eq!(
            verify_totp(SEED_SHA1, "0708180é", &p),
            Err(OtpError::NonAsciiCode)
        );
        let p = params(1111111109.0, 11, None);
        assert_eq!(
            verify_totp(SEED_SHA1, "07081804", &p),
            Err(OtpError::Window(11))
        );
    }

    #[test]
    fn verify_near_epoch_skips_negative_steps() {
        // At t = 59 (step 1) a window of 3 would reach steps -2 and -1: they are skipped.
        let p = params(59.0, 3, None);
        assert_eq!(verify_totp(SEED_SHA1, "94287082", &p).unwrap(), Some(1));
    }
}
