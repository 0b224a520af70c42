//! Decoding untrusted bytes into an [`Envelope`]: size limit, JSON shape, field rules.

use crate::{Envelope, Error, Result};

/// The largest envelope accepted, in bytes. Events are meant to be small and focused; a larger
/// record is refused before any parsing, so hostile input cannot make a consumer allocate much.
pub const MAX_ENVELOPE_BYTES: usize = 1024 * 1024;

impl Envelope {
    /// Decodes and validates bytes from outside. Never panics; every failure is a typed [`Error`].
    ///
    /// This does not consult a registry: the version is whatever the bytes say. Readers use
    /// [`crate::Registry::decode`], which also upcasts.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(Error::TooLarge {
                size: bytes.len(),
                limit: MAX_ENVELOPE_BYTES,
            });
        }
        // JSON is UTF-8: checked once over the whole text, which is cheaper than serde_json's
        // check of each string when it reads from bytes (1.5 % of the shop's instructions in
        // issue 14's callgrind profile).
        let text = std::str::from_utf8(bytes).map_err(|e| Error::Malformed {
            reason: format!("not UTF-8: {e}"),
        })?;
        let envelope: Envelope = serde_json::from_str(text).map_err(|e| Error::Malformed {
            reason: e.to_string(),
        })?;
        envelope.validate()?;
        if !numbers_in_range(envelope.data_json()) {
            return Err(Error::Invalid {
                field: "data",
                reason: "holds a number beyond the range of a 64-bit float",
            });
        }
        Ok(envelope)
    }
}

