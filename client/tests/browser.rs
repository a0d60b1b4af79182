//! In a real browser (`wasm-pack test --headless --chrome`), against a running server whose base
//! stream URL is baked in at build time: `EDGESTREAM_TEST_URL=http://127.0.0.1:8787/v1/stream`.
//! `scripts/client.mjs` starts the server and sets it. With `EDGESTREAM_TEST_FAULTS=1` the server
//! is the reference test server and the dropped-connection tests inject real faults.
#![cfg(target_arch = "wasm32")]

use edgestream_client::ops::{append_stream, create_stream, delete_stream};
use edgestream_client::reader::Reader;
use js_sys::{Object, Promise, Reflect, Uint8Array};
use wasm_bindgen::prelude::*;
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
        let left = 10_000.0 - (js_sys::Date::now() - started);
        assert!(left > 0.0, "timed out with {got:?}");
        let batch = wait(within(&reader.next(), left, "the next batch"))
            .await
            .unwrap_or_else(|e| panic!("next, with {got:?}: {:?}", get(&e, "message")));
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

/// Creates a JSON stream holding `body` (a JSON array of messages).
async fn create_json(url: &str, body: &str) {
    let r = wait(create_stream(obj(&[
        ("url", url.into()),
        ("contentType", "application/json".into()),
        ("body", body.into()),
    ])))
    .await
    .expect("create");
    assert_eq!(get(&r, "status").as_f64(), Some(201.0));
}

/// The next batch's items, as JSON text.
async fn next_items(reader: &Reader) -> String {
    let batch = wait(within(&reader.next(), 10_000.0, "the next batch"))
        .await
        .unwrap_or_else(|e| panic!("next: {:?}", get(&e, "message")));
    assert!(!batch.is_undefined(), "reader ended early");
    let items = get(&batch, "items");
    js_sys::JSON::stringify(&items).unwrap().into()
}

