//! Access tokens: what a token grants, and whether it covers a request.
//!
//! A token is `<payload>.<signature>`, both unpadded base64url. The payload is JSON:
//! `{"prefix": "rooms/", "ops": ["read", "append"], "exp": 1790000000}`; the signature is
//! HMAC-SHA256 over the payload's base64url text with the server's secret. Checking the
//! signature needs a MAC (the Worker uses WebCrypto); this module holds the rules that are pure:
//! splitting a token, which operation a request is, and whether a grant covers a path.

use alloc::vec::Vec;

/// What a request does to a stream, as tokens name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// GET and HEAD, live reads included.
    Read,
    /// POST.
    Append,
    /// PUT.
    Create,
    /// DELETE.
    Delete,
    /// The reserved `__ds` subscription APIs.
    Admin,
}

impl Operation {
    /// The operation of an HTTP method on a stream, if it has one (OPTIONS has none).
    pub fn for_method(method: &str) -> Option<Operation> {
        match method {
            "GET" | "HEAD" => Some(Operation::Read),
            "POST" => Some(Operation::Append),
            "PUT" => Some(Operation::Create),
            "DELETE" => Some(Operation::Delete),
            _ => None,
        }
    }

    /// An operation as a token's claims name it (`read`, ..., `admin`); `None` makes the token invalid.
    pub fn parse(name: &str) -> Option<Operation> {
        match name {
            "read" => Some(Operation::Read),
            "append" => Some(Operation::Append),
            "create" => Some(Operation::Create),
            "delete" => Some(Operation::Delete),
            "admin" => Some(Operation::Admin),
            _ => None,
        }
    }

    /// Its name in a token's claims.
    pub fn name(self) -> &'static str {
        match self {
            Operation::Read => "read",
            Operation::Append => "append",
            Operation::Create => "create",
            Operation::Delete => "delete",
            Operation::Admin => "admin",
        }
    }
}

/// Why a request is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthError {
    /// No token where one is required (401).
    Missing,
    /// Not a token, or the signature does not verify (401).
    Invalid,
    /// Past its expiry (401).
    Expired,
    /// Valid, but for other paths (403).
    OutsidePrefix,
    /// `admin` in a token that does not cover every stream (403): a subscription's patterns
    /// may reach any stream, so the subscription APIs need a token for all of them.
    AdminNeedsEveryStream,
    /// Valid, but not for this operation (403).
    OperationNotAllowed,
}

impl AuthError {
    /// 401 when the token is missing or not good, 403 when it is good but not for this.
    pub fn status(self) -> u16 {
        match self {
            AuthError::Missing | AuthError::Invalid | AuthError::Expired => 401,
            AuthError::OutsidePrefix
            | AuthError::AdminNeedsEveryStream
            | AuthError::OperationNotAllowed => 403,
        }
    }

    /// The refusal's short text body.
    pub fn message(self) -> &'static str {
        match self {
            AuthError::Missing => "an access token is required",
            AuthError::Invalid => "the access token is not valid",
            AuthError::Expired => "the access token has expired",
            AuthError::OutsidePrefix => "the access token does not cover this stream",
            AuthError::AdminNeedsEveryStream => {
                "admin needs a token for every stream (an empty prefix)"
            }
            AuthError::OperationNotAllowed => "the access token does not allow this operation",
        }
    }
}

impl core::fmt::Display for AuthError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.message())
    }
}

#[cfg(feature = "std")]
impl std::error::Error for AuthError {}

/// A token's claims, once its signature has been verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Stream paths it covers: the path itself and everything below it (`""` is every path).
    pub prefix: alloc::string::String,
    /// What it allows there.
    pub ops: Vec<Operation>,
    /// Unix seconds.
    pub expires_at: i64,
}

impl Grant {
    /// Whether this grant allows `op` on `path` (root-relative, e.g. `rooms/lobby`) at `now`
    /// (Unix seconds).
    pub fn check(&self, op: Operation, path: &str, now: i64) -> Result<(), AuthError> {
        if now >= self.expires_at {
            return Err(AuthError::Expired);
        }
        if op == Operation::Admin && !self.prefix.is_empty() {
            return Err(AuthError::AdminNeedsEveryStream);
        }
        if !covers(&self.prefix, path) {
            return Err(AuthError::OutsidePrefix);
        }
        if !self.ops.contains(&op) {
            return Err(AuthError::OperationNotAllowed);
        }
        Ok(())
    }
}

