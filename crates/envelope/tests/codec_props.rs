//! Property tests: decoding arbitrary bytes never panics, and valid envelopes round-trip.

use proptest::prelude::*;
use shopflow_envelope::{Envelope, Kind, Meta, Registry};

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        "[a-zA-Z0-9 äöü€\\\\\"]{0,16}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z]{1,8}", inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::Domain),
        Just(Kind::Integration),
        Just(Kind::System),
        Just(Kind::Command)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Envelope::decode(&bytes);
        let _ = Registry::new().decode(&bytes);
    }

    #[test]
    fn mutated_envelopes_never_panic(
        data in json_value(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let env = Envelope::from_parts("OrderCreated", 1, Kind::Domain, data, Meta::new("s", "o1", 1)).unwrap();
        let mut bytes = env.encode().unwrap();
        for (i, b) in flips {
            let at = i.index(bytes.len());
            bytes[at] = b;
        }
        // What is accepted carries data that parses as a tree: reading it cannot fail later.
        if let Ok(env) = Envelope::decode(&bytes) {
            prop_assert!(serde_json::from_str::<serde_json::Value>(env.data_json()).is_ok());
        }
    }

    #[test]
    fn valid_envelopes_round_trip(
        event_type in "[A-Z][a-zA-Z]{0,30}",
        version in 1u32..1000,
        kind in kind(),
        aggregate in "[a-z0-9_-]{1,40}",
        sequence in any::<u64>(),
        data in json_value(),
    ) {
        let env = Envelope::from_parts(event_type, version, kind, data, Meta::new("svc", aggregate, sequence)).unwrap();
        let bytes = env.encode().unwrap();
        prop_assert_eq!(Envelope::decode(&bytes).unwrap(), env);
    }
}
