// Browser tests: the npm package in headless Chromium (WebGPU on SwiftShader), driven by
// playwright-core. Builds the test page with Vite, serves it and the fixtures on localhost,
// and checks token identity against the official golden outputs and the native engine,
// progress events, the offline second load, abort, chat completions and the error paths.
//
// Usage: node test/run.mjs [--native BIN] [--only NAME]   (from www/, after scripts/build-wasm)

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { FIXTURES as ALL, buildDemo, buildPage, demoHandler, dist, faults, here, handler, launch, listen, openPage, readSafetensors, repo, requests, startServe, stats, www } from './harness.mjs';

const args = process.argv.slice(2);
const opt = (name) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const nativeBin = opt('--native');
const only = opt('--only');
const FIXTURES = ALL.filter((f) => !only || f.name === only);

// ---- test harness -------------------------------------------------------------------------
let failures = 0;
const results = [];
async function test(name, fn) {
  const t0 = Date.now();
  try {
    const note = await fn();
    results.push({ name, ok: true, ms: Date.now() - t0, note });
    console.log(`ok   ${name} (${Date.now() - t0} ms)${note ? ` ${note}` : ''}`);
  } catch (e) {
    failures++;
    results.push({ name, ok: false, error: String(e && e.stack ? e.stack : e) });
    console.log(`FAIL ${name}: ${e && e.stack ? e.stack : e}`);
  }
}
function assert(c, msg) {
  if (!c) throw new Error(msg);
}
function same(a, b, msg) {
  assert(JSON.stringify(a) === JSON.stringify(b), `${msg}: got ${JSON.stringify(a)}, want ${JSON.stringify(b)}`);
}

function nativeTokens(dir, ids, n, extra = []) {
  if (!nativeBin) return null;
  const r = spawnSync(nativeBin, ['generate', '--model', path.join(repo, dir, 'export'), '--tokens', ids.join(','), '--max-new-tokens', String(n), '--ignore-eos', '--json', ...extra], {
    encoding: 'utf8',
    env: { ...process.env, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR || '/tmp' },
  });
  if (r.status !== 0) throw new Error(`native engine failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()).tokens;
}

/** A fresh native `generate --tokens` (EOS stops it): { tokens, text }, or null without --native. */
function nativeGenerate(model, ids, n) {
  if (!nativeBin) return null;
  const r = spawnSync(nativeBin, ['generate', ...model, '--tokens', ids.join(','), '--max-new-tokens', String(n), '--json'], {
    encoding: 'utf8',
    env: { ...process.env, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR || '/tmp' },
  });
  if (r.status !== 0) throw new Error(`native engine failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop());
}

/** `shadowpeft serve` (the native binary) for a fixture's base on a free loopback port. */
const startBackbone = (base, extra = []) => startServe(nativeBin, base, extra);

/** A token's string in a tokenizer.json vocabulary (what `tokenId` looks up). */
function tokenString(dir, id) {
  const t = JSON.parse(fs.readFileSync(path.join(repo, dir, 'tokenizer.json'), 'utf8'));
  const added = (t.added_tokens || []).find((a) => a.id === id);
  if (added) return added.content;
  return Object.entries(t.model.vocab).find(([, v]) => v === id)[0];
}

