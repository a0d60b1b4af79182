//! Access control at the edge, before any Durable Object is touched.
//!
//! With `AUTH_SECRET` set (`wrangler secret put AUTH_SECRET`), every request needs a token (see
//! [`edgestream::token`]) as `Authorization: Bearer <token>` or `?token=<token>` (EventSource
//! and browser WebSockets cannot set headers). Without a secret, access is open, and the Worker
//! says so once in its log. `AUTH_SECRET_PREVIOUS`, set while the secret is rotated, verifies
//! tokens too and signs nothing.

use std::cell::{OnceCell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};

use edgestream::token::{self, AuthError, Grant, Operation};
use serde::Deserialize;
use worker::{Env, Request, Url};

use crate::crypto::{self, HmacKey};
use crate::http::{header, without_ows};

static WARNED_OPEN: AtomicBool = AtomicBool::new(false);

/// The outcome of checking a request.
pub enum Access {
    /// No secret configured: everything is allowed.
    Open,
    /// A verified token; WebSocket appends consult its expiry later.
    Granted(Grant),
}

impl Access {
    /// Whether this access may do `op` on `path` (root-relative).
    pub fn allows(&self, op: Operation, path: &str) -> Result<(), AuthError> {
        match self {
            Access::Open => Ok(()),
            Access::Granted(grant) => grant.check(op, path, crate::http::now_secs()),
        }
    }

    /// Until when (Unix seconds) this access allows a read: the token's `exp`; `None` when
    /// access is open. A live read ends by it, so reading on needs a valid token again.
    pub fn read_until(&self) -> Option<i64> {
        match self {
            Access::Open => None,
            Access::Granted(grant) => Some(grant.expires_at),
        }
    }
}

/// One secret, and its key once WebCrypto has imported it.
struct Secret {
    text: String,
    key: RefCell<Option<HmacKey>>,
}

impl Secret {
    fn new(text: String) -> Secret {
        Secret {
            text,
            key: RefCell::new(None),
        }
    }

    /// The secret's HMAC key, imported on first use and kept: a secret cannot change while an
    /// isolate lives. Two requests that both find none import it twice; either copy is right.
    async fn key(&self) -> worker::Result<HmacKey> {
        if let Some(key) = self.key.borrow().as_ref() {
            return Ok(key.clone());
        }
        let key = HmacKey::import(self.text.as_bytes()).await?;
        self.key.replace(Some(key.clone()));
        Ok(key)
    }
}

/// The secrets tokens are checked against. `current` (`AUTH_SECRET`) signs what the server
/// issues (wake tokens) and verifies; `previous` (`AUTH_SECRET_PREVIOUS`) only verifies, so
/// that the tokens made with the secret an operator is rotating away from keep working until
/// they expire.
struct Secrets {
    current: Secret,
    previous: Option<Secret>,
}

impl Secrets {
    /// The secrets as `AUTH_SECRET` and `AUTH_SECRET_PREVIOUS` give them (secrets, or vars
    /// locally; empty counts as unset). A previous secret without a current one is taken as the
    /// current one, so that deleting `AUTH_SECRET` mid-rotation neither opens access to everyone
    /// nor refuses the tokens made with the secret that is left; the Worker says so once.
    fn from_env(env: &Env) -> Option<Secrets> {
        let read = |name: &str| {
            env.secret(name)
                .map(|s| s.to_string())
                .or_else(|_| env.var(name).map(|v| v.to_string()))
                .ok()
                .filter(|s| !s.is_empty())
        };
        match (read("AUTH_SECRET"), read("AUTH_SECRET_PREVIOUS")) {
            (Some(current), previous) => Some(Secrets {
                // The same secret twice would only verify a forged token twice.
                previous: previous.filter(|p| *p != current).map(Secret::new),
                current: Secret::new(current),
            }),
            (None, Some(previous)) => {
                worker::console_warn!(
                    "edgestream: AUTH_SECRET_PREVIOUS is set without AUTH_SECRET; using it as AUTH_SECRET (tokens stay required, and the server signs wake tokens with it): set AUTH_SECRET"
                );
                Some(Secrets {
                    current: Secret::new(previous),
                    previous: None,
                })
            }
            (None, None) => None,
        }
    }

