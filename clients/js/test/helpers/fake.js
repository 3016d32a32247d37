// A fake WebSocket and a small in-memory broker behind it, for unit tests
// without a network. The fake broker follows the protocol closely enough
// for the client: welcome, auth, sub (from, epoch, if_gone, presence),
// unsub, pub with idempotency keys, ack, ping, presence; tests take over
// any command with a hook.

export class FakeWebSocket {
  static instances = [];
  static waiters = [];

  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.readyState = 0;
    this.protocol = '';
    this.frames = [];
    this.closedWith = null;
    this.onopen = null;
    this.onmessage = null;
    this.onclose = null;
    this.onerror = null;
    FakeWebSocket.instances.push(this);
    const ws = FakeWebSocket.waiters.shift();
    if (ws) ws(this);
    if (FakeWebSocket.onCreate) FakeWebSocket.onCreate(this);
  }

  static reset() {
    FakeWebSocket.instances = [];
    FakeWebSocket.waiters = [];
    FakeWebSocket.onCreate = null;
  }

  /** Resolves with the next socket the client creates. */
  static next() {
    return new Promise((resolve) => FakeWebSocket.waiters.push(resolve));
  }

  send(data) {
    if (this.readyState !== 1) throw new Error('send on a socket that is not open');
    this.frames.push(data);
    if (this.onsend) this.onsend(data);
  }

  /** Every command sent so far, parsed. */
  get sent() {
    return this.frames.flatMap((f) => f.split('\n').map((l) => JSON.parse(l)));
  }

  close(code, reason) {
    if (this.readyState >= 2) return;
    this.readyState = 2;
    this.closedWith = { code, reason };
    setTimeout(() => this.serverClose(code === undefined ? 1005 : code, reason || '', true), 0);
  }

  // ---- the server's side ----

  open(protocol = 'brokerd.v1.json') {
    this.readyState = 1;
    this.protocol = protocol;
    if (this.onopen) this.onopen({ type: 'open' });
  }

  /** Delivers events (objects or raw lines) to the client in one frame. */
  recv(...events) {
    if (this.readyState !== 1) return;
    const data = events.map((e) => (typeof e === 'string' ? e : JSON.stringify(e))).join('\n');
    if (this.onmessage) this.onmessage({ data });
  }

  serverClose(code, reason = '', wasClean = true) {
    if (this.readyState === 3) return;
    this.readyState = 3;
    if (this.onclose) this.onclose({ code, reason, wasClean });
  }
}

/**
 * An in-memory broker for FakeWebSocket. accept(ws) opens the socket and
 * sends welcome; from then on it answers commands. hooks.command(ws, cmd)
 * may answer a command itself and return true.
 */
export class FakeBroker {
  constructor({ heartbeat = 25, autoAccept = true, features } = {}) {
    this.heartbeat = heartbeat;
    this.features = features; // welcome's features; none (a v1.0 broker) when undefined
    this.presence = new Map(); // topic → Map(session → {ws, member})
    this.topics = new Map(); // topic → {epoch, earliest, log: [{offset, ts, data}], keys: Map}
    this.sockets = [];
    this.hooks = {};
    this.commands = [];
    this.silent = false; // when true, commands are recorded but not answered
    if (autoAccept) {
      FakeWebSocket.onCreate = (ws) => setTimeout(() => this.accept(ws), 0);
    }
  }

  topic(name) {
    let t = this.topics.get(name);
    if (!t) {
      t = { epoch: `e-${name}-1`, earliest: 1, log: [], keys: new Map(), subs: new Set() };
      this.topics.set(name, t);
    }
    return t;
  }

  head(t) {
    return t.log.length ? t.log[t.log.length - 1].offset : t.earliest - 1;
  }

  /** Replaces a topic's history: new epoch, offsets from 1. */
  reset(name, epoch) {
    const t = this.topic(name);
    t.epoch = epoch;
    t.earliest = 1;
    t.log = [];
    t.keys = new Map();
  }

  /** Drops messages before offset (retention). */
  retain(name, earliest) {
    const t = this.topic(name);
    t.log = t.log.filter((m) => m.offset >= earliest);
    t.earliest = earliest;
  }

  append(name, data) {
    const t = this.topic(name);
    const offset = this.head(t) + 1;
    const m = { offset, ts: Date.now(), data };
    t.log.push(m);
    for (const s of t.subs) {
      if (s.ws.readyState === 1 && !s.paused) s.ws.recv({ op: 'msg', topic: name, offset, ts: m.ts, data });
    }
    return offset;
  }

  accept(ws, { welcome = true } = {}) {
    if (ws.readyState !== 0) return;
    this.sockets.push(ws);
    ws.subs = new Map();
    ws.open();
    ws.onsend = (frame) => {
      for (const line of frame.split('\n')) {
        const cmd = JSON.parse(line);
        this.commands.push(cmd);
        if (this.silent) continue;
        if (this.hooks.command && this.hooks.command(ws, cmd)) continue;
        queueMicrotask(() => this.handle(ws, cmd));
      }
    };
    ws.session = `s${this.sockets.length}`;
    const onclose = () => this.leaveAll(ws);
    const serverClose = ws.serverClose.bind(ws);
    ws.serverClose = (...a) => {
      onclose();
      serverClose(...a);
    };
    if (welcome) {
      const w = { op: 'welcome', session: ws.session, node: 'fake', version: 'test', heartbeat: this.heartbeat };
      if (this.features) w.features = this.features;
      ws.recv(w);
    }
  }

