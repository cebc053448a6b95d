// format_q4: the block decoder of int4 weights (see src/gpu/quant.rs), prepended to the
// quantised-weight kernels. A block of 32 values is V = 1 vec4<u32> word; byte i of word t
// holds value 8t + i in its low nibble and 8t + 4 + i in its high nibble, each stored as
// q + 8. The caller multiplies by the block's scale (SCALED).

const V: u32 = 1u;
const SCALED: bool = true;

fn low4(w: u32) -> vec4<f32> {
    return vec4<f32>(vec4<u32>(w, w >> 8u, w >> 16u, w >> 24u) & vec4<u32>(15u)) - 8.0;
}

fn high4(w: u32) -> vec4<f32> {
    return vec4<f32>(vec4<u32>(w >> 4u, w >> 12u, w >> 20u, w >> 28u) & vec4<u32>(15u)) - 8.0;
}

// The 32 unscaled values of one block: element j holds values 4j..4j + 3.
fn unpack_block(d: array<vec4<u32>, V>) -> array<vec4<f32>, 8> {
    let w = d[0];
    return array<vec4<f32>, 8>(
        low4(w.x), high4(w.x), low4(w.y), high4(w.y),
        low4(w.z), high4(w.z), low4(w.w), high4(w.w),
    );
}
