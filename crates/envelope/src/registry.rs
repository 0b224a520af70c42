//! Event types, their current versions, and the upcaster chains that bring old versions up to date.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use foldhash::HashMap;

use crate::{Envelope, Error, Event, Kind, Result};

/// Moves the data of version `n` to version `n + 1`. Gets the whole envelope for context (an
/// upcaster may need the timestamp or the aggregate id) and returns the new data.
pub type Upcaster =
    Arc<dyn Fn(&Envelope) -> std::result::Result<serde_json::Value, String> + Send + Sync>;

#[derive(Clone)]
struct Entry {
    current: u32,
    kind: Kind,
    /// `upcasters[v - 1]` moves v to v + 1.
    upcasters: Vec<Option<Upcaster>>,
    /// The JSON Schema of each version a Rust type describes (the current one, and old ones
    /// kept as legacy types).
    schemas: BTreeMap<u32, Arc<serde_json::Value>>,
}

/// The event types a reader knows, with their current versions and upcasters.
///
/// Every read path (live consumers, replays, projection rebuilds, time travel) decodes through
/// [`Registry::decode`], so an old event is upcast the same way everywhere.
#[derive(Default, Clone)]
pub struct Registry {
    types: HashMap<String, Arc<Entry>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (name, e) in &self.types {
            m.entry(name, &format_args!("v{} ({:?})", e.current, e.kind));
        }
        m.finish()
    }
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `E` at its current version, with its JSON Schema.
    pub fn register<E: Event>(&mut self) -> &mut Self {
        self.register_type(E::TYPE, E::VERSION, E::KIND);
        self.schema_version::<E>(E::TYPE, E::VERSION)
    }

    /// Records the schema of an older version of a registered type, from a legacy Rust type
    /// that describes it (such a type is only read by the upcaster, never written).
    ///
    /// # Panics
    /// When the type is not registered or `version` is above its current one.
    pub fn schema_version<T: schemars::JsonSchema>(
        &mut self,
        event_type: &str,
        version: u32,
    ) -> &mut Self {
        let entry = self
            .types
            .get_mut(event_type)
            .unwrap_or_else(|| panic!("schema for unregistered event type {event_type}"));
        let entry = Arc::make_mut(entry);
        assert!(
            version >= 1 && version <= entry.current,
            "schema of v{version} of {event_type} but current is v{}",
            entry.current
        );
        entry
            .schemas
            .insert(version, Arc::new(crate::schema::schema_of::<T>()));
        self
    }

    /// Registers an event type by name, without a schema (tests and tools that only route
    /// bytes). Registering again keeps the upcasters and schemas already added.
    pub fn register_type(&mut self, event_type: &str, current: u32, kind: Kind) -> &mut Self {
        let (upcasters, mut schemas) = self
            .types
            .get(event_type)
            .map(|e| (e.upcasters.clone(), e.schemas.clone()))
            .unwrap_or_default();
        schemas.retain(|v, _| *v <= current);
        let mut entry = Entry {
            current,
            kind,
            upcasters,
            schemas,
        };
        entry
            .upcasters
            .resize(current.saturating_sub(1) as usize, None);
        self.types.insert(event_type.to_owned(), Arc::new(entry));
        self
    }

    /// Adds the upcaster from `from` to `from + 1` for a registered type.
    ///
    /// # Panics
    /// When the type is not registered or `from` is not below its current version: both are
    /// programming errors in the registry's set-up, found by the first test that builds it.
    pub fn upcaster<F>(&mut self, event_type: &str, from: u32, f: F) -> &mut Self
    where
        F: Fn(&Envelope) -> std::result::Result<serde_json::Value, String> + Send + Sync + 'static,
    {
        let entry = self
            .types
            .get_mut(event_type)
            .unwrap_or_else(|| panic!("upcaster for unregistered event type {event_type}"));
        let entry = Arc::make_mut(entry);
        assert!(
            from >= 1 && from < entry.current,
            "upcaster from v{from} of {event_type} but current is v{}",
            entry.current
        );
        entry.upcasters[(from - 1) as usize] = Some(Arc::new(f));
        self
    }

    /// The current version of a type, if known.
    pub fn current_version(&self, event_type: &str) -> Option<u32> {
        self.types.get(event_type).map(|e| e.current)
    }

    /// Every registered type with its current version, sorted by name.
    pub fn types(&self) -> Vec<(String, u32, Kind)> {
        let mut v: Vec<_> = self
            .types
            .iter()
            .map(|(n, e)| (n.clone(), e.current, e.kind))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The JSON Schema of a version of a type, when a Rust type describes it.
    pub fn schema(&self, event_type: &str, version: u32) -> Option<&serde_json::Value> {
        self.types
            .get(event_type)
            .and_then(|e| e.schemas.get(&version))
            .map(|s| s.as_ref())
    }

    /// Checks that every version of every type reaches the current one through the upcaster
    /// chain. A registry that fails this cannot read some of the events it claims to know, so a
    /// shop refuses to start with it; the error names each missing step.
    pub fn validate(&self) -> Result<()> {
        let mut missing = Vec::new();
        for (name, current, _) in self.types() {
            let entry = &self.types[&name];
            for from in 1..current {
                if !matches!(entry.upcasters.get((from - 1) as usize), Some(Some(_))) {
                    missing.push(format!(
                        "{name} is at v{current} but nothing upcasts v{from} to v{} \
                         (add `registry.upcaster(\"{name}\", {from}, …)`)",
                        from + 1
                    ));
                }
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Error::BrokenUpcasterChain { missing })
        }
    }

    /// Decodes untrusted bytes and brings the event to its current version.
    pub fn decode(&self, bytes: &[u8]) -> Result<Envelope> {
        self.upcast(Envelope::decode(bytes)?)
    }

    /// Brings an envelope to the current version of its type through the upcaster chain.
    pub fn upcast(&self, mut envelope: Envelope) -> Result<Envelope> {
        let entry =
            self.types
                .get(envelope.event_type())
                .ok_or_else(|| Error::UnknownEventType {
                    event_type: envelope.event_type().to_owned(),
                })?;
        let unsupported = |env: &Envelope| Error::UnsupportedVersion {
            event_type: env.event_type().to_owned(),
            version: env.event_version(),
            current: entry.current,
        };
        if envelope.event_version() > entry.current {
            return Err(unsupported(&envelope));
        }
        while envelope.event_version() < entry.current {
            let from = envelope.event_version();
            let Some(Some(step)) = entry.upcasters.get((from - 1) as usize) else {
                return Err(unsupported(&envelope));
            };
            let data = step(&envelope).map_err(|reason| Error::Upcast {
                event_type: envelope.event_type().to_owned(),
                from,
                reason,
            })?;
            envelope = envelope.upcast_to(from + 1, data)?;
        }
        Ok(envelope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Meta;
    use crate::{dlq_topic, kebab_case};
    use serde::{Deserialize, Serialize};

    /// v3 of a test event: money in minor units, a currency, and a channel added in v3.
    #[derive(Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
    #[serde(rename_all = "camelCase")]
    struct OrderPlaced {
        order_id: String,
        total_minor: i64,
        currency: String,
        channel: String,
    }
    impl Event for OrderPlaced {
        const TYPE: &'static str = "OrderPlaced";
        const VERSION: u32 = 3;
        const KIND: Kind = Kind::Domain;
        const DOMAIN: &'static str = "orders";
    }

    fn registry() -> Registry {
        let mut r = Registry::new();
        r.register::<OrderPlaced>()
            .upcaster("OrderPlaced", 1, |env| {
                // v1 had a float `amount` in major units (as in the seed); v2 uses minor units.
                let d = env.data();
                let amount = d["amount"].as_str().ok_or("amount is not a decimal string")?;
                let (whole, frac) = amount.split_once('.').unwrap_or((amount, "0"));
                let frac = format!("{frac:0<2}");
                let minor = whole.parse::<i64>().map_err(|e| e.to_string())? * 100
                    + frac[..2].parse::<i64>().map_err(|e| e.to_string())?;
                Ok(serde_json::json!({"orderId": d["orderId"], "totalMinor": minor, "currency": "EUR"}))
            })
            .upcaster("OrderPlaced", 2, |env| {
                let mut d = env.data();
                d["channel"] = serde_json::json!("web");
                Ok(d)
            });
        r
    }

    fn v1(amount: &str) -> Vec<u8> {
        Envelope::from_parts(
            "OrderPlaced",
            1,
            Kind::Domain,
            serde_json::json!({"orderId": "o1", "amount": amount}),
            Meta::new("legacy", "o1", 1),
        )
        .unwrap()
        .encode()
        .unwrap()
    }

    #[test]
    fn upcasts_through_the_whole_chain() {
        let env = registry().decode(&v1("99.9")).unwrap();
        assert_eq!(env.event_version(), 3);
        assert_eq!(
            env.data_as::<OrderPlaced>().unwrap(),
            OrderPlaced {
                order_id: "o1".into(),
                total_minor: 9990,
                currency: "EUR".into(),
                channel: "web".into()
            }
        );
    }

    #[test]
    fn current_version_passes_unchanged() {
        let e = OrderPlaced {
            order_id: "o2".into(),
            total_minor: 5,
            currency: "USD".into(),
            channel: "app".into(),
        };
        let bytes = Envelope::new(&e, Meta::new("s", "o2", 1))
            .unwrap()
            .encode()
            .unwrap();
        let env = registry().decode(&bytes).unwrap();
        assert_eq!(env.data_as::<OrderPlaced>().unwrap(), e);
    }

    #[test]
    fn typed_errors_for_unknown_and_unsupported() {
        let r = registry();
        let unknown = Envelope::from_parts(
            "Nope",
            1,
            Kind::Domain,
            serde_json::json!({}),
            Meta::new("s", "a", 1),
        )
        .unwrap()
        .encode()
        .unwrap();
        assert!(matches!(
            r.decode(&unknown),
            Err(Error::UnknownEventType { .. })
        ));
        let future = Envelope::from_parts(
            "OrderPlaced",
            9,
            Kind::Domain,
            serde_json::json!({}),
            Meta::new("s", "a", 1),
        )
        .unwrap()
        .encode()
        .unwrap();
        assert!(matches!(
            r.decode(&future),
            Err(Error::UnsupportedVersion {
                version: 9,
                current: 3,
                ..
            })
        ));
        assert!(matches!(
            r.decode(&v1("lots")),
            Err(Error::Upcast { from: 1, .. })
        ));
    }

    #[test]
    fn validate_names_every_missing_step() {
        registry().validate().unwrap();
        let mut r = Registry::new();
        r.register::<OrderPlaced>()
            .upcaster("OrderPlaced", 2, |env| Ok(env.data()));
        let err = r.validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "the event registry has broken upcaster chains: OrderPlaced is at v3 but nothing \
             upcasts v1 to v2 (add `registry.upcaster(\"OrderPlaced\", 1, …)`)"
        );
    }

    #[test]
    fn missing_step_in_chain_is_unsupported() {
        let mut r = Registry::new();
        r.register::<OrderPlaced>();
        assert!(matches!(
            r.decode(&v1("1.00")),
            Err(Error::UnsupportedVersion { version: 1, .. })
        ));
    }

    #[test]
    fn data_as_checks_type_and_shape() {
        let env = Envelope::from_parts(
            "OrderPlaced",
            3,
            Kind::Domain,
            serde_json::json!({"orderId": 5}),
            Meta::new("s", "a", 1),
        )
        .unwrap();
        assert!(matches!(
            env.data_as::<OrderPlaced>(),
            Err(Error::Data { .. })
        ));
        let other = Envelope::from_parts(
            "Other",
            3,
            Kind::Domain,
            serde_json::json!({}),
            Meta::new("s", "a", 1),
        )
        .unwrap();
        assert!(matches!(
            other.data_as::<OrderPlaced>(),
            Err(Error::WrongType { .. })
        ));
    }

    #[test]
    fn topics_are_one_per_type() {
        assert_eq!(OrderPlaced::topic(), "orders.order-placed");
        assert_eq!(
            kebab_case("StockReservationFailed"),
            "stock-reservation-failed"
        );
        assert_eq!(dlq_topic("orders.order-placed"), "orders.order-placed.dlq");
    }

    #[test]
    fn caused_by_carries_correlation() {
        let first = Envelope::from_parts(
            "A",
            1,
            Kind::Domain,
            serde_json::json!({}),
            Meta::new("s", "a", 1),
        )
        .unwrap();
        let next = Envelope::from_parts(
            "B",
            1,
            Kind::Integration,
            serde_json::json!({}),
            Meta::caused_by(&first, "t", "a", 2),
        )
        .unwrap();
        assert_eq!(next.correlation_id(), first.correlation_id());
        assert_eq!(
            next.causation_id().unwrap().as_str(),
            first.event_id().to_string()
        );
    }
}
