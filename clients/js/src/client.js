// BrokerClient: one resilient connection to brokerd over the
// brokerd.v1.json WebSocket subprotocol.

import { backoffDelay, parseCloseReason, RETRY_AFTER_CODES } from './backoff.js';
import { BrokerError } from './errors.js';
import { outboxStore } from './outbox.js';
import { positionStore } from './positions.js';
import { Subscription } from './subscription.js';
import { SUBPROTOCOL, deferred, isPattern, makeEvent, matchPattern, presenceMember, randomKey, utf8Length, validKey, validPattern, validTopic } from './util.js';

const CONSUMER_RE = /^[A-Za-z0-9_.-]{1,255}$/;
const MAX_INT = Number.MAX_SAFE_INTEGER;
/** The largest presence_info, in bytes of JSON (the protocol's bound). */
const MAX_PRESENCE_INFO = 1024;
/** The most presence queries waiting for the broker's reply. */
const MAX_PRESENCE_QUERIES = 1000;
const OPEN = 1;

const DEFAULTS = {
  autoConnect: true,
  reconnect: true,
  minReconnectDelayMs: 500,
  maxReconnectDelayMs: 30000,
  maxReconnectAttempts: Infinity,
  connectTimeoutMs: 10000,
  pingIntervalMs: undefined, // the heartbeat of the broker's welcome
  pongTimeoutMs: 10000,
  maxQueue: 1000,
  maxQueueBytes: 8 << 20,
  maxMessageBytes: 1 << 20,
  maxFrameBytes: 1 << 20,
  maxCommandsPerFrame: 100,
  bufferSize: 1000,
  onEpochMismatch: 'earliest',
  onOutOfRange: 'earliest',
  outbox: 'memory',
  outboxName: 'brokerd-outbox',
  positions: null,
  positionsPrefix: 'brokerd:pos:',
};

function noop() {}

function validOffset(n) {
  return Number.isSafeInteger(n) && n >= 1 && n <= MAX_INT;
}

/** Resolves url (ws:, wss:, http:, https:, or relative to the page) to a ws: or wss: URL. */
function wsURL(url) {
  const base = globalThis.location && globalThis.location.href;
  const u = base ? new URL(url, base) : new URL(url);
  if (u.protocol === 'http:') u.protocol = 'ws:';
  else if (u.protocol === 'https:') u.protocol = 'wss:';
  if (u.protocol !== 'ws:' && u.protocol !== 'wss:') throw new TypeError(`BrokerClient: ${url} is not a ws, wss, http or https URL`);
  return u.toString();
}

/**
 * A client of brokerd. It connects at once (on the next microtask, so that
 * listeners added right after construction see every event), reconnects
 * with exponential backoff and full jitter, resumes every subscription
 * where it stopped, and re-sends unacknowledged publishes with their
 * idempotency keys.
 *
 * Events (CustomEvent, details in event.detail): connecting, open,
 * closed, reconnecting, statechange, error, republished.
 */
export class BrokerClient extends EventTarget {
  /**
   * @param {string} url the broker's WebSocket endpoint, e.g. wss://host/ws
   * @param {object} [options] see the README
   */
  constructor(url, options = {}) {
    super();
    const o = { ...DEFAULTS };
    for (const [k, v] of Object.entries(options)) if (v !== undefined) o[k] = v;
    this._opts = o;
    /** The ws: or wss: URL connected to. */
    this.url = wsURL(url);
    this._WS = o.WebSocket || globalThis.WebSocket;
    if (typeof this._WS !== 'function') {
      throw new TypeError('BrokerClient: no WebSocket here; pass one: new BrokerClient(url, { WebSocket })');
    }
    if (o.token !== undefined && typeof o.token !== 'string') throw new TypeError('BrokerClient: token must be a string');
    if (o.getToken !== undefined && typeof o.getToken !== 'function') throw new TypeError('BrokerClient: getToken must be a function');
    for (const [name, allowed] of [['onEpochMismatch', ['earliest', 'latest', 'fail']], ['onOutOfRange', ['earliest', 'fail']]]) {
      if (!allowed.includes(o[name])) throw new TypeError(`BrokerClient: ${name} must be one of ${allowed.join(', ')}`);
    }

    /** idle, connecting, open, reconnecting or closed. */
    this.state = 'idle';
    /** The session id of the current connection (from welcome). */
    this.session = undefined;
    /** The welcome of the current connection: {session, node, version, heartbeat}. */
    this.welcome = undefined;
    this.features = [];

    this._ws = null;
    this._gen = 0; // connection generation; events of older sockets are ignored
    this._ready = false; // welcome handled: commands may be sent
    this._attempt = 0;
    this._nextId = 1;
    this._pending = new Map(); // command id → what to do with its reply
    this._subs = new Map(); // topic or pattern → Subscription
    this._queue = []; // unacknowledged publishes, in order
    this._queueBytes = 0;
    this._seq = 0;
    this._acks = new Map(); // "topic\nconsumer" → {topic, consumer, offset, epoch, waiters}
    this._presenceQ = []; // presence queries without a reply: {topic, resolve, reject, sent}
    this._out = [];
    this._flushQueued = false;
    this._timers = { connect: null, reconnect: null, heartbeat: null, pubRetry: null };
    this._serverRetryUntil = 0;
    this._lastRx = 0;
    this._pingSentAt = 0;
    this._lastTick = 0;
    this._closing = null;
    this._instance = randomKey();

    this._positions = positionStore(o.positions, o.positionsPrefix);
    this._store = outboxStore(o.outbox, o.outboxName);
    this._restored = !this._store;
    if (this._store) {
      /** Resolves with how many publishes a persistent outbox brought back from an earlier page. */
      this.outboxRestored = this._store.restore(this._instance).then(
        (recs) => this._adoptRestored(recs),
        (err) => {
          this._restored = true;
          this._emitError(new BrokerError('internal', `outbox: ${err && err.message}`));
          this._flushPubs();
          return 0;
        },
      );
    } else {
      this.outboxRestored = Promise.resolve(0);
    }

    this._win = o.window !== undefined ? o.window : globalThis.window;
    this._doc = o.document !== undefined ? o.document : globalThis.document;
    this._onOnline = () => this._wake();
    this._onVisibility = () => {
      if (!this._doc || this._doc.visibilityState !== 'hidden') this._wake();
    };
    this._onPageHide = () => {
      if (this._positions) this._positions.flush();
    };
    if (this._win && typeof this._win.addEventListener === 'function') {
      this._win.addEventListener('online', this._onOnline);
      this._win.addEventListener('pagehide', this._onPageHide);
    }
    if (this._doc && typeof this._doc.addEventListener === 'function') {
      this._doc.addEventListener('visibilitychange', this._onVisibility);
    }

    if (o.autoConnect) queueMicrotask(() => this.connect());
  }

