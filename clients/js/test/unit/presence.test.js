// Presence (protocol v1.1) in the client, against the fake broker: the sub
// fields and their re-sending, join, leave and presence_muted routed to the
// subscription, the presence query, and what happens without the feature.
import { afterEach, beforeEach, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import { BrokerClient, BrokerError, ClientErrorCodes } from '../../src/index.js';
import { FakeBroker, FakeWebSocket, once, sleep, until } from '../helpers/fake.js';

const URL = 'ws://broker.test/ws';
const FEATURES = ['last', 'since', 'pattern_replay', 'ack_epoch', 'presence'];

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

const subs = (broker) => broker.commands.filter((c) => c.op === 'sub');

describe('presence', () => {
  test('the sub carries presence and presence_info; every resubscribe sends them again', async () => {
    const broker = new FakeBroker({ features: FEATURES });
    const c = client();
    const info = { name: 'Ada', tags: ['a', 'ü'] };
    const s = c.subscribe('room.1', () => {}, { presence: true, presenceInfo: info });
    info.name = 'changed later'; // the member is what was given at subscribe
    await s.ready;
    assert.equal(s.presence, true);
    assert.deepEqual(subs(broker)[0], { op: 'sub', id: subs(broker)[0].id, topic: 'room.1', presence: true, presence_info: { name: 'Ada', tags: ['a', 'ü'] } });
    assert.deepEqual(broker.members('room.1'), [{ session: 's1', node: 'fake', info: { name: 'Ada', tags: ['a', 'ü'] } }]);

    broker.closeAll(1006);
    await until(() => subs(broker).length === 2 && broker.members('room.1').length === 1, { what: 'the resubscribe' });
    const again = subs(broker)[1];
    assert.equal(again.presence, true);
    assert.deepEqual(again.presence_info, { name: 'Ada', tags: ['a', 'ü'] });
    assert.equal(broker.members('room.1')[0].session, 's2', 'back as the new session');

    // A subscription without presence sends neither field.
    c.subscribe('room.2', () => {});
    await until(() => subs(broker).length === 3);
    assert.equal('presence' in subs(broker)[2], false);
    assert.equal('presence_info' in subs(broker)[2], false);
  });

  test('join and leave reach the callbacks and the events of the topic\'s subscription, in order', async () => {
    const broker = new FakeBroker({ features: FEATURES });
    const a = client();
    const seen = [];
    const sa = a.subscribe('room.1', () => {}, {
      presence: true,
      onJoin: (m) => seen.push(['onJoin', m]),
      onLeave: (m) => seen.push(['onLeave', m]),
    });
    sa.on('join', (d) => seen.push(['join', d]));
    sa.on('leave', (d) => seen.push(['leave', d]));
    await sa.ready;

    const b = client();
    const sb = b.subscribe('room.1', () => {}, { presence: true, presenceInfo: 'bee' });
    await sb.ready;
    await until(() => seen.length === 2, { what: 'the join' });
    const member = { session: 's2', node: 'fake', info: 'bee' };
    assert.deepEqual(seen, [['onJoin', member], ['join', { topic: 'room.1', member }]]);

    await sb.unsubscribe();
    await until(() => seen.length === 4, { what: 'the leave' });
    assert.deepEqual(seen.slice(2), [['onLeave', member], ['leave', { topic: 'room.1', member }]]);

    // A connection that drops leaves too.
    const c = client();
    await c.subscribe('room.1', () => {}, { presence: true }).ready;
    await until(() => seen.length === 6);
    broker.sockets[2].serverClose(1006);
    await until(() => seen.length >= 8, { what: 'the leave of a dropped connection' });
    assert.deepEqual(seen[7], ['leave', { topic: 'room.1', member: { session: 's3', node: 'fake' } }]);
  });

  test('a member with a user keeps it; unknown member fields are left out; a malformed member is skipped', async () => {
    const broker = new FakeBroker({ features: FEATURES });
    const c = client();
    const got = [];
    const s = c.subscribe('room.1', () => {}, { presence: true, onJoin: (m) => got.push(m) });
    await s.ready;
    broker.current.recv(
      { op: 'join', topic: 'room.1', member: { session: 'x', user: 'alice', node: 'n2', later: 1 } },
      { op: 'join', topic: 'room.1', member: { user: 'no-session' } },
      { op: 'join', topic: 'room.1', member: 'nope' },
      { op: 'join', topic: 'other', member: { session: 'y', node: 'n1' } },
    );
    await sleep(10);
    assert.deepEqual(got, [{ session: 'x', user: 'alice', node: 'n2' }]);
  });

  test('presence_muted: the callback, the event, and presenceMuted', async () => {
    const broker = new FakeBroker({ features: FEATURES });
    const c = client();
    const calls = [];
    const s = c.subscribe('big', () => {}, { presence: true, onPresenceMuted: (d) => calls.push(d) });
    await s.ready;
    assert.equal(s.presenceMuted, false);
    const ev = once(s, 'presence_muted');
    broker.current.recv({ op: 'presence_muted', topic: 'big' });
    assert.deepEqual(await ev, { topic: 'big' });
    assert.deepEqual(calls, [{ topic: 'big' }]);
    assert.equal(s.presenceMuted, true);
  });

  test('a callback that throws is reported on the subscription and does not stop delivery', async () => {
    const broker = new FakeBroker({ features: FEATURES });
    const c = client();
    const got = [];
    const s = c.subscribe('room.1', () => {}, {
      presence: true,
      onJoin: (m) => {
        got.push(m.session);
        if (m.session === 'a') throw new Error('boom');
      },
      onLeave: async () => {
        throw new Error('async boom');
      },
    });
    const errors = [];
    s.on('error', ({ error }) => errors.push(error.message));
    await s.ready;
    broker.current.recv(
      { op: 'join', topic: 'room.1', member: { session: 'a', node: 'n' } },
      { op: 'join', topic: 'room.1', member: { session: 'b', node: 'n' } },
      { op: 'leave', topic: 'room.1', member: { session: 'a', node: 'n' } },
    );
    await until(() => errors.length === 2);
    assert.deepEqual(got, ['a', 'b']);
    assert.deepEqual(errors, ['boom', 'async boom']);
    assert.equal(s.state, 'active');
  });

  test('presence(topic) resolves with members and count', async () => {
    const broker = new FakeBroker({ features: FEATURES });
    const a = client();
    const b = client();
    await a.subscribe('room.1', () => {}, { presence: true, presenceInfo: { n: 1 } }).ready;
    await b.subscribe('room.1', () => {}, { presence: true }).ready;
    const p = await b.presence('room.1');
    assert.deepEqual(p, {
      topic: 'room.1',
      members: [{ session: 's1', node: 'fake', info: { n: 1 } }, { session: 's2', node: 'fake' }],
      count: 2,
    });
    assert.deepEqual(broker.commands.filter((x) => x.op === 'presence').map(({ op, topic }) => ({ op, topic })), [{ op: 'presence', topic: 'room.1' }]);
    assert.deepEqual(await a.presence('empty.room'), { topic: 'empty.room', members: [], count: 0 });
  });

  test('the count may exceed the members listed', async () => {
    const broker = new FakeBroker({ features: FEATURES });
    broker.hooks.command = (ws, cmd) => {
      if (cmd.op !== 'presence') return false;
      ws.recv({ op: 'ok', id: cmd.id, topic: cmd.topic, members: [{ session: 'a', node: 'n' }], count: 5000 });
      return true;
    };
    const c = client();
    assert.deepEqual(await c.presence('crowd'), { topic: 'crowd', members: [{ session: 'a', node: 'n' }], count: 5000 });
  });

  test('presence(topic): the broker\'s err rejects; bad topics reject at once; at most 1,000 wait, and close rejects them', async () => {
    const broker = new FakeBroker({ features: FEATURES });
    broker.hooks.command = (ws, cmd) => {
      if (cmd.op !== 'presence') return false;
      ws.recv({ op: 'err', id: cmd.id, code: 'forbidden', message: 'not allowed to subscribe to secret' });
      return true;
    };
    const c = client();
    await assert.rejects(c.presence('secret'), (err) => err instanceof BrokerError && err.code === 'forbidden' && err.topic === 'secret');
    await assert.rejects(c.presence('room.*'), (err) => err.code === 'invalid_topic');
    await assert.rejects(c.presence(''), (err) => err.code === 'invalid_topic');
    // Bounded: queries wait at most 1,000 at once.
    broker.silent = true;
    const waiting = [];
    for (let i = 0; i < 1000; i++) waiting.push(c.presence('crowd').catch((err) => err.code));
    await assert.rejects(c.presence('crowd'), (err) => err.code === 'queue_full');
    // Closing rejects what waits.
    await c.close();
    assert.deepEqual(new Set(await Promise.all(waiting)), new Set(['closed']));
    await assert.rejects(c.presence('x'), (err) => err.code === 'closed');
  });

  test('presence(topic) waits for the connection, and is asked again when it dropped in flight', async () => {
    const broker = new FakeBroker({ features: FEATURES, autoAccept: false });
    const c = client();
    const ws1 = await FakeWebSocket.next();
    const p = c.presence('room.1');
    await sleep(10);
    broker.accept(ws1);
    broker.silent = true; // the first connection never answers
    await until(() => broker.commands.some((x) => x.op === 'presence'), { what: 'the presence query' });
    broker.silent = false;
    const next = FakeWebSocket.next();
    ws1.serverClose(1006);
    broker.accept(await next);
    assert.deepEqual(await p, { topic: 'room.1', members: [], count: 0 });
    assert.equal(broker.commands.filter((x) => x.op === 'presence').length, 2);
  });

  test('without the feature "presence": subscribe throws unsupported when connected, ends the subscription when not yet; presence() rejects', async () => {
    assert.ok(ClientErrorCodes.unsupported);
    const broker = new FakeBroker({ autoAccept: false, features: ['last', 'since'] });
    const c = client();
    const ws = await FakeWebSocket.next();
    // Before welcome the client cannot know: the subscription ends once it does.
    const early = c.subscribe('room.1', () => {}, { presence: true });
    const ended = once(early, 'end');
    const q = c.presence('room.1');
    broker.accept(ws);
    const { error } = await ended;
    assert.equal(error.code, 'unsupported');
    assert.match(error.message, /feature "presence"/);
    await assert.rejects(early.ready, (err) => err.code === 'unsupported');
    await assert.rejects(q, (err) => err.code === 'unsupported');
    assert.equal(c.subscriptions.length, 0);

    assert.throws(() => c.subscribe('room.1', () => {}, { presence: true }), (err) => err instanceof BrokerError && err.code === 'unsupported');
    await assert.rejects(c.presence('room.1'), (err) => err.code === 'unsupported');
    // Nothing with presence ever went out; a plain subscription still works.
    assert.equal(broker.commands.filter((x) => x.op === 'presence' || x.presence !== undefined).length, 0);
    await c.subscribe('room.1', () => {}).ready;
  });

  test('options are checked before anything is sent', () => {
    new FakeBroker({ features: FEATURES });
    const c = client();
    assert.throws(() => c.subscribe('room.*', () => {}, { presence: true }), TypeError);
    assert.throws(() => c.subscribe('room.1', () => {}, { presence: 'yes' }), TypeError);
    assert.throws(() => c.subscribe('room.1', () => {}, { presenceInfo: { a: 1 } }), /needs presence: true/);
    assert.throws(() => c.subscribe('room.1', () => {}, { presence: true, presenceInfo: 'x'.repeat(1023) }), /1025 bytes of JSON, the limit is 1024/);
    assert.throws(() => c.subscribe('room.1', () => {}, { presence: true, presenceInfo: 'é'.repeat(600) }), /bytes of JSON, the limit is 1024/);
    assert.throws(() => c.subscribe('room.1', () => {}, { presence: true, presenceInfo: () => 1 }), TypeError);
    const cyc = {};
    cyc.self = cyc;
    assert.throws(() => c.subscribe('room.1', () => {}, { presence: true, presenceInfo: cyc }), TypeError);
    assert.throws(() => c.subscribe('room.1', () => {}, { presence: true, onJoin: 'f' }), /onJoin must be a function/);
    assert.equal(c.subscriptions.length, 0);
    // The largest info that fits.
    c.subscribe('room.1', () => {}, { presence: true, presenceInfo: 'x'.repeat(1022) });
  });
});
