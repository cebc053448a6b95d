//! A step: the dispatches and copies of one forward pass (or one decode step), recorded on the
//! host and encoded into a single command buffer with one uniform upload.
//!
//! Invariant: every kernel's binding 0 is its uniform `Params`; the step packs all params into
//! one uniform buffer at offsets aligned to the device's `min_uniform_buffer_offset_alignment`.

use std::sync::Arc;

use bytemuck::Pod;

use crate::error::Result;

use super::{Gpu, Kernel, Tensor};

/// A bound buffer: the whole buffer, or a byte range `(offset, size)` of it (how uniform
/// arrays of a fixed size are bound).
type Bound = (wgpu::Buffer, Option<(u64, u64)>);

enum Op {
    Dispatch {
        kernel: Arc<Kernel>,
        params: (u64, u64),
        buffers: Vec<Bound>,
        groups: [u32; 3],
    },
    Copy {
        src: wgpu::Buffer,
        src_off: u64,
        dst: wgpu::Buffer,
        dst_off: u64,
        size: u64,
    },
}

/// Records the GPU work of one step; [`Step::submit`] encodes and submits it at once.
pub struct Step<'g> {
    gpu: &'g Gpu,
    ops: Vec<Op>,
    params: Vec<u8>,
    align: u64,
}

/// What a bind group binds: the same kernel, parameter slot and buffers give the same group.
/// Decode steps repeat the same sequence, so after the first token every group is reused.
#[derive(PartialEq, Eq, Hash)]
pub(crate) struct BindKey {
    kernel: usize,
    params: (u64, u64),
    uniform: wgpu::Buffer,
    buffers: Vec<Bound>,
}

/// Bind groups kept at most (a cached group keeps its buffers alive: the cache is emptied when
/// it fills, and when a model or session is dropped through [`Gpu::release_bindings`]).
const BIND_CACHE: usize = 4096;

fn bind_group(
    gpu: &Gpu,
    kernel: &Kernel,
    uniform: &wgpu::Buffer,
    params: (u64, u64),
    buffers: &[Bound],
) -> wgpu::BindGroup {
    let mut entries = vec![wgpu::BindGroupEntry {
        binding: 0,
        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: uniform,
            offset: params.0,
            size: wgpu::BufferSize::new(params.1),
        }),
    }];
    for (b, (buf, range)) in buffers.iter().enumerate() {
        entries.push(wgpu::BindGroupEntry {
            binding: b as u32 + 1,
            resource: match range {
                None => buf.as_entire_binding(),
                Some((offset, size)) => wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: buf,
                    offset: *offset,
                    size: wgpu::BufferSize::new(*size),
                }),
            },
        });
    }
    gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(kernel.name),
        layout: &kernel.layout,
        entries: &entries,
    })
}

/// Largest workgroup count per dimension that every WebGPU device accepts.
const MAX_GROUPS: u32 = 65535;

/// `n` workgroups laid out in 2-D when `n` exceeds the per-dimension limit.
fn linear_groups(n: u32) -> [u32; 3] {
    [n.min(MAX_GROUPS), n.div_ceil(MAX_GROUPS).max(1), 1]
}

impl<'g> Step<'g> {
    /// An empty step on `gpu`.
    pub fn new(gpu: &'g Gpu) -> Self {
        Step {
            gpu,
            ops: Vec::new(),
            params: Vec::new(),
            align: gpu.limits.min_uniform_buffer_offset_alignment.max(16) as u64,
        }
    }