async function main() {
  await buildPage();
  // Packed models (`shadowpeft pack` output) are written here and served at /d/.
  const packRoot = fs.mkdtempSync(path.join(process.env.TMPDIR || '/tmp', 'shadowpeft-packed-'));
  const server = await listen(handler({ cors: true, root: packRoot }));
  const other = await listen(handler({ cors: false }));
  const origin = `http://127.0.0.1:${server.address().port}`;
  const foreign = `http://localhost:${other.address().port}`;
  const { context, close } = await launch();
  const logs = [];
  const page = await openPage(context, origin, logs);
  const summary = { fixtures: {} };

  try {
    for (const f of FIXTURES) {
      await test(`${f.name}: greedy tokens equal the official golden and the native engine`, async () => {
        const g = readSafetensors(path.join(repo, f.dir, 'golden.safetensors'));
        const n = g.greedy_export.length;
        const r = await page.evaluate(([u, ids, n]) => window.greedy(u, ids, n), [`${origin}/m/${f.dir}/export/`, g.input_ids, n]);
        same(r.tokens, g.greedy_export, 'browser vs golden');
        const nat = nativeTokens(f.dir, g.input_ids, n);
        if (nat) same(r.tokens, nat, 'browser vs native');
        summary.fixtures[f.name] = { identical: true, native: !!nat, decodeTokS: r.result.decodeTokS, prefillTokS: r.result.prefillTokS, loadMs: r.loadMs, ttftMs: r.firstTokenMs };
        return `decode ${r.result.decodeTokS.toFixed(1)} tok/s, first token ${r.firstTokenMs.toFixed(0)} ms after load() began`;
      });
    }

    const tiny = readSafetensors(path.join(repo, 'models/tiny/golden.safetensors'));
    const tinyUrl = `${origin}/m/models/tiny/export/`;

    await test('main-thread mode and split tensors give the same tokens', async () => {
      const r = await page.evaluate(([u, ids]) => window.greedy(u, ids, 12, { worker: false, maxBinding: 64 * 1024 }), [tinyUrl, tiny.input_ids]);
      same(r.tokens, tiny.greedy_export, 'main thread, 64 KiB bindings');
    });

    await test('f16, int8 and int4 weights (weights option) give the native engine\'s tokens', async () => {
      const out = [];
      for (const weights of ['f16', 'q8', 'q4']) {
        const r = await page.evaluate(([u, ids, w]) => window.greedy(u, ids, 12, { weights: w }), [tinyUrl, tiny.input_ids, weights]);
        same(r.info.weights, weights, 'info.weights');
        const nat = nativeTokens('models/tiny', tiny.input_ids, 12, ['--weights', weights]);
        if (nat) same(r.tokens, nat, `${weights}: browser vs native`);
        if (weights === 'f16') same(r.tokens, tiny.greedy_export, 'f16 vs the f32 golden');
        out.push(`${weights} ${r.result.decodeTokS.toFixed(1)} tok/s`);
      }
      const bad = await page.evaluate((u) => window.expectError(() => window.sp.ShadowModel.load(u, { weights: 'int3', cache: false })), tinyUrl);
      assert(bad && /unknown format `int3`/.test(bad.message), `bad weights option: ${JSON.stringify(bad)}`);
      return out.join(', ');
    });

    await test('sampling on the GPU (temperature, top-k, top-p, repetition penalty) gives the native engine\'s tokens for a seed', async () => {
      const cases = [
        [{ temperature: 0.8, topK: 20, seed: 3 }, ['--temperature', '0.8', '--top-k', '20', '--seed', '3']],
        [{ temperature: 1.2, topP: 0.9, repetitionPenalty: 1.3, seed: 4 }, ['--temperature', '1.2', '--top-p', '0.9', '--repetition-penalty', '1.3', '--seed', '4']],
      ];
      for (const [sampling, flags] of cases) {
        const r = await page.evaluate(([u, ids, s]) => window.greedy(u, ids, 16, { sampling: s }), [tinyUrl, tiny.input_ids, sampling]);
        assert(r.tokens.length === 16, `${JSON.stringify(sampling)}: ${r.tokens.length} tokens`);
        assert(JSON.stringify(r.tokens.slice(0, tiny.greedy_export.length)) !== JSON.stringify(tiny.greedy_export), `${JSON.stringify(sampling)}: sampled tokens equal the greedy ones`);
        const nat = nativeTokens('models/tiny', tiny.input_ids, 16, flags);
        if (nat) same(r.tokens, nat, `${JSON.stringify(sampling)}: browser vs native`);
      }
    });

    await test('progress events count every byte, in order', async () => {
      const r = await page.evaluate(([u, ids]) => window.greedy(u, ids, 1, { worker: true }), [`${origin}/m/tests/fixtures/qwen2_gqa/export/`, [1, 2, 3]]);
      const dl = r.events.filter((e) => e.phase === 'download');
      const dir = path.join(repo, 'tests/fixtures/qwen2_gqa/export');
      const onDisk = fs.readdirSync(dir).reduce((n, f) => n + fs.statSync(path.join(dir, f)).size, 0);
      assert(dl.length > 0, 'no download events');
      for (let i = 1; i < dl.length; i++) assert(dl[i].overallLoaded >= dl[i - 1].overallLoaded, 'overallLoaded went backwards');
      const last = dl[dl.length - 1];
      same([last.overallLoaded, last.overallTotal], [onDisk, onDisk], 'bytes loaded / total vs the files on disk');
      same(r.events.map((e) => e.phase).filter((p) => p !== 'download'), ['upload', 'ready'], 'phases');
    });

    await test('second load works offline from Cache Storage', async () => {
      const url = `${origin}/m/tests/fixtures/llama/export/`;
      const g = readSafetensors(path.join(repo, 'tests/fixtures/llama/golden.safetensors'));
      await page.evaluate(() => window.sp.clearCache());
      const first = await page.evaluate(([u, ids]) => window.greedy(u, ids, 12), [url, g.input_ids]);
      assert(!first.info.fromCache, 'first load should come from the network');
      requests.length = 0;
      await context.setOffline(true);
      try {
        const second = await page.evaluate(([u, ids]) => window.greedy(u, ids, 12), [url, g.input_ids]);
        assert(second.info.fromCache, 'second load should come from the cache');
        same(second.tokens, g.greedy_export, 'offline tokens');
        same(requests.filter((r) => r.startsWith('/m/')), [], 'model requests while offline');
        const err = await page.evaluate((u) => window.expectError(() => window.sp.ShadowModel.load(u, { cache: false })), url);
        same(err && err.code, 'network', 'offline load without cache');
      } finally {
        await context.setOffline(false);
      }
    });

    if (nativeBin) {
      await test('packed models: shards in parallel (at most 4), checked, cached one by one; an interrupted load resumes; a corrupt shard is refused and not kept; offline from the cache', async () => {
        const dir = path.join(packRoot, 'tiny-q4');
        const r = spawnSync(nativeBin, ['pack', '--model', path.join(repo, 'models/tiny/export'), '--weights', 'q4', '--out', dir, '--shard-size', '24K'], { encoding: 'utf8' });
        if (r.status !== 0) throw new Error(`pack failed: ${r.stderr}`);
        const index = JSON.parse(fs.readFileSync(path.join(dir, 'model.safetensors.index.json'), 'utf8'));
        const shards = Object.keys(index.metadata.shards).sort();
        assert(shards.length >= 6, `${shards.length} shards`);
        const onDisk = fs.readdirSync(dir).reduce((n, f) => n + fs.statSync(path.join(dir, f)).size, 0);
        const url = `${origin}/d/tiny-q4/`;
        const want = nativeTokens('models/tiny', tiny.input_ids, 12, ['--weights', 'q4']);
        const shardRequests = () => requests.filter((q) => q.startsWith('/d/tiny-q4/') && q.endsWith('.safetensors')).map((q) => path.basename(q)).sort();
        const cachedShards = () =>
          page.evaluate(async ([u, names, cacheName]) => {
            const c = await caches.open(cacheName);
            const out = [];
            for (const n of names) if (await c.match(u + n)) out.push(n);
            return out;
          }, [url, shards, 'shadowpeft-web-v1']);
        const notes = [];

        // 1. A first load: every shard fetched, at most 4 at a time (each held back a little so
        // that they overlap), the q4 blocks uploaded as stored, the native tokens.
        await page.evaluate(() => window.sp.clearCache());
        for (const f of shards) faults.delayMs[f] = 150;
        stats.maxInFlight = 0;
        requests.length = 0;
        const first = await page.evaluate(([u, ids]) => window.greedy(u, ids, 12), [url, tiny.input_ids]);
        same(first.info.weights, 'q4', 'a packed q4 model loads as q4');
        same(first.tokens, want, 'packed q4 in the browser vs q4 quantised on load by the native engine');
        same(shardRequests(), shards, 'shards fetched');
        assert(stats.maxInFlight > 1 && stats.maxInFlight <= 4, `shards in flight at once: ${stats.maxInFlight}`);
        const dl = first.events.filter((e) => e.phase === 'download');
        for (let i = 1; i < dl.length; i++) assert(dl[i].overallLoaded >= dl[i - 1].overallLoaded, 'overallLoaded went backwards');
        same([dl[dl.length - 1].overallLoaded, dl[0].overallTotal], [onDisk, onDisk], 'bytes loaded / total (known from the first event) vs the files on disk');
        same(await cachedShards(), shards, 'every shard cached');
        notes.push(`${shards.length} shards, ${stats.maxInFlight} in flight at most, ${onDisk} bytes`);
        for (const f of shards) delete faults.delayMs[f];

        // 2. Interrupted: the last shard's connection drops half-way, late, after the others
        // completed. The load fails; the next one fetches only what the cache lacks.
        await page.evaluate(() => window.sp.clearCache());
        const last = shards[shards.length - 1];
        faults.cut.add(last);
        faults.delayMs[last] = 400;
        const cut = await page.evaluate((u) => window.expectError(() => window.sp.ShadowModel.load(u)), url);
        faults.cut.delete(last);
        delete faults.delayMs[last];
        same(cut && cut.code, 'network', `interrupted load: ${JSON.stringify(cut)}`);
        const kept = await cachedShards();
        assert(!kept.includes(last), 'the interrupted shard is not cached');
        assert(kept.length >= 1, 'shards completed before the interruption are cached');
        requests.length = 0;
        const resumed = await page.evaluate(([u, ids]) => window.greedy(u, ids, 12), [url, tiny.input_ids]);
        same(resumed.tokens, want, 'tokens after resuming');
        same(shardRequests(), shards.filter((f) => !kept.includes(f)), 'shards fetched when resuming: only the missing ones');
        notes.push(`resumed with ${shards.length - kept.length} of ${shards.length} shards`);

        // 3. A corrupt shard (its last byte changed: the header parses, the sha256 differs).
        await page.evaluate(() => window.sp.clearCache());
        const bad = shards[1];
        faults.flip.add(bad);
        const err = await page.evaluate((u) => window.expectError(() => window.sp.ShadowModel.load(u)), url);
        faults.flip.delete(bad);
        same(err && err.code, 'invalid-model', `corrupt shard: ${JSON.stringify(err)}`);
        assert(err.message.includes(bad) && err.message.includes('sha256'), `the message names the shard and its hash: ${err.message}`);
        assert(!(await cachedShards()).includes(bad), 'the corrupt shard is not cached');
        const again = await page.evaluate(([u, ids]) => window.greedy(u, ids, 12), [url, tiny.input_ids]);
        same(again.tokens, want, 'tokens after the corrupt shard is fetched again');

        // 4. Offline, the second load comes from the cache.
        requests.length = 0;
        await context.setOffline(true);
        try {
          const offline = await page.evaluate(([u, ids]) => window.greedy(u, ids, 12), [url, tiny.input_ids]);
          assert(offline.info.fromCache, 'the offline load comes from the cache');
          same(offline.tokens, want, 'offline tokens');
          same(requests.filter((q) => q.startsWith('/d/')), [], 'model requests while offline');
        } finally {
          await context.setOffline(false);
        }
        return notes.join('; ');
      });
    }

    await test('a full storage quota is a warning: the model loads uncached', async () => {
      const r = await page.evaluate(async (u) => {
        await window.sp.clearCache();
        const put = Cache.prototype.put;
        Cache.prototype.put = () => Promise.reject(new DOMException('quota', 'QuotaExceededError'));
        const events = [];
        try {
          const m = await window.sp.ShadowModel.load(u, { worker: false, onProgress: (p) => events.push(p) });
          const n = (await m.generate([1, 2], { maxNewTokens: 2, ignoreEos: true }).done).tokens.length;
          await m.dispose();
          return { n, warnings: events.filter((e) => e.phase === 'warning').map((e) => e.code) };
        } finally {
          Cache.prototype.put = put;
        }
      }, tinyUrl);
      same(r.n, 2, 'tokens');
      assert(r.warnings.length > 0 && r.warnings.every((c) => c === 'quota'), `warnings: ${r.warnings}`);
    });

    await test('abort stops a generation between tokens and a load before it finishes', async () => {
      const r = await page.evaluate(async (u) => {
        const m = await window.sp.ShadowModel.load(u);
        const ac = new AbortController();
        let n = 0;
        let err = null;
        try {
          for await (const t of m.generate([1, 2, 3], { maxNewTokens: 400, ignoreEos: true, signal: ac.signal })) {
            if (++n === 3) ac.abort();
          }
        } catch (e) {
          err = { name: e.name, code: e.code };
        }
        // The model stays usable after an abort.
        const again = [];
        for await (const t of m.generate([1, 2, 3], { maxNewTokens: 2, ignoreEos: true })) again.push(t.token);
        await m.dispose();
        const ac2 = new AbortController();
        const p = window.sp.ShadowModel.load(u, { signal: ac2.signal, cache: false });
        ac2.abort();
        let loadErr = null;
        try {
          await p;
        } catch (e) {
          loadErr = { name: e.name, code: e.code };
        }
        return { n, err, again: again.length, loadErr };
      }, tinyUrl);
      same(r.err, { name: 'AbortError', code: 'aborted' }, 'generation abort');
      assert(r.n >= 3 && r.n < 20, `aborted after ${r.n} tokens`);
      same(r.again, 2, 'tokens after the abort');
      same(r.loadErr, { name: 'AbortError', code: 'aborted' }, 'load abort');
    });

    await test('chat.completions.create (stream and not) follows the OpenAI shapes', async () => {
      const r = await page.evaluate(async (u) => {
        const m = await window.sp.ShadowModel.load(u);
        const messages = [{ role: 'user', content: 'Hello' }];
        const full = await m.chat.completions.create({ messages, max_tokens: 5, seed: 1 });
        const chunks = [];
        for await (const c of await m.chat.completions.create({ messages, max_tokens: 5, seed: 1, stream: true })) chunks.push(c);
        await m.dispose();
        return { full, chunks };
      }, tinyUrl);
      same(r.full.object, 'chat.completion', 'object');
      same(r.full.choices[0].message.role, 'assistant', 'role');
      assert(r.full.usage.completion_tokens <= 5 && r.full.usage.completion_tokens > 0, 'usage');
      const streamed = r.chunks.map((c) => c.choices[0].delta.content || '').join('');
      same(streamed, r.full.choices[0].message.content, 'streamed text = full text');
      same(r.chunks[r.chunks.length - 1].choices[0].finish_reason, r.full.choices[0].finish_reason, 'finish_reason');
    });

    await test('a lost device is reported and the model can be loaded again', async () => {
      const r = await page.evaluate(async (u) => {
        let reported = null;
        const m = await window.sp.ShadowModel.load(u, { onDeviceLost: (e) => (reported = e.code) });
        await m._debugLoseDevice();
        const err = await window.expectError(async () => {
          for await (const _ of m.generate([1, 2, 3], { maxNewTokens: 2 })) {
            /* nothing */
          }
        });
        const later = await window.expectError(() => m.encode('x'));
        await m.dispose();
        const again = await window.greedy(u, [1, 2, 3], 3);
        return { err, reported, later, again: again.tokens.length };
      }, tinyUrl);
      same(r.err && r.err.code, 'device-lost', 'generation after loss');
      same(r.reported, 'device-lost', 'onDeviceLost');
      same(r.later && r.later.code, 'device-lost', 'later calls');
      same(r.again, 3, 'tokens after reloading');
    });

    await test('error paths: 404, CORS, corrupt file, no WebGPU, bad ids, disposed', async () => {
      const errs = await page.evaluate(
        async ([origin, foreign]) => {
          const L = window.sp.ShadowModel.load;
          const e = window.expectError;
          const out = {};
          out.notFound = await e(() => L(`${origin}/m/tests/fixtures/nope/export/`, { cache: false }));
          out.cors = await e(() => L(`${foreign}/m/models/tiny/export/`, { cache: false }));
          out.corrupt = await e(() => L(`${origin}/broken/models/tiny/export/`, { cache: false }));
          // A device whose storage bindings cannot hold one row of a weight matrix.
          out.tooSmall = await e(() => L(`${origin}/m/models/tiny/export/`, { cache: false, maxBinding: 256 }));
          const m = await L(`${origin}/m/models/tiny/export/`);
          out.badIds = await e(async () => {
            for await (const _ of m.generate([1, 99999], { maxNewTokens: 2 })) {
              /* nothing */
            }
          });
          out.badOption = await e(async () => {
            for await (const _ of m.generate([1], { maxNewTokenz: 2 })) {
              /* nothing */
            }
          });
          await m.dispose();
          out.disposed = await e(async () => m.encode('x'));
          const gpu = Object.getOwnPropertyDescriptor(Navigator.prototype, 'gpu');
          Object.defineProperty(Navigator.prototype, 'gpu', { configurable: true, get: () => undefined });
          try {
            out.noWebgpu = await e(() => L(`${origin}/m/models/tiny/export/`));
          } finally {
            Object.defineProperty(Navigator.prototype, 'gpu', gpu);
          }
          return out;
        },
        [origin, foreign],
      );
      same(errs.notFound.code, 'not-found', '404');
      assert(errs.notFound.message.includes('config.json'), `404 message names the file: ${errs.notFound.message}`);
      same(errs.cors.code, 'network', 'CORS');
      assert(/CORS/.test(errs.cors.message), 'CORS message');
      same(errs.corrupt.code, 'invalid-model', 'corrupt');
      assert(errs.corrupt.message.includes('model.safetensors'), `corrupt message names the file: ${errs.corrupt.message}`);
      same(errs.tooSmall.code, 'unsupported-device', 'too-small limits');
      assert(/storage binding limit/.test(errs.tooSmall.message), `limit message: ${errs.tooSmall.message}`);
      same(errs.badIds.code, 'invalid-argument', 'bad ids');
      assert(errs.badIds.message.includes('99999'), 'bad id message');
      same(errs.badOption.code, 'invalid-argument', 'unknown option');
      same(errs.disposed.code, 'disposed', 'disposed');
      same(errs.noWebgpu.code, 'no-webgpu', 'no WebGPU');
    });
    if (nativeBin) await backboneTests(page, origin);
  } finally {
    await close();
    server.close();
    other.close();
    fs.rmSync(packRoot, { recursive: true, force: true });
  }
  if (failures) {
    console.log('--- browser console ---\n' + logs.slice(-40).join('\n'));
  }
  const wasm = path.join(www, 'pkg/shadowpeft_bg.wasm');
  summary.wasmBytes = fs.statSync(wasm).size;
  fs.writeFileSync(path.join(dist, 'summary.json'), JSON.stringify(summary, null, 2));
  console.log(`${results.length - failures}/${results.length} browser tests passed`);
  process.exit(failures ? 1 : 0);
}

