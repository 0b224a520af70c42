//! Seeded fault schedules over the whole shop. `SHOPFLOW_SIM_SEED=<seed>` replays one schedule
//! (with its trace); `SHOPFLOW_SIM_SCHEDULES=<n>` runs more than the default.

use std::time::Instant;

use shopflow_sim::{Options, Report, run, shrink};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// `f` of every seed, on every core, in seed order.
fn par_map<T: Send>(seeds: &[u64], f: impl Fn(u64) -> T + Sync) -> Vec<T> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let out = std::sync::Mutex::new(Vec::with_capacity(seeds.len()));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(seed) = seeds.get(i) else { break };
                    let v = f(*seed);
                    out.lock().unwrap().push((i, v));
                }
            });
        }
    });
    let mut out = out.into_inner().unwrap();
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, v)| v).collect()
}

/// Runs `seeds` on every core; returns how many ran and the failed reports.
fn run_all(seeds: Vec<u64>, options: impl Fn(u64) -> Options + Sync) -> (usize, Vec<Report>) {
    let (n, failed, _) = run_counting(seeds, options);
    (n, failed)
}

/// Like [`run_all`], and counts the schedules that parked records behind a dead letter.
fn run_counting(
    seeds: Vec<u64>,
    options: impl Fn(u64) -> Options + Sync,
) -> (usize, Vec<Report>, usize) {
    let results = par_map(&seeds, |seed| {
        let r = run(&options(seed));
        (r.parked > 0, (!r.ok()).then_some(r))
    });
    let parking = results.iter().filter(|(p, _)| *p).count();
    let failed = results.into_iter().filter_map(|(_, f)| f).collect();
    (seeds.len(), failed, parking)
}

#[test]
fn seeded_schedules_keep_every_invariant() {
    if let Ok(spec) = std::env::var("SHOPFLOW_SIM_SPEC") {
        let o = Options::from_spec(&spec).expect("SHOPFLOW_SIM_SPEC");
        let r = run(&o);
        eprintln!("{}", r.explain());
        assert!(r.ok(), "schedule `{spec}` failed (trace above)");
        return;
    }
    if let Some(seed) = env_u64("SHOPFLOW_SIM_SEED") {
        let r = run(&Options::from_seed(seed));
        eprintln!("{}", r.explain());
        assert!(r.ok(), "schedule {seed} failed (trace above)");
        return;
    }
    let n = env_u64("SHOPFLOW_SIM_SCHEDULES").unwrap_or(1000);
    let first = env_u64("SHOPFLOW_SIM_FIRST").unwrap_or(0);
    let started = Instant::now();
    let (ran, failed, parking) = run_counting((first..first + n).collect(), Options::from_seed);
    eprintln!(
        "{ran} schedules from seed {first} in {:.1?}: {} failed; {parking} of them parked records behind a dead letter",
        started.elapsed(),
        failed.len()
    );
    // The sequenced dead letters are exercised, not only present.
    assert!(
        n < 200 || parking > 0,
        "no schedule parked a record behind a dead letter"
    );
    if let Some(r) = failed.first() {
        eprintln!("{}", r.explain());
        if std::env::var("SHOPFLOW_SIM_SHRINK").as_deref() != Ok("0") {
            let (small, sr) = shrink(&Options::from_seed(r.seed), 150);
            eprintln!(
                "shrunk to: SHOPFLOW_SIM_SPEC='{}'\n{}",
                small.spec(),
                sr.explain()
            );
        }
        let seeds: Vec<u64> = failed.iter().map(|r| r.seed).collect();
        panic!("{} schedules failed: seeds {seeds:?}", failed.len());
    }
}

#[test]
fn one_seed_replays_exactly() {
    for seed in [3, 17, 4242] {
        let (a, b) = (
            run(&Options::from_seed(seed)),
            run(&Options::from_seed(seed)),
        );
        assert!(!a.trace.is_empty());
        assert_eq!(
            a.trace, b.trace,
            "seed {seed}: two runs took different paths"
        );
        assert_eq!(a.outcomes, b.outcomes, "seed {seed}");
        assert_eq!(a.fingerprint(), b.fingerprint());
    }
    // And different seeds are different schedules.
    assert_ne!(
        run(&Options::from_seed(1)).fingerprint(),
        run(&Options::from_seed(2)).fingerprint()
    );
}

