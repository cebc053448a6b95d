// The browser rows of scripts/bench-chat: time to first token per turn of a scripted chat on
// the demo model through the npm package in headless Chromium (WebGPU on SwiftShader), with
// the session's KV reuse across turns and without it, detached (in a worker) and attached
// through a `shadowpeft serve` backbone on loopback (main thread).
// Usage: node bench/chat.mjs --turns JSON --runs N --native BIN [--max-new-tokens N]
// Prints one JSON array of rows (setup, reuse, ttft_ms per turn, prompt and cached tokens,
// texts, and the backbone traffic per turn) on its last line of stdout.
//
// Time to first token is measured in the page: from the chat.completions.create call (which
// renders the whole conversation with the chat template and tokenises it) to the first
// streamed chunk with text. Without reuse, a one-token generation on an unrelated id before
// each turn leaves the session holding nothing of the conversation, so the whole of it is
// prefilled (the bench checks cached_tokens == 0 then).

import { buildPage, handler, launch, listen, openPage, startServe } from '../test/harness.mjs';

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
};
const turns = JSON.parse(opt('--turns', '[]'));
const runs = Number(opt('--runs', '1'));
const maxNew = Number(opt('--max-new-tokens', '40'));
const nativeBin = opt('--native');
if (!turns.length || !nativeBin) {
  console.error('usage: node bench/chat.mjs --turns JSON --runs N --native BIN [--max-new-tokens N]');
  process.exit(2);
}

/** One scripted chat in the page: a warm-up turn, then every turn timed. */
async function chat(page, origin, backbone, mode, reuse) {
  return page.evaluate(
    async ([u, a, backbone, turns, mode, reuse, maxNew]) => {
      const m = await window.sp.ShadowModel.load(u, { worker: mode === 'detached' });
      if (mode === 'attached') await m.attach({ backbone, adapter: a });
      // A token id that does not start the chat template: generating from it alone leaves the
      // session holding none of the conversation.
      const other = (await m.encode('x', false))[0];
      const forget = async () => {
        const it = m.generate([other], { maxNewTokens: 1 });
        for await (const _ of it);
        await it.done;
      };
      // Warm-up (the device compiles its kernels on the first dispatches), then a fresh chat.
      await m.chat.completions.create({ messages: [{ role: 'user', content: 'Stop.' }], max_tokens: maxNew });
      await forget();
      const messages = [];
      const out = [];
      for (const content of turns) {
        messages.push({ role: 'user', content });
        if (!reuse) await forget();
        const t0 = performance.now();
        let first = null;
        let text = '';
        let usage = null;
        let backbone;
        for await (const c of await m.chat.completions.create({ messages, max_tokens: maxNew, stream: true })) {
          const piece = c.choices[0].delta.content || '';
          if (piece && first === null) first = performance.now() - t0;
          text += piece;
          if (c.usage) [usage, backbone] = [c.usage, c.backbone];
        }
        out.push({
          ttft_ms: first,
          text,
          prompt_tokens: usage.prompt_tokens,
          cached_tokens: usage.prompt_tokens_details.cached_tokens,
          remote: backbone ? { round_trips: backbone.roundTrips, bytes_sent: backbone.bytesSent, bytes_received: backbone.bytesReceived } : null,
        });
        messages.push({ role: 'assistant', content: text });
      }
      await m.dispose();
      return out;
    },
    [`${origin}/m/models/demo/export/`, `${origin}/m/models/demo/adapter/`, backbone, turns, mode, reuse, maxNew],
  );
}

await buildPage();
const server = await listen(handler({ cors: true }));
const origin = `http://127.0.0.1:${server.address().port}`;
const backbone = await startServe(nativeBin, 'models/demo/base');
const { context, close } = await launch();
let code = 0;
try {
  const page = await openPage(context, origin);
  const rows = [];
  for (const mode of ['detached', 'attached']) {
    for (const reuse of [true, false]) {
      const all = [];
      for (let r = 0; r < runs; r++) all.push(await chat(page, origin, backbone.url, mode, reuse));
      const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
      const first = all[0];
      if (!reuse && first.some((t) => t.cached_tokens !== 0)) throw new Error(`browser ${mode}: cached tokens without reuse: ${first.map((t) => t.cached_tokens)}`);
      rows.push({
        setup: `browser ${mode}`,
        reuse,
        ttft_ms: turns.map((_, i) => median(all.map((run) => run[i].ttft_ms))),
        prompt_tokens: first.map((t) => t.prompt_tokens),
        cached_tokens: first.map((t) => t.cached_tokens),
        texts: first.map((t) => t.text),
        remote: first.map((t) => t.remote),
      });
    }
  }
  console.log(JSON.stringify(rows));
} catch (e) {
  console.error(`error: ${e.stack || e}`);
  code = 1;
} finally {
  await close();
  server.close();
  backbone.kill();
}
process.exit(code);
