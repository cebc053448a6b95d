// Typed errors of the package: every failure is a ShadowError with a stable `code`.

/**
 * @typedef {'no-webgpu'|'unsupported-device'|'not-found'|'network'|'http'|'quota'|'invalid-model'|
 *   'aborted'|'device-lost'|'busy'|'invalid-argument'|'context-length'|'disposed'|'backbone'|'internal'} ShadowErrorCode
 */

export class ShadowError extends Error {
  /**
   * @param {ShadowErrorCode} code
   * @param {string} message
   * @param {{ cause?: unknown, url?: string, status?: number }} [extra]
   */
  constructor(code, message, extra = {}) {
    super(message, extra.cause === undefined ? undefined : { cause: extra.cause });
    this.name = code === 'aborted' ? 'AbortError' : 'ShadowError';
    this.code = code;
    if (extra.url !== undefined) this.url = extra.url;
    if (extra.status !== undefined) this.status = extra.status;
  }
}

/** Serialisable form, for crossing the worker boundary. */
export function toPlain(e) {
  if (e instanceof ShadowError) return { code: e.code, message: e.message, url: e.url, status: e.status };
  return { code: 'internal', message: String(e && e.message ? e.message : e) };
}

export function fromPlain(p) {
  return new ShadowError(p.code, p.message, { url: p.url, status: p.status });
}

/** Classifies an error thrown by the wasm engine (a JS Error carrying the engine's message). */
export function engineError(e) {
  if (e instanceof ShadowError) return e;
  const msg = String(e && e.message ? e.message : e);
  if (/GPU unavailable/.test(msg)) {
    const code = /adapter found|refused a device/.test(msg) ? 'no-webgpu' : 'unsupported-device';
    return new ShadowError(code, msg, { cause: e });
  }
  if (/device lost/.test(msg)) return new ShadowError('device-lost', `${msg}: load the model again`, { cause: e });
  if (/GPU error/.test(msg)) return new ShadowError('internal', msg, { cause: e });
  if (/busy/.test(msg)) return new ShadowError('busy', msg, { cause: e });
  if (/^context length: /.test(msg)) return new ShadowError('context-length', msg, { cause: e });
  if (/^backbone /.test(msg)) return new ShadowError('backbone', msg, { cause: e });
  if (/invalid request|out of vocabulary|generation options|attach options|messages:|prompt is empty/.test(msg)) {
    return new ShadowError('invalid-argument', msg, { cause: e });
  }
  return new ShadowError('invalid-model', msg, { cause: e });
}

export function abortError(signal) {
  const r = signal && signal.reason;
  return new ShadowError('aborted', r && r.message ? r.message : 'aborted', { cause: r });
}
