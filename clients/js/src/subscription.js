// One subscription of a BrokerClient: its position in the topic's log, the
// policy for history resets, and delivery to a handler or an async
// iterator with a bounded buffer.

import { BrokerError } from './errors.js';
import { deferred, isPattern, makeEvent, presenceMember } from './util.js';

const RETRY_LIMIT = 5; // resubscribes in a row after errors before giving up

/**
 * A subscription to a topic or a pattern. Created by
 * BrokerClient.subscribe; it lives across reconnects until unsubscribe(),
 * client.close() or an error that ends it.
 *
 * Events (CustomEvent, details in event.detail): subscribed, missed, gap,
 * epoch_mismatch, offset_out_of_range, unsubbed, overflow, error, end;
 * with presence: join, leave, presence_muted.
 */
export class Subscription extends EventTarget {
  /**
   * @param {import('./client.js').BrokerClient} client
   * @param {string} topic
   * @param {((msg: object) => unknown) | null} handler
   * @param {object} opts
   * @param {object} defaults the client's policies and buffer size
   */
  constructor(client, topic, handler, opts, defaults) {
    super();
    /** The topic or pattern. */
    this.topic = topic;
    /** Whether topic is a pattern. */
    this.pattern = isPattern(topic);
    /** The durable consumer name, if any. */
    this.consumer = opts.consumer;
    /** pending (waiting for the broker's ok), active, paused (buffer full) or ended. */
    this.state = 'pending';
    /** The epoch of the topic's log this subscription follows, once known. */
    this.epoch = undefined;
    /** The last offset handed to the app (0: none yet). */
    this.offset = 0;
    /** The error that ended the subscription, if one did. */
    this.error = null;
    /** Whether the subscription is a member of the topic's presence. */
    this.presence = opts.presence === true;
    /** Whether the topic has stopped sending join and leave (presence_muted, more than 1,000 members). */
    this.presenceMuted = false;

    this._client = client;
    this._handler = handler;
    this._opts = opts;
    this._onEpochMismatch = opts.onEpochMismatch || defaults.onEpochMismatch;
    this._onOutOfRange = opts.onOutOfRange || defaults.onOutOfRange;
    this._bufferSize = opts.bufferSize || defaults.bufferSize;
    this._positions = this.consumer ? null : defaults.positions;
    // A pattern's topics: topic → {epoch, next (next offset expected),
    // offset (last handed to the app)}; since: where topics it has not
    // seen start when it resumes.
    this._topics = new Map();
    this._since = opts.since;

    this._next = 0; // next offset expected from the broker, 0 when unknown
    this._restart = null; // {from, epoch} for the next sub after a reset
    this._ifGone = false; // ask for if_gone "earliest" on the next sub
    this._consumerStart = 0; // where a durable consumer's unacked messages start
    this._retries = 0;
    this._paused = false;
    this._sent = false; // the broker holds (or is being asked for) it on this connection
    this._buffer = [];
    this._waiter = null;
    this._iterating = false;
    this._errorThrown = false;
    this._first = true;

    this._ready = deferred();
    /** Resolves with the first ok of the broker: {topic, epoch, head, from, missed}. */
    this.ready = this._ready.promise;
    this.ready.catch(() => {}); // an app that never awaits ready must not see an unhandled rejection

    if (this.pattern) {
      for (const [t, p] of Object.entries(opts.positions || {})) {
        this._topics.set(t, { epoch: p.epoch, next: p.from, offset: p.from - 1 });
      }
      const saved = this._positions && opts.resume !== false ? this._positions.getPattern(topic) : null;
      if (saved) {
        for (const [t, p] of Object.entries(saved.topics)) {
          if (!this._topics.has(t)) this._topics.set(t, { epoch: p.epoch, next: p.offset + 1, offset: p.offset });
        }
        if (this._since === undefined) this._since = saved.since;
        this._stored = true;
      }
    } else if (this._positions && opts.resume !== false) {
      const p = this._positions.get(topic);
      if (p) {
        this.epoch = p.epoch;
        this.offset = p.offset;
        this._next = p.offset + 1;
        this._stored = true;
      }
    }
  }