  // ---- public API ----

  /** Starts connecting when idle; when waiting to reconnect, reconnects now. */
  connect() {
    if (this.state === 'closed') throw new BrokerError('closed', 'the client is closed');
    if (this._ws) return;
    this._connect();
  }

  /**
   * Subscribes to a topic or pattern. With a handler, each message is
   * passed to it; without, iterate the subscription (for await).
   *
   * @param {string} topic
   * @param {((msg: object) => unknown) | object} [handler]
   * @param {object} [opts] from, epoch, consumer, maxInflight, ifGone, resume, bufferSize, onEpochMismatch, onOutOfRange,
   *   presence, presenceInfo, onJoin, onLeave, onPresenceMuted
   */
  subscribe(topic, handler, opts) {
    if (handler !== undefined && handler !== null && typeof handler !== 'function') {
      opts = handler;
      handler = null;
    }
    opts = opts || {};
    if (this.state === 'closed') throw new BrokerError('closed', 'the client is closed');
    const pattern = typeof topic === 'string' && isPattern(topic);
    if (pattern ? !validPattern(topic) : !validTopic(topic)) {
      throw new BrokerError('invalid_topic', `${JSON.stringify(topic)} is not a topic name or pattern`);
    }
    if (pattern && (opts.from !== undefined || opts.consumer !== undefined || opts.epoch !== undefined || opts.last !== undefined)) {
      throw new TypeError('subscribe: a pattern subscription takes since, positions and ifGone: no from, last, epoch or consumer');
    }
    if (!pattern && opts.positions !== undefined) {
      throw new TypeError('subscribe: positions apply to pattern subscriptions only');
    }
    if ([opts.from, opts.last, opts.since].filter((v) => v !== undefined).length > 1) {
      throw new TypeError('subscribe: from, last and since exclude each other');
    }
    if (opts.last !== undefined && (!Number.isSafeInteger(opts.last) || opts.last < 1 || opts.last > 10000)) {
      throw new TypeError('subscribe: last must be an integer from 1 to 10000');
    }
    if (opts.since !== undefined) {
      const ms = opts.since instanceof Date ? opts.since.getTime() : opts.since;
      if (!Number.isSafeInteger(ms) || ms < 0) throw new TypeError('subscribe: since must be a Date or milliseconds since the Unix epoch');
      opts = { ...opts, since: ms };
    }
    if (opts.positions !== undefined) {
      if (!opts.positions || typeof opts.positions !== 'object') throw new TypeError('subscribe: positions must be an object of topic → {from, epoch}');
      for (const [t, p] of Object.entries(opts.positions)) {
        if (!validTopic(t) || !matchPattern(topic, t) || !p || !validOffset(p.from) || (p.epoch !== undefined && (typeof p.epoch !== 'string' || p.epoch === ''))) {
          throw new TypeError(`subscribe: positions: ${JSON.stringify(t)} must be a topic matching ${topic} with {from: offset, epoch?: string}`);
        }
      }
    }
    if (opts.from !== undefined && opts.from !== 'earliest' && opts.from !== 'latest' && !validOffset(opts.from)) {
      throw new TypeError('subscribe: from must be "earliest", "latest" or an offset (a positive integer)');
    }
    if (opts.consumer !== undefined && !CONSUMER_RE.test(opts.consumer)) {
      throw new TypeError('subscribe: consumer must be 1 to 255 characters of [A-Za-z0-9_.-]');
    }
    if (opts.maxInflight !== undefined && (!opts.consumer || !Number.isSafeInteger(opts.maxInflight) || opts.maxInflight < 1 || opts.maxInflight > 10000)) {
      throw new TypeError('subscribe: maxInflight is 1 to 10000 and needs a consumer');
    }
    if (opts.epoch !== undefined && (typeof opts.epoch !== 'string' || opts.epoch === '')) {
      throw new TypeError('subscribe: epoch must be a non-empty string');
    }
    if (opts.presence !== undefined && typeof opts.presence !== 'boolean') throw new TypeError('subscribe: presence must be true or false');
    if (pattern && opts.presence) throw new TypeError('subscribe: presence is for a topic: a pattern subscription cannot join presence');
    for (const k of ['onJoin', 'onLeave', 'onPresenceMuted']) {
      if (opts[k] !== undefined && typeof opts[k] !== 'function') throw new TypeError(`subscribe: ${k} must be a function`);
    }
    if (opts.presenceInfo !== undefined) {
      if (!opts.presence) throw new TypeError('subscribe: presenceInfo needs presence: true');
      let json;
      try {
        json = JSON.stringify(opts.presenceInfo);
      } catch (err) {
        throw new TypeError(`subscribe: presenceInfo must be a JSON value: ${err && err.message}`);
      }
      if (json === undefined) throw new TypeError('subscribe: presenceInfo must be a JSON value (undefined, a function or a symbol is not)');
      if (utf8Length(json) > MAX_PRESENCE_INFO) {
        throw new TypeError(`subscribe: presenceInfo is ${utf8Length(json)} bytes of JSON, the limit is ${MAX_PRESENCE_INFO}`);
      }
      // Sent as this text on every (re)subscribe: later changes to the
      // object do not leak into the member the others see.
      opts = { ...opts, presenceInfo: JSON.parse(json) };
    }
    if (this._subs.has(topic)) {
      throw new BrokerError('already_subscribed', `already subscribed to ${topic}; unsubscribe first`, { topic });
    }
    if (opts.presence && this._ready && !this.hasFeature('presence')) {
      throw new BrokerError('unsupported', `subscribe to ${topic} with presence: the broker (${this.welcome ? this.welcome.version : 'unknown version'}) does not have the feature "presence"`, { topic });
    }
    const sub = new Subscription(this, topic, handler || null, opts, {
      onEpochMismatch: this._opts.onEpochMismatch,
      onOutOfRange: this._opts.onOutOfRange,
      bufferSize: this._opts.bufferSize,
      positions: this._positions,
    });
    this._subs.set(topic, sub);
    this._sendSub(sub);
    return sub;
  }

