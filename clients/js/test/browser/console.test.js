// A real browser (headless Chromium) drives the console page served by a
// real brokerd: subscribe, publish, restart the broker, and see the stream
// resume with no gap; then a publish made while the broker is down
// survives closing the page and is stored exactly once; a reload
// resumes from the position the page kept; and two pages on one topic,
// wide and at 375 px, see each other join and leave its presence.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { execFile } from 'node:child_process';

import { Brokerd } from '../helpers/brokerd.js';

const CHROMIUM = process.env.BROKERD_CHROMIUM || '/usr/bin/chromium';
const artifacts = join(dirname(fileURLToPath(import.meta.url)), '../../test-artifacts');

// In CI the browser test must run; elsewhere it is skipped when there is
// no Chromium to run it with.
const skip = !existsSync(CHROMIUM) && !process.env.CI ? `no Chromium at ${CHROMIUM}` : false;

const TOPIC = 'browser.demo';

describe('the console in a real browser', { skip, timeout: 300000 }, () => {
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

  /** No horizontal scroll, and each of selectors inside the viewport's width. */
  async function fitsWidth(page, width, selectors) {
    const sw = await page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(sw <= width, `the page is ${sw} px wide in a ${width} px viewport`);
    for (const sel of selectors) {
      const box = await page.locator(sel).first().boundingBox();
      assert.ok(box, `${sel} is not displayed`);
      assert.ok(box.x >= 0 && box.x + box.width <= width + 0.5, `${sel} spans ${box.x}–${box.x + box.width} px, outside ${width} px`);
    }
  }

  /**
   * The boxes of a and b do not overlap. Both are read in one call, from
   * one layout: two reads could straddle a scroll or a reflow (the status
   * line's text changes with every attempt) and compare boxes of two
   * different moments.
   */
  async function apart(page, a, b) {
    const { x, y, scrollY } = await page.evaluate(([a, b]) => {
      const box = (sel) => {
        const e = document.querySelector(sel);
        const r = e && e.getBoundingClientRect();
        return r && (r.width || r.height) ? { x: r.x, y: r.y, width: r.width, height: r.height } : null;
      };
      return { x: box(a), y: box(b), scrollY: window.scrollY };
    }, [a, b]);
    assert.ok(x && y, `${a} and ${b} are displayed`);
    const overlap = x.x < y.x + y.width && y.x < x.x + x.width && x.y < y.y + y.height && y.y < x.y + x.height;
    if (overlap) await page.screenshot({ path: join(artifacts, `overlap-${Date.now()}.png`), fullPage: true });
    assert.ok(!overlap, `${a} ${JSON.stringify(x)} overlaps ${b} ${JSON.stringify(y)} (scrollY ${scrollY})`);
  }

  /**
   * The broker is down: one status line says so and counts the attempts,
   * with Retry now; the events list gets one row for the whole outage;
   * subscriptions say paused. Then the broker comes back and Retry now
   * reconnects at once.
   */
  async function offlineThenRetry(page, width) {
    try {
      await offline(page, width);
    } finally {
      // Started again whatever failed, so that the next tests find it.
      await broker.start();
    }
    await retryNow(page);
  }

  async function offline(page, width) {
    await page.waitForSelector('#state[data-state="reconnecting"]');
    await page.waitForSelector('#subs li[data-state="paused"]');
    // Two failed attempts at least (each used to add a row of its own).
    await page.waitForFunction(() => {
      const m = /attempt (\d+)/.exec(document.getElementById('state-text').textContent);
      return m && Number(m[1]) >= 3;
    }, null, { polling: 50, timeout: 30000 });
    assert.match(await page.textContent('#state-text'), /^offline · .*last: /);
    assert.equal(await page.locator('#events li >> text=connection lost').count(), 1, 'one events row for the outage');
    assert.equal(await page.locator('#events li >> text=connection closed').count(), 0);
    assert.equal(await page.locator('tr.event').count(), 0, 'events are not rows of the message table');
    await page.waitForSelector('#retry-btn:visible', { timeout: 10000 });
    await fitsWidth(page, width, ['#state-text', '#retry-btn', '#connect-btn', '#disconnect-btn']);
    for (const b of ['#connect-btn', '#disconnect-btn', '#token']) await apart(page, '#state', b);
    await page.screenshot({ path: join(artifacts, `console-offline-${width}.png`) });
  }

  async function retryNow(page) {
    // Retry now: connect at once instead of waiting out the backoff.
    const clicked = Date.now();
    for (;;) {
      if ((await page.getAttribute('#state', 'data-state')) === 'open') break;
      const retry = page.locator('#retry-btn:visible');
      // A short timeout: the page may reconnect by itself and hide the
      // button between the count and the click, and a click waits for
      // the button to show again (30 s by default).
      if (await retry.count()) await retry.click({ timeout: 1000 }).catch(() => {});
      if (Date.now() - clicked >= 20000) {
        const st = await page.getAttribute('#state', 'data-state');
        if (st === 'open') break;
        const text = await page.textContent('#state-text');
        const events = await page.locator('#events li').allTextContents();
        assert.fail(`Retry now did not reconnect within 20 s: state ${st} "${text}"; events ${JSON.stringify(events.slice(-5))}; broker log: ${broker.log.slice(-2000)}`);
      }
      await page.waitForTimeout(100);
    }
    await page.waitForSelector('#events li >> text=reconnected to');
    await page.waitForSelector('#subs li[data-state="active"]');
    assert.equal(await page.isVisible('#retry-btn'), false);
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
    await offlineThenRetry(page, 1280);
    await page.waitForSelector(`#events li >> text=resumed ${TOPIC} from offset 4`, { timeout: 10000 });

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
    assert.equal(await page.locator('#events li >> text=gap').count(), 0);
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
    await page2.waitForSelector('#events li >> text=re-sent a publish from an earlier page', { timeout: 20000 });
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
    await page2.waitForSelector(`#events li >> text=resumed ${TOPIC} from offset 7`, { timeout: 10000 });
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

  test('a phone (375 px): no sideways scroll, every control on screen, message detail, the reconnect line', async () => {
    const phone = await browser.newContext({ viewport: { width: 375, height: 740 }, hasTouch: true });
    try {
      const page = watch(await phone.newPage());
      await page.goto(`${broker.httpURL}/`);
      await page.waitForSelector('#state[data-state="open"]', { timeout: 20000 });
      await fitsWidth(page, 375, ['#url', '#token', '#connect-btn', '#disconnect-btn', '#state-text', '#sub-topic', '#sub-from',
        '#subscribe button[type=submit]', '#follow', '#clear', '#pub-topic', '#pub-data', '#publish button[type=submit]', '#events']);
      await page.fill('#sub-topic', TOPIC);
      await page.selectOption('#sub-from', 'earliest');
      await page.click('#subscribe button[type=submit]');
      await page.waitForSelector(`tr.msg[data-topic="${TOPIC}"][data-offset="7"]`);
      await fitsWidth(page, 375, ['#log']);

      // The detail view: the whole message, its data as indented JSON.
      await page.tap(`tr.msg[data-topic="${TOPIC}"][data-offset="6"]`);
      await page.waitForSelector('#detail[open]');
      assert.equal(await page.textContent('#detail-json'), JSON.stringify({ n: 6, offline: true }, null, 2));
      assert.match(await page.textContent('#detail-meta'), /offset6/);
      await fitsWidth(page, 375, ['#detail', '#detail-close']);
      await page.screenshot({ path: join(artifacts, 'console-375-detail.png') });
      await page.tap('#detail-close');
      await page.waitForSelector('#detail[open]', { state: 'detached' });

      await broker.stop('SIGTERM');
      await offlineThenRetry(page, 375);
      await fitsWidth(page, 375, ['#state-text']);
      await page.screenshot({ path: join(artifacts, 'console-375.png'), fullPage: true });
      assert.deepEqual(pageErrors, []);
    } finally {
      await phone.close();
    }
  });

  test('events are kept apart from messages: "showing the last N of M", one row per message across subscriptions', async () => {
    const post = async (topic, body) => (await (await fetch(`${broker.httpURL}/v1/topics/${topic}`, { method: 'POST', body: JSON.stringify(body) })).json()).offset;
    const page = watch(await context.newPage());
    try {
      await page.goto(`${broker.httpURL}/?rows=3`);
      await page.waitForSelector('#state[data-state="open"]', { timeout: 20000 });
      await page.fill('#sub-topic', 'cap.*');
      await page.selectOption('#sub-from', 'earliest');
      await page.click('#subscribe button[type=submit]');
      await page.waitForSelector('#events li >> text=subscribed to the pattern cap.*');
      for (let n = 1; n <= 5; n++) await post('cap.a', { n });
      await page.waitForSelector('tr.msg[data-topic="cap.a"][data-offset="5"]');
      await page.waitForFunction(() => document.getElementById('count').textContent === '5 messages · showing the last 3', null, { polling: 50, timeout: 10000 });
      assert.deepEqual((await rowsOf(page, 'cap.a')).map((x) => x.offset), [3, 4, 5]);
      // The events list keeps what the message cap pushed off the table.
      assert.equal(await page.locator('#events li >> text=subscribed to the pattern cap.*').count(), 1);
      await page.waitForSelector('#topics li[data-topic="cap.a"] .meta >> text=5');

      // The same message through the topic and the pattern shows once.
      await page.fill('#sub-topic', 'cap.a');
      await page.selectOption('#sub-from', 'latest');
      await page.click('#subscribe button[type=submit]');
      await page.waitForSelector('#subs li[data-topic="cap.a"][data-state="active"]');
      assert.equal(await post('cap.a', { n: 6 }), 6);
      await page.waitForSelector('tr.msg[data-topic="cap.a"][data-offset="6"]');
      await page.waitForFunction(() => {
        const r = document.querySelector('tr.msg[data-topic="cap.a"][data-offset="6"]');
        return r && r.dataset.via.split(' ').length === 2;
      }, null, { polling: 50, timeout: 10000 });
      assert.equal(await page.locator('tr.msg[data-topic="cap.a"][data-offset="6"]').count(), 1);
      assert.equal(await page.textContent('#count'), '6 messages · showing the last 3');
      // The topic list's count follows the messages.
      await page.waitForSelector('#topics li[data-topic="cap.a"] .meta >> text=6');
      assert.deepEqual(pageErrors, []);
    } finally {
      await page.close();
    }
  });

  test('presence: two pages on one topic see each other join and leave (wide and at 375 px)', async () => {
    const ROOM = 'room.presence';
    const post = async (body) => (await (await fetch(`${broker.httpURL}/v1/topics/${ROOM}`, { method: 'POST', body: JSON.stringify(body) })).json()).offset;
    const panel = `#presence .presence-topic[data-topic="${ROOM}"]`;
    const toggle = `#subs li[data-topic="${ROOM}"] button.presence-toggle`;
    const phone = await browser.newContext({ viewport: { width: 375, height: 740 }, hasTouch: true });
    const pageA = watch(await context.newPage());
    try {
      // A (wide) joins when it subscribes: the presence checkbox.
      await pageA.goto(`${broker.httpURL}/`);
      await pageA.waitForSelector('#state[data-state="open"]', { timeout: 20000 });
      await pageA.fill('#sub-topic', ROOM);
      await pageA.check('#sub-presence');
      await pageA.click('#subscribe button[type=submit]');
      await pageA.waitForSelector(`#subs li[data-topic="${ROOM}"][data-state="active"]`);
      await pageA.waitForSelector(`${panel} li.member.you`);
      const sessionA = await pageA.getAttribute(`${panel} li.member.you`, 'data-session');
      assert.ok(sessionA, 'A lists itself');
      assert.equal(await pageA.getAttribute(toggle, 'aria-pressed'), 'true');

      // B (a phone) subscribes without presence, sees a message, then
      // joins with the toggle of its subscription.
      const pageB = watch(await phone.newPage());
      await pageB.goto(`${broker.httpURL}/`);
      await pageB.waitForSelector('#state[data-state="open"]', { timeout: 20000 });
      await pageB.fill('#sub-topic', ROOM);
      await pageB.click('#subscribe button[type=submit]');
      await pageB.waitForSelector(`#subs li[data-topic="${ROOM}"][data-state="active"]`);
      assert.equal(await pageB.isVisible('#presence-panel'), false, 'no presence panel without presence');
      assert.equal(await post({ n: 1 }), 1);
      await pageB.waitForSelector(`tr.msg[data-topic="${ROOM}"][data-offset="1"]`);
      await pageB.tap(toggle);
      await pageB.waitForSelector(`${panel} li.member.you`);
      const sessionB = await pageB.getAttribute(`${panel} li.member.you`, 'data-session');
      assert.ok(sessionB && sessionB !== sessionA);
      // B lists A, who was there first; A sees B join, live.
      await pageB.waitForSelector(`${panel} li.member[data-session="${sessionA}"]`);
      await pageA.waitForSelector(`${panel} li.member[data-session="${sessionB}"]`, { timeout: 20000 });
      await pageA.waitForSelector(`#events li >> text=${ROOM}: session ${sessionB.slice(0, 8)} joined`);
      for (const p of [pageA, pageB]) await p.waitForSelector(`${panel}[data-count="2"]`);
      // The toggle resubscribed from where B was: no gap, no duplicate.
      assert.equal(await post({ n: 2 }), 2);
      await pageB.waitForSelector(`tr.msg[data-topic="${ROOM}"][data-offset="2"]`);
      await pageB.waitForTimeout(200); // a duplicate would show by now
      assert.deepEqual((await rowsOf(pageB, ROOM)).map((x) => x.offset), [1, 2]);
      assert.equal(await pageB.locator('#events li >> text=gap').count(), 0);
      await fitsWidth(pageB, 375, ['#presence-panel', `${panel} li.member.you`, toggle, '#sub-presence']);
      await pageB.screenshot({ path: join(artifacts, 'console-375-presence.png'), fullPage: true });
      await pageA.screenshot({ path: join(artifacts, 'console-presence.png') });

      // B leaves with the toggle: A sees it go.
      await pageB.tap(toggle);
      await pageA.waitForSelector(`${panel} li.member[data-session="${sessionB}"]`, { state: 'detached', timeout: 20000 });
      await pageA.waitForSelector(`#events li >> text=${ROOM}: session ${sessionB.slice(0, 8)} left`);
      await pageA.waitForSelector(`${panel}[data-count="1"]`);
      assert.equal(await pageB.isVisible('#presence-panel'), false);

      // B joins again, then its page closes: A sees it leave.
      await pageB.tap(toggle);
      await pageA.waitForSelector(`${panel} li.member[data-session="${sessionB}"]`, { timeout: 20000 });
      await pageB.close();
      await pageA.waitForSelector(`${panel} li.member[data-session="${sessionB}"]`, { state: 'detached', timeout: 20000 });
      await pageA.waitForSelector(`${panel}[data-count="1"]`);
      assert.deepEqual(pageErrors, []);
    } finally {
      await pageA.close();
      await phone.close();
    }
  });

  test('with auth on and no token the page asks for one (no green dot), and a token opens it', async () => {
    const secret = 'console-test-secret-of-at-least-32-bytes';
    const authed = await Brokerd.start({ args: ['--jwt-secret', secret] });
    const page = watch(await context.newPage());
    try {
      await page.goto(`${authed.httpURL}/`);
      await page.fill('#url', authed.wsURL);
      await page.fill('#token', '');
      await page.click('#connect-btn');
      await page.waitForSelector('#state[data-state="auth"]', { timeout: 20000 });
      assert.match(await page.textContent('#state-text'), /needs a token/);
      assert.equal(await page.locator('#state[data-state="open"]').count(), 0);
      assert.equal(await page.locator('text=authenticate first').count(), 0, 'no protocol words');
      const token = await new Promise((res, rej) => {
        execFile(authed.bin, ['token', '--jwt-secret', secret, '--sub', 'console', '--publish', '>', '--subscribe', '>', '--ttl', '1h'],
          (err, stdout, stderr) => (err ? rej(new Error(stderr || err.message)) : res(stdout.trim())));
      });
      await page.fill('#token', token);
      await page.click('#connect-btn');
      await page.waitForSelector('#state[data-state="open"]', { timeout: 20000 });
      assert.match(await page.textContent('#state-text'), /token$/);
      await page.fill('#sub-topic', 'auth.t');
      await page.click('#subscribe button[type=submit]');
      await page.waitForSelector('#subs li[data-topic="auth.t"][data-state="active"]');
      await page.fill('#pub-topic', 'auth.t');
      await page.fill('#pub-data', '{"ok":true}');
      await page.click('#publish button[type=submit]');
      await page.waitForSelector('tr.msg[data-topic="auth.t"][data-offset="1"]');
      assert.equal(await page.textContent('#topics-note'), '', 'no stale error once authenticated');
      // Presence with auth: the member is the token's subject.
      await page.click('#subs li[data-topic="auth.t"] button.presence-toggle');
      await page.waitForSelector('#presence .presence-topic[data-topic="auth.t"] li.member.you[data-user="console"]');
      assert.match(await page.textContent('#presence .presence-topic[data-topic="auth.t"] li.member.you'), /^console \(you\)/);
      // A wrong token: said in words, not reconnected in a loop.
      await page.fill('#token', `${token}x`);
      await page.click('#connect-btn');
      await page.waitForSelector('#state[data-state="auth"]', { timeout: 20000 });
      assert.match(await page.textContent('#state-text'), /refused the token/);
      await apart(page, '#state', '#disconnect-btn');
      // The subscription waits for a token instead of ending.
      await page.waitForSelector('#subs li[data-topic="auth.t"] .badge >> text=needs token');
      await page.screenshot({ path: join(artifacts, 'console-auth.png') });
      assert.deepEqual(pageErrors, []);
    } finally {
      await page.close();
      await authed.dispose();
    }
  });
});
