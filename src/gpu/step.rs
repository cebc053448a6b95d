//! A step: the dispatches and copies of one forward pass (or one decode step), recorded on the
//! host and encoded into a single command buffer with one uniform upload.
//!
//! Invariant: every kernel's binding 0 is its uniform `Params`; the step packs all params into
//! one uniform buffer at offsets aligned to the device's `min_uniform_buffer_offset_alignment`.

use std::sync::Arc;

use bytemuck::Pod;

use crate::error::Result;

use super::{Gpu, Kernel, Tensor};

enum Op {
    Dispatch {
        kernel: Arc<Kernel>,
        params: (u64, u64),
        buffers: Vec<wgpu::Buffer>,
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
    buffers: Vec<wgpu::Buffer>,
}

/// Bind groups kept at most (a cached group keeps its buffers alive: the cache is emptied when
/// it fills, and when a model or session is dropped through [`Gpu::release_bindings`]).
const BIND_CACHE: usize = 4096;

fn bind_group(
    gpu: &Gpu,
    kernel: &Kernel,
    uniform: &wgpu::Buffer,
    params: (u64, u64),
    buffers: &[wgpu::Buffer],
) -> wgpu::BindGroup {
    let mut entries = vec![wgpu::BindGroupEntry {
        binding: 0,
        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: uniform,
            offset: params.0,
            size: wgpu::BufferSize::new(params.1),
        }),
    }];
    for (b, buf) in buffers.iter().enumerate() {
        entries.push(wgpu::BindGroupEntry {
            binding: b as u32 + 1,
            resource: buf.as_entire_binding(),
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
            buffers: buffers.iter().map(|t| t.buf.clone()).collect(),
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
        let x = n.min(MAX_GROUPS);
        let y = n.div_ceil(MAX_GROUPS.max(1));
        self.dispatch(kernel, params, buffers, [x, y.max(1), 1]);
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
        let mut enc = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("step"),
            });
        let mut cache = gpu.bind_groups.lock().unwrap_or_else(|p| p.into_inner());
        let mut i = 0;
        while i < self.ops.len() {
            match &self.ops[i] {
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
                    }) = self.ops.get(i)
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
                                let bg = bind_group(gpu, kernel, &uniform, *params, buffers);
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
        gpu.queue.submit([enc.finish()]);
        gpu.take_error()
    }
}
