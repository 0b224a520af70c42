//! The operator's commands against a running shop's admin API: `dlq …`, `lag`.

use clap::Subcommand;
use serde_json::Value;

/// Dead-letter operations.
#[derive(Debug, Subcommand)]
pub(crate) enum Dlq {
    /// List dead letters (open ones by default), oldest first.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// `open`, `redriven`, `discarded` or `all`.
        #[arg(long, default_value = "open")]
        status: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        common: Common,
    },
    /// Show one dead letter with its record and headers.
    Show {
        id: String,
        #[command(flatten)]
        common: Common,
    },
    /// Send dead letters back to their original topic: the given ids, or with `--all` every open
    /// one matching the filters.
    Redrive {
        ids: Vec<String>,
        /// Redrive every open dead letter matching the filters (the oldest `--limit` of them).
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        /// With --all: at most this many in one go (default 100, at most 1000).
        #[arg(long, requires = "all")]
        limit: Option<u32>,
        #[command(flatten)]
        filter: FilterArgs,
        #[command(flatten)]
        common: Common,
    },
    /// Close a dead letter without redriving it.
    Discard {
        id: String,
        /// Why (kept with the dead letter).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        common: Common,
    },
}

/// Saga operations.
#[derive(Debug, Subcommand)]
pub(crate) enum Sagas {
    /// List sagas, most recently changed first.
    List {
        /// `running`, `compensating`, `completed` or `compensated`.
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        common: Common,
    },
    /// Show one saga with its steps, their timings and outcomes.
    Show {
        id: String,
        #[command(flatten)]
        common: Common,
    },
    /// Give up on a running saga: its current and completed steps are compensated.
    Cancel {
        id: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        common: Common,
    },
}

pub(crate) fn sagas(cmd: Sagas) -> anyhow::Result<()> {
    match cmd {
        Sagas::List {
            state,
            limit,
            common,
        } => {
            let mut q = vec![("limit", limit.to_string())];
            if let Some(s) = state {
                q.push(("state", s));
            }
            let v = common.call("GET", "/sagas", &q, None)?;
            if common.printed_json(&v)? {
                return Ok(());
            }
            println!(
                "{:<40} {:<13} {:<10} {:<25} FAILURE",
                "SAGA", "STATE", "STEP", "UPDATED"
            );
            let list = v["sagas"].as_array().cloned().unwrap_or_default();
            for g in &list {
                let failure = match &g["failure"] {
                    Value::Null => "-".to_owned(),
                    f => format!("{} {}: {}", s(&f["kind"]), s(&f["step"]), s(&f["reason"])),
                };
                println!(
                    "{:<40} {:<13} {:<10} {:<25} {}",
                    s(&g["sagaId"]),
                    s(&g["state"]),
                    s(&g["currentStep"]),
                    s(&g["updatedAt"]),
                    clip(&failure, 70)
                );
            }
            println!(
                "{} shown; style {}; by state: {}",
                list.len(),
                s(&v["style"]),
                v["counts"]
            );
            Ok(())
        }
        Sagas::Show { id, common } => {
            let v = common.call("GET", &format!("/sagas/{id}"), &[], None)?;
            if common.printed_json(&v)? {
                return Ok(());
            }
            print_saga(&v);
            Ok(())
        }
        Sagas::Cancel { id, reason, common } => {
            let v = common.call(
                "POST",
                &format!("/sagas/{id}/cancel"),
                &[],
                Some(serde_json::json!({ "reason": reason })),
            )?;
            if !common.printed_json(&v)? {
                print_saga(&v);
            }
            Ok(())
        }
    }
}

fn print_saga(v: &Value) {
    for k in [
        "sagaType",
        "sagaId",
        "state",
        "currentStep",
        "correlationId",
        "deadline",
        "createdAt",
        "updatedAt",
    ] {
        println!("{k:>14}: {}", s(&v[k]));
    }
    if !v["failure"].is_null() {
        println!("{:>14}: {}", "failure", v["failure"]);
    }
    println!(
        "\n{:>3} {:<12} {:<13} {:<16} {:<12} {:>8} {:>5} DETAIL",
        "#", "STEP", "KIND", "COMMAND", "OUTCOME", "MS", "SENT"
    );
    for st in v["steps"].as_array().cloned().unwrap_or_default() {
        println!(
            "{:>3} {:<12} {:<13} {:<16} {:<12} {:>8} {:>5} {}",
            s(&st["seq"]),
            s(&st["step"]),
            s(&st["kind"]),
            s(&st["command"]),
            s(&st["outcome"]),
            s(&st["durationMs"]),
            s(&st["sends"]),
            s(&st["detail"])
        );
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct FilterArgs {
    /// The original topic.
    #[arg(long)]
    topic: Option<String>,
    #[arg(long)]
    event_type: Option<String>,
    /// The consumer group that dead-lettered it.
    #[arg(long)]
    consumer: Option<String>,
    /// A substring of the error.
    #[arg(long)]
    error: Option<String>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct Common {
    /// The shop's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub(crate) target: String,
    /// Print JSON (for scripts) instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    /// The admin token (`Authorization: Bearer …`). Default: the one in <data-dir>/admin.token.
    #[arg(long, env = "SHOPFLOW_ADMIN_TOKEN", hide_env_values = true)]
    pub(crate) admin_token: Option<String>,
    /// Where to look for admin.token when no token is given (the shop's data directory).
    #[arg(long, default_value = "./data")]
    pub(crate) data_dir: std::path::PathBuf,
    /// The token resolved once (a `--follow` loop calls the shop again and again).
    #[arg(skip)]
    token: std::sync::OnceLock<Option<String>>,
}

impl Common {
    /// Calls the shop at `--target` with the admin token (when there is one).
    pub(crate) fn call(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let token = self.token.get_or_init(|| {
            shopflow::security::client_token(self.admin_token.as_deref(), &self.data_dir)
        });
        call(method, &self.target, path, query, body, token.as_deref())
    }

    /// With `--json`, prints `v` as pretty JSON and says so (the caller then prints nothing
    /// else).
    pub(crate) fn printed_json(&self, v: &impl serde::Serialize) -> anyhow::Result<bool> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(v)?);
        }
        Ok(self.json)
    }
}

