//! Parameters and rows that mean the same on SQLite and PostgreSQL.

use bytes::BytesMut;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use crate::{Error, Result};

/// A SQL value. Integers are 64-bit (bound to `INT2`/`INT4` columns they are narrowed, checked);
/// there is deliberately no floating point: money is integer minor units.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
    Bool(bool),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Null => "NULL",
            Value::Int(_) => "integer",
            Value::Text(_) => "text",
            Value::Bytes(_) => "bytes",
            Value::Bool(_) => "boolean",
        }
    }
}

macro_rules! from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Self { Value::Int(v as i64) }
        }
    )*};
}
from_int!(i64, i32, u32, u16, u8);

impl From<u64> for Value {
    /// Values above `i64::MAX` do not occur in shopflow (offsets, versions, minor units); they
    /// saturate rather than wrap.
    fn from(v: u64) -> Self {
        Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Text(v.clone())
    }
}
impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Bytes(v)
    }
}
impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Self {
        Value::Bytes(v.to_vec())
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// Builds a parameter list: `params![id, "text", 5]`.
#[macro_export]
macro_rules! params {
    ($($v:expr),* $(,)?) => { &[$($crate::Value::from($v)),*][..] };
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Value::Bytes(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
            Value::Bool(b) => ToSqlOutput::Borrowed(ValueRef::Integer(i64::from(*b))),
        })
    }
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) => match *ty {
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                // SQLite keeps booleans as 0 and 1 (a copied row arrives as integers).
                Type::BOOL => (*i != 0).to_sql(ty, out),
                _ => i.to_sql(ty, out),
            },
            Value::Text(s) => s.to_sql(ty, out),
            Value::Bytes(b) => b.to_sql(ty, out),
            Value::Bool(b) => b.to_sql(ty, out),
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// One result row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row(pub Vec<Value>);

impl Row {
    fn get(&self, index: usize) -> Result<&Value> {
        self.0.get(index).ok_or(Error::Column {
            index,
            expected: "a column",
            found: "nothing",
        })
    }

    fn wrong(index: usize, expected: &'static str, v: &Value) -> Error {
        Error::Column {
            index,
            expected,
            found: v.kind(),
        }
    }

    pub fn i64(&self, index: usize) -> Result<i64> {
        match self.get(index)? {
            Value::Int(i) => Ok(*i),
            v => Err(Self::wrong(index, "integer", v)),
        }
    }

    pub fn u64(&self, index: usize) -> Result<u64> {
        let i = self.i64(index)?;
        u64::try_from(i).map_err(|_| Error::Corrupt {
            what: "column",
            reason: format!("column {index} holds negative {i} where an unsigned value belongs"),
        })
    }

    pub fn opt_i64(&self, index: usize) -> Result<Option<i64>> {
        match self.get(index)? {
            Value::Null => Ok(None),
            _ => self.i64(index).map(Some),
        }
    }

    pub fn str(&self, index: usize) -> Result<&str> {
        match self.get(index)? {
            Value::Text(s) => Ok(s),
            v => Err(Self::wrong(index, "text", v)),
        }
    }

    pub fn opt_str(&self, index: usize) -> Result<Option<&str>> {
        match self.get(index)? {
            Value::Null => Ok(None),
            _ => self.str(index).map(Some),
        }
    }

    pub fn bytes(&self, index: usize) -> Result<&[u8]> {
        match self.get(index)? {
            Value::Bytes(b) => Ok(b),
            Value::Text(s) => Ok(s.as_bytes()),
            v => Err(Self::wrong(index, "bytes", v)),
        }
    }

    pub fn opt_bytes(&self, index: usize) -> Result<Option<&[u8]>> {
        match self.get(index)? {
            Value::Null => Ok(None),
            _ => self.bytes(index).map(Some),
        }
    }

    pub fn bool(&self, index: usize) -> Result<bool> {
        match self.get(index)? {
            Value::Bool(b) => Ok(*b),
            Value::Int(i) => Ok(*i != 0),
            v => Err(Self::wrong(index, "boolean", v)),
        }
    }

    pub(crate) fn from_sqlite(row: &rusqlite::Row<'_>, columns: usize) -> Result<Self> {
        use rusqlite::types::ValueRef;
        let mut out = Vec::with_capacity(columns);
        for i in 0..columns {
            out.push(match row.get_ref(i)? {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(v) => Value::Int(v),
                ValueRef::Real(_) => {
                    return Err(Error::Column {
                        index: i,
                        expected: "integer, text or bytes",
                        found: "floating point",
                    });
                }
                ValueRef::Text(t) => Value::Text(text(t)),
                ValueRef::Blob(b) => Value::Bytes(b.to_vec()),
            });
        }
        Ok(Row(out))
    }

    pub(crate) fn from_postgres(row: &tokio_postgres::Row) -> Result<Self> {
        let mut out = Vec::with_capacity(row.len());
        for (i, col) in row.columns().iter().enumerate() {
            let ty = col.type_();
            let v = if *ty == Type::INT8 {
                row.try_get::<_, Option<i64>>(i)?.map(Value::Int)
            } else if *ty == Type::INT4 {
                row.try_get::<_, Option<i32>>(i)?
                    .map(|v| Value::Int(v.into()))
            } else if *ty == Type::INT2 {
                row.try_get::<_, Option<i16>>(i)?
                    .map(|v| Value::Int(v.into()))
            } else if *ty == Type::TEXT
                || *ty == Type::VARCHAR
                || *ty == Type::NAME
                || *ty == Type::BPCHAR
            {
                row.try_get::<_, Option<String>>(i)?.map(Value::Text)
            } else if *ty == Type::BYTEA {
                row.try_get::<_, Option<Vec<u8>>>(i)?.map(Value::Bytes)
            } else if *ty == Type::BOOL {
                row.try_get::<_, Option<bool>>(i)?.map(Value::Bool)
            } else {
                return Err(Error::Column {
                    index: i,
                    expected: "int, text, bytea or bool",
                    found: "another PostgreSQL type",
                });
            };
            out.push(v.unwrap_or(Value::Null));
        }
        Ok(Row(out))
    }
}

/// SQLite text as a `String`: invalid UTF-8 (text another program wrote) is replaced, as
/// `String::from_utf8_lossy` does; valid text, the usual case, takes the faster check of
/// `str::from_utf8` (lossy conversion walks byte by byte: 1 % of `bench e2e`'s instructions).
pub(crate) fn text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn text_keeps_valid_utf8_and_replaces_invalid_bytes() {
        assert_eq!(super::text("grüße €".as_bytes()), "grüße €");
        assert_eq!(super::text(b"ok \xff\xfe end"), "ok \u{fffd}\u{fffd} end");
        assert_eq!(super::text(b""), "");
    }
}
