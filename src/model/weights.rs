//! Named tensors from one or more safetensors files, widened to f32 with shape checks.
//!
//! Invariant: every file was validated by the safetensors parser (header length, offsets,
//! sizes) before any tensor is read; a tensor name maps to exactly one file.

use std::collections::HashMap;
use std::sync::Arc;

use safetensors::tensor::{Dtype, TensorInfo};
use safetensors::SafeTensors;

use crate::error::{Error, Result};

use super::source::{read_json_opt, read_required, Source};

struct File {
    location: String,
    bytes: Arc<Vec<u8>>,
    data_start: usize,
    tensors: HashMap<String, TensorInfo>,
}

/// A set of safetensors files seen as one name -> tensor map.
#[derive(Default)]
pub struct Weights {
    files: Vec<File>,
    index: HashMap<String, usize>,
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Weights")
            .field("files", &self.describe())
            .field("tensors", &self.index.len())
            .finish()
    }
}

impl Weights {
    /// Parses and validates one file's bytes and adds its tensors.
    pub fn add_file(&mut self, location: String, bytes: Arc<Vec<u8>>) -> Result<()> {
        let (n, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| Error::Safetensors {
            file: location.clone(),
            msg: e.to_string(),
        })?;
        let tensors: HashMap<String, TensorInfo> = meta
            .tensors()
            .into_iter()
            .map(|(k, v)| (k, v.clone()))
            .collect();
        let fi = self.files.len();
        for name in tensors.keys() {
            if let Some(&other) = self.index.get(name) {
                return Err(Error::Safetensors {
                    file: location,
                    msg: format!(
                        "tensor `{name}` also appears in {}",
                        self.files[other].location
                    ),
                });
            }
            self.index.insert(name.clone(), fi);
        }
        self.files.push(File {
            location,
            bytes,
            data_start: 8 + n,
            tensors,
        });
        Ok(())
    }

    /// Loads a Hugging Face model's weights: `model.safetensors`, or the shards listed in
    /// `model.safetensors.index.json`.
    pub async fn load_hf<S: Source>(src: &S) -> Result<Self> {
        let index_file = "model.safetensors.index.json";
        let mut w = Weights::default();
        if let Some(idx) = read_json_opt(src, index_file).await? {
            let loc = src.location(index_file);
            let map = idx
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| {
                    Error::config(
                        &loc,
                        "weight_map",
                        "expected an object of tensor name -> shard file",
                    )
                })?;
            let mut shards: Vec<&str> = Vec::new();
            for (name, f) in map {
                let f = f.as_str().ok_or_else(|| {
                    Error::config(&loc, &format!("weight_map.{name}"), "expected a file name")
                })?;
                if f.contains('/') || f.contains('\\') || f.starts_with('.') {
                    return Err(Error::config(
                        &loc,
                        &format!("weight_map.{name}"),
                        format!("`{f}` is not a plain file name"),
                    ));
                }
                if !shards.contains(&f) {
                    shards.push(f);
                }
            }
            shards.sort_unstable();
            for f in shards {
                let bytes =
                    read_required(src, f, "a shard listed in model.safetensors.index.json").await?;
                w.add_file(src.location(f), bytes)?;
            }
            for name in map.keys() {
                if !w.index.contains_key(name) {
                    return Err(Error::MissingTensor {
                        file: loc,
                        name: name.clone(),
                    });
                }
            }
        } else {
            let f = "model.safetensors";
            let bytes = read_required(src, f, "model weights").await?;
            w.add_file(src.location(f), bytes)?;
        }
        Ok(w)
    }

    /// Whether a tensor exists.
    pub fn has(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Tensor names (unordered).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    /// The files, for messages.
    pub fn describe(&self) -> String {
        let v: Vec<&str> = self.files.iter().map(|f| f.location.as_str()).collect();
        if v.is_empty() {
            "(no weight files)".into()
        } else {
            v.join(", ")
        }
    }

    /// The shape of a tensor, if present.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        let f = &self.files[*self.index.get(name)?];
        f.tensors.get(name).map(|t| t.shape.as_slice())
    }

    /// Reads tensor `name`, checks its shape, and widens it to f32.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let fi = *self.index.get(name).ok_or_else(|| Error::MissingTensor {
            file: self.describe(),
            name: name.to_string(),
        })?;
        let f = &self.files[fi];
        let info = &f.tensors[name];
        if info.shape != shape {
            return Err(Error::Shape {
                file: f.location.clone(),
                name: name.to_string(),
                expected: shape.to_vec(),
                found: info.shape.clone(),
            });
        }
        let (s, e) = info.data_offsets;
        let raw = &f.bytes[f.data_start + s..f.data_start + e];
        Ok(match info.dtype {
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => raw
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(Error::Dtype {
                    file: f.location.clone(),
                    name: name.to_string(),
                    found: format!("{other:?}"),
                })
            }
        })
    }
}
