//! PyO3 glue: the `authsvc._otp_core` extension module. Argument conversion and error mapping
//! only; all logic lives in the plain Rust modules.
//!
//! - Every `OtpError` becomes a Python exception here, in one `From` impl: input errors raise
//!   `authsvc.errors.OtpInputError` (a `ValueError`), an OS entropy failure raises
//!   `authsvc.errors.OtpEntropyError` (an `OSError`). The classes are imported from
//!   `authsvc/errors.py`, not defined here, so Python code catches the classes it knows.
//! - Integers are taken strictly: `bool` is refused (TypeError) although it subclasses `int`,
//!   and integers too large for the Rust type raise `OtpInputError`, not `OverflowError`.
//! - The GIL is released only for large batches (`generate_codes`, `check_many`): detaching
//!   and re-attaching costs more than an HMAC or a six-digit compare.
//! - PyO3 turns a Rust panic into a `PanicException` rather than aborting; the core is written
//!   not to panic at all (no `unwrap` on input-dependent paths).

use pyo3::exceptions::{PyOverflowError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyList, PyString};

use crate::codes;
use crate::ct;
use crate::error::OtpError;
use crate::gcra;
use crate::hotp::{self as otp, Algorithm, TotpParams};
use crate::tokens;

pyo3::import_exception!(authsvc.errors, OtpInputError);
pyo3::import_exception!(authsvc.errors, OtpEntropyError);

impl From<OtpError> for PyErr {
    fn from(e: OtpError) -> PyErr {
        match e {
            OtpError::Entropy(_) => OtpEntropyError::new_err(e.to_string()),
            _ => OtpInputError::new_err(e.to_string()),
        }
    }
}

/// Batches at least this large run with the GIL released.
const DETACH_CODES: i64 = 4096;
const DETACH_KEYS: usize = 1024;

/// An `int` argument that is not a `bool` and fits in `i64`.
struct Int(i64);

impl<'a, 'py> FromPyObject<'a, 'py> for Int {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        if obj.is_instance_of::<PyBool>() {
            return Err(PyTypeError::new_err("expected int, got bool"));
        }
        match obj.extract::<i64>() {
            Ok(v) => Ok(Int(v)),
            Err(e) if e.is_instance_of::<PyOverflowError>(obj.py()) => Err(OtpInputError::new_err(
                format!("integer out of range: {}", &*obj),
            )),
            Err(e) => Err(e),
        }
    }
}

/// A HOTP counter: an `int` (not `bool`) in `0 .. 2**64`.
struct Counter(u64);

impl<'a, 'py> FromPyObject<'a, 'py> for Counter {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        if obj.is_instance_of::<PyBool>() {
            return Err(PyTypeError::new_err("expected int, got bool"));
        }
        // i128 covers every u64 and every negative value worth naming in a message.
        match obj.extract::<i128>() {
            Ok(v) => Ok(Counter(otp::counter_from_i128(v)?)),
            Err(e) if e.is_instance_of::<PyOverflowError>(obj.py()) => {
                Err(OtpError::Counter(format!("must be in 0 .. 2**64, got {}", &*obj)).into())
            }
            Err(e) => Err(e),
        }
    }
}

/// A number of seconds: `int` or `float`, not `bool`.
struct Seconds(f64);

impl<'a, 'py> FromPyObject<'a, 'py> for Seconds {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        if obj.is_instance_of::<PyBool>() {
            return Err(PyTypeError::new_err("expected float, got bool"));
        }
        match obj.extract::<f64>() {
            Ok(v) => Ok(Seconds(v)),
            Err(e) if e.is_instance_of::<PyOverflowError>(obj.py()) => Err(OtpInputError::new_err(
                format!("number out of range: {}", &*obj),
            )),
            Err(e) => Err(e),
        }
    }
}