/// Whether `prefix` covers `path`, on segment boundaries: `rooms/a` covers `rooms/a` and
/// `rooms/a/b` but not `rooms/ab`; `rooms/` covers everything under `rooms`.
pub fn covers(prefix: &str, path: &str) -> bool {
    if prefix.is_empty() {
        return true;
    }
    if prefix.ends_with('/') {
        return path.starts_with(prefix);
    }
    path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Splits `<payload>.<signature>`; both parts must be non-empty base64url.
pub fn split(token: &str) -> Result<(&str, &str), AuthError> {
    let (payload, signature) = token.split_once('.').ok_or(AuthError::Invalid)?;
    let is_b64url = |s: &str| !s.is_empty() && is_base64url(s);
    if token.len() > 4096 || !is_b64url(payload) || !is_b64url(signature) {
        return Err(AuthError::Invalid);
    }
    Ok((payload, signature))
}

/// Whether `text` keeps to the base64url alphabet (no padding).
fn is_base64url(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Decodes unpadded base64url, strictly: only its alphabet, so one byte string has one spelling
/// (standard base64's `+`, `/`, padding and line breaks are refused, not decoded).
pub fn base64url_decode(text: &str) -> Result<Vec<u8>, AuthError> {
    if !is_base64url(text) {
        return Err(AuthError::Invalid);
    }
    let mut standard: Vec<u8> = text
        .bytes()
        .map(|b| match b {
            b'-' => b'+',
            b'_' => b'/',
            other => other,
        })
        .collect();
    while !standard.len().is_multiple_of(4) {
        standard.push(b'=');
    }
    crate::base64::decode(&standard).map_err(|_| AuthError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    fn grant(prefix: &str, ops: &[Operation]) -> Grant {
        Grant {
            prefix: prefix.to_string(),
            ops: ops.to_vec(),
            expires_at: 1_000,
        }
    }

    #[test]
    fn methods_map_to_operations() {
        assert_eq!(Operation::for_method("GET"), Some(Operation::Read));
        assert_eq!(Operation::for_method("HEAD"), Some(Operation::Read));
        assert_eq!(Operation::for_method("POST"), Some(Operation::Append));
        assert_eq!(Operation::for_method("PUT"), Some(Operation::Create));
        assert_eq!(Operation::for_method("DELETE"), Some(Operation::Delete));
        assert_eq!(Operation::for_method("OPTIONS"), None);
        for op in [
            Operation::Read,
            Operation::Append,
            Operation::Create,
            Operation::Delete,
            Operation::Admin,
        ] {
            assert_eq!(Operation::parse(op.name()), Some(op));
        }
        assert_eq!(Operation::parse("write"), None);
    }

    #[test]
    fn prefixes_stop_at_segment_boundaries() {
        assert!(covers("", "anything/at/all"));
        assert!(covers("rooms/a", "rooms/a"));
        assert!(covers("rooms/a", "rooms/a/b"));
        assert!(!covers("rooms/a", "rooms/ab"));
        assert!(!covers("rooms/a", "rooms"));
        assert!(covers("rooms/", "rooms/x"));
        assert!(!covers("rooms/", "rooms"));
        assert!(!covers("rooms/", "roomsx/y"));
    }

    #[test]
    fn expiry_then_prefix_then_operation() {
        let g = grant("rooms/", &[Operation::Read]);
        assert_eq!(g.check(Operation::Read, "rooms/a", 999), Ok(()));
        assert_eq!(
            g.check(Operation::Read, "rooms/a", 1_000),
            Err(AuthError::Expired)
        );
        assert_eq!(
            g.check(Operation::Read, "other/a", 10),
            Err(AuthError::OutsidePrefix)
        );
        assert_eq!(
            g.check(Operation::Append, "rooms/a", 10),
            Err(AuthError::OperationNotAllowed)
        );
        assert_eq!(AuthError::Expired.status(), 401);
        assert_eq!(AuthError::OperationNotAllowed.status(), 403);
    }

    #[test]
    fn admin_needs_a_token_for_every_stream() {
        let scoped = grant("rooms", &[Operation::Admin]);
        assert_eq!(
            scoped.check(Operation::Admin, "", 10),
            Err(AuthError::AdminNeedsEveryStream)
        );
        assert_eq!(AuthError::AdminNeedsEveryStream.status(), 403);
        assert_eq!(
            grant("", &[Operation::Admin]).check(Operation::Admin, "", 10),
            Ok(())
        );
    }

    #[test]
    fn token_splitting() {
        assert_eq!(split("abc.def"), Ok(("abc", "def")));
        assert_eq!(split("abc"), Err(AuthError::Invalid));
        assert_eq!(split(".def"), Err(AuthError::Invalid));
        assert_eq!(split("abc."), Err(AuthError::Invalid));
        assert_eq!(split("a+c.def"), Err(AuthError::Invalid));
        assert_eq!(split("a.b.c"), Err(AuthError::Invalid));
    }

    #[test]
    fn base64url_has_one_spelling() {
        // Standard base64's `+`, `/` and padding, and line breaks, are not base64url: the
        // lenient decoder underneath took them, so one signature had many spellings.
        for other in [
            "DD++",
            "DD//",
            "Zg==",
            "Zm9v\n\n\n\n",
            "Zm9v\r\n\r\n",
            "Zg\n\n",
        ] {
            assert_eq!(
                base64url_decode(other),
                Err(AuthError::Invalid),
                "{other:?}"
            );
        }
        assert_eq!(base64url_decode("DD--"), Ok(vec![0x0c, 0x3f, 0xbe]));
        assert_eq!(base64url_decode(""), Ok(vec![]));
    }

    #[test]
    fn base64url_round_trip() {
        assert_eq!(base64url_decode("Zg"), Ok(vec![b'f']));
        assert_eq!(base64url_decode("-_8"), Ok(vec![0xfb, 0xff]));
        assert_eq!(base64url_decode("*"), Err(AuthError::Invalid));
        // One spelling per signature: the unused low bits of the last character are zero.
        assert_eq!(base64url_decode("Zh"), Err(AuthError::Invalid));
        assert_eq!(base64url_decode("-_9"), Err(AuthError::Invalid));
    }

    proptest::proptest! {
        #[test]
        fn covers_never_panics(prefix in "[a-z/]{0,8}", path in "[a-z/]{0,8}") {
            let _ = covers(&prefix, &path);
        }

        #[test]
        fn a_prefix_never_covers_a_sibling(base in "[a-z]{1,6}", extra in "[a-z]{1,3}") {
            let sibling = alloc::format!("{base}{extra}");
            proptest::prop_assert!(!covers(&base, &sibling));
            let child = alloc::format!("{base}/{extra}");
            proptest::prop_assert!(covers(&base, &child));
        }
    }
}
