//! Durable Object SQLite plumbing shared by the actors' shells: one `exec`
//! that runs a statement to completion, typed row decoding ([`FromRow`],
//! [`FromValue`]) instead of ad hoc slice patterns, typed errors, and the
//! tenant ownership check every per-tenant object makes.
//!
//! Decoding is strict on purpose: a row of the wrong shape is an error that
//! names the query, never a silent default, so a schema drift shows up as a
//! 500 with a reason rather than as wrong numbers.

use protocol::{ErrorCode, ErrorReply, TenantId};
use worker::{SqlStorage, SqlStorageValue};

/// A statement failed or its rows were not of the expected shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SqlError {
    /// SQLite refused the statement or failed while running it.
    #[error("storage: {0}")]
    Exec(String),
    /// A row did not decode into the expected type.
    #[error("storage: unexpected row from {query:?}: {message}")]
    Shape {
        /// The statement's first words, to say which one.
        query: String,
        /// What did not fit.
        message: String,
    },
}

impl From<SqlError> for ErrorReply {
    /// Storage is the object's own: a failure is internal (500).
    fn from(e: SqlError) -> Self {
        ErrorReply::new(ErrorCode::Internal, e.to_string())
    }
}

/// A value decoded from one SQLite column.
pub trait FromValue: Sized {
    /// The column's value as `Self`, or why not.
    fn from_value(value: &SqlStorageValue) -> Result<Self, String>;
}

/// A value decoded from one row.
pub trait FromRow: Sized {
    /// The row's columns as `Self`, or why not.
    fn from_row(row: &[SqlStorageValue]) -> Result<Self, String>;
}

impl FromValue for i64 {
    fn from_value(value: &SqlStorageValue) -> Result<Self, String> {
        match value {
            SqlStorageValue::Integer(n) => Ok(*n),
            // SQLite hands back whole-number aggregates as floats sometimes.
            SqlStorageValue::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(*f as i64),
            other => Err(format!("expected an integer, got {other:?}")),
        }
    }
}

impl FromValue for u64 {
    fn from_value(value: &SqlStorageValue) -> Result<Self, String> {
        let n = i64::from_value(value)?;
        u64::try_from(n).map_err(|_| format!("expected a count, got {n}"))
    }
}

impl FromValue for u32 {
    fn from_value(value: &SqlStorageValue) -> Result<Self, String> {
        let n = i64::from_value(value)?;
        u32::try_from(n).map_err(|_| format!("expected a small count, got {n}"))
    }
}

impl FromValue for f64 {
    fn from_value(value: &SqlStorageValue) -> Result<Self, String> {
        match value {
            SqlStorageValue::Float(f) => Ok(*f),
            SqlStorageValue::Integer(n) => Ok(*n as f64),
            other => Err(format!("expected a number, got {other:?}")),
        }
    }
}

impl FromValue for String {
    fn from_value(value: &SqlStorageValue) -> Result<Self, String> {
        match value {
            SqlStorageValue::String(s) => Ok(s.clone()),
            other => Err(format!("expected text, got {other:?}")),
        }
    }
}

