// Drive the page in a real headless Chromium (Debian's, via playwright-core: no browser download)
// and print what it computed as JSON — used by tests/test_examples_web.py, handy by hand:
//
//   node e2e.mjs URL PHOTO BROKEN_FILE OUT_DIR
//
// Opens URL (the page served by serve.py), opens PHOTO with the file input, reads the pixels the
// page fed to the graph, its heatmap and classes; clicks the second class and reads that
// explanation; saves OUT_DIR/page.png; switches to the next method when the page has several and
// reads that explanation; drops BROKEN_FILE on the page and reads the message; opens
// PHOTO again to show the page still works. CHROMIUM names the browser (default /usr/bin/chromium).
import fs from 'node:fs';
import path from 'node:path';
import process from 'node:process';

import { chromium } from 'playwright-core';

const [url, photo, broken, outDir] = process.argv.slice(2);
if (!outDir) {
  console.error('usage: node e2e.mjs URL PHOTO BROKEN_FILE OUT_DIR');
  process.exit(2);
}
const TIMEOUT = 180_000;
// Flags for a machine without network: no background connections, no sandbox as root.
const ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
              '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'];

async function settled(page, before) { // wait for one more explanation or error than `before`
  await page.waitForFunction(([runs, errors]) => window.onnxcam
    && (window.onnxcam.runs > runs || window.onnxcam.errors > errors) && document.body.dataset.state !== 'running',
  [before.runs, before.errors], { timeout: TIMEOUT });
  return counts(page);
}

const counts = (page) => page.evaluate(() => ({ runs: window.onnxcam.runs, errors: window.onnxcam.errors,
                                                 state: document.body.dataset.state,
                                                 message: document.getElementById('message').textContent }));
const last = (page) => page.evaluate(() => window.onnxcam.last);

async function drop(page, file) { // a real drop event carrying the file, as a person's drag would send
  const data = fs.readFileSync(file).toString('base64');
  await page.evaluate(([name, b64]) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const transfer = new DataTransfer();
    transfer.items.add(new File([bytes], name));
    document.dispatchEvent(new DragEvent('drop', { dataTransfer: transfer, bubbles: true, cancelable: true }));
  }, [path.basename(file), data]);
}

async function main() {
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: ARGS });
  const report = { console: [] };
  try {
    const page = await browser.newPage({ viewport: { width: 1100, height: 800 } });
    page.on('console', (m) => { if (m.type() === 'error') report.console.push(m.text()); });
    page.on('pageerror', (e) => report.console.push(String(e)));
    await page.goto(url, { timeout: TIMEOUT });
    await page.waitForFunction(() => ['ready', 'error'].includes(document.body.dataset.state), null, { timeout: TIMEOUT });
    report.loaded = await counts(page);
    if (report.loaded.state !== 'ready') throw new Error(`the page did not load: ${report.loaded.message}`);
    report.provider = await page.textContent('#provider');

    let now = report.loaded;
    await page.setInputFiles('#file', photo);
    now = await settled(page, now);
    report.first = await last(page);

    const buttons = await page.$$eval('button.class', (bs) => bs.map((b) => Number(b.dataset.class)));
    report.clicked = buttons.find((c) => c !== report.first.target);
    await page.click(`button.class[data-class="${report.clicked}"]`);
    now = await settled(page, now);
    report.second = await last(page);
    report.pressed = await page.$$eval('button.class[aria-pressed="true"]', (bs) => bs.map((b) => Number(b.dataset.class)));
    report.time = await page.textContent('#time');
    fs.mkdirSync(outDir, { recursive: true });
    await page.screenshot({ path: path.join(outDir, 'page.png'), fullPage: true });

    const methods = await page.$$eval('#method option', (os) => os.map((o) => o.value));
    if (methods.length > 1) { // the method switch: the same photo and class with the next graph
      await page.selectOption('#method', methods[1]);
      now = await settled(page, now);
      report.switched = await last(page);
    }

    await drop(page, broken);
    now = await settled(page, now);
    report.broken = now;
    await page.setInputFiles('#file', []);
    await page.setInputFiles('#file', photo);
    now = await settled(page, now);
    report.after = { state: now.state, target: (await last(page)).target };
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(report));
}

main().catch((err) => {
  console.error(`error: ${String(err.message || err).split('\n')[0]}`);
  process.exit(1);
});
