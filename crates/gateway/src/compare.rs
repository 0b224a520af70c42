//! Shadow comparison: two answers are the same when their statuses are and their bodies are —
//! as JSON without the ignored fields (at any depth), else byte for byte.

use serde_json::Value;

/// Why two answers differ, or `None` when they do not.
pub fn difference(
    a_status: u16,
    a_body: &[u8],
    b_status: u16,
    b_body: &[u8],
    ignore: &[String],
) -> Option<String> {
    if a_status != b_status {
        return Some(format!("status {a_status} vs {b_status}"));
    }
    match (
        serde_json::from_slice::<Value>(a_body),
        serde_json::from_slice::<Value>(b_body),
    ) {
        (Ok(mut a), Ok(mut b)) => {
            strip(&mut a, ignore);
            strip(&mut b, ignore);
            (a != b).then(|| first_difference(&a, &b, String::new()))
        }
        _ => (a_body != b_body).then(|| "bodies differ (not JSON)".to_owned()),
    }
}

/// The body as JSON, or as text when it is not JSON (for the record of a difference).
pub fn readable(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

fn strip(v: &mut Value, ignore: &[String]) {
    match v {
        Value::Object(m) => {
            m.retain(|k, _| !ignore.iter().any(|i| i == k));
            m.values_mut().for_each(|x| strip(x, ignore));
        }
        Value::Array(a) => a.iter_mut().for_each(|x| strip(x, ignore)),
        _ => {}
    }
}

fn first_difference(a: &Value, b: &Value, at: String) -> String {
    let here = if at.is_empty() {
        "the body".to_owned()
    } else {
        at.clone()
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, va) in x {
                match y.get(k) {
                    None => return format!("{at}/{k}: only on one side"),
                    Some(vb) if vb != va => return first_difference(va, vb, format!("{at}/{k}")),
                    _ => {}
                }
            }
            match y.keys().find(|k| !x.contains_key(*k)) {
                Some(k) => format!("{at}/{k}: only on one side"),
                None => format!("{here} differs"),
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                if va != vb {
                    return first_difference(va, vb, format!("{at}/{i}"));
                }
            }
            format!("{here} differs")
        }
        (Value::Array(x), Value::Array(y)) => format!("{here}: {} items vs {}", x.len(), y.len()),
        _ => format!("{here}: {a} vs {b}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_after_ignoring_fields_at_any_depth() {
        let a = br#"[{"sku":"A","price":5,"reserved":1}]"#;
        let b = br#"[{"sku":"A","price":5,"reserved":9}]"#;
        assert!(difference(200, a, 200, b, &["reserved".into()]).is_none());
        let d = difference(200, a, 200, b, &[]).unwrap();
        assert_eq!(d, "/0/reserved: 1 vs 9");
    }

    #[test]
    fn statuses_and_missing_fields_and_text() {
        assert_eq!(
            difference(200, b"{}", 404, b"{}", &[]).unwrap(),
            "status 200 vs 404"
        );
        assert_eq!(
            difference(200, br#"{"a":1}"#, 200, br#"{}"#, &[]).unwrap(),
            "/a: only on one side"
        );
        assert!(difference(200, b"same", 200, b"same", &[]).is_none());
        assert!(difference(200, b"one", 200, b"two", &[]).is_some());
        assert_eq!(readable(b"{\"a\":1}")["a"], 1);
        assert_eq!(readable(b"plain"), Value::String("plain".into()));
    }
}
