//! The platform's MessagePack reader: a serde `Deserializer` for what
//! `rmp_serde::to_vec_named` writes (the writer stays `rmp_serde`'s).
//!
//! Why not `rmp_serde`'s reader: size. Its reader is generic over the
//! visitor all the way down (reading each marker, each integer width, each
//! string), so every message type got a copy of all of it: 1.37 MB of the
//! Worker's 3.38 MB of code (`docs/benchmarks.md`, thirteenth session), which
//! the runtime compiles and which the Worker uploads. Here the one function
//! that reads a value's head ([`Deserializer::head`]) and the one that skips a
//! value ([`Deserializer::skip`]) are not generic; what each type gets is a
//! short match from the head to its visitor.
//!
//! It reads what `rmp_serde` 1.3's reader reads from that writer, the same
//! way (the tests compare the two):
//! - a struct is a map of field names; a unit struct
//!   is nil or an empty array; a newtype struct is its content;
//! - an enum is its variant's name (a unit variant), or a map of one entry
//!   from the name to the content (`{"Unit": nil}` too);
//! - `None` is nil, `Some(x)` is `x`;
//! - a string that is not UTF-8 is offered to the visitor as bytes;
//! - a visitor must take every item of an array or a map it is given;
//! - a 128-bit integer is an integer or 16 big-endian bytes;
//! - nesting is limited to [`MAX_DEPTH`] (arrays, maps and, here also,
//!   enums' one-entry maps: `rmp_serde` does not count those).
//!
//! It is stricter where the platform never writes the input: bytes left
//! after the value and MessagePack extension types are errors; a struct (and
//! a struct variant) is read only from a map, a sequence or tuple only from
//! an array; a name (a field, a variant, a key gathered by
//! `#[serde(flatten)]`) only from a string, a non-negative integer or bytes,
//! a string only from a string or bytes; `bin` is read as bytes only; a
//! negative integer is not read as an `u128`. (It also reads a 128-bit
//! integer from any `bin` head of 16 bytes, where `rmp_serde` takes only
//! `bin8`, which is what it writes.) (`rmp_serde` also reads a struct
//! from an array of its fields, as `rmp_serde::to_vec` writes it, and `bin`
//! as a sequence of `u8`; the platform writes only with `to_vec_named`.)

use serde::de::{self, DeserializeSeed, Visitor};
use std::fmt;

/// How deep arrays, maps and enums may nest (`rmp_serde`'s default, which
/// counts arrays and maps only).
pub const MAX_DEPTH: u32 = 1024;

/// Why bytes could not be read as a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ends inside a value.
    #[error("the message ends early, at byte {at}")]
    Eof {
        /// Where more bytes were needed.
        at: usize,
    },
    /// A marker MessagePack reserves (0xc1), or an extension type, which
    /// the platform never writes.
    #[error("marker 0x{marker:02x} at byte {at} is not one the platform writes")]
    Marker {
        /// The marker.
        marker: u8,
        /// Where it is.
        at: usize,
    },
    /// Arrays, maps and enums nest deeper than [`MAX_DEPTH`].
    #[error("values nest deeper than {MAX_DEPTH}")]
    TooDeep,
    /// The type read fewer items of an array or map than it holds.
    #[error("{read} of the {len} items of an array or map were read")]
    Length {
        /// Items in the input.
        len: u32,
        /// Items the type read.
        read: u32,
    },
    /// Bytes are left after the value.
    #[error("{left} bytes after the value")]
    Trailing {
        /// How many.
        left: usize,
    },
    /// A string is not UTF-8 (and the type does not take bytes).
    #[error("a string at byte {at} is not UTF-8")]
    Utf8 {
        /// Where the string's bytes start.
        at: usize,
    },
    /// The value does not fit the type (serde's message).
    #[error("{0}")]
    Shape(String),
}

impl de::Error for DecodeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self::Shape(msg.to_string())
    }
}

/// Reads a `T` from the whole of `bytes`.
pub fn from_slice<'de, T: de::Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, DecodeError> {
    let mut de = Deserializer::new(bytes);
    let value = T::deserialize(&mut de)?;
    match bytes.len() - de.pos {
        0 => Ok(value),
        left => Err(DecodeError::Trailing { left }),
    }
}

/// Reads the entry `name` of the map that `bytes` holds: the entries
/// before it are skipped, none after it is read (a message's version,
/// its first field, costs the same whatever the message carries). `None`
/// when the map has no such entry.
pub fn field<'de, T: de::Deserialize<'de>>(
    bytes: &'de [u8],
    name: &str,
) -> Result<Option<T>, DecodeError> {
    let mut de = Deserializer::new(bytes);
    let len = match de.head()? {
        Head::Map(len) => len,
        other => return Err(unexpected(other, 0, "a map")),
    };
    for _ in 0..len {
        let key = de.head()?;
        if matches!(key, Head::Str(key) if key == name) {
            return T::deserialize(&mut de).map(Some);
        }
        // A key that is an array or a map is skipped whole, then its value.
        de.skip_items_of(key)?;
        de.skip()?;
    }
    Ok(None)
}

