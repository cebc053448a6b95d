// shadowpeft-web: ShadowPEFT models in the browser on WebGPU.
//
//   import { ShadowModel } from 'shadowpeft-web';
//   const model = await ShadowModel.load('https://example.com/my-shadow/', { onProgress });
//   for await (const { text } of model.generate('Hello', { maxNewTokens: 32 })) out.textContent += text;
//
// By default the engine runs in a dedicated Web Worker (the page stays responsive);
// pass { worker: false } to run it on the calling thread.

import { Core } from './core.js';
import { ShadowError, abortError, fromPlain } from './errors.js';

import { CACHE_NAME } from './fetch.js';

export { ShadowError } from './errors.js';
export { CACHE_NAME };

let nextCallId = 1;

/** Worker backend: the same calls as Core, over postMessage. */
class WorkerBackend {
  constructor(worker) {
    this.worker = worker;
    this.pending = new Map();
    this.dead = null;
    worker.onmessage = (ev) => {
      const { id, event, data, result, error } = ev.data;
      const p = this.pending.get(id);
      if (!p) return;
      if (event) {
        if (p.onEvent) p.onEvent(event, data);
        return;
      }
      this.pending.delete(id);
      if (error) p.reject(fromPlain(error));
      else p.resolve(result);
    };
    worker.onerror = (ev) => {
      this.dead = new ShadowError('internal', `worker failed: ${ev.message || 'unknown error'}`);
      for (const p of this.pending.values()) p.reject(this.dead);
      this.pending.clear();
    };
  }

  call(method, args, onEvent) {
    if (this.dead) return Promise.reject(this.dead);
    const id = nextCallId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, onEvent });
      this.worker.postMessage({ id, method, args });
    });
  }

  post(method, args) {
    this.worker.postMessage({ id: nextCallId++, method, args });
  }

  terminate() {
    this.worker.terminate();
    this.dead = new ShadowError('disposed', 'the model was disposed');
    for (const p of this.pending.values()) p.reject(this.dead);
    this.pending.clear();
  }
}

function newWorker() {
  return new Worker(new URL('./worker.js', import.meta.url), { type: 'module', name: 'shadowpeft-web' });
}

/** A detached ShadowPEFT model (or any supported causal LM) running on WebGPU. */
export class ShadowModel {
  /** @private */
  constructor(backend, meta, onDeviceLost) {
    this._backend = backend;
    this._onDeviceLost = onDeviceLost;
    this._lost = null;
    this._meta = meta;
    this._disposed = false;
    const self = this;
    this.chat = {
      completions: {
        create(params) {
          return self._chatCreate(params);
        },
      },
    };
  }

  /**
   * Loads a model directory (Hugging Face layout: config.json, *.safetensors, tokenizer.json,
   * tokenizer_config.json) from a URL, or from local files (a FileList from a directory picker,
   * an array of File, or a Map name -> Blob).
   * @param {string|URL|FileList|File[]|Map<string, Blob>} source
   * @param {import('./index').LoadOptions} [options]
   * @returns {Promise<ShadowModel>}
   */
  static async load(source, options = {}) {
    const { onProgress, onDeviceLost, signal, worker = true, ...rest } = options;
    if (signal && signal.aborted) throw abortError(signal);
    const src = source instanceof URL ? source.href : source;
    if (!worker) {
      const core = await Core.load(src, { ...rest, onProgress, signal });
      return new ShadowModel({ core }, core.meta, onDeviceLost);
    }
    if (typeof navigator === 'undefined' || !navigator.gpu) {
      throw new ShadowError('no-webgpu', 'WebGPU is not available here (navigator.gpu is missing): use a browser with WebGPU enabled, over https or localhost');
    }
    const w = new WorkerBackend(newWorker());
    const onAbort = () => w.post('abortLoad', {});
    if (signal) signal.addEventListener('abort', onAbort, { once: true });
    try {
      const meta = await w.call('load', { source: src, options: rest }, (event, data) => {
        if (event === 'progress' && onProgress) onProgress(data);
      });
      return new ShadowModel({ worker: w }, meta, onDeviceLost);
    } catch (e) {
      w.terminate();
      if (signal && signal.aborted) throw abortError(signal);
      throw e;
    } finally {
      if (signal) signal.removeEventListener('abort', onAbort);
    }
  }