  /**
   * Publishes data (any JSON value) to topic. Resolves with {topic, offset,
   * dup, key} once the message is durable. While disconnected the publish
   * waits in the queue; every publish carries an idempotency key, so a
   * re-send after a lost reply never stores it twice.
   */
  publish(topic, data, opts = {}) {
    if (this.state === 'closed') return Promise.reject(new BrokerError('closed', 'the client is closed'));
    if (!validTopic(topic)) {
      const why = typeof topic === 'string' && isPattern(topic) && validPattern(topic)
        ? 'is a pattern: publish to one topic'
        : "is not a topic name: 1 to 255 bytes of segments of letters, digits, '_' and '-' joined by '.'";
      return Promise.reject(new BrokerError('invalid_topic', `${JSON.stringify(topic)} ${why}`));
    }
    let json;
    try {
      json = JSON.stringify(data);
    } catch (err) {
      return Promise.reject(err);
    }
    if (json === undefined) return Promise.reject(new TypeError('publish: data must be a JSON value (undefined, a function or a symbol is not)'));
    const key = opts.key !== undefined ? opts.key : randomKey();
    if (!validKey(key)) return Promise.reject(new BrokerError('invalid_key', 'publish: key must be 1 to 255 characters of visible ASCII'));
    const bytes = utf8Length(json);
    if (bytes > this._opts.maxMessageBytes || bytes + utf8Length(topic) + key.length + 64 > this._opts.maxFrameBytes) {
      return Promise.reject(new BrokerError('message_too_large', `publish: data is ${bytes} bytes, the limit is ${this._opts.maxMessageBytes}`));
    }
    if (this._queue.length >= this._opts.maxQueue || this._queueBytes + bytes > this._opts.maxQueueBytes) {
      return Promise.reject(new BrokerError('queue_full', `publish: ${this._queue.length} publishes (${this._queueBytes} bytes) wait for the broker already`));
    }
    const d = deferred();
    const entry = {
      id: `${topic}\n${key}`, topic, key, data: json, bytes, ts: Date.now(), seq: ++this._seq,
      state: 'queued', persisted: !this._store, restored: false, attempts: 0,
      resolve: d.resolve, reject: d.reject,
    };
    this._queue.push(entry);
    this._queueBytes += bytes;
    if (this._store) {
      this._store.put(this._record(entry)).then(
        () => {
          entry.persisted = true;
          this._flushPubs();
        },
        (err) => {
          entry.persisted = true; // send it anyway; it just will not survive a reload
          this._emitError(new BrokerError('internal', `outbox: ${err && err.message}`));
          this._flushPubs();
        },
      );
    } else {
      this._flushPubs();
    }
    return d.promise;
  }

  /**
   * Whether the broker has the protocol feature f ("last", "since",
   * "pattern_replay", "ack_epoch", "presence"), from its latest welcome.
   */
  hasFeature(f) {
    return Array.isArray(this.features) && this.features.includes(f);
  }

  /**
   * Lists the presence of topic: resolves with {topic, members, count},
   * members being at most 1,000 of the count. Needs the right to
   * subscribe to the topic and a broker with the feature "presence"
   * (otherwise it rejects with unsupported). While disconnected the query
   * waits for the connection; one in flight when the connection drops is
   * asked again on the next (it changes nothing). At most 1,000 queries
   * wait at once (queue_full beyond).
   */
  presence(topic) {
    if (this.state === 'closed') return Promise.reject(new BrokerError('closed', 'the client is closed'));
    if (!validTopic(topic)) {
      return Promise.reject(new BrokerError('invalid_topic', `${JSON.stringify(topic)} is not a topic name: presence is per topic, not per pattern`));
    }
    if (this._presenceQ.length >= MAX_PRESENCE_QUERIES) {
      return Promise.reject(new BrokerError('queue_full', `presence: ${this._presenceQ.length} presence queries wait for the broker already`, { topic }));
    }
    const d = deferred();
    const q = { topic, resolve: d.resolve, reject: d.reject, sent: false };
    this._presenceQ.push(q);
    this._flushPresence();
    return d.promise;
  }