impl FromValue for Vec<u8> {
    fn from_value(value: &SqlStorageValue) -> Result<Self, String> {
        match value {
            SqlStorageValue::Blob(b) => Ok(b.clone()),
            other => Err(format!("expected a blob, got {other:?}")),
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: &SqlStorageValue) -> Result<Self, String> {
        match value {
            SqlStorageValue::Null => Ok(None),
            other => T::from_value(other).map(Some),
        }
    }
}

macro_rules! tuple_from_row {
    ($n:literal; $($t:ident $i:tt),+) => {
        impl<$($t: FromValue),+> FromRow for ($($t,)+) {
            fn from_row(row: &[SqlStorageValue]) -> Result<Self, String> {
                if row.len() != $n {
                    return Err(format!("expected {} columns, got {}", $n, row.len()));
                }
                Ok(($(
                    $t::from_value(row.get($i).ok_or("missing column")?)
                        .map_err(|e| format!("column {}: {e}", $i))?,
                )+))
            }
        }
    };
}

tuple_from_row!(1; A 0);
tuple_from_row!(2; A 0, B 1);
tuple_from_row!(3; A 0, B 1, C 2);
tuple_from_row!(4; A 0, B 1, C 2, D 3);
tuple_from_row!(5; A 0, B 1, C 2, D 3, E 4);
tuple_from_row!(6; A 0, B 1, C 2, D 3, E 4, F 5);
tuple_from_row!(7; A 0, B 1, C 2, D 3, E 4, F 5, G 6);
tuple_from_row!(8; A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7);

fn shape(query: &str, message: String) -> SqlError {
    SqlError::Shape {
        query: query
            .split_whitespace()
            .take(6)
            .collect::<Vec<_>>()
            .join(" "),
        message,
    }
}

/// Runs a statement to completion (no rows expected, or rows ignored).
pub fn exec(sql: &SqlStorage, query: &str, bindings: Vec<SqlStorageValue>) -> Result<(), SqlError> {
    let cursor = sql
        .exec(query, bindings)
        .map_err(|e| SqlError::Exec(e.to_string()))?;
    for row in cursor.raw() {
        row.map_err(|e| SqlError::Exec(e.to_string()))?;
    }
    Ok(())
}

/// The rows of a query, each decoded as it is read: a caller that stops
/// early reads no further.
pub fn rows_lazily<'q, T: FromRow>(
    sql: &SqlStorage,
    query: &'q str,
    bindings: Vec<SqlStorageValue>,
) -> Result<impl Iterator<Item = Result<T, SqlError>> + 'q, SqlError> {
    let cursor = sql
        .exec(query, bindings)
        .map_err(|e| SqlError::Exec(e.to_string()))?;
    Ok(cursor.raw().map(move |row| {
        let row = row.map_err(|e| SqlError::Exec(e.to_string()))?;
        T::from_row(&row).map_err(|m| shape(query, m))
    }))
}

/// Every row of a query, decoded.
pub fn rows<T: FromRow>(
    sql: &SqlStorage,
    query: &str,
    bindings: Vec<SqlStorageValue>,
) -> Result<Vec<T>, SqlError> {
    rows_lazily(sql, query, bindings)?.collect()
}

/// The first row of a query, decoded, if there is one.
pub fn first<T: FromRow>(
    sql: &SqlStorage,
    query: &str,
    bindings: Vec<SqlStorageValue>,
) -> Result<Option<T>, SqlError> {
    rows_lazily(sql, query, bindings)?.next().transpose()
}

/// The single value of a query that always yields one row (`COUNT(*)`,
/// `COALESCE(SUM(..), 0)`).
pub fn scalar<T: FromValue>(
    sql: &SqlStorage,
    query: &str,
    bindings: Vec<SqlStorageValue>,
) -> Result<T, SqlError> {
    first::<(T,)>(sql, query, bindings)?
        .map(|(v,)| v)
        .ok_or_else(|| shape(query, "no row".into()))
}

/// An integer binding. SQLite integers are `i64`; counts and times here stay
/// far below `i64::MAX`, and one that does not fit saturates rather than wraps.
pub fn int(n: impl TryInto<i64>) -> SqlStorageValue {
    SqlStorageValue::Integer(n.try_into().unwrap_or(i64::MAX))
}

/// Creates the owner table: the tenant the object belongs to.
pub const OWNER_SCHEMA: &str =
    "CREATE TABLE IF NOT EXISTS owner (id INTEGER PRIMARY KEY CHECK (id = 1), tenant TEXT NOT NULL)";

