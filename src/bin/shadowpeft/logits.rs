//! `shadowpeft logits`: the logits of a token sequence, to a safetensors file.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use shadowpeft::{Mode, Readout};

use crate::model::{load, parse_ids, ModelArgs};

#[derive(Args)]
pub struct LogitsArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Token ids, comma-separated.
    #[arg(long)]
    tokens: String,
    /// Output file: F32 tensors `logits` [T, V] and `shadow_logits` [T, V].
    #[arg(long)]
    out: PathBuf,
}

pub async fn run_logits(a: LogitsArgs) -> Result<()> {
    let ids = parse_ids(&a.tokens)?;
    let l = load(&a.model).await?;
    let (gpu, model) = (&l.gpu, &l.model);
    let mut sess = model.new_session(gpu);
    let attached = model.mode() == Mode::Attached;
    let (mut logits, mut shadow) = (Vec::new(), Vec::new());
    for chunk in ids.chunks(model.max_logit_rows(gpu)) {
        let o = model
            .forward(gpu, &mut sess, chunk, Readout::AllLogits, attached)
            .await?;
        if attached {
            shadow.extend(o.shadow_logits);
        } else {
            shadow.extend(&o.logits);
        }
        logits.extend(o.logits);
    }
    let shape = vec![ids.len(), model.vocab_size()];
    let bytes_l: Vec<u8> = bytemuck::cast_slice(&logits).to_vec();
    let bytes_s: Vec<u8> = bytemuck::cast_slice(&shadow).to_vec();
    let views = [
        (
            "logits",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), &bytes_l)?,
        ),
        (
            "shadow_logits",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, &bytes_s)?,
        ),
    ];
    safetensors::serialize_to_file(views, None, &a.out)
        .with_context(|| format!("writing {}", a.out.display()))?;
    eprintln!(
        "wrote {} ({} tokens x {} logits, {:?})",
        a.out.display(),
        ids.len(),
        model.vocab_size(),
        model.mode()
    );
    Ok(())
}
