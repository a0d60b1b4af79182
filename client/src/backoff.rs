//! Reconnection policy: exponential backoff with jitter that honours `Retry-After`.

use edgestream::headers;
use wasm_bindgen::JsValue;

use crate::{error, js};

/// How often and how patiently a failed request is retried.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt before the error reaches the caller.
    pub max_retries: u32,
    pub initial_delay_ms: f64,
    pub max_delay_ms: f64,
    pub multiplier: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 5,
            initial_delay_ms: 100.0,
            max_delay_ms: 5_000.0,
            multiplier: 2.0,
        }
    }
}

/// Why retry options were refused; the text names the option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryOptionError {
    MaxRetries,
    InitialDelay,
    MaxDelay,
    Multiplier,
}

impl RetryOptionError {
    pub fn message(self) -> &'static str {
        match self {
            RetryOptionError::MaxRetries => "retry.maxRetries must be an integer >= 0, or Infinity",
            RetryOptionError::InitialDelay => "retry.initialDelayMs must be a number > 0",
            RetryOptionError::MaxDelay => "retry.maxDelayMs must be a number >= initialDelayMs",
            RetryOptionError::Multiplier => "retry.multiplier must be a number >= 1",
        }
    }
}

impl RetryPolicy {
    /// `max_retries` without a limit (`maxRetries: Infinity`).
    pub const FOREVER: u32 = u32::MAX;

    /// Builds a policy from optional fields, filling defaults and checking each value.
    pub fn new(
        max_retries: Option<f64>,
        initial_delay_ms: Option<f64>,
        max_delay_ms: Option<f64>,
        multiplier: Option<f64>,
    ) -> Result<RetryPolicy, RetryOptionError> {
        let d = RetryPolicy::default();
        let max_retries = match max_retries {
            None => d.max_retries,
            Some(f64::INFINITY) => RetryPolicy::FOREVER,
            Some(n) if js::whole_up_to(n, f64::from(u32::MAX)) => n as u32,
            Some(_) => return Err(RetryOptionError::MaxRetries),
        };
        let initial = match initial_delay_ms {
            None => d.initial_delay_ms,
            Some(n) if n > 0.0 && n.is_finite() => n,
            Some(_) => return Err(RetryOptionError::InitialDelay),
        };
        let max = match max_delay_ms {
            None => d.max_delay_ms.max(initial),
            Some(n) if n >= initial && n.is_finite() => n,
            Some(_) => return Err(RetryOptionError::MaxDelay),
        };
        let multiplier = match multiplier {
            None => d.multiplier,
            Some(n) if n >= 1.0 && n.is_finite() => n,
            Some(_) => return Err(RetryOptionError::Multiplier),
        };
        Ok(RetryPolicy {
            max_retries,
            initial_delay_ms: initial,
            max_delay_ms: max,
            multiplier,
        })
    }

    /// Reads `{ maxRetries, initialDelayMs, maxDelayMs, multiplier }` (all optional).
    pub fn from_js(options: &JsValue) -> Result<RetryPolicy, JsValue> {
        if options.is_undefined() || options.is_null() {
            return Ok(RetryPolicy::default());
        }
        let num = |key: &str| -> Result<Option<f64>, JsValue> {
            let v = js::get(options, key);
            if v.is_undefined() || v.is_null() {
                Ok(None)
            } else {
                v.as_f64().map(Some).ok_or_else(|| {
                    error::invalid(&error::msg(&["retry.", key, " must be a number"]))
                })
            }
        };
        RetryPolicy::new(
            num("maxRetries")?,
            num("initialDelayMs")?,
            num("maxDelayMs")?,
            num("multiplier")?,
        )
        .map_err(|e| error::invalid(e.message()))
    }

    /// The wait before retry number `attempt` (1-based): exponential, capped, with "equal
    /// jitter" (half fixed, half random) so that many clients dropped at once do not return in
    /// step. `random` is in [0, 1). A server's `Retry-After` wins when it asks for longer.
    pub fn delay_ms(&self, attempt: u32, random: f64, retry_after_ms: Option<f64>) -> f64 {
        let exp = powi(self.multiplier, attempt.saturating_sub(1).min(64));
        let base = (self.initial_delay_ms * exp).min(self.max_delay_ms);
        let jittered = base / 2.0 + base / 2.0 * random.clamp(0.0, 1.0);
        // The server's wish (Retry-After, or SSE's `retry:`) is capped as a header is.
        match retry_after_ms.map(|ra| ra.min(MAX_RETRY_AFTER_MS)) {
            Some(ra) if ra > jittered => ra,
            _ => jittered,
        }
    }
}

