//! `legacy-shop --db postgres://… --listen 127.0.0.1:9000`

use clap::Parser;

/// The legacy monolith of docs/MIGRATING.md.
#[derive(Debug, Parser)]
struct Args {
    /// Its PostgreSQL database.
    #[arg(
        long,
        default_value = "postgres://postgres@127.0.0.1:5432/test",
        env = "LEGACY_DB"
    )]
    db: String,
    /// The schema of its tables.
    #[arg(long, default_value = "legacy")]
    schema: String,
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: std::net::SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let a = Args::parse();
    let shop = legacy_shop::Legacy::connect(&a.db, &a.schema).await?;
    let listener = tokio::net::TcpListener::bind(a.listen).await?;
    println!(
        "legacy shop on http://{} (schema {})",
        listener.local_addr()?,
        a.schema
    );
    axum::serve(listener, shop.router())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
