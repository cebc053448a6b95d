// cattention: grouped-query attention of new queries over a KV cache, for CPU devices
// (lavapipe, SwiftShader): for query row m at position P = row_pos(m),
//   out[m, h, :] = sum_j softmax_j(q[m, h, :] . k[j, g, :] * scale) v[j, g, :],
//   j in [0, P], g = h / GROUP, key j at cache row kv_slot(m, j) (prelude kv_seq or kv_paged).
// f32 throughout; the cache's values are stored as the prelude kv_f32 or kv_f16 says.
// CPU compilers run invocations as SIMD lanes and load storage buffers lane by lane, so each
// cached row is loaded once, as vec4s, for all the query heads of its group, and each value
// loaded from workgroup or storage memory serves as many sums as registers allow: one
// workgroup per (KV head, query row) copies the group's queries into workgroup memory, then
// runs three phases separated by barriers:
//   1. lanes over keys, KP keys a lane per pass (each query value loaded serves KP keys): the
//      group's scaled scores, two heads per pass, into `scores`, and each lane's largest
//      score of each head, into `lane_max`;
//   2. lanes over keys: each head's largest score (over the lanes' largest), then the softmax
//      weights exp(score - largest) of this lane's keys, in place of their scores (one exp per
//      key and head, where an online softmax over the value slices takes two per key, head
//      and slice);
//   3. lanes over vec4 slices of the head dimension, DP slices a lane per pass (each weight
//      and cache row address loaded serves DP slices): the weighted values and the weights'
//      sum, two heads per pass.
// Every sum runs over the keys in order, whatever KP and DP are.
// Bindings: 0 Params, 1 q [M, heads * HD / 4] vec4, 2 k cache [S, kv_heads * HD],
//           3 v cache [S, kv_heads * HD] (both as KvWord4, four values each), 4 scores [R, heads, cap] (scratch),
//           5 out [M, heads * HD / 4] vec4.
// Dispatch: (kv_heads, rows, 1) workgroups for query rows row0 .. row0 + rows (rows <= R).
// Requires HD % 4 == 0 and every row's position below cap.
// Constants: WG, HD (head dim), GROUP = heads / kv_heads.

