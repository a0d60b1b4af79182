//! Secrets and signatures through the runtime's WebCrypto: random tokens, HMAC verification of
//! access tokens, and the Ed25519 key that signs webhook deliveries. Using WebCrypto keeps
//! signature libraries out of the wasm.

use js_sys::{Array, Object, Reflect, Uint8Array};
use serde::{Deserialize, Serialize};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use worker::Result;

fn js_err(context: &str, e: JsValue) -> worker::Error {
    worker::Error::RustError(format!("{context}: {e:?}"))
}

fn crypto() -> Result<Object> {
    Reflect::get(&js_sys::global(), &"crypto".into())
        .map_err(|e| js_err("crypto", e))?
        .dyn_into::<Object>()
        .map_err(|e| js_err("crypto", e))
}

fn subtle() -> Result<Object> {
    let crypto: JsValue = crypto()?.into();
    Reflect::get(&crypto, &"subtle".into())
        .map_err(|e| js_err("crypto.subtle", e))?
        .dyn_into::<Object>()
        .map_err(|e| js_err("crypto.subtle", e))
}

/// Calls `target[method](...args)` and awaits the promise it returns.
async fn call_async(target: &Object, method: &str, args: &[JsValue]) -> Result<JsValue> {
    let f = Reflect::get(target, &method.into())
        .map_err(|e| js_err(method, e))?
        .dyn_into::<js_sys::Function>()
        .map_err(|e| js_err(method, e))?;
    let args: Array = args.iter().collect();
    let promise = f
        .apply(target, &args)
        .map_err(|e| js_err(method, e))?
        .dyn_into::<js_sys::Promise>()
        .map_err(|e| js_err(method, e))?;
    JsFuture::from(promise).await.map_err(|e| js_err(method, e))
}

/// `n` cryptographically random bytes.
pub fn random_bytes(n: usize) -> Result<Vec<u8>> {
    let buffer = Uint8Array::new_with_length(n as u32);
    let crypto: JsValue = crypto()?.into();
    let f = Reflect::get(&crypto, &"getRandomValues".into())
        .map_err(|e| js_err("getRandomValues", e))?
        .dyn_into::<js_sys::Function>()
        .map_err(|e| js_err("getRandomValues", e))?;
    f.call1(&crypto, &buffer)
        .map_err(|e| js_err("getRandomValues", e))?;
    Ok(buffer.to_vec())
}

/// A random token: `bytes` random bytes, unpadded base64url.
pub fn random_token(bytes: usize) -> Result<String> {
    Ok(base64url(&random_bytes(bytes)?))
}

/// Unpadded base64url.
pub fn base64url(bytes: &[u8]) -> String {
    edgestream::base64::encode(bytes)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

fn ed25519() -> Result<Object> {
    let algorithm = Object::new();
    Reflect::set(&algorithm, &"name".into(), &"Ed25519".into())
        .map_err(|e| js_err("algorithm", e))?;
    Ok(algorithm)
}

fn usages(names: &[&str]) -> JsValue {
    names
        .iter()
        .map(|n| JsValue::from_str(n))
        .collect::<Array>()
        .into()
}

/// An HMAC-SHA256 key imported into WebCrypto once, to sign and verify with for as long as
/// the isolate keeps it: importing the secret again for each token cost every request a
/// WebCrypto call of its own.
#[derive(Clone)]
pub struct HmacKey {
    /// The algorithm as WebCrypto names it (`{name: "HMAC", hash: "SHA-256"}`).
    algorithm: Object,
    /// The imported `CryptoKey`.
    key: JsValue,
}

impl HmacKey {
    /// `secret` imported as an HMAC-SHA256 key for signing and verifying.
    pub async fn import(secret: &[u8]) -> Result<HmacKey> {
        let algorithm = Object::new();
        Reflect::set(&algorithm, &"name".into(), &"HMAC".into()).map_err(|e| js_err("hmac", e))?;
        Reflect::set(&algorithm, &"hash".into(), &"SHA-256".into())
            .map_err(|e| js_err("hmac", e))?;
        let key = call_async(
            &subtle()?,
            "importKey",
            &[
                "raw".into(),
                Uint8Array::from(secret).into(),
                algorithm.clone().into(),
                JsValue::FALSE,
                usages(&["sign", "verify"]),
            ],
        )
        .await?;
        Ok(HmacKey { algorithm, key })
    }

    /// The HMAC-SHA256 of `message`.
    pub async fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        let mac = call_async(
            &subtle()?,
            "sign",
            &[
                self.algorithm.clone().into(),
                self.key.clone(),
                Uint8Array::from(message).into(),
            ],
        )
        .await?;
        Ok(Uint8Array::new(&mac).to_vec())
    }

    /// Whether `signature` is the HMAC-SHA256 of `message` (constant time, by WebCrypto's
    /// `verify`).
    pub async fn verify(&self, message: &[u8], signature: &[u8]) -> Result<bool> {
        let valid = call_async(
            &subtle()?,
            "verify",
            &[
                self.algorithm.clone().into(),
                self.key.clone(),
                Uint8Array::from(signature).into(),
                Uint8Array::from(message).into(),
            ],
        )
        .await?;
        Ok(valid.as_bool() == Some(true))
    }
}

