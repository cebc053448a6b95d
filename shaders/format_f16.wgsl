// format_f16: the block decoder of f16 weights (see src/gpu/quant.rs), prepended to the
// quantised-weight kernels. A block of 32 values is V = 4 vec4<u32> words; word t holds values
// 2t (low half) and 2t + 1 (high half). No scale. Uses unpack2x16float (core WGSL), so no
// shader-f16 feature is needed.

const V: u32 = 4u;
const SCALED: bool = false;

// The 32 values of one block: element j holds values 4j..4j + 3.
fn unpack_block(d: array<vec4<u32>, V>) -> array<vec4<f32>, 8> {
    var q: array<vec4<f32>, 8>;
    for (var t = 0u; t < V; t++) {
        q[2u * t] = vec4<f32>(unpack2x16float(d[t].x), unpack2x16float(d[t].y));
        q[2u * t + 1u] = vec4<f32>(unpack2x16float(d[t].z), unpack2x16float(d[t].w));
    }
    return q;
}
