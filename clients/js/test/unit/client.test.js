import { afterEach, beforeEach, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import { BrokerClient, BrokerError } from '../../src/index.js';
import { FakeBroker, FakeWebSocket, MemoryStorage, once, sleep, until } from '../helpers/fake.js';

const URL = 'ws://broker.test/ws';
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

let clients = [];
function client(opts = {}) {
  const c = new BrokerClient(URL, {
    WebSocket: FakeWebSocket,
    minReconnectDelayMs: 5,
    maxReconnectDelayMs: 20,
    window: null,
    document: null,
    ...opts,
  });
  clients.push(c);
  return c;
}

beforeEach(() => {
  FakeWebSocket.reset();
  clients = [];
});

afterEach(async () => {
  for (const c of clients) {
    c.on('error', () => {});
    await c.close();
  }
});

function sentOps(broker, op) {
  return broker.commands.filter((c) => c.op === op);
}

describe('connecting', () => {
  test('offers the subprotocol, normalizes the URL and opens after welcome', async () => {
    const broker = new FakeBroker({ heartbeat: 7 });
    const c = new BrokerClient('http://broker.test/ws', { WebSocket: FakeWebSocket, window: null, document: null });
    clients.push(c);
    const states = [];
    c.on('statechange', (d) => states.push(d.state));
    const open = await once(c, 'open');
    assert.equal(FakeWebSocket.instances[0].url, 'ws://broker.test/ws');
    assert.equal(FakeWebSocket.instances[0].protocols, 'brokerd.v1.json');
    assert.deepEqual(open, { session: 's1', node: 'fake', version: 'test', heartbeat: 7 });
    assert.deepEqual(states, ['connecting', 'open']);
    assert.equal(c.session, 's1');
    assert.equal(broker.commands.length, 0, 'nothing sent without a reason');
  });

  test('sends nothing before welcome, then auth first', async () => {
    const broker = new FakeBroker({ autoAccept: false });
    const c = client({ token: 'tok-1' });
    const ws = await FakeWebSocket.next();
    c.subscribe('a.b', () => {});
    c.publish('a.b', 1).catch(() => {});
    broker.accept(ws, { welcome: false });
    await sleep(10);
    assert.equal(ws.frames.length, 0, 'no command before welcome');
    const opened = once(c, 'open');
    ws.recv({ op: 'welcome', session: 's', node: 'n', version: 'v', heartbeat: 25 });
    await until(() => broker.commands.length >= 3);
    assert.deepEqual(broker.commands.map((x) => x.op), ['auth', 'sub', 'pub']);
    assert.equal(broker.commands[0].token, 'tok-1');
    await opened;
  });

  test('calls getToken on every connect and uses the fresh token', async () => {
    const broker = new FakeBroker();
    let n = 0;
    const c = client({ getToken: async () => `tok-${++n}` });
    await once(c, 'open');
    broker.closeAll(1006);
    await once(c, 'open');
    assert.equal(n, 2);
    assert.deepEqual(sentOps(broker, 'auth').map((a) => a.token), ['tok-1', 'tok-2']);
  });

  test('a refused fixed token stops the client; with getToken it reconnects', async () => {
    const broker = new FakeBroker();
    const c = client({ token: 'bad' });
    await once(c, 'open');
    const errP = once(c, 'error');
    broker.closeAll(4001, '{"reason":"unauthorized","message":"invalid token"}');
    const err = await errP;
    assert.equal(err.error.code, 'unauthorized');
    assert.equal(err.error.message, 'invalid token');
    await until(() => c.state === 'closed');
    await assert.rejects(c.publish('a', 1), { code: 'closed' });

    const c2 = client({ getToken: () => 'fresh' });
    await once(c2, 'open');
    broker.closeAll(4003, '{"reason":"token_expired"}');
    await once(c2, 'open');
    assert.equal(c2.state, 'open');
  });

  test('refreshToken sends auth on the live connection', async () => {
    const broker = new FakeBroker();
    const c = client({ token: 'one' });
    await once(c, 'open');
    await c.refreshToken('two');
    assert.deepEqual(sentOps(broker, 'auth').map((a) => a.token), ['one', 'two']);
    broker.hooks.command = (ws, cmd) => {
      if (cmd.op !== 'auth') return false;
      ws.recv({ op: 'err', id: cmd.id, code: 'unauthorized', message: 'invalid token' });
      return true;
    };
    await assert.rejects(c.refreshToken('bad'), { code: 'unauthorized' });
    broker.hooks.command = null;
    broker.closeAll(1006);
    await once(c, 'open');
    assert.equal(sentOps(broker, 'auth').at(-1).token, 'two', 'a refused token is not used again');
  });

  test('a server that selects no subprotocol is abandoned', async () => {
    new FakeBroker({ autoAccept: false });
    const c = client();
    const ws = await FakeWebSocket.next();
    const closed = once(c, 'closed');
    ws.open('');
    const d = await closed;
    assert.match(d.reason, /subprotocol/);
    assert.equal(d.willReconnect, true);
  });

  test('no welcome within connectTimeoutMs: abandon and retry', async () => {
    const broker = new FakeBroker({ autoAccept: false });
    const c = client({ connectTimeoutMs: 50 });
    const ws = await FakeWebSocket.next();
    broker.accept(ws, { welcome: false });
    const d = await once(c, 'closed');
    assert.match(d.reason, /welcome/);
    const ws2 = await FakeWebSocket.next();
    const opened = once(c, 'open');
    broker.accept(ws2);
    await opened;
  });

  test('close() closes with 1000, rejects pending work and never reconnects', async () => {
    const broker = new FakeBroker();
    const c = client();
    await once(c, 'open');
    broker.silent = true;
    const p = c.publish('a.b', { x: 1 });
    const sub = c.subscribe('a.b', () => {});
    await sleep(5);
    const closed = once(c, 'closed');
    const rejected = assert.rejects(p, (e) => e instanceof BrokerError && e.code === 'closed');
    await c.close();
    const d = await closed;
    assert.equal(FakeWebSocket.instances[0].closedWith.code, 1000);
    assert.equal(d.code, 1000);
    assert.equal(d.willReconnect, false);
    assert.equal(c.state, 'closed');
    await rejected;
    assert.equal(sub.state, 'ended');
    assert.throws(() => c.subscribe('x', () => {}), { code: 'closed' });
    await sleep(40);
    assert.equal(FakeWebSocket.instances.length, 1, 'no reconnect after close()');
  });

  test('several events in one frame, several commands in one frame', async () => {
    const broker = new FakeBroker();
    const c = client({ maxCommandsPerFrame: 3 });
    await once(c, 'open');
    const ws = FakeWebSocket.instances[0];
    const ps = [];
    for (let i = 0; i < 7; i++) ps.push(c.publish('t', i));
    const res = await Promise.all(ps);
    assert.deepEqual(res.map((r) => r.offset), [1, 2, 3, 4, 5, 6, 7]);
    assert.deepEqual(ws.frames.map((f) => f.split('\n').length), [3, 3, 1], 'batched up to maxCommandsPerFrame');
    const got = [];
    c.subscribe('u', (m) => got.push(m.offset), { from: 'earliest' });
    await until(() => sentOps(broker, 'sub').length === 1);
    await sleep(5);
    broker.append('u', 'a');
    broker.topic('u');
    ws.recv({ op: 'msg', topic: 'u', offset: 2, ts: 1, data: 'b' }, { op: 'msg', topic: 'u', offset: 3, ts: 1, data: 'c' });
    assert.deepEqual(got, [1, 2, 3]);
  });
});

describe('reconnecting', () => {
  test('resumes every subscription from its last offset + 1 with its epoch', async () => {
    const broker = new FakeBroker();
    const c = client();
    const got = [];
    const sub = c.subscribe('orders', (m) => got.push(m.offset), { from: 'earliest' });
    await sub.ready;
    for (let i = 0; i < 3; i++) broker.append('orders', i);
    assert.deepEqual(got, [1, 2, 3]);
    broker.closeAll(1006);
    await until(() => sentOps(broker, 'sub').length === 2);
    const resub = sentOps(broker, 'sub')[1];
    assert.equal(resub.from, 4);
    assert.equal(resub.epoch, 'e-orders-1');
    await until(() => sub.state === 'active');
    broker.append('orders', 'x');
    assert.deepEqual(got, [1, 2, 3, 4]);
    assert.equal(sub.offset, 4);
  });

  test('a resume that did not see messages yet resumes from the ok from', async () => {
    const broker = new FakeBroker();
    broker.append('t', 'old');
    const c = client();
    const sub = c.subscribe('t', () => {});
    const info = await sub.ready;
    assert.equal(info.from, 2);
    broker.closeAll(1006);
    await until(() => sentOps(broker, 'sub').length === 2);
    assert.equal(sentOps(broker, 'sub')[1].from, 2);
  });

  test('honours retry_after_ms of a 1001 close', async () => {
    const broker = new FakeBroker();
    const c = client();
    await once(c, 'open');
    const rec = once(c, 'reconnecting');
    const t0 = Date.now();
    broker.closeAll(1001, '{"reason":"going_away","retry_after_ms":300}');
    const r = await rec;
    assert.ok(r.delayMs >= 300, `delay ${r.delayMs}`);
    assert.equal(r.retryAfterMs, 300);
    await once(c, 'open', { timeout: 2000 });
    assert.ok(Date.now() - t0 >= 290, `reconnected after ${Date.now() - t0} ms`);
  });

  test('backs off exponentially with jitter while the broker is away', async () => {
    new FakeBroker({ autoAccept: false });
    FakeWebSocket.onCreate = (ws) => setTimeout(() => ws.serverClose(1006, '', false), 0);
    const c = client({ minReconnectDelayMs: 10, maxReconnectDelayMs: 40 });
    const delays = [];
    c.on('reconnecting', (d) => delays.push(d));
    await until(() => delays.length >= 6, { timeout: 3000 });
    c.close();
    delays.forEach((d, i) => assert.ok(d.delayMs < Math.min(40, 10 * 2 ** i), `attempt ${i}: ${d.delayMs}`));
    assert.deepEqual(delays.map((d) => d.attempt).slice(0, 4), [1, 2, 3, 4]);
  });

  test('an online event reconnects at once instead of waiting out the backoff', async () => {
    const broker = new FakeBroker({ autoAccept: false });
    const win = new EventTarget();
    const c = client({ window: win, minReconnectDelayMs: 60000, maxReconnectDelayMs: 60000 });
    const ws = await FakeWebSocket.next();
    const opened1 = once(c, 'open');
    broker.accept(ws);
    await opened1;
    const r = once(c, 'reconnecting');
    ws.serverClose(1006, '', false);
    await r;
    FakeWebSocket.onCreate = (w) => setTimeout(() => broker.accept(w), 0);
    const opened = once(c, 'open', { timeout: 500 });
    win.dispatchEvent(new Event('online'));
    await opened;
  });

  test('visibilitychange while open checks the connection with a ping', async () => {
    const broker = new FakeBroker();
    const doc = new EventTarget();
    doc.visibilityState = 'visible';
    const c = client({ document: doc });
    await once(c, 'open');
    assert.equal(sentOps(broker, 'ping').length, 0);
    doc.dispatchEvent(new Event('visibilitychange'));
    await until(() => sentOps(broker, 'ping').length === 1);
  });
});

describe('heartbeat', () => {
  test('pings when quiet, stays up while answered, reconnects when not', async () => {
    const broker = new FakeBroker({ heartbeat: 1 });
    const c = client({ pingIntervalMs: 40, pongTimeoutMs: 80 });
    await once(c, 'open');
    await until(() => sentOps(broker, 'ping').length >= 2, { timeout: 1000 });
    assert.equal(c.state, 'open');
    broker.silent = true; // the connection dies silently
    const closed = await once(c, 'closed', { timeout: 1000 });
    assert.match(closed.reason, /heartbeat timeout/);
    assert.equal(closed.willReconnect, true);
    broker.silent = false;
    await once(c, 'open');
  });

  test('any traffic counts as an answer', async () => {
    const broker = new FakeBroker();
    const c = client({ pingIntervalMs: 100, pongTimeoutMs: 150 });
    await once(c, 'open');
    broker.hooks.command = (ws, cmd) => cmd.op === 'ping'; // pings are never answered
    const ws = broker.current;
    const stop = setInterval(() => ws.recv({ op: 'msg', topic: 'none', offset: 1, ts: 1, data: null }), 10);
    await sleep(500);
    clearInterval(stop);
    assert.equal(c.state, 'open');
    assert.equal(FakeWebSocket.instances.length, 1);
  });

  test('the ping interval defaults to the welcome heartbeat', async () => {
    new FakeBroker({ heartbeat: 1 });
    const c = client();
    await once(c, 'open');
    assert.equal(c._idleMs, 1000);
  });
});

describe('publishing', () => {
  test('every publish carries a key; a given key is kept; dup is reported', async () => {
    const broker = new FakeBroker();
    const c = client();
    const a = await c.publish('t', { n: 1 });
    const b = await c.publish('t', { n: 2 }, { key: 'mine' });
    const d = await c.publish('t', { n: 2 }, { key: 'mine' });
    const pubs = sentOps(broker, 'pub');
    assert.match(pubs[0].key, UUID);
    assert.equal(a.key, pubs[0].key);
    assert.equal(pubs[1].key, 'mine');
    assert.deepEqual([a.offset, b.offset, b.dup, d.offset, d.dup], [1, 2, false, 2, true]);
    assert.deepEqual(pubs[0].data, { n: 1 });
  });

  test('publishes made while disconnected are sent in order on reconnect, once each', async () => {
    const broker = new FakeBroker({ autoAccept: false });
    const c = client();
    const ws = await FakeWebSocket.next();
    const ps = [1, 2, 3].map((n) => c.publish('t', n));
    assert.equal(c.pendingPublishes, 3);
    await sleep(10);
    assert.equal(ws.frames.length, 0);
    broker.accept(ws);
    const res = await Promise.all(ps);
    assert.deepEqual(res.map((r) => r.offset), [1, 2, 3]);
    assert.deepEqual(broker.topic('t').log.map((m) => m.data), [1, 2, 3]);
    assert.equal(c.pendingPublishes, 0);
  });

  test('a publish whose ok was lost is re-sent with its key and stored once', async () => {
    const broker = new FakeBroker();
    const c = client();
    await once(c, 'open');
    // The broker stores the publish, then the connection dies before the ok.
    broker.hooks.command = (ws, cmd) => {
      if (cmd.op !== 'pub') return false;
      broker.handle({ readyState: 1, recv() {} }, cmd);
      queueMicrotask(() => ws.serverClose(1006, '', false));
      broker.hooks.command = null;
      return true;
    };
    const r = await c.publish('t', 'once');
    assert.equal(r.dup, true);
    assert.equal(r.offset, 1);
    assert.equal(broker.topic('t').log.length, 1);
    const pubs = sentOps(broker, 'pub');
    assert.equal(pubs.length, 2);
    assert.equal(pubs[0].key, pubs[1].key);
  });

  test('the queue is bounded', async () => {
    new FakeBroker({ autoAccept: false });
    const c = client({ maxQueue: 2 });
    const a = c.publish('t', 1);
    const b = c.publish('t', 2);
    await assert.rejects(c.publish('t', 3), { code: 'queue_full' });
    const big = client({ maxQueueBytes: 10 });
    await assert.rejects(big.publish('t', 'x'.repeat(20)), { code: 'queue_full' });
    a.catch(() => {});
    b.catch(() => {});
  });

  test('bad publishes are refused before they are queued', async () => {
    new FakeBroker({ autoAccept: false });
    const c = client({ maxMessageBytes: 10 });
    await assert.rejects(c.publish('a.*', 1), { code: 'invalid_topic', message: '"a.*" is a pattern: publish to one topic' });
    await assert.rejects(c.publish('', 1), { code: 'invalid_topic' });
    // An invalid name is not called a pattern.
    await assert.rejects(c.publish('bad topic', 1), (err) => err.code === 'invalid_topic' && /segments of letters/.test(err.message) && !/pattern/.test(err.message));
    await assert.rejects(c.publish('t', undefined), TypeError);
    await assert.rejects(c.publish('t', 1, { key: 'with space' }), { code: 'invalid_key' });
    await assert.rejects(c.publish('t', 'x'.repeat(20)), { code: 'message_too_large' });
    assert.equal(c.pendingPublishes, 0);
  });

  test('unavailable is retried with the same key, other errors reject', async () => {
    const broker = new FakeBroker();
    const c = client();
    await once(c, 'open');
    let n = 0;
    broker.hooks.command = (ws, cmd) => {
      if (cmd.op !== 'pub') return false;
      if (cmd.topic === 'forbidden') {
        ws.recv({ op: 'err', id: cmd.id, code: 'forbidden', message: 'no' });
        return true;
      }
      if (++n === 1) {
        ws.recv({ op: 'err', id: cmd.id, code: 'unavailable', message: 'shutting down' });
        return true;
      }
      return false;
    };
    const r = await c.publish('t', 1);
    assert.equal(r.offset, 1);
    const pubs = sentOps(broker, 'pub');
    assert.equal(pubs[0].key, pubs[1].key);
    await assert.rejects(c.publish('forbidden', 1), { code: 'forbidden' });
  });
});

describe('subscription events', () => {
  test('epoch_mismatch: the event, then a restart from the earliest of the new epoch', async () => {
    const broker = new FakeBroker();
    const c = client();
    const got = [];
    const sub = c.subscribe('t', (m) => got.push([m.epoch, m.offset, m.data]), { from: 'earliest' });
    await sub.ready;
    broker.append('t', 'a');
    broker.append('t', 'b');
    const mismatch = once(sub, 'epoch_mismatch');
    broker.closeAll(1006);
    broker.reset('t', 'e2');
    broker.append('t', 'new1');
    const d = await mismatch;
    assert.deepEqual(d, { topic: 't', previousEpoch: 'e-t-1', epoch: 'e2', earliest: 1, latest: 1, restart: 'earliest' });
    await until(() => got.length === 3);
    const subs = sentOps(broker, 'sub');
    assert.deepEqual(subs.at(-1), { op: 'sub', id: subs.at(-1).id, topic: 't', from: 'earliest', epoch: 'e2' });
    assert.deepEqual(got, [['e-t-1', 1, 'a'], ['e-t-1', 2, 'b'], ['e2', 1, 'new1']]);
    assert.equal(sub.epoch, 'e2');
  });

  test('unsubbed epoch_mismatch (a reset under a live subscription): resubscribe, then the usual restart', async () => {
    const broker = new FakeBroker();
    const c = client();
    const got = [];
    const sub = c.subscribe('t', (m) => got.push([m.epoch, m.offset, m.data]), { from: 'earliest' });
    await sub.ready;
    broker.append('t', 'a');
    await until(() => got.length === 1);
    broker.reset('t', 'e2');
    broker.append('t', 'new1');
    const mismatch = once(sub, 'epoch_mismatch');
    broker.current.recv({ op: 'unsubbed', topic: 't', code: 'epoch_mismatch' });
    const d = await mismatch;
    assert.equal(d.epoch, 'e2');
    await until(() => got.length === 2);
    assert.deepEqual(got, [['e-t-1', 1, 'a'], ['e2', 1, 'new1']]);
    assert.equal(sub.state, 'active');
  });

  test('epoch_mismatch with preventDefault ends the subscription with the error', async () => {
    new FakeBroker();
    const c = client();
    const sub = c.subscribe('t', { epoch: 'old' });
    sub.addEventListener('epoch_mismatch', (e) => e.preventDefault());
    await assert.rejects(sub.ready, { code: 'epoch_mismatch', epoch: 'e-t-1' });
    assert.equal(sub.state, 'ended');
    await assert.rejects(sub[Symbol.asyncIterator]().next(), { code: 'epoch_mismatch' });
    assert.equal(c.subscriptions.length, 0);
  });

  test('offset_out_of_range: the event, then if_gone earliest and the hole as missed', async () => {
    const broker = new FakeBroker();
    for (let i = 1; i <= 10; i++) broker.append('t', i);
    broker.retain('t', 6);
    const c = client();
    const got = [];
    const sub = c.subscribe('t', (m) => got.push(m.offset), { from: 2 });
    const oor = await once(sub, 'offset_out_of_range');
    assert.deepEqual(oor, { topic: 't', from: 2, epoch: 'e-t-1', earliest: 6, latest: 10, beyondHead: false, restart: 'earliest' });
    const missed = await once(sub, 'missed');
    assert.deepEqual(missed, { topic: 't', epoch: 'e-t-1', first: 2, last: 5 });
    await until(() => got.length === 5);
    assert.deepEqual(got, [6, 7, 8, 9, 10]);
    assert.equal(sentOps(broker, 'sub').at(-1).if_gone, 'earliest');
  });

  test('offset_out_of_range with onOutOfRange "fail" ends the subscription', async () => {
    const broker = new FakeBroker();
    for (let i = 1; i <= 3; i++) broker.append('t', i);
    broker.retain('t', 3);
    const c = client({ onOutOfRange: 'fail' });
    const sub = c.subscribe('t', () => {}, { from: 1 });
    await assert.rejects(sub.ready, { code: 'offset_out_of_range', earliest: 3, latest: 3 });
    assert.equal(sentOps(broker, 'sub').length, 1);
  });

  test('a position beyond the head restarts at the head', async () => {
    const broker = new FakeBroker();
    broker.append('t', 1);
    const c = client();
    const sub = c.subscribe('t', () => {}, { from: 50 });
    const d = await once(sub, 'offset_out_of_range');
    assert.equal(d.beyondHead, true);
    assert.equal(d.restart, 2);
    const info = await sub.ready;
    assert.equal(info.from, 2);
  });

  test('unsubbed offset_out_of_range resubscribes with if_gone; taken_over ends', async () => {
    const broker = new FakeBroker();
    const c = client();
    const sub = c.subscribe('t', () => {}, { from: 'earliest' });
    await sub.ready;
    const ev = once(sub, 'offset_out_of_range');
    broker.current.recv({ op: 'unsubbed', topic: 't', code: 'offset_out_of_range' });
    await ev;
    await until(() => sentOps(broker, 'sub').length === 2);
    assert.equal(sentOps(broker, 'sub')[1].if_gone, 'earliest');
    await until(() => sub.state === 'active');

    const cons = c.subscribe('q', () => {}, { consumer: 'workers', from: 'earliest' });
    await cons.ready;
    const unsubbed = once(cons, 'unsubbed');
    broker.current.recv({ op: 'unsubbed', topic: 'q', code: 'taken_over' });
    assert.deepEqual(await unsubbed, { topic: 'q', code: 'taken_over', resubscribing: false });
    assert.equal(cons.state, 'ended');
    assert.equal(cons.error.code, 'taken_over');
  });

  test('gaps are reported and duplicates dropped', async () => {
    const broker = new FakeBroker();
    const c = client();
    const got = [];
    const sub = c.subscribe('t', (m) => got.push(m.offset));
    await sub.ready;
    const gap = once(sub, 'gap');
    const ws = broker.current;
    ws.recv({ op: 'msg', topic: 't', offset: 1, ts: 1, data: 1 }, { op: 'msg', topic: 't', offset: 1, ts: 1, data: 1 }, { op: 'msg', topic: 't', offset: 4, ts: 1, data: 4 });
    assert.deepEqual(await gap, { topic: 't', epoch: 'e-t-1', first: 2, last: 3 });
    assert.deepEqual(got, [1, 4]);
  });

  test('pattern subscriptions are live-only and get the pattern on each message', async () => {
    const broker = new FakeBroker();
    const c = client();
    assert.throws(() => c.subscribe('a.*', () => {}, { from: 'earliest' }), TypeError);
    assert.throws(() => c.subscribe('a.>.b', () => {}), { code: 'invalid_topic' });
    const got = [];
    const sub = c.subscribe('a.*', (m) => got.push(m));
    await sub.ready;
    broker.current.recv({ op: 'msg', topic: 'a.x', sub: 'a.*', offset: 9, ts: 5, data: 'hi' });
    assert.deepEqual(got, [{ topic: 'a.x', offset: 9, ts: 5, data: 'hi', epoch: undefined, pattern: 'a.*' }]);
    assert.deepEqual(sentOps(broker, 'sub')[0], { op: 'sub', id: sentOps(broker, 'sub')[0].id, topic: 'a.*' });
  });

  test('one subscription per topic per client', async () => {
    new FakeBroker();
    const c = client();
    c.subscribe('t', () => {});
    assert.throws(() => c.subscribe('t', () => {}), { code: 'already_subscribed' });
  });

  test('handler errors are reported and do not stop delivery', async () => {
    const broker = new FakeBroker();
    const c = client();
    let n = 0;
    const sub = c.subscribe('t', () => {
      n++;
      throw new Error('boom');
    });
    await sub.ready;
    const err = once(sub, 'error');
    broker.append('t', 1);
    broker.append('t', 2);
    assert.equal((await err).error.message, 'boom');
    assert.equal(n, 2);
    assert.equal(sub.offset, 2);
  });
});

describe('async iteration', () => {
  test('for await yields messages in order; break unsubscribes', async () => {
    const broker = new FakeBroker();
    for (let i = 1; i <= 3; i++) broker.append('t', i);
    const c = client();
    const got = [];
    for await (const m of c.subscribe('t', { from: 'earliest' })) {
      got.push(m.data);
      if (got.length === 3) break;
    }
    assert.deepEqual(got, [1, 2, 3]);
    await until(() => sentOps(broker, 'unsub').length === 1);
    assert.equal(c.subscriptions.length, 0);
  });

  test('the buffer is bounded: a full buffer pauses, reading resumes from the log with no gap', async () => {
    const broker = new FakeBroker();
    const c = client({ bufferSize: 4 });
    const sub = c.subscribe('t', { from: 'earliest' });
    await sub.ready;
    for (let i = 1; i <= 10; i++) broker.append('t', i);
    await until(() => sentOps(broker, 'unsub').length === 1);
    assert.equal(sub.state, 'paused');
    assert.equal(sub._buffer.length, 4);
    const got = [];
    const it = sub[Symbol.asyncIterator]();
    while (got.length < 10) got.push((await it.next()).value.offset);
    assert.deepEqual(got, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    const subs = sentOps(broker, 'sub');
    assert.equal(subs[1].from, 5);
    assert.equal(subs[1].epoch, 'e-t-1');
    assert.ok(sub._buffer.length <= 4);
  });

  test('a subscription with a handler cannot be iterated', async () => {
    new FakeBroker();
    const c = client();
    const sub = c.subscribe('t', () => {});
    assert.throws(() => sub[Symbol.asyncIterator](), TypeError);
  });

  test('close() ends a waiting iterator', async () => {
    new FakeBroker();
    const c = client();
    const sub = c.subscribe('t');
    const it = sub[Symbol.asyncIterator]();
    const next = it.next();
    await sub.ready;
    await c.close();
    assert.deepEqual(await next, { value: undefined, done: true });
  });
});

describe('acks', () => {
  test('acks made while disconnected are coalesced and sent after the sub is back', async () => {
    const broker = new FakeBroker();
    const c = client();
    const sub = c.subscribe('q', () => {}, { consumer: 'w', from: 'earliest', maxInflight: 10 });
    await sub.ready;
    assert.deepEqual(sentOps(broker, 'sub')[0], { op: 'sub', id: sentOps(broker, 'sub')[0].id, topic: 'q', consumer: 'w', max_inflight: 10, from: 'earliest' });
    for (let i = 1; i <= 7; i++) broker.append('q', i);
    broker.closeAll(1006);
    const a = c.ack('q', 'w', 5);
    const b = sub.ack(7);
    await Promise.all([a, b]);
    const acks = sentOps(broker, 'ack');
    assert.deepEqual(acks.map((x) => [x.topic, x.consumer, x.offset]), [['q', 'w', 7]]);
    const subs = sentOps(broker, 'sub');
    assert.equal(subs[1].from, 1, 'a consumer resumes where its unacked messages start');
    assert.equal(subs[1].consumer, 'w');
    assert.ok(broker.commands.indexOf(subs[1]) < broker.commands.indexOf(acks[0]), 'the ack follows the resubscribe');
  });

  test('messages of a consumer carry ack()', async () => {
    const broker = new FakeBroker();
    const c = client();
    let msg;
    const sub = c.subscribe('q', (m) => (msg = m), { consumer: 'w' });
    await sub.ready;
    broker.append('q', 'x');
    await msg.ack();
    assert.deepEqual(sentOps(broker, 'ack').map((x) => x.offset), [1]);
  });
});

describe('persistence', () => {
  test('positions: saved as delivered, used by the next client', async () => {
    const broker = new FakeBroker();
    const storage = new MemoryStorage();
    const c = client({ positions: storage, positionsPrefix: 'app:' });
    const sub = c.subscribe('t', () => {}, { from: 'earliest' });
    await sub.ready;
    broker.append('t', 1);
    broker.append('t', 2);
    await c.close();
    assert.deepEqual(JSON.parse(storage.getItem('app:t')), { epoch: 'e-t-1', offset: 2 });

    const c2 = client({ positions: storage, positionsPrefix: 'app:' });
    const got = [];
    const sub2 = c2.subscribe('t', (m) => got.push(m.offset), { from: 'earliest' });
    await sub2.ready;
    const last = sentOps(broker, 'sub').at(-1);
    assert.equal(last.from, 3);
    assert.equal(last.epoch, 'e-t-1');
    broker.append('t', 3);
    assert.deepEqual(got, [3]);

    const c3 = client({ positions: storage, positionsPrefix: 'app:' });
    c3.subscribe('t', () => {}, { from: 'earliest', resume: false });
    await until(() => sentOps(broker, 'sub').at(-1).from === 'earliest');
  });

  test('outbox store: restored publishes go first with their keys and leave after the ok', async () => {
    const broker = new FakeBroker({ autoAccept: false });
    const records = new Map([
      ['t\nold-1', { id: 't\nold-1', topic: 't', key: 'old-1', data: '{"n":1}', ts: 1, seq: 1, owner: 'gone' }],
      ['t\nold-2', { id: 't\nold-2', topic: 't', key: 'old-2', data: '{"n":2}', ts: 2, seq: 2, owner: 'gone' }],
    ]);
    const store = {
      restored: null,
      async restore(owner) {
        this.owner = owner;
        return [...records.values()].filter((r) => r.owner !== owner).map((r) => ({ ...r, owner }));
      },
      async put(r) {
        records.set(r.id, r);
      },
      async delete(id) {
        records.delete(id);
      },
    };
    const c = client({ outbox: store });
    const republished = [];
    c.on('republished', (d) => republished.push(d));
    assert.equal(await c.outboxRestored, 2);
    const p = c.publish('t', { n: 3 }, { key: 'new-3' });
    await sleep(5);
    assert.ok(records.has('t\nnew-3'), 'written to the outbox before it is sent');
    broker.accept(await until(() => FakeWebSocket.instances[0]));
    await p;
    assert.deepEqual(sentOps(broker, 'pub').map((x) => x.key), ['old-1', 'old-2', 'new-3']);
    assert.deepEqual(sentOps(broker, 'pub').map((x) => x.data), [{ n: 1 }, { n: 2 }, { n: 3 }]);
    await until(() => records.size === 0);
    assert.deepEqual(republished.map((r) => [r.key, r.offset]), [['old-1', 1], ['old-2', 2]]);
  });
});
