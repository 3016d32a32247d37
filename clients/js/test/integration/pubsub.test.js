// Integration: the client against a real brokerd process.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';

import { BrokerClient } from '../../src/index.js';
import { Brokerd } from '../helpers/brokerd.js';
import { once, until } from '../helpers/fake.js';

let broker;
const clients = [];

function client(opts = {}) {
  const c = new BrokerClient(broker.wsURL, { WebSocket, minReconnectDelayMs: 50, maxReconnectDelayMs: 500, ...opts });
  c.on('error', ({ error }) => console.error('client error:', error));
  clients.push(c);
  return c;
}

before(async () => {
  broker = await Brokerd.start();
});

after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  if (broker) await broker.dispose();
});

describe('a real brokerd', { timeout: 60000 }, () => {
  test('publish and subscribe: replay, then live, in offset order', async () => {
    const pub = client();
    for (let i = 1; i <= 5; i++) {
      const r = await pub.publish('it.orders', { n: i });
      assert.equal(r.offset, i);
      assert.equal(r.dup, false);
    }
    const sub = client();
    const got = [];
    const s = sub.subscribe('it.orders', (m) => got.push([m.offset, m.data.n]), { from: 'earliest' });
    const info = await s.ready;
    assert.equal(info.head, 5);
    assert.equal(info.from, 1);
    assert.match(info.epoch, /\S/);
    await Promise.all([6, 7, 8].map((n) => pub.publish('it.orders', { n })));
    await until(() => got.length === 8, { what: '8 messages' });
    assert.deepEqual(got, [1, 2, 3, 4, 5, 6, 7, 8].map((n) => [n, n]));
    assert.equal(s.offset, 8);
    assert.equal(s.epoch, info.epoch);
  });

  test('the idempotency key makes a second publish a dup', async () => {
    const c = client();
    const a = await c.publish('it.keys', 'first', { key: 'order-1' });
    const b = await c.publish('it.keys', 'second', { key: 'order-1' });
    assert.deepEqual([a.offset, a.dup, b.offset, b.dup], [1, false, 1, true]);
  });

  test('from latest, from an offset, and data kept as JSON', async () => {
    const c = client();
    const data = [null, true, 0, -1.5, 'é😀\u2028', [1, [2]], { a: { b: null } }];
    for (const d of data) await c.publish('it.data', d);
    const got = [];
    const s = c.subscribe('it.data', (m) => got.push(m.data), { from: 3 });
    await s.ready;
    await until(() => got.length === data.length - 2);
    assert.deepEqual(got, data.slice(2));
    const live = [];
    const c2 = client();
    const s2 = c2.subscribe('it.data', (m) => live.push(m.offset));
    const info = await s2.ready;
    assert.equal(info.from, data.length + 1);
    await c.publish('it.data', 'new');
    await until(() => live.length === 1);
    assert.deepEqual(live, [data.length + 1]);
  });

  test('a pattern subscription gets messages of matching topics with the pattern', async () => {
    const c = client();
    const got = [];
    const s = c.subscribe('it.pat.*', (m) => got.push([m.topic, m.pattern, m.data]));
    await s.ready;
    await c.publish('it.pat.a', 1);
    await c.publish('it.other', 2);
    await c.publish('it.pat.b', 3);
    await until(() => got.length === 2);
    assert.deepEqual(got, [['it.pat.a', 'it.pat.*', 1], ['it.pat.b', 'it.pat.*', 3]]);
  });

  test('async iteration with a small buffer loses nothing', async () => {
    const c = client({ bufferSize: 8 });
    const n = 100;
    await Promise.all(Array.from({ length: n }, (_, i) => c.publish('it.iter', i)));
    const got = [];
    for await (const m of c.subscribe('it.iter', { from: 'earliest' })) {
      got.push(m.offset);
      if (got.length % 10 === 0) await new Promise((r) => setTimeout(r, 1)); // a slow reader
      if (got.length === n) break;
    }
    assert.deepEqual(got, Array.from({ length: n }, (_, i) => i + 1));
  });

  test('a durable consumer resumes after its acked offset', async () => {
    const c = client();
    for (let i = 1; i <= 6; i++) await c.publish('it.jobs', i);
    const first = [];
    const w1 = client();
    const s1 = w1.subscribe('it.jobs', (m) => first.push(m), { consumer: 'workers', from: 'earliest', maxInflight: 10 });
    await s1.ready;
    await until(() => first.length === 6);
    await first[3].ack(); // processed 1..4
    await w1.close();

    const second = [];
    const w2 = client();
    const s2 = w2.subscribe('it.jobs', (m) => second.push(m.offset), { consumer: 'workers', from: 'earliest' });
    const info = await s2.ready;
    assert.equal(info.from, 5);
    await until(() => second.length === 2);
    assert.deepEqual(second, [5, 6]);
  });

  test('a second connection of the same consumer takes the subscription over', async () => {
    const a = client();
    const b = client();
    const sa = a.subscribe('it.takeover', () => {}, { consumer: 'solo', from: 'earliest' });
    await sa.ready;
    const unsubbed = once(sa, 'unsubbed');
    const sb = b.subscribe('it.takeover', () => {}, { consumer: 'solo', from: 'earliest' });
    await sb.ready;
    assert.deepEqual(await unsubbed, { topic: 'it.takeover', code: 'taken_over', resubscribing: false });
    assert.equal(sa.state, 'ended');
    assert.equal(sa.error.code, 'taken_over');
    assert.equal(sb.state, 'active');
  });

  test('an unknown epoch reaches the app as epoch_mismatch', async () => {
    const c = client({ onEpochMismatch: 'fail' });
    await c.publish('it.err', 1);
    const s = c.subscribe('it.err', () => {}, { epoch: 'not-the-epoch', from: 1 });
    const ev = once(s, 'epoch_mismatch');
    await assert.rejects(s.ready, (e) => e.code === 'epoch_mismatch' && typeof e.epoch === 'string' && e.latest === 1);
    const d = await ev;
    assert.equal(d.previousEpoch, 'not-the-epoch');
    assert.equal(d.restart, null);
  });

  test('close() sends 1000 and the client stays closed', async () => {
    const c = client();
    await once(c, 'open');
    const closed = once(c, 'closed');
    await c.close();
    const d = await closed;
    assert.equal(d.code, 1000);
    assert.equal(c.state, 'closed');
  });
});
