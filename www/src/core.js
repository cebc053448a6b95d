// The engine in the current thread: loading (download -> wasm `Files` -> GPU) and token-by-token
// generation. The worker (worker.js) and the main-thread mode both run this.

import init, { Engine } from '../pkg/shadowpeft.js';
import { ShadowError, abortError, engineError } from './errors.js';
import { INDEX, openSource, parseIndex, pool, pump, SHARD_FETCHES } from './fetch.js';

let wasmReady = null;

/** Initialises the wasm module once (its URL resolves relative to this file; bundlers copy it). */
export function initWasm(wasmUrl) {
  if (!wasmReady) wasmReady = init(wasmUrl ? { module_or_path: wasmUrl } : undefined);
  return wasmReady;
}

const now = () => (globalThis.performance ? performance.now() : Date.now());

export class Core {
  constructor(engine, model, meta) {
    this.engine = engine;
    this.model = model;
    this.meta = meta;
    this.busy = false;
  }

  /**
   * @param {string|FileList|File[]|Map<string, Blob>} source
   * @param {{ onProgress?: (p: object) => void, signal?: AbortSignal, cache?: boolean, maxSeq?: number, weights?: 'f32'|'f16'|'q8'|'q4', maxBinding?: number, wasmUrl?: string }} opts
   */
  static async load(source, opts = {}) {
    const { onProgress = () => {}, signal, cache = true, maxSeq, weights, maxBinding, wasmUrl } = opts;
    const t0 = now();
    if (typeof navigator === 'undefined' || !navigator.gpu) {
      throw new ShadowError('no-webgpu', 'WebGPU is not available here (navigator.gpu is missing): use a browser with WebGPU enabled, over https or localhost');
    }
    await initWasm(wasmUrl);
    if (signal && signal.aborted) throw abortError(signal);
    let engine;
    try {
      engine = await Engine.create(maxBinding);
    } catch (e) {
      throw engineError(e);
    }
    const src = openSource(source, { cache, signal });
    let files;
    try {
      files = engine.files(src.name(), weights);
    } catch (e) {
      engine.free();
      throw engineError(e);
    }
    let model;
    // Shards download in parallel; the first failure stops the others before `files` is freed.
    const inner = new AbortController();
    const stop = () => inner.abort(signal.reason);
    if (signal) signal.addEventListener('abort', stop, { once: true });
    try {
      // 1. The small files, in order: config.json first (a packed model's declaration sets the
      // storage of the weights streamed after it), then the index, which lists the shards.
      const present = [];
      let done = 0;
      let total = 0;
      let cached = true;
      const report = (file, loaded, size, fromCache) =>
        onProgress({ phase: 'download', file, loaded, total: size, overallLoaded: done, overallTotal: total || null, cached: fromCache });
      const stream = async (o) => {
        let loaded = 0;
        cached = cached && o.cached;
        if (o.size) files.reserve(o.file, o.size);
        await pump(
          o.body,
          (chunk) => {
            try {
              files.append(o.file, chunk);
            } catch (e) {
              throw engineError(e);
            }
          },
          (n) => {
            loaded += n;
            done += n;
            report(o.file, loaded, o.size, o.cached);
          },
          inner.signal,
        );
        try {
          files.finish(o.file);
        } catch (e) {
          throw engineError(e);
        }
      };
      const small = async (file, optional) => {
        const o = await src.open(file, { optional });
        if (!o) return null;
        present.push(file);
        total += o.size || 0;
        return { file, ...o };
      };
      const config = await small('config.json', false);
      const extra = await Promise.all(['generation_config.json', 'tokenizer.json', 'tokenizer_config.json'].map((f) => small(f, true)));
      const index = await small(INDEX, true);
      if (index) {
        // Read whole first: the shard list, and their total size when it lists them, so that
        // progress has its total from the first event.
        const bytes = new Uint8Array(await new Response(index.body).arrayBuffer());
        index.body = new Blob([bytes]).stream();
        index.shardList = parseIndex(src.name(), bytes);
        total += index.shardList.bytes;
      }
      for (const o of [config, ...extra, index]) {
        if (!o) continue;
        await stream(o);
        await o.stored;
      }
      // 2. The weights: the shards, at most SHARD_FETCHES at a time, each cached as it
      // completes (an interrupted load resumes with the shards it lacks) and checked against
      // the index's size and sha256 as it is finished.
      const shards = index ? index.shardList.files : ['model.safetensors'];
      let failure = null;
      await pool(shards, SHARD_FETCHES, async (file) => {
        if (failure) return;
        try {
          const o = await src.open(file, { optional: false, signal: inner.signal });
          present.push(file);
          if (!index || !index.shardList.sized) total += o.size || 0;
          try {
            await stream({ file, ...o });
          } catch (e) {
            // A shard that fails its checks never stays in the cache (one stopped because
            // another failed is left as it is).
            await o.stored;
            if (!inner.signal.aborted) await src.forget(file);
            throw e;
          }
          await o.stored;
        } catch (e) {
          if (!failure) failure = e;
          inner.abort(e);
        }
      });
      if (failure) throw signal && signal.aborted ? abortError(signal) : failure;
      for (const w of src.warnings || []) onProgress({ phase: 'warning', error: w, message: w.message, code: w.code });
      // 3. Parse, widen and upload to the GPU.
      onProgress({ phase: 'upload', overallLoaded: done, overallTotal: total, cached });
      if (signal && signal.aborted) throw abortError(signal);
      try {
        model = await engine.loadModel(files, maxSeq);
      } catch (e) {
        throw engineError(e);
      }
      await src.commit(present);
      if (signal) signal.removeEventListener('abort', stop);
      const info = model.info();
      const meta = { ...info, mode: 'detached', engine: engine.info(), bytes: done, fromCache: cached, loadMs: now() - t0, source: src.name() };
      onProgress({ phase: 'ready', overallLoaded: done, overallTotal: total, cached });
      return new Core(engine, model, meta);
    } catch (e) {
      if (signal) signal.removeEventListener('abort', stop);
      try {
        files.free();
      } catch (_) {
        /* already consumed */
      }
      if (model) model.free();
      engine.free();
      throw e;
    }
  }

