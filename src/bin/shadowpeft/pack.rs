//! `shadowpeft pack`: a model directory with its weights stored as the GPU holds them.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use shadowpeft::model::pack::{pack, packed_config, INDEX};
use shadowpeft::model::source::read_json;
use shadowpeft::model::weights::Weights;
use shadowpeft::{DirSource, WeightFormat};

#[derive(Args)]
pub struct PackArgs {
    /// The model dir: a detached export or a base model (Hugging Face layout).
    #[arg(long)]
    model: PathBuf,
    /// Storage of the decoder projections, embeddings and heads: f16, or q8 / q4 (int8 /
    /// int4 in blocks of 32 with f16 scales).
    #[arg(long, value_parser = ["f16", "q8", "q4"])]
    weights: String,
    /// The new model dir (created; must not exist or be empty).
    #[arg(long)]
    out: PathBuf,
    /// Largest shard, in bytes, with an optional K, M or G suffix (powers of 1024). A
    /// browser fetches shards in parallel and resumes an interrupted load shard by shard.
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    shard_size: usize,
}

fn parse_size(s: &str) -> Result<usize, String> {
    let (digits, unit) = match s.trim().char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.trim().split_at(i),
        None => (s.trim(), ""),
    };
    let n: usize = digits
        .parse()
        .map_err(|_| format!("`{s}`: expected bytes, e.g. 4000000, 512K or 64M"))?;
    let mult = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        u => return Err(format!("`{s}`: unknown unit `{u}` (expected K, M or G)")),
    };
    match n.checked_mul(mult) {
        Some(v) if v > 0 => Ok(v),
        _ => Err(format!("`{s}`: expected a positive size")),
    }
}

pub async fn run_pack(a: PackArgs) -> Result<()> {
    let format: WeightFormat = a.weights.parse()?;
    let src = DirSource::open(&a.model)?;
    if a.out.exists() {
        let same = a.out.canonicalize().ok() == a.model.canonicalize().ok();
        let empty = std::fs::read_dir(&a.out)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if same || !empty {
            bail!(
                "--out {}: exists and is not empty (give a new directory)",
                a.out.display()
            );
        }
    }
    let cfg = read_json(&src, "config.json", "model config").await?;
    let w = Weights::load_hf(&src).await?;
    let packed = pack(&w, format, a.shard_size)?;
    let cfg = packed_config(
        &a.model.join("config.json").display().to_string(),
        &cfg,
        format,
        &packed.unpacked,
    )?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    // Everything but the weights is copied; config.json declares the format.
    for entry in
        std::fs::read_dir(&a.model).with_context(|| format!("reading {}", a.model.display()))?
    {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let weights_file = name.ends_with(".safetensors") || name == INDEX;
        if !entry.file_type()?.is_file() || weights_file || name == "config.json" {
            continue;
        }
        std::fs::copy(entry.path(), a.out.join(&name))
            .with_context(|| format!("copying {name}"))?;
    }
    let write = |name: &str, bytes: &[u8]| {
        let p = a.out.join(name);
        std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))
    };
    write("config.json", &serde_json::to_vec_pretty(&cfg)?)?;
    write(INDEX, &serde_json::to_vec_pretty(&packed.index)?)?;
    let mut total = 0;
    for (name, bytes) in &packed.shards {
        write(name, bytes)?;
        total += bytes.len();
    }
    let before: u64 = std::fs::read_dir(&a.model)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    eprintln!(
        "packed {} as {format}: {} shard(s), {total} bytes ({:.2}x the {before} bytes of {}); unpacked matrices: {}",
        a.model.display(),
        packed.shards.len(),
        total as f64 / before.max(1) as f64,
        a.model.display(),
        if packed.unpacked.is_empty() { "none".to_string() } else { packed.unpacked.join(", ") }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("4000"), Ok(4000));
        assert!(parse_size("0").is_err());
        assert!(parse_size("12T").is_err());
        assert!(parse_size("big").is_err());
    }
}