/// What a value starts with: its kind and, for a scalar, the value itself.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Head<'de> {
    Nil,
    Bool(bool),
    Uint(u64),
    Int(i64),
    F32(f32),
    F64(f64),
    Str(&'de str),
    /// A string whose bytes are not UTF-8; `at` is where they start.
    BadStr(&'de [u8], usize),
    Bin(&'de [u8]),
    Array(u32),
    Map(u32),
}

/// A MessagePack reader over a byte slice (see the module's note).
pub struct Deserializer<'de> {
    input: &'de [u8],
    pos: usize,
    depth: u32,
}

impl<'de> Deserializer<'de> {
    /// A reader at the start of `input`.
    pub fn new(input: &'de [u8]) -> Self {
        Self {
            input,
            pos: 0,
            depth: MAX_DEPTH,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'de [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.input.len())
            .ok_or(DecodeError::Eof {
                at: self.input.len(),
            })?;
        let bytes = &self.input[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn be<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// A length of `N` big-endian bytes.
    fn len<const N: usize>(&mut self) -> Result<u32, DecodeError> {
        let bytes = self.be::<N>()?;
        Ok(bytes.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)))
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    /// Reads the head of the next value: a scalar whole, a string's or
    /// bin's bytes, an array's or map's length (its items follow).
    fn head(&mut self) -> Result<Head<'de>, DecodeError> {
        self.head_checking::<true>()
    }

    /// [`Self::head`]; a string's bytes are checked to be UTF-8 only when
    /// `UTF8` (a skipped string is not). Two copies, each without the test.
    fn head_checking<const UTF8: bool>(&mut self) -> Result<Head<'de>, DecodeError> {
        let at = self.pos;
        let marker = self.byte()?;
        Ok(match marker {
            0x00..=0x7f => Head::Uint(u64::from(marker)),
            0x80..=0x8f => Head::Map(u32::from(marker & 0x0f)),
            0x90..=0x9f => Head::Array(u32::from(marker & 0x0f)),
            0xa0..=0xbf => return self.str(u32::from(marker & 0x1f), UTF8),
            0xc0 => Head::Nil,
            0xc2 => Head::Bool(false),
            0xc3 => Head::Bool(true),
            0xc4 => {
                let n = self.len::<1>()?;
                Head::Bin(self.take(n as usize)?)
            }
            0xc5 => {
                let n = self.len::<2>()?;
                Head::Bin(self.take(n as usize)?)
            }
            0xc6 => {
                let n = self.len::<4>()?;
                Head::Bin(self.take(n as usize)?)
            }
            0xca => Head::F32(f32::from_be_bytes(self.be()?)),
            0xcb => Head::F64(f64::from_be_bytes(self.be()?)),
            0xcc => Head::Uint(u64::from(self.byte()?)),
            0xcd => Head::Uint(u64::from(u16::from_be_bytes(self.be()?))),
            0xce => Head::Uint(u64::from(u32::from_be_bytes(self.be()?))),
            0xcf => Head::Uint(u64::from_be_bytes(self.be()?)),
            0xd0 => Head::Int(i64::from(i8::from_be_bytes(self.be()?))),
            0xd1 => Head::Int(i64::from(i16::from_be_bytes(self.be()?))),
            0xd2 => Head::Int(i64::from(i32::from_be_bytes(self.be()?))),
            0xd3 => Head::Int(i64::from_be_bytes(self.be()?)),
            0xd9 => {
                let n = self.len::<1>()?;
                return self.str(n, UTF8);
            }
            0xda => {
                let n = self.len::<2>()?;
                return self.str(n, UTF8);
            }
            0xdb => {
                let n = self.len::<4>()?;
                return self.str(n, UTF8);
            }
            0xdc => Head::Array(self.len::<2>()?),
            0xdd => Head::Array(self.len::<4>()?),
            0xde => Head::Map(self.len::<2>()?),
            0xdf => Head::Map(self.len::<4>()?),
            0xe0..=0xff => Head::Int(i64::from(i8::from_be_bytes([marker]))),
            // 0xc1 (reserved), 0xc7–0xc9 and 0xd4–0xd8 (extension types).
            _ => return Err(DecodeError::Marker { marker, at }),
        })
    }

    fn str(&mut self, n: u32, utf8: bool) -> Result<Head<'de>, DecodeError> {
        let at = self.pos;
        let bytes = self.take(n as usize)?;
        if !utf8 {
            return Ok(Head::BadStr(bytes, at));
        }
        Ok(match std::str::from_utf8(bytes) {
            Ok(s) => Head::Str(s),
            Err(_) => Head::BadStr(bytes, at),
        })
    }

    /// Skips the next value, however deep, without a visitor.
    fn skip(&mut self) -> Result<(), DecodeError> {
        let head = self.head_checking::<false>()?;
        self.skip_items_of(head)
    }

    /// Skips what follows `head`, already read: an array's or a map's items,
    /// however deep (nothing after a scalar).
    fn skip_items_of(&mut self, head: Head<'de>) -> Result<(), DecodeError> {
        fn items(head: Head<'_>) -> u64 {
            match head {
                Head::Array(n) => u64::from(n),
                Head::Map(n) => 2 * u64::from(n),
                _ => 0,
            }
        }
        // Values still to skip; an array or map adds its items.
        let mut pending = items(head);
        while pending > 0 {
            pending -= 1;
            pending += items(self.head_checking::<false>()?);
        }
        Ok(())
    }

    fn enter(&mut self) -> Result<(), DecodeError> {
        // An error on the way in leaves the count where it was (the read
        // is abandoned), so it never wraps even if a visitor went on.
        match self.depth.checked_sub(1) {
            Some(depth) if depth > 0 => {
                self.depth = depth;
                Ok(())
            }
            _ => Err(DecodeError::TooDeep),
        }
    }

    fn leave(&mut self) {
        self.depth += 1;
    }

    /// The next value, whatever it is, given to `visitor`.
    fn any<V: Visitor<'de>>(&mut self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.head()? {
            Head::Nil => visitor.visit_unit(),
            Head::Bool(b) => visitor.visit_bool(b),
            Head::Uint(n) => visitor.visit_u64(n),
            Head::Int(n) => visitor.visit_i64(n),
            Head::F32(x) => visitor.visit_f32(x),
            Head::F64(x) => visitor.visit_f64(x),
            Head::Str(s) => visitor.visit_borrowed_str(s),
            Head::BadStr(bytes, at) => visitor
                .visit_borrowed_bytes(bytes)
                .map_err(|_: DecodeError| DecodeError::Utf8 { at }),
            Head::Bin(bytes) => visitor.visit_borrowed_bytes(bytes),
            Head::Array(len) => self.seq(len, visitor),
            Head::Map(len) => self.map(len, visitor),
        }
    }

    /// The `len` items of an array, given to `visitor`.
    fn seq<V: Visitor<'de>>(&mut self, len: u32, visitor: V) -> Result<V::Value, DecodeError> {
        self.enter()?;
        let mut items = Items {
            de: self,
            left: len,
        };
        let value = visitor.visit_seq(&mut items)?;
        check_all_read(len, items.left)?;
        self.leave();
        Ok(value)
    }

    /// The `len` entries of a map, given to `visitor`.
    fn map<V: Visitor<'de>>(&mut self, len: u32, visitor: V) -> Result<V::Value, DecodeError> {
        self.enter()?;
        let mut entries = Items {
            de: self,
            left: len,
        };
        let value = visitor.visit_map(&mut entries)?;
        check_all_read(len, entries.left)?;
        self.leave();
        Ok(value)
    }

    /// The next value, which must be an array, given to `visitor`.
    fn array<V: Visitor<'de>>(&mut self, visitor: V) -> Result<V::Value, DecodeError> {
        let at = self.pos;
        match self.head()? {
            Head::Array(len) => self.seq(len, visitor),
            other => Err(unexpected(other, at, "an array")),
        }
    }

    /// The next value, which must be a map, given to `visitor`. A struct is
    /// read only from a map (what `to_vec_named` writes), so the code that
    /// would read one from an array is never built.
    fn struct_map<V: Visitor<'de>>(&mut self, visitor: V) -> Result<V::Value, DecodeError> {
        let at = self.pos;
        match self.head()? {
            Head::Map(len) => self.map(len, visitor),
            other => Err(unexpected(other, at, "a map (a struct)")),
        }
    }
}