  /**
   * Attaches to a backbone server (attached mode across the network): the adapter directory is
   * read from `adapter` (a URL or files) and, in the fused protocol, uploaded once. Either
   * format: Hugging Face peft SHADOW (adapter_config.json, adapter_model.safetensors), found
   * by its adapter_config.json, or the official shadow-peft package's (shadow_config.json,
   * shadow_adapter.safetensors, optional shadow_modules.safetensors).
   */
  async attach({ backbone, adapter, token, protocol, wire, fallback, timeoutMs, cache = true, signal } = {}) {
    if (!this.model) throw new ShadowError('disposed', 'the model was disposed');
    if (this.busy) throw new ShadowError('busy', 'a generation is running on this model');
    if (typeof backbone !== 'string' || !backbone) throw new ShadowError('invalid-argument', 'attach: `backbone` must be the URL of a backbone server');
    if (!adapter) throw new ShadowError('invalid-argument', 'attach: `adapter` must be the URL (or files) of the shadow adapter directory');
    const src = openSource(adapter instanceof URL ? adapter.href : adapter, { cache, signal });
    const files = this.engine.adapterFiles(src.name());
    try {
      const opened = [];
      const peftConfig = await src.open('adapter_config.json', { optional: true });
      const list = peftConfig
        ? [['adapter_model.safetensors', false]]
        : [['shadow_config.json', false], ['shadow_adapter.safetensors', false], ['shadow_modules.safetensors', true]];
      if (peftConfig) opened.push({ file: 'adapter_config.json', ...peftConfig });
      for (const [file, optional] of list) {
        const o = await src.open(file, { optional });
        if (o) opened.push({ file, ...o });
      }
      for (const o of opened) {
        if (o.size) files.reserve(o.file, o.size);
        await pump(o.body, (chunk) => files.append(o.file, chunk), () => {}, signal);
        files.finish(o.file);
        await o.stored;
      }
    } catch (e) {
      files.free();
      throw engineError(e);
    }
    this.busy = true;
    try {
      // Consumes `files`.
      await this.model.attach(files, { backbone, token, protocol, wire, fallback, timeoutMs });
    } catch (e) {
      throw engineError(e);
    } finally {
      this.busy = false;
    }
    this.meta = { ...this.meta, mode: 'attached', backbone, protocol: protocol || 'fused' };
    return this.meta;
  }

