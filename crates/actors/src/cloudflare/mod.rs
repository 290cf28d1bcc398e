//! The Cloudflare implementations of the ports: Workers AI through the `AI`
//! binding (with a tenant's AI Gateway, [`ai_binding`]), Vectorize through the `VECTORS` binding (bound by hand: workers-rs
//! has no wrapper), KV through `CACHE`, and the runtime's clock.
//!
//! The request and response shapes are plain serde types, unit-tested
//! natively; only the calls themselves need the runtime.

pub mod ai_binding;
pub mod clock;
pub mod kv;
pub mod vectorize;
pub mod workers_ai;

/// Converts a serde value to a JS value the way JSON would (plain objects,
/// not `Map`s), which is what the bindings expect.
pub(crate) fn to_js<T: serde::Serialize>(
    value: &T,
) -> Result<worker::wasm_bindgen::JsValue, String> {
    value
        .serialize(&serde_wasm_bindgen::Serializer::json_compatible())
        .map_err(|e| e.to_string())
}

/// Like [`to_js`], by way of JSON text, for values that hold a client's own
/// JSON (a tool's schema, a response format): a whole number JavaScript
/// cannot hold exactly (beyond ±2^53, as a JSON schema's int64 bounds are)
/// becomes the nearest double, as `JSON.parse` reads it, where [`to_js`]
/// would refuse the whole value.
pub(crate) fn to_js_via_json<T: serde::Serialize>(
    value: &T,
) -> Result<worker::wasm_bindgen::JsValue, String> {
    let text = serde_json::to_string(value).map_err(|e| e.to_string())?;
    worker::js_sys::JSON::parse(&text).map_err(|e| format!("{e:?}"))
}
