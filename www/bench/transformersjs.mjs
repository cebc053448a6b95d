// scripts/browser-transformersjs: greedy generation with transformers.js (onnxruntime-web,
// WebGPU execution provider or wasm CPU backend) in headless Chromium, from an ONNX export served on localhost;
// prints one JSON object (last line of stdout) with the fields of `shadowpeft generate --json`
// that the benchmark reads.
// Usage: node bench/transformersjs.mjs --npm NODE_MODULES --model DIR --tokens 1,2,3
//          [--max-new-tokens N] [--ignore-eos] [--device webgpu|wasm] [--dtype fp32|q8|q4]

import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { gpuAdapter, launch, listen, serveFile } from '../test/harness.mjs';

const page = path.join(path.dirname(fileURLToPath(import.meta.url)), 'transformersjs');
const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
};
const npm = opt('--npm');
const model = opt('--model');
const tokens = opt('--tokens');
if (!npm || !model || !tokens) {
  console.error('usage: browser-transformersjs --model DIR --tokens IDS [--max-new-tokens N] [--ignore-eos] [--device webgpu|wasm] [--dtype fp32|q8|q4]');
  process.exit(2);
}
const dirs = { '/npm/': path.resolve(npm), '/model/': path.resolve(model), '/': page };
if (!fs.existsSync(path.join(dirs['/model/'], 'onnx', 'model.onnx'))) {
  console.error(`error: ${dirs['/model/']}: no onnx/model.onnx (expected an ONNX model directory)`);
  process.exit(1);
}
const ids = tokens.split(',').map(Number);
const n = Number(opt('--max-new-tokens', '64'));

// The page, the packages and the model, each from its own directory.
const server = await listen((req, res) => {
  const p = decodeURIComponent(new URL(req.url, 'http://x').pathname);
  const [prefix, root] = Object.entries(dirs).find(([k]) => p.startsWith(k));
  const f = path.join(root, path.normalize(p.slice(prefix.length) || 'index.html'));
  // Cross-origin isolated, so that the wasm backend may use threads (SharedArrayBuffer).
  res.setHeader('cross-origin-opener-policy', 'same-origin');
  res.setHeader('cross-origin-embedder-policy', 'require-corp');
  serveFile(res, f.startsWith(root) ? f : '/nonexistent');
});
const device = opt('--device', 'webgpu');
const dtype = opt('--dtype', 'fp32');
const origin = `http://127.0.0.1:${server.address().port}`;
const { context, close } = await launch();
const logs = [];
let code = 0;
try {
  const tab = await context.newPage();
  tab.on('console', (m) => logs.push(`[${m.type()}] ${m.text()}`));
  tab.on('pageerror', (e) => logs.push(`[pageerror] ${e}`));
  tab.on('response', (r) => r.status() >= 400 && logs.push(`[http ${r.status()}] ${r.url()}`));
  await tab.goto(`${origin}/`);
  await tab.waitForFunction(() => window.pageReady === true);
  // An error transformers.js throws outside the awaited promise (a missing model file) would
  // leave the evaluation waiting forever: it ends the run instead.
  const failed = new Promise((_, reject) => tab.on('pageerror', (e) => reject(e)));
  const r = await Promise.race([
    tab.evaluate(([ids, n, ignoreEos, device, dtype]) => window.generate(ids, n, { ignoreEos, device, dtype }), [ids, n, args.includes('--ignore-eos'), device, dtype]),
    failed,
  ]);
  console.log(
    JSON.stringify({
      tokens: r.tokens,
      prompt_tokens: ids.length,
      prefill_tok_s: ids.length / (r.ttftMs / 1000),
      time_to_first_token_s: r.ttftMs / 1000,
      generate_s: r.generateMs / 1000,
      load_s: r.loadMs / 1000,
      adapter:
        device === 'wasm'
          ? `onnxruntime-web ${r.ortVersion}, wasm ${dtype}, ${r.threads} thread(s)${r.isolated ? '' : ' (not cross-origin isolated)'}`
          : `onnxruntime-web ${r.ortVersion}, WebGPU EP on ${await gpuAdapter(tab)}`,
    }),
  );
} catch (e) {
  console.error(`error: ${e.message || e}\n${logs.slice(-20).join('\n')}`);
  code = 1;
} finally {
  await close();
  server.close();
}
process.exit(code);
