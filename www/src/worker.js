// Dedicated worker: owns the engine and answers the main thread's calls (see index.js).
// Messages in:  { id, method, args }; out: { id, event, data } for progress/tokens and
// { id, result } or { id, error } when a call ends.

import { Core } from './core.js';
import { toPlain } from './errors.js';

let core = null;
const aborted = new Set();

const methods = {
  async load({ source, options }, post) {
    if (core) core.dispose();
    core = null;
    const controller = new AbortController();
    methods._loadAbort = controller;
    core = await Core.load(source, { ...options, signal: controller.signal, onProgress: (p) => post('progress', { ...p, error: undefined }) });
    return core.meta;
  },
  abortLoad() {
    if (methods._loadAbort) methods._loadAbort.abort(new Error('load aborted'));
  },
  attach({ options }) {
    return need().attach(options);
  },
  detach() {
    return need().detach();
  },
  encode({ text, addSpecial }) {
    return need().encode(text, addSpecial);
  },
  decode({ ids }) {
    return need().decode(ids);
  },
  applyChatTemplate({ messages, addGenerationPrompt }) {
    return need().applyChatTemplate(messages, addGenerationPrompt);
  },
  renderChat({ messages, maxTokens, truncation }) {
    return need().renderChat(messages, maxTokens, truncation);
  },
  async generate({ prompt, options, callId }, post) {
    return need().generate(prompt, options, (t) => post('token', t), () => aborted.has(callId));
  },
  debugLoseDevice() {
    need().debugLoseDevice();
  },
  abort({ callId }) {
    aborted.add(callId);
  },
  dispose() {
    if (core) core.dispose();
    core = null;
  },
};

function need() {
  if (!core) throw Object.assign(new Error('no model loaded'), { code: 'disposed' });
  return core;
}

self.onmessage = async (ev) => {
  const { id, method, args } = ev.data;
  const post = (event, data) => self.postMessage({ id, event, data });
  try {
    const fn = methods[method];
    if (!fn) throw new Error(`unknown method ${method}`);
    const result = await fn(args || {}, post);
    self.postMessage({ id, result });
  } catch (e) {
    self.postMessage({ id, error: toPlain(e) });
  } finally {
    if (args && args.callId !== undefined && method === 'generate') aborted.delete(args.callId);
  }
};