    /// Whether `mac` is the HMAC-SHA256 of `message` under the current secret or, failing that,
    /// the previous one: a token made with the current secret costs one verification, as it
    /// did before there was a previous one.
    async fn verify(&self, message: &[u8], mac: &[u8]) -> worker::Result<bool> {
        // Every HMAC-SHA256 is 32 bytes: anything else is refused without a WebCrypto call.
        if mac.len() != 32 {
            return Ok(false);
        }
        if self.current.key().await?.verify(message, mac).await? {
            return Ok(true);
        }
        match &self.previous {
            Some(previous) => previous.key().await?.verify(message, mac).await,
            None => Ok(false),
        }
    }
}

/// The secrets, read once per isolate as [`Config::from_env`](crate::config::Config::from_env)
/// reads the settings: a secret cannot change while an isolate lives, and reading it cost every
/// request several JS calls.
fn secrets(env: &Env) -> Option<Rc<Secrets>> {
    thread_local! {
        static CACHED: OnceCell<Option<Rc<Secrets>>> = const { OnceCell::new() };
    }
    CACHED.with(|cell| {
        cell.get_or_init(|| Secrets::from_env(env).map(Rc::new))
            .clone()
    })
}

/// Whether requests need a token: `AUTH_SECRET` (or `AUTH_SECRET_PREVIOUS`) is set.
pub fn required(env: &Env) -> bool {
    secrets(env).is_some()
}

/// The token a request carries: the bearer header first, then the `token` query parameter.
fn presented(req: &Request, url: &Url) -> Option<String> {
    header(req.headers(), "authorization")
        .and_then(|v| bearer_credentials(&v).map(str::to_string))
        .or_else(|| {
            url.query_pairs()
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v.into_owned())
        })
}

/// The credentials of an `Authorization: Bearer <token>` value. The scheme is a
/// case-insensitive token (RFC 9110 §11.1), so `bearer` and `BEARER` are `Bearer` too, and the
/// spaces after it are not part of the token.
pub fn bearer_credentials(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| without_ows(token))
}

/// What a wake token's MAC covers: the subscription it was issued for and its random part
/// (base64url, so the last `:` ends the id). An access token's MAC covers base64url text alone,
/// which has no `:`, so neither kind of MAC can pass for the other.
fn wake_message(subscription: &str, nonce: &str) -> String {
    format!("edgestream-wake-token:{subscription}:{nonce}")
}

/// The wake token handed out for subscription `subscription` whose random part (what the
/// subscription stores and compares) is `nonce`. With `AUTH_SECRET` set it is
/// `<nonce>.<MAC>`, so that the edge can refuse a token the server never issued before any
/// object is touched ([`wake_token_issued`]); with access open it is the nonce alone.
pub async fn wake_token(env: &Env, subscription: &str, nonce: &str) -> worker::Result<String> {
    let Some(secrets) = secrets(env) else {
        return Ok(nonce.to_string());
    };
    let message = wake_message(subscription, nonce);
    let mac = secrets
        .current
        .key()
        .await?
        .sign(message.as_bytes())
        .await?;
    Ok(format!("{nonce}.{}", crypto::base64url(&mac)))
}

/// The random part of a wake token as a client presents it (see [`wake_token`]).
pub fn wake_nonce(presented: &str) -> &str {
    presented
        .split_once('.')
        .map_or(presented, |(nonce, _)| nonce)
}

/// Whether a wake token presented to a subscription was issued by this server for it, as the
/// edge has checked ([`wake_token_issued`]): with `AUTH_SECRET` set, any token that reaches the
/// subscription with a MAC was. With access open, tokens carry none, and only the subscription
/// can tell its own.
pub fn wake_token_vouched(env: &Env, presented: &str) -> bool {
    secrets(env).is_some() && presented.contains('.')
}

