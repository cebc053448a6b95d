//! `shadowpeft perplexity`: how well a model predicts a text, in whatever weight format it
//! was loaded: the exponential of the mean negative log-likelihood of every token given the
//! ones before it, in consecutive windows of the model's positions.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use shadowpeft::{DirSource, Mode, Readout, TextTokenizer};

use crate::model::{load, ModelArgs};

#[derive(Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The text (UTF-8; special tokens such as `<|im_end|>` are read as such).
    #[arg(long)]
    text: PathBuf,
    /// Tokens per window (each window starts with no context); at most the model's positions.
    #[arg(long, default_value_t = 512)]
    window: usize,
    /// Print one JSON object instead of a line of text.
    #[arg(long)]
    json: bool,
}

pub async fn run_perplexity(a: PerplexityArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.text)
        .with_context(|| format!("--text {}: cannot read it as UTF-8 text", a.text.display()))?;
    let l = load(&a.model).await?;
    let (gpu, model) = (&l.gpu, &l.model);
    let tok = TextTokenizer::load(&DirSource::open(&l.text_dir)?).await?;
    let ids = tok.encode(&text, false)?;
    let window = a.window.min(model.max_seq());
    if window < 2 {
        bail!("--window {}: a window needs at least 2 tokens", a.window);
    }
    if ids.len() < 2 {
        bail!("--text {}: fewer than 2 tokens", a.text.display());
    }
    let attached = model.mode() == Mode::Attached;
    let vocab = model.vocab_size();
    let (mut nll, mut n) = (0f64, 0usize);
    for w in ids.chunks(window) {
        let mut sess = model.new_session(gpu);
        let mut logits = Vec::with_capacity(w.len() * vocab);
        for chunk in w.chunks(model.max_logit_rows(gpu)) {
            let o = model
                .forward(gpu, &mut sess, chunk, Readout::AllLogits, attached)
                .await?;
            logits.extend(o.logits);
        }
        for (row, &next) in logits.chunks_exact(vocab).zip(&w[1..]) {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
            let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
            nll += max + sum.ln() - row[next as usize] as f64;
            n += 1;
        }
    }
    let mean = nll / n as f64;
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "tokens": n,
                "windows": ids.len().div_ceil(window),
                "mean_nll": mean,
                "perplexity": mean.exp(),
                "weights": model.weight_format().name(),
                "mode": if attached { "attached" } else { "detached" },
            })
        );
    } else {
        println!(
            "perplexity {:.4} over {n} tokens ({} weights, {})",
            mean.exp(),
            model.weight_format(),
            if attached { "attached" } else { "detached" }
        );
    }
    Ok(())
}