/// Why a tenant may not use an object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OwnerError {
    /// The object belongs to another tenant.
    #[error("this object belongs to another tenant")]
    WrongTenant,
    /// Nothing claimed the object yet and the caller has no tenant to claim
    /// it with (an alarm before any request).
    #[error("the object has no tenant yet")]
    Unclaimed,
    /// The stored tenant is unreadable or storage failed.
    #[error("{0}")]
    Storage(#[from] SqlError),
}

impl From<OwnerError> for ErrorReply {
    fn from(e: OwnerError) -> Self {
        match e {
            OwnerError::WrongTenant => ErrorReply::new(ErrorCode::WrongTenant, e.to_string()),
            OwnerError::Unclaimed | OwnerError::Storage(_) => {
                ErrorReply::new(ErrorCode::Internal, e.to_string())
            }
        }
    }
}

/// The rule of ownership: the first tenant to reach an object owns it; any
/// other is refused. `stored` is the owner on record, `claimed` the tenant of
/// the request (none for an alarm).
pub fn check_owner(
    stored: Option<&TenantId>,
    claimed: Option<&TenantId>,
) -> Result<TenantId, OwnerError> {
    match (stored, claimed) {
        (Some(own), Some(claimed)) if own != claimed => Err(OwnerError::WrongTenant),
        (Some(own), _) => Ok(own.clone()),
        (None, Some(claimed)) => Ok(claimed.clone()),
        (None, None) => Err(OwnerError::Unclaimed),
    }
}

/// Reads (and on first use records) the object's tenant from the `owner`
/// table, applying [`check_owner`].
pub fn claim_owner(sql: &SqlStorage, claimed: Option<&TenantId>) -> Result<TenantId, OwnerError> {
    exec(sql, OWNER_SCHEMA, vec![])?;
    let stored = first::<(String,)>(sql, "SELECT tenant FROM owner WHERE id = 1", vec![])?
        .map(|(t,)| {
            TenantId::parse(&t).map_err(|e| SqlError::Shape {
                query: "SELECT tenant FROM owner".into(),
                message: e.to_string(),
            })
        })
        .transpose()?;
    let tenant = check_owner(stored.as_ref(), claimed)?;
    if stored.is_none() {
        exec(
            sql,
            "INSERT INTO owner (id, tenant) VALUES (1, ?)",
            vec![tenant.as_str().into()],
        )?;
    }
    Ok(tenant)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rows_decode_by_type_and_refuse_the_wrong_shape() {
        let row = vec![
            SqlStorageValue::String("doc".into()),
            SqlStorageValue::Integer(3),
            SqlStorageValue::Null,
        ];
        let (id, n, gone): (String, u32, Option<i64>) = FromRow::from_row(&row).unwrap();
        assert_eq!((id.as_str(), n, gone), ("doc", 3, None));
        assert!(<(String, u32)>::from_row(&row).is_err(), "column count");
        assert!(<(u32, u32, u32)>::from_row(&row).is_err(), "types");
        assert!(u32::from_value(&SqlStorageValue::Integer(-1)).is_err());
        assert_eq!(u64::from_value(&SqlStorageValue::Float(4.0)), Ok(4));
        assert!(i64::from_value(&SqlStorageValue::Float(4.5)).is_err());
    }

    #[test]
    fn the_first_tenant_owns_the_object() {
        let a = TenantId::parse("acme").unwrap();
        let b = TenantId::parse("beta").unwrap();
        assert_eq!(check_owner(None, Some(&a)), Ok(a.clone()));
        assert_eq!(check_owner(Some(&a), Some(&a)), Ok(a.clone()));
        assert_eq!(check_owner(Some(&a), None), Ok(a.clone()));
        assert_eq!(
            check_owner(Some(&a), Some(&b)),
            Err(OwnerError::WrongTenant)
        );
        assert_eq!(check_owner(None, None), Err(OwnerError::Unclaimed));
        let reply = ErrorReply::from(OwnerError::WrongTenant);
        assert_eq!(reply.code, ErrorCode::WrongTenant);
    }
}
