//! Safetensors files parsed while their bytes arrive: the header is validated as soon as it is
//! complete, and every tensor is widened to f32 and uploaded to the device the moment its last
//! byte is in, then its bytes are dropped. A browser download therefore never holds a whole
//! weight file, in JavaScript or in wasm memory. A packed matrix ([`super::packed`]) is
//! uploaded as stored once its blocks and scales are both in (a pack writes the scales
//! first, so only they wait).
//!
//! Invariant: tensors are consumed in file order; `base` is the file offset of `buf[0]`.

use std::collections::HashMap;
use std::sync::Arc;

use safetensors::tensor::{Dtype, TensorInfo, TensorView};

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Matrix, WeightFormat};

use super::packed::{self, PackedParts};
use super::weights::widen;

/// Same bound as the safetensors crate: a header larger than this is corrupt.
const MAX_HEADER: usize = 100_000_000;

/// A streamed file's tensors: 1-D and 2-D ones on the device, higher-rank ones (the stacked
/// adapter tensors, used on the host) as a small safetensors buffer.
#[derive(Clone)]
pub struct UploadedFile {
    pub(crate) location: String,
    pub(crate) tensors: Vec<(String, (Vec<usize>, Matrix))>,
    pub(crate) host: Option<Arc<Vec<u8>>>,
}

/// Incremental parser/uploader of one safetensors file.
pub struct SafetensorsStream {
    location: String,
    buf: Vec<u8>,
    base: usize,
    received: usize,
    data_start: Option<usize>,
    pending: Vec<(String, TensorInfo)>,
    next: usize,
    uploaded: Vec<(String, (Vec<usize>, Matrix))>,
    host: Vec<(String, Dtype, Vec<usize>, Vec<u8>)>,
    format: WeightFormat,
    /// Parts of packed matrices waiting for the other part: block data by matrix name, and
    /// scale tensors by their own name.
    held_data: HashMap<String, (PackedParts, Dtype, Vec<usize>, Vec<u8>)>,
    held_scales: HashMap<String, (Dtype, Vec<usize>, Vec<u8>)>,
}

impl SafetensorsStream {
    /// A parser for the file called `location` in messages.
    pub fn new(location: impl Into<String>) -> Self {
        SafetensorsStream {
            location: location.into(),
            buf: Vec::new(),
            base: 0,
            received: 0,
            data_start: None,
            pending: Vec::new(),
            next: 0,
            uploaded: Vec::new(),
            host: Vec::new(),
            format: WeightFormat::F32,
            held_data: HashMap::new(),
            held_scales: HashMap::new(),
        }
    }

    /// Uploads the projections, embeddings and heads in `format`
    /// ([`WeightFormat::storage_for`]).
    pub fn with_format(mut self, format: WeightFormat) -> Self {
        self.format = format;
        self
    }

    fn err(&self, msg: impl Into<String>) -> Error {
        Error::Safetensors {
            file: self.location.clone(),
            msg: msg.into(),
        }
    }

    /// Feeds the next bytes of the file; uploads every tensor they complete.
    pub fn push(&mut self, gpu: &Gpu, chunk: &[u8]) -> Result<()> {
        self.received += chunk.len();
        self.buf.extend_from_slice(chunk);
        if self.data_start.is_none() {
            self.parse_header()?;
        }
        if self.data_start.is_some() {
            self.upload_ready(gpu)?;
        }
        Ok(())
    }

