//! Safetensors files parsed while their bytes arrive: the header is validated as soon as it is
//! complete, and every tensor is widened to f32 and uploaded to the device the moment its last
//! byte is in, then its bytes are dropped. A browser download therefore never holds a whole
//! weight file, in JavaScript or in wasm memory.
//!
//! Invariant: tensors are consumed in file order; `base` is the file offset of `buf[0]`.

use std::sync::Arc;

use safetensors::tensor::{Dtype, TensorInfo, TensorView};

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Matrix, WeightFormat};

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
            let numel = i.shape.iter().try_fold(1usize, |a, d| a.checked_mul(*d));
            let bytes = numel
                .and_then(|m| m.checked_mul(i.dtype.bitsize()))
                .map(|b| b.div_ceil(8));
            if s != at || e < s || bytes != Some(e - s) {
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
            if shape.len() <= 2 {
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

    /// Ends the file: fails if it was truncated or has bytes no tensor covers.
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
