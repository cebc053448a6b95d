//! Writing packed model files (`shadowpeft pack`): every matrix the format stores in blocks is
//! encoded once, here, as the GPU holds it ([`super::packed`]); the other tensors are copied as
//! they are. The tensors go into safetensors shards with a Hugging Face index that also lists
//! each shard's size and sha256, so a browser can fetch them in parallel and check each one.

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::gpu::WeightFormat;

use super::packed::{self, PackedTensor, PACKED_KEY};
use super::weights::Weights;

/// The index file of a sharded model (Hugging Face's name).
pub const INDEX: &str = "model.safetensors.index.json";

/// A packed model's weight files.
#[derive(Debug)]
pub struct Packed {
    /// `(file name, bytes)` of each shard, in order.
    pub shards: Vec<(String, Vec<u8>)>,
    /// The contents of [`INDEX`].
    pub index: serde_json::Value,
    /// Linear layers (`X` of `X.weight`) left unpacked: not in the format's list, or rows
    /// that are not whole blocks.
    pub unpacked: Vec<String>,
}

/// Packs the tensors of `w` in `format` into shards of at most `shard_bytes` bytes (a group
/// of tensors larger than that gets a shard of its own; a matrix's tensors never split).
pub fn pack(w: &Weights, format: WeightFormat, shard_bytes: usize) -> Result<Packed> {
    if format == WeightFormat::F32 {
        return Err(Error::InvalidRequest(
            "pack: f32 is how models are stored already; pack as f16, q8 or q4".into(),
        ));
    }
    if let Some(p) = w.packed_format() {
        return Err(Error::InvalidRequest(format!(
            "pack: {} is packed as {p} already; pack the original model",
            w.describe()
        )));
    }
    let mut names: Vec<&str> = w.names().collect();
    names.sort_unstable();
    let mut groups: Vec<Vec<PackedTensor>> = Vec::with_capacity(names.len());
    let mut unpacked = Vec::new();
    for name in names {
        let (dtype, shape, raw) = w.raw_tensor(name)?;
        match shape.as_slice() {
            &[rows, cols] if format.storage_for(name, cols) == format => {
                let values = w.get(name, &[rows, cols])?;
                groups.push(packed::pack_matrix(name, &values, rows, cols, format));
            }
            shape => {
                if shape.len() == 2 {
                    if let Some(m) = name.strip_suffix(".weight") {
                        unpacked.push(m.to_string());
                    }
                }
                groups.push(vec![PackedTensor {
                    name: name.to_string(),
                    dtype,
                    shape: shape.to_vec(),
                    bytes: raw.to_vec(),
                }]);
            }
        }
    }
    // Shards in name order, each filled up to the bound.
    let mut plan: Vec<Vec<PackedTensor>> = vec![Vec::new()];
    let mut size = 0;
    for g in groups {
        let bytes: usize = g.iter().map(|t| t.bytes.len()).sum();
        let last = plan.last().map_or(0, Vec::len);
        if last > 0 && size + bytes > shard_bytes {
            plan.push(Vec::new());
            size = 0;
        }
        size += bytes;
        plan.last_mut().unwrap_or_else(|| unreachable!()).extend(g);
    }
    let n = plan.len();
    let mut shards = Vec::with_capacity(n);
    let mut weight_map = serde_json::Map::new();
    let mut listed = serde_json::Map::new();
    let mut total = 0;
    for (i, tensors) in plan.into_iter().enumerate() {
        let file = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
        for t in &tensors {
            weight_map.insert(t.name.clone(), file.clone().into());
            total += t.bytes.len();
        }
        let bytes = serialize(&tensors, format)?;
        let sha = super::shards::hex(&Sha256::digest(&bytes));
        listed.insert(
            file.clone(),
            serde_json::json!({ "size": bytes.len(), "sha256": sha }),
        );
        shards.push((file, bytes));
    }
    let index = serde_json::json!({
        "metadata": {
            "total_size": total,
            PACKED_KEY: format.name(),
            "shards": listed,
        },
        "weight_map": weight_map,
    });
    Ok(Packed {
        shards,
        index,
        unpacked,
    })
}

/// `config.json` of a model packed in `format`: the original with the format declared
/// ([`PACKED_KEY`], and a compressed-tensors `quantization_config` for q8 and q4).
pub fn packed_config(
    loc: &str,
    cfg: &serde_json::Value,
    format: WeightFormat,
    unpacked: &[String],
) -> Result<serde_json::Value> {
    let mut cfg = cfg.clone();
    let obj = cfg
        .as_object_mut()
        .ok_or_else(|| Error::config(loc, "(root)", "expected a JSON object"))?;
    obj.insert(PACKED_KEY.into(), format.name().into());
    match packed::quantization_config(format, unpacked) {
        Some(q) => obj.insert("quantization_config".into(), q),
        None => obj.remove("quantization_config"),
    };
    Ok(cfg)
}

/// One safetensors file holding `tensors` in the given order (the order matters to a reader
/// that streams: a matrix's scales come before its blocks).
fn serialize(tensors: &[PackedTensor], format: WeightFormat) -> Result<Vec<u8>> {
    let mut header = serde_json::Map::new();
    header.insert(
        "__metadata__".into(),
        serde_json::json!({ "format": "pt", PACKED_KEY: format.name() }),
    );
    let mut at = 0;
    for t in tensors {
        let dtype = serde_json::to_value(t.dtype).map_err(|e| Error::Safetensors {
            file: t.name.clone(),
            msg: e.to_string(),
        })?;
        header.insert(
            t.name.clone(),
            serde_json::json!({
                "dtype": dtype,
                "shape": t.shape,
                "data_offsets": [at, at + t.bytes.len()],
            }),
        );
        at += t.bytes.len();
    }
    let mut json = serde_json::to_vec(&header).map_err(|e| Error::Safetensors {
        file: "(header)".into(),
        msg: e.to_string(),
    })?;
    // The data starts 8-byte aligned, as safetensors writes it.
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + json.len() + at);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    for t in tensors {
        out.extend_from_slice(&t.bytes);
    }
    Ok(out)
}
