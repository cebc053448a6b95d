// Shared by the browser tests, scripts/browser-generate and scripts/browser-transformersjs: the
// Vite build of the test page, the localhost servers, headless Chromium with WebGPU, and a
// safetensors reader.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { build } from 'vite';

export const here = path.dirname(fileURLToPath(import.meta.url));
export const www = path.resolve(here, '..');
export const repo = path.resolve(www, '..');
export const dist = path.join(here, 'dist');

// ---- golden files -------------------------------------------------------------------------
export function readSafetensors(file) {
  const b = fs.readFileSync(file);
  const n = Number(b.readBigUInt64LE(0));
  const header = JSON.parse(b.subarray(8, 8 + n).toString('utf8'));
  const out = {};
  for (const [k, v] of Object.entries(header)) {
    if (k === '__metadata__') continue;
    const [s, e] = v.data_offsets;
    const raw = b.subarray(8 + n + s, 8 + n + e);
    if (v.dtype === 'I64') out[k] = Array.from({ length: raw.length / 8 }, (_, i) => Number(raw.readBigInt64LE(i * 8)));
    else if (v.dtype === 'F32') out[k] = Array.from({ length: raw.length / 4 }, (_, i) => raw.readFloatLE(i * 4));
  }
  return out;
}

export const FIXTURES = [
  ...['qwen3_implicit', 'qwen3_explicit_proj', 'qwen3_untied', 'qwen3_bf16', 'qwen2_gqa', 'llama', 'peft_mirror', 'peft_partial_proj', 'peft_explicit', 'peft_projected'].map((n) => ({ name: n, dir: `tests/fixtures/${n}` })),
  { name: 'tiny', dir: 'models/tiny' },
];

// ---- static servers -----------------------------------------------------------------------
const types = { '.html': 'text/html', '.js': 'text/javascript', '.mjs': 'text/javascript', '.wasm': 'application/wasm', '.json': 'application/json' };
/** Paths requested from the servers, for tests that check the network was not used. */
export const requests = [];

export function serveFile(res, file, { cors = true, truncate = false, immutable = false } = {}) {
  if (!fs.existsSync(file) || !fs.statSync(file).isFile()) {
    res.writeHead(404, cors ? { 'access-control-allow-origin': '*' } : {});
    return res.end('not found');
  }
  let body = fs.readFileSync(file);
  if (truncate && file.endsWith('.safetensors')) body = body.subarray(0, Math.floor(body.length / 2));
  const headers = { 'content-type': types[path.extname(file)] || 'application/octet-stream', 'content-length': body.length };
  if (cors) headers['access-control-allow-origin'] = '*';
  // The page's own assets have content-hashed names: cacheable, as in production, so an app
  // (and its worker and wasm) still starts when the network is gone.
  if (immutable) headers['cache-control'] = 'public, max-age=31536000, immutable';
  res.writeHead(200, headers);
  res.end(body);
}

/**
 * Faults the /d/ files suffer, by file name (set by the tests): `delayMs` before the response,
 * `cut` (half the body, then the connection drops), `flip` (the last byte changed). `stats`
 * counts the weight files in flight at once.
 */
export const faults = { delayMs: {}, cut: new Set(), flip: new Set() };
export const stats = { inFlight: 0, maxInFlight: 0 };

function serveFaulty(res, file, cors) {
  const name = path.basename(file);
  const weights = name.endsWith('.safetensors');
  if (weights) {
    stats.inFlight++;
    stats.maxInFlight = Math.max(stats.maxInFlight, stats.inFlight);
    res.on('close', () => stats.inFlight--);
  }
  setTimeout(() => {
    if (!fs.existsSync(file) || !fs.statSync(file).isFile()) return serveFile(res, file, { cors });
    if (!faults.flip.has(name) && !faults.cut.has(name)) {
      // Streamed: model files may be larger than one Buffer.
      const headers = { 'content-type': types[path.extname(file)] || 'application/octet-stream', 'content-length': fs.statSync(file).size };
      if (cors) headers['access-control-allow-origin'] = '*';
      res.writeHead(200, headers);
      return fs.createReadStream(file).pipe(res);
    }
    let body = fs.readFileSync(file);
    if (faults.flip.has(name)) {
      body = Buffer.from(body);
      body[body.length - 1] ^= 0x55;
    }
    const headers = { 'content-type': 'application/octet-stream', 'content-length': body.length };
    if (cors) headers['access-control-allow-origin'] = '*';
    res.writeHead(200, headers);
    if (!faults.cut.has(name)) return res.end(body);
    res.write(body.subarray(0, body.length >> 1));
    setTimeout(() => res.destroy(), 50);
  }, faults.delayMs[name] || 0);
}