  /**
   * Acknowledges that the durable consumer has processed everything up to
   * offset of topic (cumulative). Resolves once the broker has stored it.
   * The ack carries the epoch of the consumer's subscription, so that it
   * never lands in a reset history.
   */
  ack(topic, consumer, offset) {
    if (this.state === 'closed') return Promise.reject(new BrokerError('closed', 'the client is closed'));
    if (!validTopic(topic)) return Promise.reject(new BrokerError('invalid_topic', `${JSON.stringify(topic)} is not a topic name`));
    if (typeof consumer !== 'string' || !CONSUMER_RE.test(consumer)) return Promise.reject(new TypeError('ack: consumer must be 1 to 255 characters of [A-Za-z0-9_.-]'));
    if (!validOffset(offset)) return Promise.reject(new TypeError('ack: offset must be a positive integer'));
    const sub = this._subs.get(topic);
    const epoch = sub && sub.consumer === consumer ? sub.epoch : undefined;
    const k = `${topic}\n${consumer}`;
    const d = deferred();
    let a = this._acks.get(k);
    if (!a) {
      a = { topic, consumer, offset, epoch, waiters: [] };
      this._acks.set(k, a);
    }
    if (offset > a.offset) a.offset = offset;
    if (epoch !== undefined) a.epoch = epoch;
    a.waiters.push(d);
    this._flushAcks();
    return d.promise;
  }

  /**
   * Replaces the token of the live connection (an auth command): the
   * broker re-evaluates the permissions, and a token about to expire is
   * renewed without a reconnect. Without an argument it asks getToken.
   * A token given here and accepted is also the one later reconnects send;
   * a refused one leaves the old token in force, as on the broker.
   */
  async refreshToken(token) {
    if (this.state === 'closed') throw new BrokerError('closed', 'the client is closed');
    const given = token !== undefined;
    if (!given) {
      if (!this._opts.getToken) throw new TypeError('refreshToken: pass a token, or construct the client with getToken');
      token = await this._opts.getToken();
    }
    if (typeof token !== 'string' || token === '') throw new TypeError('refreshToken: the token must be a non-empty string');
    if (!this._ready) {
      if (given) this._opts.token = token; // the next connect sends it
      return;
    }
    await new Promise((resolve, reject) => {
      this._command({ op: 'auth', token }, { kind: 'auth', resolve, reject });
    });
    // Accepted: reconnects use it too (a refused one leaves the old in force).
    if (given) this._opts.token = token;
  }

  /**
   * Closes the connection with code 1000 and stops reconnecting. Pending
   * publishes and acks are rejected with code "closed" (with the
   * IndexedDB outbox, unacknowledged publishes stay there for the next
   * client). Resolves once the socket has closed.
   */
  close(code = 1000, reason = '') {
    if (this._closing) return this._closing;
    const done = deferred();
    this._closing = done.promise;
    const err = new BrokerError('closed', 'the client was closed');
    const ws = this._ws;
    this._shutdown(err, true);
    if (!ws) {
      done.resolve();
      return this._closing;
    }
    let finished = false;
    const finish = (ev) => {
      if (finished) return;
      finished = true;
      clearTimeout(t);
      this._emit('closed', { code: ev ? ev.code : code, reason: ev ? ev.reason : reason, wasClean: ev ? !!ev.wasClean : false, willReconnect: false });
      done.resolve();
    };
    const t = setTimeout(() => {
      if (typeof ws.terminate === 'function') ws.terminate();
      finish(null);
    }, 1000);
    ws.onclose = (ev) => finish(ev);
    ws.onerror = noop;
    ws.onmessage = null;
    try {
      ws.close(code, reason);
    } catch {
      finish(null);
    }
    return this._closing;
  }

  /** The subscriptions of this client. */
  get subscriptions() {
    return [...this._subs.values()];
  }

  /** How many publishes wait for the broker's ok. */
  get pendingPublishes() {
    return this._queue.length;
  }

  /**
   * Listens to one of the client's events; fn gets the event's detail and
   * the event. Returns a function that removes the listener.
   */
  on(type, fn) {
    const l = (e) => fn(e.detail, e);
    this.addEventListener(type, l);
    return () => this.removeEventListener(type, l);
  }

  // ---- connection ----

  _connect() {
    if (this.state === 'closed' || this._ws) return;
    this._clearTimer('reconnect');
    const gen = ++this._gen;
    this._setState('connecting');
    this._emit('connecting', { attempt: this._attempt, url: this.url });
    let tokenP = null;
    if (this._opts.getToken) {
      tokenP = Promise.resolve().then(() => this._opts.getToken());
      tokenP.catch(noop);
    }
    let ws;
    try {
      ws = new this._WS(this.url, SUBPROTOCOL);
    } catch (err) {
      this._emitError(err);
      this._dropped(gen, 1006, String(err && err.message), false);
      return;
    }
    this._ws = ws;
    this._welcomed = false;
    this._timers.connect = setTimeout(() => this._abort(gen, 'no welcome from the broker within the connect timeout'), this._opts.connectTimeoutMs);
    ws.onopen = () => {
      if (gen !== this._gen) return;
      if (ws.protocol !== SUBPROTOCOL) this._abort(gen, `the server did not select the subprotocol ${SUBPROTOCOL}`);
    };
    ws.onmessage = (ev) => this._onFrame(gen, ev.data);
    ws.onclose = (ev) => this._dropped(gen, ev.code, ev.reason, ev.wasClean);
    ws.onerror = noop; // a close event follows
    this._tokenP = tokenP;
  }

