//! Embeds `openapi.json` without the whitespace between its tokens: the
//! checked-in file stays readable (127 kB), the Worker carries 75 kB of it.
//! `openapi.rs`'s tests check that both hold the same document.

use std::path::PathBuf;

fn main() -> Result<(), String> {
    println!("cargo::rerun-if-changed=openapi.json");
    let text = std::fs::read_to_string("openapi.json")
        .map_err(|e| format!("reading openapi.json: {e}"))?;
    let out = PathBuf::from(std::env::var("OUT_DIR").map_err(|e| format!("OUT_DIR: {e}"))?);
    std::fs::write(out.join("openapi.min.json"), minify(&text))
        .map_err(|e| format!("writing openapi.min.json: {e}"))
}

/// `json` without whitespace outside its strings.
fn minify(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if !matches!(c, ' ' | '\n' | '\r' | '\t') {
            in_string = c == '"';
            out.push(c);
        }
    }
    out
}
