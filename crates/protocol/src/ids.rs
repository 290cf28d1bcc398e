//! Validated identifiers.
//!
//! A tenant id is the first segment of every Durable Object name
//! (`${tenantId}:${resourceId}`), KV key (`${tenantId}:${key}`) and Vectorize
//! namespace, so it must never carry a `:`, a `/` or anything else that could
//! make one tenant's key a prefix of another's. The only way to get a
//! [`TenantId`] is through [`TenantId::parse`], and deserialising one
//! validates it too, so an actor can never be handed an invalid id.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The longest tenant id accepted (`^[a-z0-9][a-z0-9-]{0,62}$`).
pub const MAX_TENANT_ID_LEN: usize = 63;

/// The longest request id accepted from a client.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The string is empty.
    #[error("must not be empty")]
    Empty,
    /// The string is longer than the limit.
    #[error("must be at most {max} characters, got {len}")]
    TooLong {
        /// The limit.
        max: usize,
        /// The length seen, in bytes.
        len: usize,
    },
    /// The first character is not allowed to start an id.
    #[error("must start with a lowercase letter or a digit")]
    BadStart,
    /// A character outside the allowed set.
    #[error("contains a character that is not allowed ({allowed})")]
    BadChar {
        /// A human description of the allowed set.
        allowed: &'static str,
    },
}

/// A tenant id: `^[a-z0-9][a-z0-9-]{0,62}$`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

/// Checks `^[a-z0-9][a-z0-9-]{0,max-1}$`, the shape of tenant and session ids.
fn check_slug(raw: &str, max: usize) -> Result<(), IdError> {
    let bytes = raw.as_bytes();
    let first = bytes.first().ok_or(IdError::Empty)?;
    if bytes.len() > max {
        return Err(IdError::TooLong {
            max,
            len: bytes.len(),
        });
    }
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(IdError::BadStart);
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
    {
        return Err(IdError::BadChar {
            allowed: "a-z, 0-9 and '-'",
        });
    }
    Ok(())
}

impl TenantId {
    /// Validates `raw` and wraps it.
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        check_slug(raw, MAX_TENANT_ID_LEN)?;
        Ok(Self(raw.to_owned()))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name of this tenant's Durable Object for `resource`
    /// (`${tenantId}:${resourceId}`).
    pub fn object_name(&self, resource: &str) -> String {
        format!("{}:{}", self.0, resource)
    }

    /// This tenant's KV key for `key` (`${tenantId}:${key}`).
    pub fn kv_key(&self, key: &str) -> String {
        format!("{}:{}", self.0, key)
    }
}

impl TryFrom<String> for TenantId {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<TenantId> for String {
    fn from(value: TenantId) -> Self {
        value.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The longest chat session id accepted (`^[a-z0-9][a-z0-9-]{0,127}$`).
pub const MAX_SESSION_ID_LEN: usize = 128;

/// A chat session id: like a tenant id, up to 128 characters. It is the
/// second half of the session object's name, `${tenantId}:${sessionId}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SessionId(String);

impl SessionId {
    /// Validates `raw` and wraps it.
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        check_slug(raw, MAX_SESSION_ID_LEN)?;
        Ok(Self(raw.to_owned()))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SessionId {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<SessionId> for String {
    fn from(value: SessionId) -> Self {
        value.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A request id: 1 to 128 characters of `A-Z a-z 0-9 . _ -`.
///
/// Clients may send their own (`x-request-id`); one that does not fit is
/// replaced by a generated one rather than echoed back into logs and headers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RequestId(String);

impl RequestId {
    /// Validates `raw` and wraps it.
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        if raw.is_empty() {
            return Err(IdError::Empty);
        }
        if raw.len() > MAX_REQUEST_ID_LEN {
            return Err(IdError::TooLong {
                max: MAX_REQUEST_ID_LEN,
                len: raw.len(),
            });
        }
        if !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(IdError::BadChar {
                allowed: "A-Z, a-z, 0-9, '.', '_' and '-'",
            });
        }
        Ok(Self(raw.to_owned()))
    }

    /// Builds a request id from 16 random bytes, as 32 lowercase hex digits.
    pub fn from_random(bytes: [u8; 16]) -> Self {
        Self(hex::encode(bytes))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RequestId {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<RequestId> for String {
    fn from(value: RequestId) -> Self {
        value.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_tenant_ids() {
        for ok in [
            "a",
            "0",
            "mrrainbowsmoke",
            "tenant-1",
            "a-",
            &"a".repeat(63),
        ] {
            assert_eq!(TenantId::parse(ok).map(|t| t.0), Ok(ok.to_owned()), "{ok}");
        }
    }

    #[test]
    fn rejects_invalid_tenant_ids() {
        let cases: &[(&str, IdError)] = &[
            ("", IdError::Empty),
            ("-a", IdError::BadStart),
            ("Acme", IdError::BadStart),
            (
                "aCme",
                IdError::BadChar {
                    allowed: "a-z, 0-9 and '-'",
                },
            ),
            (
                "a:b",
                IdError::BadChar {
                    allowed: "a-z, 0-9 and '-'",
                },
            ),
            (
                "a/b",
                IdError::BadChar {
                    allowed: "a-z, 0-9 and '-'",
                },
            ),
            ("..", IdError::BadStart),
            (
                "a..b",
                IdError::BadChar {
                    allowed: "a-z, 0-9 and '-'",
                },
            ),
            (
                "a b",
                IdError::BadChar {
                    allowed: "a-z, 0-9 and '-'",
                },
            ),
            (
                "tenañt",
                IdError::BadChar {
                    allowed: "a-z, 0-9 and '-'",
                },
            ),
            (
                "a,a",
                IdError::BadChar {
                    allowed: "a-z, 0-9 and '-'",
                },
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(TenantId::parse(raw).as_ref(), Err(want), "{raw:?}");
        }
        assert_eq!(
            TenantId::parse(&"a".repeat(64)),
            Err(IdError::TooLong { max: 63, len: 64 })
        );
    }

    #[test]
    fn scoped_names_put_the_tenant_first() {
        let t = TenantId::parse("acme").unwrap();
        assert_eq!(t.object_name("coordinator"), "acme:coordinator");
        assert_eq!(t.kv_key("config:x"), "acme:config:x");
    }

    #[test]
    fn deserialising_validates() {
        let bad: Result<TenantId, _> = serde_json::from_str("\"a:b\"");
        assert!(bad.is_err());
        let good: Result<TenantId, _> = serde_json::from_str("\"ab\"");
        assert_eq!(good.unwrap().as_str(), "ab");
    }

    #[test]
    fn session_ids() {
        assert!(SessionId::parse("user-123").is_ok());
        assert!(SessionId::parse(&"s".repeat(128)).is_ok());
        assert_eq!(
            SessionId::parse(&"s".repeat(129)),
            Err(IdError::TooLong { max: 128, len: 129 })
        );
        for bad in ["", "User", "a:b", "a/b", "..", "-a", "ü"] {
            assert!(SessionId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn request_ids() {
        assert!(RequestId::parse("abc-DEF_1.2").is_ok());
        assert_eq!(RequestId::parse(""), Err(IdError::Empty));
        assert!(RequestId::parse("a b").is_err());
        assert!(RequestId::parse("a\nb").is_err());
        assert!(RequestId::parse(&"x".repeat(129)).is_err());
        let r = RequestId::from_random([0xab; 16]);
        assert_eq!(r.as_str(), "ab".repeat(16));
        assert!(RequestId::parse(r.as_str()).is_ok());
    }
}
