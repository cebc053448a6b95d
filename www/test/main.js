// The page the browser tests drive: it imports the package exactly as an application would
// (resolved by the bundler), and exposes it to the test runner.
import { ShadowModel, ShadowError, clearCache, CACHE_NAME } from 'shadowpeft-web';

window.sp = { ShadowModel, ShadowError, clearCache, CACHE_NAME };

/** Loads `url`, generates from `ids` (greedy unless `sampling` says otherwise), returns what
 * the test compares. */
window.greedy = async (url, ids, n, { worker = true, maxBinding, weights, ignoreEos = true, sampling = {} } = {}) => {
  const events = [];
  const t0 = performance.now();
  const model = await ShadowModel.load(url, { worker, maxBinding, weights, onProgress: (p) => events.push(p) });
  const tLoaded = performance.now();
  const it = model.generate(ids, { maxNewTokens: n, ignoreEos, ...sampling });
  const tokens = [];
  let tFirst = null;
  for await (const t of it) {
    if (tFirst === null) tFirst = performance.now();
    if (t.token !== null) tokens.push(t.token);
  }
  const r = await it.done;
  const tDone = performance.now();
  await model.dispose();
  return { tokens, result: r, info: model.info, events, loadMs: tLoaded - t0, firstTokenMs: tFirst - t0, generateMs: tDone - tLoaded };
};

/** Runs `fn` and returns the ShadowError it throws as { code, name, message }. */
window.expectError = async (fn) => {
  try {
    await fn();
  } catch (e) {
    return { code: e.code, name: e.name, message: String(e.message), isShadowError: e instanceof ShadowError };
  }
  return null;
};

document.getElementById('status').textContent = 'ready';
window.testPageReady = true;
