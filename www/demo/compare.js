// Attached vs detached, side by side: two instances of the same shadow model (each in its own
// worker), one of them attached to a backbone server; then a speculative attached run (the
// shadow drafts, the backbone verifies several tokens per round trip), and an escalating run
// that starts detached and hands over to the attached model on a marker.
import { ShadowModel } from 'shadowpeft-web';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
for (const k of ['export', 'adapter', 'backbone', 'token', 'protocol', 'wire', 'marker', 'speculate', 'prompt']) {
  if (params.has(k)) $(k).value = params.get(k);
}

let detached = null;
let attached = null;
const runs = {};

function status(text, error = false) {
  $('status').textContent = text;
  $('status').className = error ? 'meta error' : 'meta';
}

async function load() {
  $('run').disabled = true;
  for (const m of [detached, attached]) if (m) await m.dispose();
  detached = attached = null;
  try {
    status('loading the shadow model twice (the second load comes from the cache)…');
    detached = await ShadowModel.load($('export').value);
    attached = await ShadowModel.load($('export').value);
    status(`attaching to ${$('backbone').value}…`);
    await attached.attach({
      backbone: $('backbone').value,
      adapter: $('adapter').value,
      token: $('token').value || undefined,
      protocol: $('protocol').value,
      wire: $('wire').value,
    });
    const i = detached.info;
    status(`ready: ${(i.bytes / 1024).toFixed(0)} KiB shadow model on ${i.engine.adapter || i.engine.backend}; backbone ${$('backbone').value} (${$('protocol').value}, ${$('wire').value})`);
    $('run').disabled = false;
    await examples();
    if (params.has('autorun')) run();
  } catch (e) {
    status(`${e.code || 'error'}: ${e.message}`, true);
  }
}

/** Example prompts from the model's golden.json, when it lists some. */
async function examples() {
  const box = $('examples');
  box.textContent = '';
  try {
    const url = new URL('../golden.json', new URL($('export').value, location.href));
    const g = await (await fetch(url)).json();
    for (const p of g.prompts || []) {
      const text = p.messages && p.messages[0] && p.messages[0].content;
      if (typeof text !== 'string') continue;
      const b = document.createElement('button');
      b.textContent = text;
      b.onclick = () => {
        $('prompt').value = text;
        run();
      };
      box.appendChild(b);
    }
  } catch (_) {
    /* no examples */
  }
}

/** Marks the first difference between the detached and attached columns. */
function divergence() {
  const a = runs.detached;
  const b = runs.attached;
  if (!a || !b) return;
  const n = Math.min(a.tokens.length, b.tokens.length);
  let i = 0;
  while (i < n && a.tokens[i] === b.tokens[i]) i++;
  const differ = i < n || (a.done && b.done && a.tokens.length !== b.tokens.length);
  for (const r of [a, b]) r.spans.forEach((s, k) => s.classList.toggle('diverged', differ && k >= i));
  $('divergence').textContent = differ ? `The outputs first differ at token ${i + 1}.` : `Identical so far (${n} tokens).`;
}

async function column(name, model, ids, extra = {}) {
  const out = $(`out-${name}`);
  const stats = $(`stats-${name}`);
  out.textContent = '';
  stats.textContent = 'running…';
  const r = (runs[name] = { tokens: [], spans: [], done: false });
  const it = model.generate(ids, { maxNewTokens: Number($('max').value), ...extra });
  for await (const t of it) {
    if (t.token === null) {
      if (r.spans.length) r.spans[r.spans.length - 1].textContent += t.text;
      continue;
    }
    const s = document.createElement('span');
    s.className = t.mode;
    s.textContent = t.text;
    s.title = `token ${r.tokens.length + 1}: id ${t.token}, ${t.mode}`;
    out.appendChild(s);
    r.tokens.push(t.token);
    r.spans.push(s);
    if (name === 'detached' || name === 'attached') divergence();
  }
  const res = await it.done;
  r.done = true;
  if (name === 'detached' || name === 'attached') divergence();
  let line = `${res.tokens.length} tokens, ${res.decodeTokS.toFixed(1)} tok/s, first token after ${res.ttftMs === null ? '-' : res.ttftMs.toFixed(0)} ms`;
  if (res.backbone && name === 'attached') {
    const p = res.backbone.perDecodedToken;
    line += `; backbone per token: ${p.roundTrips.toFixed(1)} round trips, ${p.bytesSent.toFixed(0)} B sent, ${p.bytesReceived.toFixed(0)} B received`;
  }
  if (res.speculation) {
    const s = res.speculation;
    line += `; ${s.tokensPerRoundTrip === undefined ? '' : `${s.tokensPerRoundTrip.toFixed(2)} tokens per round trip, `}${s.accepted} of ${s.drafted} drafts stood in ${s.rounds} rounds`;
    const plain = runs.attached;
    if (plain && plain.done) line += res.tokens.join() === plain.tokens.join() ? '; same tokens as attached' : '; DIFFERS from attached';
  }
  if (res.backbone && name === 'speculative') line += `; ${res.backbone.roundTrips} round trips in all (attached: ${runs.attached && runs.attached.roundTrips})`;
  if (name === 'attached' && res.backbone) r.roundTrips = res.backbone.roundTrips;
  if (name === 'escalating') {
    const k = res.modes.indexOf('attached');
    line += k < 0 ? '; stayed detached' : `; escalated at token ${k + 1}`;
  }
  if (res.backbone && res.backbone.fallbackError) line += `; backbone failed: ${res.backbone.fallbackError}`;
  stats.textContent = line;
  return res;
}

async function run() {
  $('run').disabled = true;
  $('divergence').textContent = '';
  try {
    const text = $('prompt').value;
    const prompt = $('chat').checked && detached.info.hasChatTemplate ? await detached.applyChatTemplate([{ role: 'user', content: text }], true) : text;
    const ids = await detached.encode(prompt, !$('chat').checked);
    await Promise.all([column('detached', detached, ids), column('attached', attached, ids)]);
    const spec = $('speculate').value;
    if (spec) await column('speculative', attached, ids, { speculate: spec === 'auto' ? 'auto' : { draft: Number(spec) } });
    else $('stats-speculative').textContent = 'speculation off';
    const marker = $('marker').value;
    if (marker) await column('escalating', attached, ids, { escalate: { marker } });
    else $('stats-escalating').textContent = 'no marker set';
    document.body.dataset.done = 'true';
  } catch (e) {
    $('divergence').textContent = `${e.code || 'error'}: ${e.message}`;
    $('divergence').className = 'meta error';
  } finally {
    $('run').disabled = false;
  }
}

$('load').onclick = load;
$('run').onclick = run;
if (params.has('autoload') || params.has('autorun')) load();