/// A webhook signing key as it is stored: the private JWK's `d` and `x`, and its `kid`. Its
/// `Debug` leaves `d` out, so that no log or panic message can carry the private key.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SigningKey {
    pub kid: String,
    /// Public key, base64url.
    pub x: String,
    /// Private key, base64url.
    pub d: String,
}

impl core::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("x", &self.x)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh Ed25519 key; its `kid` is derived from the public key (a JWK thumbprint).
    pub async fn generate() -> Result<SigningKey> {
        let pair = call_async(
            &subtle()?,
            "generateKey",
            &[
                ed25519()?.into(),
                JsValue::TRUE,
                usages(&["sign", "verify"]),
            ],
        )
        .await?;
        let private =
            Reflect::get(&pair, &"privateKey".into()).map_err(|e| js_err("generateKey", e))?;
        let jwk = call_async(&subtle()?, "exportKey", &["jwk".into(), private]).await?;
        let field = |name: &str| -> Result<String> {
            Reflect::get(&jwk, &name.into())
                .ok()
                .and_then(|v| v.as_string())
                .ok_or_else(|| worker::Error::RustError(format!("exported key lacks {name}")))
        };
        let x = field("x")?;
        let d = field("d")?;
        // RFC 7638 thumbprint: SHA-256 over the required members in lexicographic order.
        let thumbprint_input = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
        let digest = call_async(
            &subtle()?,
            "digest",
            &[
                "SHA-256".into(),
                Uint8Array::from(thumbprint_input.as_bytes()).into(),
            ],
        )
        .await?;
        let digest = Uint8Array::new(&digest).to_vec();
        let kid = format!("ds_{}", &base64url(&digest)[..22]);
        Ok(SigningKey { kid, x, d })
    }

    /// The public JWK, as the JWKS endpoint lists it.
    pub fn public_jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "kid": self.kid,
            "use": "sig",
            "alg": "EdDSA",
            "x": self.x,
        })
    }

    /// Signs `message`; the signature is unpadded base64url.
    pub async fn sign(&self, message: &[u8]) -> Result<String> {
        let jwk = Object::new();
        for (k, v) in [
            ("kty", "OKP"),
            ("crv", "Ed25519"),
            ("x", &self.x),
            ("d", &self.d),
        ] {
            Reflect::set(&jwk, &k.into(), &v.into()).map_err(|e| js_err("jwk", e))?;
        }
        let key = call_async(
            &subtle()?,
            "importKey",
            &[
                "jwk".into(),
                jwk.into(),
                ed25519()?.into(),
                JsValue::FALSE,
                usages(&["sign"]),
            ],
        )
        .await?;
        let signature = call_async(
            &subtle()?,
            "sign",
            &[ed25519()?.into(), key, Uint8Array::from(message).into()],
        )
        .await?;
        Ok(base64url(&Uint8Array::new(&signature).to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::base64url;

    #[test]
    fn base64url_is_unpadded_and_url_safe() {
        assert_eq!(base64url(b""), "");
        assert_eq!(base64url(b"f"), "Zg");
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
        assert_eq!(base64url(&[0xfb, 0xff, 0xfe]), "-__-");
    }

    #[test]
    fn a_signing_key_debugs_without_its_private_half() {
        let key = super::SigningKey {
            kid: "ds_kid".into(),
            x: "public-x".into(),
            d: "private-d".into(),
        };
        let shown = format!("{key:?}");
        assert!(
            shown.contains("ds_kid") && shown.contains("public-x"),
            "{shown}"
        );
        assert!(!shown.contains("private-d"), "{shown}");
    }
}
