//! Deterministic simulation of the whole shop.
//!
//! One seed decides a whole schedule: the orders placed, which consumer sees which records when,
//! the relays' rounds, the clock, every id the code makes, and the faults — crashes of any
//! service at any step (at its crash points: before a consumer's commit, between a relay's
//! publish and its delete; and between a commit and the offset commit), redelivery of handled
//! records, duplicates on the bus, reordering across topics and partitions (never within one),
//! rebalances, delays, payment-gateway outages and slow answers, poison records. The code under
//! test is the real code: the services started from their descriptors, the consumer runtime
//! with its stages, the saga orchestrator and its timers, the outbox relays, the projector,
//! the HTTP API with its card edge, on real SQLite files. After the faults stop, the shop must
//! settle, and then `verify`'s invariants and the simulator's own must hold.
//!
//! Everything runs on one thread with tokio's clock paused, and time, ids and crash points go
//! through `shopflow_envelope::sim`: the same seed replays the same schedule exactly.

mod bus;
mod rng;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{Value, json};
use shopflow::services::SERVICES;
use shopflow_bus::{Bus, Message, TopicPartition, TopicSpec};
use shopflow_contracts::audit::Facts;
use shopflow_envelope::Registry;
use shopflow_envelope::sim::{Bug, World};
use shopflow_payment::Simulator;
use shopflow_payment::edge::CardVault;
use shopflow_runtime::{BreakerConfig, Runner, RunnerConfig, Shutdown, ShutdownTrigger, system};
use shopflow_service::{Context, SagaStyle, Service, Settings};
use shopflow_store::outbox::{Relay, RelayConfig};
use shopflow_store::{Db, DbUrl};
use tokio::task::JoinHandle;
use tower::ServiceExt as _;

pub use bus::SimBus;
pub use rng::Rng;
pub use shopflow_envelope::sim::Bug as PlantedBug;

/// Partitions of every topic (more than one, so that records of different orders can overtake
/// each other).
const PARTITIONS: u32 = 3;
/// The simulated clock starts here (2026-01-01T00:00:00Z).
const EPOCH_MS: i64 = 1_767_225_600_000;
/// A card the gateway approves, and one it declines.
const GOOD_CARD: &str = "4242424242424242";
const DECLINED_CARD: &str = "4000000000000002";

/// Probabilities of the faults of one schedule.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    /// Per step: a service is killed and restarted between steps.
    pub crash: f64,
    /// Per crash point reached: the process dies there (before a consumer's commit, between a
    /// relay's publish and its delete).
    pub crash_point: f64,
    /// Per delivery: the consumer's process dies after its commit, before the offsets'.
    pub crash_after_commit: f64,
    /// Per step: a consumer group loses its uncommitted progress or is sent back over records
    /// it already handled.
    pub redeliver: f64,
    /// Per step: a record on the bus is appended again (a producer's retry).
    pub duplicate: f64,
    /// Per step: a record that is no envelope lands on a topic (under an order's key half the
    /// time, so that the order's later records wait behind its dead letter).
    pub poison: f64,
    /// Per step: the operator redrives or discards the open dead letters.
    pub operator: f64,
    /// Per step: the payment gateway goes down, or comes back.
    pub outage: f64,
    /// Per step: message delivery (the mailer) goes down, or comes back.
    pub mailer_outage: f64,
    /// The payment gateway's answer time.
    pub gateway_latency: Duration,
}

impl Faults {
    /// The name (in a spec) of every probability, and where it is.
    fn probabilities(&mut self) -> [(&'static str, &mut f64); 9] {
        [
            ("crash", &mut self.crash),
            ("crash_point", &mut self.crash_point),
            ("after_commit", &mut self.crash_after_commit),
            ("redeliver", &mut self.redeliver),
            ("duplicate", &mut self.duplicate),
            ("poison", &mut self.poison),
            ("operator", &mut self.operator),
            ("outage", &mut self.outage),
            ("mailer", &mut self.mailer_outage),
        ]
    }
}

/// The bugs that can be planted, by their names in a spec.
const BUGS: [(&str, Bug); 3] = [
    ("effect-without-inbox", Bug::EffectWithoutInbox),
    ("relay-deletes-first", Bug::RelayDeletesFirst),
    ("order-drops-late-fact", Bug::OrderDropsLateFact),
];

/// One schedule.
#[derive(Clone, Debug)]
pub struct Options {
    pub seed: u64,
    pub style: SagaStyle,
    /// Orders placed while the faults happen.
    pub orders: usize,
    /// Steps of the faulty phase, at least.
    pub steps: usize,
    pub faults: Faults,
    /// Stock enough for every order (then the business outcome of an order depends only on
    /// its card, whatever the faults and the saga style).
    pub ample_stock: bool,
    /// A known bug to plant (to prove the simulator finds its class).
    pub planted: Option<Bug>,
    /// Transactions a consumer keeps in flight at once (`RunnerConfig::lanes`; the handlers cap
    /// it as they do in production).
    pub lanes: usize,
}

impl Options {
    /// The schedule `seed` stands for: its size, style and faults all drawn from it.
    pub fn from_seed(seed: u64) -> Self {
        let mut r = Rng::fork(seed, 0x0b7e);
        let mut p = |max: f64| {
            if r.chance(0.6) {
                max * (r.below(1000) as f64 / 1000.0)
            } else {
                0.0
            }
        };
        let faults = Faults {
            crash: p(0.04),
            crash_point: p(0.08),
            crash_after_commit: p(0.08),
            redeliver: p(0.05),
            duplicate: p(0.05),
            poison: p(0.02),
            operator: p(0.02),
            outage: p(0.03),
            mailer_outage: p(0.03),
            gateway_latency: Duration::ZERO,
        };
        let mut r = Rng::fork(seed, 0x5e7);
        let faults = Faults {
            gateway_latency: Duration::from_millis(if r.chance(0.3) { r.range(1, 800) } else { 0 }),
            ..faults
        };
        Options {
            seed,
            style: if r.chance(0.5) {
                SagaStyle::Choreography
            } else {
                SagaStyle::Orchestration
            },
            orders: r.range(1, 6) as usize,
            steps: r.range(20, 120) as usize,
            faults,
            ample_stock: r.chance(0.5),
            planted: None,
            lanes: if r.chance(0.5) {
                1
            } else {
                PARTITIONS as usize
            },
        }
    }
}

impl Options {
    /// The schedule as one line (`SHOPFLOW_SIM_SPEC` replays it): every choice spelled out, so
    /// that a shrunk schedule replays as exactly as a seed does.
    pub fn spec(&self) -> String {
        let mut out = format!(
            "seed={} style={} orders={} steps={} lanes={} stock={} latency_ms={}",
            self.seed,
            self.style,
            self.orders,
            self.steps,
            self.lanes,
            if self.ample_stock { "ample" } else { "scarce" },
            self.faults.gateway_latency.as_millis(),
        );
        for (name, p) in self.faults.clone().probabilities() {
            out.push_str(&format!(" {name}={p}"));
        }
        let bug = BUGS.iter().find(|(_, b)| Some(*b) == self.planted);
        out.push_str(&format!(" planted={}", bug.map_or("none", |(n, _)| n)));
        out
    }