/// A new `str` holding `ascii`, which must be ASCII.
///
/// Creating the compact ASCII object directly and copying the bytes in skips the UTF-8 decoder
/// that `PyString::new` runs; for a batch of short codes that decoder is most of the cost.
fn ascii_str<'py>(py: Python<'py>, ascii: &[u8]) -> PyResult<Bound<'py, PyString>> {
    if !ascii.is_ascii() {
        // Unreachable for codes (digits only); kept so the unsafe block's contract always holds.
        return Err(OtpError::NonAsciiCode.into());
    }
    // SAFETY: PyUnicode_New(len, 127) returns a new compact ASCII string of exactly `len`
    // one-byte characters (or NULL with an exception set, turned into Err by from_owned_ptr_or_err).
    // PyUnicode_DATA points at its `len` bytes, which we fill before the object is shared; the
    // bytes are ASCII as checked above, so the string's invariants hold.
    unsafe {
        let ptr = pyo3::ffi::PyUnicode_New(ascii.len() as pyo3::ffi::Py_ssize_t, 127);
        let obj = Bound::from_owned_ptr_or_err(py, ptr)?;
        std::ptr::copy_nonoverlapping(
            ascii.as_ptr(),
            pyo3::ffi::PyUnicode_DATA(ptr).cast::<u8>(),
            ascii.len(),
        );
        Ok(obj.cast_into_unchecked())
    }
}

/// Builds a `list[str]` from a flat buffer of fixed-width ASCII codes.
///
/// The list is allocated at its final size and filled in place (no intermediate `Vec`).
fn codes_to_list<'py>(py: Python<'py>, flat: &[u8], width: usize) -> PyResult<Bound<'py, PyList>> {
    let n = flat.len() / width.max(1);
    // SAFETY: PyList_New(n) returns a new list of n NULL slots (or NULL with an exception set).
    // Each slot is written exactly once with PyList_SET_ITEM, which steals the new reference
    // from `into_ptr`. If a string allocation fails midway, the list is dropped with some slots
    // still NULL, which list deallocation (Py_XDECREF) handles.
    unsafe {
        let list =
            Bound::from_owned_ptr_or_err(py, pyo3::ffi::PyList_New(n as pyo3::ffi::Py_ssize_t))?
                .cast_into_unchecked::<PyList>();
        for (i, chunk) in flat.chunks_exact(width).enumerate() {
            let s = ascii_str(py, chunk)?;
            pyo3::ffi::PyList_SET_ITEM(list.as_ptr(), i as pyo3::ffi::Py_ssize_t, s.into_ptr());
        }
        Ok(list)
    }
}

/// A uniform random code of `digits` digits from the OS CSPRNG.
#[pyfunction]
#[pyo3(signature = (digits = Int(6)), text_signature = "(digits=6)")]
fn generate_code(digits: Int) -> PyResult<String> {
    Ok(codes::generate_code(digits.0)?)
}

/// `n` uniform random codes of `digits` digits (ChaCha12 seeded from the OS, per call).
#[pyfunction]
#[pyo3(signature = (n, digits = Int(6)), text_signature = "(n, digits=6)")]
fn generate_codes<'py>(py: Python<'py>, n: Int, digits: Int) -> PyResult<Bound<'py, PyList>> {
    let (n, d) = (n.0, digits.0);
    let flat = if n >= DETACH_CODES {
        py.detach(|| codes::generate_codes_flat(n, d))?
    } else {
        codes::generate_codes_flat(n, d)?
    };
    // generate_codes_flat validated d.
    codes_to_list(py, &flat, d as usize)
}

/// RFC 4226 HOTP code of `counter`.
#[pyfunction]
#[pyo3(
    signature = (secret, counter, *, digits = Int(6), algorithm = "sha1"),
    text_signature = "(secret, counter, *, digits=6, algorithm='sha1')"
)]
fn hotp(secret: &[u8], counter: Counter, digits: Int, algorithm: &str) -> PyResult<String> {
    Ok(otp::hotp(
        secret,
        counter.0,
        digits.0,
        Algorithm::parse(algorithm)?,
    )?)
}

/// RFC 6238 TOTP code at Unix time `at`.
#[pyfunction]
#[pyo3(
    signature = (secret, at, *, step = Int(30), digits = Int(6), algorithm = "sha1", t0 = Int(0)),
    text_signature = "(secret, at, *, step=30, digits=6, algorithm='sha1', t0=0)"
)]
fn totp(
    secret: &[u8],
    at: Seconds,
    step: Int,
    digits: Int,
    algorithm: &str,
    t0: Int,
) -> PyResult<String> {
    let algorithm = Algorithm::parse(algorithm)?;
    Ok(otp::totp(secret, at.0, step.0, digits.0, algorithm, t0.0)?)
}

