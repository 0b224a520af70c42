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
    },
    /// Benchmarks anyone can run; results go to docs/BENCHMARKS.md.
    #[command(subcommand)]
    Bench(bench::Bench),
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
            Command::Up {
                data_dir,
                listen,
                partitions,
            } => up(data_dir, listen, partitions).await,
        }
    })
}

async fn up(data_dir: PathBuf, listen: SocketAddr, partitions: u32) -> anyhow::Result<()> {
    let shop = Shop::start(ShopConfig {
        partitions,
        ..ShopConfig::new(&data_dir, listen)
    })
    .await?;
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
