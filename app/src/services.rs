//! The one list of the shop's services. `up`, `service <name>`, `migrate`, `verify`, the topic
//! set, the registry and `/openapi.json` are derived from it: adding a service is adding its
//! crate to `app/Cargo.toml` and one line here (see `docs/ADDING_A_SERVICE.md`).

use shopflow_contracts::audit::Facts;
use shopflow_envelope::Registry;
use shopflow_service::Service;

/// Every service of the shop, in start order.
pub static SERVICES: &[&Service<Facts>] = &[
    &shopflow_users::SERVICE,
    &shopflow_inventory::SERVICE,
    &shopflow_payment::SERVICE,
    &shopflow_shipping::SERVICE,
    &shopflow_notification::SERVICE,
    &shopflow_order::SERVICE,
];

/// The database of the operations side (dead-letter index, redrives): not a service's.
pub const OPS: &str = "ops";

/// The service named `name`.
pub fn find(name: &str) -> Option<&'static Service<Facts>> {
    SERVICES.iter().copied().find(|s| s.name == name)
}

/// Every service's name, for messages.
pub fn names() -> Vec<&'static str> {
    SERVICES.iter().map(|s| s.name).collect()
}

/// Parses a service name (for `shopflow service <name>`).
pub fn parse(name: &str) -> Result<&'static str, String> {
    find(name)
        .map(|s| s.name)
        .ok_or_else(|| format!("unknown service `{name}` ({})", names().join(", ")))
}

/// The shop's registry: the contracts' events, the system events and every service's own.
pub fn registry() -> Registry {
    let mut r = shopflow_contracts::registry();
    shopflow_runtime::system::register(&mut r);
    for s in SERVICES {
        (s.register)(&mut r);
    }
    r
}

/// Every topic of the shop: the contracts', the system topics and every service's own.
pub fn topics() -> Vec<String> {
    let mut t = shopflow_contracts::all_topics();
    t.extend(shopflow_runtime::system::topics());
    for s in SERVICES {
        t.extend((s.topics)());
    }
    t.sort();
    t.dedup();
    t
}

/// Every consumer group the shop may run (both saga styles) and the dead-letter indexer's.
pub fn groups() -> Vec<&'static str> {
    let mut g: Vec<&'static str> = SERVICES
        .iter()
        .flat_map(|s| s.groups.iter().copied())
        .collect();
    g.push(shopflow_runtime::dlq::GROUP);
    g
}

/// Every database of a deployment: one per service, and the operations database.
pub fn databases() -> Vec<&'static str> {
    let mut d = names();
    d.push(OPS);
    d
}
