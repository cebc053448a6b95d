// Model files: from a base URL (fetched, streamed, cached in Cache Storage) or from local
// File/Blob objects (a picked directory). Each file is handed over chunk by chunk, so no
// whole weight file is ever held in JavaScript memory.

import { ShadowError, abortError } from './errors.js';

export const CACHE_NAME = 'shadowpeft-web-v1';

/** The index of a sharded model (Hugging Face's name). */
export const INDEX = 'model.safetensors.index.json';

/** Shards downloaded at once. */
export const SHARD_FETCHES = 4;

/**
 * The shards an index lists: `files` (each once, in order), and `bytes`, their total size when
 * the index lists every shard's size (`metadata.shards`, as `shadowpeft pack` writes), with
 * `sized` saying so.
 * @param {string} source the model's name, for errors
 * @param {Uint8Array} bytes the index file
 */
export function parseIndex(source, bytes) {
  let index;
  try {
    index = JSON.parse(new TextDecoder().decode(bytes));
  } catch (e) {
    throw new ShadowError('invalid-model', `${source}/${INDEX}: malformed JSON (${e.message})`);
  }
  const map = index && typeof index.weight_map === 'object' && index.weight_map ? index.weight_map : {};
  const files = [...new Set(Object.values(map))].filter((f) => typeof f === 'string').sort();
  const listed = (index.metadata && index.metadata.shards) || {};
  const sized = files.length > 0 && files.every((f) => listed[f] && Number.isFinite(listed[f].size));
  const bytesTotal = sized ? files.reduce((n, f) => n + listed[f].size, 0) : 0;
  return { files, bytes: bytesTotal, sized };
}

/**
 * Runs `fn` on every item, at most `limit` at a time.
 * @template T
 * @param {T[]} items
 * @param {number} limit
 * @param {(item: T) => Promise<void>} fn
 */