  /** `{ vocabSize, eosIds, maxSeq, weights, hasTokenizer, hasChatTemplate, engine, bytes, fromCache, loadMs }` */
  get info() {
    return this._meta;
  }

  _check() {
    if (this._disposed) throw new ShadowError('disposed', 'the model was disposed');
    if (this._lost) throw this._lost;
  }

  /** Records a lost device (once) and tells the application. */
  _failed(e) {
    if (e && e.code === 'device-lost' && !this._lost) {
      this._lost = e;
      if (this._onDeviceLost) {
        try {
          this._onDeviceLost(e);
        } catch (_) {
          /* the application's handler failed; the error still propagates */
        }
      }
    }
    return e;
  }

  async _call(method, args) {
    this._check();
    const b = this._backend;
    try {
      if (b.core) return await b.core[method](...Object.values(args));
      return await b.worker.call(method, args);
    } catch (e) {
      throw this._failed(e);
    }
  }

  /** Destroys the GPU device as a driver reset would, to exercise device-loss handling. */
  _debugLoseDevice() {
    return this._call('debugLoseDevice', {});
  }

  /**
   * Attached mode across the network: connects this model to a backbone server
   * (`shadowpeft serve`) with its shadow adapter. Generations then produce the official
   * attached output; the shadow runs here, the frozen base on the server.
   * @param {import('./index').AttachOptions} options
   */
  async attach(options) {
    const { signal, ...rest } = options || {};
    if (signal && signal.aborted) throw abortError(signal);
    const o = { ...rest, adapter: rest.adapter instanceof URL ? rest.adapter.href : rest.adapter };
    const b = this._backend;
    if (!b.core && o.adapter && typeof o.adapter !== 'string' && !(o.adapter instanceof Map)) o.adapter = Array.from(o.adapter);
    this._meta = b.core ? await this._call('attach', { options: { ...o, signal } }) : await this._call('attach', { options: o });
    return this._meta;
  }

  /** Back to detached mode (the shadow alone). */
  async detach() {
    this._meta = await this._call('detach', {});
    return this._meta;
  }

  /** Text -> token ids. */
  encode(text, addSpecial = true) {
    return this._call('encode', { text, addSpecial });
  }

  /** Token ids -> text. */
  decode(ids) {
    return this._call('decode', { ids: Array.from(ids) });
  }

  /** Renders the model's chat template. */
  applyChatTemplate(messages, addGenerationPrompt = true) {
    return this._call('applyChatTemplate', { messages, addGenerationPrompt });
  }

  /**
   * Generates after `prompt` (text, or an array of token ids), yielding `{ token, text }` as
   * tokens arrive. When the iterator finishes, `result` holds the summary.
   * @param {string|number[]} prompt
   * @param {import('./index').GenerateOptions} [options]
   */
  generate(prompt, options = {}) {
    this._check();
    const { signal, ...opts } = options;
    const queue = [];
    let wake = null;
    let finished = false;
    let failure = null;
    const handle = { result: null };
    const push = (item) => {
      queue.push(item);
      if (wake) wake();
    };
    const callId = nextCallId++;
    const b = this._backend;
    let onAbort = null;
    const run = async () => {
      if (signal && signal.aborted) throw abortError(signal);
      if (b.core) {
        let abortedFlag = false;
        onAbort = () => (abortedFlag = true);
        if (signal) signal.addEventListener('abort', onAbort, { once: true });
        return b.core.generate(prompt, opts, push, () => abortedFlag);
      }
      onAbort = () => b.worker.post('abort', { callId });
      if (signal) signal.addEventListener('abort', onAbort, { once: true });
      return b.worker.call('generate', { prompt: typeof prompt === 'string' ? prompt : Array.from(prompt), options: opts, callId }, (event, data) => {
        if (event === 'token') push(data);
      });
    };
    const done = run().then(
      (r) => {
        handle.result = r;
        finished = true;
        if (wake) wake();
      },
      (e) => {
        failure = this._failed(e);
        finished = true;
        if (wake) wake();
      },
    );
    const iter = {
      async next() {
        for (;;) {
          if (queue.length) return { value: queue.shift(), done: false };
          if (finished) {
            if (signal && onAbort) signal.removeEventListener('abort', onAbort);
            if (failure) throw failure;
            if (signal && signal.aborted && handle.result && handle.result.stopReason === 'abort') throw abortError(signal);
            return { value: undefined, done: true };
          }
          await new Promise((r) => (wake = r));
          wake = null;
        }
      },
      async return() {
        if (!finished) {
          if (b.core) onAbort && onAbort();
          else b.worker.post('abort', { callId });
          await done;
        }
        return { value: undefined, done: true };
      },
      [Symbol.asyncIterator]() {
        return this;
      },
      /** Resolves to the summary ({ tokens, text, stopReason, promptTokens, ttftMs, prefillTokS, decodeTokS }). */
      get done() {
        return done.then(() => {
          if (failure) throw failure;
          return handle.result;
        });
      },
    };
    return iter;
  }

