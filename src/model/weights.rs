//! Named tensors from one or more safetensors files, widened to f32 with shape checks, or
//! (packed files, [`super::packed`]) uploaded as they are stored.
//!
//! Invariant: every file was validated by the safetensors parser (header length, offsets,
//! sizes) before any tensor is read; a tensor name maps to exactly one file.

use std::collections::HashMap;
use std::sync::Arc;

use safetensors::tensor::{Dtype, TensorInfo};
use safetensors::SafeTensors;

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Matrix, Tensor, WeightFormat};

use super::packed::{self, PackedParts};
use super::source::{read_json_opt, read_required, Source};
use super::stream::UploadedFile;

struct File {
    location: String,
    bytes: Arc<Vec<u8>>,
    data_start: usize,
    tensors: HashMap<String, TensorInfo>,
}

/// A packed matrix's format, block data and scale bytes.
type PackedBytes<'a> = (WeightFormat, &'a [u8], &'a [u8]);

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
    /// Packed matrices (`X.weight`): the file holding their tensors, and which they are.
    packed: HashMap<String, (usize, PackedParts)>,
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
            if let Some((m, parts)) = packed::parts_of(name, tensors[name].dtype) {
                self.packed.insert(m, (fi, parts));
            }
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
            let sizes = super::shards::listed(&loc, &idx)?;
            for f in shards {
                let what = "a shard listed in model.safetensors.index.json";
                match (sizes.get(f), src.uploaded(f).is_some()) {
                    // Read here: the index lists its size (streamed shards were checked as
                    // they arrived).
                    (Some(want), false) => {
                        let bytes = read_required(src, f, what).await?;
                        let file = src.location(f);
                        super::shards::check_size(&file, bytes.len() as u64, want)?;
                        w.add_file(file, bytes)?;
                    }
                    _ => w.add_from(src, f, what).await?,
                }
            }
            for name in map.keys() {
                if !w.has(name) && !w.has_part(name) {
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

    /// Whether a tensor exists (a packed matrix under its own name, `X.weight`).
    pub fn has(&self, name: &str) -> bool {
        self.index.contains_key(name)
            || self.uploaded.contains_key(name)
            || self.packed.contains_key(name)
    }

    /// Whether `name` is a part (blocks, scales, shape) of a packed matrix that was uploaded
    /// as it streamed in, whose parts are held no more.
    fn has_part(&self, name: &str) -> bool {
        [packed::DATA_Q4, packed::SCALE, packed::SHAPE]
            .iter()
            .filter_map(|s| name.strip_suffix(s))
            .any(|m| self.uploaded.contains_key(m))
    }

    /// Tensor names (unordered; a packed matrix under its own name, not its parts').
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index
            .keys()
            .filter(|n| !packed::is_auxiliary(n) && !self.is_packed_data(n))
            .chain(self.packed.keys())
            .chain(self.uploaded.keys())
            .map(String::as_str)
    }

    /// Whether `name` holds the blocks of a packed matrix (`X.weight_packed` of q4, or the
    /// int8 `X.weight` of q8), which [`Weights::names`] lists under the matrix's name.
    fn is_packed_data(&self, name: &str) -> bool {
        let matrix = name.strip_suffix(packed::DATA_Q4).unwrap_or(name);
        self.packed.get(matrix).is_some_and(|(_, p)| p.data == name)
    }

    /// The packed format of the files' matrices, if any is packed.
    pub fn packed_format(&self) -> Option<WeightFormat> {
        self.packed.values().map(|(_, p)| p.format).next()
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

    /// The shape of a tensor, if present (of a packed matrix, its values' `[rows, cols]`).
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        if let Some(u) = self.uploaded.get(name) {
            return Some(u.shape.clone());
        }
        if let Some((fi, parts)) = self.packed.get(name) {
            let s = &self.files[*fi].tensors.get(&parts.data)?.shape;
            return Some(match (parts.format, s.as_slice()) {
                (WeightFormat::Q4, &[r, c]) => vec![r, c * 8],
                _ => s.clone(),
            });
        }
        let f = &self.files[*self.index.get(name)?];
        f.tensors.get(name).map(|t| t.shape.clone())
    }

    /// A tensor's dtype, shape and stored bytes (not for packed matrices, which are several
    /// tensors, nor tensors uploaded as they streamed in).
    pub fn raw_tensor(&self, name: &str) -> Result<(Dtype, Vec<usize>, &[u8])> {
        let fi = *self.index.get(name).ok_or_else(|| Error::MissingTensor {
            file: self.describe(),
            name: name.to_string(),
        })?;
        let (info, raw) = self.raw(fi, name).ok_or_else(|| Error::MissingTensor {
            file: self.files[fi].location.clone(),
            name: name.to_string(),
        })?;
        Ok((info.dtype, info.shape.clone(), raw))
    }

    /// A tensor's bytes and header entry.
    fn raw(&self, fi: usize, name: &str) -> Option<(&TensorInfo, &[u8])> {
        let f = &self.files[fi];
        let info = f.tensors.get(name)?;
        let (s, e) = info.data_offsets;
        Some((info, &f.bytes[f.data_start + s..f.data_start + e]))
    }

    /// Packed matrix `name` `[rows, cols]`: its format and the bytes of its block data and
    /// scales, checked against the shape the model expects.
    fn packed_bytes(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Option<Result<PackedBytes<'_>>> {
        let (fi, parts) = self.packed.get(name)?;
        let file = &self.files[*fi].location;
        let (di, data) = self.raw(*fi, &parts.data)?;
        let scale = parts.scale.as_deref().and_then(|s| self.raw(*fi, s));
        Some(
            packed::check(
                file,
                name,
                parts,
                (di.dtype, &di.shape),
                scale.map(|(i, _)| (i.dtype, i.shape.as_slice())),
                rows,
                cols,
            )
            .map(|()| (parts.format, data, scale.map_or(&[][..], |(_, b)| b))),
        )
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
        if let Some(u) = self.check_uploaded(name, &[rows, cols]) {
            return Ok(u?.matrix.clone());
        }
        if let Some(p) = self.packed_bytes(name, rows, cols) {
            let (format, data, scales) = p?;
            return gpu.upload_packed(name, format, rows, cols, data, scales);
        }
        let format = self.format.storage_for(name, cols);
        // f16 values are the f16 storage as they are.
        if format == WeightFormat::F16 {
            if let Some(&fi) = self.index.get(name) {
                if let Some((info, raw)) = self.raw(fi, name) {
                    if info.dtype == Dtype::F16 && info.shape == [rows, cols] {
                        return gpu.upload_packed(name, format, rows, cols, raw, &[]);
                    }
                }
            }
        }
        let data = self.get(name, &[rows, cols])?;
        gpu.upload_matrix_as(name, &data, rows, cols, format)
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

    /// Reads tensor `name`, checks its shape, and widens it to f32 (a packed matrix: its
    /// stored values).
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        if let Some(u) = self.check_uploaded(name, shape) {
            return Err(Error::InvalidRequest(format!(
                "{}: tensor `{name}` is on the device only",
                u?.location
            )));
        }
        if let &[rows, cols] = shape {
            if let Some(p) = self.packed_bytes(name, rows, cols) {
                let (format, data, scales) = p?;
                return Ok(packed::unpack(format, data, scales, rows, cols));
            }
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