  /** Back to detached: the shadow alone. */
  detach() {
    if (!this.model) throw new ShadowError('disposed', 'the model was disposed');
    try {
      this.model.detach();
    } catch (e) {
      throw engineError(e);
    }
    this.meta = { ...this.meta, mode: 'detached', backbone: undefined, protocol: undefined };
    return this.meta;
  }

  encode(text, addSpecial = true) {
    try {
      return Array.from(this.model.encode(text, addSpecial));
    } catch (e) {
      throw engineError(e);
    }
  }

  decode(ids) {
    try {
      return this.model.decode(Uint32Array.from(ids));
    } catch (e) {
      throw engineError(e);
    }
  }

  applyChatTemplate(messages, addGenerationPrompt = true) {
    try {
      return this.model.applyChatTemplate(messages, addGenerationPrompt);
    } catch (e) {
      throw engineError(e);
    }
  }

  /** Renders and tokenises a conversation for the next answer: { ids, droppedMessages }. */
  renderChat(messages, maxTokens, truncation) {
    try {
      return this.model.renderChat(messages, maxTokens, truncation);
    } catch (e) {
      throw engineError(e);
    }
  }

  /**
   * Runs a generation, calling `onToken({ token, text })` for every token.
   * `prompt` is the whole sequence: the session reuses the positions it holds of it.
   * Resolves to { tokens, text, stopReason, promptTokens, cachedTokens, ttftMs, prefillTokS, decodeTokS }.
   */
  async generate(prompt, options = {}, onToken = () => {}, isAborted = () => false) {
    if (this.busy) throw new ShadowError('busy', 'a generation is already running on this model');
    if (!this.model) throw new ShadowError('disposed', 'the model was disposed');
    this.busy = true;
    try {
      const { stop = [], chatEos = false, ...rest } = options;
      const ids = typeof prompt === 'string' ? this.encode(prompt, !chatEos) : Array.from(prompt);
      const wasmOpts = toWasmOptions(rest);
      if (chatEos) {
        const end = this.model.tokenId('<|im_end|>');
        if (end !== undefined && end !== null) wasmOpts.eosIds = [...(wasmOpts.eosIds || []), end];
      }
      let cachedTokens;
      try {
        cachedTokens = this.model.start(Uint32Array.from(ids), wasmOpts);
      } catch (e) {
        throw engineError(e);
      }
      const stops = Array.isArray(stop) ? stop : [stop];
      const hold = stops.reduce((n, s) => Math.max(n, s.length - 1), 0);
      let text = '';
      let emitted = 0;
      let stopReason = null;
      const tokens = [];
      const modes = [];
      const traffic0 = this.model.traffic();
      let trafficFirst = null;
      const t0 = now();
      let tFirst = null;
      for (;;) {
        if (isAborted()) {
          this.model.cancel();
          stopReason = 'abort';
          break;
        }
        let step;
        try {
          step = await this.model.next();
        } catch (e) {
          throw engineError(e);
        }
        if (!step) break;
        if (tFirst === null) {
          tFirst = now();
          trafficFirst = this.model.traffic();
        }
        tokens.push(step.token);
        modes.push(step.mode);
        text += step.text;
        let piece;
        const hit = stops.map((s) => (s ? text.indexOf(s) : -1)).filter((i) => i >= 0);
        if (hit.length) {
          text = text.slice(0, Math.min(...hit));
          piece = text.slice(emitted);
          emitted = text.length;
          onToken({ token: step.token, text: piece, mode: step.mode });
          this.model.cancel();
          stopReason = 'stop';
          break;
        }
        const upto = Math.max(emitted, text.length - hold);
        piece = text.slice(emitted, upto);
        emitted = upto;
        onToken({ token: step.token, text: piece, mode: step.mode });
      }
      if (emitted < text.length) onToken({ token: null, text: text.slice(emitted), mode: modes[modes.length - 1] });
      const tEnd = now();
      const reason = stopReason || this.model.stopReason() || 'length';
      const decoded = Math.max(0, tokens.length - 1);
      const traffic = trafficDelta(traffic0, trafficFirst, this.model.traffic(), decoded);
      return {
        tokens,
        modes,
        text,
        backbone: traffic || undefined,
        speculation: speculationReport(this.model.speculation(), tokens.length, traffic),
        stopReason: reason === 'callback' ? 'stop' : reason,
        promptTokens: ids.length,
        cachedTokens,
        ttftMs: tFirst === null ? null : tFirst - t0,
        prefillTokS: tFirst === null ? 0 : (ids.length - cachedTokens) / ((tFirst - t0) / 1000),
        decodeTokS: decoded === 0 ? 0 : decoded / ((tEnd - tFirst) / 1000),
      };
    } finally {
      this.busy = false;
    }
  }