  /**
   * OpenAI-style chat completions. Every call renders the whole `messages` list with the
   * model's chat template and tokenises it; the model's session keeps the KV positions it
   * already holds of it (the common prefix with the previous turn), so a continued
   * conversation prefills only what is new. `usage.prompt_tokens_details.cached_tokens` says
   * how many were reused. When the prompt and `max_tokens` exceed the model's positions the
   * call fails with code 'context-length', unless `truncation: 'auto'` drops the oldest turns
   * (reported as `dropped_messages`).
   */
  async _chatCreate(params) {
    const { messages, stream = false, signal, model: _model, stop, truncation, ...rest } = params || {};
    if (!Array.isArray(messages)) throw new ShadowError('invalid-argument', 'chat.completions.create: `messages` must be an array of { role, content }');
    if (truncation !== undefined && truncation !== 'auto' && truncation !== 'disabled') {
      throw new ShadowError('invalid-argument', `chat.completions.create: truncation must be 'auto' or 'disabled', not ${JSON.stringify(truncation)}`);
    }
    const options = { ...rest, signal, stop, chatEos: true };
    if (options.max_tokens !== undefined) {
      options.maxNewTokens = options.max_tokens;
      delete options.max_tokens;
    }
    const maxTokens = options.maxNewTokens === undefined ? 64 : options.maxNewTokens;
    if (!Number.isInteger(maxTokens) || maxTokens < 0) throw new ShadowError('invalid-argument', `chat.completions.create: max_tokens must be a non-negative integer, not ${maxTokens}`);
    const rendered = await this._call('renderChat', { messages, maxTokens, truncation });
    const prompt = Array.from(rendered.ids);
    const dropped = rendered.droppedMessages;
    const id = `chatcmpl-${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
    const created = Math.floor(Date.now() / 1000);
    const modelName = this._meta.source;
    const finish = (r) => (r.stopReason === 'length' ? 'length' : 'stop');
    const usage = (r) => ({
      prompt_tokens: prompt.length,
      completion_tokens: r.tokens.length,
      total_tokens: prompt.length + r.tokens.length,
      prompt_tokens_details: { cached_tokens: r.cachedTokens },
    });
    const it = this.generate(prompt, options);
    if (!stream) {
      let content = '';
      for await (const t of it) content += t.text;
      const r = await it.done;
      return {
        id,
        object: 'chat.completion',
        created,
        model: modelName,
        choices: [{ index: 0, message: { role: 'assistant', content }, finish_reason: finish(r) }],
        usage: usage(r),
        dropped_messages: dropped,
        backbone: r.backbone,
        speculation: r.speculation,
      };
    }
    return (async function* () {
      yield { id, object: 'chat.completion.chunk', created, model: modelName, choices: [{ index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null }] };
      for await (const t of it) {
        if (t.text) yield { id, object: 'chat.completion.chunk', created, model: modelName, choices: [{ index: 0, delta: { content: t.text }, finish_reason: null }] };
      }
      const r = await it.done;
      yield { id, object: 'chat.completion.chunk', created, model: modelName, choices: [{ index: 0, delta: {}, finish_reason: finish(r) }], usage: usage(r), dropped_messages: dropped, backbone: r.backbone, speculation: r.speculation };
    })();
  }

  /** Frees the GPU memory (and the worker). The object cannot be used afterwards. */
  async dispose() {
    if (this._disposed) return;
    this._disposed = true;
    const b = this._backend;
    if (b.core) b.core.dispose();
    else b.worker.terminate();
  }
}

/** Removes every cached model file (Cache Storage). */
export async function clearCache() {
  if (typeof caches !== 'undefined') await caches.delete(CACHE_NAME);
}
