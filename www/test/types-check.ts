// Compile-time check of the package's TypeScript types (tsc --noEmit, strict): the README's
// usage must type-check, and misuse must not.
import { ShadowModel, ShadowError, clearCache, type Progress, type GenerationResult, type ChatCompletionChunk } from 'shadowpeft-web';

async function usage(): Promise<void> {
  const controller = new AbortController();
  const model = await ShadowModel.load('https://example.com/model/', {
    onProgress: (p: Progress) => console.log(p.phase, p.overallLoaded, p.overallTotal),
    onDeviceLost: (e: ShadowError) => console.log(e.code),
    signal: controller.signal,
    cache: true,
    worker: true,
    maxSeq: 1024,
  });
  let text = '';
  const it = model.generate('Hello', { maxNewTokens: 16, temperature: 0.7, topK: 40, topP: 0.9, seed: 1, stop: ['\n'] });
  for await (const t of it) text += t.text;
  const r: GenerationResult = await it.done;
  const n: number = r.tokens.length + r.decodeTokS;
  const ids: number[] = await model.encode('Hello');
  const back: string = await model.decode(ids);
  const full = await model.chat.completions.create({ messages: [{ role: 'user', content: 'Hi' }], max_tokens: 8 });
  const content: string = full.choices[0].message.content;
  const stream = await model.chat.completions.create({ messages: [{ role: 'user', content: 'Hi' }], stream: true });
  for await (const chunk of stream) {
    const c: ChatCompletionChunk = chunk;
    text += c.choices[0].delta.content ?? '';
  }
  const info = await model.attach({ backbone: 'http://localhost:8080', adapter: '/adapter/', protocol: 'stepped', wire: 'f16', fallback: 'detached' });
  const attached: boolean = info.mode === 'attached';
  const esc = model.generate('Move forward', { escalate: { marker: '[REMOTE]', minProb: 0.2 } });
  for await (const t of esc) if (t.mode === 'attached') text += t.text;
  const er = await esc.done;
  const trips: number = (er.backbone?.roundTrips ?? 0) + er.modes.length;
  console.log(attached, trips);
  await model.detach();
  // @ts-expect-error: the protocol is fused or stepped
  void model.attach({ backbone: 'http://x', adapter: '/a/', protocol: 'tcp' });
  try {
    await model.dispose();
  } catch (e) {
    if (e instanceof ShadowError && e.code === 'device-lost') console.log(e.message);
  }
  await clearCache();
  console.log(text, n, back, content, model.info.vocabSize, model.info.engine.adapter);
  // @ts-expect-error: generation options are checked
  model.generate('x', { maxNewTokenz: 3 });
  // @ts-expect-error: error codes are a closed set
  const bad: ShadowError['code'] = 'nope';
  console.log(bad);
}
void usage;