/// Whether the request's bearer token is a wake token this server issued for subscription
/// `subscription`: checked at the edge, so that a forged one reaches no object (each would
/// otherwise start, and store, a subscription object of any id a stranger names). Always true
/// with access open: the subscription compares the token itself either way.
pub async fn wake_token_issued(
    req: &Request,
    env: &Env,
    subscription: &str,
) -> worker::Result<bool> {
    let Some(secrets) = secrets(env) else {
        return Ok(true);
    };
    let Some(presented) = header(req.headers(), "authorization")
        .and_then(|v| bearer_credentials(&v).map(str::to_string))
    else {
        return Ok(false);
    };
    let Ok((nonce, mac)) = token::split(&presented) else {
        return Ok(false);
    };
    let Ok(mac) = token::base64url_decode(mac) else {
        return Ok(false);
    };
    let message = wake_message(subscription, nonce);
    secrets.verify(message.as_bytes(), &mac).await
}

/// Every claim is required: a token without `prefix` is malformed, not one for every stream
/// (that takes `"prefix": ""`, said outright).
/// The latest `exp` a token may name: 9999-12-31T23:59:59Z, in Unix seconds.
const MAX_EXP: i64 = 253_402_300_799;

#[derive(Deserialize)]
struct Claims {
    prefix: String,
    ops: Vec<String>,
    exp: i64,
}

/// Checks that the request may do `op` on `path` (root-relative).
pub async fn authorize(
    req: &Request,
    url: &Url,
    env: &Env,
    op: Operation,
    path: &str,
) -> worker::Result<Result<Access, AuthError>> {
    let access = match authenticate(req, url, env).await? {
        Ok(access) => access,
        Err(e) => return Ok(Err(e)),
    };
    Ok(access.allows(op, path).map(|()| access))
}

/// The request's verified token (or open access), whatever it allows.
pub async fn authenticate(
    req: &Request,
    url: &Url,
    env: &Env,
) -> worker::Result<Result<Access, AuthError>> {
    let Some(secrets) = secrets(env) else {
        if !WARNED_OPEN.swap(true, Ordering::Relaxed) {
            worker::console_warn!(
                "edgestream: AUTH_SECRET is not set, so access is open to everyone (fine for local development)"
            );
        }
        return Ok(Ok(Access::Open));
    };
    let Some(token) = presented(req, url) else {
        return Ok(Err(AuthError::Missing));
    };
    Ok(verify(&secrets, &token).await?.map(Access::Granted))
}

/// Verifies a token's signature and reads its claims.
async fn verify(secrets: &Secrets, token: &str) -> worker::Result<Result<Grant, AuthError>> {
    let (payload, signature) = match token::split(token) {
        Ok(parts) => parts,
        Err(e) => return Ok(Err(e)),
    };
    let Ok(signature) = token::base64url_decode(signature) else {
        return Ok(Err(AuthError::Invalid));
    };
    if !secrets.verify(payload.as_bytes(), &signature).await? {
        return Ok(Err(AuthError::Invalid));
    }
    let Ok(json) = token::base64url_decode(payload) else {
        return Ok(Err(AuthError::Invalid));
    };
    let Ok(claims) = serde_json::from_slice::<Claims>(&json) else {
        return Ok(Err(AuthError::Invalid));
    };
    // `exp` is Unix seconds. One past the year 9999 is refused as malformed: it is almost
    // always milliseconds (`Date.now()`), which would make a token that never expires.
    if claims.exp > MAX_EXP {
        return Ok(Err(AuthError::Invalid));
    }
    let mut ops = Vec::new();
    for name in &claims.ops {
        match Operation::parse(name) {
            Some(op) => ops.push(op),
            None => return Ok(Err(AuthError::Invalid)),
        }
    }
    Ok(Ok(Grant {
        prefix: claims.prefix,
        ops,
        expires_at: claims.exp,
    }))
}
