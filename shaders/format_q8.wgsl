// format_q8: the block decoder of int8 weights (see src/gpu/quant.rs), prepended to the
// quantised-weight kernels. A block of 32 values is V = 2 vec4<u32> words; word t holds
// values 4t..4t + 3 as signed bytes, low byte first. The caller multiplies by the block's
// scale (SCALED).

const V: u32 = 2u;
const SCALED: bool = true;

fn bytes4(w: u32) -> vec4<f32> {
    let i = bitcast<i32>(w);
    return vec4<f32>(vec4<i32>((i << 24u) >> 24u, (i << 16u) >> 24u, (i << 8u) >> 24u, i >> 24u));
}

// The 32 unscaled values of one block: element j holds values 4j..4j + 3.
fn unpack_block(d: array<vec4<u32>, V>) -> array<vec4<f32>, 8> {
    var q: array<vec4<f32>, 8>;
    for (var t = 0u; t < V; t++) {
        q[4u * t] = bytes4(d[t].x);
        q[4u * t + 1u] = bytes4(d[t].y);
        q[4u * t + 2u] = bytes4(d[t].z);
        q[4u * t + 3u] = bytes4(d[t].w);
    }
    return q;
}