  /** Gives up on the current socket now (heartbeat or connect timeout). */
  _abort(gen, reason) {
    if (gen !== this._gen || !this._ws) return;
    const ws = this._ws;
    ws.onopen = null;
    ws.onmessage = null;
    ws.onclose = null;
    ws.onerror = noop;
    try {
      if (typeof ws.terminate === 'function') ws.terminate();
      else ws.close(4000, reason.slice(0, 120));
    } catch {
      // already closing
    }
    this._dropped(gen, 1006, reason, false);
  }

  _dropped(gen, code, reason, wasClean) {
    if (gen !== this._gen || this.state === 'closed') return;
    this._ws = null;
    this._teardownConnection();
    const parsed = parseCloseReason(reason);
    let fatal = null;
    if ((code === 4001 || code === 4003) && !this._opts.getToken) {
      // A fixed token that the broker refused will be refused again.
      fatal = new BrokerError('unauthorized', parsed.message || (code === 4003 ? 'the token has expired' : 'the broker refused the token'), { closeCode: code, closeReason: reason });
    }
    const willReconnect = !fatal && this._opts.reconnect && this._attempt < this._opts.maxReconnectAttempts;
    const retryAfterMs = RETRY_AFTER_CODES.has(code) ? parsed.retryAfterMs : undefined;
    this._emit('closed', { code, reason: reason || '', wasClean: !!wasClean, willReconnect, retryAfterMs, message: parsed.message });
    if (this.state === 'closed') return; // a listener called close()
    if (!willReconnect) {
      const err = fatal || new BrokerError('connection_lost', `the connection closed (${code}) and the client does not reconnect`, { closeCode: code, closeReason: reason });
      if (fatal) this._emitError(fatal);
      this._shutdown(err, false);
      return;
    }
    let delay = backoffDelay(this._attempt, { baseMs: this._opts.minReconnectDelayMs, maxMs: this._opts.maxReconnectDelayMs });
    this._serverRetryUntil = 0;
    if (retryAfterMs !== undefined) {
      delay = Math.max(delay, retryAfterMs);
      this._serverRetryUntil = Date.now() + retryAfterMs;
    }
    this._attempt++;
    this._timers.reconnect = setTimeout(() => {
      this._timers.reconnect = null;
      this._connect();
    }, delay);
    this._setState('reconnecting');
    this._emit('reconnecting', { attempt: this._attempt, delayMs: delay, retryAfterMs });
  }

  /** Forgets everything tied to the connection that just ended. */
  _teardownConnection() {
    this._clearTimer('connect');
    this._clearTimer('heartbeat');
    this._ready = false;
    this._welcomed = false;
    this._out = [];
    this._pingSentAt = 0;
    this.session = undefined;
    for (const p of this._pending.values()) {
      switch (p.kind) {
        case 'pub':
          if (p.entry.state === 'sent') p.entry.state = 'queued';
          break;
        case 'ack':
          this._requeueAck(p.ack);
          break;
        case 'unsub':
          p.resolve();
          break;
        case 'presence':
          p.q.sent = false; // asked again on the next connection
          break;
        case 'auth':
          if (p.reject) p.reject(new BrokerError('connection_lost', 'the connection closed before the broker answered the auth'));
          break;
        default:
      }
    }
    this._pending.clear();
    for (const sub of this._subs.values()) sub._disconnected();
  }

  /** Back online or visible again: check the connection now. */
  _wake() {
    if (this.state === 'reconnecting') {
      const now = Date.now();
      if (this._serverRetryUntil > now) {
        // The broker asked for this wait; only make sure a throttled timer does not stretch it.
        this._clearTimer('reconnect');
        this._timers.reconnect = setTimeout(() => {
          this._timers.reconnect = null;
          this._connect();
        }, this._serverRetryUntil - now);
        return;
      }
      this._connect();
    } else if (this.state === 'open' || this.state === 'connecting') {
      this._checkLiveness(this._gen, true);
    }
  }

  _onFrame(gen, data) {
    if (gen !== this._gen) return;
    if (typeof data !== 'string') {
      this._emitError(new BrokerError('bad_request', 'the broker sent a binary frame on the JSON subprotocol'));
      return;
    }
    this._lastRx = Date.now();
    this._pingSentAt = 0;
    let start = 0;
    while (start <= data.length) {
      let end = data.indexOf('\n', start);
      if (end < 0) end = data.length;
      const line = data.slice(start, end);
      start = end + 1;
      if (line.trim() === '') continue;
      let ev;
      try {
        ev = JSON.parse(line);
      } catch {
        this._emitError(new BrokerError('bad_request', `the broker sent a line that is not JSON: ${line.slice(0, 100)}`));
        continue;
      }
      if (!ev || typeof ev !== 'object') continue;
      this._onEvent(gen, ev);
      if (gen !== this._gen) return; // the event closed the connection
    }
  }

