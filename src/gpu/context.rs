//! The device context: adapter, device, queue, limits and features, built once per process
//! (or per page) and shared by every model loaded on it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

use super::pipelines::Kernel;

/// Options for creating a [`Gpu`].
#[derive(Debug, Clone, Default)]
pub struct GpuOptions {
    /// Cap on the size of one storage buffer binding, in bytes. Tensors larger than the
    /// effective limit (this or the device's, whichever is smaller) are split into row chunks.
    /// Lowering it exercises the splitting path on small models.
    pub max_storage_binding: Option<u64>,
    /// Prefer a low-power adapter (integrated GPU) over a discrete one.
    pub low_power: bool,
    /// When kernels use subgroup operations.
    pub subgroups: Subgroups,
    /// The kernel family: `None` by the device type, `Some(true)` the CPU-device kernels (no
    /// workgroup memory or barriers), `Some(false)` the GPU ones (tiled, workgroup memory).
    pub cpu_kernels: Option<bool>,
}

/// When kernels use subgroup operations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Subgroups {
    /// On GPUs that offer them; not on CPU devices (lavapipe, SwiftShader, WARP), where a
    /// subgroup reduction costs more than the strided loads it saves (measured on lavapipe:
    /// decode about 3x slower).
    #[default]
    Auto,
    /// Wherever the device offers them (CPU devices included).
    WhenOffered,
    /// Never: the kernels every device runs.
    Never,
}

/// A WebGPU/wgpu device with its queue, limits, pipeline cache and scratch buffers.
pub struct Gpu {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    adapter_name: String,
    backend: String,
    pub(crate) limits: wgpu::Limits,
    features: wgpu::Features,
    /// The largest subgroup size, when subgroup operations are enabled.
    subgroup_max: Option<u32>,
    /// A CPU device (lavapipe, SwiftShader, WARP): SIMD lanes, costly workgroup barriers.
    cpu: bool,
    max_binding: u64,
    pub(crate) kernels: Mutex<HashMap<String, Arc<Kernel>>>,
    pub(crate) uniform: Mutex<Option<wgpu::Buffer>>,
    /// Bind groups of recent steps (see `step::BindKey`).
    pub(crate) bind_groups: Mutex<HashMap<super::step::BindKey, wgpu::BindGroup>>,
    pub(crate) staging: Mutex<Option<wgpu::Buffer>>,
    errors: Arc<Mutex<Vec<String>>>,
    lost: Arc<Mutex<Option<String>>>,
    /// Compute dispatches submitted so far.
    pub(crate) dispatches: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("adapter", &self.adapter_name)
            .field("backend", &self.backend)
            .field("max_binding", &self.max_binding)
            .finish()
    }
}