/// Searches seeds in order for a schedule that catches `bug`, within `budget` schedules.
fn catches(bug: shopflow_sim::PlantedBug, budget: u64) {
    let started = Instant::now();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let mut seed = 0;
    while seed < budget {
        let (_, failed) = run_all((seed..seed + threads * 4).collect(), |s| Options {
            planted: Some(bug),
            ..Options::from_seed(s)
        });
        if let Some(r) = failed.first() {
            eprintln!(
                "{bug:?}: caught by seed {} after {:.1?} ({} schedules): {}",
                r.seed,
                started.elapsed(),
                seed + threads * 4,
                r.violations.first().map_or("", String::as_str)
            );
            // Shrinking keeps it failing and makes it no bigger.
            let original = Options {
                planted: Some(bug),
                ..Options::from_seed(r.seed)
            };
            let (small, report) = shrink(&original, 60);
            assert!(!report.ok(), "the shrunk schedule must still fail");
            let (o, s, f) = original.size();
            let (o2, s2, f2) = small.size();
            assert!(
                o2 <= o && s2 <= s && f2 <= f,
                "{:?} → {:?}",
                original.size(),
                small.size()
            );
            let again = run(&Options::from_spec(&small.spec()).unwrap());
            assert_eq!(
                again.fingerprint(),
                report.fingerprint(),
                "a spec replays exactly"
            );
            eprintln!(
                "{bug:?}: shrunk from {:?} to {:?} (orders, steps, kinds of fault): {}; trace {} lines, was {}",
                original.size(),
                small.size(),
                small.spec(),
                report.trace.len(),
                r.trace.len()
            );
            return;
        }
        seed += threads * 4;
    }
    panic!("{bug:?} was not caught by {budget} schedules");
}

#[test]
fn catches_an_effect_committed_without_its_inbox_row() {
    catches(shopflow_sim::PlantedBug::EffectWithoutInbox, 400);
}

#[test]
fn catches_a_relay_that_deletes_before_it_publishes() {
    catches(shopflow_sim::PlantedBug::RelayDeletesFirst, 400);
}

#[test]
fn catches_an_order_that_drops_a_late_fact() {
    catches(shopflow_sim::PlantedBug::OrderDropsLateFact, 400);
}

/// With stock for every order and the gateway up, an order's fate is its card's: both saga
/// styles must come to it, whatever else the schedule does (crashes, redeliveries, duplicates,
/// reordering, poison, mailer outages).
#[test]
fn both_saga_styles_reach_the_same_business_outcome() {
    use shopflow_service::SagaStyle;
    let n = env_u64("SHOPFLOW_SIM_STYLE_SCHEDULES").unwrap_or(60);
    let seeds: Vec<u64> = (0..n).collect();
    let bad: Vec<(u64, Report, Report)> = par_map(&seeds, |seed| {
        let mut o = Options::from_seed(seed);
        o.ample_stock = true;
        o.faults.outage = 0.0;
        let choreo = run(&Options {
            style: SagaStyle::Choreography,
            ..o.clone()
        });
        let orch = run(&Options {
            style: SagaStyle::Orchestration,
            ..o
        });
        let fates =
            |r: &Report| -> Vec<String> { r.outcomes.iter().map(|(_, s)| s.clone()).collect() };
        (!choreo.ok() || !orch.ok() || fates(&choreo) != fates(&orch))
            .then_some((seed, choreo, orch))
    })
    .into_iter()
    .flatten()
    .collect();
    if let Some((seed, c, o)) = bad.first() {
        eprintln!(
            "choreography:\n{}\norchestration:\n{}",
            c.explain(),
            o.explain()
        );
        panic!(
            "{} of {n} seeds differ between the saga styles (first: {seed})",
            bad.len()
        );
    }
}