  _onEvent(gen, ev) {
    switch (ev.op) {
      case 'msg': {
        const sub = this._subs.get(ev.sub !== undefined ? ev.sub : ev.topic);
        if (sub) sub._onMsg(ev);
        return;
      }
      case 'ok':
      case 'err':
      case 'pong': {
        const p = ev.id !== undefined ? this._pending.get(ev.id) : undefined;
        if (!p) {
          if (ev.op === 'err') this._emitError(new BrokerError(ev.code, ev.message, ev));
          return;
        }
        this._pending.delete(ev.id);
        this._onReply(p, ev);
        return;
      }
      case 'topic': {
        const sub = this._subs.get(ev.sub);
        if (sub) sub._onTopic(ev);
        return;
      }
      case 'unsubbed': {
        const sub = this._subs.get(ev.topic);
        if (sub && sub._onUnsubbed(ev)) this._sendSub(sub);
        return;
      }
      case 'join':
      case 'leave':
      case 'presence_muted': {
        const sub = this._subs.get(ev.topic);
        if (sub) sub._onPresence(ev);
        return;
      }
      case 'welcome':
        this._onWelcome(gen, ev);
        return;
      default:
      // an event of a later protocol version: ignore it
    }
  }

  async _onWelcome(gen, ev) {
    if (this._welcomed) return;
    this._welcomed = true;
    this._clearTimer('connect');
    this.welcome = { session: ev.session, node: ev.node, version: ev.version, heartbeat: ev.heartbeat };
    /** The protocol v1.1 features of the broker (welcome's features; [] from a v1.0 broker). */
    this.features = Array.isArray(ev.features) ? ev.features.filter((f) => typeof f === 'string') : [];
    this.session = ev.session;
    let token = this._opts.token;
    if (this._tokenP) {
      try {
        token = await this._tokenP;
      } catch (err) {
        if (gen !== this._gen) return;
        this._emitError(err);
        this._abort(gen, 'getToken failed');
        return;
      }
      if (gen !== this._gen) return;
      if (typeof token !== 'string' || token === '') {
        this._emitError(new TypeError('getToken must resolve to a non-empty string'));
        this._abort(gen, 'getToken gave no token');
        return;
      }
    }
    this._ready = true;
    if (token) {
      // Browsers cannot set headers on a WebSocket: the token goes in an
      // auth command, first thing. Later commands may follow at once: the
      // broker runs a connection's commands in order.
      this._command({ op: 'auth', token }, { kind: 'auth' });
    }
    this._startHeartbeat(gen);
    for (const sub of [...this._subs.values()]) this._sendSub(sub);
    this._flushAcks();
    this._flushPubs();
    this._flushPresence();
    if (!token) this._opened();
  }

  _opened() {
    this._attempt = 0;
    this._setState('open');
    this._emit('open', { ...this.welcome });
  }

  _onReply(p, ev) {
    switch (p.kind) {
      case 'auth':
        if (ev.op === 'ok') {
          if (this.state !== 'open') this._opened();
          if (p.resolve) p.resolve();
        } else {
          const err = new BrokerError(ev.code, ev.message, ev);
          if (p.reject) p.reject(err);
          else this._emitError(err);
        }
        return;
      case 'sub': {
        const sub = p.sub;
        if (sub._inflight === ev.id) sub._inflight = 0;
        if (ev.op === 'ok') {
          sub._onOk(ev);
          this._flushAcks();
        } else {
          sub._sent = false;
          if (sub._onErr(ev, p.cmd)) this._sendSub(sub);
        }
        return;
      }
      case 'unsub':
        p.resolve();
        return;
      case 'presence': {
        const q = p.q;
        const i = this._presenceQ.indexOf(q);
        if (i >= 0) this._presenceQ.splice(i, 1);
        if (ev.op === 'ok') {
          const members = Array.isArray(ev.members) ? ev.members.map(presenceMember).filter((m) => m !== null) : [];
          q.resolve({ topic: typeof ev.topic === 'string' ? ev.topic : q.topic, members, count: Number.isSafeInteger(ev.count) ? ev.count : members.length });
        } else {
          q.reject(new BrokerError(ev.code, ev.message, { ...ev, topic: q.topic }));
        }
        return;
      }
      case 'pub':
        this._onPubReply(p.entry, ev);
        return;
      case 'ack': {
        const a = p.ack;
        if (ev.op === 'ok') for (const w of a.waiters) w.resolve();
        else {
          const err = new BrokerError(ev.code, ev.message, { ...ev, topic: a.topic });
          for (const w of a.waiters) w.reject(err);
        }
        return;
      }
      default:
      // ping: any reply is proof of life, counted in _onFrame
    }
  }

  // ---- heartbeat ----

  _startHeartbeat(gen) {
    const hb = this.welcome && this.welcome.heartbeat > 0 ? this.welcome.heartbeat * 1000 : 25000;
    this._idleMs = this._opts.pingIntervalMs || hb;
    this._tickMs = Math.max(20, Math.min(5000, Math.floor(this._idleMs / 2)));
    this._lastTick = Date.now();
    this._lastRx = Date.now();
    this._clearTimer('heartbeat');
    this._timers.heartbeat = setInterval(() => this._checkLiveness(gen, false), this._tickMs);
  }

  /**
   * The broker's WebSocket pings are invisible to browser code, so the
   * client asks with ping commands when it has heard nothing for a
   * heartbeat interval, and gives the connection up when the answer takes
   * longer than pongTimeoutMs. Everything is measured in wall time: a
   * throttled background tab fires timers late, and a late tick only sends
   * a fresh ping instead of condemning the connection.
   */
  _checkLiveness(gen, force) {
    if (gen !== this._gen || !this._ready) return;
    const now = Date.now();
    const late = now - this._lastTick > this._tickMs * 3;
    this._lastTick = now;
    if (this._pingSentAt) {
      if (late) {
        this._ping(now);
        return;
      }
      if (now - this._pingSentAt >= this._opts.pongTimeoutMs) {
        this._abort(gen, `heartbeat timeout: no answer from the broker within ${this._opts.pongTimeoutMs} ms`);
      }
      return;
    }
    if (force || now - this._lastRx >= this._idleMs) this._ping(now);
  }

