//! Packed weights: matrices stored in the file exactly as the GPU holds them (docs/packed.md).
//!
//! A matrix `X.weight` `[rows, cols]` packed in a blocked format is stored as the tensors of
//! the compressed-tensors convention for symmetric group-32 weights:
//!
//! * q4: `X.weight_packed` I32 `[rows, cols / 8]` (eight `q + 8` nibbles a word, lowest
//!   first), `X.weight_scale` F16 `[rows, cols / 32]` and `X.weight_shape` I64 `[2]`;
//! * q8: `X.weight` I8 `[rows, cols]` and `X.weight_scale` F16 `[rows, cols / 32]`;
//! * f16: `X.weight` F16 `[rows, cols]`, as any f16 checkpoint.
//!
//! These are the block data and scales of [`WeightFormat`]'s chunk layout, so loading copies
//! bytes: nothing is widened or quantised again. `config.json` declares the format
//! ([`PACKED_KEY`], and a compressed-tensors `quantization_config` for q8 and q4).

use safetensors::Dtype;

use crate::error::{Error, Result};
use crate::gpu::quant::BLOCK;
use crate::gpu::WeightFormat;

/// The `config.json` field (and safetensors metadata key) naming the packed format.
pub const PACKED_KEY: &str = "shadowpeft_weights";
/// Suffixes of the tensors a packed matrix `X.weight` is stored as.
pub const DATA_Q4: &str = "_packed";
pub const SCALE: &str = "_scale";
pub const SHAPE: &str = "_shape";

/// One tensor of a packed file.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

/// The format `config.json` (at `loc`) declares its weights packed in, if any.
pub fn declared(loc: &str, cfg: &serde_json::Value) -> Result<Option<WeightFormat>> {
    let Some(v) = cfg.get(PACKED_KEY) else {
        if let Some(q) = cfg.get("quantization_config").filter(|q| !q.is_null()) {
            let method = q
                .get("quant_method")
                .and_then(|m| m.as_str())
                .unwrap_or("?");
            return Err(Error::config(
                loc,
                "quantization_config",
                format!(
                    "`{method}` checkpoints are not supported; pack the unquantised model with `shadowpeft pack`"
                ),
            ));
        }
        return Ok(None);
    };
    let f: WeightFormat = v
        .as_str()
        .and_then(|s| s.parse().ok())
        .filter(|f| *f != WeightFormat::F32)
        .ok_or_else(|| Error::config(loc, PACKED_KEY, "expected \"f16\", \"q8\" or \"q4\""))?;
    Ok(Some(f))
}

/// The storage a model loads in: what was asked for, or (when the default f32 was asked for)
/// what the files are packed in. Packed files cannot be loaded in another blocked format.
pub fn effective(
    loc: &str,
    requested: WeightFormat,
    packed: Option<WeightFormat>,
) -> Result<WeightFormat> {
    match packed {
        None => Ok(requested),
        Some(p) if requested == WeightFormat::F32 || requested == p => Ok(p),
        Some(p) => Err(Error::config(
            loc,
            PACKED_KEY,
            format!("the weights are packed as {p}; {requested} was asked for (load them as {p}, or pack the original model as {requested})"),
        )),
    }
}

/// The compressed-tensors `quantization_config` of a pack in `format` (None for f16), with
/// `ignore` the linear layers left unquantised.
pub fn quantization_config(format: WeightFormat, ignore: &[String]) -> Option<serde_json::Value> {
    let (bits, pack_format) = match format {
        WeightFormat::Q8 => (8, "int-quantized"),
        WeightFormat::Q4 => (4, "pack-quantized"),
        WeightFormat::F32 | WeightFormat::F16 => return None,
    };
    Some(serde_json::json!({
        "quant_method": "compressed-tensors",
        "format": pack_format,
        "quantization_status": "compressed",
        "config_groups": {
            "group_0": {
                "targets": ["Linear", "Embedding"],
                "weights": {
                    "num_bits": bits,
                    "type": "int",
                    "symmetric": true,
                    "strategy": "group",
                    "group_size": BLOCK,
                    "dynamic": false,
                },
                "input_activations": null,
                "output_activations": null,
            }
        },
        "ignore": ignore,
    }))
}

