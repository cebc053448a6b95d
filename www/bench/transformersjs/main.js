// The page scripts/browser-transformersjs drives: transformers.js (onnxruntime-web with its
// WebGPU execution provider, or its wasm CPU backend) loads the ONNX model served at /model/
// from this origin only and generates greedily from token ids.
import { AutoModelForCausalLM, Tensor, env } from '@huggingface/transformers';

env.allowRemoteModels = false;
env.allowLocalModels = true;
env.localModelPath = `${location.origin}/`;
env.useBrowserCache = false;
// onnxruntime-web's WebGPU build, from this origin rather than its default CDN.
const ortDist = `${location.origin}/npm/onnxruntime-web/dist/`;
env.backends.onnx.wasm.wasmPaths = {
  mjs: `${ortDist}ort-wasm-simd-threaded.asyncify.mjs`,
  wasm: `${ortDist}ort-wasm-simd-threaded.asyncify.wasm`,
};

/** Loads the model (`device` 'webgpu' or 'wasm'; `dtype` 'fp32', 'q8' or 'q4'), generates up
 * to `n` tokens greedily after `ids` (exactly `n` with `ignoreEos`: EOS is then suppressed),
 * returns the tokens and timings. */
window.generate = async (ids, n, { ignoreEos = false, device = 'webgpu', dtype = 'fp32' } = {}) => {
  // The wasm backend's threads (SharedArrayBuffer: the server isolates the page), one a core.
  env.backends.onnx.wasm.numThreads = navigator.hardwareConcurrency || 1;
  const t0 = performance.now();
  const model = await AutoModelForCausalLM.from_pretrained('model', { device, dtype });
  const tLoaded = performance.now();
  const session = model.sessions.model;
  // The session ran on WebGPU only if onnxruntime-web made a GPU device for it: with
  // executionProviders ['webgpu'] a failed WebGPU start is an error, not a silent CPU run.
  if (device === 'webgpu' && (session.config.device !== 'webgpu' || !env.backends.onnx.webgpu.device)) {
    throw new Error(`no WebGPU device (session on ${session.config.device})`);
  }
  const input_ids = new Tensor('int64', BigInt64Array.from(ids, BigInt), [1, ids.length]);
  const attention_mask = new Tensor('int64', new BigInt64Array(ids.length).fill(1n), [1, ids.length]);
  // generate() puts the prompt into the streamer first, then each new token.
  let puts = 0;
  let tFirst = null;
  const streamer = {
    put() {
      if (++puts === 2) tFirst = performance.now();
    },
    end() {},
  };
  const tStart = performance.now();
  const out = await model.generate({ input_ids, attention_mask, max_new_tokens: n, min_new_tokens: ignoreEos ? n : 0, do_sample: false, streamer });
  const tEnd = performance.now();
  const tokens = Array.from(out.data.slice(ids.length), Number);
  await model.dispose();
  return {
    tokens,
    loadMs: tLoaded - t0,
    ttftMs: tFirst - tStart,
    generateMs: tEnd - tStart,
    ortVersion: env.backends.onnx.versions?.web,
    threads: device === 'wasm' ? env.backends.onnx.wasm.numThreads : null,
    isolated: globalThis.crossOriginIsolated === true,
  };
};

document.getElementById('status').textContent = 'ready';
window.pageReady = true;