/// The time step `code` matches within `window` steps of `at`, or None (constant time).
#[pyfunction]
#[pyo3(
    signature = (
        secret, code, at, *, window = Int(1), step = Int(30), digits = Int(6),
        algorithm = "sha1", last_used_step = None, t0 = Int(0)
    ),
    text_signature = "(secret, code, at, *, window=1, step=30, digits=6, algorithm='sha1', \
                      last_used_step=None, t0=0)"
)]
#[allow(clippy::too_many_arguments)] // mirrors the Python keyword arguments one to one
fn verify_totp(
    secret: &[u8],
    code: &str,
    at: Seconds,
    window: Int,
    step: Int,
    digits: Int,
    algorithm: &str,
    last_used_step: Option<Int>,
    t0: Int,
) -> PyResult<Option<u64>> {
    let params = TotpParams {
        at: at.0,
        window: window.0,
        step: step.0,
        digits: digits.0,
        algorithm: Algorithm::parse(algorithm)?,
        t0: t0.0,
        last_used_step: last_used_step.map(|s| i128::from(s.0)),
    };
    Ok(otp::verify_totp(secret, code, &params)?)
}

/// `a == b` in constant time.
#[pyfunction]
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    ct::constant_time_eq(a, b)
}

/// `nbytes` random bytes from the OS, URL-safe base64 without padding.
#[pyfunction]
#[pyo3(signature = (nbytes = Int(32)), text_signature = "(nbytes=32)")]
fn random_token(nbytes: Int) -> PyResult<String> {
    Ok(tokens::random_token(nbytes.0)?)
}

/// SHA-256 of the token's UTF-8 bytes.
#[pyfunction]
fn token_digest<'py>(py: Python<'py>, token: &str) -> Bound<'py, PyBytes> {
    PyBytes::new(py, &tokens::token_digest(token))
}

/// Keyed digests of codes: HMAC-SHA-256(key, len(context) || context || code).
#[pyclass(frozen, module = "authsvc._otp_core")]
struct CodeHasher {
    inner: ct::CodeHasher,
}

#[pymethods]
impl CodeHasher {
    #[new]
    fn new(key: &[u8]) -> PyResult<Self> {
        Ok(CodeHasher {
            inner: ct::CodeHasher::new(key)?,
        })
    }

    /// The 32-byte digest of `code` (ASCII) in `context`.
    fn digest<'py>(
        &self,
        py: Python<'py>,
        code: &str,
        context: &[u8],
    ) -> PyResult<Bound<'py, PyBytes>> {
        Ok(PyBytes::new(py, &self.inner.digest(code, context)?))
    }

    /// Whether `digest` is the digest of `code` in `context` (constant-time compare).
    fn verify(&self, code: &str, context: &[u8], digest: &[u8]) -> PyResult<bool> {
        Ok(self.inner.verify(code, context, digest)?)
    }
}

/// The verdict of `RateLimiter.check`.
// No `freelist`: measured, PyO3's (thread-safe) freelist is slower than CPython's allocator.
#[pyclass(frozen, get_all, module = "authsvc._otp_core")]
struct Decision {
    /// Whether the request is allowed (and was recorded).
    allowed: bool,
    /// Seconds until this cost would be allowed: 0 when allowed, inf if cost > burst.
    retry_after: f64,
    /// Unit-cost requests that would still be allowed now.
    remaining: u64,
}

#[pymethods]
impl Decision {
    fn __repr__(&self) -> String {
        let allowed = if self.allowed { "True" } else { "False" };
        format!(
            "Decision(allowed={allowed}, retry_after={:?}, remaining={})",
            self.retry_after, self.remaining
        )
    }
}

impl From<gcra::Decision> for Decision {
    fn from(d: gcra::Decision) -> Self {
        Decision {
            allowed: d.allowed,
            retry_after: d.retry_after,
            remaining: d.remaining,
        }
    }
}

/// GCRA rate limiter: thread-safe (sharded), memory bounded by `max_keys`.
#[pyclass(frozen, module = "authsvc._otp_core")]
struct RateLimiter {
    inner: gcra::RateLimiter,
}