/// Calls the admin API; a non-2xx answer is an error carrying the body.
pub(crate) fn call(
    method: &str,
    base: &str,
    path: &str,
    query: &[(&str, String)],
    body: Option<Value>,
    admin_token: Option<&str>,
) -> anyhow::Result<Value> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let bearer = admin_token.map(|t| format!("Bearer {t}"));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = match (method, body) {
        ("GET", _) => {
            let mut req = agent.get(&url);
            for (k, v) in query {
                req = req.query(*k, v);
            }
            if let Some(b) = &bearer {
                req = req.header("authorization", b);
            }
            req.call()
        }
        (_, body) => {
            let mut req = agent.post(&url);
            if let Some(b) = &bearer {
                req = req.header("authorization", b);
            }
            match body {
                Some(b) => req.send_json(b),
                None => req.send_empty(),
            }
        }
    }
    .map_err(|e| anyhow::anyhow!("cannot reach the shop at {base}: {e}"))?;
    let status = resp.status();
    let text = resp.body_mut().read_to_string()?;
    if status == 401 {
        anyhow::bail!(
            "{url} needs the admin token: give --admin-token (or SHOPFLOW_ADMIN_TOKEN), or --data-dir of the shop (its admin.token)"
        );
    }
    if !status.is_success() {
        let msg = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_owned))
            .unwrap_or(text);
        anyhow::bail!("{} answered {status}: {msg}", url);
    }
    Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn filter_pairs(f: &FilterArgs) -> Vec<(&'static str, String)> {
    let mut q = Vec::new();
    if let Some(v) = &f.topic {
        q.push(("topic", v.clone()));
    }
    if let Some(v) = &f.event_type {
        q.push(("eventType", v.clone()));
    }
    if let Some(v) = &f.consumer {
        q.push(("consumer", v.clone()));
    }
    if let Some(v) = &f.error {
        q.push(("error", v.clone()));
    }
    q
}

pub(crate) fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

