//! Shortens the function names the Worker's wasm carries (its `name`
//! section, which stack traces and profiles show) by the hash rustc puts
//! at the end of each symbol (`::h75fd696d28b05d40`).
//!
//! The names stay, readable, in `wrangler tail` and in a profile; what goes
//! is 19 bytes of high-entropy text per function, about 130 kB of the
//! module and 75 kB of its gzip size (docs/benchmarks.md, "Worker size").
//! Names are not code: the module runs the same with or without them. The
//! instances of one generic function now share its name (4,014 of 6,920
//! functions share one of 597 names), so a profile summed by name
//! (`tests/profile/cpu-profile.mjs`) sums them together.
//!
//! The format (the WebAssembly core specification's custom `name` section):
//! a module is `\0asm`, a version, then sections `(id: u8, size: u32 LEB128,
//! bytes)`; the `name` section is custom (id 0) and holds subsections
//! `(id: u8, size: LEB128, bytes)`, of which id 1 is the function names, a
//! vector of `(index: LEB128, name: LEB128 length + UTF-8)`. Everything else
//! is copied byte for byte.

/// A fingerprint of this rewrite's code, for the build stamp: a build made
/// by another version of it is not reused.
pub fn fingerprint() -> String {
    use sha2::{Digest, Sha256};
    let source = include_str!("wasm_names.rs");
    // The code, not its tests.
    let (code, _) = source.split_once("#[cfg(test)]").unwrap_or((source, ""));
    let digest = Sha256::digest(code.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// What [`strip_symbol_hashes`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stripped {
    /// Function names that lost their hash.
    pub names: usize,
    /// Bytes the module lost.
    pub bytes: usize,
}

/// `wasm` with every function name's trailing `::h<16 hex digits>` removed,
/// and what was removed.
pub fn strip_symbol_hashes(wasm: &[u8]) -> Result<(Vec<u8>, Stripped), String> {
    const HEADER: &[u8] = b"\0asm\x01\0\0\0";
    if !wasm.starts_with(HEADER) {
        return Err("not a WebAssembly module (version 1)".into());
    }
    let mut out = Vec::with_capacity(wasm.len());
    out.extend_from_slice(HEADER);
    let mut names = 0;
    let mut at = HEADER.len();
    while at < wasm.len() {
        let (id, body, end) = entry(wasm, at, "a section runs past the end of the module")?;
        match (id, custom_name(body)) {
            (0, Some(("name", rest))) => {
                let (subsections, n) = strip_subsections(rest)?;
                names += n;
                let mut section = Vec::with_capacity(body.len());
                write_name(&mut section, "name");
                section.extend_from_slice(&subsections);
                write_entry(&mut out, 0, &section)?;
            }
            _ => out.extend_from_slice(&wasm[at..end]),
        }
        at = end;
    }
    let bytes = wasm.len() - out.len();
    Ok((out, Stripped { names, bytes }))
}

/// The section or subsection at `at`: its id, its bytes, and where it ends.
fn entry<'a>(bytes: &'a [u8], at: usize, past_end: &str) -> Result<(u8, &'a [u8], usize), String> {
    let id = bytes[at];
    let (size, body_at) = read_u32(bytes, at + 1)?;
    let end = body_at + size as usize;
    let body = bytes.get(body_at..end).ok_or(past_end)?;
    Ok((id, body, end))
}

/// Writes a section or subsection: `id`, the length of `body`, `body`.
fn write_entry(out: &mut Vec<u8>, id: u8, body: &[u8]) -> Result<(), String> {
    out.push(id);
    write_u32(out, len_u32(body.len())?);
    out.extend_from_slice(body);
    Ok(())
}

/// The name of a custom section and the bytes after it (`None` when the
/// section has no valid name: then it is not ours to read).
fn custom_name(body: &[u8]) -> Option<(&str, &[u8])> {
    let (len, at) = read_u32(body, 0).ok()?;
    let name = body.get(at..at + len as usize)?;
    std::str::from_utf8(name)
        .ok()
        .map(|name| (name, &body[at + len as usize..]))
}

/// The `name` section's subsections with the function names stripped, and
/// how many were.
fn strip_subsections(bytes: &[u8]) -> Result<(Vec<u8>, usize), String> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut stripped = 0;
    let mut at = 0;
    while at < bytes.len() {
        let (id, body, end) = entry(bytes, at, "a name subsection runs past its section")?;
        if id == 1 {
            let (functions, n) = strip_function_names(body)?;
            stripped += n;
            write_entry(&mut out, 1, &functions)?;
        } else {
            out.extend_from_slice(&bytes[at..end]);
        }
        at = end;
    }
    Ok((out, stripped))
}

fn strip_function_names(body: &[u8]) -> Result<(Vec<u8>, usize), String> {
    let (count, mut at) = read_u32(body, 0)?;
    let mut out = Vec::with_capacity(body.len());
    write_u32(&mut out, count);
    let mut stripped = 0;
    for _ in 0..count {
        let (index, name_at) = read_u32(body, at)?;
        let (len, text_at) = read_u32(body, name_at)?;
        let name = body
            .get(text_at..text_at + len as usize)
            .ok_or("a function name runs past its subsection")?;
        let name = std::str::from_utf8(name).map_err(|_| "a function name is not UTF-8")?;
        let short = without_hash(name);
        if short.len() != name.len() {
            stripped += 1;
        }
        write_u32(&mut out, index);
        write_name(&mut out, short);
        at = text_at + len as usize;
    }
    if at != body.len() {
        return Err("bytes after the function names".into());
    }
    Ok((out, stripped))
}