  /** Ends the subscription. Resolves once the broker has confirmed (or at once when disconnected). */
  unsubscribe() {
    if (this.state === 'ended') return Promise.resolve();
    this._end(null);
    if (this._positions) this._positions.flush();
    return this._client._unsub(this);
  }

  /** Acknowledges everything up to offset for this subscription's durable consumer. */
  ack(offset) {
    if (!this.consumer) return Promise.reject(new TypeError('ack: this subscription has no consumer'));
    return this._client.ack(this.topic, this.consumer, offset);
  }

  /**
   * Listens to one of the subscription's events; fn gets the event's
   * detail and the event. Returns a function that removes the listener.
   */
  on(type, fn) {
    const l = (e) => fn(e.detail, e);
    this.addEventListener(type, l);
    return () => this.removeEventListener(type, l);
  }

  [Symbol.asyncIterator]() {
    if (this._handler) throw new TypeError('subscription: a subscription with a handler cannot be iterated');
    if (this._iterating) throw new TypeError('subscription: already being iterated');
    this._iterating = true;
    const it = {
      next: () => this._nextMessage(),
      return: async () => {
        await this.unsubscribe();
        return { value: undefined, done: true };
      },
      [Symbol.asyncIterator]() {
        return it;
      },
    };
    return it;
  }

  // ---- used by the client ----

  /** The sub command to send now (without id). */
  _command() {
    const c = { op: 'sub', topic: this.topic };
    const o = this._opts;
    if (this.pattern) {
      // Each topic seen from its next offset, the others from since.
      if (this._topics.size > 0) {
        c.positions = {};
        for (const [t, p] of this._topics) c.positions[t] = p.epoch ? { from: Math.max(p.next, 1), epoch: p.epoch } : { from: Math.max(p.next, 1) };
      }
      if (this._since !== undefined) c.since = this._since;
      if (o.ifGone || this._ifGone) c.if_gone = 'earliest';
      return c;
    }
    if (this.consumer) {
      c.consumer = this.consumer;
      if (o.maxInflight) c.max_inflight = o.maxInflight;
    }
    if (this._restart) {
      c.from = this._restart.from;
      if (this._restart.epoch) c.epoch = this._restart.epoch;
    } else if (this.epoch !== undefined && this._next > 0) {
      // Resume: a plain subscription from the next offset it has not
      // seen; a durable consumer from where its unacked messages start
      // (the broker uses its acked offset instead when it has one).
      c.from = this.consumer ? this._consumerStart || this._next : this._next;
      c.epoch = this.epoch;
    } else {
      if (o.from !== undefined) c.from = o.from;
      if (o.last !== undefined) c.last = o.last;
      if (o.since !== undefined) c.since = o.since;
      if (o.epoch) c.epoch = o.epoch;
      if (o.ifGone) c.if_gone = 'earliest';
    }
    if (this._ifGone) c.if_gone = 'earliest';
    if (this.presence) {
      // Every (re)subscribe joins again: the broker forgot the member with
      // the connection, and the others see a new session join.
      c.presence = true;
      if (o.presenceInfo !== undefined) c.presence_info = o.presenceInfo;
    }
    return c;
  }

  /** A join, leave or presence_muted event of this subscription's topic. */
  _onPresence(ev) {
    if (this.state === 'ended' || !this.presence) return;
    const o = this._opts;
    if (ev.op === 'presence_muted') {
      this.presenceMuted = true;
      const detail = { topic: this.topic };
      this._callback(o.onPresenceMuted, detail);
      this._emit('presence_muted', detail);
      return;
    }
    const member = presenceMember(ev.member);
    if (!member) return;
    this._callback(ev.op === 'join' ? o.onJoin : o.onLeave, member);
    this._emit(ev.op, { topic: this.topic, member });
  }

  _callback(fn, arg) {
    if (!fn) return;
    try {
      const r = fn(arg);
      if (r && typeof r.then === 'function') r.then(undefined, (err) => this._handlerError(err));
    } catch (err) {
      this._handlerError(err);
    }
  }