  /** The members of topic's presence. */
  members(topic) {
    return [...(this.presence.get(topic) || new Map()).values()].map((p) => p.member);
  }

  join(ws, topic, info) {
    let m = this.presence.get(topic);
    if (!m) this.presence.set(topic, (m = new Map()));
    const member = { session: ws.session, node: 'fake' };
    if (info !== undefined) member.info = info;
    for (const p of m.values()) p.ws.recv({ op: 'join', topic, member });
    m.set(ws.session, { ws, member });
  }

  leave(ws, topic) {
    const m = this.presence.get(topic);
    const me = m && m.get(ws.session);
    if (!me) return;
    m.delete(ws.session);
    for (const p of m.values()) p.ws.recv({ op: 'leave', topic, member: me.member });
  }

  leaveAll(ws) {
    for (const topic of this.presence.keys()) this.leave(ws, topic);
  }

  handle(ws, cmd) {
    if (ws.readyState !== 1) return;
    const reply = (o) => ws.recv({ ...o, id: cmd.id });
    switch (cmd.op) {
      case 'auth':
      case 'ping':
        reply({ op: cmd.op === 'ping' ? 'pong' : 'ok' });
        return;
      case 'pub': {
        const t = this.topic(cmd.topic);
        if (cmd.key && t.keys.has(cmd.key)) {
          reply({ op: 'ok', topic: cmd.topic, offset: t.keys.get(cmd.key), dup: true });
          return;
        }
        const offset = this.append(cmd.topic, cmd.data);
        if (cmd.key) t.keys.set(cmd.key, offset);
        reply({ op: 'ok', topic: cmd.topic, offset });
        return;
      }
      case 'sub': {
        if (/[*>]/.test(cmd.topic)) {
          reply({ op: 'ok', topic: cmd.topic });
          return;
        }
        const t = this.topic(cmd.topic);
        const head = this.head(t);
        const ctx = { epoch: t.epoch, earliest: t.earliest, latest: head };
        if (cmd.epoch && cmd.epoch !== t.epoch) {
          reply({ op: 'err', code: 'epoch_mismatch', message: 'reset', ...ctx });
          return;
        }
        let start = head + 1;
        if (cmd.from === 'earliest') start = t.earliest;
        else if (typeof cmd.from === 'number') start = cmd.from;
        let missed;
        if (start < t.earliest) {
          if (cmd.if_gone !== 'earliest') {
            reply({ op: 'err', code: 'offset_out_of_range', message: 'gone', ...ctx });
            return;
          }
          missed = [start, t.earliest - 1];
          start = t.earliest;
        }
        if (start > head + 1) {
          reply({ op: 'err', code: 'offset_out_of_range', message: 'beyond', ...ctx });
          return;
        }
        const s = { ws, topic: cmd.topic, paused: false };
        ws.subs.set(cmd.topic, s);
        t.subs.add(s);
        if (cmd.presence) this.join(ws, cmd.topic, cmd.presence_info);
        const ok = { op: 'ok', topic: cmd.topic, epoch: t.epoch, head, from: start };
        if (missed) ok.missed = missed;
        reply(ok);
        const replay = t.log.filter((m) => m.offset >= start).map((m) => ({ op: 'msg', topic: cmd.topic, offset: m.offset, ts: m.ts, data: m.data }));
        if (replay.length) ws.recv(...replay);
        return;
      }
      case 'unsub': {
        const s = ws.subs.get(cmd.topic);
        if (s) {
          ws.subs.delete(cmd.topic);
          this.topic(cmd.topic).subs.delete(s);
          this.leave(ws, cmd.topic);
        }
        reply(s ? { op: 'ok' } : { op: 'err', code: 'not_subscribed', message: 'no' });
        return;
      }
      case 'ack':
        reply({ op: 'ok' });
        return;
      case 'presence': {
        const members = this.members(cmd.topic);
        reply({ op: 'ok', topic: cmd.topic, members: members.slice(0, 1000), count: members.length });
        return;
      }
      default:
        reply({ op: 'err', code: 'unknown_op', message: cmd.op });
    }
  }

  /** Closes every open socket from the server's side. */
  closeAll(code = 1001, reason = '') {
    for (const ws of this.sockets) {
      if (ws.readyState === 1) {
        for (const s of ws.subs.values()) this.topic(s.topic).subs.delete(s);
        ws.serverClose(code, reason);
      }
    }
  }

  get current() {
    for (let i = this.sockets.length - 1; i >= 0; i--) if (this.sockets[i].readyState === 1) return this.sockets[i];
    return null;
  }
}

/** Polls fn until it returns a truthy value. */
export async function until(fn, { timeout = 3000, interval = 5, what = 'condition' } = {}) {
  const end = Date.now() + timeout;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, interval));
  }
}

/** Resolves with the detail of the next event of type on target. */
export function once(target, type, { timeout = 3000 } = {}) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`timed out waiting for event ${type}`)), timeout);
    target.addEventListener(type, (e) => {
      clearTimeout(t);
      resolve(e.detail);
    }, { once: true });
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A Storage in memory. */
export class MemoryStorage {
  constructor() {
    this.m = new Map();
  }
  getItem(k) {
    return this.m.has(k) ? this.m.get(k) : null;
  }
  setItem(k, v) {
    this.m.set(k, String(v));
  }
  removeItem(k) {
    this.m.delete(k);
  }
}