  _ping(now) {
    this._pingSentAt = now;
    this._command({ op: 'ping' }, { kind: 'ping' });
  }

  // ---- subscriptions ----

  _sendSub(sub) {
    if (!this._ready || sub.state === 'ended' || sub._paused || sub._sent) return;
    if (sub.presence && !this.hasFeature('presence')) {
      // A broker without presence would refuse the fields (bad_request),
      // or an older one ignore them: say why instead.
      sub._end(new BrokerError('unsupported', `subscribe to ${sub.topic} with presence: the broker (${this.welcome ? this.welcome.version : 'unknown version'}) does not have the feature "presence"`, { topic: sub.topic }));
      return;
    }
    const cmd = sub._command();
    sub._sent = true;
    sub.state = 'pending';
    sub._inflight = this._command(cmd, { kind: 'sub', sub, cmd });
  }

  _retrySub(sub, attempt) {
    const delay = backoffDelay(attempt, { baseMs: 200, maxMs: 5000 }) + 100;
    setTimeout(() => {
      if (this._subs.get(sub.topic) === sub) this._sendSub(sub);
    }, delay);
  }

  /** The subscription's buffer is full: let the broker stop sending. */
  _pause(sub) {
    if (this._ready && sub._sent) {
      this._command({ op: 'unsub', topic: sub.topic }, { kind: 'unsub', resolve: noop });
    }
    sub._sent = false;
  }

  /** The subscription's buffer has room again: resume from its next offset. */
  _resume(sub) {
    this._sendSub(sub);
  }

  _unsub(sub) {
    if (!this._ready || !sub._sent) return Promise.resolve();
    sub._sent = false;
    return new Promise((resolve) => {
      this._command({ op: 'unsub', topic: sub.topic }, { kind: 'unsub', resolve });
    });
  }

  _forget(sub) {
    if (this._subs.get(sub.topic) === sub) this._subs.delete(sub.topic);
    for (const [k, a] of this._acks) {
      if (a.topic === sub.topic && a.consumer === sub.consumer && sub.error) {
        this._acks.delete(k);
        for (const w of a.waiters) w.reject(sub.error);
      }
    }
  }

  // ---- acks ----

  _flushAcks() {
    if (!this._ready) return;
    for (const [k, a] of this._acks) {
      const sub = this._subs.get(a.topic);
      const mine = sub && sub.consumer === a.consumer;
      if (mine && sub.state !== 'active' && sub.state !== 'paused') continue; // after the sub's ok: the epoch is known then
      if (mine && a.epoch !== undefined && sub.epoch !== a.epoch) {
        this._acks.delete(k);
        const err = new BrokerError('epoch_mismatch', `ack of ${a.topic} offset ${a.offset}: the topic's history was reset since`, { topic: a.topic, epoch: sub.epoch });
        for (const w of a.waiters) w.reject(err);
        continue;
      }
      this._acks.delete(k);
      const cmd = { op: 'ack', topic: a.topic, consumer: a.consumer, offset: a.offset };
      // The epoch the offset belongs to: the broker stores nothing when
      // it is not current (v1.1; a v1.0 broker would refuse the field).
      const epoch = a.epoch !== undefined ? a.epoch : mine ? sub.epoch : undefined;
      if (epoch !== undefined && this.hasFeature('ack_epoch')) cmd.epoch = epoch;
      this._command(cmd, { kind: 'ack', ack: a });
    }
  }

  _requeueAck(a) {
    const k = `${a.topic}\n${a.consumer}`;
    const cur = this._acks.get(k);
    if (!cur) {
      this._acks.set(k, a);
      return;
    }
    if (a.offset > cur.offset) cur.offset = a.offset;
    if (cur.epoch === undefined) cur.epoch = a.epoch;
    cur.waiters.push(...a.waiters);
  }

  // ---- presence queries ----

  _flushPresence() {
    if (!this._ready) return;
    for (const q of [...this._presenceQ]) {
      if (q.sent) continue;
      if (!this.hasFeature('presence')) {
        this._presenceQ.splice(this._presenceQ.indexOf(q), 1);
        q.reject(new BrokerError('unsupported', `presence of ${q.topic}: the broker (${this.welcome ? this.welcome.version : 'unknown version'}) does not have the feature "presence"`, { topic: q.topic }));
        continue;
      }
      q.sent = true;
      this._command({ op: 'presence', topic: q.topic }, { kind: 'presence', q });
    }
  }

  // ---- publishes ----

  _record(e) {
    return { id: e.id, topic: e.topic, key: e.key, data: e.data, ts: e.ts, seq: e.seq, owner: this._instance };
  }

  _adoptRestored(recs) {
    if (this.state === 'closed') return 0;
    const entries = [];
    for (const r of recs) {
      if (!r || typeof r.topic !== 'string' || typeof r.key !== 'string' || typeof r.data !== 'string') continue;
      const bytes = utf8Length(r.data);
      entries.push({
        id: r.id, topic: r.topic, key: r.key, data: r.data, bytes, ts: r.ts, seq: r.seq,
        state: 'queued', persisted: true, restored: true, attempts: 0, resolve: noop, reject: noop,
      });
      this._queueBytes += bytes;
    }
    this._queue.unshift(...entries);
    this._restored = true;
    this._flushPubs();
    return entries.length;
  }

