//! Column values from pgoutput's text format to JSON, by the column's type: the one conversion
//! both the snapshot and the stream go through, so a row reads the same in both.

use serde_json::{Map, Number, Value};

/// The value Debezium writes for an unchanged TOAST column the change does not carry (the
/// server sends "unchanged" instead of the value, unless the table's replica identity is FULL).
/// Kept verbatim so consumers written for Debezium recognise it.
pub const UNAVAILABLE: &str = "__debezium_unavailable_value";

// Type OIDs of pg_type (stable across PostgreSQL versions).
const BOOL: u32 = 16;
const INT8: u32 = 20;
const INT2: u32 = 21;
const INT4: u32 = 23;
const OID: u32 = 26;
const JSON: u32 = 114;
const FLOAT4: u32 = 700;
const FLOAT8: u32 = 701;
const JSONB: u32 = 3802;

/// One column's text value as JSON: integers and booleans as such, floats as numbers when
/// finite, `json`/`jsonb` parsed; everything else (numeric, text, dates, uuids, arrays) as the
/// server's text, which loses nothing.
pub fn to_json(type_id: u32, text: &str) -> Value {
    match type_id {
        BOOL => match text {
            "t" => Value::Bool(true),
            "f" => Value::Bool(false),
            other => Value::String(other.to_owned()),
        },
        INT2 | INT4 | INT8 | OID => text
            .parse::<i64>()
            .map(|i| Value::Number(i.into()))
            .unwrap_or_else(|_| Value::String(text.to_owned())),
        FLOAT4 | FLOAT8 => text
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(text.to_owned())),
        JSON | JSONB => {
            serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
        }
        _ => Value::String(text.to_owned()),
    }
}

/// A column: its name, type and whether it is part of the replica identity (the key).
#[derive(Clone, Debug, PartialEq)]
pub struct Column {
    pub name: String,
    pub type_id: u32,
    pub key: bool,
}

/// A row as JSON, in the table's column order. Columns the change does not carry (unchanged
/// TOAST values) are taken from `previous` when it has them, else written as [`UNAVAILABLE`].
pub fn row(
    columns: &[Column],
    data: &pg_walstream::RowData,
    previous: Option<&Map<String, Value>>,
) -> Map<String, Value> {
    let mut out = Map::with_capacity(columns.len());
    for c in columns {
        let v = match data.get(&c.name) {
            Some(pg_walstream::ColumnValue::Null) => Value::Null,
            Some(pg_walstream::ColumnValue::Text(b)) => {
                to_json(c.type_id, &String::from_utf8_lossy(b))
            }
            Some(pg_walstream::ColumnValue::Binary(b)) => {
                let mut hex = String::with_capacity(2 + b.len() * 2);
                hex.push_str("\\x");
                for byte in b.iter() {
                    hex.push_str(&format!("{byte:02x}"));
                }
                Value::String(hex)
            }
            None => previous
                .and_then(|p| p.get(&c.name))
                .filter(|v| v.as_str() != Some(UNAVAILABLE))
                .cloned()
                .unwrap_or_else(|| Value::String(UNAVAILABLE.to_owned())),
        };
        out.insert(c.name.clone(), v);
    }
    out
}

/// Only the key columns of a row that has them (a delete under the default replica identity
/// carries nothing else).
pub fn key_only(columns: &[Column], data: &pg_walstream::RowData) -> Map<String, Value> {
    let keyed: Vec<Column> = columns
        .iter()
        .filter(|c| c.key && data.get(&c.name).is_some())
        .cloned()
        .collect();
    if keyed.is_empty() {
        // Replica identity FULL: every column is in the old row.
        return row(columns, data, None);
    }
    row(&keyed, data, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn converts_by_type() {
        assert_eq!(to_json(BOOL, "t"), json!(true));
        assert_eq!(
            to_json(INT8, "-9007199254740993"),
            json!(-9007199254740993_i64)
        );
        assert_eq!(to_json(INT4, "12"), json!(12));
        assert_eq!(to_json(FLOAT8, "1.5"), json!(1.5));
        assert_eq!(to_json(FLOAT8, "NaN"), json!("NaN"));
        assert_eq!(to_json(JSONB, r#"{"a": [1]}"#), json!({"a": [1]}));
        assert_eq!(
            to_json(1700, "12.30"),
            json!("12.30"),
            "numeric keeps its digits"
        );
        assert_eq!(to_json(25, "hello"), json!("hello"));
        assert_eq!(
            to_json(INT4, "x"),
            json!("x"),
            "a bad number is kept, not lost"
        );
    }

    fn cols() -> Vec<Column> {
        vec![
            Column {
                name: "id".into(),
                type_id: INT4,
                key: true,
            },
            Column {
                name: "doc".into(),
                type_id: 25,
                key: false,
            },
        ]
    }

    #[test]
    fn unchanged_toast_comes_from_the_previous_row_or_is_marked() {
        let data =
            pg_walstream::RowData::from_pairs(vec![("id", pg_walstream::ColumnValue::text("1"))]);
        let r = row(&cols(), &data, None);
        assert_eq!(r["id"], json!(1));
        assert_eq!(r["doc"], json!(UNAVAILABLE));
        let mut prev = Map::new();
        prev.insert("doc".into(), json!("big"));
        assert_eq!(row(&cols(), &data, Some(&prev))["doc"], json!("big"));
    }

    #[test]
    fn key_only_keeps_the_key() {
        let data =
            pg_walstream::RowData::from_pairs(vec![("id", pg_walstream::ColumnValue::text("7"))]);
        assert_eq!(Value::Object(key_only(&cols(), &data)), json!({"id": 7}));
    }
}
