//! The CLI for the history: an order as it is or was, its events, and the shop's events as they
//! happen — all against a running shop's API.

use std::time::Duration;

use clap::Subcommand;
use serde_json::Value;

use crate::admin::{Common, clip, s};

/// One order's state and history.
#[derive(Debug, Subcommand)]
pub(crate) enum Orders {
    /// An order as it is now, or as it was at a point in time or a version (time travel).
    Show {
        id: String,
        /// As it was at this instant (RFC 3339, e.g. 2026-12-01T10:00:00Z).
        #[arg(long, conflicts_with = "version")]
        at: Option<String>,
        /// As it was after its n-th event.
        #[arg(long)]
        version: Option<u64>,
        #[command(flatten)]
        common: Common,
    },
    /// An order's events, oldest first: its audit trail.
    Events {
        id: String,
        #[command(flatten)]
        common: Common,
    },
}

/// The shop's events.
#[derive(Debug, Subcommand)]
pub(crate) enum Events {
    /// The latest events of every topic (or of one), oldest first; with --follow, keeps
    /// printing new ones as they are published.
    Tail {
        /// Only this topic (e.g. orders.order-created).
        #[arg(long)]
        topic: Option<String>,
        /// How many of the latest to show first.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Keep printing new events until interrupted.
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        common: Common,
    },
}

pub(crate) fn orders(cmd: Orders) -> anyhow::Result<()> {
    match cmd {
        Orders::Show {
            id,
            at,
            version,
            common,
        } => {
            let mut q = Vec::new();
            if let Some(t) = at {
                q.push(("at", t));
            }
            if let Some(v) = version {
                q.push(("version", v.to_string()));
            }
            let o = common.call("GET", &format!("/orders/{id}"), &q, None)?;
            if common.printed_json(&o)? {
                return Ok(());
            }
            println!(
                "order     {}  {}  (version {})",
                s(&o["orderId"]),
                s(&o["status"]),
                s(&o["version"])
            );
            println!("customer  {}", s(&o["customerId"]));
            for l in o["items"].as_array().cloned().unwrap_or_default() {
                println!(
                    "  {} × {}  at {} minor units",
                    s(&l["quantity"]),
                    s(&l["sku"]),
                    s(&l["unitPriceMinor"])
                );
            }
            println!(
                "total     {} {} (minor units)",
                s(&o["totalMinor"]),
                s(&o["currency"])
            );
            println!("payment   {}", s(&o["paymentId"]));
            println!("shipment  {} {}", s(&o["carrier"]), s(&o["trackingNumber"]));
            if !o["cancelReason"].is_null() {
                println!("cancelled {}", s(&o["cancelReason"]));
            }
            println!(
                "updated   {}  (from the {})",
                s(&o["updatedAt"]),
                s(&o["source"])
            );
            Ok(())
        }
        Orders::Events { id, common } => {
            let v = common.call("GET", &format!("/orders/{id}/events"), &[], None)?;
            if common.printed_json(&v)? {
                return Ok(());
            }
            println!(
                "{:>3} {:>9} {:<25} {:<20} DATA",
                "VER", "POSITION", "TIME", "TYPE"
            );
            for e in v.as_array().cloned().unwrap_or_default() {
                println!(
                    "{:>3} {:>9} {:<25} {:<20} {}",
                    s(&e["version"]),
                    s(&e["position"]),
                    s(&e["timestamp"]),
                    s(&e["eventType"]),
                    clip(&e["data"].to_string(), 80)
                );
            }
            Ok(())
        }
    }
}

fn print_event(e: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(e)?);
        return Ok(());
    }
    let at = e["timestampMs"]
        .as_i64()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default();
    let what = match (&e["eventType"], &e["error"]) {
        (Value::String(t), _) => format!(
            "{t} {} #{} from {}",
            s(&e["aggregateId"]),
            s(&e["sequence"]),
            s(&e["source"])
        ),
        (_, err) => format!("(not an envelope: {})", s(err)),
    };
    println!(
        "{at}  {}[{}]@{}  {}",
        s(&e["topic"]),
        s(&e["partition"]),
        s(&e["offset"]),
        clip(&what, 110)
    );
    Ok(())
}

pub(crate) fn events(cmd: Events) -> anyhow::Result<()> {
    let Events::Tail {
        topic,
        limit,
        follow,
        common,
    } = cmd;
    let mut q = vec![("limit", limit.to_string())];
    if let Some(t) = &topic {
        q.push(("topic", t.clone()));
    }
    loop {
        let v = common.call("GET", "/admin/events", &q, None)?;
        for e in v["events"].as_array().cloned().unwrap_or_default() {
            print_event(&e, common.json)?;
        }
        if !follow {
            return Ok(());
        }
        let cursor = s(&v["cursor"]);
        q.retain(|(k, _)| *k != "cursor");
        q.push(("cursor", cursor));
        q.retain(|(k, _)| *k != "limit");
        q.push(("limit", crate::MAX_TAIL.to_string()));
        std::thread::sleep(Duration::from_millis(500));
    }
}
