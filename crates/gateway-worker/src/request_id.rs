//! `x-request-id`: the client's when it is sane, a fresh one otherwise.

use protocol::RequestId;

/// The header carrying the request id, both ways.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The client's id if it is valid, else one made from `fresh` random bytes.
pub fn choose(header: Option<&str>, fresh: impl FnOnce() -> [u8; 16]) -> RequestId {
    header
        .and_then(|h| RequestId::parse(h).ok())
        .unwrap_or_else(|| RequestId::from_random(fresh()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_a_sane_client_id() {
        assert_eq!(choose(Some("abc-123"), || [0; 16]).as_str(), "abc-123");
    }

    #[test]
    fn replaces_a_missing_or_bad_one() {
        let fresh = "01".repeat(16);
        assert_eq!(choose(None, || [1; 16]).as_str(), fresh);
        assert_eq!(choose(Some("has space"), || [1; 16]).as_str(), fresh);
        assert_eq!(choose(Some(&"x".repeat(129)), || [1; 16]).as_str(), fresh);
        assert_eq!(choose(Some(""), || [1; 16]).as_str(), fresh);
    }
}