struct Params {
    pos0: u32,
    row0: u32,
    heads: u32,
    kv_heads: u32,
    cap: u32,
    scale: f32,
    tab0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> kc: array<KvWord4>;
@group(0) @binding(3) var<storage, read> vc: array<KvWord4>;
@group(0) @binding(4) var<storage, read_write> scores: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<vec4<f32>>;

const HD4: u32 = HD / 4u;
// Keys a lane per pass of phase 1; vec4 slices a lane per pass of phase 3.
const KP: u32 = 2u;
const DP: u32 = max(HD4 / WG, 1u);

// The queries of this workgroup's group of heads: [GROUP, HD / 4].
var<workgroup> qs: array<vec4<f32>, GROUP * HD4>;
// Each lane's largest score of each head: [WG, GROUP].
var<workgroup> lane_max: array<f32, WG * GROUP>;

@compute @workgroup_size(WG)
fn cattention(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let g = wg.x;
    let m = p.row0 + wg.y;
    let t = lid.x;
    let group = GROUP;
    let h0 = g * group;
    let row = m * p.heads * HD4;
    for (var i = t; i < group * HD4; i += WG) {
        qs[i] = q[row + h0 * HD4 + i];
    }
    workgroupBarrier();
    // The context length, through arrayLength so that it is not a pure uniform expression:
    // lavapipe re-specialises (recompiles) shaders per dispatch for small uniform loop counts.
    let ctx = min(row_pos(m) + 1u, arrayLength(&scores));
    let sb = wg.y * p.heads * p.cap;
    let kv_row = p.kv_heads * HD4;
    // 1. Scores of the group's heads for this lane's keys, two heads per pass, and this
    // lane's largest of each head.
    var mx = array<f32, GROUP>();
    for (var h = 0u; h < group; h++) {
        mx[h] = -3.0e38;
    }
    for (var j0 = t; j0 < ctx; j0 += WG * KP) {
        var kb: array<u32, KP>;
        for (var c = 0u; c < KP; c++) {
            kb[c] = kv_slot(m, min(j0 + c * WG, ctx - 1u)) * kv_row + g * HD4;
        }
        for (var h = 0u; h < group; h += 2u) {
            let q0 = h * HD4;
            let q1 = min(h + 1u, group - 1u) * HD4;
            var s0 = array<vec4<f32>, KP>();
            var s1 = array<vec4<f32>, KP>();
            for (var d = 0u; d < HD4; d++) {
                let qa = qs[q0 + d];
                let qb = qs[q1 + d];
                for (var c = 0u; c < KP; c++) {
                    let kv = kv_vec4(kc[kb[c] + d]);
                    s0[c] = fma(kv, qa, s0[c]);
                    s1[c] = fma(kv, qb, s1[c]);
                }
            }
            for (var c = 0u; c < KP; c++) {
                let j = j0 + c * WG;
                if (j < ctx) {
                    let e0 = ((s0[c].x + s0[c].y) + (s0[c].z + s0[c].w)) * p.scale;
                    scores[sb + (h0 + h) * p.cap + j] = e0;
                    mx[h] = max(mx[h], e0);
                    if (h + 1u < group) {
                        let e1 = ((s1[c].x + s1[c].y) + (s1[c].z + s1[c].w)) * p.scale;
                        scores[sb + (h0 + h + 1u) * p.cap + j] = e1;
                        mx[h + 1u] = max(mx[h + 1u], e1);
                    }
                }
            }
        }
    }
    for (var h = 0u; h < group; h++) {
        lane_max[t * GROUP + h] = mx[h];
    }
    workgroupBarrier();
    // 2. Softmax weights of this lane's keys, each head's largest score (over every lane's
    // largest) subtracted.
    for (var h = 0u; h < group; h++) {
        for (var l = 0u; l < WG; l++) {
            mx[h] = max(mx[h], lane_max[l * GROUP + h]);
        }
    }
    for (var h = 0u; h < group; h++) {
        let b = sb + (h0 + h) * p.cap;
        for (var j = t; j < ctx; j += WG) {
            // Exponents below -80 are clamped (e^-80 ~ 1.8e-35 still counts as nothing next to
            // e^0 = 1): CPU exp underflows to subnormals, which are slow there.
            scores[b + j] = exp(max(scores[b + j] - mx[h], -80.0));
        }
    }
    storageBarrier();
    // 3. Weighted values and the weights' sum: DP vec4 slices of the head dimension a lane
    // per pass, two heads per pass.
    for (var d0 = t; d0 < HD4; d0 += WG * DP) {
        for (var h = 0u; h < group; h += 2u) {
            let two = h + 1u < group;
            let b0 = sb + (h0 + h) * p.cap;
            let b1 = sb + (h0 + min(h + 1u, group - 1u)) * p.cap;
            var l = vec2<f32>(0.0);
            var o0 = array<vec4<f32>, DP>();
            var o1 = array<vec4<f32>, DP>();
            for (var j = 0u; j < ctx; j++) {
                let e = vec2<f32>(scores[b0 + j], scores[b1 + j]);
                let vb = kv_slot(m, j) * kv_row + g * HD4;
                l += e;
                for (var c = 0u; c < DP; c++) {
                    let vv = kv_vec4(vc[vb + min(d0 + c * WG, HD4 - 1u)]);
                    o0[c] = fma(vec4<f32>(e.x), vv, o0[c]);
                    o1[c] = fma(vec4<f32>(e.y), vv, o1[c]);
                }
            }
            for (var c = 0u; c < DP; c++) {
                let d = d0 + c * WG;
                if (d < HD4) {
                    out[row + (h0 + h) * HD4 + d] = o0[c] / l.x;
                    if (two) {
                        out[row + (h0 + h + 1u) * HD4 + d] = o1[c] / l.y;
                    }
                }
            }
        }
    }
}
