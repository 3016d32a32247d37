// Integration: tokens. brokerd runs with an HMAC secret; the client sends
// its token in an auth command right after welcome, as a browser must.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac, randomBytes } from 'node:crypto';
import WebSocket from 'ws';

import { BrokerClient } from '../../src/index.js';
import { Brokerd } from '../helpers/brokerd.js';
import { once } from '../helpers/fake.js';

const secret = randomBytes(32).toString('hex');
let broker;
const clients = [];

function b64url(s) {
  return Buffer.from(s).toString('base64url');
}

function jwt(claims, key = secret) {
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64url(JSON.stringify({ exp: Math.floor(Date.now() / 1000) + 600, ...claims }));
  const sig = createHmac('sha256', key).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

function client(opts) {
  const c = new BrokerClient(broker.wsURL, { WebSocket, minReconnectDelayMs: 50, maxReconnectDelayMs: 300, ...opts });
  clients.push(c);
  return c;
}

before(async () => {
  broker = await Brokerd.start({ args: ['--jwt-secret', secret] });
});

after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  if (broker) await broker.dispose();
});

describe('auth', { timeout: 30000 }, () => {
  test('getToken is asked on every connect; permissions apply', async () => {
    let asked = 0;
    const c = client({
      getToken: async () => {
        asked++;
        return jwt({ sub: 'alice', publish: ['auth.>'], subscribe: ['auth.>'] });
      },
    });
    const got = [];
    const s = c.subscribe('auth.orders', (m) => got.push(m.data), { from: 'earliest' });
    await s.ready;
    const r = await c.publish('auth.orders', 'hello');
    assert.equal(r.offset, 1);
    await assert.rejects(c.publish('other.topic', 1), { code: 'forbidden' });
    const denied = c.subscribe('other.topic', () => {});
    await assert.rejects(denied.ready, { code: 'forbidden' });
    assert.equal(asked, 1);

    // A restart: the client reconnects with a fresh token and resumes.
    await broker.restart();
    await once(c, 'open', { timeout: 15000 });
    assert.equal(asked, 2);
    await c.publish('auth.orders', 'again');
    await new Promise((res) => {
      const t = setInterval(() => got.length === 2 && (clearInterval(t), res()), 10);
    });
    assert.deepEqual(got, ['hello', 'again']);
  });

  test('a refused fixed token closes with 4001 and the client stops with the reason', async () => {
    const c = client({ token: jwt({ sub: 'mallory' }, 'not-the-secret-not-the-secret-00') });
    const err = await once(c, 'error', { timeout: 10000 });
    assert.equal(err.error.code, 'unauthorized');
    assert.equal(err.error.closeCode, 4001);
    assert.equal(c.state, 'closed');
    await assert.rejects(c.publish('auth.x', 1), { code: 'closed' });
  });

  test('refreshToken replaces the token of the live connection', async () => {
    const c = client({ token: jwt({ sub: 'bob', subscribe: ['auth.>'] }) });
    await once(c, 'open');
    await assert.rejects(c.publish('auth.bob', 1), { code: 'forbidden' });
    await c.refreshToken(jwt({ sub: 'bob', publish: ['auth.>'], subscribe: ['auth.>'] }));
    assert.equal((await c.publish('auth.bob', 1)).offset, 1);
    await assert.rejects(c.refreshToken('garbage'), { code: 'unauthorized' });
    assert.equal(c.state, 'open', 'a refused refresh leaves the old token in force');
    assert.equal((await c.publish('auth.bob', 2)).offset, 2);
  });
});