    /// The device this step records for.
    pub fn gpu(&self) -> &'g Gpu {
        self.gpu
    }

    /// Records a dispatch of `kernel` with uniform `params` (binding 0) and `buffers`
    /// (bindings 1..), over `groups` workgroups.
    pub fn dispatch<P: Pod>(
        &mut self,
        kernel: &Arc<Kernel>,
        params: &P,
        buffers: &[&Tensor],
        groups: [u32; 3],
    ) {
        let bound = buffers.iter().map(|t| (t.buf.clone(), None)).collect();
        self.record(kernel, params, bound, groups);
    }

    /// Records a dispatch over `n` workgroups (laid out as [`Step::dispatch_linear`] does)
    /// whose binding 1 is elements `off..off + len` of `uniform` (a uniform array of a fixed
    /// size; `off * 4` must be a multiple of the device's uniform offset alignment) and whose
    /// bindings 2.. are `buffers`.
    pub fn dispatch_uniform_linear<P: Pod>(
        &mut self,
        kernel: &Arc<Kernel>,
        params: &P,
        uniform: (&Tensor, usize, usize),
        buffers: &[&Tensor],
        n: u32,
    ) {
        self.record_uniform(kernel, params, uniform, buffers, None, n);
    }

    /// [`Self::dispatch_uniform_linear`] with a second uniform range, `uniform_hi`, bound after
    /// `buffers` (a kernel whose uniform input is too large for one binding reads it in two).
    pub fn dispatch_uniform2_linear<P: Pod>(
        &mut self,
        kernel: &Arc<Kernel>,
        params: &P,
        uniform: (&Tensor, usize, usize),
        buffers: &[&Tensor],
        uniform_hi: (&Tensor, usize, usize),
        n: u32,
    ) {
        self.record_uniform(kernel, params, uniform, buffers, Some(uniform_hi), n);
    }

    fn record_uniform<P: Pod>(
        &mut self,
        kernel: &Arc<Kernel>,
        params: &P,
        uniform: (&Tensor, usize, usize),
        buffers: &[&Tensor],
        uniform_hi: Option<(&Tensor, usize, usize)>,
        n: u32,
    ) {
        let range = |(t, off, len): (&Tensor, usize, usize)| {
            (t.buf.clone(), Some((off as u64 * 4, len as u64 * 4)))
        };
        let mut bound = vec![range(uniform)];
        bound.extend(buffers.iter().map(|t| (t.buf.clone(), None)));
        bound.extend(uniform_hi.map(range));
        self.record(kernel, params, bound, linear_groups(n));
    }

    fn record<P: Pod>(
        &mut self,
        kernel: &Arc<Kernel>,
        params: &P,
        buffers: Vec<Bound>,
        groups: [u32; 3],
    ) {
        if groups.contains(&0) {
            return;
        }
        let off = self.params.len() as u64;
        let bytes = bytemuck::bytes_of(params);
        self.params.extend_from_slice(bytes);
        let len = bytes.len() as u64;
        let padded = len.div_ceil(self.align) * self.align;
        self.params.resize((off + padded) as usize, 0);
        self.ops.push(Op::Dispatch {
            kernel: kernel.clone(),
            params: (off, len.max(16)),
            buffers,
            groups,
        });
    }

    /// Records a dispatch over `n` workgroups laid out in 2-D when `n` exceeds the per-dimension
    /// limit. Kernels recover the linear index as `wg.x + wg.y * nwg.x`.
    pub fn dispatch_linear<P: Pod>(
        &mut self,
        kernel: &Arc<Kernel>,
        params: &P,
        buffers: &[&Tensor],
        n: u32,
    ) {
        self.dispatch(kernel, params, buffers, linear_groups(n));
    }

    /// Records a buffer-to-buffer copy of `n` 4-byte elements.
    pub fn copy(&mut self, src: &Tensor, src_elem: usize, dst: &Tensor, dst_elem: usize, n: usize) {
        if n == 0 {
            return;
        }
        self.ops.push(Op::Copy {
            src: src.buf.clone(),
            src_off: src_elem as u64 * 4,
            dst: dst.buf.clone(),
            dst_off: dst_elem as u64 * 4,
            size: n as u64 * 4,
        });
    }

    /// Encodes everything into one command buffer and submits it.
    pub fn submit(self) -> Result<()> {
        let gpu = self.gpu;
        gpu.take_error()?;
        if self.ops.is_empty() {
            return Ok(());
        }
        let n = self
            .ops
            .iter()
            .filter(|o| matches!(o, Op::Dispatch { .. }))
            .count();
        gpu.dispatches
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        // The lock is held until the submit so that concurrent steps cannot interleave their
        // parameter uploads into the shared uniform buffer.
        let mut slot = gpu.uniform.lock().unwrap_or_else(|p| p.into_inner());
        let uniform = {
            let need = (self.params.len() as u64).max(256);
            match slot.as_ref() {
                Some(b) if b.size() >= need => b.clone(),
                _ => {
                    let b = gpu.device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("step params"),
                        size: need.next_power_of_two(),
                        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                        mapped_at_creation: false,
                    });
                    *slot = Some(b.clone());
                    b
                }
            }
        };
        if !self.params.is_empty() {
            gpu.queue.write_buffer(&uniform, 0, &self.params);
        }
        let mut cache = gpu.bind_groups.lock().unwrap_or_else(|p| p.into_inner());
        #[cfg(not(target_arch = "wasm32"))]
        if profile::enabled() {
            for op in &self.ops {
                gpu.poll_wait();
                let t = std::time::Instant::now();
                let mut enc = gpu.device.create_command_encoder(&Default::default());
                encode(
                    gpu,
                    &mut enc,
                    std::slice::from_ref(op),
                    &uniform,
                    &mut cache,
                );
                gpu.queue.submit([enc.finish()]);
                gpu.poll_wait();
                profile::record(op, t.elapsed());
            }
            return gpu.take_error();
        }
        let mut enc = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("step"),
            });
        encode(gpu, &mut enc, &self.ops, &uniform, &mut cache);
        gpu.queue.submit([enc.finish()]);
        gpu.take_error()
    }
}

