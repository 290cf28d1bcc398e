//! Request bodies: content type and size are checked before a body is parsed.

use crate::errors::ApiError;
use serde::de::{DeserializeOwned, Visitor};

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
    let invalid = |e: &dyn std::fmt::Display| {
        ApiError::bad_request("invalid_json", format!("the body is not valid: {e}"))
    };
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| invalid(&e))?;
    T::deserialize(ObjectsOnly(&value)).map_err(|e| invalid(&e))
}

/// A JSON value read as a request type, like `serde_json::Value`'s own
/// deserializer except that a struct must come as an object: serde's
/// derived structs also take an array of their fields in order, so
/// `["arr",["chat"]]` was a key to create and `"anonymous":[true,false]`
/// a setting (found by the schema fuzzer, which sends what the document
/// says is invalid). Maps, lists and scalars read as before.
struct ObjectsOnly<'a>(&'a serde_json::Value);

/// What a failed read says.
#[derive(Debug)]
struct ReadError(String);

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ReadError {}

impl serde::de::Error for ReadError {
    fn custom<M: std::fmt::Display>(msg: M) -> Self {
        Self(msg.to_string())
    }
}

impl<'de> serde::Deserializer<'de> for ObjectsOnly<'de> {
    type Error = ReadError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ReadError> {
        use serde_json::Value;
        match self.0 {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    visitor.visit_u64(u)
                } else if let Some(i) = n.as_i64() {
                    visitor.visit_i64(i)
                } else {
                    visitor.visit_f64(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            Value::String(s) => visitor.visit_borrowed_str(s),
            Value::Array(items) => visitor.visit_seq(serde::de::value::SeqDeserializer::new(
                items.iter().map(ObjectsOnly),
            )),
            Value::Object(map) => visitor.visit_map(serde::de::value::MapDeserializer::new(
                map.iter().map(|(k, v)| (k.as_str(), ObjectsOnly(v))),
            )),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ReadError> {
        match self.0 {
            serde_json::Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ReadError> {
        match self.0 {
            serde_json::Value::Object(_) => self.deserialize_any(visitor),
            other => Err(ReadError(format!(
                "{name} must be a JSON object, not {}",
                kind(other)
            ))),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ReadError> {
        match self.0 {
            // Unit variants by name: the only enums the bodies hold.
            serde_json::Value::String(s) => {
                visitor.visit_enum(serde::de::value::BorrowedStrDeserializer::new(s))
            }
            other => Err(ReadError(format!(
                "expected one of the names, not {}",
                kind(other)
            ))),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, ReadError> {
        visitor.visit_newtype_struct(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map identifier
        ignored_any
    }
}

impl<'de> serde::de::IntoDeserializer<'de, ReadError> for ObjectsOnly<'de> {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

/// A JSON value's kind, for messages.
fn kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
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
    fn structs_come_as_objects_at_every_depth() {
        #[derive(Debug, PartialEq, serde::Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        struct Inner {
            search: Option<bool>,
            chat: Option<bool>,
        }
        #[derive(Debug, PartialEq, serde::Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        struct Outer {
            name: String,
            scopes: Vec<String>,
            top_k: Option<u32>,
            inner: Option<Inner>,
            #[serde(default)]
            items: Vec<Inner>,
            mode: Option<protocol::ingest::SearchMode>,
        }
        let ok: Outer = parse_json(
            br#"{"name":"a","scopes":["chat"],"topK":null,"inner":{"search":true},"items":[{}],"mode":"keyword"}"#,
            1000,
        )
        .unwrap();
        assert_eq!(
            ok,
            Outer {
                name: "a".into(),
                scopes: vec!["chat".into()],
                top_k: None,
                inner: Some(Inner {
                    search: Some(true),
                    chat: None
                }),
                items: vec![Inner {
                    search: None,
                    chat: None
                }],
                mode: Some(protocol::ingest::SearchMode::Keyword),
            }
        );
        for bad in [
            // The whole body, a nested struct, a struct in a list: serde's
            // derive takes arrays of fields for all of them.
            r#"["a",["chat"],null,null,[],null]"#,
            r#"{"name":"a","scopes":[],"inner":[true,false]}"#,
            r#"{"name":"a","scopes":[],"items":[[true,false]]}"#,
            r#"{"name":"a","scopes":[],"topK":-1}"#,
            r#"{"name":"a","scopes":[],"topK":1.5}"#,
            r#"{"name":"a","scopes":[],"mode":"nope"}"#,
            r#"{"name":"a","scopes":[],"mode":["keyword"]}"#,
            r#"{"name":"a","scopes":[],"extra":1}"#,
            r#"{"name":"a","scopes":"chat"}"#,
            r#"{"name":"a","scopes":[]} x"#,
        ] {
            let e = parse_json::<Outer>(bad.as_bytes(), 1000).unwrap_err();
            assert_eq!((e.status(), e.code()), (400, "invalid_json"), "{bad}");
        }
        // Values that are JSON through and through read as before.
        let v: serde_json::Value = parse_json(br#"[1,-2,2.5,"x",null,{"a":[true]}]"#, 100).unwrap();
        assert_eq!(v, serde_json::json!([1, -2, 2.5, "x", null, {"a": [true]}]));
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
