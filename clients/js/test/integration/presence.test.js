// Integration: presence (protocol v1.1) against a real brokerd: two
// clients see each other join and leave (by unsubscribe and by a dropped
// connection), list the presence, and with auth the member carries the
// token's subject and the listing needs the right to subscribe.
import { afterEach, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac, randomBytes } from 'node:crypto';
import WebSocket from 'ws';

import { BrokerClient } from '../../src/index.js';
import { Brokerd } from '../helpers/brokerd.js';
import { until } from '../helpers/fake.js';

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

function jwt(secret, claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const head = b64({ alg: 'HS256', typ: 'JWT' });
  const body = b64({ exp: Math.floor(Date.now() / 1000) + 600, ...claims });
  return `${head}.${body}.${createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url')}`;
}

/** A member as the test expects it, from a client's welcome. */
function memberOf(c, extra = {}) {
  return { session: c.session, node: c.welcome.node, ...extra };
}

const sessions = (p) => p.members.map((m) => m.session).sort();
const wait = { timeout: 15000 };

describe('presence', { timeout: 90000 }, () => {
  test('two clients: join, listing, leave by unsubscribe and by a dropped connection', async () => {
    const broker = await Brokerd.start();
    brokers.push(broker);
    const a = client(broker);
    const seen = [];
    const sa = a.subscribe('room.lobby', () => {}, {
      presence: true,
      presenceInfo: { name: 'Ada' },
      onJoin: (m) => seen.push(['join', m]),
      onLeave: (m) => seen.push(['leave', m]),
    });
    await sa.ready;
    assert.ok(a.hasFeature('presence'));
    assert.deepEqual(await a.presence('room.lobby'), { topic: 'room.lobby', members: [memberOf(a, { info: { name: 'Ada' } })], count: 1 });

    const b = client(broker);
    const sb = b.subscribe('room.lobby', () => {}, { presence: true, presenceInfo: 'Bob' });
    await sb.ready;
    const bob = memberOf(b, { info: 'Bob' });
    await until(() => seen.length >= 1, { ...wait, what: 'the join of b' });
    assert.deepEqual(seen, [['join', bob]], 'a is told of b, and not of itself');
    const listed = await b.presence('room.lobby');
    assert.equal(listed.count, 2);
    assert.deepEqual(sessions(listed), [a.session, b.session].sort());
    assert.deepEqual(listed.members.find((m) => m.session === a.session), memberOf(a, { info: { name: 'Ada' } }));

    await sb.unsubscribe();
    await until(() => seen.length >= 2, { ...wait, what: 'the leave of b' });
    assert.deepEqual(seen[1], ['leave', bob], 'the leave carries the member of the join');
    assert.equal((await a.presence('room.lobby')).count, 1);

    // A third client whose connection drops (no unsub): it leaves too.
    const c = client(broker, { reconnect: false });
    await c.subscribe('room.lobby', () => {}, { presence: true }).ready;
    const carl = memberOf(c);
    await until(() => seen.length >= 3, { ...wait, what: 'the join of c' });
    assert.deepEqual(seen[2], ['join', carl]);
    c._ws.terminate(); // no close frame: the broker sees the TCP connection end
    await until(() => seen.length >= 4, { ...wait, what: 'the leave of a dropped connection' });
    assert.deepEqual(seen[3], ['leave', carl]);
    assert.deepEqual(sessions(await a.presence('room.lobby')), [a.session]);

    // A presence subscription that reconnects comes back as its new session.
    const d = client(broker);
    await d.subscribe('room.lobby', () => {}, { presence: true, presenceInfo: [1, 2] }).ready;
    await until(() => seen.length >= 5, wait);
    const first = d.session;
    d._ws.terminate();
    await until(() => d.state === 'open' && d.session !== first && seen.length >= 7, { ...wait, what: 'the rejoin after a reconnect' });
    const after = seen.slice(4).map(([op, m]) => [op, m.session, m.info]);
    assert.deepEqual(after.find((x) => x[0] === 'leave'), ['leave', first, [1, 2]]);
    assert.deepEqual(after.filter((x) => x[0] === 'join').map((x) => x[1]).sort(), [first, d.session].sort());
    await until(async () => (await a.presence('room.lobby')).count === 2, wait);
  });

  test('auth: the member carries the token subject; listing needs the right to subscribe', async () => {
    const secret = randomBytes(32).toString('hex');
    const broker = await Brokerd.start({ args: ['--jwt-secret', secret] });
    brokers.push(broker);
    const alice = client(broker, { token: jwt(secret, { sub: 'alice', subscribe: ['team.>'] }) });
    const bob = client(broker, { token: jwt(secret, { sub: 'bob', subscribe: ['team.>'] }) });
    const joins = [];
    await alice.subscribe('team.a', () => {}, { presence: true, onJoin: (m) => joins.push(m) }).ready;
    await bob.subscribe('team.a', () => {}, { presence: true }).ready;
    await until(() => joins.length === 1, { ...wait, what: 'the join of bob' });
    assert.deepEqual(joins[0], memberOf(bob, { user: 'bob' }));
    const p = await bob.presence('team.a');
    assert.deepEqual(p.members.map((m) => m.user).sort(), ['alice', 'bob']);
    await assert.rejects(alice.presence('other.room'), (err) => err.code === 'forbidden');
    const denied = alice.subscribe('other.room', () => {}, { presence: true });
    await assert.rejects(denied.ready, (err) => err.code === 'forbidden');
    assert.equal((await bob.presence('team.a')).count, 2);
  });
});
