//! JSON Schemas of event types, and the rule of what a change to one may be.
//!
//! Every [`Event`](crate::Event) derives [`schemars::JsonSchema`]; [`schema_of`] turns it into the
//! JSON Schema (draft 2020-12) of what its reader accepts. The schemas are committed under
//! `schemas/` (one file per type and version), and [`compare`] decides whether the current Rust
//! type may still carry the version of a committed schema.
//!
//! A change is **compatible** when every event already written at that version still decodes, and
//! a reader built before the change still decodes the events written after it (a rolling upgrade
//! runs both for a while): a new optional field, a widened number, a new enum value, a removed
//! optional field. It is **incompatible** when a new field is required, a required one goes
//! away or becomes optional, a type changes or narrows, an enum value disappears, or null stops
//! being allowed. An
//! incompatible change needs a new version and an upcaster from the old one.

use std::collections::BTreeSet;

use schemars::JsonSchema;
use serde_json::{Map, Value};

/// The JSON Schema of what `T`'s reader accepts.
pub fn schema_of<T: JsonSchema>() -> Value {
    schemars::generate::SchemaSettings::draft2020_12()
        .for_deserialize()
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value()
}

/// One reason a change is incompatible: where (a JSON path into the event's data) and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incompatibility {
    /// `$` for the event itself, `$.items[]` for each line, `$.shippingAddress.city` …
    pub path: String,
    pub what: String,
}

impl std::fmt::Display for Incompatibility {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.what)
    }
}

/// Every reason the schema `new` cannot carry the version whose schema is `old`; empty when the
/// change is compatible (or there is none). Titles, descriptions and examples do not count.
pub fn compare(old: &Value, new: &Value) -> Vec<Incompatibility> {
    let mut c = Comparer {
        old_root: old,
        new_root: new,
        out: Vec::new(),
    };
    c.walk(old, new, "$", 0);
    // A field that became required has also stopped taking null: one reason is enough.
    let required_now: BTreeSet<String> = c
        .out
        .iter()
        .filter(|p| p.what == OPTIONAL_TO_REQUIRED)
        .map(|p| p.path.clone())
        .collect();
    c.out
        .retain(|p| !(p.what == NOT_NULL && required_now.contains(&p.path)));
    c.out.sort_by(|a, b| a.path.cmp(&b.path));
    c.out.dedup();
    c.out
}

const OPTIONAL_TO_REQUIRED: &str = "was optional and is now required";
const NOT_NULL: &str = "can no longer be null";

/// Deeper than this, a schema is taken to be recursive and the walk stops.
const MAX_DEPTH: usize = 32;

struct Comparer<'a> {
    old_root: &'a Value,
    new_root: &'a Value,
    out: Vec<Incompatibility>,
}

impl<'a> Comparer<'a> {
    fn problem(&mut self, path: &str, what: impl Into<String>) {
        self.out.push(Incompatibility {
            path: path.to_owned(),
            what: what.into(),
        });
    }

    fn walk(&mut self, old: &'a Value, new: &'a Value, path: &str, depth: usize) {
        if depth > MAX_DEPTH {
            return;
        }
        let old = resolve(self.old_root, old);
        let new = resolve(self.new_root, new);
        if is_anything(new) {
            return;
        }
        if is_anything(old) {
            self.problem(path, "took any value, now restricted");
            return;
        }
        if new == &Value::Bool(false) {
            self.problem(path, "no value is accepted any more");
            return;
        }
        let old_alts = alternatives(self.old_root, old);
        let new_alts = alternatives(self.new_root, new);
        if old_alts.len() > 1 || new_alts.len() > 1 {
            for (i, o) in old_alts.iter().enumerate() {
                // The old alternative must still be accepted by one of the new ones.
                let mut best: Option<Vec<Incompatibility>> = None;
                for n in &new_alts {
                    let mut sub = Comparer {
                        old_root: self.old_root,
                        new_root: self.new_root,
                        out: Vec::new(),
                    };
                    sub.walk(o, n, path, depth + 1);
                    if best.as_ref().is_none_or(|b| sub.out.len() < b.len()) {
                        best = Some(sub.out);
                    }
                }
                match best {
                    Some(b) if b.is_empty() => {}
                    Some(b) if old_alts.len() == 1 => self.out.extend(b),
                    _ => self.problem(
                        path,
                        format!("{} is no longer accepted", describe(self.old_root, o, i)),
                    ),
                }
            }
            return;
        }
        self.scalar(old, new, path);
        self.object(old, new, path, depth);
        if let (Some(o), Some(n)) = (old.get("items"), new.get("items")) {
            self.walk(o, n, &format!("{path}[]"), depth + 1);
        }
        if let (Some(o), Some(n)) = (
            old.get("additionalProperties"),
            new.get("additionalProperties"),
        ) && (o.is_object() || n.is_object())
        {
            self.walk(o, n, &format!("{path}.*"), depth + 1);
        }
    }