/// A 128-bit integer as written: a plain integer, or 16 bytes.
enum Int128 {
    Uint(u64),
    Int(i64),
    Wide([u8; 16]),
}

impl Deserializer<'_> {
    fn int128(&mut self) -> Result<Int128, DecodeError> {
        let at = self.pos;
        match self.head()? {
            Head::Uint(n) => Ok(Int128::Uint(n)),
            Head::Int(n) => Ok(Int128::Int(n)),
            Head::Bin(bytes) if bytes.len() == 16 => {
                let mut wide = [0u8; 16];
                wide.copy_from_slice(bytes);
                Ok(Int128::Wide(wide))
            }
            other => Err(unexpected(other, at, "a 128-bit integer")),
        }
    }
}

/// The error for a value of another kind than the one expected.
fn unexpected(head: Head<'_>, at: usize, expected: &str) -> DecodeError {
    let found = match head {
        Head::Nil => "nil".to_owned(),
        Head::Bool(b) => format!("boolean {b}"),
        Head::Uint(n) => format!("integer {n}"),
        Head::Int(n) => format!("integer {n}"),
        Head::F32(x) => format!("float {x}"),
        Head::F64(x) => format!("float {x}"),
        Head::Str(_) | Head::BadStr(..) => "a string".to_owned(),
        Head::Bin(_) => "bytes".to_owned(),
        Head::Array(n) => format!("an array of {n}"),
        Head::Map(n) => format!("a map of {n}"),
    };
    DecodeError::Shape(format!("{found} at byte {at}, expected {expected}"))
}