    fn parse_header(&mut self) -> Result<()> {
        if self.buf.len() < 8 {
            return Ok(());
        }
        let n = u64::from_le_bytes(self.buf[..8].try_into().unwrap_or([0; 8]));
        if n > MAX_HEADER as u64 {
            return Err(self.err("header too large"));
        }
        let n = n as usize;
        if self.buf.len() < 8 + n {
            return Ok(());
        }
        let v: serde_json::Value = serde_json::from_slice(&self.buf[8..8 + n])
            .map_err(|e| self.err(format!("invalid header: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| self.err("invalid header: expected a JSON object"))?;
        let mut tensors = Vec::with_capacity(obj.len());
        for (k, t) in obj {
            if k == "__metadata__" {
                continue;
            }
            let info: TensorInfo = serde_json::from_value(t.clone())
                .map_err(|e| self.err(format!("tensor `{k}`: invalid entry: {e}")))?;
            tensors.push((k.clone(), info));
        }
        tensors.sort_by_key(|(_, i)| i.data_offsets);
        let mut at = 0usize;
        for (k, i) in &tensors {
            let (s, e) = i.data_offsets;
            // In u64: a tensor's bit count passes u32 (wasm32's usize) at 512 MiB.
            let numel = i
                .shape
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d as u64));
            let bytes = numel
                .and_then(|m| m.checked_mul(i.dtype.bitsize() as u64))
                .map(|b| b.div_ceil(8));
            if s != at || e < s || bytes != Some((e - s) as u64) {
                return Err(self.err(format!("invalid offset for tensor `{k}`")));
            }
            at = e;
        }
        self.pending = tensors;
        self.buf.drain(..8 + n);
        self.base = 8 + n;
        self.data_start = Some(8 + n);
        Ok(())
    }

    fn upload_ready(&mut self, gpu: &Gpu) -> Result<()> {
        let ds = self.data_start.unwrap_or(0);
        while let Some((name, info)) = self.pending.get(self.next) {
            let (s, e) = info.data_offsets;
            if ds + e > self.base + self.buf.len() {
                break;
            }
            let raw = &self.buf[ds + s - self.base..ds + e - self.base];
            let shape = info.shape.clone();
            if let Some((matrix, parts)) = packed::parts_of(name, info.dtype) {
                let (name, dtype) = (name.clone(), info.dtype);
                let held = (parts, dtype, shape, raw.to_vec());
                self.held_data.insert(matrix.clone(), held);
                self.upload_packed(gpu, &matrix, &name)?;
            } else if packed::is_auxiliary(name) {
                if name.ends_with(packed::SCALE) {
                    let (name, held) = (name.clone(), (info.dtype, shape, raw.to_vec()));
                    let matrix = name.trim_end_matches(packed::SCALE).to_string();
                    self.held_scales.insert(name.clone(), held);
                    self.upload_packed(gpu, &matrix, &name)?;
                }
            } else if shape.len() == 2
                && info.dtype == Dtype::F16
                && self.format.storage_for(name, shape[1]) == WeightFormat::F16
            {
                // f16 values are the f16 storage as they are.
                let (r, c) = (shape[0], shape[1]);
                let m = gpu.upload_packed(name, WeightFormat::F16, r, c, raw, &[])?;
                self.uploaded.push((name.clone(), (shape, m)));
            } else if shape.len() <= 2 {
                let values = widen(&self.location, name, info.dtype, raw)?;
                let (rows, cols) = match shape.as_slice() {
                    [] => (1, 1),
                    [n] => (1, *n),
                    [r, c] => (*r, *c),
                    _ => unreachable!("rank checked above"),
                };
                let format = match shape.len() {
                    2 => self.format.storage_for(name, cols),
                    _ => WeightFormat::F32,
                };
                let m = gpu.upload_matrix_as(name, &values, rows, cols, format)?;
                self.uploaded.push((name.clone(), (shape, m)));
            } else {
                self.host
                    .push((name.clone(), info.dtype, shape, raw.to_vec()));
            }
            let consumed = ds + e - self.base;
            self.buf.drain(..consumed);
            self.base += consumed;
            self.next += 1;
        }
        Ok(())
    }

    /// Uploads packed matrix `matrix` if both its blocks and its scales are in (`part`: the
    /// tensor that just arrived, for messages).
    fn upload_packed(&mut self, gpu: &Gpu, matrix: &str, part: &str) -> Result<()> {
        let Some((parts, _, _, _)) = self.held_data.get(matrix) else {
            return Ok(());
        };
        let scale_name = parts.scale.clone().unwrap_or_default();
        if !self.held_scales.contains_key(&scale_name) {
            return Ok(());
        }
        let (parts, dtype, shape, data) = self
            .held_data
            .remove(matrix)
            .unwrap_or_else(|| unreachable!());
        let (sd, ss, scales) = self
            .held_scales
            .remove(&scale_name)
            .unwrap_or_else(|| unreachable!());
        let (rows, cols) = match (parts.format, shape.as_slice()) {
            (WeightFormat::Q4, &[r, c]) => (r, c * 8),
            (_, &[r, c]) => (r, c),
            _ => {
                return Err(self.err(format!(
                    "tensor `{part}`: packed blocks of shape {shape:?}, expected 2 dimensions"
                )))
            }
        };
        packed::check(
            &self.location,
            matrix,
            &parts,
            (dtype, &shape),
            Some((sd, &ss)),
            rows,
            cols,
        )?;
        let m = gpu.upload_packed(matrix, parts.format, rows, cols, &data, &scales)?;
        self.uploaded
            .push((matrix.to_string(), (vec![rows, cols], m)));
        Ok(())
    }

    /// Ends the file: fails if it was truncated, has bytes no tensor covers, or holds half of
    /// a packed matrix.
    pub fn finish(self) -> Result<UploadedFile> {
        let Some(ds) = self.data_start else {
            return Err(self.err(format!(
                "truncated: {} bytes, the header is incomplete",
                self.received
            )));
        };
        if let Some((name, info)) = self.pending.get(self.next) {
            return Err(self.err(format!(
                "truncated: tensor `{name}` ends at byte {}, the file has {} bytes",
                ds + info.data_offsets.1,
                self.received
            )));
        }
        if !self.buf.is_empty() {
            return Err(self.err("incomplete metadata, file not fully covered"));
        }
        if let Some((m, (parts, ..))) = self.held_data.iter().next() {
            return Err(Error::MissingTensor {
                file: self.location.clone(),
                name: format!(
                    "{} (the scales of the {} blocks in `{}`)",
                    parts.scale.as_deref().unwrap_or(m),
                    parts.format,
                    parts.data
                ),
            });
        }
        if let Some(s) = self.held_scales.keys().next() {
            return Err(Error::Safetensors {
                file: self.location.clone(),
                msg: format!("tensor `{s}`: block scales of no packed matrix in this file"),
            });
        }
        let host = if self.host.is_empty() {
            None
        } else {
            let views = self
                .host
                .iter()
                .map(|(n, d, s, b)| TensorView::new(*d, s.clone(), b).map(|v| (n.clone(), v)))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| self.err(e.to_string()))?;
            Some(Arc::new(
                safetensors::serialize(views, None).map_err(|e| self.err(e.to_string()))?,
            ))
        };
        Ok(UploadedFile {
            location: self.location,
            tensors: self.uploaded,
            host,
        })
    }
}
