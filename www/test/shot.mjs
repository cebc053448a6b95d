// Opens a page in headless Chromium (WebGPU on SwiftShader), waits for `body[data-done]`, and
// saves a screenshot: node test/shot.mjs URL OUT.png
import { launch } from './harness.mjs';

const [url, out] = process.argv.slice(2);
const { context, close } = await launch();
try {
  const page = await context.newPage();
  page.on('console', (m) => console.log(`[${m.type()}] ${m.text()}`));
  await page.goto(url);
  await page.waitForSelector('body[data-done="true"]', { timeout: 120000 });
  await page.screenshot({ path: out, fullPage: true });
  console.log(await page.evaluate(() => document.body.innerText));
} finally {
  await close();
}