  /** The broker's ok to a sub. */
  _onOk(ev) {
    if (this.state === 'ended') return;
    this._retries = 0;
    const resumed = !this._first || (this._stored === true && this._restart === null && !this._ifGone);
    if (!this.pattern) {
      const newEpoch = this.epoch !== ev.epoch;
      if (newEpoch || this.consumer || this._restart || this._next === 0) {
        this._next = ev.from;
        if (newEpoch || this.offset >= ev.from || this._restart) this.offset = ev.from - 1;
      } else if (ev.from > this._next) {
        if (!ev.missed) this._emit('gap', { topic: this.topic, epoch: ev.epoch, first: this._next, last: ev.from - 1 });
        this._next = ev.from;
      }
      this.epoch = ev.epoch;
      if (this.consumer) this._consumerStart = ev.from;
      if (this._positions && (newEpoch || this._first)) this._positions.set(this.topic, this.epoch, this.offset);
    }
    if (this.pattern && this._since === undefined) {
      // A resume also delivers the topics first written meanwhile (by
      // this machine's clock).
      this._since = Date.now();
      this._savePattern();
    }
    this._restart = null;
    this._ifGone = false;
    this._first = false;
    this.state = 'active';
    const info = { topic: this.topic, epoch: ev.epoch, head: ev.head, from: ev.from, missed: ev.missed, resumed };
    if (ev.missed) this._emit('missed', { topic: this.topic, epoch: ev.epoch, first: ev.missed[0], last: ev.missed[1] });
    this._emit('subscribed', info);
    this._ready.resolve(info);
  }

  /** The broker's err to a sub. Returns true when the client should send the sub again. */
  _onErr(ev, cmd) {
    if (this.state === 'ended') return false;
    const err = new BrokerError(ev.code, ev.message, { ...ev, topic: this.topic });
    switch (ev.code) {
      case 'epoch_mismatch': {
        const e = this._emit('epoch_mismatch', {
          topic: this.topic, previousEpoch: cmd.epoch, epoch: ev.epoch, earliest: ev.earliest, latest: ev.latest,
          restart: this._onEpochMismatch === 'fail' ? null : this._onEpochMismatch,
        }, true);
        if (e.defaultPrevented || this._onEpochMismatch === 'fail' || ++this._retries > RETRY_LIMIT) {
          this._end(err);
          return false;
        }
        // The history this subscription followed is gone: start over in
        // the new epoch, from its earliest (or latest) message.
        this._restart = { from: this._onEpochMismatch, epoch: ev.epoch };
        this._ifGone = false;
        this.epoch = undefined;
        this._next = 0;
        this.offset = 0;
        if (this._positions) this._positions.delete(this.topic);
        return true;
      }
      case 'offset_out_of_range': {
        const from = typeof cmd.from === 'number' ? cmd.from : undefined;
        const beyondHead = from !== undefined && typeof ev.latest === 'number' && from > ev.latest + 1;
        const e = this._emit('offset_out_of_range', {
          topic: this.topic, from, epoch: ev.epoch, earliest: ev.earliest, latest: ev.latest, beyondHead,
          restart: this._onOutOfRange === 'fail' ? null : beyondHead ? ev.latest + 1 : 'earliest',
        }, true);
        if (e.defaultPrevented || this._onOutOfRange === 'fail' || ++this._retries > RETRY_LIMIT || (cmd.if_gone && !beyondHead)) {
          this._end(err);
          return false;
        }
        if (beyondHead) {
          // The log is behind this subscription's position (it was
          // truncated without an epoch change): go on from its head.
          this._restart = { from: ev.latest + 1, epoch: ev.epoch || cmd.epoch };
        } else {
          // The messages from `from` on are no longer retained: start at
          // the earliest retained one; the ok reports the hole as missed.
          this._ifGone = true;
        }
        return true;
      }
      case 'unavailable':
      case 'internal':
      case 'rate_limited':
        if (++this._retries > RETRY_LIMIT) {
          this._end(err);
          return false;
        }
        this._client._retrySub(this, this._retries);
        return false;
      default:
        this._end(err);
        return false;
    }
  }