fn check_all_read(len: u32, left: u32) -> Result<(), DecodeError> {
    match left {
        0 => Ok(()),
        left => Err(DecodeError::Length {
            len,
            read: len - left,
        }),
    }
}

impl<'de> de::Deserializer<'de> for &mut Deserializer<'de> {
    type Error = DecodeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.any(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        if self.peek() == Some(0xc0) {
            self.pos += 1;
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        // rmp_serde writes a unit struct as an empty array.
        if matches!(self.peek(), Some(0xc0 | 0x90)) {
            self.pos += 1;
            visitor.visit_unit()
        } else {
            self.any(visitor)
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        // A map of one entry holds the variant and its content; anything
        // else is the variant alone (and then must be a name).
        let at = self.pos;
        match self.peek() {
            Some(0x80..=0x8f | 0xde..=0xdf) => match self.head()? {
                Head::Map(1) => {
                    self.enter()?;
                    let value = visitor.visit_enum(Variant {
                        de: &mut *self,
                        unit: false,
                    })?;
                    self.leave();
                    Ok(value)
                }
                Head::Map(len) => Err(DecodeError::Shape(format!(
                    "an enum at byte {at} is a map of {len} entries, not 1"
                ))),
                other => Err(DecodeError::Shape(format!(
                    "an enum at byte {at} reads as {other:?}"
                ))),
            },
            _ => visitor.visit_enum(Variant {
                de: self,
                unit: true,
            }),
        }
    }

    // Vectors are long runs of floats: read those without the general path.
    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        if self.peek() == Some(0xca) {
            self.pos += 1;
            return visitor.visit_f32(f32::from_be_bytes(self.be()?));
        }
        self.any(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        if self.peek() == Some(0xcb) {
            self.pos += 1;
            return visitor.visit_f64(f64::from_be_bytes(self.be()?));
        }
        self.any(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.struct_map(visitor)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.array(visitor)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.array(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.array(visitor)
    }

    // rmp_serde writes a 128-bit integer as 16 big-endian bytes (`bin`).
    fn deserialize_i128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_i128(match self.int128()? {
            Int128::Uint(n) => i128::from(n),
            Int128::Int(n) => i128::from(n),
            Int128::Wide(bytes) => i128::from_be_bytes(bytes),
        })
    }

    fn deserialize_u128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.int128()? {
            Int128::Uint(n) => visitor.visit_u128(u128::from(n)),
            // Refused by the visitor (rmp_serde wraps it to a huge value).
            Int128::Int(n) => visitor.visit_i64(n),
            Int128::Wide(bytes) => visitor.visit_u128(u128::from_be_bytes(bytes)),
        }
    }

    // A field's or variant's name, or a string: only the heads these can
    // be, so that the many identifier visitors do not each get every arm.
    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let at = self.pos;
        match self.head()? {
            Head::Str(s) => visitor.visit_borrowed_str(s),
            Head::Uint(n) => visitor.visit_u64(n),
            Head::BadStr(bytes, _) | Head::Bin(bytes) => visitor.visit_borrowed_bytes(bytes),
            other => Err(unexpected(other, at, "a name")),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let at = self.pos;
        match self.head()? {
            Head::Str(s) => visitor.visit_borrowed_str(s),
            Head::BadStr(bytes, at) => visitor
                .visit_borrowed_bytes(bytes)
                .map_err(|_: DecodeError| DecodeError::Utf8 { at }),
            Head::Bin(bytes) => visitor.visit_borrowed_bytes(bytes),
            other => Err(unexpected(other, at, "a string")),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.skip()?;
        visitor.visit_unit()
    }

    fn is_human_readable(&self) -> bool {
        false
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 u8 u16 u32 u64 char
        bytes byte_buf unit map
    }
}

/// The items of an array or the entries of a map, `left` still to read.
struct Items<'a, 'de> {
    de: &'a mut Deserializer<'de>,
    left: u32,
}

impl<'de> de::SeqAccess<'de> for Items<'_, 'de> {
    type Error = DecodeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DecodeError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        usize::try_from(self.left).ok()
    }
}

impl<'de> de::MapAccess<'de> for Items<'_, 'de> {
    type Error = DecodeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DecodeError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, DecodeError> {
        seed.deserialize(&mut *self.de)
    }

    fn size_hint(&self) -> Option<usize> {
        usize::try_from(self.left).ok()
    }
}

/// An enum's variant: its name (or index) next, then, unless `unit`, its
/// content.
struct Variant<'a, 'de> {
    de: &'a mut Deserializer<'de>,
    unit: bool,
}

impl<'de> de::EnumAccess<'de> for Variant<'_, 'de> {
    type Error = DecodeError;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self), DecodeError> {
        let variant = seed.deserialize(&mut *self.de)?;
        Ok((variant, self))
    }
}

impl<'de> de::VariantAccess<'de> for Variant<'_, 'de> {
    type Error = DecodeError;

