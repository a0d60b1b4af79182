//! In a real browser (`wasm-pack test --headless --chrome`), against a running server whose base
//! stream URL is baked in at build time: `EDGESTREAM_TEST_URL=http://127.0.0.1:8787/v1/stream`.
//! `scripts/client.mjs` starts the server and sets it. With `EDGESTREAM_TEST_FAULTS=1` the server
//! is the reference test server and the dropped-connection tests inject real faults.
#![cfg(target_arch = "wasm32")]

use edgestream_client::ops::{append_stream, create_stream};
use edgestream_client::reader::Reader;
use js_sys::{Object, Promise, Reflect, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

fn base() -> String {
    option_env!("EDGESTREAM_TEST_URL")
        .unwrap_or("http://127.0.0.1:8787/v1/stream")
        .to_string()
}

fn unique(name: &str) -> String {
    let n = (js_sys::Math::random() * 1e12) as u64;
    [
        base(),
        "/browser-".into(),
        name.into(),
        "-".into(),
        n.to_string(),
    ]
    .concat()
}

fn obj(pairs: &[(&str, JsValue)]) -> JsValue {
    let o = Object::new();
    for (k, v) in pairs {
        Reflect::set(&o, &JsValue::from_str(k), v).unwrap();
    }
    o.into()
}

fn get(v: &JsValue, k: &str) -> JsValue {
    Reflect::get(v, &JsValue::from_str(k)).unwrap()
}

async fn wait(p: Promise) -> Result<JsValue, JsValue> {
    JsFuture::from(p).await
}

async fn sleep(ms: i32) {
    let p = Promise::new(&mut |resolve, _| {
        let global = js_sys::global();
        let set_timeout: js_sys::Function = get(&global, "setTimeout").unchecked_into();
        set_timeout
            .call2(&JsValue::NULL, &resolve, &JsValue::from(ms))
            .unwrap();
    });
    wait(p).await.unwrap();
}

async fn create(url: &str) {
    let r = wait(create_stream(obj(&[
        ("url", url.into()),
        ("contentType", "text/plain".into()),
    ])))
    .await
    .expect("create");
    assert_eq!(get(&r, "status").as_f64(), Some(201.0));
}

async fn append(url: &str, text: &str) -> String {
    let r = wait(append_stream(obj(&[
        ("url", url.into()),
        ("body", text.into()),
        ("contentType", "text/plain".into()),
    ])))
    .await
    .expect("append");
    get(&r, "offset").as_string().expect("offset")
}

fn text_of(batch: &JsValue) -> String {
    let bytes: Uint8Array = get(batch, "bytes").unchecked_into();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Reads batches until `want` bytes of text arrived (or 10 s pass).
async fn read_text(reader: &Reader, want: usize) -> String {
    let mut got = String::new();
    let started = js_sys::Date::now();
    while got.len() < want {
        assert!(
            js_sys::Date::now() - started < 10_000.0,
            "timed out with {got:?}"
        );
        let batch = wait(reader.next()).await.expect("next");
        assert!(!batch.is_undefined(), "reader ended early with {got:?}");
        got.push_str(&text_of(&batch));
    }
    got
}

/// Follows a stream live: catch-up data first, then data appended while the reader waits.
async fn follow(live: &str) {
    let url = unique(live);
    create(&url).await;
    append(&url, "one,").await;
    let reader = Reader::new(&obj(&[("url", url.as_str().into()), ("live", live.into())])).unwrap();
    assert_eq!(read_text(&reader, 4).await, "one,");
    assert!(reader.up_to_date());
    let writer = url.clone();
    wasm_bindgen_futures::spawn_local(async move {
        sleep(300).await;
        append(&writer, "two,").await;
        append(&writer, "three").await;
    });
    assert_eq!(read_text(&reader, 9).await, "two,three");
    assert_eq!(reader.mode(), if live == "auto" { "sse" } else { live });
    reader.cancel();
    assert!(wait(reader.next()).await.unwrap().is_undefined());
}

#[wasm_bindgen_test]
async fn follows_over_sse() {
    follow("sse").await;
}

#[wasm_bindgen_test]
async fn follows_over_long_poll() {
    follow("long-poll").await;
}

#[wasm_bindgen_test]
async fn auto_follows_over_sse() {
    follow("auto").await;
}

#[wasm_bindgen_test]
async fn follows_over_websocket() {
    // Only where the server speaks `live=ws` (our Worker); the reference server does not.
    if option_env!("EDGESTREAM_TEST_WS") == Some("1") {
        follow("ws").await;
    }
}

#[wasm_bindgen_test]
async fn resumes_from_an_offset_without_gap_or_duplicate() {
    let url = unique("resume");
    create(&url).await;
    append(&url, "a").await;
    append(&url, "b").await;
    let first = Reader::new(&obj(&[
        ("url", url.as_str().into()),
        ("live", "sse".into()),
    ]))
    .unwrap();
    assert_eq!(read_text(&first, 2).await, "ab");
    let offset = first.offset();
    first.cancel(); // the "connection" is gone; only the offset survives
    append(&url, "c").await;
    append(&url, "d").await;
    let second = Reader::new(&obj(&[
        ("url", url.as_str().into()),
        ("offset", offset.as_str().into()),
        ("live", "sse".into()),
    ]))
    .unwrap();
    assert_eq!(read_text(&second, 2).await, "cd");
    second.cancel();
}

async fn inject(url: &str, fault: &[(&str, JsValue)]) {
    let path = url.strip_prefix(&base()).unwrap().to_string();
    let server = base();
    let mut pairs = vec![("path", JsValue::from(path.as_str()))];
    pairs.extend_from_slice(fault);
    let body = js_sys::JSON::stringify(&obj(&pairs)).unwrap();
    let init = obj(&[
        ("method", "POST".into()),
        ("body", body.into()),
        (
            "headers",
            obj(&[("content-type", "application/json".into())]),
        ),
    ]);
    let fetch: js_sys::Function = get(&js_sys::global(), "fetch").unchecked_into();
    let res = fetch
        .call2(
            &JsValue::NULL,
            &[server.as_str(), "/_test/inject-error"].concat().into(),
            &init,
        )
        .unwrap();
    let res = wait(res.unchecked_into()).await.unwrap();
    assert_eq!(get(&res, "status").as_f64(), Some(200.0));
}

#[wasm_bindgen_test]
async fn survives_dropped_connections_and_server_errors() {
    if option_env!("EDGESTREAM_TEST_FAULTS") != Some("1") {
        return; // fault injection is a feature of the reference test server only
    }
    let url = unique("faults");
    create(&url).await;
    append(&url, "x").await;
    inject(
        &url,
        &[("dropConnection", true.into()), ("count", 2.into())],
    )
    .await;
    let reader = Reader::new(&obj(&[
        ("url", url.as_str().into()),
        ("live", "sse".into()),
    ]))
    .unwrap();
    assert_eq!(read_text(&reader, 1).await, "x");
    inject(
        &url,
        &[
            ("status", 503.into()),
            ("retryAfter", 1.into()),
            ("count", 1.into()),
        ],
    )
    .await;
    // The SSE connection is open, so the next request, this append, meets the 503 and is retried
    // after Retry-After; the reader then receives its data exactly once.
    append(&url, "y").await;
    assert_eq!(read_text(&reader, 1).await, "y");
    reader.cancel();
}
