// A real browser (headless Chromium) drives the console page served by a
// real brokerd: subscribe, publish, restart the broker, and see the stream
// resume with no gap; then a publish made while the broker is down
// survives closing the page and is stored exactly once; and a reload
// resumes from the position the page kept.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { Brokerd } from '../helpers/brokerd.js';

const CHROMIUM = process.env.BROKERD_CHROMIUM || '/usr/bin/chromium';
const artifacts = join(dirname(fileURLToPath(import.meta.url)), '../../test-artifacts');

// In CI the browser test must run; elsewhere it is skipped when there is
// no Chromium to run it with.
const skip = !existsSync(CHROMIUM) && !process.env.CI ? `no Chromium at ${CHROMIUM}` : false;

const TOPIC = 'browser.demo';

describe('the console in a real browser', { skip, timeout: 120000 }, () => {
  let broker, browser, context;
  const pageErrors = [];

  before(async () => {
    if (!existsSync(CHROMIUM)) throw new Error(`CI needs Chromium at ${CHROMIUM} for the browser test`);
    const { chromium } = await import('playwright-core');
    broker = await Brokerd.start();
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run', '--disable-quic', '--disable-sync'],
    });
    context = await browser.newContext({ viewport: { width: 1280, height: 760 } });
    await mkdir(artifacts, { recursive: true });
  });

  after(async () => {
    if (browser) await browser.close();
    if (broker) await broker.dispose();
  });

  function watch(page) {
    page.on('pageerror', (err) => pageErrors.push(err));
    page.on('console', (m) => {
      if (m.type() === 'error' && !/WebSocket|ERR_CONNECTION_REFUSED|Failed to load resource/.test(m.text())) pageErrors.push(new Error(m.text()));
    });
    return page;
  }

  async function rowsOf(page, topic) {
    return page.$$eval(`tr.msg[data-topic="${topic}"]`, (rs) => rs.map((r) => ({ offset: Number(r.dataset.offset), data: r.querySelector('td.data').textContent })));
  }

  async function publishFromForm(page, data) {
    await page.fill('#pub-topic', TOPIC);
    await page.fill('#pub-data', JSON.stringify(data));
    await page.click('#publish button[type=submit]');
  }

  let page;

  test('subscribe, publish, watch a restart resume with no gap', async () => {
    page = watch(await context.newPage());
    await page.goto(`${broker.httpURL}/`);
    assert.equal(await page.inputValue('#url'), `${broker.wsURL}`, 'the URL defaults to the page\'s own host');
    await page.waitForSelector('#state[data-state="open"]');

    await page.fill('#sub-topic', TOPIC);
    await page.selectOption('#sub-from', 'earliest');
    await page.click('#subscribe button[type=submit]');
    await page.waitForSelector(`#subs li[data-topic="${TOPIC}"][data-state="active"]`);

    for (let n = 1; n <= 3; n++) {
      await publishFromForm(page, { n });
      await page.waitForSelector(`tr.msg[data-topic="${TOPIC}"][data-offset="${n}"]`);
      await page.waitForSelector(`#pub-result[data-offset="${n}"]`);
    }

    // The topic list comes from GET /v1/topics.
    await page.click('#topics-refresh');
    await page.waitForSelector(`#topics li[data-topic="${TOPIC}"]`);

    // Restart the broker: SIGTERM (1001 with retry_after_ms), start again.
    await broker.stop('SIGTERM');
    await page.waitForSelector('#state[data-state="reconnecting"]');
    await broker.start();
    await page.waitForSelector('#state[data-state="open"]', { timeout: 30000 });
    await page.waitForSelector(`tr.event >> text=resumed ${TOPIC} from offset 4`, { timeout: 10000 });

    // More messages after the restart, from the page and from the HTTP API.
    await publishFromForm(page, { n: 4 });
    await page.waitForSelector(`tr.msg[data-topic="${TOPIC}"][data-offset="4"]`);
    const r = await fetch(`${broker.httpURL}/v1/topics/${TOPIC}`, { method: 'POST', body: JSON.stringify({ n: 5 }), headers: { 'Idempotency-Key': 'browser-5' } });
    assert.equal(r.status, 200);
    assert.equal((await r.json()).offset, 5);
    await page.waitForSelector(`tr.msg[data-topic="${TOPIC}"][data-offset="5"]`);

    const rows = await rowsOf(page, TOPIC);
    assert.deepEqual(rows.map((x) => x.offset), [1, 2, 3, 4, 5], 'offsets continue with no gap and no duplicate');
    assert.deepEqual(rows.map((x) => JSON.parse(x.data).n), [1, 2, 3, 4, 5]);
    assert.equal(await page.locator('tr.event >> text=gap').count(), 0);
    assert.match(await page.textContent('#state-text'), /^open/);
    await page.screenshot({ path: join(artifacts, 'console.png') });
    assert.deepEqual(pageErrors, []);
  });

  test('a publish made while the broker is down survives closing the page, stored once', async () => {
    assert.ok(page, 'the first test ran');
    await broker.stop('SIGTERM');
    await page.waitForSelector('#state[data-state="reconnecting"]');
    await publishFromForm(page, { n: 6, offline: true });
    await page.waitForSelector('#pub-result >> text=queued');
    // Wait until the outbox holds it, then leave the page.
    await page.waitForFunction(async () => {
      const { IndexedDBOutbox } = await import('./client/index.js');
      const box = new IndexedDBOutbox({ name: 'brokerd-console-outbox', locks: null });
      const recs = await box.list();
      box.close();
      return recs.length === 1;
    }, null, { polling: 50, timeout: 5000 });
    await page.close();

    await broker.start();
    const page2 = watch(await context.newPage());
    await page2.goto(`${broker.httpURL}/`);
    await page2.waitForSelector('tr.event >> text=re-sent a publish from an earlier page', { timeout: 20000 });
    await page2.fill('#sub-topic', TOPIC);
    await page2.selectOption('#sub-from', 'earliest');
    await page2.click('#subscribe button[type=submit]');
    await page2.waitForSelector(`tr.msg[data-topic="${TOPIC}"][data-offset="6"]`);
    await page2.waitForTimeout(200); // a duplicate would show by now
    const rows = await rowsOf(page2, TOPIC);
    assert.deepEqual(rows.map((x) => x.offset), [1, 2, 3, 4, 5, 6]);
    assert.deepEqual(JSON.parse(rows[5].data), { n: 6, offline: true });

    const hist = await (await fetch(`${broker.httpURL}/v1/topics/${TOPIC}/messages?from=1`)).json();
    assert.equal(hist.head, 6, 'stored exactly once');
    const left = await page2.evaluate(async () => {
      const { IndexedDBOutbox } = await import('./client/index.js');
      const box = new IndexedDBOutbox({ name: 'brokerd-console-outbox', locks: null });
      const recs = await box.list();
      box.close();
      return recs.length;
    });
    assert.equal(left, 0, 'the outbox is empty once the broker has acknowledged');

    // A reload resumes the page's subscription from the position kept in
    // sessionStorage: nothing is replayed, the next message follows.
    await page2.waitForTimeout(300); // positions are written in batches
    await page2.reload();
    await page2.waitForSelector(`tr.event >> text=resumed ${TOPIC} from offset 7`, { timeout: 10000 });
    const r7 = await fetch(`${broker.httpURL}/v1/topics/${TOPIC}`, { method: 'POST', body: '{"n":7}' });
    assert.equal((await r7.json()).offset, 7);
    await page2.waitForSelector(`tr.msg[data-topic="${TOPIC}"][data-offset="7"]`);
    assert.deepEqual((await rowsOf(page2, TOPIC)).map((x) => x.offset), [7]);
    await page2.screenshot({ path: join(artifacts, 'console-outbox.png') });
    assert.deepEqual(pageErrors, []);
  });
  test('a reload resumes a pattern subscription: each topic from where the page was, new topics from their start', async () => {
    const post = async (topic, body) => (await (await fetch(`${broker.httpURL}/v1/topics/${topic}`, { method: 'POST', body: JSON.stringify(body) })).json()).offset;
    const page = watch(await context.newPage());
    await page.goto(`${broker.httpURL}/`);
    await page.waitForSelector('#state[data-state="open"]', { timeout: 20000 });
    await post('pat.a', { n: 1 });
    await page.fill('#sub-topic', 'pat.*');
    await page.selectOption('#sub-from', 'earliest');
    await page.click('#subscribe button[type=submit]');
    await page.waitForSelector('tr.msg[data-topic="pat.a"][data-offset="1"]');
    await post('pat.a', { n: 2 });
    await post('pat.b', { n: 1 });
    await page.waitForSelector('tr.msg[data-topic="pat.b"][data-offset="1"]');
    await page.waitForSelector('tr.msg[data-topic="pat.a"][data-offset="2"]');
    await page.waitForTimeout(300); // positions are written in batches
    // Leave the page (the tab keeps its sessionStorage), and while away:
    // more on both topics, and a topic first written meanwhile.
    await page.goto('about:blank');
    await post('pat.a', { n: 3 });
    await post('pat.b', { n: 2 });
    await post('pat.c', { n: 1 });
    const page2 = page;
    await page2.goto(`${broker.httpURL}/`);
    await page2.waitForSelector('tr.msg[data-topic="pat.c"][data-offset="1"]', { timeout: 20000 });
    await page2.waitForSelector('tr.msg[data-topic="pat.a"][data-offset="3"]');
    await page2.waitForSelector('tr.msg[data-topic="pat.b"][data-offset="2"]');
    await page2.waitForTimeout(200); // a duplicate would show by now
    assert.deepEqual((await rowsOf(page2, 'pat.a')).map((x) => x.offset), [3]);
    assert.deepEqual((await rowsOf(page2, 'pat.b')).map((x) => x.offset), [2]);
    assert.deepEqual((await rowsOf(page2, 'pat.c')).map((x) => x.offset), [1]);
    assert.equal(await page2.locator('text=live only').count(), 0);
    await page2.screenshot({ path: join(artifacts, 'console-pattern.png') });
    assert.deepEqual(pageErrors, []);
  });
});