/// Whether every number of the JSON text `json` is within the range of an `f64`. serde_json
/// checks only the syntax of the data it keeps as text, but refuses a number beyond that range
/// (`1e400`, or an integer of 400 digits) when the text is parsed into a tree or a type: such
/// data is refused when bytes are decoded, so that what is accepted parses later. Data built
/// from a tree ([`Envelope::from_parts`]) cannot hold one, so only decoding checks.
fn numbers_in_range(json: &str) -> bool {
    let b = json.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => i = crate::envelope::after_string(b, i),
            b'-' | b'0'..=b'9' => {
                let start = i;
                let mut exponent = false;
                while i < b.len() && matches!(b[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                {
                    exponent |= matches!(b[i], b'e' | b'E');
                    i += 1;
                }
                // Without an exponent, only a number of over 300 digits can overflow.
                if (exponent || i - start > 300)
                    && !json[start..i].parse::<f64>().is_ok_and(f64::is_finite)
                {
                    return false;
                }
            }
            _ => i += 1,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Kind, Meta};

    fn sample() -> Envelope {
        Envelope::from_parts(
            "OrderCreated",
            2,
            Kind::Domain,
            serde_json::json!({"orderId": "o1", "totalMinor": 1299, "currency": "EUR"}),
            Meta::new("order-service", "o1", 1),
        )
        .unwrap()
    }

    #[test]
    fn bytes_that_are_not_utf8_are_malformed_with_the_reason() {
        let mut bytes = sample().encode().unwrap().to_vec();
        let at = bytes.windows(2).position(|w| w == b"o1").unwrap();
        bytes[at] = 0xff;
        match Envelope::decode(&bytes) {
            Err(Error::Malformed { reason }) => assert!(reason.contains("not UTF-8"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn numbers_beyond_a_float_are_invalid_data_and_the_rest_is_kept() {
        let json = |data: &str| {
            let mut v: serde_json::Value =
                serde_json::from_slice(&sample().encode().unwrap()).unwrap();
            v["data"] = serde_json::Value::Null;
            serde_json::to_string(&v)
                .unwrap()
                .replace("\"data\":null", &format!("\"data\":{data}"))
        };
        let long = format!("{{\"n\":{}}}", "9".repeat(400));
        for bad in [
            r#"{"n":1e400}"#,
            r#"{"n":[-1E000000000000309]}"#,
            long.as_str(),
        ] {
            match Envelope::decode(json(bad).as_bytes()) {
                Err(Error::Invalid {
                    field: "data",
                    reason,
                }) => {
                    assert!(reason.contains("beyond the range"), "{reason}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        // In range, in strings, or tiny: accepted, and the data parses as a tree.
        for good in [
            r#"{"n":1e308,"m":-2.5E-3,"s":"1e999 \\\" 9e9999","t":1e-999}"#,
            r#"{"id":"0193e4a1-7c3e-7000-8000-00000000e999","q":[1,2,3]}"#,
        ] {
            let env = Envelope::decode(json(good).as_bytes()).unwrap();
            assert!(
                serde_json::from_str::<serde_json::Value>(env.data_json()).is_ok(),
                "{good}"
            );
        }
    }

    #[test]
    fn round_trips_through_json() {
        let env = sample();
        let bytes = env.encode().unwrap();
        assert_eq!(Envelope::decode(&bytes).unwrap(), env);
    }

    #[test]
    fn writes_camel_case_fields_and_seed_style_version() {
        let env = sample();
        let json: serde_json::Value = serde_json::from_slice(&env.encode().unwrap()).unwrap();
        for field in [
            "eventId",
            "eventType",
            "eventVersion",
            "timestamp",
            "kind",
            "source",
            "aggregateId",
            "sequence",
            "correlationId",
            "data",
        ] {
            assert!(json.get(field).is_some(), "missing {field} in {json}");
        }
        assert_eq!(json["eventVersion"], "v2");
        assert_eq!(json["kind"], "domain");
        let ts = json["timestamp"].as_str().unwrap();
        assert!(ts.ends_with('Z'), "timestamp {ts} is not UTC");
        // UUIDv7: the version nibble is 7.
        let id = json["eventId"].as_str().unwrap();
        assert_eq!(&id[14..15], "7", "{id} is not a UUIDv7");
    }

    #[test]
    fn accepts_numeric_version() {
        let mut json: serde_json::Value =
            serde_json::from_slice(&sample().encode().unwrap()).unwrap();
        json["eventVersion"] = serde_json::json!(2);
        let env = Envelope::decode(&serde_json::to_vec(&json).unwrap()).unwrap();
        assert_eq!(env.event_version(), 2);
    }

    #[test]
    fn rejects_bad_input_with_typed_errors() {
        assert!(matches!(
            Envelope::decode(b"not json"),
            Err(Error::Malformed { .. })
        ));
        assert!(matches!(
            Envelope::decode(b"[1,2]"),
            Err(Error::Malformed { .. })
        ));
        assert!(matches!(
            Envelope::decode(b"{}"),
            Err(Error::Malformed { .. })
        ));

        let mut json: serde_json::Value =
            serde_json::from_slice(&sample().encode().unwrap()).unwrap();
        json["eventVersion"] = serde_json::json!("v0");
        assert!(matches!(
            Envelope::decode(&serde_json::to_vec(&json).unwrap()),
            Err(Error::Invalid {
                field: "eventVersion",
                ..
            })
        ));
        json["eventVersion"] = serde_json::json!("two");
        assert!(matches!(
            Envelope::decode(&serde_json::to_vec(&json).unwrap()),
            Err(Error::Malformed { .. })
        ));
        json["eventVersion"] = serde_json::json!("v1");
        json["aggregateId"] = serde_json::json!("");
        assert!(matches!(
            Envelope::decode(&serde_json::to_vec(&json).unwrap()),
            Err(Error::Invalid {
                field: "aggregateId",
                ..
            })
        ));
        json["aggregateId"] = serde_json::json!("o1");
        json["timestamp"] = serde_json::json!("yesterday");
        assert!(matches!(
            Envelope::decode(&serde_json::to_vec(&json).unwrap()),
            Err(Error::Malformed { .. })
        ));
        json["timestamp"] = serde_json::json!("2026-01-01T00:00:00Z");
        json["surprise"] = serde_json::json!(1);
        assert!(matches!(
            Envelope::decode(&serde_json::to_vec(&json).unwrap()),
            Err(Error::Malformed { .. })
        ));
    }

    #[test]
    fn data_nesting_deeper_than_a_tree_parses_is_refused() {
        let nested = |depth: usize| {
            let mut json: serde_json::Value =
                serde_json::from_slice(&sample().encode().unwrap()).unwrap();
            let text = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
            json["data"] = serde_json::Value::Null;
            let bytes = serde_json::to_string(&json)
                .unwrap()
                .replace("\"data\":null", &format!("\"data\":{text}"));
            Envelope::decode(bytes.as_bytes())
        };
        let ok = nested(127).unwrap();
        assert!(ok.data().is_array(), "the accepted data parses as a tree");
        assert!(matches!(
            nested(129),
            Err(Error::Invalid { field: "data", .. })
        ));
        // Brackets inside strings (escaped quotes too) do not nest.
        let text = format!("\\\"{}", "[".repeat(300));
        let env = Envelope::from_parts(
            "OrderCreated",
            2,
            Kind::Domain,
            serde_json::json!({ "note": text }),
            Meta::new("order-service", "o1", 1),
        )
        .unwrap();
        let back = Envelope::decode(&env.encode().unwrap()).unwrap();
        assert_eq!(back.data()["note"], serde_json::json!(text));
    }

    #[test]
    fn typed_data_is_read_from_the_text_it_arrived_as() {
        let bytes = br#"{"eventId":"0190a0b0-0000-7000-8000-000000000001","eventType":"OrderCreated","eventVersion":"v2","timestamp":"2026-01-01T00:00:00Z","kind":"domain","source":"s","aggregateId":"o1","sequence":1,"correlationId":"c","data":{ "z" : 1,"a":[true, null] }}"#;
        let env = Envelope::decode(bytes).unwrap();
        assert_eq!(env.data_json(), r#"{ "z" : 1,"a":[true, null] }"#);
        assert_eq!(env.data(), serde_json::json!({"a": [true, null], "z": 1}));
        // Re-encoding keeps the text; an envelope equal in value but not in text is still equal.
        let again = Envelope::decode(&env.encode().unwrap()).unwrap();
        assert_eq!(again, env);
    }

    #[test]
    fn refuses_oversized_input_before_parsing() {
        let big = vec![b' '; MAX_ENVELOPE_BYTES + 1];
        assert!(matches!(
            Envelope::decode(&big),
            Err(Error::TooLarge { size, limit }) if size == MAX_ENVELOPE_BYTES + 1 && limit == MAX_ENVELOPE_BYTES
        ));
    }

    #[test]
    fn non_utc_offsets_are_normalized_to_utc() {
        let mut json: serde_json::Value =
            serde_json::from_slice(&sample().encode().unwrap()).unwrap();
        json["timestamp"] = serde_json::json!("2026-01-01T02:00:00+02:00");
        let env = Envelope::decode(&serde_json::to_vec(&json).unwrap()).unwrap();
        assert_eq!(env.timestamp().to_rfc3339(), "2026-01-01T00:00:00+00:00");
    }
}