/// Encodes `ops` into `enc`: runs of dispatches share one compute pass; bind groups come from
/// (and go into) `cache`.
// wgpu handles hash and compare by identity; their interior state never changes a key.
#[allow(clippy::mutable_key_type)]
fn encode(
    gpu: &Gpu,
    enc: &mut wgpu::CommandEncoder,
    ops: &[Op],
    uniform: &wgpu::Buffer,
    cache: &mut std::collections::HashMap<BindKey, wgpu::BindGroup>,
) {
    let mut i = 0;
    while i < ops.len() {
        match &ops[i] {
            Op::Copy {
                src,
                src_off,
                dst,
                dst_off,
                size,
            } => {
                enc.copy_buffer_to_buffer(src, *src_off, dst, *dst_off, *size);
                i += 1;
            }
            Op::Dispatch { .. } => {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("step"),
                    timestamp_writes: None,
                });
                while let Some(Op::Dispatch {
                    kernel,
                    params,
                    buffers,
                    groups,
                }) = ops.get(i)
                {
                    let key = BindKey {
                        kernel: Arc::as_ptr(kernel) as usize,
                        params: *params,
                        uniform: uniform.clone(),
                        buffers: buffers.clone(),
                    };
                    let bg = match cache.get(&key) {
                        Some(bg) => bg.clone(),
                        None => {
                            let bg = bind_group(gpu, kernel, uniform, *params, buffers);
                            if cache.len() >= BIND_CACHE {
                                cache.clear();
                            }
                            cache.insert(key, bg.clone());
                            bg
                        }
                    };
                    pass.set_pipeline(&kernel.pipeline);
                    pass.set_bind_group(0, &bg, &[]);
                    pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
                    i += 1;
                }
            }
        }
    }
}

/// Per-kernel wall-clock profile (native only), switched on by `SHADOWPEFT_PROFILE=1`: every op
/// of every step is then submitted and waited for on its own, so the times include one submit
/// each and the total runs slower than a normal step; use it to compare kernels, not to
/// measure speed.
#[cfg(not(target_arch = "wasm32"))]
pub mod profile {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    use std::time::Duration;

    use super::Op;

    fn table() -> &'static Mutex<HashMap<String, (u64, Duration)>> {
        static T: OnceLock<Mutex<HashMap<String, (u64, Duration)>>> = OnceLock::new();
        T.get_or_init(|| Mutex::new(HashMap::new()))
    }

    /// Whether `SHADOWPEFT_PROFILE=1` is set.
    pub fn enabled() -> bool {
        static ON: OnceLock<bool> = OnceLock::new();
        *ON.get_or_init(|| std::env::var("SHADOWPEFT_PROFILE").is_ok_and(|v| v == "1"))
    }

    pub(super) fn record(op: &Op, t: Duration) {
        let key = match op {
            Op::Dispatch {
                kernel,
                groups,
                buffers,
                ..
            } => {
                // The second binding's size tells apart the projections of one kernel.
                let b2 = buffers
                    .get(1)
                    .map_or(0, |(b, r)| r.map_or(b.size(), |r| r.1));
                format!(
                    "{} [{}x{}x{}] b2={}K",
                    kernel.name,
                    groups[0],
                    groups[1],
                    groups[2],
                    b2 / 1024
                )
            }
            Op::Copy { size, .. } => format!("copy [{size} B]"),
        };
        let mut tab = table().lock().unwrap_or_else(|p| p.into_inner());
        let e = tab.entry(key).or_default();
        e.0 += 1;
        e.1 += t;
    }

    /// The profile so far, slowest first: total ms, calls, us per call, op and grid; then
    /// empties it.
    pub fn report() -> String {
        let mut tab = table().lock().unwrap_or_else(|p| p.into_inner());
        let mut rows: Vec<_> = tab.drain().collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.1 .1));
        let total: Duration = rows.iter().map(|r| r.1 .1).sum();
        let mut out = format!(
            "{:>10} {:>8} {:>10}  op [workgroups]\n",
            "total ms", "calls", "us/call"
        );
        for (k, (n, t)) in rows {
            out += &format!(
                "{:>10.2} {:>8} {:>10.1}  {k}\n",
                t.as_secs_f64() * 1e3,
                n,
                t.as_secs_f64() * 1e6 / n as f64
            );
        }
        out += &format!("{:>10.2} total\n", total.as_secs_f64() * 1e3);
        out
    }
}