  /** Destroys the GPU device, as a driver reset would (tests the device-lost path). */
  debugLoseDevice() {
    this.engine.debugLoseDevice();
  }

  dispose() {
    if (this.model) this.model.free();
    if (this.engine) this.engine.free();
    this.model = null;
    this.engine = null;
  }
}

const OPTION_NAMES = {
  maxNewTokens: 'maxNewTokens',
  max_tokens: 'maxNewTokens',
  temperature: 'temperature',
  topK: 'topK',
  top_k: 'topK',
  topP: 'topP',
  top_p: 'topP',
  repetitionPenalty: 'repetitionPenalty',
  seed: 'seed',
  ignoreEos: 'ignoreEos',
  eosIds: 'eosIds',
  escalate: 'escalate',
  speculate: 'speculate',
};

function toWasmOptions(o) {
  const out = {};
  for (const [k, v] of Object.entries(o)) {
    if (v === undefined || k === 'signal') continue;
    const name = OPTION_NAMES[k];
    if (!name) throw new ShadowError('invalid-argument', `unknown generation option \`${k}\``);
    out[name] = name === 'escalate' ? toEscalate(v) : name === 'speculate' ? toSpeculate(v) : v;
  }
  return out;
}

function toSpeculate(s) {
  if (s === 'auto') return 'auto';
  const keys = s && typeof s === 'object' ? Object.keys(s).filter((k) => s[k] !== undefined) : [];
  if (keys.length === 1 && keys[0] === 'draft' && Number.isInteger(s.draft) && s.draft >= 0) return { draft: s.draft };
  throw new ShadowError('invalid-argument', `speculate must be 'auto' or { draft: K } with K a whole number, not ${JSON.stringify(s)}`);
}

function toEscalate(e) {
  if (!e || typeof e !== 'object') throw new ShadowError('invalid-argument', 'escalate must be { marker?, minProb? }');
  const out = {};
  for (const [k, v] of Object.entries(e)) {
    if (v === undefined) continue;
    if (k === 'marker') out.marker = v;
    else if (k === 'minProb' || k === 'min_prob') out.minProb = v;
    else throw new ShadowError('invalid-argument', `unknown escalate option \`${k}\``);
  }
  return out;
}

/** Speculation's counts, with tokens per base pass and per round trip (undefined without). */
function speculationReport(s, tokens, traffic) {
  if (!s) return undefined;
  const out = { ...s, tokensPerPass: tokens / Math.max(1, s.rounds + s.plainSteps) };
  if (traffic) out.tokensPerRoundTrip = tokens / Math.max(1, traffic.roundTrips);
  return out;
}

/** Backbone traffic of one generation, and per decoded token (after the first). */
function trafficDelta(start, first, end, decoded) {
  if (!end) return undefined;
  const keys = ['roundTrips', 'bytesSent', 'bytesReceived'];
  const zero = { roundTrips: 0, bytesSent: 0, bytesReceived: 0 };
  const a = start || zero;
  const f = first || end;
  const out = Object.fromEntries(keys.map((k) => [k, end[k] - a[k]]));
  out.perDecodedToken = Object.fromEntries(keys.map((k) => [k, decoded ? (end[k] - f[k]) / decoded : 0]));
  if (end.fallbackError) out.fallbackError = end.fallbackError;
  return out;
}
