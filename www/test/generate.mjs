// scripts/browser-generate: greedy detached generation in headless Chromium through the npm
// package; prints the same JSON object as `shadowpeft generate --json` (last line of stdout).
// Usage: node test/generate.mjs --model DIR --tokens 1,2,3 [--max-new-tokens N] [--ignore-eos] [--weights f16|q8|q4]

import fs from 'node:fs';
import path from 'node:path';
import { buildPage, dist, gpuAdapter, handler, here, launch, listen, openPage, www } from './harness.mjs';

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
};
const usage = 'usage: browser-generate --model DIR --tokens IDS [--max-new-tokens N] [--ignore-eos] [--weights f16|q8|q4]';
const model = opt('--model');
const tokens = opt('--tokens');
if (!model || !tokens) {
  console.error(usage);
  process.exit(2);
}
const dir = path.resolve(model);
if (!fs.existsSync(path.join(dir, 'config.json'))) {
  console.error(`error: ${dir}: no config.json (expected a model directory)`);
  process.exit(1);
}
const ids = tokens.split(',').map((t) => {
  const n = Number(t.trim());
  if (!Number.isInteger(n) || n < 0) {
    console.error(`error: --tokens: \`${t}\` is not a token id`);
    process.exit(1);
  }
  return n;
});
const n = Number(opt('--max-new-tokens', '64'));

// The test page bundles the package: (re)build it when it is missing or older than its sources.
const built = path.join(dist, 'index.html');
const sources = [
  ...['src', 'pkg'].flatMap((d) => fs.readdirSync(path.join(www, d)).map((f) => path.join(www, d, f))),
  path.join(here, 'main.js'),
  path.join(here, 'index.html'),
];
if (!fs.existsSync(built) || sources.some((f) => fs.statSync(f).mtimeMs > fs.statSync(built).mtimeMs)) await buildPage();
const server = await listen(handler({ cors: true, root: dir }));
const origin = `http://127.0.0.1:${server.address().port}`;
const { context, close } = await launch();
let code = 0;
try {
  const logs = [];
  const page = await openPage(context, origin, logs);
  const r = await page.evaluate(([u, ids, n, ignoreEos, weights]) => window.greedy(u, ids, n, { ignoreEos, weights }), [`${origin}/d/`, ids, n, args.includes('--ignore-eos'), opt('--weights')]);
  console.log(
    JSON.stringify({
      tokens: r.tokens,
      text: r.result.text,
      prompt_tokens: r.result.promptTokens,
      stop_reason: r.result.stopReason,
      mode: 'detached',
      prefill_tok_s: r.result.prefillTokS,
      decode_tok_s: r.result.decodeTokS,
      time_to_first_token_s: r.result.ttftMs / 1000,
      generate_s: r.generateMs / 1000,
      load_s: r.loadMs / 1000,
      weights: r.info.weights,
      bytes: r.info.bytes,
      adapter: r.info.engine.adapter || `${r.info.engine.backend} on ${await gpuAdapter(page)}`,
    }),
  );
} catch (e) {
  console.error(`error: ${e.message || e}`);
  code = 1;
} finally {
  await close();
  server.close();
}
process.exit(code);
