// rope: rotary position embedding, in place, rotate-half (GPT-NeoX / Hugging Face) layout:
//   for i < D/2 at position pos = pos0 + m:
//   x[i]       <- x[i] * cos[pos, i] - x[i + D/2] * sin[pos, i]
//   x[i + D/2] <- x[i + D/2] * cos[pos, i] + x[i] * sin[pos, i]
// Bindings: 0 Params, 1 cos [S, D/2], 2 sin [S, D/2], 3 x [M, heads * D] (read_write).
// Dispatch: linear over ceil(M * heads * D/2 / WG) workgroups. Constants: WG.

struct Params {
    rows: u32,
    heads: u32,
    head_dim: u32,
    pos0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> cos_t: array<f32>;
@group(0) @binding(2) var<storage, read> sin_t: array<f32>;
@group(0) @binding(3) var<storage, read_write> x: array<f32>;

@compute @workgroup_size(WG)
fn rope(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let half = p.head_dim / 2u;
    let idx = (wg.x + wg.y * nwg.x) * WG + lid.x;
    if (idx >= p.rows * p.heads * half) {
        return;
    }
    let i = idx % half;
    let mh = idx / half; // m * heads + h
    let m = mh / p.heads;
    let base = mh * p.head_dim;
    let t = (p.pos0 + m) * half + i;
    let c = cos_t[t];
    let s = sin_t[t];
    let a = x[base + i];
    let b = x[base + i + half];
    x[base + i] = a * c - b * s;
    x[base + i + half] = b * c + a * s;
}
