//! The operators' dashboard at `/admin/ui`: three static files compiled into
//! the Worker (no other server, no build chain), which call the platform's
//! own API from the browser with the credential the operator types in.
//!
//! The page holds no secret and needs none to load; everything it shows comes
//! from authenticated API calls. It is served with a strict content security
//! policy: only its own script and style, requests only to this origin
//! (WebSockets included), and never inside a frame.

use crate::errors::ApiError;
use worker::{Headers, Response};

/// One file of the dashboard.
struct Asset {
    body: &'static str,
    content_type: &'static str,
}

static INDEX: Asset = Asset {
    body: include_str!("../ui/index.html"),
    content_type: "text/html; charset=utf-8",
};
static SCRIPT: Asset = Asset {
    body: include_str!("../ui/app.js"),
    content_type: "text/javascript; charset=utf-8",
};
static STYLE: Asset = Asset {
    body: include_str!("../ui/app.css"),
    content_type: "text/css; charset=utf-8",
};

/// `default-src 'none'` and then only what the page uses: its script, its
/// style, and fetch/WebSocket to its own origin. `'self'` covers `ws:`/`wss:`
/// of the same host in CSP Level 3.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
form-action 'none'; frame-ancestors 'none'";

/// The file behind `/admin/ui/<asset>` (`""` for `/admin/ui` itself).
fn find(asset: &str) -> Option<&'static Asset> {
    match asset {
        "" | "index.html" => Some(&INDEX),
        "app.js" => Some(&SCRIPT),
        "app.css" => Some(&STYLE),
        _ => None,
    }
}

/// The names `/admin/ui/<asset>` serves, besides the page itself.
pub const ASSETS: [&str; 3] = ["index.html", "app.js", "app.css"];

/// Answers `GET /admin/ui[/<asset>]`.
pub fn serve(asset: &str, request_id: &str) -> Result<Response, ApiError> {
    let file = find(asset).ok_or_else(|| {
        ApiError::not_found(
            "not_found",
            format!(
                "the dashboard has no file {asset:?}; it serves {}",
                ASSETS.join(", ")
            ),
        )
    })?;
    let headers = Headers::new();
    for (name, value) in [
        ("content-type", file.content_type),
        // Small files, always revalidated: a deploy is seen at once.
        ("cache-control", "no-cache"),
        ("content-security-policy", CONTENT_SECURITY_POLICY),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
        (crate::request_id::REQUEST_ID_HEADER, request_id),
    ] {
        headers
            .set(name, value)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
    }
    Ok(Response::builder()
        .with_status(200)
        .with_headers(headers)
        .fixed(file.body.as_bytes().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_asset_is_served_and_nothing_else() {
        for name in ASSETS {
            assert!(find(name).is_some(), "{name}");
        }
        assert!(std::ptr::eq(find("").unwrap(), &INDEX));
        for name in ["../Cargo.toml", "app.js.map", "APP.JS", "index.htm"] {
            assert!(find(name).is_none(), "{name}");
        }
    }

    #[test]
    fn the_page_loads_only_its_own_files() {
        // The policy forbids inline code, so the page must reference its
        // script and style as files, and hold no inline handler or script.
        assert!(INDEX
            .body
            .contains(r#"<script src="/admin/ui/app.js" defer></script>"#));
        assert!(INDEX.body.contains(r#"href="/admin/ui/app.css""#));
        assert_eq!(INDEX.body.matches("<script").count(), 1);
        assert!(!INDEX.body.contains("onclick="));
        assert!(!INDEX.body.contains("<style"));
    }

    #[test]
    fn the_script_never_writes_html_or_puts_the_token_in_a_url() {
        // Server values go in as text; the only credential in a URL is the
        // WebSocket's API key, which the route requires.
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "srcdoc",
            "eval(",
            "new Function",
        ] {
            assert!(!SCRIPT.body.contains(sink), "{sink}");
        }
        assert!(!SCRIPT.body.contains("localStorage"));
        assert!(!SCRIPT.body.contains("token="), "no token in a query");
    }
}