#[wasm_bindgen_test]
async fn follows_a_json_stream_over_websocket() {
    // Only where the server speaks `live=ws` (our Worker): data messages of a JSON stream,
    // combined with their control fields, then a stream deleted under the reader.
    if option_env!("EDGESTREAM_TEST_WS") != Some("1") {
        return;
    }
    let url = unique("ws-json");
    create_json(&url, r#"[{"a":1}]"#).await;
    let reader = Reader::new(&obj(&[("url", url.as_str().into()), ("live", "ws".into())])).unwrap();
    assert_eq!(next_items(&reader).await, r#"[{"a":1}]"#);
    let writer = url.clone();
    wasm_bindgen_futures::spawn_local(async move {
        sleep(300).await;
        let r = wait(append_stream(obj(&[
            ("url", writer.as_str().into()),
            ("body", r#"[{"b":2},"three"]"#.into()),
            ("contentType", "application/json".into()),
        ])))
        .await;
        assert!(r.is_ok(), "append");
    });
    assert_eq!(next_items(&reader).await, r#"[{"b":2},"three"]"#);
    assert_eq!(reader.mode(), "ws");
    assert!(reader.up_to_date());
    let deleted = wait(delete_stream(obj(&[("url", url.as_str().into())]))).await;
    assert!(deleted.is_ok(), "delete");
    let err = wait(within(&reader.next(), 10_000.0, "the reader's error"))
        .await
        .expect_err("a deleted stream ends the reader with an error");
    assert_eq!(get(&err, "code").as_string().as_deref(), Some("NOT_FOUND"));
}

#[wasm_bindgen_test]
async fn resumes_far_behind_over_one_websocket_paced_by_its_receipts() {
    // A ws reader hidden while 40 MiB are appended resumes on a socket from its offset. Our
    // Worker sends the catch-up a page at a time as the reader's receipts (edgestream.v3)
    // allow, so one socket carries it all; a client without receipts would be closed with 1012
    // after every 16 MiB. No retries are allowed: a failed socket would end the reader.
    if option_env!("EDGESTREAM_TEST_WS") != Some("1") {
        return;
    }
    reset_visibility();
    let url = unique("ws-behind");
    create(&url).await;
    append(&url, "-").await;
    spy_install(&js_sys::Array::new(), JsValue::NULL);
    let reader = reader_for(&url, "ws", &[("retry", obj(&[("maxRetries", 0.into())]))]);
    assert_eq!(read_text(&reader, 1).await, "-");
    // A pending read opens the live socket.
    let pending = reader.next();
    let live = until(5_000.0, || {
        seen_live().last().is_some_and(|e| e.live == "ws" && e.open)
    })
    .await;
    if !live {
        clean_up(&reader);
        panic!("no open WebSocket: {:?}", seen());
    }
    set_visibility("hidden");
    let letters = "abcde";
    for letter in letters.chars() {
        append(&url, &letter.to_string().repeat(8 << 20)).await;
    }
    let before = seen_live().len();
    set_visibility("visible");
    let got = finish_read(&reader, &pending, 10_000.0, 40 << 20).await;
    let sockets = seen_live()[before..]
        .iter()
        .filter(|e| e.live == "ws")
        .count();
    clean_up(&reader);
    assert_eq!(got.len(), 40 << 20);
    for (i, letter) in letters.chars().enumerate() {
        let part = &got[i * (8 << 20)..(i + 1) * (8 << 20)];
        assert!(
            part.chars().all(|c| c == letter),
            "part {i} is not all {letter}"
        );
    }
    assert_eq!(sockets, 1, "{sockets} sockets for 40 MiB");
}

#[wasm_bindgen_test]
async fn a_websocket_reader_that_stops_taking_batches_is_cut_off_and_resumes() {
    // The reader sends receipts (edgestream.v3) as the application takes its batches. One that
    // stops taking them while 24 MiB are appended stops sending receipts, so our Worker closes
    // its socket once it is WS_BACKLOG_BYTES (8 MiB) behind them (1012) instead of queueing the
    // rest. Taking batches again, the reader gets what was queued, reconnects at once from its
    // offset and receives the rest, exactly once; with no retries allowed, a backoff would end
    // it with an error. A reader that keeps taking batches stays on one socket meanwhile.
    if option_env!("EDGESTREAM_TEST_WS") != Some("1") {
        return;
    }
    reset_visibility();
    let slow = unique("ws-stops");
    let steady = unique("ws-steady");
    for url in [&slow, &steady] {
        create(url).await;
        append(url, "-").await;
    }
    spy_install(&js_sys::Array::new(), JsValue::NULL);
    let no_retries = [("retry", obj(&[("maxRetries", 0.into())]))];
    let slow_reader = reader_for(&slow, "ws", &no_retries);
    let steady_reader = reader_for(&steady, "ws", &no_retries);
    assert_eq!(read_text(&slow_reader, 1).await, "-");
    assert_eq!(read_text(&steady_reader, 1).await, "-");
    // A pending read opens each live socket; the slow reader's resolves with the first append.
    let slow_pending = slow_reader.next();
    let steady_pending = steady_reader.next();
    let live = until(5_000.0, || {
        seen_live()
            .iter()
            .filter(|e| e.live == "ws" && e.open)
            .count()
            >= 2
    })
    .await;
    if !live {
        clean_up(&slow_reader);
        clean_up(&steady_reader);
        panic!("no open WebSockets: {:?}", seen());
    }
    let before = seen_live().len();
    let letters = "abcdef";
    let chunk = 4 << 20;
    let mut steady_got = String::new();
    for (i, letter) in letters.chars().enumerate() {
        append(&slow, &letter.to_string().repeat(chunk)).await;
        append(&steady, &letter.to_string().repeat(chunk)).await;
        // The steady reader takes each append whole before the next is made.
        steady_got.push_str(&if i == 0 {
            finish_read(&steady_reader, &steady_pending, 10_000.0, chunk).await
        } else {
            read_text(&steady_reader, chunk).await
        });
    }
    let got = finish_read(&slow_reader, &slow_pending, 10_000.0, letters.len() * chunk).await;
    let sockets = |url: &str| {
        let name = url.rsplit('/').next().unwrap_or(url);
        seen_live()[before..]
            .iter()
            .filter(|e| e.live == "ws" && e.path.ends_with(name))
            .count()
    };
    let (slow_sockets, steady_sockets) = (sockets(&slow), sockets(&steady));
    clean_up(&slow_reader);
    clean_up(&steady_reader);
    for (got, what) in [(&got, "slow"), (&steady_got, "steady")] {
        assert_eq!(got.len(), letters.len() * chunk, "{what}");
        for (i, letter) in letters.chars().enumerate() {
            let part = &got[i * chunk..(i + 1) * chunk];
            assert!(
                part.chars().all(|c| c == letter),
                "{what}: part {i} is not all {letter}"
            );
        }
    }
    assert!(slow_sockets >= 1, "the slow reader was not cut off");
    assert_eq!(steady_sockets, 0, "the steady reader was cut off");
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

// ---------------------------------------------------------------------------------------------
// Hidden pages and short SSE connections.
//
// A spy wraps `globalThis.fetch` (and `WebSocket`) to record every GET the reader sends: its
// `live` and `offset` parameters, and whether it is still open (no response yet, or a body that
// has not ended). It can also cut SSE response bodies short, as a proxy that ends streaming
// responses early would. Page visibility is simulated by overriding `document.visibilityState`
// and dispatching `visibilitychange`, which is what the browser does when a tab is hidden.

#[wasm_bindgen(inline_js = r#"
const spy = { fetch: null, ws: null, log: [], cuts: [], rest: null };

function unspy() {
  if (spy.fetch) globalThis.fetch = spy.fetch;
  if (spy.ws) globalThis.WebSocket = spy.ws;
  spy.fetch = null;
  spy.ws = null;
}

// `res` with its body passed through; `entry.open` turns false when the body ends, fails or is
// cancelled. A number `cutMs` ends the body that long after the headers (0: at once, empty).
function track(res, entry, cutMs) {
  const init = { status: res.status, statusText: res.statusText, headers: res.headers };
  if (cutMs === 0) {
    entry.open = false;
    entry.cut = true;
    res.body.cancel().catch(() => {});
    return new Response('', init);
  }
  const upstream = res.body.getReader();
  let timer = null;
  const end = () => {
    entry.open = false;
    entry.end = Math.round(performance.now());
    if (timer !== null) clearTimeout(timer);
  };
  const body = new ReadableStream({
    start(controller) {
      if (cutMs === null) return;
      timer = setTimeout(() => {
        entry.cut = true;
        end();
        upstream.cancel().catch(() => {});
        try { controller.close(); } catch {}
      }, cutMs);
    },
    async pull(controller) {
      let chunk;
      try {
        chunk = await upstream.read();
      } catch (e) {
        end();
        if (!entry.cut) try { controller.error(e); } catch {}
        return;
      }
      if (entry.cut) return;
      try {
        if (chunk.done) {
          end();
          controller.close();
        } else controller.enqueue(chunk.value);
      } catch {}
    },
    cancel(reason) {
      end();
      return upstream.cancel(reason);
    },
  });
  return new Response(body, init);
}

export function spy_install(cuts, rest) {
  unspy();
  spy.log = [];
  spy.cuts = Array.from(cuts);
  spy.rest = typeof rest === 'number' ? rest : null;
  const fetch = globalThis.fetch;
  spy.fetch = fetch;
  globalThis.fetch = async (input, init) => {
    const method = String((init && init.method) || 'GET').toUpperCase();
    if (method !== 'GET') return fetch.call(globalThis, input, init);
    const url = new URL(String(input), location.href);
    const live = url.searchParams.get('live') || '';
    const entry = { live, path: url.pathname, offset: url.searchParams.get('offset') || '', open: true, cut: false, at: Math.round(performance.now()) };
    spy.log.push(entry);
    let res;
    try {
      res = await fetch.call(globalThis, input, init);
    } catch (e) {
      entry.open = false;
      entry.end = Math.round(performance.now());
      entry.status = 0;
      throw e;
    }
    entry.status = res.status;
    // No body to follow (a 204 has an empty one in Chrome, which `new Response` would refuse).
    if (!res.body || [101, 103, 204, 205, 304].includes(res.status)) {
      entry.open = false;
      entry.end = Math.round(performance.now());
      return res;
    }
    const cut = live === 'sse' ? (spy.cuts.length ? spy.cuts.shift() : spy.rest) : null;
    return track(res, entry, typeof cut === 'number' ? cut : null);
  };
  const WS = globalThis.WebSocket;
  if (typeof WS === 'function') {
    spy.ws = WS;
    globalThis.WebSocket = class extends WS {
      constructor(url, protocols) {
        super(url, protocols);
        const u = new URL(String(url));
        const socket = this;
        spy.log.push({
          live: u.searchParams.get('live') || '',
          path: u.pathname,
          offset: u.searchParams.get('offset') || '',
          get open() { return socket.readyState <= 1; },
          cut: false,
          at: Math.round(performance.now()),
        });
      }
    };
  }
}
export function spy_restore() { unspy(); }
export function spy_log() { return spy.log.slice(); }

export function set_visibility(state) {
  Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => state });
  Object.defineProperty(document, 'hidden', { configurable: true, get: () => state === 'hidden' });
  document.dispatchEvent(new Event('visibilitychange'));
}
export function reset_visibility() {
  delete document.visibilityState;
  delete document.hidden;
  document.dispatchEvent(new Event('visibilitychange'));
}
export function visibility() { return document.visibilityState; }

export function observe(promise) {
  const state = { settled: false };
  promise.then(() => { state.settled = true; }, () => { state.settled = true; });
  return state;
}
export function within(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error('timed out after ' + Math.round(ms) + ' ms waiting for ' + what)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
"#)]
extern "C" {
    fn spy_install(cuts: &js_sys::Array, rest: JsValue);
    fn spy_restore();
    fn spy_log() -> js_sys::Array;
    fn set_visibility(state: &str);
    fn reset_visibility();
    fn visibility() -> String;
    fn observe(promise: &Promise) -> JsValue;
    fn within(promise: &Promise, ms: f64, what: &str) -> Promise;
}

/// A GET (or WebSocket) the spy saw.
#[derive(Debug)]
struct Seen {
    live: String,
    path: String,
    offset: String,
    open: bool,
    cut: bool,
    /// When it was sent and when it ended (`performance.now()`, ms), and its status: only
    /// printed, in failure messages.
    #[allow(dead_code)]
    at: f64,
    #[allow(dead_code)]
    end: f64,
    #[allow(dead_code)]
    status: f64,
}

fn seen() -> Vec<Seen> {
    spy_log()
        .iter()
        .map(|e| Seen {
            live: get(&e, "live").as_string().unwrap_or_default(),
            path: get(&e, "path").as_string().unwrap_or_default(),
            offset: get(&e, "offset").as_string().unwrap_or_default(),
            open: get(&e, "open").as_bool() == Some(true),
            cut: get(&e, "cut").as_bool() == Some(true),
            at: get(&e, "at").as_f64().unwrap_or_default(),
            end: get(&e, "end").as_f64().unwrap_or_default(),
            status: get(&e, "status").as_f64().unwrap_or_default(),
        })
        .collect()
}

/// Live requests only (catch-up GETs have no `live` parameter).
fn seen_live() -> Vec<Seen> {
    seen().into_iter().filter(|e| !e.live.is_empty()).collect()
}

fn open_requests() -> usize {
    seen().iter().filter(|e| e.open).count()
}

fn settled(state: &JsValue) -> bool {
    get(state, "settled").as_bool() == Some(true)
}

/// Spy off, page visible, reader cancelled: run before asserting, so that a failing test leaves
/// nothing behind for the next one.
fn clean_up(reader: &Reader) {
    reader.cancel();
    spy_restore();
    reset_visibility();
}

/// Waits until `cond` holds, polling every 20 ms; false after `ms`.
async fn until(ms: f64, cond: impl Fn() -> bool) -> bool {
    let started = js_sys::Date::now();
    loop {
        if cond() {
            return true;
        }
        if js_sys::Date::now() - started > ms {
            return false;
        }
        sleep(20).await;
    }
}

/// Awaits the batch `pending` resolves to, failing after `ms`, and reads on until `want` bytes.
async fn finish_read(reader: &Reader, pending: &Promise, ms: f64, want: usize) -> String {
    let batch = wait(within(pending, ms, "the pending batch")).await;
    let batch = match batch {
        Ok(b) if !b.is_undefined() => b,
        other => {
            clean_up(reader);
            panic!("no batch: {:?}", other.map_err(|e| get(&e, "message")));
        }
    };
    let mut got = text_of(&batch);
    if got.len() < want {
        got.push_str(&read_text(reader, want - got.len()).await);
    }
    got
}

fn reader_for(url: &str, live: &str, extra: &[(&str, JsValue)]) -> Reader {
    let mut pairs = vec![("url", JsValue::from(url)), ("live", live.into())];
    pairs.extend_from_slice(extra);
    Reader::new(&obj(&pairs)).unwrap()
}

/// Hides the page while the reader's live request is open, appends while it is hidden, shows it
/// again: nothing is requested or delivered while hidden, then the reader resumes from its offset
/// and receives the appends exactly once, in order.
async fn pauses_while_hidden(live: &str) {
    reset_visibility();
    assert_eq!(visibility(), "visible");
    let url = unique(&["hidden-", live].concat());
    create(&url).await;
    append(&url, "a").await;
    spy_install(&js_sys::Array::new(), JsValue::NULL);
    let reader = reader_for(&url, live, &[]);
    assert_eq!(read_text(&reader, 1).await, "a");
    let offset = reader.offset();
    let pending = reader.next();
    let state = observe(&pending);
    let live_open = until(5_000.0, || {
        seen_live().last().is_some_and(|e| e.live == live && e.open)
    })
    .await;
    if !live_open {
        clean_up(&reader);
        panic!("no open {live} request: {:?}", seen());
    }

    set_visibility("hidden");
    // Aborted at once: well before a long-poll would end by itself (the servers' 500 ms timeout).
    let stopped = until(300.0, || open_requests() == 0).await;
    let before = seen().len();
    append(&url, "b").await;
    append(&url, "c").await;
    // Three long-poll timeouts (the test servers use 500 ms): a reader that kept going would have
    // sent requests and received "bc" by now.
    sleep(1_500).await;
    let hidden_log = seen();
    let hidden_open = open_requests();
    let delivered_while_hidden = settled(&state);
    if !stopped || hidden_log.len() != before || hidden_open != 0 || delivered_while_hidden {
        clean_up(&reader);
        panic!(
            "kept reading while hidden (stopped: {stopped}, delivered: {delivered_while_hidden}, \
             open: {hidden_open}, requests {before} → {}): {hidden_log:?}",
            hidden_log.len()
        );
    }

    set_visibility("visible");
    let got = finish_read(&reader, &pending, 5_000.0, 2).await;
    let log = seen();
    append(&url, "d").await;
    let more = read_text(&reader, 1).await;
    clean_up(&reader);
    assert_eq!(got, "bc");
    assert_eq!(more, "d", "a duplicate or a gap after resuming");
    let resumed = log.get(before).expect("a request after the page was shown");
    assert_eq!(resumed.live, live);
    assert_eq!(
        resumed.offset, offset,
        "resumed from another offset: {log:?}"
    );
}

#[wasm_bindgen_test]
async fn pauses_sse_while_hidden_and_resumes_when_shown() {
    pauses_while_hidden("sse").await;
}

#[wasm_bindgen_test]
async fn pauses_long_poll_while_hidden_and_resumes_when_shown() {
    pauses_while_hidden("long-poll").await;
}

#[wasm_bindgen_test]
async fn pauses_websocket_while_hidden_and_resumes_when_shown() {
    if option_env!("EDGESTREAM_TEST_WS") == Some("1") {
        pauses_while_hidden("ws").await;
    }
}

/// With `pauseWhenHidden: false` a hidden page changes nothing.
async fn keeps_reading_while_hidden(live: &str) {
    reset_visibility();
    let url = unique(&["visible-", live].concat());
    create(&url).await;
    append(&url, "a").await;
    spy_install(&js_sys::Array::new(), JsValue::NULL);
    let reader = reader_for(&url, live, &[("pauseWhenHidden", false.into())]);
    assert_eq!(read_text(&reader, 1).await, "a");
    let pending = reader.next();
    let live_open = until(5_000.0, || {
        seen_live().last().is_some_and(|e| e.live == live && e.open)
    })
    .await;
    set_visibility("hidden");
    let before = seen().len();
    let writer = url.clone();
    wasm_bindgen_futures::spawn_local(async move {
        sleep(300).await;
        append(&writer, "b").await;
        append(&writer, "c").await;
    });
    let got = finish_read(&reader, &pending, 5_000.0, 2).await;
    // Nothing more to read: the reader waits on its live request, for two long-poll timeouts.
    let _idle = reader.next();
    sleep(1_200).await;
    let log = seen();
    let open = open_requests();
    let mode = reader.mode();
    let still_hidden = visibility() == "hidden";
    clean_up(&reader);
    assert!(live_open, "no open {live} request: {log:?}");
    assert!(still_hidden);
    assert_eq!(got, "bc");
    assert_eq!(mode, live);
    assert_eq!(open, 1, "the live request should be open: {log:?}");
    if live == "sse" {
        // The same SSE connection carried everything.
        assert_eq!(log.len(), before, "{log:?}");
    } else {
        assert!(log.len() >= before + 2, "long-polls stopped: {log:?}");
    }
}

#[wasm_bindgen_test]
async fn keeps_following_sse_while_hidden_when_pause_when_hidden_is_false() {
    keeps_reading_while_hidden("sse").await;
}

#[wasm_bindgen_test]
async fn keeps_long_polling_while_hidden_when_pause_when_hidden_is_false() {
    keeps_reading_while_hidden("long-poll").await;
}

/// Catch-up is not live reading: a reader made on a hidden page catches up, then waits for the
/// page to be shown before it sends a live request.
#[wasm_bindgen_test]
async fn reader_made_while_hidden_catches_up_then_waits_until_shown() {
    reset_visibility();
    let url = unique("hidden-start");
    create(&url).await;
    append(&url, "a").await;
    spy_install(&js_sys::Array::new(), JsValue::NULL);
    set_visibility("hidden");
    let reader = reader_for(&url, "sse", &[]);
    let first = read_text(&reader, 1).await;
    let pending = reader.next();
    let state = observe(&pending);
    append(&url, "b").await;
    sleep(1_000).await;
    let live_while_hidden = seen_live().len();
    let delivered_while_hidden = settled(&state);
    set_visibility("visible");
    let got = finish_read(&reader, &pending, 5_000.0, 1).await;
    let live_after = seen_live();
    clean_up(&reader);
    assert_eq!(first, "a");
    assert_eq!(live_while_hidden, 0, "live requests while hidden");
    assert!(!delivered_while_hidden, "delivered while hidden");
    assert_eq!(got, "b");
    assert_eq!(live_after.first().map(|e| e.live.as_str()), Some("sse"));
}

/// `cancel()` on a hidden page ends a pending `next()` at once, without waiting to be shown.
#[wasm_bindgen_test]
async fn cancel_while_hidden_ends_the_pending_read() {
    reset_visibility();
    let url = unique("hidden-cancel");
    create(&url).await;
    append(&url, "a").await;
    let reader = reader_for(&url, "sse", &[]);
    assert_eq!(read_text(&reader, 1).await, "a");
    let pending = reader.next();
    sleep(200).await;
    set_visibility("hidden");
    sleep(100).await;
    reader.cancel();
    let end = wait(within(&pending, 2_000.0, "next() to end after cancel()")).await;
    clean_up(&reader);
    let end = end.unwrap_or_else(|e| panic!("{:?}", get(&e, "message")));
    assert!(end.is_undefined(), "a batch after cancel()");
    assert!(reader.done());
}

/// Every SSE response is cut short by the spy (`cut` ms after its headers). The reader must
/// switch to long-poll after three such connections in a row, resume from its offset, and deliver
/// everything exactly once, in order.
async fn falls_back_to_long_poll(live: &str, cut: f64) {
    let url = unique(&["short-sse-", live].concat());
    create(&url).await;
    append(&url, "a").await;
    spy_install(&js_sys::Array::new(), cut.into());
    let reader = reader_for(&url, live, &[]);
    assert_eq!(read_text(&reader, 1).await, "a");
    let offset = reader.offset();
    let pending = reader.next();
    // Cut at once, SSE delivers nothing: "b" waits for the switch and comes by long-poll.
    // Otherwise it is appended after the switch, so that no connection carries data (one that
    // did would rightly reset the count).
    if cut == 0.0 {
        append(&url, "b").await;
    }
    let switched = until(8_000.0, || reader.mode() == "long-poll").await;
    if !switched {
        let log = seen_live();
        clean_up(&reader);
        panic!(
            "still {} after {} live requests: {log:?}",
            reader.mode(),
            log.len()
        );
    }
    if cut != 0.0 {
        append(&url, "b").await;
    }
    let got = finish_read(&reader, &pending, 5_000.0, 1).await;
    append(&url, "c").await;
    let more = read_text(&reader, 1).await;
    // And it stays on long-poll (the servers answer an empty long-poll after 500 ms).
    let _idle = reader.next();
    sleep(1_200).await;
    let log = seen_live();
    let mode = reader.mode();
    clean_up(&reader);
    assert_eq!(got, "b");
    assert_eq!(more, "c", "a duplicate or a gap after the switch");
    assert_eq!(mode, "long-poll");
    let sse = log.iter().take_while(|e| e.live == "sse").count();
    assert_eq!(sse, 3, "SSE connections before the switch: {log:?}");
    assert!(
        log[..sse].iter().all(|e| e.cut && e.offset == offset),
        "{log:?}"
    );
    assert!(log.len() >= sse + 3, "{log:?}");
    assert!(log[sse..].iter().all(|e| e.live == "long-poll"), "{log:?}");
    assert_eq!(
        log[sse].offset, offset,
        "long-poll started elsewhere: {log:?}"
    );
}

#[wasm_bindgen_test]
async fn auto_falls_back_to_long_poll_after_short_sse_connections() {
    // Each connection ends 150 ms in, after the server's first control event got through.
    falls_back_to_long_poll("auto", 150.0).await;
}

#[wasm_bindgen_test]
async fn sse_falls_back_to_long_poll_when_sse_responses_end_at_once() {
    falls_back_to_long_poll("sse", 0.0).await;
}

/// Short connections only count in a row: two short, one that lasts over a second, two short,
/// then an untouched one. The reader stays on SSE and receives over it.
#[wasm_bindgen_test]
async fn a_long_sse_connection_resets_the_count_of_short_ones() {
    let url = unique("short-sse-reset");
    create(&url).await;
    append(&url, "a").await;
    let cuts = js_sys::Array::new();
    for ms in [150.0, 150.0, 1_300.0, 150.0, 150.0] {
        cuts.push(&JsValue::from(ms));
    }
    spy_install(&cuts, JsValue::NULL);
    let reader = reader_for(&url, "auto", &[]);
    assert_eq!(read_text(&reader, 1).await, "a");
    let pending = reader.next();
    let sixth = until(8_000.0, || {
        let log = seen_live();
        log.len() >= 6 && log[5].open
    })
    .await;
    sleep(300).await;
    append(&url, "b").await;
    let got = finish_read(&reader, &pending, 5_000.0, 1).await;
    let log = seen_live();
    let mode = reader.mode();
    clean_up(&reader);
    assert!(sixth, "{log:?}");
    assert_eq!(got, "b");
    assert_eq!(mode, "sse");
    assert_eq!(log.len(), 6, "{log:?}");
    assert!(log.iter().all(|e| e.live == "sse"), "{log:?}");
}

/// Connections cut short that still carry data are not a broken proxy: the reader stays on SSE
/// and receives every append once, in order.
#[wasm_bindgen_test]
async fn short_sse_connections_that_carry_data_do_not_count() {
    let url = unique("short-sse-data");
    create(&url).await;
    append(&url, "-").await;
    spy_install(&js_sys::Array::new(), 150.0.into());
    let reader = reader_for(&url, "auto", &[]);
    assert_eq!(read_text(&reader, 1).await, "-");
    let writer = url.clone();
    wasm_bindgen_futures::spawn_local(async move {
        for i in 0..10u8 {
            append(&writer, &char::from(b'0' + i).to_string()).await;
            sleep(40).await;
        }
    });
    let got = read_text(&reader, 10).await;
    let log = seen_live();
    let mode = reader.mode();
    clean_up(&reader);
    assert_eq!(got, "0123456789");
    assert_eq!(mode, "sse", "{log:?}");
    assert!(log.iter().all(|e| e.live == "sse"), "{log:?}");
}

/// Numbers where strings are expected (a param value, a param function's result, an append's
/// `seq`) are sent as their text, as `String(value)` gives it.
#[wasm_bindgen_test]
async fn numbers_in_params_and_seq_are_sent_as_text() {
    let url = unique("numbers");
    create(&url).await;
    let appended = append_stream(obj(&[
        ("url", url.as_str().into()),
        ("body", "a".into()),
        ("contentType", "text/plain".into()),
        ("seq", 7.into()),
    ]));
    let r = wait(within(&appended, 5_000.0, "the append"))
        .await
        .unwrap_or_else(|e| panic!("append with a numeric seq: {:?}", get(&e, "message")));
    assert!(get(&r, "offset").as_string().is_some(), "no offset");
    let four = js_sys::Function::new_no_args("return 4");
    let reader = reader_for(
        &url,
        "long-poll",
        &[("params", obj(&[("n", 3.into()), ("m", four.into())]))],
    );
    let got = wait(within(&reader.next(), 5_000.0, "a batch")).await;
    let params = reader.params_sent();
    reader.cancel();
    let got = got.unwrap_or_else(|e| panic!("{:?}", get(&e, "message")));
    assert_eq!(text_of(&got), "a");
    assert_eq!(get(&params, "n").as_string().as_deref(), Some("3"));
    assert_eq!(get(&params, "m").as_string().as_deref(), Some("4"));
}

/// A stream deleted and created again is read as it is now, not from the page's HTTP cache:
/// catch-up pages may be cached for a minute, and the new stream's offsets are the old one's.
#[wasm_bindgen_test]
async fn a_stream_created_again_is_not_read_from_the_http_cache() {
    let url = unique("created-again");
    create(&url).await;
    append(&url, "old").await;
    let once =
        |url: &str| Reader::new(&obj(&[("url", url.into()), ("live", JsValue::FALSE)])).unwrap();
    let first = once(&url);
    assert_eq!(read_text(&first, 3).await, "old");
    wait(delete_stream(obj(&[("url", url.as_str().into())])))
        .await
        .expect("delete");
    create(&url).await;
    append(&url, "new!").await;
    let second = once(&url);
    assert_eq!(read_text(&second, 4).await, "new!");
}
