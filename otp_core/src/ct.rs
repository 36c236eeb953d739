//! Constant-time comparison and the keyed code hasher.
//!
//! Lengths are treated as public (a code's length is its digit count; a digest's is fixed);
//! contents are compared with `subtle`, which reads every byte without early exit.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::error::{OtpError, Result};

/// `a == b` without a data-dependent early exit (different lengths compare unequal at once).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// Length in bytes of a [`CodeHasher`] digest.
pub const DIGEST_LEN: usize = 32;

/// Stores codes as keyed digests, so a database leak does not reveal pending codes.
///
/// `digest = HMAC-SHA-256(key, len(context) as u64 big-endian || context || code)`.
/// The length prefix makes the encoding injective: ("ab", "1") and ("a", "b1") differ.
#[derive(Clone)]
pub struct CodeHasher {
    // Keyed once; cloning the keyed state per digest skips the HMAC key schedule.
    mac: Hmac<Sha256>,
}

impl CodeHasher {
    /// A hasher keyed with `key` (must not be empty).
    pub fn new(key: &[u8]) -> Result<Self> {
        if key.is_empty() {
            return Err(OtpError::EmptySecret);
        }
        let mac =
            <Hmac<Sha256> as KeyInit>::new_from_slice(key).map_err(|_| OtpError::EmptySecret)?;
        Ok(CodeHasher { mac })
    }

    /// The keyed digest of `code` in `context` (e.g. a challenge id). `code` must be ASCII.
    pub fn digest(&self, code: &str, context: &[u8]) -> Result<[u8; DIGEST_LEN]> {
        if !code.is_ascii() {
            return Err(OtpError::NonAsciiCode);
        }
        let mut mac = self.mac.clone();
        mac.update(&(context.len() as u64).to_be_bytes());
        mac.update(context);
        mac.update(code.as_bytes());
        Ok(mac.finalize().into_bytes().into())
    }

    /// Whether `digest` is the digest of `code` in `context`, compared in constant time.
    /// A digest of the wrong length is simply not a match.
    pub fn verify(&self, code: &str, context: &[u8], digest: &[u8]) -> Result<bool> {
        let expected = self.digest(code, context)?;
        Ok(constant_time_eq(&expected, digest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eq() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"123456", b"123456"));
        assert!(!constant_time_eq(b"123456", b"123457"));
        assert!(!constant_time_eq(b"123456", b"12345"));
        assert!(!constant_time_eq(b"023456", b"123456"));
    }

    #[test]
    fn hasher() {
        let h = CodeHasher::new(b"server key").unwrap();
        let d = h.digest("123456", b"challenge-1").unwrap();
        assert!(h.verify("123456", b"challenge-1", &d).unwrap());
        assert!(!h.verify("123457", b"challenge-1", &d).unwrap());
        assert!(!h.verify("123456", b"challenge-2", &d).unwrap());
        assert!(!h.verify("123456", b"challenge-1", &d[..31]).unwrap());
        // Injective encoding of (context, code).
        assert_ne!(h.digest("b1", b"a").unwrap(), h.digest("1", b"ab").unwrap());
        // A different key gives a different digest.
        let other = CodeHasher::new(b"other key").unwrap();
        assert!(!other.verify("123456", b"challenge-1", &d).unwrap());
        assert_eq!(h.digest("12345é", b"c"), Err(OtpError::NonAsciiCode));
        assert!(matches!(CodeHasher::new(b""), Err(OtpError::EmptySecret)));
    }

    #[test]
    fn hasher_matches_plain_hmac() {
        // RFC 4231 test case 2 shape: HMAC-SHA-256 of the framed message, computed directly.
        let h = CodeHasher::new(b"Jefe").unwrap();
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(b"Jefe").unwrap();
        mac.update(&[0, 0, 0, 0, 0, 0, 0, 3, b'c', b't', b'x', b'4', b'2']);
        let want: [u8; 32] = mac.finalize().into_bytes().into();
        assert_eq!(h.digest("42", b"ctx").unwrap(), want);
    }
}
