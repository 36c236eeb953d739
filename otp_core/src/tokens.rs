//! Random bearer tokens (URL-safe base64, no padding) and their SHA-256 digests.
//!
//! The service stores only `token_digest(token)`; the token itself is shown once.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::error::{OtpError, Result};

/// Fewest random bytes a token may carry.
pub const MIN_TOKEN_BYTES: i64 = 1;
/// Most random bytes a token may carry.
pub const MAX_TOKEN_BYTES: i64 = 1024;

/// `nbytes` bytes from the OS CSPRNG, URL-safe base64 without padding.
pub fn random_token(nbytes: i64) -> Result<String> {
    if !(MIN_TOKEN_BYTES..=MAX_TOKEN_BYTES).contains(&nbytes) {
        return Err(OtpError::Count {
            what: "nbytes",
            value: nbytes,
            min: MIN_TOKEN_BYTES,
            max: MAX_TOKEN_BYTES,
        });
    }
    let mut raw = vec![0u8; nbytes as usize];
    getrandom::fill(&mut raw)?;
    Ok(URL_SAFE_NO_PAD.encode(&raw))
}

/// SHA-256 of the token's UTF-8 bytes.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape() {
        let t = random_token(32).unwrap();
        assert_eq!(t.len(), 43);
        assert!(
            t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(URL_SAFE_NO_PAD.decode(&t).unwrap().len(), 32);
        assert_ne!(t, random_token(32).unwrap());
        assert_eq!(random_token(1).unwrap().len(), 2);
        assert!(random_token(0).is_err());
        assert!(random_token(1025).is_err());
    }

    #[test]
    fn digest() {
        // FIPS 180-2 example: SHA-256("abc").
        let want = [
            0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae,
            0x22, 0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61,
            0xf2, 0x00, 0x15, 0xad,
        ];
        assert_eq!(token_digest("abc"), want);
    }
}
