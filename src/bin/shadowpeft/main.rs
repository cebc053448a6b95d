//! `shadowpeft`: run ShadowPEFT models from the command line (native wgpu).
//!
//! ```text
//! shadowpeft generate --model models/tiny/export --prompt "Hello"
//! shadowpeft generate --base B --adapter A [--shadow S] [--mode attached|detached] --tokens 1,2,3 --json
//! shadowpeft chat     --model models/demo/export [--system TEXT] [--json]
//! shadowpeft logits   --base B --adapter A --tokens 5,17,42 --out logits.safetensors
//! shadowpeft serve    --base B --listen 127.0.0.1:8080
//! shadowpeft pack     --model models/demo/export --weights q4 --out demo-q4
//! shadowpeft perplexity --model models/demo/export --weights q4 --text models/demo/heldout.txt
//! ```

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
mod chat;
#[cfg(not(target_arch = "wasm32"))]
mod generate;
#[cfg(not(target_arch = "wasm32"))]
mod logits;
#[cfg(not(target_arch = "wasm32"))]
mod model;
#[cfg(not(target_arch = "wasm32"))]
mod pack;
#[cfg(not(target_arch = "wasm32"))]
mod perplexity;
#[cfg(not(target_arch = "wasm32"))]
mod printer;
#[cfg(not(target_arch = "wasm32"))]
mod report;
#[cfg(not(target_arch = "wasm32"))]
mod sampling;
#[cfg(not(target_arch = "wasm32"))]
mod serve;

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    cli::main()
}

#[cfg(not(target_arch = "wasm32"))]
mod cli {
    use std::process::ExitCode;

    use clap::{Parser, Subcommand};

    #[derive(Parser)]
    #[command(
        name = "shadowpeft",
        version,
        about = "Run ShadowPEFT models (attached or detached) on wgpu"
    )]
    struct Cli {
        #[command(subcommand)]
        cmd: Cmd,
    }

    #[derive(Subcommand)]
    enum Cmd {
        /// Generate text or tokens.
        Generate(crate::generate::GenerateArgs),
        /// Chat: one user message per line on stdin, each answer streamed; the KV caches
        /// carry over between turns.
        Chat(crate::chat::ChatArgs),
        /// Write the logits of a token sequence to a safetensors file.
        Logits(crate::logits::LogitsArgs),
        /// Serve a frozen base model to remote shadow clients (attached mode over HTTP).
        Serve(crate::serve::ServeArgs),
        /// Write a model dir with its weights packed (f16, q8 or q4) as the GPU holds them,
        /// in shards: smaller downloads, loaded without conversion.
        Pack(crate::pack::PackArgs),
        /// The perplexity of a model on a text (to compare weight formats).
        Perplexity(crate::perplexity::PerplexityArgs),
    }

    pub fn main() -> ExitCode {
        let cli = Cli::parse();
        let rt = match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("error: cannot start the async runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        let r = rt.block_on(async {
            match cli.cmd {
                Cmd::Generate(a) => crate::generate::run_generate(a).await,
                Cmd::Chat(a) => crate::chat::run_chat(a).await,
                Cmd::Logits(a) => crate::logits::run_logits(a).await,
                Cmd::Serve(a) => crate::serve::run_serve(a).await,
                Cmd::Pack(a) => crate::pack::run_pack(a).await,
                Cmd::Perplexity(a) => crate::perplexity::run_perplexity(a).await,
            }
        });
        if shadowpeft::gpu::profile::enabled() {
            eprint!("{}", shadowpeft::gpu::profile::report());
        }
        match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        }
    }
}