pub(crate) fn clip(text: &str, n: usize) -> String {
    if text.chars().count() <= n {
        text.to_owned()
    } else {
        let mut t: String = text.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

pub(crate) fn dlq(cmd: Dlq) -> anyhow::Result<()> {
    match cmd {
        Dlq::List {
            filter,
            status,
            limit,
            common,
        } => {
            let mut q = filter_pairs(&filter);
            q.push(("status", status));
            q.push(("limit", limit.to_string()));
            let v = common.call("GET", "/admin/dlq", &q, None)?;
            if common.printed_json(&v)? {
                return Ok(());
            }
            let letters = v["deadLetters"].as_array().cloned().unwrap_or_default();
            println!(
                "{:<32} {:<10} {:<22} {:<14} {:>4} {:<25} ERROR",
                "ID", "STATUS", "EVENT TYPE", "CONSUMER", "TRY", "LAST FAILURE"
            );
            for l in &letters {
                println!(
                    "{:<32} {:<10} {:<22} {:<14} {:>4} {:<25} {}",
                    s(&l["id"]),
                    s(&l["status"]),
                    clip(&s(&l["eventType"]), 22),
                    clip(&s(&l["consumer"]), 14),
                    s(&l["attempts"]),
                    clip(&s(&l["lastFailedAt"]), 25),
                    clip(&s(&l["error"]), 80)
                );
            }
            println!(
                "{} shown; all dead letters by status: {}",
                letters.len(),
                v["counts"]
            );
            let parked = v["parked"].as_array().cloned().unwrap_or_default();
            if !parked.is_empty() {
                println!(
                    "\nparked keys (later records wait behind the head until it is redriven and handled, or discarded):"
                );
                println!(
                    "{:<16} {:<40} {:>5} {:<36} ERROR",
                    "CONSUMER", "KEY", "DEPTH", "HEAD"
                );
                for p in &parked {
                    println!(
                        "{:<16} {:<40} {:>5} {:<36} {}",
                        clip(&s(&p["consumer"]), 16),
                        clip(&s(&p["key"]), 40),
                        s(&p["depth"]),
                        clip(&s(&p["head"]), 36),
                        clip(&s(&p["headError"]), 60)
                    );
                }
            }
            Ok(())
        }
        Dlq::Show { id, common } => {
            let v = common.call("GET", &format!("/admin/dlq/{id}"), &[], None)?;
            if common.printed_json(&v)? {
                return Ok(());
            }
            for k in [
                "id",
                "status",
                "statusReason",
                "originalTopic",
                "originalPartition",
                "originalOffset",
                "consumer",
                "eventType",
                "eventId",
                "correlationId",
                "attempts",
                "firstFailedAt",
                "lastFailedAt",
                "error",
                "key",
            ] {
                println!("{k:>18}: {}", s(&v[k]));
            }
            println!("{:>18}:", "headers");
            if let Some(h) = v["headers"].as_object() {
                for (k, val) in h {
                    println!("{:>20}{k} = {}", "", s(val));
                }
            }
            println!("{:>18}:", "payload");
            println!("{}", serde_json::to_string_pretty(&v["payload"])?);
            Ok(())
        }
        Dlq::Redrive {
            ids,
            all,
            limit,
            filter,
            common,
        } => {
            let mut remaining = None;
            let redriven: Vec<Value> = if all {
                let mut body = serde_json::Map::new();
                for (k, v) in filter_pairs(&filter) {
                    body.insert(k.to_owned(), Value::String(v));
                }
                if let Some(l) = limit {
                    body.insert("limit".into(), Value::from(l));
                }
                let v =
                    common.call("POST", "/admin/dlq/redrive", &[], Some(Value::Object(body)))?;
                remaining = v["remaining"].as_i64();
                v["redriven"].as_array().cloned().unwrap_or_default()
            } else {
                if ids.is_empty() {
                    anyhow::bail!("name the dead letters to redrive, or pass --all");
                }
                let mut out = Vec::new();
                for id in &ids {
                    let v = common.call("POST", &format!("/admin/dlq/{id}/redrive"), &[], None)?;
                    out.extend(v["redriven"].as_array().cloned().unwrap_or_default());
                }
                out
            };
            if !common.printed_json(&redriven)? {
                let mut sent = 0;
                for r in &redriven {
                    if r["alreadyRedriven"].as_bool() == Some(true) {
                        println!("{} was redriven before: nothing sent", s(&r["id"]));
                    } else {
                        sent += 1;
                        println!(
                            "redriven {} → {} (for {})",
                            s(&r["id"]),
                            s(&r["topic"]),
                            s(&r["consumer"])
                        );
                    }
                }
                println!("{sent} dead letter(s) redriven");
                if let Some(n) = remaining.filter(|n| *n > 0) {
                    println!("{n} more match: run it again to redrive the next batch");
                }
            }
            Ok(())
        }
        Dlq::Discard { id, reason, common } => {
            let v = common.call(
                "POST",
                &format!("/admin/dlq/{id}/discard"),
                &[],
                Some(serde_json::json!({ "reason": reason })),
            )?;
            if !common.printed_json(&v)? {
                println!("discarded {} ({})", s(&v["id"]), s(&v["statusReason"]));
            }
            Ok(())
        }
    }
}

/// `shopflow lag`: consumer lag per group and partition, and the outbox backlogs.
pub(crate) fn lag(common: Common, all: bool) -> anyhow::Result<()> {
    let v = common.call("GET", "/admin/lag", &[], None)?;
    if common.printed_json(&v)? {
        return Ok(());
    }
    let rows = v["partitions"].as_array().cloned().unwrap_or_default();
    println!(
        "{:<18} {:<26} {:>4} {:>12} {:>12} {:>10}",
        "GROUP", "TOPIC", "PART", "COMMITTED", "END", "LAG"
    );
    let mut hidden = 0;
    for r in &rows {
        if !all && r["lag"].as_u64() == Some(0) {
            hidden += 1;
            continue;
        }
        println!(
            "{:<18} {:<26} {:>4} {:>12} {:>12} {:>10}",
            s(&r["group"]),
            s(&r["topic"]),
            s(&r["partition"]),
            s(&r["committed"]),
            s(&r["endOffset"]),
            s(&r["lag"])
        );
    }
    if hidden > 0 {
        println!("({hidden} partitions without lag not shown; --all shows them)");
    }
    println!();
    println!("{:<18} {:>10}", "GROUP", "TOTAL LAG");
    if let Some(g) = v["groups"].as_object() {
        for (name, lag) in g {
            println!("{name:<18} {:>10}", s(lag));
        }
    }
    println!();
    println!("{:<18} {:>10}", "OUTBOX", "BACKLOG");
    if let Some(o) = v["outboxBacklog"].as_object() {
        for (name, n) in o {
            println!("{name:<18} {:>10}", s(n));
        }
    }
    Ok(())
}
