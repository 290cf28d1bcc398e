//! Bearer-token checks for routes that need credentials.

use crate::errors::ApiError;

/// Checks an `authorization` header value against the expected token, in time
/// that does not depend on where the two differ.
///
/// `expected` is `None` when the deployment has no such secret: the routes it
/// guards are then closed (503), never open.
pub fn check_bearer(
    header: Option<&str>,
    expected: Option<&str>,
    secret_name: &str,
) -> Result<(), ApiError> {
    let expected = expected.filter(|t| !t.is_empty()).ok_or_else(|| {
        ApiError::NotConfigured(format!(
            "{secret_name} is not set for this deployment (wrangler secret put {secret_name}, or .dev.vars locally)"
        ))
    })?;
    let presented = header
        .and_then(|h| h.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::Unauthorized("an authorization: Bearer <token> header is required".into())
        })?;
    if constant_time_eq(presented.as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized("the token is not valid".into()))
    }
}

/// Compares two byte strings in time that does not depend on where they
/// differ (`subtle`, whose comparison the optimizer cannot turn back into an
/// early exit). A length mismatch answers at once: the length of a token may
/// leak through timing, its content does not.
pub fn constant_time_eq(presented: &[u8], expected: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(presented.ct_eq(expected))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equality() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secreT", b"secret"));
        assert!(!constant_time_eq(b"secret1", b"secret"));
        assert!(!constant_time_eq(b"secre", b"secret"));
        assert!(!constant_time_eq(b"", b"secret"));
        assert!(!constant_time_eq(b"\0\0\0", b"\0\0"));
    }

    #[test]
    fn bearer() {
        let ok = check_bearer(Some("Bearer t0k"), Some("t0k"), "ADMIN_TOKEN");
        assert_eq!(ok, Ok(()));
        for header in [
            None,
            Some("t0k"),
            Some("Bearer t0kk"),
            Some("bearer t0k"),
            Some("Bearer "),
        ] {
            let e = check_bearer(header, Some("t0k"), "ADMIN_TOKEN").unwrap_err();
            assert_eq!(e.status(), 401, "{header:?}");
        }
        let closed = check_bearer(Some("Bearer "), Some(""), "ADMIN_TOKEN").unwrap_err();
        assert_eq!(closed.status(), 503);
        assert_eq!(
            check_bearer(Some("Bearer x"), None, "ADMIN_TOKEN")
                .unwrap_err()
                .status(),
            503
        );
    }
}