/// `name` without a trailing `::h` and 16 lowercase hex digits.
fn without_hash(name: &str) -> &str {
    let Some(head) = name.len().checked_sub(19).and_then(|i| name.get(..i)) else {
        return name;
    };
    let tail = &name[head.len()..];
    let is_hash = tail.starts_with("::h")
        && tail[3..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if is_hash {
        head
    } else {
        name
    }
}

fn len_u32(len: usize) -> Result<u32, String> {
    u32::try_from(len).map_err(|_| "a section is over 4 GiB".to_owned())
}

fn write_name(out: &mut Vec<u8>, name: &str) {
    // A name comes from a section no bigger than 4 GiB: its length fits.
    write_u32(out, name.len() as u32);
    out.extend_from_slice(name.as_bytes());
}

/// An unsigned LEB128 `u32` at `at`, and where it ends.
fn read_u32(bytes: &[u8], mut at: usize) -> Result<(u32, usize), String> {
    let mut value: u64 = 0;
    for shift in (0..35).step_by(7) {
        let byte = *bytes.get(at).ok_or("a number runs past the end")?;
        at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return u32::try_from(value)
                .map(|v| (v, at))
                .map_err(|_| "a number is over u32".into());
        }
    }
    Err("a number is longer than 5 bytes".into())
}

fn write_u32(out: &mut Vec<u8>, mut value: u32) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(id: u8, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_entry(&mut out, id, body).unwrap();
        out
    }

    fn custom(name: &str, rest: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        write_name(&mut body, name);
        body.extend_from_slice(rest);
        section(0, &body)
    }

    fn function_names(names: &[(u32, &str)]) -> Vec<u8> {
        let mut body = Vec::new();
        write_u32(&mut body, names.len() as u32);
        for (index, name) in names {
            write_u32(&mut body, *index);
            write_name(&mut body, name);
        }
        section(1, &body)
    }

    fn module(sections: &[Vec<u8>]) -> Vec<u8> {
        let mut out = b"\0asm\x01\0\0\0".to_vec();
        for s in sections {
            out.extend_from_slice(s);
        }
        out
    }

    /// A module with a type section, a `name` section (module name,
    /// function names, local names) and a `producers` section.
    fn sample(names: &[(u32, &str)]) -> Vec<u8> {
        let mut name_section = section(0, b"\x04demo");
        name_section.extend(function_names(names));
        name_section.extend(section(2, &[1, 0, 1, 0, 1, b'x']));
        module(&[
            section(1, &[1, 0x60, 0, 0]),
            custom("name", &name_section),
            custom("producers", b"\x01\x02hi"),
        ])
    }

    #[test]
    fn hashes_go_and_everything_else_stays() {
        // 139 bytes with its hash (a two-byte length), 120 without (one byte).
        let long = "z".repeat(120);
        let hashed_long = format!("{long}::h0123456789abcdef");
        let before = sample(&[
            (0, "protocol::msgpack::read::h75fd696d28b05d40"),
            (1, "main"),
            (2, "not::hex::h0123456789abcdeg"),
            (3, "upper::h0123456789ABCDEF"),
            (4, &hashed_long),
            (5, "::h0123456789abcdef"),
        ]);
        let expected = sample(&[
            (0, "protocol::msgpack::read"),
            (1, "main"),
            (2, "not::hex::h0123456789abcdeg"),
            (3, "upper::h0123456789ABCDEF"),
            (4, &long),
            (5, ""),
        ]);
        let (after, stripped) = strip_symbol_hashes(&before).unwrap();
        assert_eq!(after, expected);
        assert_eq!(
            stripped,
            Stripped {
                names: 3,
                bytes: before.len() - expected.len()
            }
        );
        assert!(stripped.bytes > 3 * 19, "a length shrinks to one byte");
        // Stripping again changes nothing.
        assert_eq!(strip_symbol_hashes(&after).unwrap().0, after);
    }

    #[test]
    fn a_module_without_names_is_copied() {
        let wasm = module(&[section(1, &[1, 0x60, 0, 0]), custom("producers", b"")]);
        assert_eq!(
            strip_symbol_hashes(&wasm).unwrap(),
            (wasm, Stripped { names: 0, bytes: 0 })
        );
    }

    #[test]
    fn damaged_modules_are_refused() {
        assert!(strip_symbol_hashes(b"not wasm").is_err());
        // Cut anywhere but between two sections.
        let wasm = sample(&[(0, "f::h0123456789abcdef")]);
        let mut boundaries = vec![8];
        while let Some(&at) = boundaries.last().filter(|&&at| at < wasm.len()) {
            boundaries.push(entry(&wasm, at, "past the end").unwrap().2);
        }
        assert_eq!(boundaries.len(), 4);
        for cut in 9..wasm.len() {
            let result = strip_symbol_hashes(&wasm[..cut]);
            assert_eq!(result.is_ok(), boundaries.contains(&cut), "cut at {cut}");
        }
        // Bytes after the function names.
        let mut names = function_names(&[(0, "f")]);
        names[1] += 1;
        names.push(0);
        let wasm = module(&[custom("name", &names)]);
        assert!(strip_symbol_hashes(&wasm).is_err());
    }

    #[test]
    fn numbers_round_trip() {
        for v in [0, 1, 127, 128, 16_383, 16_384, u32::MAX] {
            let mut out = Vec::new();
            write_u32(&mut out, v);
            assert_eq!(read_u32(&out, 0), Ok((v, out.len())));
        }
        assert!(read_u32(&[0xff, 0xff, 0xff, 0xff, 0x7f], 0).is_err());
        assert!(read_u32(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x01], 0).is_err());
    }
}
