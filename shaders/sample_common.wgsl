// Shared by the sampling kernels (sample_penalize, sample_topk, sample_pick): their uniform
// and the order they sort logits in.
//
// Candidates are (key, index) pairs. key_of maps an f32 to a u32 whose unsigned order is the
// IEEE total order of the floats (as Rust's f32::total_cmp), so sorting by key descending and
// then by index ascending gives exactly the host sampler's order.

struct Params {
    // topk: entries of its input; pick: candidates available (<= KC).
    n: u32,
    // Offset of the row in the logits buffer.
    x_off: u32,
    // Candidates kept by top-k (1..=KC), or 0: no top-k filter (the whole row counts).
    top_k: u32,
    // topk: 0 reads the logits row, 1 reads candidate pairs. pick: number of chunk partials.
    aux: u32,
    temperature: f32,
    top_p: f32,
    // Uniform draw in [0, 1).
    draw: f32,
    penalty: f32,
}

@group(0) @binding(0) var<uniform> p: Params;

const NONE: u32 = 0xffffffffu;

fn key_of(v: f32) -> u32 {
    let b = bitcast<u32>(v);
    return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

fn value_of(k: u32) -> f32 {
    return bitcast<f32>(select(~k, k & 0x7fffffffu, (k & 0x80000000u) != 0u));
}

// Whether candidate (ka, ia) comes before (kb, ib): larger value first, then lower index.
fn before(ka: u32, ia: u32, kb: u32, ib: u32) -> bool {
    return ka > kb || (ka == kb && ia < ib);
}