/** Serves the built page, /m/<repo path> (model files), /broken/<repo path> (truncated
 * weights) and, with `root`, any file under that directory at /d/. */
export function handler({ cors, root }) {
  return (req, res) => {
    const url = new URL(req.url, 'http://x');
    const p = decodeURIComponent(url.pathname);
    requests.push(p);
    // /m/<repo path>: model files (only under tests/fixtures and models); /broken/: truncated weights.
    for (const [prefix, extra] of [['/m/', {}], ['/broken/', { truncate: true }]]) {
      if (p.startsWith(prefix)) {
        const rel = path.normalize(p.slice(prefix.length));
        if (!/^(tests\/fixtures|models)\//.test(rel) || rel.includes('..')) return serveFile(res, '/nonexistent');
        return serveFile(res, path.join(repo, rel), { cors, ...extra });
      }
    }
    if (root && p.startsWith('/d/')) {
      const f = path.join(root, path.normalize(p.slice(3)));
      if (!f.startsWith(root)) return serveFile(res, '/nonexistent');
      return serveFaulty(res, f, cors);
    }
    const f = path.join(dist, p === '/' ? 'index.html' : p);
    if (!f.startsWith(dist)) return serveFile(res, '/nonexistent');
    return serveFile(res, f, { immutable: p.startsWith('/assets/') });
  };
}

/** `shadowpeft serve` (the native binary `bin`) for `base` (a repository path) on a free
 * loopback port: { url, kill }. */
export function startServe(bin, base, extra = []) {
  const p = spawn(bin, ['serve', '--listen', '127.0.0.1:0', '--base', path.join(repo, base), ...extra], {
    env: { ...process.env, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR || '/tmp' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  return new Promise((resolve, reject) => {
    let err = '';
    p.stderr.on('data', (d) => {
      err += d;
      // Only a whole line: stderr can arrive split in the middle of the URL.
      const m = /(http:\/\/\S+)\s/.exec(err);
      if (m) resolve({ url: m[1], kill: () => p.kill('SIGKILL') });
    });
    p.on('exit', (c) => reject(new Error(`backbone server exited (${c}): ${err}`)));
  });
}

export function listen(h) {
  return new Promise((resolve) => {
    const s = http.createServer(h);
    s.listen(0, '127.0.0.1', () => resolve(s));
  });
}

/** Builds the test page (it imports the package by name, as an application does). */
export async function buildPage() {
  await build({
    root: here,
    configFile: false,
    logLevel: 'warn',
    resolve: { alias: { 'shadowpeft-web': path.join(www, 'src/index.js') } },
    worker: { format: 'es' },
    build: { outDir: dist, emptyOutDir: true, target: 'es2022' },
  });
}

/** The demo page (www/demo, with its own Vite config) built into `outDir`. */
export async function buildDemo(outDir) {
  await build({
    configFile: path.join(www, 'demo/vite.config.js'),
    logLevel: 'warn',
    build: { outDir, emptyOutDir: true },
  });
}

/** Serves a built demo page from `dir` and the repository's models/ under /models/. */
export function demoHandler(dir) {
  return (req, res) => {
    const p = path.normalize(decodeURIComponent(new URL(req.url, 'http://x').pathname));
    if (p.includes('..')) return serveFile(res, '/nonexistent');
    if (p.startsWith('/models/')) return serveFile(res, path.join(repo, p));
    return serveFile(res, path.join(dir, p === '/' ? 'index.html' : p), { immutable: p.startsWith('/assets/') });
  };
}

/** Headless Chromium with WebGPU on SwiftShader, in a fresh profile. */
export async function launch() {
  const userDataDir = fs.mkdtempSync(path.join(process.env.TMPDIR || '/tmp', 'shadowpeft-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: [
      '--no-sandbox',
      '--enable-unsafe-webgpu',
      '--enable-features=Vulkan',
      '--use-webgpu-adapter=swiftshader',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
    ],
  });
  const close = async () => {
    await context.close();
    fs.rmSync(userDataDir, { recursive: true, force: true });
  };
  return { context, close };
}

/** The page's WebGPU adapter in words ("google swiftshader"). */
export async function gpuAdapter(page) {
  return page.evaluate(async () => {
    const a = await navigator.gpu.requestAdapter();
    return a ? [a.info.vendor, a.info.architecture, a.info.description].filter(Boolean).join(' ') : 'no adapter';
  });
}

/** Opens the test page and waits until the package is importable. */
export async function openPage(context, origin, logs = []) {
  const page = await context.newPage();
  page.on('console', (m) => logs.push(`[${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => logs.push(`[pageerror] ${e}`));
  await page.goto(origin + '/');
  await page.waitForFunction(() => window.testPageReady === true);
  return page;
}