  /** The broker ended this subscription (unsubbed). Returns true to send the sub again. */
  _onUnsubbed(ev) {
    if (this.state === 'ended') return false;
    this._sent = false;
    this.state = 'pending';
    const code = ev.code;
    if (code === 'epoch_mismatch') {
      // The history was reset under this subscription: subscribe again with
      // the old position, so the err epoch_mismatch brings the new epoch and
      // the usual handling (event, then the documented restart) applies.
      return true;
    }
    if (code === 'offset_out_of_range') {
      // Retention overtook this subscription while it caught up.
      const e = this._emit('offset_out_of_range', {
        topic: this.topic, from: this._next, epoch: this.epoch, earliest: undefined, latest: undefined, beyondHead: false,
        restart: this._onOutOfRange === 'fail' ? null : 'earliest',
      }, true);
      if (e.defaultPrevented || this._onOutOfRange === 'fail') {
        this._end(new BrokerError(code, 'the subscription fell behind retention', { topic: this.topic }));
        return false;
      }
      this._ifGone = true;
      return true;
    }
    const resubscribe = code === 'slow' || code === 'internal';
    this._emit('unsubbed', { topic: this.topic, code, resubscribing: resubscribe });
    if (code === 'internal') {
      if (++this._retries > RETRY_LIMIT) {
        this._end(new BrokerError(code, 'the broker could not continue the subscription', { topic: this.topic }));
        return false;
      }
      this._client._retrySub(this, this._retries);
      return false;
    }
    if (resubscribe) return true;
    this._end(new BrokerError(code, `the broker ended the subscription to ${this.topic}: ${code}`, { topic: this.topic }));
    return false;
  }

  /** A pattern subscription's topic event: where a topic starts, or why it is not delivered. */
  _onTopic(ev) {
    if (this.state === 'ended' || !this.pattern) return;
    if (ev.code) {
      // Not delivered with this position; a reset is followed by a topic
      // event of the new epoch.
      this._topics.delete(ev.topic);
      this._savePattern(ev.topic);
    } else {
      const t = this._topics.get(ev.topic);
      if (!t || t.epoch !== ev.epoch || t.next < ev.from) {
        this._topics.set(ev.topic, { epoch: ev.epoch, next: ev.from, offset: ev.from - 1 });
        this._savePattern(ev.topic);
      }
      if (ev.missed) this._emit('missed', { topic: ev.topic, epoch: ev.epoch, first: ev.missed[0], last: ev.missed[1] });
    }
    this._emit('topic', {
      pattern: this.topic, topic: ev.topic, epoch: ev.epoch, from: ev.from, missed: ev.missed,
      code: ev.code, earliest: ev.earliest, latest: ev.latest,
    });
  }

  /**
   * Saves the pattern's positions: topic's (or every topic's) entry. The
   * saved object is updated in place, so a delivered message costs one
   * entry, and the store writes it at most once per flush interval.
   */
  _savePattern(topic) {
    if (!this._positions || !this.pattern) return;
    if (!this._saved || topic === undefined) {
      this._saved = { since: this._since, topics: {} };
      for (const [t, p] of this._topics) if (p.epoch) this._saved.topics[t] = { epoch: p.epoch, offset: p.offset };
    } else {
      const p = this._topics.get(topic);
      if (p && p.epoch) this._saved.topics[topic] = { epoch: p.epoch, offset: p.offset };
      else delete this._saved.topics[topic];
    }
    this._saved.since = this._since;
    this._positions.setPattern(this.topic, this._saved);
  }