/// The tensors that store matrix `name` (`X.weight`) `[rows, cols]` in `format`, from its
/// f32 values. The caller checks `format.storage_for(name, cols) == format`.
pub fn pack_matrix(
    name: &str,
    data: &[f32],
    rows: usize,
    cols: usize,
    format: WeightFormat,
) -> Vec<PackedTensor> {
    let words = format.encode(data, rows, cols);
    let bytes_of = |w: &[u32]| -> Vec<u8> { w.iter().flat_map(|w| w.to_le_bytes()).collect() };
    let data_words = format.data_words(rows, cols);
    let blocks = rows * cols / BLOCK;
    let scales = || PackedTensor {
        name: format!("{name}{SCALE}"),
        dtype: Dtype::F16,
        shape: vec![rows, cols / BLOCK],
        bytes: bytes_of(&words[data_words..])[..blocks * 2].to_vec(),
    };
    match format {
        WeightFormat::F32 => vec![PackedTensor {
            name: name.to_string(),
            dtype: Dtype::F32,
            shape: vec![rows, cols],
            bytes: bytes_of(&words),
        }],
        WeightFormat::F16 => vec![PackedTensor {
            name: name.to_string(),
            dtype: Dtype::F16,
            shape: vec![rows, cols],
            bytes: bytes_of(&words),
        }],
        // Scales first: a file read as a stream then holds only the small part waiting.
        WeightFormat::Q8 => vec![
            scales(),
            PackedTensor {
                name: name.to_string(),
                dtype: Dtype::I8,
                shape: vec![rows, cols],
                bytes: bytes_of(&words[..data_words]),
            },
        ],
        WeightFormat::Q4 => vec![
            PackedTensor {
                name: format!("{name}{SHAPE}"),
                dtype: Dtype::I64,
                shape: vec![2],
                bytes: [rows as i64, cols as i64]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            },
            scales(),
            PackedTensor {
                name: format!("{name}{DATA_Q4}"),
                dtype: Dtype::I32,
                shape: vec![rows, cols / 8],
                bytes: bytes_of(&words[..data_words]),
            },
        ],
    }
}

/// How a file stores matrix `X.weight`, from the tensors' names and dtypes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedParts {
    pub format: WeightFormat,
    /// The tensor holding the block data.
    pub data: String,
    /// The tensor holding the f16 scales (q8 and q4).
    pub scale: Option<String>,
}

/// The packed matrix `X.weight` that tensor `name` (of dtype `dtype`) belongs to, and how it
/// is stored; `None` for tensors that are not part of a packed matrix (f16 included: an f16
/// tensor is an ordinary one).
pub fn parts_of(name: &str, dtype: Dtype) -> Option<(String, PackedParts)> {
    let scale = |m: &str| Some(format!("{m}{SCALE}"));
    if let Some(m) = name.strip_suffix(DATA_Q4) {
        return m.ends_with(".weight").then(|| {
            let p = PackedParts {
                format: WeightFormat::Q4,
                data: name.to_string(),
                scale: scale(m),
            };
            (m.to_string(), p)
        });
    }
    if dtype == Dtype::I8 && name.ends_with(".weight") {
        let p = PackedParts {
            format: WeightFormat::Q8,
            data: name.to_string(),
            scale: scale(name),
        };
        return Some((name.to_string(), p));
    }
    None
}

/// Whether `name` is a scale or shape tensor of a packed matrix (not a tensor of its own).
pub fn is_auxiliary(name: &str) -> bool {
    [SCALE, SHAPE]
        .iter()
        .any(|s| name.strip_suffix(s).is_some_and(|m| m.ends_with(".weight")))
}

/// Checks the data and scale tensors of packed matrix `matrix` against the `[rows, cols]`
/// the model expects: dtypes, shapes and byte counts (the safetensors parser checked that
/// each tensor's bytes match its shape).
#[allow(clippy::too_many_arguments)]
pub fn check(
    file: &str,
    matrix: &str,
    parts: &PackedParts,
    data: (Dtype, &[usize]),
    scale: Option<(Dtype, &[usize])>,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let f = parts.format;
    if !cols.is_multiple_of(BLOCK) {
        return Err(Error::Safetensors {
            file: file.to_string(),
            msg: format!("tensor `{}`: {f} blocks need rows of a multiple of {BLOCK} values; the model's `{matrix}` has {cols}", parts.data),
        });
    }
    let (dtype, shape) = match f {
        WeightFormat::Q4 => (Dtype::I32, vec![rows, cols / 8]),
        WeightFormat::Q8 => (Dtype::I8, vec![rows, cols]),
        _ => (Dtype::F16, vec![rows, cols]),
    };
    if data.0 != dtype {
        return Err(Error::Safetensors {
            file: file.to_string(),
            msg: format!(
                "tensor `{}`: dtype {:?}, expected {dtype:?} for {f} blocks",
                parts.data, data.0
            ),
        });
    }
    if data.1 != shape.as_slice() {
        return Err(Error::Shape {
            file: file.to_string(),
            name: parts.data.clone(),
            expected: shape,
            found: data.1.to_vec(),
        });
    }
    let Some(scale_name) = &parts.scale else {
        return Ok(());
    };
    let Some((sd, ss)) = scale else {
        return Err(Error::MissingTensor {
            file: file.to_string(),
            name: format!(
                "{scale_name} (the scales of the {f} blocks in `{}`)",
                parts.data
            ),
        });
    };
    if sd != Dtype::F16 {
        return Err(Error::Safetensors {
            file: file.to_string(),
            msg: format!("tensor `{scale_name}`: dtype {sd:?}, expected F16 block scales"),
        });
    }
    let expected = vec![rows, cols / BLOCK];
    if ss != expected.as_slice() {
        return Err(Error::Shape {
            file: file.to_string(),
            name: scale_name.clone(),
            expected,
            found: ss.to_vec(),
        });
    }
    Ok(())
}