    fn unit_variant(self) -> Result<(), DecodeError> {
        if self.unit {
            return Ok(());
        }
        let at = self.de.pos;
        match self.de.head()? {
            Head::Nil => Ok(()),
            _ => Err(DecodeError::Shape(format!(
                "the content of a unit variant at byte {at} is not nil"
            ))),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, DecodeError> {
        if self.unit {
            return Err(de::Error::invalid_type(
                de::Unexpected::UnitVariant,
                &"newtype variant",
            ));
        }
        seed.deserialize(self.de)
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        if self.unit {
            return Err(de::Error::invalid_type(
                de::Unexpected::UnitVariant,
                &"tuple variant",
            ));
        }
        self.de.array(visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        if self.unit {
            return Err(de::Error::invalid_type(
                de::Unexpected::UnitVariant,
                &"struct variant",
            ));
        }
        self.de.struct_map(visitor)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};
    use serde_json::{json, Value};
    use std::collections::BTreeMap;

    fn both<T>(bytes: &[u8]) -> (Result<T, DecodeError>, Result<T, rmp_serde::decode::Error>)
    where
        T: for<'de> Deserialize<'de>,
    {
        (from_slice(bytes), rmp_serde::from_slice(bytes))
    }

    /// `value` written by rmp_serde reads back the same with both readers.
    fn round_trip<T>(value: &T)
    where
        T: Serialize + for<'de> Deserialize<'de> + PartialEq + fmt::Debug,
    {
        let bytes = rmp_serde::to_vec_named(value).unwrap();
        let (ours, theirs) = both::<T>(&bytes);
        assert_eq!(ours.as_ref().ok(), Some(value), "{ours:?}");
        assert_eq!(theirs.as_ref().ok(), Some(value), "{theirs:?}");
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Unit;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Newtype(u32);

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Pair(i16, String);

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Shape {
        Empty,
        Circle(f64),
        Point(i32, i32),
        Rect { w: u16, h: u16 },
        Nested(Box<Shape>),
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum Tagged {
        Text { text: String },
        Done { tokens: u64 },
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(untagged)]
    enum Either {
        Num(i64),
        Words(Vec<String>),
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Everything {
        unit: Unit,
        newtype: Newtype,
        pair: Pair,
        shapes: Vec<Shape>,
        tagged: Vec<Tagged>,
        either: Vec<Either>,
        none: Option<u8>,
        some: Option<Option<String>>,
        map: BTreeMap<String, Vec<f32>>,
        ints: (u8, u16, u32, u64, i8, i16, i32, i64),
        floats: (f32, f64),
        flag: bool,
        ch: char,
        json: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        skipped: Option<String>,
    }

    fn everything() -> Everything {
        Everything {
            unit: Unit,
            newtype: Newtype(70_000),
            pair: Pair(-300, "pair".into()),
            shapes: vec![
                Shape::Empty,
                Shape::Circle(1.5),
                Shape::Point(-1, 1 << 20),
                Shape::Rect { w: 3, h: 65_535 },
                Shape::Nested(Box::new(Shape::Nested(Box::new(Shape::Empty)))),
            ],
            tagged: vec![
                Tagged::Text {
                    text: "héllo".into(),
                },
                Tagged::Done { tokens: u64::MAX },
            ],
            either: vec![Either::Num(-5), Either::Words(vec!["a".into(), "b".into()])],
            none: None,
            some: Some(Some("x".repeat(300))),
            map: BTreeMap::from([
                ("empty".into(), vec![]),
                ("v".into(), vec![0.25, -1.0, f32::MAX]),
            ]),
            ints: (
                255,
                65_535,
                u32::MAX,
                u64::MAX,
                i8::MIN,
                i16::MIN,
                i32::MIN,
                i64::MIN,
            ),
            floats: (f32::MIN_POSITIVE, -0.1),
            flag: true,
            ch: 'ß',
            json: json!({"a": [1, -2, 3.5, "s", null, true, {"b": {}}], "long": "y".repeat(70_000)}),
            skipped: None,
        }
    }

    #[test]
    fn what_rmp_serde_writes_reads_back_the_same() {
        round_trip(&everything());
        round_trip(&Shape::Empty);
        round_trip(&Shape::Rect { w: 1, h: 2 });
        round_trip(&Unit);
        round_trip(&vec![0u8; 70_000]);
        round_trip(&String::new());
        round_trip(&Value::Null);
        round_trip(
            &(0..20)
                .map(|i| (i.to_string(), i))
                .collect::<BTreeMap<_, _>>(),
        );
    }

    #[test]
    fn every_integer_width_reads_as_rmp_serde_reads_it() {
        let values: [i128; 18] = [
            0,
            127,
            128,
            255,
            256,
            65_535,
            65_536,
            u32::MAX as i128,
            u32::MAX as i128 + 1,
            u64::MAX as i128,
            -1,
            -32,
            -33,
            -128,
            -129,
            -32_768,
            -32_769,
            i64::MIN as i128,
        ];
        for v in values {
            let bytes = if v >= 0 {
                rmp_serde::to_vec(&(v as u64)).unwrap()
            } else {
                rmp_serde::to_vec(&(v as i64)).unwrap()
            };
            let (ours, theirs) = both::<Value>(&bytes);
            assert_eq!(ours.unwrap(), theirs.unwrap(), "{v}");
            let (ours, theirs) = both::<i64>(&bytes);
            assert_eq!(ours.ok(), theirs.ok(), "{v} as i64");
            let (ours, theirs) = both::<u16>(&bytes);
            assert_eq!(ours.ok(), theirs.ok(), "{v} as u16");
            let (ours, theirs) = both::<f64>(&bytes);
            assert_eq!(ours.ok(), theirs.ok(), "{v} as f64");
        }
    }

    #[test]
    fn an_enum_reads_from_each_form_rmp_serde_reads() {
        // A unit variant as its name, and as a map of its name to nil.
        assert_eq!(from_slice::<Shape>(b"\xa5Empty").unwrap(), Shape::Empty);
        assert_eq!(
            from_slice::<Shape>(b"\x81\xa5Empty\xc0").unwrap(),
            Shape::Empty
        );
        // A unit variant's content that is not nil; content for a variant
        // named alone; a map of two entries.
        assert!(from_slice::<Shape>(b"\x81\xa5Empty\x01").is_err());
        assert!(from_slice::<Shape>(b"\xa6Circle").is_err());
        assert!(from_slice::<Shape>(b"\x82\xa5Empty\xc0\xa5Empty\xc0").is_err());
        // A variant by index, as a serde identifier may be.
        assert_eq!(from_slice::<Shape>(b"\x00").unwrap(), Shape::Empty);
        for bytes in [
            &b"\xa5Empty"[..],
            b"\x81\xa5Empty\xc0",
            b"\x81\xa5Empty\x01",
            b"\xa6Circle",
            b"\x82\xa5Empty\xc0\xa5Empty\xc0",
            b"\x00",
            b"\x91\xa5Empty",
            b"\x81\xa6Circle\xcb\x3f\xf8\0\0\0\0\0\0",
            b"\x81\xa5Point\x92\x01\x02",
            b"\x81\xa5Point\x93\x01\x02\x03",
            b"\x81\xa4Rect\x82\xa1w\x01\xa1h\x02",
            b"\x81\xa7Unknown\xc0",
            // An array is not an enum's map, whatever follows it.
            b"\x91\xa5Empty\xc0",
            b"\x91\xa6Circle\x05",
            // map16 of one entry.
            b"\xde\x00\x01\xa5Point\x92\x01\x02",
        ] {
            let (ours, theirs) = both::<Shape>(bytes);
            assert_eq!(ours.ok(), theirs.ok(), "{bytes:?}");
        }
    }

    #[test]
    fn wide_integers_and_long_lengths_read_as_rmp_serde_reads_them() {
        round_trip(&u128::MAX);
        round_trip(&i128::MIN);
        round_trip(&-5i128);
        round_trip(&(1u128 << 70));
        // A 128-bit integer written small (as an `u64` field that grew),
        // given to the visitor as 128 bits, as rmp_serde gives it.
        assert_eq!(from_slice::<u128>(b"\x07").unwrap(), 7);
        assert_eq!(from_slice::<i128>(b"\xff").unwrap(), -1);
        struct Wide(i128);
        impl<'de> Deserialize<'de> for Wide {
            fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = Wide;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str("128 bits")
                    }
                    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Wide, E> {
                        Ok(Wide(v))
                    }
                }
                d.deserialize_i128(V)
            }
        }
        for bytes in [
            &b"\x07"[..],
            b"\xff",
            b"\xcf\xff\xff\xff\xff\xff\xff\xff\xff",
        ] {
            let (ours, theirs) = both::<Wide>(bytes);
            assert_eq!(ours.unwrap().0, theirs.unwrap().0, "{bytes:?}");
        }
        assert!(from_slice::<u128>(b"\xff").is_err());
        assert!(from_slice::<i128>(b"\xc4\x02\x00\x01").is_err());
        // bin32, str32, array32 and map32 heads, which the writer uses only
        // past 65,535 items or bytes: written by hand here.
        let mut bin32 = vec![0xc6, 0, 0, 0, 3];
        bin32.extend([1, 2, 3]);
        let (ours, theirs) = both::<serde_json::Value>(&bin32);
        assert!(ours.is_err() && theirs.is_err(), "Value takes no bytes");
        let mut str32 = vec![0xdb, 0, 0, 0, 2];
        str32.extend(b"hi");
        assert_eq!(from_slice::<String>(&str32).unwrap(), "hi");
        let array32 = [0xdd, 0, 0, 0, 2, 0x01, 0x02];
        assert_eq!(from_slice::<Vec<u8>>(&array32).unwrap(), [1, 2]);
        let map32 = [0xdf, 0, 0, 0, 1, 0xa1, b'v', 0x05];
        let (ours, theirs) = both::<BTreeMap<String, u8>>(&map32);
        assert_eq!(ours.unwrap(), theirs.unwrap());
    }

    /// (A guard: the previous version also read this, by another path.)
    #[test]
    fn a_skipped_field_is_not_read_for_its_strings() {
        #[derive(Debug, PartialEq, Deserialize)]
        struct Only {
            v: u8,
        }
        // {"z": <string of bytes 0xff 0xfe>, "v": 1}: the unknown field's
        // string is skipped unread, as rmp_serde skips it.
        let bytes = b"\x82\xa1z\xa2\xff\xfe\xa1v\x01";
        let (ours, theirs) = both::<Only>(bytes);
        assert_eq!(ours.unwrap(), Only { v: 1 });
        assert_eq!(theirs.unwrap(), Only { v: 1 });
    }

    #[test]
    fn a_struct_is_read_only_from_a_map() {
        // What `rmp_serde::to_vec` (not `_named`) writes: the fields in an
        // array. rmp_serde reads it; the platform never writes it.
        let rect = Shape::Rect { w: 1, h: 2 };
        let compact = rmp_serde::to_vec(&rect).unwrap();
        assert_eq!(rmp_serde::from_slice::<Shape>(&compact).unwrap(), rect);
        let err = from_slice::<Shape>(&compact).unwrap_err();
        assert!(
            err.to_string().contains("expected a map (a struct)"),
            "{err}"
        );
        let pair = rmp_serde::to_vec(&(1u8, 2u8)).unwrap();
        assert_eq!(from_slice::<(u8, u8)>(&pair).unwrap(), (1, 2));
        // A sequence is read only from an array.
        let map = rmp_serde::to_vec_named(&BTreeMap::from([("a", 1)])).unwrap();
        assert!(from_slice::<Vec<u8>>(&map).is_err());
        assert!(from_slice::<Vec<u8>>(b"\xc4\x01\x07").is_err());
    }

    #[test]
    fn a_type_must_read_every_item_it_is_given() {
        // A pair from an array of three.
        let bytes = rmp_serde::to_vec(&(1u8, 2u8, 3u8)).unwrap();
        assert_eq!(
            from_slice::<(u8, u8)>(&bytes),
            Err(DecodeError::Length { len: 3, read: 2 })
        );
        assert!(rmp_serde::from_slice::<(u8, u8)>(&bytes).is_err());
        // Unknown fields of a struct are skipped, not refused.
        #[derive(Debug, PartialEq, Deserialize)]
        struct Only {
            v: u16,
        }
        let bytes =
            rmp_serde::to_vec_named(&json!({"a": [1, {"b": "c"}], "v": 7, "z": null})).unwrap();
        assert_eq!(from_slice::<Only>(&bytes).unwrap(), Only { v: 7 });
    }

    #[test]
    fn a_string_that_is_not_utf8_is_bytes_or_an_error() {
        // fixstr of two bytes, 0xff 0xfe.
        let bytes = b"\xa2\xff\xfe";
        assert_eq!(
            from_slice::<String>(bytes),
            Err(DecodeError::Utf8 { at: 1 })
        );
        assert!(rmp_serde::from_slice::<String>(bytes).is_err());
        struct Bytes(Vec<u8>);
        impl<'de> Deserialize<'de> for Bytes {
            fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = Bytes;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str("bytes")
                    }
                    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                        Ok(Bytes(v.to_vec()))
                    }
                }
                d.deserialize_any(V)
            }
        }
        assert_eq!(from_slice::<Bytes>(bytes).unwrap().0, [0xff, 0xfe]);
        assert_eq!(from_slice::<Bytes>(b"\xc4\x01\x07").unwrap().0, [7]);
    }

    #[test]
    fn bytes_after_the_value_extensions_and_0xc1_are_refused() {
        assert_eq!(
            from_slice::<u8>(b"\x01\x02"),
            Err(DecodeError::Trailing { left: 1 })
        );
        assert_eq!(
            from_slice::<Value>(b"\xc1"),
            Err(DecodeError::Marker {
                marker: 0xc1,
                at: 0
            })
        );
        assert_eq!(
            from_slice::<Value>(b"\x91\xd4\x01\x02"),
            Err(DecodeError::Marker {
                marker: 0xd4,
                at: 1
            })
        );
    }

    #[test]
    fn nesting_stops_at_the_depth_limit_as_rmp_serde_does() {
        // serde_json's `Value` recurses once per level, in both readers:
        // a thread with room for a thousand levels of a debug build.
        std::thread::Builder::new()
            .stack_size(256 << 20)
            .spawn(nesting)
            .unwrap()
            .join()
            .unwrap();
    }

    fn nesting() {
        for depth in [
            MAX_DEPTH as usize - 2,
            MAX_DEPTH as usize - 1,
            MAX_DEPTH as usize,
            100_000,
        ] {
            let mut bytes = vec![0x91; depth];
            bytes.push(0xc0);
            let (ours, theirs) = both::<Value>(&bytes);
            assert_eq!(ours.is_ok(), theirs.is_ok(), "depth {depth}");
            if depth >= MAX_DEPTH as usize {
                assert_eq!(ours, Err(DecodeError::TooDeep));
            }
        }
        // Skipping is not recursive: a deep value in an unknown field is
        // skipped whatever its depth.
        #[derive(Debug, Deserialize)]
        struct Only {
            #[allow(dead_code)]
            v: u8,
        }
        let mut bytes = b"\x82\xa1v\x01\xa1z".to_vec();
        bytes.extend(std::iter::repeat_n(0x91, 100_000));
        bytes.push(0xc0);
        assert!(from_slice::<Only>(&bytes).is_ok());
    }

    #[test]
    fn a_field_is_read_without_what_follows_it() {
        let head = rmp_serde::to_vec_named(&json!({"v": 1})).unwrap();
        assert_eq!(field::<u16>(&head, "v"), Ok(Some(1)));
        // What follows the field is not read, even when it is broken.
        let mut cut = rmp_serde::to_vec_named(&json!({"v": 2, "w": "x".repeat(40)})).unwrap();
        cut.truncate(cut.len() - 10);
        assert_eq!(field::<u16>(&cut, "v"), Ok(Some(2)));
        // Fields before it are skipped, whatever they hold.
        let later = rmp_serde::to_vec_named(&json!({"a": [1, {"b": null}], "v": 3})).unwrap();
        assert_eq!(field::<u16>(&later, "v"), Ok(Some(3)));
        assert_eq!(field::<u16>(&later, "z"), Ok(None));
        // A key that is not a string, even an array or a map, is skipped
        // whole: {[1, 2]: 0, {"v": 9}: 0, "v": 4}.
        let odd_keys = b"\x83\x92\x01\x02\x00\x81\xa1v\x09\x00\xa1v\x04";
        assert_eq!(field::<u16>(odd_keys, "v"), Ok(Some(4)));
        assert!(field::<u16>(b"\x92\x01\x02", "v").is_err());
        assert!(field::<u16>(b"\x81\xa1v\xa1x", "v").is_err());
    }

    #[test]
    fn the_depth_count_never_wraps() {
        let mut de = Deserializer::new(b"");
        de.depth = 1;
        assert_eq!(de.enter(), Err(DecodeError::TooDeep));
        assert_eq!(de.depth, 1);
        de.depth = 0;
        assert_eq!(de.enter(), Err(DecodeError::TooDeep));
        assert_eq!(de.depth, 0);
        de.depth = 2;
        assert_eq!(de.enter(), Ok(()));
        assert_eq!(de.depth, 1);
    }

    #[test]
    fn a_message_cut_anywhere_is_an_error_not_a_panic() {
        let bytes = rmp_serde::to_vec_named(&everything()).unwrap();
        for cut in 0..bytes.len() {
            assert!(
                from_slice::<Everything>(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
            assert!(from_slice::<Value>(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    /// A small deterministic generator (xorshift), for the comparison below.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A random JSON-like value, nested up to `depth`.
    fn random_value(rng: &mut Rng, depth: u32) -> Value {
        match rng.below(if depth == 0 { 6 } else { 8 }) {
            0 => Value::Null,
            1 => Value::Bool(rng.below(2) == 1),
            2 => json!(rng.next() >> rng.below(64)),
            3 => json!(-((rng.next() >> (rng.below(63) + 1)) as i64)),
            4 => json!((rng.next() as f64) / 7.0e3),
            5 => Value::String(
                (0..rng.below(40))
                    .map(|_| char::from_u32(rng.below(0x3000) as u32).unwrap_or('?'))
                    .collect(),
            ),
            6 => Value::Array(
                (0..rng.below(5))
                    .map(|_| random_value(rng, depth - 1))
                    .collect(),
            ),
            _ => Value::Object(
                (0..rng.below(5))
                    .map(|i| (format!("k{i}"), random_value(rng, depth - 1)))
                    .collect(),
            ),
        }
    }

    #[test]
    fn random_and_damaged_input_reads_as_rmp_serde_reads_it() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..3_000 {
            let value = random_value(&mut rng, 4);
            let mut bytes = rmp_serde::to_vec_named(&value).unwrap();
            assert_eq!(from_slice::<Value>(&bytes).unwrap(), value);
            // Damage: change a few bytes. Both readers must agree on what
            // the result is; rmp_serde does not refuse bytes after the
            // value, so those are cut off first for the comparison.
            for _ in 0..=rng.below(3) {
                if bytes.is_empty() {
                    break;
                }
                let i = rng.below(bytes.len() as u64) as usize;
                bytes[i] = rng.next() as u8;
            }
            let theirs = rmp_serde::from_slice::<Value>(&bytes);
            let mut de = Deserializer::new(&bytes);
            let ours = Value::deserialize(&mut de);
            assert_eq!(ours.as_ref().ok(), theirs.as_ref().ok(), "{bytes:02x?}");
            if let Ok(v) = ours {
                let whole = from_slice::<Value>(&bytes);
                if de.pos == bytes.len() {
                    assert_eq!(whole, Ok(v));
                } else {
                    assert!(matches!(whole, Err(DecodeError::Trailing { .. })));
                }
            }
        }
    }
}