  _flushPubs() {
    if (!this._ready || !this._restored) return;
    for (const e of this._queue) {
      if (e.state !== 'queued') continue;
      if (!e.persisted) break; // keep the order: wait until it is in the outbox
      e.state = 'sent';
      // data is spliced in as the JSON text it was stored as.
      this._commandText(`{"op":"pub","id":${this._nextId},"topic":${JSON.stringify(e.topic)},"key":${JSON.stringify(e.key)},"data":${e.data}}`, { kind: 'pub', entry: e });
    }
  }

  _onPubReply(e, ev) {
    if (e.state !== 'sent') return;
    if (ev.op === 'err' && (ev.code === 'unavailable' || ev.code === 'rate_limited' || (ev.code === 'internal' && e.attempts < 3))) {
      // Retry with the same key: it stores nothing if the first one landed.
      e.attempts++;
      e.state = 'queued';
      if (!this._timers.pubRetry) {
        this._timers.pubRetry = setTimeout(() => {
          this._timers.pubRetry = null;
          this._flushPubs();
        }, backoffDelay(e.attempts, { baseMs: 250, maxMs: 5000 }) + 100);
      }
      return;
    }
    const i = this._queue.indexOf(e);
    if (i >= 0) this._queue.splice(i, 1);
    this._queueBytes -= e.bytes;
    e.state = 'done';
    if (this._store) this._store.delete(e.id).catch((err) => this._emitError(new BrokerError('internal', `outbox: ${err && err.message}`)));
    if (ev.op === 'ok') {
      const res = { topic: e.topic, offset: ev.offset, dup: ev.dup === true, key: e.key };
      e.resolve(res);
      if (e.restored) this._emit('republished', res);
    } else {
      const err = new BrokerError(ev.code, ev.message, { ...ev, topic: e.topic });
      e.reject(err);
      if (e.restored) this._emitError(err);
    }
  }

  // ---- sending ----

  /** Sends cmd with a fresh id and remembers what to do with the reply. */
  _command(cmd, pending) {
    const id = this._nextId;
    const obj = { op: cmd.op, id };
    for (const k of Object.keys(cmd)) if (k !== 'op' && k !== 'id') obj[k] = cmd[k];
    this._commandText(JSON.stringify(obj), pending);
    return id;
  }

  _commandText(line, pending) {
    const id = this._nextId++;
    this._pending.set(id, pending);
    this._out.push(line);
    if (!this._flushQueued) {
      this._flushQueued = true;
      queueMicrotask(() => this._flushOut());
    }
    return id;
  }

  /** Writes what is queued, several commands to a frame within the frame limits. */
  _flushOut() {
    this._flushQueued = false;
    const ws = this._ws;
    const lines = this._out;
    this._out = [];
    if (!ws || ws.readyState !== OPEN || lines.length === 0) return;
    const maxBytes = this._opts.maxFrameBytes, maxCmds = this._opts.maxCommandsPerFrame;
    let frame = [], size = 0;
    try {
      for (const line of lines) {
        const n = utf8Length(line);
        if (frame.length > 0 && (size + 1 + n > maxBytes || frame.length >= maxCmds)) {
          ws.send(frame.join('\n'));
          frame = [];
          size = 0;
        }
        size += (frame.length > 0 ? 1 : 0) + n;
        frame.push(line);
      }
      if (frame.length > 0) ws.send(frame.join('\n'));
    } catch (err) {
      // The socket is going away; its close event resets and re-sends.
      this._emitError(err);
    }
  }

  // ---- shutdown and helpers ----

  /** Stops for good: state closed, everything pending rejected with err. */
  _shutdown(err, byUser) {
    this._gen++;
    this._ws = null;
    this._teardownConnection();
    for (const k of Object.keys(this._timers)) this._clearTimer(k);
    this._setState('closed');
    for (const e of this._queue) e.reject(err);
    this._queue = [];
    this._queueBytes = 0;
    for (const a of this._acks.values()) for (const w of a.waiters) w.reject(err);
    this._acks.clear();
    for (const q of this._presenceQ) q.reject(err);
    this._presenceQ = [];
    for (const sub of [...this._subs.values()]) sub._end(byUser ? null : err);
    this._subs.clear();
    if (this._positions) this._positions.flush();
    if (this._store) {
      // The unacknowledged publishes stay in the outbox for the next
      // client: let them go now, close once pending writes have landed.
      const store = this._store;
      if (typeof store.releaseOwner === 'function') store.releaseOwner();
      if (typeof store.close === 'function') Promise.resolve(this.outboxRestored).then(() => setTimeout(() => store.close(), 0));
    }
    if (this._win && typeof this._win.removeEventListener === 'function') {
      this._win.removeEventListener('online', this._onOnline);
      this._win.removeEventListener('pagehide', this._onPageHide);
    }
    if (this._doc && typeof this._doc.removeEventListener === 'function') {
      this._doc.removeEventListener('visibilitychange', this._onVisibility);
    }
  }

  _clearTimer(name) {
    const t = this._timers[name];
    if (t !== null) {
      clearTimeout(t);
      clearInterval(t);
      this._timers[name] = null;
    }
  }

  _setState(state) {
    if (this.state === state) return;
    const previous = this.state;
    this.state = state;
    this._emit('statechange', { state, previous });
  }

  _emit(type, detail, cancelable = false) {
    const e = makeEvent(type, detail, cancelable);
    this.dispatchEvent(e);
    return e;
  }

  _emitError(error) {
    this._emit('error', { error });
  }
}
