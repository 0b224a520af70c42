//! The `shopflow` command line.

mod bench;

use clap::{Parser, Subcommand};

/// shopflow: an event-driven commerce backend and the building blocks it is made of.
#[derive(Debug, Parser)]
#[command(name = "shopflow", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
        }
    })
}
