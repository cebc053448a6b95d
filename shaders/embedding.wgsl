// embedding: y[m, :] = table[ids[m] - row0, :] for the ids that fall in this row chunk
// [row0, row0 + rows) of the embedding table (tables larger than one binding are chunked).
// Bindings: 0 Params, 1 ids [M] u32, 2 table [rows, dim], 3 y [M, dim].
// Dispatch: linear over ceil(M * dim / WG) workgroups. Constants: WG.

struct Params {
    m: u32,
    dim: u32,
    row0: u32,
    rows: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> table: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(WG)
fn embedding(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let idx = (wg.x + wg.y * nwg.x) * WG + lid.x;
    if (idx >= p.m * p.dim) {
        return;
    }
    let m = idx / p.dim;
    let d = idx % p.dim;
    let id = ids[m];
    if (id >= p.row0 && id < p.row0 + p.rows) {
        y[idx] = table[(id - p.row0) * p.dim + d];
    }
}
