//! Device buffers: plain tensors, row-chunked matrices (for tensors larger than one storage
//! binding), uploads, and the one async readback path used on every target.

use wgpu::util::DeviceExt;

use crate::error::{Error, Result};

use super::{Gpu, WeightFormat};

// UNIFORM too: the CPU decode kernels bind a row of activations as a uniform array.
const STORAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::UNIFORM)
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// A flat f32 (or u32) device buffer of `len` elements.
#[derive(Debug, Clone)]
pub struct Tensor {
    pub(crate) buf: wgpu::Buffer,
    pub(crate) len: usize,
}

impl Tensor {
    /// Number of 4-byte elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the tensor holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Size in bytes.
    pub fn bytes(&self) -> u64 {
        self.len as u64 * 4
    }
}

/// A row-major matrix `[rows, cols]` in one [`WeightFormat`], stored as consecutive row
/// chunks that each fit one storage binding (each chunk laid out as the format describes).
#[derive(Debug, Clone)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub format: WeightFormat,
    /// `(chunk, first_row, row_count)`.
    pub(crate) chunks: Vec<(Tensor, usize, usize)>,
}

impl Matrix {
    /// Bytes held on the device.
    pub fn bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.0.bytes()).sum()
    }
}

impl Gpu {
    /// Uploads f32 data into a new storage buffer.
    pub fn upload_f32(&self, label: &str, data: &[f32]) -> Tensor {
        self.upload_bytes(label, bytemuck::cast_slice(data), data.len())
    }

    /// Uploads u32 data into a new storage buffer.
    pub fn upload_u32(&self, label: &str, data: &[u32]) -> Tensor {
        self.upload_bytes(label, bytemuck::cast_slice(data), data.len())
    }

