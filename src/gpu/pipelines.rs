//! Compute pipelines, compiled once and cached by kernel name + injected constants + preludes.
//!
//! A kernel is a real `.wgsl` file from `shaders/`; its compile-time constants (workgroup size,
//! head dimension, ...) are prepended as `const NAME: u32 = V;` lines by [`KernelSpec`], never
//! spliced into the shader text, and so are its prelude files (shared declarations, a weight
//! format's decoder) when it has any.

use std::sync::Arc;

use super::Gpu;

/// A kernel to compile: the WGSL file (its name is the entry point and the label) plus the
/// constants it expects.
#[derive(Debug, Clone)]
pub struct KernelSpec {
    name: &'static str,
    source: &'static str,
    consts: Vec<(&'static str, u32)>,
    preludes: Vec<(&'static str, &'static str)>,
}

impl KernelSpec {
    /// A kernel whose entry point is `name`.
    pub fn new(name: &'static str, source: &'static str) -> Self {
        KernelSpec {
            name,
            source,
            consts: Vec::new(),
            preludes: Vec::new(),
        }
    }

    /// Adds a `const NAME: u32 = value;` line.
    pub fn with(mut self, name: &'static str, value: u32) -> Self {
        self.consts.push((name, value));
        self
    }

    /// Prepends another WGSL file (`name`, `source`) that defines what this kernel leaves
    /// open: the declarations a kernel family shares, or the weight-format decoder of the
    /// quantised-weight kernels. Preludes are rendered in the order they are added.
    pub fn prelude(mut self, name: &'static str, source: &'static str) -> Self {
        self.preludes.push((name, source));
        self
    }

    fn key(&self) -> String {
        let mut k = self.name.to_string();
        for (n, _) in &self.preludes {
            k.push_str(&format!("<{n}"));
        }
        for (n, v) in &self.consts {
            k.push_str(&format!(":{n}={v}"));
        }
        k
    }

    fn render(&self) -> String {
        let mut s = String::new();
        for (n, v) in &self.consts {
            s.push_str(&format!("const {n}: u32 = {v}u;\n"));
        }
        for (_, src) in &self.preludes {
            s.push_str(src);
            s.push('\n');
        }
        s.push_str(self.source);
        s
    }
}

/// A compiled compute pipeline and its bind group layout (group 0).
#[derive(Debug)]
pub struct Kernel {
    pub(crate) name: &'static str,
    pub(crate) pipeline: wgpu::ComputePipeline,
    pub(crate) layout: wgpu::BindGroupLayout,
}

impl Gpu {
    /// How many pipelines of the kernel `name` (with any constants and preludes) are compiled:
    /// how a test tells that a path compiles nothing new.
    pub fn compiled(&self, name: &str) -> usize {
        let cache = self.kernels.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .keys()
            .filter(|k| k.split(['<', ':']).next() == Some(name))
            .count()
    }

    /// Returns the cached pipeline for `spec`, compiling it on first use.
    pub fn kernel(&self, spec: &KernelSpec) -> Arc<Kernel> {
        let key = spec.key();
        // A poisoned lock only means another thread panicked mid-insert; the map is still valid.
        let mut cache = self.kernels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = cache.get(&key) {
            return k.clone();
        }
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(spec.name),
                source: wgpu::ShaderSource::Wgsl(spec.render().into()),
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(spec.name),
                layout: None,
                module: &module,
                entry_point: Some(spec.name),
                compilation_options: Default::default(),
                cache: None,
            });
        let layout = pipeline.get_bind_group_layout(0);
        let k = Arc::new(Kernel {
            name: spec.name,
            pipeline,
            layout,
        });
        cache.insert(key, k.clone());
        k
    }
}
