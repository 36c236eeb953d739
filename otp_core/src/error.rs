//! The one error type of otp_core.
//!
//! Every fallible primitive returns `Result<T, OtpError>`. The PyO3 glue converts it in exactly
//! one place (`python.rs`): input errors become `authsvc.errors.OtpInputError` (a `ValueError`),
//! an entropy failure becomes `authsvc.errors.OtpEntropyError` (an `OSError`).

use std::fmt;

/// Why a primitive refused its arguments (or, for `Entropy`, could not run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OtpError {
    /// `digits` outside `MIN_DIGITS..=MAX_DIGITS`.
    Digits(i64),
    /// An HMAC key (OTP secret or `CodeHasher` key) of zero bytes.
    EmptySecret,
    /// An algorithm name other than sha1, sha256, sha512.
    UnknownAlgorithm(String),
    /// A HOTP counter below zero or above `u64::MAX`.
    Counter(String),
    /// A TOTP time that is not finite, or lies before `t0`, or is out of range.
    Time(String),
    /// A TOTP step below one second.
    Step(i64),
    /// A verification window that is negative or too wide.
    Window(i64),
    /// A code (or other text that must be ASCII) with a non-ASCII character.
    NonAsciiCode,
    /// A batch size or token length out of its range.
    Count {
        what: &'static str,
        value: i64,
        min: i64,
        max: i64,
    },
    /// A limiter request cost below one.
    Cost(i64),
    /// A limiter configuration that makes no sense (rate, burst, max_keys).
    LimiterConfig(String),
    /// A limiter clock value that is not finite or out of range.
    Now(String),
    /// The operating system's random source failed.
    Entropy(String),
}

impl fmt::Display for OtpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OtpError::Digits(d) => write!(
                f,
                "digits must be between {} and {}, got {d}",
                crate::MIN_DIGITS,
                crate::MAX_DIGITS
            ),
            OtpError::EmptySecret => f.write_str("secret must not be empty"),
            OtpError::UnknownAlgorithm(name) => write!(
                f,
                "unknown algorithm {name:?}: expected \"sha1\", \"sha256\" or \"sha512\""
            ),
            OtpError::Counter(msg) => write!(f, "counter {msg}"),
            OtpError::Time(msg) => write!(f, "time {msg}"),
            OtpError::Step(s) => write!(f, "step must be at least 1 second, got {s}"),
            OtpError::Window(w) => write!(
                f,
                "window must be between 0 and {}, got {w}",
                crate::hotp::MAX_WINDOW
            ),
            OtpError::NonAsciiCode => f.write_str("code must contain only ASCII characters"),
            OtpError::Count {
                what,
                value,
                min,
                max,
            } => {
                write!(f, "{what} must be between {min} and {max}, got {value}")
            }
            OtpError::Cost(c) => write!(f, "cost must be at least 1, got {c}"),
            OtpError::LimiterConfig(msg) => f.write_str(msg),
            OtpError::Now(msg) => write!(f, "now {msg}"),
            OtpError::Entropy(msg) => write!(f, "the OS random source failed: {msg}"),
        }
    }
}

impl std::error::Error for OtpError {}

impl From<getrandom::Error> for OtpError {
    fn from(e: getrandom::Error) -> Self {
        OtpError::Entropy(e.to_string())
    }
}

/// Shorthand used across the crate.
pub type Result<T> = std::result::Result<T, OtpError>;