  /** A msg for this subscription. */
  _onMsg(ev) {
    if (this.state === 'ended' || this._paused) return;
    let epoch = this.epoch;
    if (this.pattern) {
      const t = this._topics.get(ev.topic);
      if (t) {
        if (ev.offset < t.next) return; // already delivered (a resumed subscription)
        t.next = ev.offset + 1;
        epoch = t.epoch;
      }
    } else {
      if (ev.offset < this._next) return; // already delivered (replay overlap)
      if (this._next > 0 && ev.offset > this._next) {
        this._emit('gap', { topic: this.topic, epoch: this.epoch, first: this._next, last: ev.offset - 1 });
      }
      this._next = ev.offset + 1;
    }
    const m = {
      topic: ev.topic,
      offset: ev.offset,
      ts: ev.ts,
      data: ev.data,
      epoch,
    };
    if (ev.sub !== undefined) m.pattern = ev.sub;
    if (this.consumer) {
      const client = this._client, topic = this.topic, consumer = this.consumer, offset = ev.offset;
      m.ack = () => client.ack(topic, consumer, offset);
    }
    if (this._handler) {
      try {
        const r = this._handler(m);
        if (r && typeof r.then === 'function') r.then(undefined, (err) => this._handlerError(err));
      } catch (err) {
        this._handlerError(err);
      }
      this._delivered(m);
      return;
    }
    if (this._waiter) {
      const w = this._waiter;
      this._waiter = null;
      this._delivered(m);
      w.resolve({ value: m, done: false });
      return;
    }
    if (this._buffer.length >= this._bufferSize) {
      // Only pattern subscriptions get here: exact ones pause first.
      this._emit('overflow', { topic: this.topic, dropped: 1, offset: ev.offset, pattern: true });
      return;
    }
    this._buffer.push(m);
    if (this._buffer.length >= this._bufferSize) {
      // Full: let go of the broker's subscription and resume from the log
      // once the app has read half of the buffer. Nothing is lost.
      this._paused = true;
      this.state = 'paused';
      this._emit('overflow', { topic: this.topic, dropped: 0, offset: ev.offset, pattern: false });
      this._client._pause(this);
    }
  }

  _nextMessage() {
    if (this._buffer.length > 0) {
      const m = this._buffer.shift();
      this._delivered(m);
      if (this._paused && this.state !== 'ended' && this._buffer.length <= this._bufferSize / 2) {
        this._paused = false;
        this.state = 'pending';
        this._client._resume(this);
      }
      return Promise.resolve({ value: m, done: false });
    }
    if (this.state === 'ended') {
      if (this.error && !this._errorThrown) {
        this._errorThrown = true;
        return Promise.reject(this.error);
      }
      return Promise.resolve({ value: undefined, done: true });
    }
    if (this._waiter) return this._waiter.promise.then(() => this._nextMessage());
    this._waiter = deferred();
    return this._waiter.promise;
  }

  _delivered(m) {
    if (this.pattern) {
      const t = this._topics.get(m.topic);
      if (t && m.epoch === t.epoch && m.offset > t.offset) {
        t.offset = m.offset;
        this._savePattern(m.topic);
      }
      return;
    }
    if (m.offset > this.offset) this.offset = m.offset;
    if (this._positions && m.epoch === this.epoch) this._positions.set(this.topic, this.epoch, m.offset);
  }

  _handlerError(err) {
    this._emit('error', { topic: this.topic, error: err });
  }

  /** The connection closed: the broker no longer holds this subscription. */
  _disconnected() {
    this._sent = false;
    if (this.state === 'active') this.state = 'pending';
  }

  /** Ends the subscription, with err when an error ended it. */
  _end(err) {
    if (this.state === 'ended') return;
    this.state = 'ended';
    this.error = err;
    this._paused = false;
    this._client._forget(this);
    if (err) {
      this._ready.reject(err);
      this._emit('error', { topic: this.topic, error: err });
    } else {
      this._ready.reject(new BrokerError('subscription_ended', `the subscription to ${this.topic} ended`, { topic: this.topic }));
    }
    if (this._positions) this._positions.flush();
    if (this._waiter && this._buffer.length === 0) {
      const w = this._waiter;
      this._waiter = null;
      if (err) {
        this._errorThrown = true;
        w.reject(err);
      } else w.resolve({ value: undefined, done: true });
    }
    this._emit('end', { topic: this.topic, error: err });
  }

  _emit(type, detail, cancelable = false) {
    const e = makeEvent(type, detail, cancelable);
    this.dispatchEvent(e);
    return e;
  }
}
