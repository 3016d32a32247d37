// Integration: protocol v1.1 in the client against a real brokerd: feature
// detection, last, since, pattern subscriptions that resume (positions
// persisted like a topic's, across a "reload"), ack with epoch.
import { afterEach, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';

import { BrokerClient } from '../../src/index.js';
import { Brokerd } from '../helpers/brokerd.js';
import { MemoryStorage, sleep, until } from '../helpers/fake.js';

let brokers = [];
let clients = [];

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

describe('protocol v1.1', { timeout: 90000 }, () => {
  test('features, last and since', async () => {
    const broker = await Brokerd.start();
    brokers.push(broker);
    const c = client(broker);
    for (let i = 1; i <= 10; i++) await c.publish('v11.room', { i });
    for (const f of ['last', 'since', 'pattern_replay', 'ack_epoch', 'presence']) assert.ok(c.hasFeature(f), f);
    const got = [];
    const s = c.subscribe('v11.room', (m) => got.push(m.offset), { last: 3 });
    const info = await s.ready;
    assert.equal(info.from, 8);
    await until(() => got.length === 3);
    assert.deepEqual(got, [8, 9, 10]);
    await s.unsubscribe();
    const all = [];
    const t = c.subscribe('v11.room', (m) => all.push(m.offset), { since: new Date(Date.now() - 3600e3) });
    assert.equal((await t.ready).from, 1);
    await until(() => all.length === 10);
    assert.throws(() => c.subscribe('v11.x', () => {}, { last: 1, from: 'earliest' }), TypeError);
    assert.throws(() => c.subscribe('v11.*', () => {}, { last: 1 }), TypeError);
  });

  test('a pattern subscription resumes after a reload with no gap and no duplicate per topic', async () => {
    const broker = await Brokerd.start();
    brokers.push(broker);
    const pub = client(broker);
    const storage = new MemoryStorage();
    await pub.publish('v11.feed.a', 1);
    await pub.publish('v11.feed.b', 1);

    const page1 = client(broker, { positions: storage });
    const got1 = [];
    const topics = [];
    const s1 = page1.subscribe('v11.feed.*', (m) => got1.push(`${m.topic}@${m.offset}`), { since: 0 });
    s1.on('topic', (d) => topics.push(d));
    await s1.ready;
    await until(() => got1.length === 2);
    for (let i = 2; i <= 4; i++) await pub.publish('v11.feed.a', i);
    await until(() => got1.length === 5);
    assert.equal(topics.length, 2);
    assert.ok(topics.every((d) => d.epoch && d.from === 1 && !d.code));
    await page1.close(); // the page goes away; its positions stay in storage

    for (let i = 5; i <= 6; i++) await pub.publish('v11.feed.a', i);
    await pub.publish('v11.feed.b', 2);
    await pub.publish('v11.feed.c', 1); // first written while away

    const page2 = client(broker, { positions: storage });
    const got2 = [];
    const s2 = page2.subscribe('v11.feed.*', (m) => got2.push(`${m.topic}@${m.offset}`));
    await s2.ready;
    await until(() => got2.length === 4);
    await sleep(100); // a duplicate would arrive by now
    assert.deepEqual(got2.sort(), ['v11.feed.a@5', 'v11.feed.a@6', 'v11.feed.b@2', 'v11.feed.c@1']);
  });

  test('an ack carries the epoch', async () => {
    const broker = await Brokerd.start();
    brokers.push(broker);
    const c = client(broker);
    for (let i = 1; i <= 3; i++) await c.publish('v11.jobs', i);
    const sent = [];
    const got = [];
    const s = c.subscribe('v11.jobs', (m) => got.push(m), { consumer: 'w', from: 'earliest' });
    const info = await s.ready;
    await until(() => got.length === 3);
    const orig = c._command.bind(c);
    c._command = (cmd, meta) => {
      sent.push(cmd);
      return orig(cmd, meta);
    };
    await got[2].ack();
    const ack = sent.find((x) => x.op === 'ack');
    assert.equal(ack.epoch, info.epoch);
  });
});