impl Gpu {
    /// Finds an adapter and opens a device with the largest buffer limits it offers.
    pub async fn new(opts: GpuOptions) -> Result<Self> {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        if cfg!(not(target_arch = "wasm32")) && std::env::var_os("WGPU_BACKEND").is_none() {
            // Vulkan everywhere it exists (lavapipe included); Metal/DX12 where they are native.
            desc.backends = wgpu::Backends::PRIMARY;
        }
        let instance = wgpu::Instance::new(desc);
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: if opts.low_power {
                    wgpu::PowerPreference::LowPower
                } else {
                    wgpu::PowerPreference::HighPerformance
                },
                force_fallback_adapter: false,
                compatible_surface: None,
                apply_limit_buckets: false,
            })
            .await
            .map_err(|e| {
                Error::NoGpu(format!("no WebGPU/Vulkan/Metal/DX12 adapter found ({e})"))
            })?;
        let info = adapter.get_info();
        let limits = adapter.limits();
        // A CPU implementation: by its type, or by name where the browser reports none
        // (Chrome's SwiftShader).
        let lower = info.name.to_lowercase();
        let cpu_device = info.device_type == wgpu::DeviceType::Cpu
            || ["swiftshader", "llvmpipe", "lavapipe", "warp"]
                .iter()
                .any(|n| lower.contains(n));
        // Subgroups, where offered with sizes our 64-wide workgroups hold (every vendor's).
        let wanted = match opts.subgroups {
            Subgroups::Auto => !cpu_device,
            Subgroups::WhenOffered => true,
            Subgroups::Never => false,
        };
        let subgroups = wanted
            && adapter.features().contains(wgpu::Features::SUBGROUP)
            && (4..=64).contains(&info.subgroup_min_size)
            && (info.subgroup_min_size..=64).contains(&info.subgroup_max_size);
        let mut features = adapter.features() & wgpu::Features::SHADER_F16;
        if subgroups {
            features |= wgpu::Features::SUBGROUP;
        }
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("shadowpeft"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::NoGpu(format!("adapter `{}` refused a device: {e}", info.name)))?;
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let msg = match &e {
                wgpu::Error::OutOfMemory { .. } => "out of GPU memory".to_string(),
                wgpu::Error::Validation { description, .. }
                | wgpu::Error::Internal { description, .. } => description.clone(),
            };
            log::error!("wgpu: {msg}");
            if let Ok(mut v) = sink.lock() {
                v.push(msg);
            }
        }));
        let lost = Arc::new(Mutex::new(None));
        let lost_sink = lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            log::error!("wgpu device lost: {reason:?} {msg}");
            if let Ok(mut l) = lost_sink.lock() {
                l.get_or_insert(format!(
                    "{reason:?}{}{msg}",
                    if msg.is_empty() { "" } else { ": " }
                ));
            }
        });
        let device_max = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        let max_binding = opts
            .max_storage_binding
            .map_or(device_max, |m| m.min(device_max))
            .max(256);
        Ok(Gpu {
            device,
            queue,
            adapter_name: info.name,
            backend: format!("{:?}", info.backend),
            limits,
            features,
            subgroup_max: subgroups.then_some(info.subgroup_max_size),
            cpu: opts.cpu_kernels.unwrap_or(cpu_device),
            max_binding,
            kernels: Mutex::new(HashMap::new()),
            uniform: Mutex::new(None),
            bind_groups: Mutex::new(HashMap::new()),
            staging: Mutex::new(None),
            errors,
            lost,
            dispatches: Default::default(),
        })
    }

    /// Compute dispatches submitted on this device so far (a decode step's count is the
    /// difference around it): the cost that dominates small models on CPU devices.
    pub fn dispatch_count(&self) -> u64 {
        self.dispatches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The adapter's name, e.g. "llvmpipe (LLVM 15.0.6, 256 bits)".
    pub fn adapter_name(&self) -> &str {
        &self.adapter_name
    }

    /// The backend in use (Vulkan, Metal, Dx12, BrowserWebGpu, ...).
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// Whether the device offers `shader-f16`.
    pub fn has_f16(&self) -> bool {
        self.features.contains(wgpu::Features::SHADER_F16)
    }

    /// Forgets the cached bind groups, which keep the buffers they bind alive: call after
    /// dropping a model or session so their memory is released at once.
    pub fn release_bindings(&self) {
        self.bind_groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Whether kernels for CPU devices (lavapipe, SwiftShader, WARP) are used here.
    pub fn is_cpu(&self) -> bool {
        self.cpu
    }

    /// The device's largest subgroup size when kernels may use subgroup operations.
    pub fn subgroup_max(&self) -> Option<u32> {
        self.subgroup_max
    }

    /// Whether elements `off..off + len` of a buffer can be bound as one uniform array: the
    /// offset meets the uniform offset alignment and the range fits one uniform binding.
    pub fn uniform_range_ok(&self, off: usize, len: usize) -> bool {
        let align = self.limits.min_uniform_buffer_offset_alignment.max(4) as u64;
        (off as u64 * 4).is_multiple_of(align)
            && len as u64 * 4 <= self.limits.max_uniform_buffer_binding_size
    }

    /// The effective maximum size of one storage binding, in bytes.
    pub fn max_binding(&self) -> u64 {
        self.max_binding
    }

    /// Why the device was lost, once it has been (driver reset, out of memory, destroyed).
    /// Every later call fails; load the model again on a new [`Gpu`].
    pub fn lost_reason(&self) -> Option<String> {
        self.lost.lock().ok().and_then(|l| l.clone())
    }

    /// Destroys the device, as a driver reset would (for testing device-loss handling).
    pub fn destroy(&self) {
        self.device.destroy();
    }

    /// Returns (and clears) any error the device reported since the last check.
    pub(crate) fn take_error(&self) -> Result<()> {
        let lost = || {
            self.lost_reason()
                .map(|r| Err(Error::Gpu(format!("device lost ({r})"))))
        };
        if let Some(e) = lost() {
            return e;
        }
        let mut v = self
            .errors
            .lock()
            .map_err(|_| Error::Gpu("error sink poisoned".into()))?;
        if v.is_empty() {
            Ok(())
        } else {
            let msg = v.join("; ");
            v.clear();
            drop(v);
            // A lost device shows up first as failing calls; its callback runs on the next poll.
            #[cfg(not(target_arch = "wasm32"))]
            let _ = self.device.poll(wgpu::PollType::Poll);
            lost().unwrap_or(Err(Error::Gpu(msg)))
        }
    }

    /// Blocks (native) until submitted work is done; a no-op in the browser, where mapping
    /// callbacks are driven by the event loop.
    pub(crate) fn poll_wait(&self) {
        #[cfg(not(target_arch = "wasm32"))]
        {
            let _ = self.device.poll(wgpu::PollType::wait_indefinitely());
        }
    }
}
