//! otp_core: the native core of authsvc.
//!
//! Plain Rust modules, each with its own tests (`cargo test`, no Python needed):
//! - [`codes`]: uniform random numeric codes (rejection sampling from a CSPRNG);
//! - [`hotp`]: HOTP / TOTP (RFC 4226 / RFC 6238) and windowed, replay-refusing verification;
//! - [`ct`]: constant-time equality and the keyed code hasher;
//! - [`tokens`]: random URL-safe tokens and their digests;
//! - [`gcra`]: a sharded, memory-bounded GCRA rate limiter;
//! - [`error`]: the one error enum.
//!
//! The PyO3 glue lives in `python.rs`, compiled only with the `python` feature.

pub mod codes;
pub mod ct;
pub mod error;
pub mod gcra;
pub mod hotp;
pub mod tokens;

#[cfg(feature = "python")]
mod python;

pub use error::{OtpError, Result};

/// Fewest digits a code may have (RFC 4226 requires at least six).
pub const MIN_DIGITS: i64 = 6;
/// Most digits a code may have (the truncated HMAC value has 31 bits, ten decimal digits).
pub const MAX_DIGITS: i64 = 10;
