//! The demo app (`www/`), embedded by `build.rs` and served on every path outside `/v1/`.
//!
//! Serving it from the Worker instead of a wrangler `[assets]` binding keeps an asset router
//! off the path of every stream request.

use edgestream::headers::{self as h, if_none_match};
use worker::{Headers, Method, Request, Response, Result};

use crate::http;

/// One embedded file of `www/dist`.
pub struct DemoFile {
    /// The URL path it is served at, such as `/app.js`.
    pub path: &'static str,
    pub content_type: &'static str,
    /// A quoted entity tag derived from the bytes.
    pub etag: &'static str,
    pub body: &'static [u8],
}

/// Every file of `www/dist` at build time, sorted by path.
pub static FILES: &[DemoFile] = include!(concat!(env!("OUT_DIR"), "/demo_files.rs"));

/// The file a URL path names; a path ending in `/` names that folder's `index.html`.
pub fn lookup(path: &str) -> Option<&'static DemoFile> {
    let wanted = match path.strip_suffix('/') {
        Some(folder) => format!("{folder}/index.html"),
        None => path.to_string(),
    };
    FILES
        .binary_search_by(|f| f.path.cmp(wanted.as_str()))
        .ok()
        .map(|i| &FILES[i])
}

/// Answers a request for a demo path: the file, a 304 when the client's copy is current, or a
/// 404 or 405.
pub fn serve(req: &Request, path: &str) -> Result<Response> {
    let Some(file) = lookup(path) else {
        return http::text(404, "not found");
    };
    if !matches!(req.method(), Method::Get | Method::Head) {
        return http::not_allowed("GET, HEAD, OPTIONS");
    }
    let headers = Headers::new();
    headers.set(h::ETAG, file.etag)?;
    // Always revalidate: the files change whenever the demo or the client is rebuilt.
    headers.set(h::CACHE_CONTROL, "no-cache")?;
    let current = http::header(req.headers(), h::IF_NONE_MATCH)
        .is_some_and(|value| if_none_match(&value, file.etag));
    if current {
        return Ok(Response::empty()?.with_status(304).with_headers(headers));
    }
    headers.set(h::CONTENT_TYPE, file.content_type)?;
    if req.method() == Method::Head {
        // The runtime drops a HEAD response's body, and its length with it: state it.
        headers.set(h::CONTENT_LENGTH, &file.body.len().to_string())?;
        return Ok(Response::empty()?.with_headers(headers));
    }
    Ok(Response::from_bytes(file.body.to_vec())?.with_headers(headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_for_binary_search() {
        assert!(FILES.windows(2).all(|w| w[0].path < w[1].path));
    }

    #[test]
    fn folders_name_their_index() {
        // Holds whether or not the demo was built before this test: both lookups agree.
        let index = lookup("/index.html").map(|f| f.path);
        assert_eq!(lookup("/").map(|f| f.path), index);
        assert!(lookup("/no-such-file.js").is_none());
        assert!(lookup("").is_none());
    }
}
