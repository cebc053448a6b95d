//! Named tensors from one or more safetensors files, widened to f32 with shape checks.
//!
//! Invariant: every file was validated by the safetensors parser (header length, offsets,
//! sizes) before any tensor is read; a tensor name maps to exactly one file.

use std::collections::HashMap;
use std::sync::Arc;

use safetensors::tensor::{Dtype, TensorInfo};
use safetensors::SafeTensors;

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Matrix, Tensor, WeightFormat};

use super::source::{read_json_opt, read_required, Source};
use super::stream::UploadedFile;

struct File {
    location: String,
    bytes: Arc<Vec<u8>>,
    data_start: usize,
    tensors: HashMap<String, TensorInfo>,
}

/// A tensor already on the device (uploaded while its file streamed in).
struct Uploaded {
    location: String,
    shape: Vec<usize>,
    matrix: Matrix,
}

/// A set of safetensors files seen as one name -> tensor map. Tensors come from file bytes
/// (widened to f32 on use) or were uploaded to the device while their file streamed in.
#[derive(Default)]
pub struct Weights {
    files: Vec<File>,
    index: HashMap<String, usize>,
    uploaded: HashMap<String, Uploaded>,
    /// The storage requested for the projections, embeddings and heads
    /// ([`WeightFormat::storage_for`]); everything else is f32.
    format: WeightFormat,
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

    /// Adds the tensors of a file that was parsed and uploaded as it streamed in; its
    /// multi-dimensional (> 2-D) tensors come as bytes.
    pub fn add_uploaded(&mut self, file: UploadedFile) -> Result<()> {
        let UploadedFile {
            location,
            tensors,
            host,
        } = file;
        if let Some(bytes) = host {
            self.add_file(location.clone(), bytes)?;
        }
        for (name, (shape, matrix)) in tensors {
            if self.index.contains_key(&name) || self.uploaded.contains_key(&name) {
                return Err(Error::Safetensors {
                    file: location,
                    msg: format!("tensor `{name}` appears in more than one file"),
                });
            }
            self.uploaded.insert(
                name,
                Uploaded {
                    location: location.clone(),
                    shape,
                    matrix,
                },
            );
        }
        Ok(())
    }

    /// Adds `file` of `src`: the streamed upload when the source has one, else its bytes.
    pub async fn add_from<S: Source>(&mut self, src: &S, file: &str, what: &str) -> Result<()> {
        match src.uploaded(file) {
            Some(u) => self.add_uploaded(u),
            None => self.add_file(src.location(file), read_required(src, file, what).await?),
        }
    }

    /// Like [`Weights::add_from`] for a file that may be absent.
    pub async fn add_optional<S: Source>(&mut self, src: &S, file: &str) -> Result<()> {
        match src.uploaded(file) {
            Some(u) => self.add_uploaded(u),
            None => match src.read(file).await? {
                Some(b) => self.add_file(src.location(file), b),
                None => Ok(()),
            },
        }
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
                w.add_from(src, f, "a shard listed in model.safetensors.index.json")
                    .await?;
            }
            for name in map.keys() {
                if !w.has(name) {
                    return Err(Error::MissingTensor {
                        file: loc,
                        name: name.clone(),
                    });
                }
            }
        } else {
            w.add_from(src, "model.safetensors", "model weights")
                .await?;
        }
        Ok(w)
    }

    /// Whether a tensor exists.
    pub fn has(&self, name: &str) -> bool {
        self.index.contains_key(name) || self.uploaded.contains_key(name)
    }

    /// Tensor names (unordered).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index
            .keys()
            .chain(self.uploaded.keys())
            .map(String::as_str)
    }

    /// The files, for messages.
    pub fn describe(&self) -> String {
        let mut v: Vec<&str> = self.files.iter().map(|f| f.location.as_str()).collect();
        for u in self.uploaded.values() {
            if !v.contains(&u.location.as_str()) {
                v.push(&u.location);
            }
        }
        v.sort_unstable();
        if v.is_empty() {
            "(no weight files)".into()
        } else {
            v.join(", ")
        }
    }

    /// The shape of a tensor, if present.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        if let Some(u) = self.uploaded.get(name) {
            return Some(&u.shape);
        }
        let f = &self.files[*self.index.get(name)?];
        f.tensors.get(name).map(|t| t.shape.as_slice())
    }

    fn check_uploaded(&self, name: &str, shape: &[usize]) -> Option<Result<&Uploaded>> {
        let u = self.uploaded.get(name)?;
        Some(if u.shape == shape {
            Ok(u)
        } else {
            Err(Error::Shape {
                file: u.location.clone(),
                name: name.to_string(),
                expected: shape.to_vec(),
                found: u.shape.clone(),
            })
        })
    }

    /// Requests `format` for the projections, embeddings and heads uploaded from now on.
    pub fn set_format(&mut self, format: WeightFormat) {
        self.format = format;
    }

    /// Tensor `name` `[rows, cols]` on the device (row-chunked when large), in the storage
    /// [`WeightFormat::storage_for`] gives it (a streamed tensor keeps the storage it was
    /// uploaded in).
    pub fn matrix(&self, gpu: &Gpu, name: &str, rows: usize, cols: usize) -> Result<Matrix> {
        match self.check_uploaded(name, &[rows, cols]) {
            Some(u) => Ok(u?.matrix.clone()),
            None => {
                let format = self.format.storage_for(name, cols);
                let data = self.get(name, &[rows, cols])?;
                gpu.upload_matrix_as(name, &data, rows, cols, format)
            }
        }
    }

    /// Vector `name` `[n]` on the device.
    pub fn vector(&self, gpu: &Gpu, name: &str, n: usize) -> Result<Tensor> {
        match self.check_uploaded(name, &[n]) {
            Some(u) => {
                let u = u?;
                match u.matrix.chunks.as_slice() {
                    [(t, _, _)] => Ok(t.clone()),
                    _ => Err(Error::NoGpu(format!(
                        "{}: vector `{name}` of {n} values exceeds one storage binding",
                        u.location
                    ))),
                }
            }
            None => Ok(gpu.upload_f32(name, &self.get(name, &[n])?)),
        }
    }

    /// Reads tensor `name`, checks its shape, and widens it to f32.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        if let Some(u) = self.check_uploaded(name, shape) {
            return Err(Error::InvalidRequest(format!(
                "{}: tensor `{name}` is on the device only",
                u?.location
            )));
        }
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
        widen(
            &f.location,
            name,
            info.dtype,
            &f.bytes[f.data_start + s..f.data_start + e],
        )
    }
}

/// Widens raw little-endian F32/F16/BF16 values to f32.
pub(crate) fn widen(location: &str, name: &str, dtype: Dtype, raw: &[u8]) -> Result<Vec<f32>> {
    {
        Ok(match dtype {
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
                    file: location.to_string(),
                    name: name.to_string(),
                    found: format!("{other:?}"),
                })
            }
        })
    }
}