/// The f32 values of a packed matrix (for the host-side users of a tensor, and the tests).
pub fn unpack(
    format: WeightFormat,
    data: &[u8],
    scale: &[u8],
    rows: usize,
    cols: usize,
) -> Vec<f32> {
    let mut bytes = Vec::with_capacity(data.len() + scale.len() + 2);
    bytes.extend_from_slice(data);
    bytes.extend_from_slice(scale);
    bytes.resize(bytes.len().next_multiple_of(4), 0);
    let words: Vec<u32> = bytes
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    format.decode(&words, rows, cols)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::rand_vec;

    #[test]
    fn packed_tensors_hold_the_gpu_layout_and_unpack_to_the_decoded_values() {
        let (rows, cols) = (3, 96);
        let w = rand_vec(9, rows * cols, 0.3);
        for f in [WeightFormat::F16, WeightFormat::Q8, WeightFormat::Q4] {
            let ts = pack_matrix("m.q_proj.weight", &w, rows, cols, f);
            let data = ts.iter().find(|t| !is_auxiliary(&t.name)).unwrap();
            let scale = ts.iter().find(|t| t.name.ends_with(SCALE));
            let expected = f.decode(&f.encode(&w, rows, cols), rows, cols);
            let got = unpack(
                f,
                &data.bytes,
                scale.map_or(&[][..], |s| &s.bytes),
                rows,
                cols,
            );
            assert_eq!(got, expected, "{f}");
            if f != WeightFormat::F16 {
                let (m, parts) = parts_of(&data.name, data.dtype).unwrap();
                assert_eq!(m, "m.q_proj.weight");
                assert_eq!(parts.format, f);
                let s = scale.unwrap();
                check(
                    "f",
                    &m,
                    &parts,
                    (data.dtype, &data.shape),
                    Some((s.dtype, &s.shape)),
                    rows,
                    cols,
                )
                .unwrap();
                assert!(
                    check("f", &m, &parts, (data.dtype, &data.shape), None, rows, cols)
                        .unwrap_err()
                        .to_string()
                        .contains("m.q_proj.weight_scale")
                );
                let e = check(
                    "f",
                    &m,
                    &parts,
                    (data.dtype, &data.shape),
                    Some((s.dtype, &s.shape)),
                    rows + 1,
                    cols,
                )
                .unwrap_err()
                .to_string();
                assert!(e.contains(&data.name), "{e}");
            }
        }
        assert!(parts_of("m.q_proj.weight", Dtype::F16).is_none());
        assert!(is_auxiliary("m.q_proj.weight_scale") && !is_auxiliary("m.q_proj.weight"));
    }

    #[test]
    fn the_declared_format_decides_unless_another_is_asked_for() {
        let cfg = serde_json::json!({ PACKED_KEY: "q4" });
        let p = declared("config.json", &cfg).unwrap();
        assert_eq!(p, Some(WeightFormat::Q4));
        assert_eq!(
            effective("c", WeightFormat::F32, p).unwrap(),
            WeightFormat::Q4
        );
        assert_eq!(
            effective("c", WeightFormat::Q4, p).unwrap(),
            WeightFormat::Q4
        );
        assert!(effective("c", WeightFormat::Q8, p).is_err());
        assert_eq!(
            effective("c", WeightFormat::Q8, None).unwrap(),
            WeightFormat::Q8
        );
        let bad = serde_json::json!({ PACKED_KEY: "q3" });
        assert!(declared("config.json", &bad)
            .unwrap_err()
            .to_string()
            .contains(PACKED_KEY));
        let foreign = serde_json::json!({ "quantization_config": { "quant_method": "gptq" } });
        assert!(declared("config.json", &foreign)
            .unwrap_err()
            .to_string()
            .contains("gptq"));
    }
}
