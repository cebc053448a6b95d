import { ShadowModel } from 'shadowpeft-web';

const $ = (id) => document.getElementById(id);
let model = null;
let history = [];
let abort = null;

function status(text, error = false) {
  $('status').textContent = text;
  $('status').className = error ? 'meta error' : 'meta';
}

function fmtBytes(n) {
  return n > 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MiB` : `${(n / 1024).toFixed(0)} KiB`;
}

async function load(source) {
  if (model) await model.dispose();
  model = null;
  history = [];
  $('log').textContent = '';
  setChat(false);
  status('loading…');
  try {
    model = await ShadowModel.load(source, {
      worker: $('worker').checked,
      weights: $('weights').value,
      onProgress: (p) => {
        if (p.phase === 'download') {
          $('progress').max = p.overallTotal || 1;
          $('progress').value = p.overallLoaded;
          status(`${p.cached ? 'reading cache' : 'downloading'} ${p.file}: ${fmtBytes(p.overallLoaded)} of ${fmtBytes(p.overallTotal)}`);
        } else if (p.phase === 'upload') status('uploading weights to the GPU…');
        else if (p.phase === 'warning') status(p.message, true);
      },
    });
    const i = model.info;
    status(`ready: ${fmtBytes(i.bytes)} ${i.fromCache ? 'from cache' : 'downloaded'} in ${(i.loadMs / 1000).toFixed(1)} s on ${i.engine.adapter || i.engine.backend}, ${i.weights} weights${i.hasChatTemplate ? '' : ' (no chat template: plain completion)'}`);
    setChat(true);
  } catch (e) {
    status(`${e.code || 'error'}: ${e.message}`, true);
  }
}

function setChat(on) {
  $('prompt').disabled = !on;
  $('send').disabled = !on;
}

function append(cls, text) {
  const span = document.createElement('span');
  span.className = cls;
  span.textContent = text;
  $('log').appendChild(span);
  return span;
}

$('load').onclick = () => load($('url').value);
$('dir').onchange = (ev) => ev.target.files.length && load(ev.target.files);
$('stop').onclick = () => abort && abort.abort();

$('chat').onsubmit = async (ev) => {
  ev.preventDefault();
  const text = $('prompt').value.trim();
  if (!text || !model) return;
  $('prompt').value = '';
  setChat(false);
  $('stop').disabled = false;
  append('user', `${history.length ? '\n' : ''}you: ${text}\n`);
  const out = append('assistant', '');
  abort = new AbortController();
  const opts = { maxNewTokens: Number($('max').value), temperature: Number($('temp').value), signal: abort.signal };
  const t0 = performance.now();
  let n = 0;
  let reply = '';
  try {
    let stream;
    if (model.info.hasChatTemplate) {
      history.push({ role: 'user', content: text });
      stream = await model.chat.completions.create({ messages: history, stream: true, truncation: 'auto', ...opts, max_tokens: opts.maxNewTokens, maxNewTokens: undefined });
      let first = 0;
      for await (const chunk of stream) {
        const piece = chunk.choices[0].delta.content || '';
        if (piece) n++;
        if (piece && !first) first = performance.now() - t0;
        reply += piece;
        out.textContent = reply;
        $('speed').textContent = `${n} chunks, ${(n / ((performance.now() - t0) / 1000)).toFixed(1)} tok/s`;
        // The last chunk carries the usage: how much of the conversation came from the cache.
        const u = chunk.usage;
        if (u) {
          const cached = u.prompt_tokens_details.cached_tokens;
          $('speed').textContent = `${u.completion_tokens} tokens; prompt ${u.prompt_tokens} tokens, ${cached} reused from the cache, ${u.prompt_tokens - cached} prefilled; first token after ${first.toFixed(0)} ms`;
          if (chunk.dropped_messages) append('meta', `\n[${chunk.dropped_messages} oldest messages dropped to fit the context]`);
        }
      }
      history.push({ role: 'assistant', content: reply });
    } else {
      const it = model.generate(text, opts);
      for await (const t of it) {
        n++;
        reply += t.text;
        out.textContent = reply;
      }
      const r = await it.done;
      $('speed').textContent = `${r.tokens.length} tokens; prefill ${r.prefillTokS.toFixed(0)} tok/s, decode ${r.decodeTokS.toFixed(1)} tok/s, first token after ${r.ttftMs.toFixed(0)} ms`;
    }
  } catch (e) {
    append('error', `\n[${e.code || 'error'}: ${e.message}]`);
  } finally {
    abort = null;
    $('stop').disabled = true;
    setChat(true);
    $('prompt').focus();
  }
};

const params = new URLSearchParams(location.search);
if (params.get('model')) $('url').value = params.get('model');
if (params.has('autoload')) load($('url').value);
