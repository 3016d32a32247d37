// The client against the protocol's wire vectors (subproto/testdata/
// vectors.json), the one description of the wire that the broker, the Go
// client and this client are all checked against.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';

import { BrokerClient } from '../../src/index.js';
import { isPattern, matchPattern, validPattern, validTopic } from '../../src/util.js';
import { FakeWebSocket, once } from '../helpers/fake.js';

const vectors = JSON.parse(readFileSync(new URL('../../../../subproto/testdata/vectors.json', import.meta.url), 'utf8'));

test('topic rules agree with the vectors', () => {
  assert.ok(vectors.topics.length > 10);
  for (const v of vectors.topics) {
    assert.equal(validTopic(v.s), v.topic, `validTopic(${JSON.stringify(v.s)})`);
    assert.equal(validPattern(v.s), v.topic || v.pattern, `validPattern(${JSON.stringify(v.s)})`);
    if (v.topic || v.pattern) assert.equal(isPattern(v.s), v.pattern, `isPattern(${JSON.stringify(v.s)})`);
  }
  for (const v of vectors.matches) {
    assert.equal(matchPattern(v.pattern, v.topic), v.match, `matchPattern(${v.pattern}, ${v.topic})`);
  }
});

test('every command the vectors accept is one JSON object per line', () => {
  for (const v of vectors.commands) {
    const lines = v.frame.split('\n').filter((l) => l.trim() !== '');
    if (v.close) continue;
    assert.equal(lines.length, v.results.length, v.name);
    lines.forEach((line, i) => {
      const obj = JSON.parse(line);
      const r = v.results[i];
      if (r.cmd) {
        assert.equal(obj.op, r.cmd.op, v.name);
        if (r.cmd.topic !== undefined) assert.equal(validPattern(r.cmd.topic), true, v.name);
        if (r.cmd.pattern) assert.equal(isPattern(r.cmd.topic), true, v.name);
      }
    });
  }
});

test('the client takes every event of the vectors without failing', async () => {
  FakeWebSocket.reset();
  FakeWebSocket.onCreate = (ws) =>
    setTimeout(() => {
      ws.open();
      ws.recv({ op: 'welcome', session: 's1', node: 'fake', version: 'test', heartbeat: 25 });
    }, 0);
  const c = new BrokerClient('ws://broker.test/ws', { WebSocket: FakeWebSocket, window: null, document: null });
  const errors = [];
  c.on('error', (e) => errors.push(e.detail ?? e));
  await once(c, 'open');
  const ws = FakeWebSocket.instances[0];
  for (const v of vectors.events) {
    let parsed;
    try {
      parsed = JSON.parse(v.line);
    } catch {
      assert.ok(v.bad, `${v.name}: not JSON but not marked bad`);
      continue;
    }
    if (!v.bad) assert.equal(typeof parsed.op, 'string', v.name);
    if (v.name.startsWith('welcome')) continue; // a second welcome is ignored anyway
    ws.recv(v.line);
  }
  assert.equal(ws.readyState, 1, 'the connection is still open');
  // Error events that answer no command of this client are reported,
  // nothing else is.
  const unsolicited = vectors.events.filter((v) => !v.bad && JSON.parse(v.line).op === 'err');
  assert.equal(errors.length, unsolicited.length, `errors: ${errors.map(String)}`);
  c.on('error', () => {});
  await c.close();
  FakeWebSocket.reset();
});
