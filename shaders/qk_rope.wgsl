// qk_rope: attention's per-head steps after the joined q/k/v projection, in one dispatch: Qwen3's
// per-head RMSNorm (NORM_Q, NORM_K), then the rotary position embedding in the rotate-half
// (GPT-NeoX / Hugging Face) layout; q goes to its buffer, k straight into the KV cache, and v
// is copied into the cache unchanged.
//   u = NORM ? x * inverseSqrt(mean(x^2) + eps) * w : x     (over one head of D values)
//   for i < D/2 at position pos = pos0 + m:
//   y[i]       = u[i] * cos[pos, i] - u[i + D/2] * sin[pos, i]
//   y[i + D/2] = u[i + D/2] * cos[pos, i] + u[i] * sin[pos, i]
// Bindings: 0 Params, 1 cos [S, D/2], 2 sin [S, D/2], 3 qkv [M, (heads + 2 kv_heads) D] (each
// row q, then k, then v), 4 qw [D], 5 kw [D], 6 q [M, heads, D], 7 k and 8 v
// [.., kv_heads * D] (the caches: row m goes to cache row kv_slot(m, row_pos(m)) of the prelude,
// kv_seq or kv_paged, which also gives its position; values stored as the prelude kv_f32 or
// kv_f16 says, the latter with head_dim % 4 == 0).
// Dispatch: one workgroup per (row, head), q heads, then k heads, then v heads, linear.
// Constants: WG, NORM_Q, NORM_K.

struct Params {
    rows: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    pos0: u32,
    tab0: u32,
    eps: f32,
    _p0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> cos_t: array<f32>;
@group(0) @binding(2) var<storage, read> sin_t: array<f32>;
@group(0) @binding(3) var<storage, read> qkv: array<f32>;
@group(0) @binding(4) var<storage, read> qw: array<f32>;
@group(0) @binding(5) var<storage, read> kw: array<f32>;
@group(0) @binding(6) var<storage, read_write> q: array<f32>;
@group(0) @binding(7) var<storage, read_write> k: array<KvWord>;
@group(0) @binding(8) var<storage, read_write> v: array<KvWord>;

var<workgroup> part: array<f32, WG>;

fn weight(is_k: bool, i: u32) -> f32 {
    if (is_k) {
        return kw[i];
    }
    return qw[i];
}

@compute @workgroup_size(WG)
fn qk_rope(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let g = wg.x + wg.y * nwg.x;
    let per_row = p.heads + 2u * p.kv_heads;
    if (g >= p.rows * per_row) {
        return;
    }
    let m = g / per_row;
    let hh = g - m * per_row;
    let d = p.head_dim;
    // Head hh of row m starts at value hh * d of the row (q heads, k heads, v heads).
    let src = (m * per_row + hh) * d;
    let pos = row_pos(m);
    let kv_off = kv_slot(m, pos) * p.kv_heads * d;
    if (hh >= p.heads + p.kv_heads) {
        let dst = kv_off + (hh - p.heads - p.kv_heads) * d;
        for (var i = lid.x * KV_PER_WORD; i < d; i += WG * KV_PER_WORD) {
            var a: array<f32, KV_PER_WORD>;
            for (var t = 0u; t < KV_PER_WORD; t++) {
                a[t] = qkv[src + i + t];
            }
            v[(dst + i) / KV_PER_WORD] = kv_pack(a);
        }
        return;
    }
    let is_k = hh >= p.heads;
    let nheads = select(p.heads, p.kv_heads, is_k);
    let h = select(hh, hh - p.heads, is_k);
    // q row m, head h; or k head h of the row's cache slot.
    let base = select((m * nheads + h) * d, kv_off + h * d, is_k);
    let norm = select(NORM_Q, NORM_K, is_k) == 1u;
    // Uniform per workgroup: every invocation takes the same branch.
    var inv = 1.0;
    if (norm) {
        var ss = 0.0;
        for (var i = lid.x; i < d; i += WG) {
            let x = qkv[src + i];
            ss = fma(x, x, ss);
        }
        part[lid.x] = ss;
        workgroupBarrier();
        for (var s = WG / 2u; s > 0u; s >>= 1u) {
            if (lid.x < s) {
                part[lid.x] += part[lid.x + s];
            }
            workgroupBarrier();
        }
        inv = inverseSqrt(part[0] / f32(d) + p.eps);
    }
    let half = d / 2u;
    // KV_PER_WORD values of each half a lane (one cache word each).
    for (var i = lid.x * KV_PER_WORD; i < half; i += WG * KV_PER_WORD) {
        var ya: array<f32, KV_PER_WORD>;
        var yb: array<f32, KV_PER_WORD>;
        for (var e = 0u; e < KV_PER_WORD; e++) {
            let ie = i + e;
            var a = qkv[src + ie];
            var b = qkv[src + ie + half];
            if (norm) {
                a = weight(is_k, ie) * (a * inv);
                b = weight(is_k, ie + half) * (b * inv);
            }
            let t = pos * half + ie;
            let c = cos_t[t];
            let s = sin_t[t];
            ya[e] = a * c - b * s;
            yb[e] = b * c + a * s;
        }
        if (is_k) {
            k[(base + i) / KV_PER_WORD] = kv_pack(ya);
            k[(base + i + half) / KV_PER_WORD] = kv_pack(yb);
        } else {
            for (var e = 0u; e < KV_PER_WORD; e++) {
                q[base + i + e] = ya[e];
                q[base + i + e + half] = yb[e];
            }
        }
    }
}