    fn upload_bytes(&self, label: &str, bytes: &[u8], len: usize) -> Tensor {
        if bytes.is_empty() {
            return self.zeros(label, 1);
        }
        let buf = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytes,
                usage: STORAGE,
            });
        Tensor { buf, len }
    }

    /// A zero-filled storage buffer of `len` 4-byte elements (at least one).
    pub fn zeros(&self, label: &str, len: usize) -> Tensor {
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: (len.max(1) * 4) as u64,
            usage: STORAGE,
            mapped_at_creation: false,
        });
        Tensor { buf, len }
    }

    /// Overwrites the start of `t` with `data`.
    pub fn write_u32(&self, t: &Tensor, data: &[u32]) {
        self.queue
            .write_buffer(&t.buf, 0, bytemuck::cast_slice(data));
    }

    /// Overwrites the start of `t` with `data`.
    pub fn write_f32(&self, t: &Tensor, data: &[f32]) {
        self.queue
            .write_buffer(&t.buf, 0, bytemuck::cast_slice(data));
    }

    /// Uploads a `[rows, cols]` f32 matrix, split into row chunks no larger than
    /// [`Gpu::max_binding`].
    pub fn upload_matrix(
        &self,
        label: &str,
        data: &[f32],
        rows: usize,
        cols: usize,
    ) -> Result<Matrix> {
        self.upload_matrix_as(label, data, rows, cols, WeightFormat::F32)
    }

    /// Uploads a `[rows, cols]` matrix encoded in `format` (which needs `cols` to be a
    /// multiple of [`super::quant::BLOCK`] unless f32), split into row chunks no larger than
    /// [`Gpu::max_binding`].
    pub fn upload_matrix_as(
        &self,
        label: &str,
        data: &[f32],
        rows: usize,
        cols: usize,
        format: WeightFormat,
    ) -> Result<Matrix> {
        if data.len() != rows * cols {
            return Err(Error::InvalidRequest(format!(
                "{label}: {} values for a [{rows}, {cols}] matrix",
                data.len()
            )));
        }
        self.row_chunks(label, format, rows, cols, |r0, n| {
            let part = &data[r0 * cols..(r0 + n) * cols];
            match format {
                WeightFormat::F32 => self.upload_f32(label, part),
                _ => self.upload_u32(label, &format.encode(part, n, cols)),
            }
        })
    }

    /// A `[rows, cols]` matrix in `format` of row chunks that each fit one storage binding
    /// (one empty chunk for no rows), `upload(r0, n)` making the chunk of rows `r0..r0 + n`.
    fn row_chunks(
        &self,
        label: &str,
        format: WeightFormat,
        rows: usize,
        cols: usize,
        mut upload: impl FnMut(usize, usize) -> Tensor,
    ) -> Result<Matrix> {
        let per_chunk = self.chunk_rows(label, format, cols)?;
        let mut chunks = Vec::new();
        let mut r0 = 0;
        loop {
            let n = per_chunk.min(rows - r0);
            chunks.push((upload(r0, n), r0, n));
            r0 += n;
            if r0 >= rows {
                break;
            }
        }
        Ok(Matrix {
            rows,
            cols,
            format,
            chunks,
        })
    }

    /// Rows of `cols` values in `format` that one chunk (storage binding) holds.
    fn chunk_rows(&self, label: &str, format: WeightFormat, cols: usize) -> Result<usize> {
        if format != WeightFormat::F32 && !cols.is_multiple_of(super::quant::BLOCK) {
            return Err(Error::InvalidRequest(format!(
                "{label}: {format} storage needs rows of a multiple of {} values, found {cols}",
                super::quant::BLOCK
            )));
        }
        let row_bytes = format.row_bytes(cols.max(1)).max(1) as u64;
        // A chunk's last scale word may be half padding.
        let per_chunk = (self.max_binding().saturating_sub(4) / row_bytes) as usize;
        if per_chunk == 0 {
            return Err(Error::NoGpu(format!(
                "{label}: one row of {cols} {format} values exceeds the device's storage binding limit of {} bytes",
                self.max_binding()
            )));
        }
        Ok(per_chunk)
    }

    /// Uploads a `[rows, cols]` matrix already encoded in `format`: `data`, the block data of
    /// all rows (for f16, the f16 values), and `scales`, their f16 scales (none for f16),
    /// as [`WeightFormat`] lays them out and packed files store them. Each row chunk is the
    /// bytes of its rows' data, then of their scales: nothing is converted.
    pub fn upload_packed(
        &self,
        label: &str,
        format: WeightFormat,
        rows: usize,
        cols: usize,
        data: &[u8],
        scales: &[u8],
    ) -> Result<Matrix> {
        let row_data = 4 * format.data_words(1, cols);
        let row_scales = if format.scaled() {
            2 * cols / super::quant::BLOCK
        } else {
            0
        };
        if format == WeightFormat::F32
            || data.len() != rows * row_data
            || scales.len() != rows * row_scales
        {
            return Err(Error::InvalidRequest(format!(
                "{label}: {} bytes of {format} blocks and {} of scales for a [{rows}, {cols}] matrix (expected {} and {})",
                data.len(),
                scales.len(),
                rows * row_data,
                rows * row_scales
            )));
        }
        self.row_chunks(label, format, rows, cols, |r0, n| {
            let mut bytes = Vec::with_capacity(4 * format.chunk_words(n, cols));
            bytes.extend_from_slice(&data[r0 * row_data..(r0 + n) * row_data]);
            bytes.extend_from_slice(&scales[r0 * row_scales..(r0 + n) * row_scales]);
            bytes.resize(4 * format.chunk_words(n, cols), 0);
            let len = bytes.len() / 4;
            self.upload_bytes(label, &bytes, len)
        })
    }

    /// The rows of `parts` (in order) as one matrix in one buffer, joined on the device: the
    /// block data of every part, then (scaled formats) their scales, as [`WeightFormat`]
    /// lays out a chunk. `None` when the parts differ in format or width, any part is split
    /// into chunks, a part but the last ends its scales mid-word, or the joined rows exceed one
    /// storage binding; the caller keeps the parts.
    pub fn join_rows(&self, label: &str, parts: &[&Matrix]) -> Result<Option<Matrix>> {
        let Some(first) = parts.first() else {
            return Ok(None);
        };
        let (cols, format) = (first.cols, first.format);
        if parts
            .iter()
            .any(|m| m.cols != cols || m.format != format || m.chunks.len() != 1)
        {
            return Ok(None);
        }
        // Scales are f16, two to a word: a part whose scales end mid-word (all but the last)
        // cannot be copied whole words at a time.
        let blocks = |m: &Matrix| m.rows * cols / super::quant::BLOCK;
        if format.scaled() && parts[..parts.len() - 1].iter().any(|m| blocks(m) % 2 == 1) {
            return Ok(None);
        }
        let rows: usize = parts.iter().map(|m| m.rows).sum();
        let total = format.chunk_words(rows, cols);
        if total as u64 * 4 > self.max_binding() {
            return Ok(None);
        }
        let joined = self.zeros(label, total);
        let mut step = super::Step::new(self);
        let (mut data_at, mut scale_at) = (0, format.data_words(rows, cols));
        for m in parts {
            let chunk = &m.chunks[0].0;
            let data = format.data_words(m.rows, cols);
            let scales = format.scale_words(m.rows, cols);
            step.copy(chunk, 0, &joined, data_at, data);
            step.copy(chunk, data, &joined, scale_at, scales);
            data_at += data;
            scale_at += scales;
        }
        step.submit()?;
        Ok(Some(Matrix {
            rows,
            cols,
            format,
            chunks: vec![(joined, 0, rows)],
        }))
    }

    /// The concatenation of `parts` in one new buffer (joined on the device).
    pub fn join(&self, label: &str, parts: &[&Tensor]) -> Result<Tensor> {
        let mut placed = Vec::with_capacity(parts.len());
        let mut at = 0;
        for t in parts {
            placed.push((*t, at));
            at += t.len;
        }
        self.join_placed(label, &placed)
    }

    /// One new buffer holding each of `parts` from its element offset (joined on the device);
    /// what no part covers is zero.
    pub fn join_placed(&self, label: &str, parts: &[(&Tensor, usize)]) -> Result<Tensor> {
        let len = parts.iter().map(|(t, at)| at + t.len).max().unwrap_or(0);
        let joined = self.zeros(label, len);
        let mut step = super::Step::new(self);
        for &(t, at) in parts {
            step.copy(t, 0, &joined, at, t.len);
        }
        step.submit()?;
        Ok(joined)
    }

    /// Copies `n` f32 values starting at element `offset` of `t` back to the host.
    pub async fn read_f32(&self, t: &Tensor, offset: usize, n: usize) -> Result<Vec<f32>> {
        let bytes = self
            .read_bytes(&t.buf, offset as u64 * 4, n as u64 * 4)
            .await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Copies `n` u32 values starting at element `offset` of `t` back to the host.
    pub async fn read_u32(&self, t: &Tensor, offset: usize, n: usize) -> Result<Vec<u32>> {
        let bytes = self
            .read_bytes(&t.buf, offset as u64 * 4, n as u64 * 4)
            .await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    async fn read_bytes(&self, src: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
        if size == 0 {
            return Ok(Vec::new());
        }
        let pooled = self.staging.lock().ok().and_then(|mut s| s.take());
        let staging = match pooled {
            Some(b) if b.size() >= size => b,
            _ => self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("readback"),
                size: size.next_power_of_two().max(256),
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
        };
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("readback"),
            });
        enc.copy_buffer_to_buffer(src, offset, &staging, 0, size);
        self.queue.submit([enc.finish()]);
        let slice = staging.slice(0..size);
        let (tx, rx) = futures_channel::oneshot::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.poll_wait();
        let mapped = rx
            .await
            .map_err(|_| Error::Gpu("readback was cancelled (device lost?)".into()))?;
        self.take_error()?;
        mapped.map_err(|e| Error::Gpu(format!("readback failed: {e}")))?;
        let data = slice
            .get_mapped_range()
            .map_err(|e| Error::Gpu(format!("readback mapping failed: {e}")))?
            .to_vec();
        staging.unmap();
        if let Ok(mut s) = self.staging.lock() {
            *s = Some(staging);
        }
        Ok(data)
    }
}
