//! Request bodies: content type and size are checked before a body is parsed.

use crate::errors::ApiError;
use serde::de::DeserializeOwned;

/// The largest body accepted by the admin routes.
pub const MAX_ADMIN_BODY_BYTES: usize = 16 * 1024;

/// Checks that a body of `content_type` may be read as JSON: declared
/// `application/json` (parameters such as `charset` allowed), declared
/// `text/plain`, or not declared at all. The last two are what a browser's
/// `fetch(url, {method: "POST", body: JSON.stringify(x)})` sends (a string
/// body is `text/plain;charset=UTF-8`), and what the seed accepted, so such
/// clients work unchanged; the body is still parsed as JSON (400
/// `invalid_json` if it is not). Forms (`application/x-www-form-urlencoded`,
/// `multipart/form-data`) and every other type are 415: their bodies are
/// not JSON, and refusing them keeps an HTML form from posting to the API.
pub fn require_json(content_type: Option<&str>) -> Result<(), ApiError> {
    let essence = content_type
        .and_then(|ct| ct.split(';').next())
        .map(|ct| ct.trim().to_ascii_lowercase())
        .unwrap_or_default();
    if matches!(essence.as_str(), "" | "application/json" | "text/plain") {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType {
            expected: "application/json",
        })
    }
}

/// Refuses a declared `content-length` above `limit` before the body is read.
pub fn check_declared_length(content_length: Option<&str>, limit: usize) -> Result<(), ApiError> {
    match content_length.map(|v| v.trim().parse::<u64>()) {
        None => Ok(()),
        Some(Ok(len)) if len <= limit as u64 => Ok(()),
        Some(Ok(_)) => Err(ApiError::PayloadTooLarge { limit }),
        Some(Err(_)) => Err(ApiError::bad_request(
            "invalid_content_length",
            "content-length is not a number",
        )),
    }
}

/// Parses a JSON body that was read in full, enforcing `limit` on what arrived.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, ApiError> {
    if bytes.len() > limit {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("the body is not valid: {e}")))
}

/// Parses a body that may be left out: an empty body is `None` (and needs no
/// content type); anything else must be JSON as with [`parse_json`].
pub fn parse_optional_json<T: DeserializeOwned>(
    content_type: Option<&str>,
    bytes: &[u8],
    limit: usize,
) -> Result<Option<T>, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    require_json(content_type)?;
    parse_json(bytes, limit).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        for ct in [
            Some("application/json"),
            Some("Application/JSON; charset=utf-8"),
            // What fetch() sends with a string body, and no type at all.
            Some("text/plain"),
            Some("text/plain;charset=UTF-8"),
            None,
            Some(""),
        ] {
            assert!(require_json(ct).is_ok(), "{ct:?}");
        }
        for ct in [
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=----x"),
            Some("text/html"),
            Some("text/plainx"),
            Some("application/jsonx"),
            Some("application/xml"),
        ] {
            assert_eq!(require_json(ct).unwrap_err().status(), 415, "{ct:?}");
        }
    }

    #[test]
    fn lengths() {
        assert!(check_declared_length(None, 10).is_ok());
        assert!(check_declared_length(Some("10"), 10).is_ok());
        assert_eq!(
            check_declared_length(Some("11"), 10).unwrap_err().status(),
            413
        );
        assert_eq!(
            check_declared_length(Some("x"), 10).unwrap_err().status(),
            400
        );
        assert_eq!(
            parse_json::<serde_json::Value>(b"{}   ", 3)
                .unwrap_err()
                .status(),
            413
        );
        assert_eq!(
            parse_json::<serde_json::Value>(b"{", 10)
                .unwrap_err()
                .status(),
            400
        );
        assert!(parse_json::<serde_json::Value>(b"{}", 10).is_ok());
    }

    #[test]
    fn optional_bodies() {
        type V = serde_json::Value;
        assert_eq!(parse_optional_json::<V>(None, b"", 10), Ok(None));
        assert_eq!(parse_optional_json::<V>(None, b" \n", 10), Ok(None));
        assert_eq!(
            parse_optional_json::<V>(Some("application/json"), b"{}", 10),
            Ok(Some(serde_json::json!({})))
        );
        assert_eq!(
            parse_optional_json::<V>(None, b"{}", 10),
            Ok(Some(serde_json::json!({}))),
            "no content type: read as JSON"
        );
        assert_eq!(
            parse_optional_json::<V>(Some("multipart/form-data"), b"{}", 10)
                .unwrap_err()
                .status(),
            415
        );
        assert_eq!(
            parse_optional_json::<V>(Some("application/json"), b"{", 10)
                .unwrap_err()
                .status(),
            400
        );
    }
}