export async function pool(items, limit, fn) {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await fn(items[next++]);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

/**
 * Resolves the list of files of a model directory and opens them one by one.
 * @param {string | FileList | File[] | Map<string, Blob> | Record<string, Blob>} source
 */
export function openSource(source, { cache = true, signal } = {}) {
  if (typeof source === 'string' || source instanceof URL) return new UrlSource(String(source), cache, signal);
  return new BlobSource(source, signal);
}

function joinUrl(base, file) {
  const b = base.endsWith('/') ? base : base + '/';
  return new URL(file, new URL(b, globalThis.location ? globalThis.location.href : undefined)).href;
}

class UrlSource {
  constructor(base, cache, signal) {
    this.base = base;
    this.useCache = cache;
    this.signal = signal;
    this.cachePromise = null;
    this.warnings = [];
  }

  name() {
    return this.base;
  }

  async openCache() {
    if (!this.useCache || typeof caches === 'undefined') return null;
    if (!this.cachePromise) this.cachePromise = caches.open(CACHE_NAME).catch(() => null);
    return this.cachePromise;
  }

  manifestUrl() {
    return joinUrl(this.base, '.shadowpeft-manifest.json');
  }

  /** The file list saved by the last successful load from the cache (or null). */
  async manifest() {
    if (this.manifestValue === undefined) {
      const cache = await this.openCache();
      const hit = cache && (await cache.match(this.manifestUrl()));
      this.manifestValue = hit ? await hit.json().catch(() => null) : null;
    }
    return this.manifestValue;
  }

  /** Records which files the directory has, so a later (offline) load asks for nothing else. */
  async commit(files) {
    const cache = await this.openCache();
    if (!cache) return;
    const body = JSON.stringify({ files, savedAt: new Date().toISOString() });
    await cache.put(this.manifestUrl(), new Response(body, { headers: { 'content-type': 'application/json' } })).catch(() => {});
  }

  /** Drops a file from the cache (one that failed its checks). */
  async forget(file) {
    const cache = await this.openCache();
    if (cache) await cache.delete(joinUrl(this.base, file)).catch(() => {});
  }

  /**
   * @param {{ optional?: boolean, signal?: AbortSignal }} [opts] `signal` replaces the source's
   * @returns {Promise<{ size: number|null, body: ReadableStream<Uint8Array> } | null>} null when absent
   */
  async open(file, { optional = false, signal = this.signal } = {}) {
    const url = joinUrl(this.base, file);
    if (signal && signal.aborted) throw abortError(signal);
    const cache = await this.openCache();
    const manifest = await this.manifest();
    if (optional && manifest && Array.isArray(manifest.files) && !manifest.files.includes(file)) return null;
    if (cache) {
      const hit = await cache.match(url);
      if (hit) return { size: sizeOf(hit), body: hit.body, cached: true, stored: Promise.resolve() };
    }
    let resp;
    try {
      resp = await fetch(url, { signal });
    } catch (e) {
      if (signal && signal.aborted) throw abortError(signal);
      throw new ShadowError('network', `${url}: could not fetch (offline, or blocked by CORS: the server must send Access-Control-Allow-Origin)`, { cause: e, url });
    }
    if (resp.status === 404) {
      if (optional) return null;
      throw new ShadowError('not-found', `${url}: HTTP 404 (is this a model directory with ${file}?)`, { url, status: 404 });
    }
    if (!resp.ok) throw new ShadowError('http', `${url}: HTTP ${resp.status} ${resp.statusText}`, { url, status: resp.status });
    let stored = Promise.resolve();
    if (cache) {
      // Tee the body: one branch goes to disk while the engine reads the other, so neither
      // branch ever buffers the whole file. Awaited by the caller after its own read.
      stored = cache.put(url, resp.clone()).catch((e) => {
        const quota = e && e.name === 'QuotaExceededError';
        this.warnings.push(
          new ShadowError(quota ? 'quota' : 'internal', `${url}: not cached (${quota ? 'storage quota exceeded' : e}); the model works, but the next load needs the network`, { cause: e, url }),
        );
      });
    }
    return { size: sizeOf(resp), body: resp.body, cached: false, stored };
  }
}

function sizeOf(resp) {
  const n = Number(resp.headers.get('content-length'));
  return Number.isFinite(n) && n > 0 ? n : null;
}

class BlobSource {
  constructor(source, signal) {
    this.signal = signal;
    this.warnings = [];
    this.files = new Map();
    const add = (name, blob) => this.files.set(name.split('/').pop(), blob);
    if (source instanceof Map) for (const [k, v] of source) add(k, v);
    else if (typeof source.length === 'number') for (const f of Array.from(source)) add(f.webkitRelativePath || f.name, f);
    else for (const k of Object.keys(source)) add(k, source[k]);
  }

  name() {
    return 'local files';
  }

  async commit() {}

  async forget() {}

  async open(file, { optional = false, signal = this.signal } = {}) {
    if (signal && signal.aborted) throw abortError(signal);
    const blob = this.files.get(file);
    if (!blob) {
      if (optional) return null;
      throw new ShadowError('not-found', `${file} is missing from the chosen files`);
    }
    return { size: blob.size, body: blob.stream(), cached: false, stored: Promise.resolve() };
  }
}

/**
 * Streams one file into the engine's `Files` object, reporting bytes as they arrive.
 * @param {(chunk: Uint8Array) => void} sink
 * @param {(n: number) => void} onBytes
 */
export async function pump(body, sink, onBytes, signal) {
  const reader = body.getReader();
  try {
    for (;;) {
      if (signal && signal.aborted) throw abortError(signal);
      const { done, value } = await reader.read();
      if (done) return;
      sink(value);
      onBytes(value.byteLength);
    }
  } catch (e) {
    if (signal && signal.aborted) throw abortError(signal);
    throw e instanceof ShadowError ? e : new ShadowError('network', `download interrupted: ${e && e.message ? e.message : e}`, { cause: e });
  } finally {
    reader.releaseLock();
  }
}