    /// Types, enums, formats and ranges.
    fn scalar(&mut self, old: &Value, new: &Value, path: &str) {
        let (old_t, new_t) = (types(old), types(new));
        if let (Some(ot), Some(nt)) = (&old_t, &new_t) {
            for t in ot {
                let kept = nt.contains(t) || (t == "integer" && nt.contains("number"));
                if !kept {
                    if t == "null" {
                        self.problem(path, NOT_NULL);
                    } else {
                        self.problem(
                            path,
                            format!("type changed from {} to {}", join(ot), join(nt)),
                        );
                        return;
                    }
                }
            }
        }
        match (values(old), values(new)) {
            (Some(ov), Some(nv)) => {
                let gone: Vec<String> = ov
                    .iter()
                    .filter(|v| !nv.contains(v))
                    .map(|v| v.to_string())
                    .collect();
                if !gone.is_empty() {
                    self.problem(path, format!("value {} was removed", gone.join(", ")));
                }
            }
            (None, Some(nv)) => self.problem(
                path,
                format!(
                    "is now restricted to {}",
                    nv.iter()
                        .map(|v| v.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
            _ => {}
        }
        let (of, nf) = (
            old.get("format").and_then(Value::as_str),
            new.get("format").and_then(Value::as_str),
        );
        match (of, nf) {
            (Some(o), Some(n)) if o != n && !widens(o, n) => {
                self.problem(path, format!("format changed from {o} to {n}"));
            }
            (None, Some(n)) => self.problem(path, format!("is now restricted to format {n}")),
            _ => {}
        }
        for (key, narrower) in [
            ("minimum", (|o: f64, n: f64| n > o) as fn(f64, f64) -> bool),
            ("exclusiveMinimum", |o, n| n > o),
            ("maxLength", |o, n| n < o),
            ("maximum", |o, n| n < o),
            ("exclusiveMaximum", |o, n| n < o),
            ("minLength", |o, n| n > o),
            ("minItems", |o, n| n > o),
            ("maxItems", |o, n| n < o),
        ] {
            let (o, n) = (
                old.get(key).and_then(Value::as_f64),
                new.get(key).and_then(Value::as_f64),
            );
            match (o, n) {
                (Some(o), Some(n)) if narrower(o, n) => {
                    self.problem(path, format!("{key} narrowed from {o} to {n}"));
                }
                (None, Some(n)) if !format_implies(nf, key) => {
                    self.problem(path, format!("is now restricted by {key} {n}"));
                }
                _ => {}
            }
        }
        if let (Some(o), Some(n)) = (
            old.get("pattern").and_then(Value::as_str),
            new.get("pattern").and_then(Value::as_str),
        ) && o != n
        {
            self.problem(path, format!("pattern changed from {o} to {n}"));
        }
    }

    /// Fields: which are required, which went away, and each one's own schema.
    fn object(&mut self, old: &'a Value, new: &'a Value, path: &str, depth: usize) {
        static EMPTY: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);
        let empty: &'a Map<String, Value> = &EMPTY;
        let op = old
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(empty);
        let np = new
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(empty);
        if op.is_empty() && np.is_empty() {
            return;
        }
        let (or, nr) = (required(old), required(new));
        for field in &nr {
            let at = format!("{path}.{field}");
            if !op.contains_key(field.as_str()) {
                self.problem(
                    &at,
                    "is a new required field (events already written do not have it)",
                );
            } else if !or.contains(field) {
                self.problem(&at, OPTIONAL_TO_REQUIRED);
            }
        }
        let closed = new.get("additionalProperties") == Some(&Value::Bool(false));
        for (field, o) in op {
            let at = format!("{path}.{field}");
            match np.get(field) {
                Some(_) if or.contains(field) && !nr.contains(field) => self.problem(
                    &at,
                    "was required and is now optional (readers of this version still expect it)",
                ),
                Some(n) => self.walk(o, n, &at, depth + 1),
                None if or.contains(field) => self.problem(
                    &at,
                    "a required field was removed (readers of this version still expect it)",
                ),
                None if closed => self.problem(
                    &at,
                    "was removed and unknown fields are refused (events already written have it)",
                ),
                None => {}
            }
        }
    }
}

/// Follows a local `$ref` (`#/$defs/Name`), a few steps at most.
fn resolve<'a>(root: &'a Value, mut v: &'a Value) -> &'a Value {
    for _ in 0..8 {
        let Some(r) = v.get("$ref").and_then(Value::as_str) else {
            return v;
        };
        let Some(target) = r.strip_prefix('#').and_then(|p| root.pointer(p)) else {
            return v;
        };
        v = target;
    }
    v
}

/// `true`, `{}` or a schema with nothing but annotations.
fn is_anything(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Object(m) => m.keys().all(|k| is_annotation(k) || k == "$schema"),
        _ => false,
    }
}

fn is_annotation(key: &str) -> bool {
    matches!(
        key,
        "title" | "description" | "examples" | "default" | "$comment" | "$defs" | "definitions"
    ) || key.starts_with("x-")
}

/// The alternatives of `anyOf`/`oneOf`, each merged with the keywords beside it.
fn alternatives<'a>(root: &'a Value, v: &'a Value) -> Vec<&'a Value> {
    for key in ["oneOf", "anyOf"] {
        if let Some(alts) = v.get(key).and_then(Value::as_array) {
            return alts.iter().map(|a| resolve(root, a)).collect();
        }
    }
    vec![v]
}

fn describe(root: &Value, alt: &Value, i: usize) -> String {
    if let Some(c) = alt.get("const") {
        return format!("value {c}");
    }
    if let Some(props) = alt.get("properties").and_then(Value::as_object)
        && props.len() == 1
        && let Some(k) = props.keys().next()
    {
        return format!("variant `{k}`");
    }
    if let Some(t) = types(resolve(root, alt)) {
        return format!("a value of type {}", join(&t));
    }
    format!("alternative {}", i + 1)
}

fn types(v: &Value) -> Option<BTreeSet<String>> {
    match v.get("type")? {
        Value::String(s) => Some(BTreeSet::from([s.clone()])),
        Value::Array(a) => Some(
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
        ),
        _ => None,
    }
}

fn values(v: &Value) -> Option<Vec<&Value>> {
    if let Some(e) = v.get("enum").and_then(Value::as_array) {
        return Some(e.iter().collect());
    }
    v.get("const").map(|c| vec![c])
}

fn required(v: &Value) -> BTreeSet<String> {
    v.get("required")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn join(t: &BTreeSet<String>) -> String {
    t.iter().cloned().collect::<Vec<_>>().join("|")
}

const INT_WIDTHS: [(&str, u32, bool); 10] = [
    ("int8", 8, true),
    ("int16", 16, true),
    ("int32", 32, true),
    ("int64", 64, true),
    ("int128", 128, true),
    ("uint8", 8, false),
    ("uint16", 16, false),
    ("uint32", 32, false),
    ("uint64", 64, false),
    ("uint128", 128, false),
];

/// Whether every value of integer format `old` fits format `new` (`uint32` → `int64`).
fn widens(old: &str, new: &str) -> bool {
    let find = |f: &str| INT_WIDTHS.iter().find(|(n, ..)| *n == f).copied();
    match (find(old), find(new)) {
        (Some((_, ow, osigned)), Some((_, nw, nsigned))) => match (osigned, nsigned) {
            (true, true) | (false, false) => nw >= ow,
            (false, true) => nw > ow,
            (true, false) => false,
        },
        // A float holds integers exactly up to 2^24, a double up to 2^53.
        (Some((_, ow, _)), None) => (new == "double" && ow <= 32) || (new == "float" && ow <= 16),
        _ => matches!((old, new), ("float", "double")),
    }
}

/// schemars writes `minimum: 0` beside every unsigned format; that bound comes with the format.
fn format_implies(format: Option<&str>, key: &str) -> bool {
    key == "minimum" && format.is_some_and(|f| f.starts_with("uint"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(props: Value, req: &[&str]) -> Value {
        json!({"type": "object", "properties": props, "required": req})
    }

    #[test]
    fn the_same_schema_is_compatible() {
        let s = obj(json!({"a": {"type": "string"}}), &["a"]);
        assert!(compare(&s, &s).is_empty());
    }

    #[test]
    fn required_fields_may_not_come_or_go() {
        let old = obj(json!({"a": {"type": "string"}}), &["a"]);
        let added = obj(
            json!({"a": {"type": "string"}, "b": {"type": "string"}}),
            &["a", "b"],
        );
        let p = compare(&old, &added);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].path, "$.b");
        let removed = obj(json!({}), &[]);
        assert_eq!(compare(&old, &removed)[0].path, "$.a");
        let optional = obj(
            json!({"a": {"type": "string"}, "b": {"type": ["string", "null"]}}),
            &["a"],
        );
        assert!(compare(&old, &optional).is_empty());
        assert!(
            compare(&optional, &old).is_empty(),
            "an optional field may go"
        );
        let loosened = obj(json!({"a": {"type": "string"}}), &[]);
        assert_eq!(
            compare(&old, &loosened)[0].what,
            "was required and is now optional (readers of this version still expect it)"
        );
    }

    #[test]
    fn types_may_widen_but_not_change() {
        let int = json!({"type": "integer", "format": "uint32", "minimum": 0});
        let wide = json!({"type": "integer", "format": "int64"});
        let num = json!({"type": "number", "format": "double"});
        let text = json!({"type": "string"});
        assert!(compare(&int, &wide).is_empty());
        assert!(compare(&int, &num).is_empty());
        assert!(!compare(&wide, &int).is_empty());
        assert!(!compare(&int, &text).is_empty());
        let nullable = json!({"type": ["string", "null"]});
        assert!(compare(&text, &nullable).is_empty());
        assert_eq!(compare(&nullable, &text)[0].what, "can no longer be null");
    }

    #[test]
    fn enum_values_may_be_added_not_removed() {
        let ab = json!({"type": "string", "enum": ["a", "b"]});
        let abc = json!({"type": "string", "enum": ["a", "b", "c"]});
        assert!(compare(&ab, &abc).is_empty());
        assert!(compare(&abc, &ab)[0].what.contains("\"c\""));
        let consts =
            json!({"oneOf": [{"type": "string", "const": "a"}, {"type": "string", "const": "b"}]});
        let fewer = json!({"oneOf": [{"type": "string", "const": "a"}]});
        assert!(compare(&consts, &fewer)[0].what.contains("\"b\""));
    }

    #[test]
    fn refs_and_nesting_are_followed() {
        let old = json!({"type": "object", "properties": {"line": {"$ref": "#/$defs/Line"}}, "required": ["line"],
            "$defs": {"Line": obj(json!({"qty": {"type": "integer"}}), &["qty"])}});
        let new = json!({"type": "object", "properties": {"line": {"$ref": "#/$defs/Line"}}, "required": ["line"],
            "$defs": {"Line": obj(json!({"qty": {"type": "string"}}), &["qty"])}});
        let p = compare(&old, &new);
        assert_eq!(p[0].path, "$.line.qty");
        let items_old = json!({"type": "array", "items": {"type": "integer"}});
        let items_new = json!({"type": "array", "items": {"type": "boolean"}});
        assert_eq!(compare(&items_old, &items_new)[0].path, "$[]");
    }
}