    /// Reads a [`spec`](Self::spec): `seed=` first; every other field overrides what the seed
    /// would choose.
    pub fn from_spec(spec: &str) -> Result<Options, String> {
        let mut o: Option<Options> = None;
        for part in spec.split_whitespace() {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}` is not key=value"))?;
            let num = |v: &str| v.parse::<u64>().map_err(|e| format!("{k}: {e}"));
            let p = |v: &str| v.parse::<f64>().map_err(|e| format!("{k}: {e}"));
            if k == "seed" {
                o = Some(Options::from_seed(num(v)?));
                continue;
            }
            let o = o.as_mut().ok_or("a spec starts with seed=")?;
            match k {
                "style" => o.style = v.parse()?,
                "orders" => o.orders = num(v)? as usize,
                "steps" => o.steps = num(v)? as usize,
                "lanes" => o.lanes = num(v)?.max(1) as usize,
                "stock" => o.ample_stock = v == "ample",
                "latency_ms" => o.faults.gateway_latency = Duration::from_millis(num(v)?),
                "planted" if v == "none" => o.planted = None,
                "planted" => {
                    let (_, bug) = BUGS
                        .iter()
                        .find(|(n, _)| *n == v)
                        .ok_or_else(|| format!("unknown planted bug `{v}`"))?;
                    o.planted = Some(*bug);
                }
                other => {
                    let value = p(v)?;
                    let mut faults = o.faults.probabilities();
                    let (_, slot) = faults
                        .iter_mut()
                        .find(|(n, _)| *n == other)
                        .ok_or_else(|| format!("unknown spec field `{other}`"))?;
                    **slot = value;
                }
            }
        }
        o.ok_or_else(|| "a spec starts with seed=".to_owned())
    }

    /// How big the schedule is: orders, steps and the kinds of fault switched on.
    pub fn size(&self) -> (usize, usize, usize) {
        let f = &self.faults;
        let on = f
            .clone()
            .probabilities()
            .iter()
            .filter(|(_, p)| **p > 0.0)
            .count()
            + usize::from(!f.gateway_latency.is_zero())
            + usize::from(self.lanes > 1);
        (self.orders, self.steps, on)
    }

    /// Smaller schedules to try when this one fails: fewer orders, fewer steps, one kind of
    /// fault fewer.
    fn smaller(&self) -> Vec<Options> {
        let mut out = Vec::new();
        let mut with = |f: &dyn Fn(&mut Options)| {
            let mut o = self.clone();
            f(&mut o);
            if o.size() != self.size() {
                out.push(o);
            }
        };
        with(&|o| o.orders = (o.orders / 2).max(1));
        with(&|o| o.orders = o.orders.saturating_sub(1).max(1));
        with(&|o| o.steps = (o.steps / 2).max(5));
        for i in 0..9 {
            with(&|o| *o.faults.probabilities()[i].1 = 0.0);
        }
        with(&|o| o.faults.gateway_latency = Duration::ZERO);
        with(&|o| o.lanes = 1);
        out
    }
}

/// Shrinks a failing schedule: tries smaller ones (fewer orders, steps and kinds of fault)
/// and keeps any that still fails, until none does or `budget` runs are spent. Returns the
/// smallest failing schedule found and its report.
pub fn shrink(failing: &Options, budget: usize) -> (Options, Report) {
    let mut best = failing.clone();
    let mut report = run(&best);
    let mut runs = 1;
    'outer: while runs < budget {
        for candidate in best.smaller() {
            if runs >= budget {
                break 'outer;
            }
            runs += 1;
            let r = run(&candidate);
            if !r.ok() {
                best = candidate;
                report = r;
                continue 'outer;
            }
        }
        break;
    }
    (best, report)
}

/// What a schedule came to.
#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    /// Each placed order's final status, by the order in which it was placed.
    pub outcomes: Vec<(String, String)>,
    /// Every invariant that does not hold.
    pub violations: Vec<String>,
    /// What happened, step by step: the actions and the faults.
    pub trace: Vec<String>,
    pub steps: usize,
    /// Records that waited behind a dead letter of their key (sequenced dead letters).
    pub parked: u64,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// A hash of the trace and the outcomes: equal for runs of one seed.
    pub fn fingerprint(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for line in self
            .trace
            .iter()
            .chain(self.outcomes.iter().map(|(_, s)| s))
        {
            for b in line.bytes().chain([b'\n']) {
                h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
            }
        }
        h
    }

    /// The failure as a reader needs it: the seed, how to replay it, the violations and the
    /// trace.
    pub fn explain(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "schedule {seed} {}; replay it with SHOPFLOW_SIM_SEED={seed}",
            if self.ok() {
                "kept every invariant"
            } else {
                "FAILED"
            },
            seed = self.seed
        );
        let _ = writeln!(s, "outcomes: {:?}", self.outcomes);
        for v in &self.violations {
            let _ = writeln!(s, "  violation: {v}");
        }
        let _ = writeln!(s, "trace ({} lines):", self.trace.len());
        for l in &self.trace {
            let _ = writeln!(s, "  {l}");
        }
        s
    }
}

/// Runs one schedule to its end. Never panics on a finding: violations are in the report.
pub fn run(options: &Options) -> Report {
    let shared = Rc::new(RefCell::new(Shared {
        now_ms: EPOCH_MS,
        ids: Rng::fork(options.seed, 0x1d5),
        crashes: Rng::fork(options.seed, 0xc4a5),
        crash_point: 0.0,
        planted: options.planted,
        trace: Vec::new(),
    }));
    let _installed = shopflow_envelope::sim::install(Box::new(SimWorld(shared.clone())));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            return Report {
                seed: options.seed,
                violations: vec![format!("cannot build the runtime: {e}")],
                ..Report::default()
            };
        }
    };
    let result = runtime.block_on(async {
        let mut sim = Sim::new(options.clone(), shared.clone()).await?;
        sim.schedule().await
    });
    let mut report = match result {
        Ok(r) => r,
        Err(e) => Report {
            violations: vec![format!("the simulation could not go on: {e}")],
            ..Report::default()
        },
    };
    report.seed = options.seed;
    report.trace = std::mem::take(&mut shared.borrow_mut().trace);
    report
}

/// What the simulator and the code under test share on this thread.
struct Shared {
    now_ms: i64,
    /// Ids the code makes.
    ids: Rng,
    /// Whether a crash point fires.
    crashes: Rng,
    crash_point: f64,
    planted: Option<Bug>,
    trace: Vec<String>,
}

struct SimWorld(Rc<RefCell<Shared>>);

impl World for SimWorld {
    fn now_ms(&self) -> i64 {
        self.0.borrow().now_ms
    }
    fn next_u64(&mut self) -> u64 {
        self.0.borrow_mut().ids.next_u64()
    }
    fn crash(&mut self, name: &'static str) -> bool {
        let mut s = self.0.borrow_mut();
        let p = s.crash_point;
        let dies = s.crashes.chance(p);
        if dies {
            s.trace.push(format!("  ! crash point {name} fires"));
        }
        dies
    }
    fn planted(&self, bug: Bug) -> bool {
        self.0.borrow().planted == Some(bug)
    }
}

type SimError = String;

/// One consumer group of a running service.
struct Group {
    name: &'static str,
    topics: Vec<String>,
    runner: Runner<SimBus>,
    /// Where the member reads next, per partition (from the committed offset after a restart).
    at: BTreeMap<TopicPartition, u64>,
    /// The member waits (a retry's backoff, a paused dependency) until then.
    paused_until: i64,
}

/// A running service: what a crash takes away.
struct Node {
    service: &'static Service<Facts>,
    db: Db,
    groups: Vec<Group>,
    relay: Relay<SimBus>,
    router: Router,
    vault: Option<CardVault>,
    tasks: Vec<JoinHandle<()>>,
    trigger: ShutdownTrigger,
}

struct Sim {
    opts: Options,
    shared: Rc<RefCell<Shared>>,
    rng: Rng,
    bus: SimBus,
    dir: tempfile::TempDir,
    settings: Arc<Settings>,
    registry: Arc<Registry>,
    gateway: Arc<Simulator>,
    mailer: shopflow_notification::MailerOutage,
    nodes: Vec<Node>,
    router: Router,
    customers: Vec<String>,
    skus: Vec<String>,
    /// Orders accepted (202), in placement order.
    placed: Vec<String>,
    /// Poison records: topic, key and value.
    poisons: Vec<(String, String, bytes::Bytes)>,
    /// The operations database (the dead-letter index) and its relay.
    ops: Db,
    ops_relay: Relay<SimBus>,
    /// How far the dead-letter index has read each `.dlq` partition.
    indexed: BTreeMap<TopicPartition, u64>,
    outage: bool,
    /// What the schedule places (drawn up front, so that both saga styles get the same).
    plan: Rng,
    /// Whether faults may happen now.
    faulty: bool,
    /// Records parked behind a dead letter during the schedule.
    report_parked: u64,
}

impl Sim {
    async fn new(opts: Options, shared: Rc<RefCell<Shared>>) -> Result<Sim, SimError> {
        // In memory where the machine has it: a schedule fsyncs hundreds of times.
        let dir = match std::path::Path::new("/dev/shm") {
            p if p.is_dir() => tempfile::Builder::new()
                .prefix("shopflow-sim-")
                .tempdir_in(p),
            _ => tempfile::Builder::new().prefix("shopflow-sim-").tempdir(),
        }
        .map_err(|e| format!("temporary directory: {e}"))?;
        let gateway = Arc::new(Simulator::new(opts.faults.gateway_latency));
        let mailer = shopflow_notification::MailerOutage::default();
        let settings = Settings::new(dir.path(), opts.style, BreakerConfig::default())
            .with(shopflow_payment::SharedGateway(gateway.clone()))
            .with(mailer.clone())
            .with(shopflow_payment::VaultKeyText(VAULT_KEYS.to_owned()));
        let bus = SimBus::default();
        bus.set_now(EPOCH_MS);
        let spec = TopicSpec::new(PARTITIONS);
        for t in shopflow::services::topics() {
            bus.create_topic(&t, &spec)
                .await
                .map_err(|e| e.to_string())?;
            bus.create_topic(&shopflow_envelope::dlq_topic(&t), &spec)
                .await
                .map_err(|e| e.to_string())?;
        }
        let ops = DbUrl::Sqlite
            .open(dir.path(), shopflow::services::OPS)
            .await
            .map_err(|e| format!("opening ops: {e}"))?;
        ops.migrate_service(shopflow::services::OPS, shopflow_runtime::dlq::MIGRATIONS)
            .await
            .map_err(|e| format!("migrating ops: {e}"))?;
        let mut sim = Sim {
            ops_relay: Relay::new(ops.clone(), bus.clone(), RelayConfig::default()),
            ops,
            indexed: BTreeMap::new(),
            rng: Rng::fork(opts.seed, 0xd21e),
            plan: Rng::fork(opts.seed, 0x91a4),
            mailer,
            opts,
            shared,
            bus,
            dir,
            settings: Arc::new(settings),
            registry: Arc::new(shopflow::services::registry()),
            gateway,
            nodes: Vec::new(),
            router: Router::new(),
            customers: Vec::new(),
            skus: Vec::new(),
            placed: Vec::new(),
            poisons: Vec::new(),
            outage: false,
            faulty: false,
            report_parked: 0,
        };
        for s in SERVICES {
            let node = sim.start(s).await?;
            sim.nodes.push(node);
        }
        sim.compose();
        Ok(sim)
    }

    fn trace(&self, line: impl Into<String>) {
        let mut s = self.shared.borrow_mut();
        let t = s.now_ms - EPOCH_MS;
        let line = line.into();
        s.trace.push(format!("{t:>8} {line}"));
    }

    fn now(&self) -> i64 {
        self.shared.borrow().now_ms
    }

    async fn start(&self, service: &'static Service<Facts>) -> Result<Node, SimError> {
        let db = DbUrl::Sqlite
            .open(self.dir.path(), service.name)
            .await
            .map_err(|e| format!("opening {}: {e}", service.name))?;
        service
            .migrate(&db)
            .await
            .map_err(|e| format!("migrating {}: {e}", service.name))?;
        let (trigger, shutdown) = Shutdown::new();
        let started = (service.start)(Context {
            db: db.clone(),
            settings: self.settings.clone(),
            shutdown: shutdown.clone(),
            bus: Arc::new(self.bus.clone()),
        })
        .await
        .map_err(|e| format!("starting {}: {e}", service.name))?;
        let mut tasks = Vec::new();
        for b in &started.breakers {
            let dependents = system::dependents(b, &started.handlers);
            tasks.push(tokio::spawn(system::watch_breaker(
                b.clone(),
                dependents,
                db.clone(),
                shutdown.clone(),
            )));
        }
        let config = RunnerConfig {
            lanes: Some(self.opts.lanes),
            ..RunnerConfig::default()
        };
        let mut groups = Vec::new();
        for h in started.handlers {
            let name = shopflow_runtime::Handler::name(&h);
            let topics = shopflow_runtime::Handler::topics(&h);
            let mut at = BTreeMap::new();
            for (tp, _) in self.bus.ends(&topics) {
                let o = self.bus.committed_offset(name, &tp);
                at.insert(tp, o);
            }
            groups.push(Group {
                name,
                topics,
                runner: Runner::new(
                    self.bus.clone(),
                    db.clone(),
                    Arc::new(h),
                    self.registry.clone(),
                    config.clone(),
                ),
                at,
                paused_until: 0,
            });
        }
        tasks.extend(started.tasks.into_iter().map(tokio::spawn));
        Ok(Node {
            service,
            relay: Relay::new(db.clone(), self.bus.clone(), RelayConfig::default()),
            db,
            groups,
            router: started.router,
            vault: started.exports.get::<CardVault>().cloned(),
            tasks,
            trigger,
        })
    }

    /// The shop's API as one router, with the card edge in front (as `Shop` serves it).
    fn compose(&mut self) {
        let mut app = Router::new();
        let mut vault = None;
        for n in &self.nodes {
            app = app.merge(n.router.clone());
            vault = vault.or(n.vault.clone());
        }
        self.router = match vault {
            Some(v) => app.layer(axum::middleware::from_fn_with_state(
                v,
                shopflow_payment::edge::tokenize_cards,
            )),
            None => app,
        };
    }

    /// Kills service `i` (its tasks, consumers and in-memory state go; its database and the
    /// bus stay) and starts it again.
    async fn crash(&mut self, i: usize, why: &str) -> Result<(), SimError> {
        let name = self.nodes[i].service.name;
        self.trace(format!("CRASH {name} ({why}); restart"));
        let old = self.nodes.remove(i);
        old.trigger.trigger();
        for t in &old.tasks {
            t.abort();
        }
        for t in old.tasks {
            let _ = t.await;
        }
        drop(old.groups);
        let node = self.start(old.service).await?;
        self.nodes.insert(i, node);
        self.compose();
        Ok(())
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = match req.body(body.map_or_else(Body::empty, |b| Body::from(b.to_string()))) {
            Ok(r) => r,
            Err(e) => return (StatusCode::BAD_REQUEST, json!({"error": e.to_string()})),
        };
        let resp = match self.router.clone().oneshot(req).await {
            Ok(r) => r,
            Err(e) => match e {},
        };
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap_or_default();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// Moves the clock by `ms`: background tasks (projector, saga timers, breaker watchers)
    /// run as far as their timers reach.
    async fn tick(&mut self, ms: u64) {
        self.shared.borrow_mut().now_ms += ms as i64;
        self.bus.set_now(self.now());
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    /// The schedule: set up, the faulty phase, settling, the checks.
    async fn schedule(&mut self) -> Result<Report, SimError> {
        self.setup().await?;
        self.faulty = true;
        self.shared.borrow_mut().crash_point = self.opts.faults.crash_point;
        self.trace(format!("faults on: {:?}", self.opts.faults));
        let mut step = 0;
        while step < self.opts.steps || self.placed.len() < self.opts.orders {
            step += 1;
            self.step().await?;
            if step > self.opts.steps * 20 + 1000 {
                break;
            }
        }
        self.faulty = false;
        self.shared.borrow_mut().crash_point = 0.0;
        if self.outage {
            self.set_outage(false).await;
        }
        if self.mailer.is_down() {
            self.mailer.set(false);
            self.trace("mailer up");
        }
        self.trace("faults off; settling");
        let settled = self.settle().await?;
        let mut report = Report {
            steps: step,
            parked: self.report_parked,
            ..Report::default()
        };
        if !settled {
            report
                .violations
                .push("the shop did not settle after the faults stopped".into());
        }
        self.check(&mut report).await?;
        Ok(report)
    }

    async fn setup(&mut self) -> Result<(), SimError> {
        let customers = self.plan.range(1, 3);
        for i in 0..customers {
            let (s, b) = self
                .call(
                    Method::POST,
                    "/users",
                    Some(json!({"email": format!("c{i}@example.com"), "name": format!("Customer {i}")})),
                )
                .await;
            let id = b["userId"].as_str().unwrap_or_default().to_owned();
            if s != StatusCode::CREATED || id.is_empty() {
                return Err(format!("registering a customer: {s} {b}"));
            }
            self.customers.push(id);
        }
        let skus = self.plan.range(1, 3);
        for k in 0..skus {
            let stock = if self.opts.ample_stock {
                1000
            } else {
                self.plan.range(0, 6)
            };
            let sku = format!("SIM-{k}");
            let (s, b) = self
                .call(
                    Method::PUT,
                    &format!("/products/{sku}"),
                    Some(json!({"name": format!("Item {k}"), "priceMinor": 250 + 100 * k, "currency": "EUR", "stock": stock})),
                )
                .await;
            if !s.is_success() {
                return Err(format!("stocking {sku}: {s} {b}"));
            }
            self.trace(format!("stock {sku}: {stock}"));
            self.skus.push(sku);
        }
        // The order service learns customers and the catalog from events.
        if !self.settle().await? {
            return Err("the catalog never reached the order service".into());
        }
        Ok(())
    }

    /// One step of the faulty phase.
    async fn step(&mut self) -> Result<(), SimError> {
        let f = self.opts.faults.clone();
        let placing = self.placed.len() < self.opts.orders;
        // Actions: place, relay, deliver, tick, and the faults.
        let weights = [
            if placing { 3 } else { 0 },
            6,
            12,
            3,
            (f.crash * 1000.0) as u32,
            (f.redeliver * 1000.0) as u32,
            (f.duplicate * 1000.0) as u32,
            (f.poison * 1000.0) as u32,
            (f.outage * 1000.0) as u32,
            (f.mailer_outage * 1000.0) as u32,
            (f.operator * 1000.0) as u32,
        ];
        // The faults' probabilities are per step: the 24 parts of the rest make up the thousand.
        let scaled: Vec<u32> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| if i < 4 { w * 1000 / 24 } else { *w })
            .collect();
        match self.rng.weighted(&scaled) {
            0 => self.place().await?,
            1 => {
                let i = self.rng.below(self.nodes.len() as u64) as usize;
                self.relay(i).await?;
            }
            2 => {
                let (i, g) = self.pick_group();
                self.deliver(i, g, 4).await?;
            }
            3 => {
                let ms = self.rng.range(1, 3000);
                self.tick(ms).await;
            }
            4 => {
                let i = self.rng.below(self.nodes.len() as u64) as usize;
                self.crash(i, "killed between steps").await?;
            }
            5 => self.redeliver(),
            6 => self.duplicate(),
            7 => self.poison().await?,
            10 => {
                self.operate().await?;
            }
            9 => {
                let down = !self.mailer.is_down();
                self.mailer.set(down);
                self.trace(format!("mailer {}", if down { "DOWN" } else { "up" }));
            }
            _ => {
                let down = !self.outage;
                self.set_outage(down).await;
            }
        }
        Ok(())
    }

    fn pick_group(&mut self) -> (usize, usize) {
        let all: Vec<(usize, usize)> = self
            .nodes
            .iter()
            .enumerate()
            .flat_map(|(i, n)| (0..n.groups.len()).map(move |g| (i, g)))
            .collect();
        all[self.rng.below(all.len() as u64) as usize]
    }

    async fn place(&mut self) -> Result<(), SimError> {
        let customer =
            self.customers[self.plan.below(self.customers.len() as u64) as usize].clone();
        let lines = self.plan.range(1, 2);
        let items: Vec<Value> = (0..lines)
            .map(|_| {
                let sku = &self.skus[self.plan.below(self.skus.len() as u64) as usize];
                json!({"sku": sku, "quantity": self.plan.range(1, 3)})
            })
            .collect();
        let card = if self.plan.chance(0.2) {
            DECLINED_CARD
        } else {
            GOOD_CARD
        };
        let body = json!({
            "customerId": customer,
            "items": items,
            "payment": {"cardNumber": card},
            "shippingAddress": {"name": "Ada", "line1": "1 Main St", "city": "Berlin", "postalCode": "10115", "country": "DE"},
        });
        let (s, b) = self.call(Method::POST, "/orders", Some(body)).await;
        match b["orderId"].as_str() {
            Some(id) if s == StatusCode::ACCEPTED => {
                self.trace(format!("place {id} ({card}, {items:?})", items = b));
                self.placed.push(id.to_owned());
            }
            _ => {
                // A placement the API refused is no order; the schedule places another.
                self.trace(format!("placement refused: {s} {b}"));
                if s.is_server_error() {
                    return Err(format!("POST /orders failed: {s} {b}"));
                }
                self.placed.push(String::new());
            }
        }
        Ok(())
    }

    async fn set_outage(&mut self, down: bool) {
        let (s, _) = self
            .call(
                Method::PUT,
                "/admin/payment-gateway",
                Some(json!({"outage": down})),
            )
            .await;
        self.trace(format!(
            "payment gateway {} ({s})",
            if down { "DOWN" } else { "up" }
        ));
        self.outage = down;
    }

    /// One round of service `i`'s relay. Returns how many rows it moved.
    async fn relay(&mut self, i: usize) -> Result<usize, SimError> {
        match self.nodes[i].relay.drain_once().await {
            Ok(n) => {
                if n > 0 {
                    self.trace(format!("relay {}: {n}", self.nodes[i].service.name));
                }
                Ok(n)
            }
            Err(shopflow_store::Error::Crashed(at)) => {
                self.crash(i, at).await?;
                Ok(0)
            }
            Err(e) => {
                self.trace(format!("relay {} failed: {e}", self.nodes[i].service.name));
                Ok(0)
            }
        }
    }

    /// Hands group `g` of service `i` some of its pending records: from up to three
    /// partitions, at most `most` from each, interleaved at random (each partition's own in
    /// order). Returns how many it handed over.
    async fn deliver(&mut self, i: usize, g: usize, most: u64) -> Result<usize, SimError> {
        let now = self.now();
        let group = &self.nodes[i].groups[g];
        if group.paused_until > now {
            return Ok(0);
        }
        let mut pending: Vec<(TopicPartition, u64, u64)> = self
            .bus
            .ends(&group.topics)
            .into_iter()
            .filter_map(|(tp, end)| {
                let at = group.at.get(&tp).copied().unwrap_or(0);
                (at < end).then_some((tp, at, end))
            })
            .collect();
        if pending.is_empty() {
            return Ok(0);
        }
        let mut queues = Vec::new();
        let parts = self.rng.range(1, 3.min(pending.len() as u64));
        for _ in 0..parts {
            let (tp, at, end) = pending.remove(self.rng.below(pending.len() as u64) as usize);
            let n = self.rng.range(1, most).min(end - at);
            queues.push(std::collections::VecDeque::from(self.bus.slice(
                &tp,
                at,
                at + n,
            )));
        }
        let mut records = Vec::new();
        while !queues.is_empty() {
            let q = self.rng.below(queues.len() as u64) as usize;
            match queues[q].pop_front() {
                Some(r) => records.push(r),
                None => {
                    queues.remove(q);
                }
            }
        }
        let name = self.nodes[i].groups[g].name;
        let what: Vec<String> = records
            .iter()
            .map(|r| format!("{}/{}@{}", r.topic, r.partition, r.offset))
            .collect();
        self.trace(format!("deliver {name}: {}", what.join(" ")));
        let n = records.len();
        let stats = self.nodes[i].groups[g].runner.stats();
        let (parked, dead) = (
            stats.parked.load(std::sync::atomic::Ordering::Relaxed),
            stats
                .dead_lettered
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        let result = self.nodes[i].groups[g].runner.deliver(&records).await;
        let parked = stats.parked.load(std::sync::atomic::Ordering::Relaxed) - parked;
        let dead = stats
            .dead_lettered
            .load(std::sync::atomic::Ordering::Relaxed)
            - dead;
        if parked + dead > 0 {
            self.trace(format!(
                "  {name}: {dead} dead-lettered, {parked} parked behind a dead letter"
            ));
            self.report_parked += parked;
        }
        match result {
            Err(shopflow_store::Error::Crashed(at)) => {
                self.crash(i, at).await?;
            }
            Err(e) => {
                // The real consumer leaves the group and joins again: from the committed offsets.
                self.trace(format!("  {name} failed: {e}; rejoins"));
                self.rejoin(i, g);
            }
            Ok(d) => {
                if self.faulty && self.rng.chance(self.opts.faults.crash_after_commit) {
                    self.crash(i, "after the commit, before the offsets'")
                        .await?;
                    return Ok(n);
                }
                self.bus.commit_offsets(name, &d.commit);
                let group = &mut self.nodes[i].groups[g];
                for (tp, o) in d.commit.iter().chain(d.resume.iter()) {
                    group.at.insert(tp.clone(), *o);
                }
                if let Some((wait, reason)) = d.stop {
                    group.paused_until = now + wait.as_millis() as i64;
                    self.trace(format!("  {name} waits {wait:?}: {reason}"));
                }
            }
        }
        Ok(n)
    }

    /// Group `g` of service `i` starts again from its committed offsets (a rebalance).
    fn rejoin(&mut self, i: usize, g: usize) {
        let group = &mut self.nodes[i].groups[g];
        for (tp, at) in group.at.iter_mut() {
            *at = self.bus.committed_offset(group.name, tp);
        }
    }

    fn redeliver(&mut self) {
        let (i, g) = self.pick_group();
        if self.rng.chance(0.5) {
            self.trace(format!("REBALANCE {}", self.nodes[i].groups[g].name));
            self.rejoin(i, g);
            return;
        }
        let group = &mut self.nodes[i].groups[g];
        let handled: Vec<(TopicPartition, u64)> = group
            .at
            .iter()
            .filter(|(_, at)| **at > 0)
            .map(|(tp, at)| (tp.clone(), *at))
            .collect();
        if handled.is_empty() {
            return;
        }
        let (tp, at) = handled[self.rng.below(handled.len() as u64) as usize].clone();
        let back = self.rng.below(at);
        group.at.insert(tp.clone(), back);
        let name = group.name;
        self.trace(format!("REDELIVER {name} {tp} from {back} (was at {at})"));
    }

    fn duplicate(&mut self) {
        let topics: Vec<String> = shopflow_contracts::all_topics();
        let t = &topics[self.rng.below(topics.len() as u64) as usize];
        let tp = TopicPartition::new(t.as_str(), self.rng.below(u64::from(PARTITIONS)) as u32);
        let end = self.bus.ends(std::slice::from_ref(t))[tp.partition as usize].1;
        if end == 0 {
            return;
        }
        let o = self.rng.below(end);
        if let Some(copy) = self.bus.duplicate(&tp, o) {
            self.trace(format!("DUPLICATE {tp}@{o} as @{copy}"));
        }
    }

    async fn poison(&mut self) -> Result<(), SimError> {
        let topics: Vec<String> = shopflow_contracts::all_topics();
        let t = topics[self.rng.below(topics.len() as u64) as usize].clone();
        let orders: Vec<&String> = self.placed.iter().filter(|o| !o.is_empty()).collect();
        let key = if !orders.is_empty() && self.rng.chance(0.5) {
            orders[self.rng.below(orders.len() as u64) as usize].clone()
        } else {
            format!("poison-{}", self.poisons.len())
        };
        let value = bus::poison_value(self.poisons.len() as u64);
        self.bus
            .publish(vec![Message::new(t.clone(), key.clone(), value.clone())])
            .await
            .map_err(|e| e.to_string())?;
        self.trace(format!("POISON {t} key {key}"));
        self.poisons.push((t, key, value));
        Ok(())
    }

    /// The operator: indexes new dead letters, then discards the poison among the open ones
    /// (it can never be handled) and redrives the rest. Returns how many it acted on.
    async fn operate(&mut self) -> Result<usize, SimError> {
        use shopflow_runtime::dlq;
        let dlq_topics: Vec<String> = shopflow::services::topics()
            .iter()
            .map(|t| shopflow_envelope::dlq_topic(t))
            .collect();
        let mut records = Vec::new();
        for (tp, end) in self.bus.ends(&dlq_topics) {
            let from = self.indexed.get(&tp).copied().unwrap_or(0);
            records.extend(self.bus.slice(&tp, from, end));
            self.indexed.insert(tp, end);
        }
        let mut tx = self.ops.begin().await.map_err(|e| e.to_string())?;
        dlq::index(&mut tx, &records)
            .await
            .map_err(|e| e.to_string())?;
        tx.commit().await.map_err(|e| e.to_string())?;
        let open = dlq::list(&self.ops, &dlq::Filter::default())
            .await
            .map_err(|e| e.to_string())?;
        for letter in &open {
            let detail = dlq::show(&self.ops, &letter.id)
                .await
                .map_err(|e| e.to_string())?;
            let poison = letter.event_type == "(undecodable)" || letter.event_id.is_none();
            if poison {
                self.trace(format!(
                    "operator discards {} ({} of {:?})",
                    letter.id, letter.consumer, detail.key
                ));
                dlq::discard(&self.ops, &letter.id, "poison: no event")
                    .await
                    .map_err(|e| e.to_string())?;
            } else {
                self.trace(format!(
                    "operator redrives {} ({}: {})",
                    letter.id, letter.consumer, letter.error
                ));
                dlq::redrive(&self.ops, &letter.id)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(open.len())
    }

    /// Runs every relay and consumer until nothing moves, moving the clock on when only
    /// timers are left. False when it never got there.
    async fn settle(&mut self) -> Result<bool, SimError> {
        let mut idle = 0;
        for _round in 0..400 {
            let mut moved = 0;
            for i in 0..self.nodes.len() {
                loop {
                    let n = self.relay(i).await?;
                    moved += n;
                    if n == 0 {
                        break;
                    }
                }
            }
            loop {
                let n = self
                    .ops_relay
                    .drain_once()
                    .await
                    .map_err(|e| e.to_string())?;
                moved += n;
                if n == 0 {
                    break;
                }
            }
            for i in 0..self.nodes.len() {
                for g in 0..self.nodes[i].groups.len() {
                    moved += self.deliver(i, g, 50).await?;
                }
            }
            let waiting = self
                .nodes
                .iter()
                .flat_map(|n| n.groups.iter())
                .map(|g| g.paused_until)
                .filter(|t| *t > self.now())
                .min();
            if moved > 0 {
                idle = 0;
                self.tick(5).await;
                continue;
            }
            if let Some(t) = waiting {
                let ms = (t - self.now()) as u64;
                self.tick(ms).await;
                continue;
            }
            // Nothing left to deliver: the operator deals with the dead letters (as one would
            // after a fix), then the projector catches up and saga deadlines pass.
            if self.operate().await? > 0 {
                idle = 0;
                continue;
            }
            idle += 1;
            if idle > 4 {
                return Ok(true);
            }
            self.tick(if idle == 1 { 1000 } else { 60_000 }).await;
        }
        Ok(false)
    }

    async fn check(&mut self, report: &mut Report) -> Result<(), SimError> {
        let dbs = shopflow::verify::Databases(
            self.nodes
                .iter()
                .map(|n| (n.service.name, n.db.clone()))
                .collect(),
        );
        let verified = shopflow::verify::verify(&dbs, true)
            .await
            .map_err(|e| format!("verify: {e}"))?;
        report.violations.extend(verified.violations);
        // Every order the API accepted exists and reached its end.
        for id in self.placed.iter().filter(|id| !id.is_empty()) {
            let (s, b) = self.call(Method::GET, &format!("/orders/{id}"), None).await;
            let status = b["status"].as_str().unwrap_or("?").to_owned();
            if s != StatusCode::OK {
                report
                    .violations
                    .push(format!("order {id}: accepted, but GET answers {s} {b}"));
            }
            report.outcomes.push((id.clone(), status));
        }
        if verified.orders < self.placed.iter().filter(|i| !i.is_empty()).count() {
            report.violations.push(format!(
                "{} orders accepted, {} in the order store",
                self.placed.len(),
                verified.orders
            ));
        }
        // The gateway charged each order once and refunded what the payments say.
        let payment = self
            .nodes
            .iter()
            .find(|n| n.service.name == shopflow_payment::NAME)
            .map(|n| n.db.clone())
            .ok_or("no payment service")?;
        let count = |sql: &'static str| {
            let db = payment.clone();
            async move {
                db.query(sql, &[])
                    .await
                    .map_err(|e| e.to_string())?
                    .first()
                    .map(|r| r.u64(0))
                    .transpose()
                    .map_err(|e| e.to_string())
                    .map(|n| n.unwrap_or(0))
            }
        };
        let charged =
            count("SELECT COUNT(*) FROM payments WHERE status IN ('COMPLETED', 'REFUNDED')")
                .await?;
        let refunded = count("SELECT COUNT(*) FROM payments WHERE status = 'REFUNDED'").await?;
        let g_charged = self
            .gateway
            .charged
            .load(std::sync::atomic::Ordering::SeqCst);
        let g_refunded = self
            .gateway
            .refunded
            .load(std::sync::atomic::Ordering::SeqCst);
        if g_charged != charged {
            report.violations.push(format!(
                "the gateway charged {g_charged} times for {charged} charged orders"
            ));
        }
        if g_refunded != refunded {
            report.violations.push(format!(
                "the gateway refunded {g_refunded} payments, the payment service records {refunded} refunds"
            ));
        }
        // Every poison record was dead-lettered by every group that reads its topic.
        let readers: Vec<(&'static str, Vec<String>)> = self
            .nodes
            .iter()
            .flat_map(|n| n.groups.iter().map(|g| (g.name, g.topics.clone())))
            .collect();
        for (topic, key, value) in &self.poisons {
            let dlq = shopflow_envelope::dlq_topic(topic);
            let mut by: BTreeSet<String> = BTreeSet::new();
            for (tp, end) in self.bus.ends(std::slice::from_ref(&dlq)) {
                for r in self.bus.slice(&tp, 0, end) {
                    if r.key.as_deref() == Some(key.as_bytes())
                        && r.value == *value
                        && let Some(c) = r.header(shopflow_runtime::headers::DLQ_CONSUMER)
                    {
                        by.insert(String::from_utf8_lossy(c).into_owned());
                    }
                }
            }
            for (group, topics) in &readers {
                if topics.contains(topic) && !by.contains(*group) {
                    report.violations.push(format!(
                        "poison record {key} on {topic}: never dead-lettered by {group}"
                    ));
                }
            }
        }
        // Nothing waits behind a dead letter once the operator has dealt with them all.
        for n in &self.nodes {
            for p in shopflow_runtime::dlq::parked(&n.db)
                .await
                .map_err(|e| e.to_string())?
            {
                report.violations.push(format!(
                    "{}: key {} still parked behind {} ({} waiting) after the operator dealt with every dead letter",
                    p.consumer, p.key, p.head, p.depth
                ));
            }
        }
        Ok(())
    }
}

/// The vault's key file: the card vault encrypts with a key of its own, which no schedule
/// decides anything with (a fixed test key).
const VAULT_KEYS: &str = "token-secret HyAhIiMkJSYnKCkqKywtLi8wMTIzNDU2Nzg5Ojs8PT4=\nkey sim AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n";
