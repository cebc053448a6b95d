//! `shadowpeft serve`: the backbone server.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use shadowpeft::{DirSource, Gpu, GpuOptions};

#[derive(Args)]
pub struct ServeArgs {
    /// The base model dir (Hugging Face layout).
    #[arg(long)]
    base: PathBuf,
    /// Address to listen on, e.g. 127.0.0.1:8080.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Require `Authorization: Bearer SECRET` on every request.
    #[arg(long)]
    token: Option<String>,
    /// Most sessions alive at once.
    #[arg(long, default_value_t = 64)]
    max_sessions: usize,
    /// Seconds an idle session is kept.
    #[arg(long, default_value_t = 600)]
    session_ttl: u64,
    /// Longest sequence per session (KV cache length).
    #[arg(long, default_value_t = 2048)]
    max_seq: usize,
    /// Storage of the base's projections, embeddings and head: f32, f16, or q8 / q4
    /// (int8 / int4 in blocks of 32 with f16 scales).
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "q8", "q4"])]
    weights: String,
    /// Largest request body in MiB (adapter uploads included).
    #[arg(long, default_value_t = 256)]
    max_body_mib: usize,
    /// KV cache budget shared by all sessions: bytes (512M, 2G) or a fraction of the
    /// device's memory (0.25; CPU devices only, as wgpu does not report a GPU's). Default: a
    /// quarter of the device's memory where known, else 2G.
    #[arg(long)]
    kv_memory: Option<String>,
    /// Positions per KV cache block.
    #[arg(long, default_value_t = 16)]
    kv_block: usize,
    /// Storage of the KV cache: f32, or f16 (half the memory per position; the kernels still
    /// compute in f32).
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16"])]
    kv: String,
    /// Most rows (tokens of all sessions together) in one batched base pass.
    #[arg(long, default_value_t = 128)]
    max_batch_rows: usize,
    /// Most prompt rows in one pass, all prompts together: decode steps go first, and long
    /// prompts run in chunks, so that they do not stall decoding sessions [default: 16 on CPU
    /// devices, 256 on GPUs].
    #[arg(long)]
    prefill_chunk: Option<usize>,
    /// Milliseconds a pass waits at most for the sessions the pass before answered (each
    /// decode step is a round trip to the client); 0 runs every pass at once.
    #[arg(long, default_value_t = 10)]
    batch_wait_ms: u64,
}

pub async fn run_serve(a: ServeArgs) -> Result<()> {
    use std::sync::Arc;
    let kv_memory = match &a.kv_memory {
        Some(m) => m.parse()?,
        None => Default::default(),
    };
    let gpu = Arc::new(Gpu::new(GpuOptions::default()).await?);
    let base = shadowpeft::remote::server::load_base(
        &gpu,
        &DirSource::open(&a.base)?,
        a.max_seq,
        a.weights.parse()?,
    )
    .await?;
    let listener = tokio::net::TcpListener::bind(&a.listen)
        .await
        .with_context(|| format!("--listen {}", a.listen))?;
    let cfg = shadowpeft::remote::server::ServerConfig {
        token: a.token.clone(),
        max_sessions: a.max_sessions.max(1),
        session_ttl: std::time::Duration::from_secs(a.session_ttl.max(1)),
        max_body: a.max_body_mib.max(1) << 20,
        kv_memory,
        kv_block: a.kv_block,
        kv_store: a.kv.parse()?,
        max_batch_rows: a.max_batch_rows,
        prefill_chunk: a.prefill_chunk,
        batch_wait: std::time::Duration::from_millis(a.batch_wait_ms),
        ..Default::default()
    };
    eprintln!(
        "serving {} ({} layers, hidden {}) on http://{} with {}",
        a.base.display(),
        base.cfg().layers,
        base.cfg().hidden,
        listener.local_addr()?,
        gpu.adapter_name()
    );
    let stop = async {
        signal().await;
        eprintln!(
            "shutting down: answering the requests in flight (a second signal stops at once)"
        );
        tokio::spawn(async {
            signal().await;
            eprintln!("stopped");
            std::process::exit(130);
        });
    };
    shadowpeft::remote::server::serve_until(listener, gpu.clone(), Arc::new(base), cfg, stop)
        .await?;
    eprintln!("stopped");
    Ok(())
}

/// Ctrl-C, or SIGTERM (what orchestrators and `systemctl stop` send) on Unix.
async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