/** Attached mode across the network: the package against `shadowpeft serve` on loopback. */
async function backboneTests(page, origin) {
  const fx = 'tests/fixtures/qwen3_implicit';
  const g = readSafetensors(path.join(repo, fx, 'golden.safetensors'));
  const exportUrl = `${origin}/m/${fx}/export/`;
  const adapterUrl = `${origin}/m/${fx}/adapter/`;
  const srv = await startBackbone(`${fx}/base`, ['--token', 'secret']);
  try {
    await test('attach (fused and stepped) equals the official attached output; detach goes back', async () => {
      const notes = [];
      for (const [protocol, worker] of [['fused', true], ['stepped', false]]) {
        const r = await page.evaluate(
          async ([u, a, backbone, ids, protocol, worker]) => {
            const m = await window.sp.ShadowModel.load(u, { worker });
            const info = await m.attach({ backbone, adapter: a, token: 'secret', protocol });
            const it = m.generate(ids, { maxNewTokens: 12, ignoreEos: true });
            const modes = [];
            for await (const t of it) if (t.token !== null) modes.push(t.mode);
            const res = await it.done;
            await m.detach();
            const det = await m.generate(ids, { maxNewTokens: 12, ignoreEos: true }).done;
            await m.dispose();
            return { info, res, modes, det };
          },
          [exportUrl, adapterUrl, srv.url, g.input_ids, protocol, worker],
        );
        same(r.info.mode, 'attached', 'info.mode');
        same(r.res.tokens, g.greedy_attached, `${protocol}: tokens vs the official attached output`);
        same(r.modes, Array(12).fill('attached'), `${protocol}: token modes`);
        same(r.res.modes, Array(12).fill('attached'), `${protocol}: result modes`);
        same(r.det.tokens, g.greedy_detached, `${protocol}: detached again after detach()`);
        const p = r.res.backbone.perDecodedToken;
        notes.push(`${protocol}: per decoded token ${p.roundTrips} round trips, ${p.bytesSent} B up, ${p.bytesReceived} B down; ${r.res.decodeTokS.toFixed(1)} tok/s`);
        same(p.roundTrips, protocol === 'fused' ? 1 : 3, `${protocol}: round trips per decoded token (3 base layers)`);
      }
      return notes.join('; ');
    });

    await test('attach on every fixture, official and Hugging Face peft adapters (fused in a worker, stepped on the main thread), equals their attached output', async () => {
      const notes = [];
      const runs = [
        ['qwen3_explicit_proj', 'stepped', false],
        ['qwen3_untied', 'fused', true],
        ['qwen3_bf16', 'stepped', false],
        ['qwen2_gqa', 'fused', true],
        ['llama', 'stepped', false],
        ['peft_mirror', 'stepped', false],
        ['peft_partial_proj', 'fused', true],
        ['peft_explicit', 'fused', true],
        ['peft_explicit', 'stepped', false],
        ['peft_projected', 'fused', true],
      ];
      for (const [name, protocol, worker] of runs) {
        const pfx = `tests/fixtures/${name}`;
        const pg = readSafetensors(path.join(repo, pfx, 'golden.safetensors'));
        const peft = name.startsWith('peft_');
        const psrv = await startBackbone(`${pfx}/base`);
        try {
          const r = await page.evaluate(
            async ([u, a, backbone, ids, protocol, worker]) => {
              const m = await window.sp.ShadowModel.load(u, { worker });
              await m.attach({ backbone, adapter: a, protocol });
              const res = await m.generate(ids, { maxNewTokens: 12, ignoreEos: true }).done;
              await m.detach();
              const det = await m.generate(ids, { maxNewTokens: 12, ignoreEos: true }).done;
              await m.dispose();
              return { res, det };
            },
            [`${origin}/m/${pfx}/export/`, `${origin}/m/${pfx}/adapter/`, psrv.url, pg.input_ids, protocol, worker],
          );
          same(r.res.tokens, pg.greedy_attached, `${name} ${protocol}: tokens vs the attached golden`);
          // Detached again: the shadow alone (with the adapter's trained shadow head, if any).
          same(r.det.tokens, peft ? pg.greedy_export : pg.greedy_detached, `${name}: detached again after detach()`);
          const p = r.res.backbone.perDecodedToken;
          // Stepped: one round trip per base layer (3), plus the embeddings when a peft
          // adapter injects before block 0.
          same(p.roundTrips, protocol === 'fused' ? 1 : peft ? 4 : 3, `${name} ${protocol}: round trips per decoded token`);
          if (peft) notes.push(`${name} ${protocol}: ${p.roundTrips} round trips per decoded token`);
        } finally {
          psrv.kill();
        }
      }
      return notes.join('; ');
    });

    await test('escalation: detached until the marker, then the attached continuation', async () => {
      const det = g.greedy_detached;
      const k = [...Array(det.length).keys()].find((i) => i >= 2 && !det.slice(0, i).includes(det[i]));
      const marker = tokenString(`${fx}/export`, det[k]);
      const r = await page.evaluate(
        async ([u, a, backbone, ids, prefix, marker, n, k]) => {
          const m = await window.sp.ShadowModel.load(u, { worker: false });
          await m.attach({ backbone, adapter: a, token: 'secret' });
          const it = m.generate(ids, { maxNewTokens: n, ignoreEos: true, escalate: { marker } });
          const modes = [];
          for await (const t of it) if (t.token !== null) modes.push(t.mode);
          const esc = await it.done;
          const cont = await m.generate(prefix, { maxNewTokens: n - k, ignoreEos: true }).done;
          const unsure = await m.generate(ids, { maxNewTokens: n, ignoreEos: true, escalate: { minProb: 1 } }).done;
          await m.dispose();
          return { esc, modes, cont, unsure };
        },
        [exportUrl, adapterUrl, srv.url, g.input_ids, [...g.input_ids, ...det.slice(0, k)], marker, 12, k],
      );
      same(r.esc.tokens, [...det.slice(0, k), ...r.cont.tokens], 'tokens');
      same(r.modes, [...Array(k).fill('detached'), ...Array(12 - k).fill('attached')], 'modes');
      same(r.unsure.tokens, g.greedy_attached, 'minProb 1: all attached');
      return `escalated at token ${k}`;
    });

    await test('backbone faults: unreachable, wrong token, silent server (timeout), killed server with and without fallback', async () => {
      const doomed = await startBackbone(`${fx}/base`);
      // A server that accepts connections and never answers.
      const mute = await listen(() => {});
      const muteUrl = `http://127.0.0.1:${mute.address().port}`;
      await page.exposeFunction('killDoomed', async () => {
        doomed.kill();
        await new Promise((r) => setTimeout(r, 300));
      });
      const r = await page.evaluate(
        async ([u, a, backbone, doomedUrl, ids, muteUrl]) => {
          const m = await window.sp.ShadowModel.load(u, { worker: false });
          const out = {};
          out.unreachable = await window.expectError(() => m.attach({ backbone: 'http://127.0.0.1:9', adapter: a }));
          out.badToken = await window.expectError(() => m.attach({ backbone, adapter: a, token: 'wrong' }));
          const t0 = performance.now();
          out.mute = await window.expectError(() => m.attach({ backbone: muteUrl, adapter: a, timeoutMs: 800 }));
          out.muteMs = performance.now() - t0;
          out.stillDetached = (await m.generate(ids, { maxNewTokens: 12, ignoreEos: true }).done).tokens;
          await m.attach({ backbone: doomedUrl, adapter: a, fallback: 'detached' });
          out.first = (await m.generate(ids, { maxNewTokens: 2, ignoreEos: true }).done).modes;
          await window.killDoomed();
          out.fallback = await m.generate(ids, { maxNewTokens: 12, ignoreEos: true }).done;
          await m.attach({ backbone: doomedUrl, adapter: a }).catch(() => {});
          const m2 = await window.sp.ShadowModel.load(u, { worker: true });
          out.attachDead = await window.expectError(() => m2.attach({ backbone: doomedUrl, adapter: a }));
          await m2.dispose();
          await m.dispose();
          return out;
        },
        [exportUrl, adapterUrl, srv.url, doomed.url, g.input_ids, muteUrl],
      );
      mute.close();
      same(r.unreachable && r.unreachable.code, 'backbone', 'unreachable');
      same(r.badToken && r.badToken.code, 'backbone', 'wrong token');
      assert(/401|token/.test(r.badToken.message), `wrong-token message: ${r.badToken.message}`);
      same(r.mute && r.mute.code, 'backbone', 'silent server');
      assert(/in time/.test(r.mute.message) && r.muteMs < 10000, `silent server: ${r.mute.message} after ${r.muteMs} ms`);
      same(r.stillDetached, g.greedy_detached, 'a failed attach leaves the model detached and working');
      same(r.first, ['attached', 'attached'], 'before the kill');
      same(r.fallback.tokens, g.greedy_detached, 'fallback tokens');
      same(r.fallback.modes, Array(12).fill('detached'), 'fallback modes');
      assert(r.fallback.backbone && r.fallback.backbone.fallbackError, 'fallbackError reported');
      same(r.attachDead && r.attachDead.code, 'backbone', 'attach to a dead server');
    });
    await test('demo model: official answers detached and attached, [REMOTE] escalates', async () => {
      const demo = JSON.parse(fs.readFileSync(path.join(repo, 'models/demo/golden.json'), 'utf8'));
      const dsrv = await startBackbone('models/demo/base');
      try {
        const r = await page.evaluate(
          async ([u, a, backbone, prompts, n]) => {
            const det = await window.sp.ShadowModel.load(u);
            const att = await window.sp.ShadowModel.load(u);
            await att.attach({ backbone, adapter: a, protocol: 'stepped', wire: 'f16' });
            const out = [];
            for (const p of prompts) {
              const d = await det.generate(p.input_ids, { maxNewTokens: n }).done;
              const t = await att.generate(p.input_ids, { maxNewTokens: n }).done;
              const e = await att.generate(p.input_ids, { maxNewTokens: n, escalate: { marker: '[REMOTE]' } }).done;
              out.push({ d: d.tokens, dText: d.text, t: t.tokens, e: e.tokens, eModes: e.modes });
            }
            await det.dispose();
            await att.dispose();
            return out;
          },
          [`${origin}/m/models/demo/export/`, `${origin}/m/models/demo/adapter/`, dsrv.url, demo.prompts, demo.max_new_tokens],
        );
        let escalated = 0;
        demo.prompts.forEach((p, i) => {
          const q = p.messages[0].content;
          same(r[i].d, p.detached.tokens, `${q}: detached`);
          same(r[i].t, p.attached.tokens, `${q}: attached (stepped, f16 frames)`);
          const remote = p.detached.text === '[REMOTE]';
          if (remote) escalated++;
          same(r[i].dText, p.detached.text, `${q}: detached text`);
          same(r[i].e, remote ? p.attached.tokens : p.detached.tokens, `${q}: escalating`);
          assert(r[i].eModes.every((m) => m === (remote ? 'attached' : 'detached')), `${q}: modes ${r[i].eModes}`);
        });
        assert(escalated > 0, 'no prompt escalated');
      } finally {
        dsrv.kill();
      }
    });
    await test('speculative attached decoding: the plain attached tokens with drafts of 4 and auto, in a worker (fused) and on the main thread (stepped), fewer round trips on the commands with rounds drafted ahead while the previous verification flew, sampled rounds repeatable by seed, in chat completions; bad options and detached models are refused', async () => {
      const demo = JSON.parse(fs.readFileSync(path.join(repo, 'models/demo/golden.json'), 'utf8'));
      const dsrv = await startBackbone('models/demo/base');
      const notes = [];
      try {
        for (const [protocol, worker] of [['fused', true], ['stepped', false]]) {
          const r = await page.evaluate(
            async ([u, a, backbone, prompts, n, protocol, worker]) => {
              const m = await window.sp.ShadowModel.load(u, { worker });
              await m.attach({ backbone, adapter: a, protocol });
              const out = [];
              for (const p of prompts) {
                const plain = await m.generate(p.input_ids, { maxNewTokens: n }).done;
                const four = await m.generate(p.input_ids, { maxNewTokens: n, speculate: { draft: 4 } }).done;
                const auto = await m.generate(p.input_ids, { maxNewTokens: n, speculate: 'auto' }).done;
                out.push({ plain: plain.tokens, plainTrips: plain.backbone.roundTrips, four: four.tokens, fourTrips: four.backbone.roundTrips, fourSpec: four.speculation, auto: auto.tokens, autoSpec: auto.speculation });
              }
              const sampled = async (seed) => (await m.generate(prompts[0].input_ids, { maxNewTokens: n, temperature: 1.2, topK: 20, seed, speculate: { draft: 3 } }).done).tokens;
              const same = [await sampled(3), await sampled(3)];
              const chat = await m.chat.completions.create({ messages: prompts[0].messages, speculate: 'auto', max_tokens: n });
              const bad = await window.expectError(() => m.generate(prompts[0].input_ids, { speculate: 'fast' }).done);
              const tooLong = await window.expectError(() => m.generate(prompts[0].input_ids, { speculate: { draft: 17 } }).done);
              await m.detach();
              const detached = await window.expectError(() => m.generate(prompts[0].input_ids, { speculate: 'auto' }).done);
              await m.dispose();
              return { out, same, chat: { content: chat.choices[0].message.content, speculation: chat.speculation }, bad, tooLong, detached };
            },
            [`${origin}/m/models/demo/export/`, `${origin}/m/models/demo/adapter/`, dsrv.url, demo.prompts, demo.max_new_tokens, protocol, worker],
          );
          demo.prompts.forEach((p, i) => {
            const q = `${protocol}: ${p.messages[0].content}`;
            const o = r.out[i];
            same(o.plain, p.attached.tokens, `${q}: plain attached`);
            same(o.four, p.attached.tokens, `${q}: drafts of 4`);
            same(o.auto, p.attached.tokens, `${q}: auto`);
            assert(o.fourSpec && o.fourSpec.accepted <= o.fourSpec.drafted && o.fourSpec.tokensPerRoundTrip > 0, `${q}: speculation report ${JSON.stringify(o.fourSpec)}`);
            if (p.detached.tokens.join() === p.attached.tokens.join()) {
              assert(o.fourTrips * 2 < o.plainTrips, `${q}: ${o.fourTrips} round trips against ${o.plainTrips} plain`);
              // The drafts stand, so rounds start from drafts made while the last verification flew.
              assert(o.fourSpec.pipelined > 0, `${q}: no round drafted ahead ${JSON.stringify(o.fourSpec)}`);
              notes.push(`${q}: ${o.fourTrips} round trips (plain ${o.plainTrips}), ${o.fourSpec.pipelined} of ${o.fourSpec.rounds} rounds drafted ahead`);
            }
          });
          same(r.same[0], r.same[1], `${protocol}: sampled rounds, same seed`);
          same(r.chat.content, demo.prompts[0].attached.text, `${protocol}: chat completion with speculate`);
          assert(r.chat.speculation && r.chat.speculation.rounds > 0, `${protocol}: chat completion speculation ${JSON.stringify(r.chat.speculation)}`);
          same(r.bad && r.bad.code, 'invalid-argument', `${protocol}: speculate 'fast'`);
          assert(r.tooLong && /at most 16/.test(r.tooLong.message), `${protocol}: a draft of 17: ${JSON.stringify(r.tooLong)}`);
          assert(r.detached && /attached model/.test(r.detached.message), `${protocol}: detached: ${JSON.stringify(r.detached)}`);
        }
      } finally {
        dsrv.kill();
      }
      return notes.join('; ');
    });
    await test('compare page: the speculative column gives the attached column\'s tokens with fewer round trips', async () => {
      const out = fs.mkdtempSync(path.join(process.env.TMPDIR || '/tmp', 'shadowpeft-compare-'));
      const dsrv = await listen(demoHandler(out));
      const bsrv = await startBackbone('models/demo/base');
      const p = await page.context().newPage();
      try {
        await buildDemo(out);
        const q = new URLSearchParams({ backbone: bsrv.url, speculate: '4', prompt: 'Turn left 90 degrees.', autorun: '1' });
        await p.goto(`http://127.0.0.1:${dsrv.address().port}/compare.html?${q}`);
        await p.waitForFunction(() => document.body.dataset.done === 'true' || /error/.test(document.getElementById('status').className + document.getElementById('divergence').className), null, { timeout: 180000 });
        const text = (id) => p.textContent(id);
        const [att, spec, stats] = [await text('#out-attached'), await text('#out-speculative'), await text('#stats-speculative')];
        assert(att.length > 0, 'the attached column is empty');
        same(spec, att, 'speculative column vs attached column');
        assert(/tokens per round trip/.test(stats) && /same tokens as attached/.test(stats), `speculative stats: ${stats}`);
        return stats;
      } finally {
        await p.close();
        dsrv.close();
        bsrv.kill();
        fs.rmSync(out, { recursive: true, force: true });
      }
    });
    await test('chat continues: every chat.completions.create turn equals a fresh native generation on the rendered conversation and reuses the common prefix (detached in a worker, attached through a backbone on the main thread)', async () => {
      const dsrv = await startBackbone('models/demo/base');
      const users = ['Turn left 90 degrees.', 'What does len do in Python?', 'Move forward 2 meters.'];
      const notes = [];
      try {
        for (const [mode, worker] of [['detached', true], ['attached', false]]) {
          const r = await page.evaluate(
            async ([u, a, backbone, users, mode, worker]) => {
              const m = await window.sp.ShadowModel.load(u, { worker });
              if (mode === 'attached') await m.attach({ backbone, adapter: a });
              const messages = [];
              const turns = [];
              for (const content of users) {
                messages.push({ role: 'user', content });
                const ids = await m.encode(await m.applyChatTemplate(messages, true), false);
                const c = await m.chat.completions.create({ messages, max_tokens: 40 });
                const text = c.choices[0].message.content;
                turns.push({ ids, text, usage: c.usage });
                messages.push({ role: 'assistant', content: text });
              }
              // Context limits: an error naming both numbers, the session still usable; then auto.
              const tooLong = await window.expectError(() => m.chat.completions.create({ messages: [...messages, { role: 'user', content: 'Stop.' }], max_tokens: 500 }));
              const after = await m.chat.completions.create({ messages: [{ role: 'user', content: users[0] }], max_tokens: 40 });
              const auto = await m.chat.completions.create({ messages: [...messages, { role: 'user', content: 'Stop.' }], max_tokens: 450, truncation: 'auto' });
              await m.dispose();
              return { turns, tooLong, after: after.choices[0].message.content, auto: { dropped: auto.dropped_messages, usage: auto.usage } };
            },
            [`${origin}/m/models/demo/export/`, `${origin}/m/models/demo/adapter/`, dsrv.url, users, mode, worker],
          );
          let held = [];
          r.turns.forEach((t, i) => {
            const model = mode === 'detached' ? ['--model', path.join(repo, 'models/demo/export')] : ['--base', path.join(repo, 'models/demo/base'), '--adapter', path.join(repo, 'models/demo/adapter')];
            const n = nativeGenerate(model, t.ids, 40);
            if (n) same(t.text, n.text, `${mode} turn ${i}: text vs a fresh native generation`);
            same(t.usage.prompt_tokens, t.ids.length, `${mode} turn ${i}: prompt_tokens`);
            let common = 0;
            while (common < held.length && common < t.ids.length - 1 && held[common] === t.ids[common]) common++;
            same(t.usage.prompt_tokens_details.cached_tokens, common, `${mode} turn ${i}: cached_tokens`);
            if (i > 0) assert(common > held.length / 2, `${mode} turn ${i}: only ${common} of ${held.length} reused`);
            if (n) held = [...t.ids, ...n.tokens.slice(0, -1)];
          });
          same(r.turns[0].text, '{"action": "turn", "direction": "left", "degrees": 90}', `${mode}: turn 1`);
          same(r.tooLong && r.tooLong.code, 'context-length', `${mode}: too long`);
          assert(/max_tokens 500/.test(r.tooLong.message) && /512 positions/.test(r.tooLong.message), `${mode}: context-length message ${r.tooLong.message}`);
          same(r.after, r.turns[0].text, `${mode}: usable after the error`);
          assert(r.auto.dropped >= 2 && r.auto.usage.prompt_tokens + 450 <= 512, `${mode}: truncation auto ${JSON.stringify(r.auto)}`);
          notes.push(`${mode}: cached ${r.turns.map((t) => t.usage.prompt_tokens_details.cached_tokens).join('/')} of ${r.turns.map((t) => t.usage.prompt_tokens).join('/')}`);
        }
      } finally {
        dsrv.kill();
      }
      return notes.join('; ');
    });
    await test('demo page, as a new user tries it: "Turn left 90 degrees." then "What does len do in Python?" in one chat give the official detached answers (the JSON, then [REMOTE]), the second turn from the cache', async () => {
      const demo = JSON.parse(fs.readFileSync(path.join(repo, 'models/demo/golden.json'), 'utf8'));
      const conv = demo.conversations.find((c) => c.users[0] === 'Turn left 90 degrees.' && c.users[1] === 'What does len do in Python?');
      assert(conv, 'golden.json has no "Turn left 90 degrees." / "What does len do in Python?" conversation');
      const out = fs.mkdtempSync(path.join(process.env.TMPDIR || '/tmp', 'shadowpeft-demo-'));
      const dsrv = await listen(demoHandler(out));
      const p = await page.context().newPage();
      try {
        await buildDemo(out);
        await p.goto(`http://127.0.0.1:${dsrv.address().port}/?autoload`);
        await p.waitForFunction(() => /^(ready|.*error)/.test(document.getElementById('status').textContent), null, { timeout: 120000 });
        const status = await p.textContent('#status');
        assert(status.startsWith('ready'), `demo page did not load: ${status}`);
        const answers = [];
        const speeds = [];
        for (const [i, u] of conv.users.entries()) {
          await p.fill('#prompt', u);
          await p.click('#send');
          await p.waitForFunction((n) => document.querySelectorAll('#log .assistant').length === n && !document.getElementById('send').disabled, i + 1, { timeout: 120000 });
          answers.push(await p.evaluate(() => [...document.querySelectorAll('#log .assistant')].pop().textContent));
          speeds.push(await p.textContent('#speed'));
        }
        const errors = await p.evaluate(() => [...document.querySelectorAll('#log .error')].map((e) => e.textContent));
        same(errors, [], 'errors on the page');
        same(answers, conv.detached.map((t) => t.text), 'the demo page\'s answers');
        same(answers[1], '[REMOTE]', 'the question, detached');
        const cached = speeds.map((s) => Number((/(\d+) reused from the cache/.exec(s) || [])[1]));
        assert(cached[0] === 0 && cached[1] > conv.detached[0].input_ids.length, `cached tokens per turn ${cached} (${speeds.join(' | ')})`);
        return speeds.join(' | ');
      } finally {
        await p.close();
        dsrv.close();
        fs.rmSync(out, { recursive: true, force: true });
      }
    });
  } finally {
    srv.kill();
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
