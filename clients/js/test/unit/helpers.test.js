import { test } from 'node:test';
import assert from 'node:assert/strict';

import { backoffDelay, parseCloseReason } from '../../src/backoff.js';
import { isPattern, randomKey, utf8Length, validKey } from '../../src/util.js';
import { PositionStore } from '../../src/positions.js';
import { ErrorCodes, CloseCodes } from '../../src/codes.js';
import * as api from '../../src/index.js';
import { MemoryStorage } from '../helpers/fake.js';

test('backoffDelay is full jitter under an exponential cap', () => {
  const opts = { baseMs: 100, maxMs: 1000 };
  assert.equal(backoffDelay(0, opts, () => 0), 0);
  assert.equal(backoffDelay(0, opts, () => 0.999999), 99);
  assert.equal(backoffDelay(3, opts, () => 0.5), 400);
  assert.equal(backoffDelay(10, opts, () => 0.5), 500, 'capped at maxMs');
  assert.equal(backoffDelay(5000, opts, () => 0.5), 500, 'no overflow for large attempts');
  for (let i = 0; i < 200; i++) {
    const d = backoffDelay(2, opts);
    assert.ok(d >= 0 && d < 400, `delay ${d}`);
  }
});

test('parseCloseReason reads the server JSON and keeps plain text', () => {
  assert.deepEqual(parseCloseReason('{"reason":"going_away","retry_after_ms":1234}'), { reason: 'going_away', retryAfterMs: 1234 });
  assert.deepEqual(parseCloseReason('{"reason":"unauthorized","message":"invalid token"}'), { reason: 'unauthorized', message: 'invalid token' });
  assert.deepEqual(parseCloseReason('slow consumer: write timeout'), { message: 'slow consumer: write timeout' });
  assert.deepEqual(parseCloseReason('{broken'), { message: '{broken' });
  assert.deepEqual(parseCloseReason(''), {});
  assert.deepEqual(parseCloseReason('{"retry_after_ms":-5}'), {});
  assert.deepEqual(parseCloseReason('{"retry_after_ms":"7"}'), {});
});

test('utf8Length agrees with the UTF-8 encoder', () => {
  for (const s of ['', 'abc', 'é', '€', '😀', 'a😀b€é', '\ud800', '\udc00x', 'x\ud800']) {
    assert.equal(utf8Length(s), Buffer.byteLength(s, 'utf8'), JSON.stringify(s));
  }
});

test('keys, patterns and random keys', () => {
  assert.ok(validKey('order-42'));
  assert.ok(validKey('x'.repeat(255)));
  assert.ok(!validKey(''));
  assert.ok(!validKey('x'.repeat(256)));
  assert.ok(!validKey('has space'));
  assert.ok(!validKey('é'));
  assert.ok(isPattern('a.*'));
  assert.ok(isPattern('a.>'));
  assert.ok(!isPattern('a.b'));
  assert.ok(!isPattern('a*.b'));
  const k = randomKey();
  assert.match(k, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.notEqual(randomKey(), k);
});

test('PositionStore batches writes and survives damaged entries', async () => {
  const st = new MemoryStorage();
  const p = new PositionStore(st, 'pfx:', 20);
  p.set('a', 'e1', 5);
  p.set('a', 'e1', 6);
  assert.deepEqual(p.get('a'), { epoch: 'e1', offset: 6 }, 'pending writes are visible');
  assert.equal(st.getItem('pfx:a'), null, 'not written yet');
  await new Promise((r) => setTimeout(r, 40));
  assert.deepEqual(JSON.parse(st.getItem('pfx:a')), { epoch: 'e1', offset: 6 });
  st.setItem('pfx:b', 'not json');
  assert.equal(p.get('b'), null);
  st.setItem('pfx:c', '{"epoch":"","offset":3}');
  assert.equal(p.get('c'), null);
  p.delete('a');
  assert.equal(p.get('a'), null);
});

test('codes.js exports the tables frozen, and the index exports the API', () => {
  assert.ok(Object.isFrozen(ErrorCodes));
  assert.ok(Object.isFrozen(CloseCodes));
  assert.ok(ErrorCodes.epoch_mismatch.length > 20);
  assert.equal(CloseCodes[1001], 'going_away');
  for (const name of ['BrokerClient', 'Subscription', 'BrokerError', 'ErrorCodes', 'CloseCodes', 'ClientErrorCodes', 'IndexedDBOutbox', 'SUBPROTOCOL']) {
    assert.ok(name in api, name);
  }
  assert.equal(api.SUBPROTOCOL, 'brokerd.v1.json');
  for (const code of Object.keys(api.ClientErrorCodes)) {
    assert.ok(!(code in ErrorCodes) || code === 'message_too_large', `client code ${code} shadows a protocol code`);
  }
});
