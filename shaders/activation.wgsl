// activation: x[i] <- act(x[i]), in place (the hidden layer of the shadow update networks).
// ACT 0: SiLU, x * sigmoid(x) (official shadow-peft). ACT 1: exact GELU, 0.5 x (1 + erf(x / sqrt 2))
// (Hugging Face peft, torch.nn.GELU()).
// Bindings: 0 Params, 1 x [n] (read_write).
// Dispatch: linear over ceil(n / WG) workgroups. Constants: WG, ACT.

struct Params {
    n: u32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;

// erf(z) for z >= 0 (Abramowitz & Stegun 7.1.26, absolute error below 1.5e-7).
fn erf_pos(z: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.3275911 * z);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    return 1.0 - poly * exp(-z * z);
}

fn gelu(v: f32) -> f32 {
    let z = abs(v) * 0.70710678118654752;
    let e = erf_pos(z);
    // 1 + erf(v / sqrt 2), with erf odd.
    let one_plus = select(1.0 - e, 1.0 + e, v >= 0.0);
    return 0.5 * v * one_plus;
}

@compute @workgroup_size(WG)
fn activation(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = (wg.x + wg.y * nwg.x) * WG + lid.x;
    if (i >= p.n) {
        return;
    }
    let v = x[i];
    if (ACT == 0u) {
        x[i] = v / (1.0 + exp(-v));
    } else {
        x[i] = gelu(v);
    }
}