/// `x.powi(n)` without std: the same repeated squaring as compiler-builtins' `__powidf2`, which
/// `f64::powi` calls on wasm, so the same result to the bit.
fn powi(mut x: f64, mut n: u32) -> f64 {
    let mut r = 1.0;
    loop {
        if n & 1 != 0 {
            r *= x;
        }
        n /= 2;
        if n == 0 {
            return r;
        }
        x *= x;
    }
}

/// Statuses worth retrying: the server or something in between was briefly unable to answer.
pub fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 425 | 429 | 500..=599)
}

/// The longest wait a `Retry-After` can impose, so a bad header cannot park a reader for days.
const MAX_RETRY_AFTER_MS: f64 = 5.0 * 60.0 * 1000.0;

/// `Retry-After` as milliseconds: delay-seconds, or an HTTP date relative to `now_ms`.
pub fn retry_after_ms(value: &str, now_ms: f64) -> Option<f64> {
    let value = value.trim();
    let ms = match headers::parse_decimal(value) {
        Some(seconds) => seconds as f64 * 1000.0,
        None => {
            let at = js_sys::Date::parse(value);
            if at.is_nan() {
                return None;
            }
            (at - now_ms).max(0.0)
        }
    };
    Some(ms.min(MAX_RETRY_AFTER_MS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn powi_is_std_powi() {
        for x in [0.5, 1.0, 1.5, 2.0, 3.7, 10.0, 1e10] {
            for n in 0..=64u32 {
                assert_eq!(powi(x, n).to_bits(), x.powi(n as i32).to_bits(), "{x}^{n}");
            }
        }
    }

    #[test]
    fn defaults_and_validation() {
        assert_eq!(
            RetryPolicy::new(None, None, None, None),
            Ok(RetryPolicy::default())
        );
        assert_eq!(
            RetryPolicy::new(Some(-1.0), None, None, None),
            Err(RetryOptionError::MaxRetries)
        );
        assert_eq!(
            RetryPolicy::new(Some(1.5), None, None, None),
            Err(RetryOptionError::MaxRetries)
        );
        assert_eq!(
            RetryPolicy::new(None, Some(0.0), None, None),
            Err(RetryOptionError::InitialDelay)
        );
        assert_eq!(
            RetryPolicy::new(None, Some(-100.0), None, None),
            Err(RetryOptionError::InitialDelay)
        );
        assert_eq!(
            RetryPolicy::new(None, Some(1000.0), Some(500.0), None),
            Err(RetryOptionError::MaxDelay)
        );
        assert_eq!(
            RetryPolicy::new(None, None, None, Some(0.5)),
            Err(RetryOptionError::Multiplier)
        );
        assert_eq!(
            RetryPolicy::new(Some(f64::INFINITY), None, None, None).map(|p| p.max_retries),
            Ok(RetryPolicy::FOREVER)
        );
        assert_eq!(
            RetryPolicy::new(Some(f64::NEG_INFINITY), None, None, None),
            Err(RetryOptionError::MaxRetries)
        );
        // A large initial delay raises the default cap instead of failing.
        let p = RetryPolicy::new(None, Some(10_000.0), None, None).unwrap();
        assert_eq!(p.max_delay_ms, 10_000.0);
    }

    #[test]
    fn delays_grow_cap_and_jitter() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay_ms(1, 0.0, None), 50.0);
        assert_eq!(p.delay_ms(1, 1.0, None), 100.0);
        assert_eq!(p.delay_ms(2, 1.0, None), 200.0);
        assert_eq!(p.delay_ms(3, 0.5, None), 300.0);
        assert_eq!(p.delay_ms(30, 1.0, None), 5_000.0);
        assert_eq!(p.delay_ms(u32::MAX, 1.0, None), 5_000.0);
        // Retry-After wins only when it asks for longer.
        assert_eq!(p.delay_ms(1, 1.0, Some(1_000.0)), 1_000.0);
        assert_eq!(p.delay_ms(30, 1.0, Some(1_000.0)), 5_000.0);
        // An SSE `retry:` of 49 days waits no longer than the longest Retry-After.
        let days = f64::from(u32::MAX);
        assert_eq!(p.delay_ms(1, 1.0, Some(days)), MAX_RETRY_AFTER_MS);
    }

    #[test]
    fn retryable_statuses() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(is_retryable_status(s), "{s}");
        }
        for s in [200, 204, 400, 401, 403, 404, 409, 410, 413] {
            assert!(!is_retryable_status(s), "{s}");
        }
    }

    #[test]
    fn retry_after_seconds() {
        assert_eq!(retry_after_ms("1", 0.0), Some(1_000.0));
        assert_eq!(retry_after_ms(" 3 ", 0.0), Some(3_000.0));
        assert_eq!(retry_after_ms("999999", 0.0), Some(MAX_RETRY_AFTER_MS));
    }
}
