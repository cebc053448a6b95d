// format_f16: the decoder of f16 weights (layout: src/gpu/quant.rs), prepended to the
// blocked-weight kernels. A block of 32 values is V = 4 vec4<u32> words of XPW = 2 vec4 of
// values each; u32 t of a word holds values 2t (low half) and 2t + 1 (high half). No scale.
// unpack2x16float is core WGSL: no shader-f16 feature is needed.

const V: u32 = 4u;
const XPW: u32 = 2u;
const SCALED: bool = false;

// Values 4j..4j + 3 of word `u` (j < XPW).
fn word_values(u: vec4<u32>, j: u32) -> vec4<f32> {
    return vec4<f32>(unpack2x16float(u[2u * j]), unpack2x16float(u[2u * j + 1u]));
}