impl RateLimiter {
    fn now_ns(&self, now: Option<Seconds>) -> PyResult<i64> {
        match now {
            Some(s) => Ok(gcra::seconds_to_ns(s.0)?),
            None => Ok(self.inner.monotonic_now()),
        }
    }
}

#[pymethods]
impl RateLimiter {
    #[new]
    #[pyo3(
        signature = (rate_per_s, burst, *, max_keys = Int(1_000_000)),
        text_signature = "(rate_per_s, burst, *, max_keys=1000000)"
    )]
    fn new(rate_per_s: Seconds, burst: Int, max_keys: Int) -> PyResult<Self> {
        Ok(RateLimiter {
            inner: gcra::RateLimiter::new(rate_per_s.0, burst.0, max_keys.0)?,
        })
    }

    /// Checks and, if allowed, records a request of `cost` units for `key`.
    #[pyo3(signature = (key, cost = Int(1), now = None), text_signature = "($self, key, cost=1, now=None)")]
    fn check(&self, key: &str, cost: Int, now: Option<Seconds>) -> PyResult<Decision> {
        let now = self.now_ns(now)?;
        Ok(self.inner.check(key, cost.0, now)?.into())
    }

    /// Unit-cost checks for each key in order, at one `now`.
    #[pyo3(signature = (keys, now = None), text_signature = "($self, keys, now=None)")]
    fn check_many(
        &self,
        py: Python<'_>,
        keys: &Bound<'_, PyAny>,
        now: Option<Seconds>,
    ) -> PyResult<Vec<bool>> {
        let now = self.now_ns(now)?;
        // One pass copies every key into a single buffer (no per-key allocation, no Python
        // references held), so the batch can then run with or without the GIL.
        let mut buf = String::new();
        let mut ends: Vec<usize> = Vec::with_capacity(keys.len().unwrap_or(0));
        let mut push = |item: &Bound<'_, PyAny>| -> PyResult<()> {
            buf.push_str(item.cast::<PyString>()?.to_str()?);
            ends.push(buf.len());
            Ok(())
        };
        if let Ok(list) = keys.cast::<PyList>() {
            // The common case: index the list directly instead of the iterator protocol.
            list.iter().try_for_each(|item| push(&item))?;
        } else {
            for item in keys.try_iter()? {
                push(&item?)?;
            }
        }
        let inner = &self.inner;
        let detach = ends.len() >= DETACH_KEYS;
        let run = move || {
            let mut start = 0;
            let strs: Vec<&str> = ends
                .iter()
                .map(|&end| {
                    let s = &buf[start..end];
                    start = end;
                    s
                })
                .collect();
            inner.check_many(&strs, now)
        };
        // Small batches keep the GIL: releasing and re-taking it costs more than the work.
        if detach {
            Ok(py.detach(run))
        } else {
            Ok(run())
        }
    }

    /// Forgets `key`.
    fn reset(&self, key: &str) {
        self.inner.reset(key);
    }

    /// Number of keys holding state.
    fn len(&self) -> usize {
        self.inner.len()
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }
}

/// Native core of authsvc; import it only through `authsvc.otp`.
#[pymodule]
#[pyo3(name = "_otp_core")]
fn otp_core_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // Resolve the exception classes now: a broken authsvc.errors fails the import cleanly
    // instead of failing later, in the middle of raising an error.
    let errors = m.py().import("authsvc.errors")?;
    errors.getattr("OtpInputError")?;
    errors.getattr("OtpEntropyError")?;

    m.add_function(wrap_pyfunction!(generate_code, m)?)?;
    m.add_function(wrap_pyfunction!(generate_codes, m)?)?;
    m.add_function(wrap_pyfunction!(hotp, m)?)?;
    m.add_function(wrap_pyfunction!(totp, m)?)?;
    m.add_function(wrap_pyfunction!(verify_totp, m)?)?;
    m.add_function(wrap_pyfunction!(constant_time_eq, m)?)?;
    m.add_function(wrap_pyfunction!(random_token, m)?)?;
    m.add_function(wrap_pyfunction!(token_digest, m)?)?;
    m.add_class::<CodeHasher>()?;
    m.add_class::<Decision>()?;
    m.add_class::<RateLimiter>()?;
    Ok(())
}
