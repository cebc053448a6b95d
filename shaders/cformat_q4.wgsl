// cformat_q4: the int4 block decoder of the CPU decode kernels (cmatvec, cmatvec_glu, cmatmul), prepended
// to them (layout: src/gpu/quant.rs). A block of 32 values is BV = 1 vec4<u32>; u32 t holds
// values 8t..8t + 7, value 8t + i in bits 4i..4i + 3, each as q + 8.
// CPU compilers run one invocation per SIMD lane, so the decode keeps to whole-vector integer
// ops: `word & 0x0F0F0F0F` masked byte by byte gives the word's even values (8t, 8t + 2, 8t + 4,
// 8t + 6) times 1, 2^8, 2^16 and 2^24 (exact as i32 and f32), `(word >> 4) & 0x0F0F0F0F` its
// odd ones; x comes in the same order (EVEN_ODD) and pre-multiplied by the inverse powers (exact
// too); the +8 offset is taken out once per block as 8 * sum(x). cmatvec_common turns x into
// blocks (XBlock: each vec4 reordered and times UNSHIFT, and OFFSET * sum(x)); the kernel defines
// wblock(mat, i) (vec4 word i of weight matrix mat; mat is a constant at every call, so the
// choice folds away).

const BV: u32 = 1u;
const EVEN_ODD: bool = true;
const SCALED: bool = true;
const MASKS = vec4<u32>(0xFFu, 0xFF00u, 0xFF0000u, 0xFF000000u);
const OFFSET: f32 = 8.0;
const UNSHIFT = vec4<f32>(1.0, 0.00390625, 1.52587890625e-05, 5.9604644775390625e-08);

fn nibbles(u: u32) -> vec4<f32> {
    return vec4<f32>(bitcast<vec4<i32>>(vec4<u32>(u) & MASKS));
}

// The 32 values of block `blk` of matrix `mat` as the products take them (q + 8, even values
// of each run of 8 then the odd ones, times powers of 2 that UNSHIFT undoes on x), before the
// block's scale.
fn block_values(mat: u32, blk: u32) -> array<vec4<f32>, 8> {
    let u = wblock(mat, blk);
    return array<vec4<f32>, 8>(
        nibbles(u.x & 0x0F0F0F0Fu), nibbles((u.x >> 4u) & 0x0F0F0F0Fu),
        nibbles(u.y & 0x0F0F0F0Fu), nibbles((u.y >> 4u) & 0x0F0F0F0Fu),
        nibbles(u.z & 0x0F0F0F0Fu), nibbles((u.z >> 4u) & 0x0F0F0F0Fu),
        nibbles(u.w & 0x0F0F0F0Fu), nibbles((u.w >> 4u) & 0x0F0F0F0Fu));
}
