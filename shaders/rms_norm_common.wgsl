// rms_norm_common: the Params of the two RMSNorm kernels (rms_norm: a workgroup per row;
// crms_norm: a row per invocation, for CPU devices), prepended to each; mirrors
// ops::rms_norm::Params.

struct Params {
    rows: u32,
    dim: u32,
    eps: f32,
    x_off: u32,
    y_off: u32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
