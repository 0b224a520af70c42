//! The `shopflow` command line.

mod bench;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use shopflow::shop::{Shop, ShopConfig};

/// shopflow: an event-driven commerce backend and the building blocks it is made of.
#[derive(Debug, Parser)]
#[command(name = "shopflow", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole shop in this process: every service, the API, relays and consumers.
    Up {
        /// Where the event log and the services' databases live.
        #[arg(long, default_value = "./data")]
        data_dir: PathBuf,
        /// Where the HTTP API listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Partitions per topic (only for topics created by this start).
        #[arg(long, default_value_t = 4)]
        partitions: u32,
        /// Send e-mail over SMTP (`smtp://host:port`, plain) instead of to <data-dir>/mail.
        #[arg(long)]
        smtp: Option<String>,
        /// Latency of the simulated payment gateway, in milliseconds.
        #[arg(long, default_value_t = 0)]
        gateway_latency_ms: u64,
    },
    /// Place orders against a running shop and report throughput, latency and outcomes.
    Load {
        /// How many orders.
        #[arg(long, default_value_t = 1000)]
        orders: u64,
        /// Orders per second (default: as fast as the workers go).
        #[arg(long)]
        rate: Option<f64>,
        /// Concurrent clients.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// The shop's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        target: String,
        /// Do not create the LOAD-* catalog first.
        #[arg(long)]
        no_seed: bool,
        /// Every n-th order uses a declining card (0: never).
        #[arg(long, default_value_t = 0)]
        decline_every: u64,
        /// Every n-th order goes to an unsupported country (0: never).
        #[arg(long, default_value_t = 0)]
        bad_country_every: u64,
    },
    /// Operate projections of a running shop.
    #[command(subcommand)]
    Projections(Projections),
    /// Benchmarks anyone can run; results go to docs/BENCHMARKS.md.
    #[command(subcommand)]
    Bench(bench::Bench),
}

#[derive(Debug, Subcommand)]
enum Projections {
    /// Rebuild a read model from the event store while the shop keeps serving.
    Rebuild {
        /// The projection (`orders`).
        name: String,
        /// The shop's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        target: String,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Bench(b) => bench::run(b).await,
            Command::Projections(Projections::Rebuild { name, target }) => {
                if name != "orders" {
                    anyhow::bail!("unknown projection `{name}` (known: orders)");
                }
                let url = format!(
                    "{}/admin/projections/orders/rebuild",
                    target.trim_end_matches('/')
                );
                let out = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
                    let agent: ureq::Agent = ureq::Agent::config_builder()
                        .http_status_as_error(false)
                        .build()
                        .into();
                    let mut resp = agent.post(&url).send_empty()?;
                    let status = resp.status();
                    let body = resp.body_mut().read_to_string()?;
                    if !status.is_success() {
                        anyhow::bail!("{url} answered {status}: {body}");
                    }
                    Ok(body)
                })
                .await??;
                println!("{out}");
                Ok(())
            }
            Command::Up {
                data_dir,
                listen,
                partitions,
                smtp,
                gateway_latency_ms,
            } => {
                let config = ShopConfig {
                    partitions,
                    smtp,
                    gateway_latency: std::time::Duration::from_millis(gateway_latency_ms),
                    ..ShopConfig::new(&data_dir, listen)
                };
                up(config).await
            }
            Command::Load {
                orders,
                rate,
                concurrency,
                target,
                no_seed,
                decline_every,
                bad_country_every,
            } => {
                let cfg = shopflow::load::LoadConfig {
                    target,
                    orders,
                    rate,
                    concurrency,
                    seed: !no_seed,
                    decline_every,
                    bad_country_every,
                    ..Default::default()
                };
                let report =
                    tokio::task::spawn_blocking(move || shopflow::load::run(&cfg)).await??;
                report.print();
                Ok(())
            }
        }
    })
}

async fn up(config: ShopConfig) -> anyhow::Result<()> {
    let data_dir = config.data_dir.clone();
    let shop = Shop::start(config).await?;
    println!(
        "shopflow is up: http://{} (OpenAPI at /openapi.json), data in {}",
        shop.addr,
        data_dir.display()
    );
    println!("press Ctrl-C to stop");
    wait_for_signal().await;
    println!("stopping…");
    shop.stop().await?;
    println!("stopped cleanly");
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
