//! Request bodies: content type and size are checked before a body is parsed.

use crate::errors::ApiError;
use serde::de::DeserializeOwned;

/// The largest body accepted by the admin routes.
pub const MAX_ADMIN_BODY_BYTES: usize = 16 * 1024;

/// Checks that `content_type` is JSON (parameters such as `charset` allowed).
pub fn require_json(content_type: Option<&str>) -> Result<(), ApiError> {
    let essence = content_type
        .and_then(|ct| ct.split(';').next())
        .map(|ct| ct.trim().to_ascii_lowercase());
    if essence.as_deref() == Some("application/json") {
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
        assert!(require_json(Some("application/json")).is_ok());
        assert!(require_json(Some("Application/JSON; charset=utf-8")).is_ok());
        for ct in [
            None,
            Some("text/plain"),
            Some("application/jsonx"),
            Some(""),
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
            parse_optional_json::<V>(None, b"{}", 10)
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
