// Integration: the client across brokerd restarts, crashes, a frozen
// process and a lost data directory.
import { afterEach, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';

import { BrokerClient } from '../../src/index.js';
import { Brokerd } from '../helpers/brokerd.js';
import { once, sleep, until } from '../helpers/fake.js';

let brokers = [];
let clients = [];

async function startBroker(opts) {
  const b = await Brokerd.start(opts);
  brokers.push(b);
  return b;
}

function client(broker, opts = {}) {
  const c = new BrokerClient(broker.wsURL, { WebSocket, minReconnectDelayMs: 50, maxReconnectDelayMs: 400, ...opts });
  c.on('error', ({ error }) => console.error('client error:', error));
  clients.push(c);
  return c;
}

afterEach(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await Promise.all(brokers.map((b) => b.dispose()));
  clients = [];
  brokers = [];
});

/** Reads every message of topic from the start with a fresh client: [offsets, data, head]. */
async function readAll(broker, topic, expect) {
  const c = client(broker);
  const got = [];
  const s = c.subscribe(topic, (m) => got.push(m), { from: 'earliest' });
  const info = await s.ready;
  await until(() => got.length >= Math.min(expect, info.head), { timeout: 10000, what: `${expect} messages of ${topic}` });
  await sleep(100); // a duplicate would arrive by now
  await c.close();
  return { head: info.head, offsets: got.map((m) => m.offset), data: got.map((m) => m.data) };
}

describe('restarts', { timeout: 90000 }, () => {
  test('a subscription resumes after a restart with no gap and no duplicate', async () => {
    const broker = await startBroker();
    const sub = client(broker);
    const pub = client(broker);
    const got = [];
    const s = sub.subscribe('rs.stream', (m) => got.push(m.offset), { from: 'earliest' });
    await s.ready;
    for (let i = 1; i <= 20; i++) await pub.publish('rs.stream', i);
    await until(() => got.length === 20);

    const closed = once(sub, 'closed', { timeout: 15000 });
    const resubscribed = new Promise((res) => s.on('subscribed', (d) => d.resumed && res(d)));
    await broker.stop('SIGTERM');
    const c = await closed;
    assert.equal(c.code, 1001, 'SIGTERM closes with going away');
    assert.ok(c.retryAfterMs > 0, `retry_after_ms in the close reason: ${c.reason}`);
    assert.equal(c.willReconnect, true);

    // Published while the broker is down: they wait in the queue.
    const offline = [21, 22, 23].map((i) => pub.publish('rs.stream', i));
    await broker.start();
    const info = await resubscribed;
    assert.equal(info.from, 21, 'resumed at the last delivered offset + 1');
    assert.deepEqual((await Promise.all(offline)).map((r) => r.offset), [21, 22, 23]);
    for (let i = 24; i <= 30; i++) await pub.publish('rs.stream', i);
    await until(() => got.length === 30, { timeout: 10000 });
    assert.deepEqual(got, Array.from({ length: 30 }, (_, i) => i + 1));
  });

  test('publishes made while the broker is down are stored exactly once', async () => {
    const broker = await startBroker();
    const c = client(broker);
    await once(c, 'open');
    await broker.stop();
    await until(() => c.state === 'reconnecting');
    const ps = Array.from({ length: 10 }, (_, i) => c.publish('rs.offline', { i }));
    assert.equal(c.pendingPublishes, 10);
    await sleep(200);
    await broker.start();
    const res = await Promise.all(ps);
    assert.deepEqual(res.map((r) => r.offset), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    const all = await readAll(broker, 'rs.offline', 10);
    assert.equal(all.head, 10);
    assert.deepEqual(all.data.map((d) => d.i), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  });

  for (const signal of ['SIGTERM', 'SIGKILL']) {
    test(`publishes in flight when the broker dies (${signal}) are stored once`, async () => {
      const broker = await startBroker();
      const c = client(broker, { maxQueue: 5000 });
      await once(c, 'open');
      const n = 3000;
      let acked = 0;
      let ackedAtSignal = -1;
      const ps = Array.from({ length: n }, (_, i) => c.publish('rs.burst', i).then((r) => {
        if (++acked === 50) {
          // Mid-burst: most publishes are on the wire or in the broker.
          ackedAtSignal = acked;
          broker.proc.kill(signal);
        }
        return r;
      }));
      await until(() => ackedAtSignal > 0, { timeout: 10000 });
      await broker.stop(signal);
      await broker.start();
      const res = await Promise.all(ps);
      const dups = res.filter((r) => r.dup).length;
      const offsets = new Set(res.map((r) => r.offset));
      assert.equal(offsets.size, n, 'every publish has its own offset');
      const all = await readAll(broker, 'rs.burst', n);
      assert.equal(all.head, n, `the log holds each publish once (${dups} re-sent publishes had landed before)`);
      assert.deepEqual([...all.data].sort((a, b) => a - b), Array.from({ length: n }, (_, i) => i));
      console.error(`${signal}: ${n - ackedAtSignal} publishes without an ok at the signal, ${dups} of them answered dup after the restart`);
    });
  }

  test('a lost data directory surfaces as epoch_mismatch, then the new history from its start', async () => {
    const broker = await startBroker();
    const pub = client(broker);
    const sub = client(broker);
    const got = [];
    const s = sub.subscribe('rs.epoch', (m) => got.push([m.epoch, m.offset, m.data]), { from: 'earliest' });
    const first = await s.ready;
    for (let i = 1; i <= 3; i++) await pub.publish('rs.epoch', `old-${i}`);
    await until(() => got.length === 3);

    const mismatch = once(s, 'epoch_mismatch', { timeout: 20000 });
    await broker.stop();
    await broker.wipe();
    await broker.start();
    const d = await mismatch;
    assert.equal(d.previousEpoch, first.epoch);
    assert.notEqual(d.epoch, first.epoch);
    assert.equal(d.restart, 'earliest');
    await until(() => s.state === 'active', { timeout: 10000 });
    // The wiped broker has no log for the topic yet: its epoch_mismatch
    // names no epoch (earliest 1, latest 0), and the restart from the
    // earliest creates the new one.
    if (d.epoch === undefined) assert.equal(d.latest, 0);
    else assert.equal(s.epoch, d.epoch);
    assert.notEqual(s.epoch, first.epoch);
    await pub.publish('rs.epoch', 'new-1');
    await pub.publish('rs.epoch', 'new-2');
    await until(() => got.length === 5, { timeout: 10000 });
    assert.deepEqual(got.slice(3), [[s.epoch, 1, 'new-1'], [s.epoch, 2, 'new-2']]);
  });

  test('a broker that stops answering is detected by the heartbeat and left', async () => {
    const broker = await startBroker();
    const c = client(broker, { pingIntervalMs: 200, pongTimeoutMs: 400, connectTimeoutMs: 500 });
    const got = [];
    const s = c.subscribe('rs.hb', (m) => got.push(m.offset), { from: 'earliest' });
    await s.ready;
    await c.publish('rs.hb', 1);
    await until(() => got.length === 1);

    const t0 = Date.now();
    const closed = once(c, 'closed', { timeout: 5000 });
    broker.freeze();
    const d = await closed;
    const detectedMs = Date.now() - t0;
    assert.match(d.reason, /heartbeat timeout/);
    assert.ok(detectedMs < 2000, `detected after ${detectedMs} ms`);
    const p = c.publish('rs.hb', 2);
    await sleep(300);
    broker.thaw();
    assert.equal((await p).offset, 2);
    await until(() => got.length === 2, { timeout: 10000 });
    assert.deepEqual(got, [1, 2]);
  });
});
