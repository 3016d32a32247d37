// Persistence of subscription positions in Web Storage
// (sessionStorage or localStorage), so that a reloaded page resumes its
// subscriptions where it stopped.

/**
 * Stores the position of each exact subscription (topic → epoch and last
 * delivered offset) under `${prefix}${topic}`. Writes are batched: at most
 * one write per topic per flush interval, and a final one on flush().
 */
export class PositionStore {
  /**
   * @param {Storage} storage sessionStorage, localStorage or anything with getItem/setItem/removeItem
   * @param {string} prefix
   * @param {number} [flushMs]
   */
  constructor(storage, prefix, flushMs = 200) {
    this.storage = storage;
    this.prefix = prefix;
    this.flushMs = flushMs;
    this.dirty = new Map();
    this.timer = null;
  }

  /** Returns {epoch, offset} saved for topic, or null. */
  get(topic) {
    const pending = this.dirty.get(topic);
    if (pending) return { ...pending };
    let raw;
    try {
      raw = this.storage.getItem(this.prefix + topic);
    } catch {
      return null; // storage disabled (privacy mode): behave as empty
    }
    if (!raw) return null;
    try {
      const p = JSON.parse(raw);
      if (p && typeof p.epoch === 'string' && p.epoch !== '' && Number.isSafeInteger(p.offset) && p.offset >= 0) {
        return { epoch: p.epoch, offset: p.offset };
      }
    } catch {
      // a damaged entry counts as none
    }
    return null;
  }

  /**
   * Returns what a pattern subscription saved: {since, topics: {topic:
   * {epoch, offset}}} (offset: the last delivered), or null.
   */
  getPattern(pattern) {
    const pending = this.dirty.get(pattern);
    if (pending) return { since: pending.since, topics: { ...pending.topics } };
    let raw;
    try {
      raw = this.storage.getItem(this.prefix + pattern);
    } catch {
      return null;
    }
    if (!raw) return null;
    try {
      const p = JSON.parse(raw);
      if (!p || typeof p.topics !== 'object' || p.topics === null) return null;
      const topics = {};
      for (const [t, v] of Object.entries(p.topics)) {
        if (v && typeof v.epoch === 'string' && v.epoch !== '' && Number.isSafeInteger(v.offset) && v.offset >= 0) topics[t] = { epoch: v.epoch, offset: v.offset };
      }
      return { since: Number.isSafeInteger(p.since) ? p.since : undefined, topics };
    } catch {
      return null;
    }
  }

  /** Records a pattern subscription's positions ({since, topics}). */
  setPattern(pattern, value) {
    this.dirty.set(pattern, value);
    if (this.timer === null) {
      this.timer = setTimeout(() => this.flush(), this.flushMs);
    }
  }

  /** Records that topic has delivered everything up to offset in epoch. */
  set(topic, epoch, offset) {
    this.dirty.set(topic, { epoch, offset });
    if (this.timer === null) {
      this.timer = setTimeout(() => this.flush(), this.flushMs);
    }
  }

  /** Forgets topic's position. */
  delete(topic) {
    this.dirty.delete(topic);
    try {
      this.storage.removeItem(this.prefix + topic);
    } catch {
      // nothing to do
    }
  }

  /** Writes every pending position now. */
  flush() {
    if (this.timer !== null) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    for (const [topic, p] of this.dirty) {
      try {
        this.storage.setItem(this.prefix + topic, JSON.stringify(p));
      } catch {
        // quota or disabled storage: positions are best effort
      }
    }
    this.dirty.clear();
  }
}

/**
 * Resolves the positions option to a PositionStore, or null.
 *
 * @param {'session'|'local'|Storage|undefined|null|false} opt
 * @param {string} prefix
 */
export function positionStore(opt, prefix) {
  if (!opt) return null;
  let storage = opt;
  if (opt === 'session') storage = globalThis.sessionStorage;
  else if (opt === 'local') storage = globalThis.localStorage;
  if (!storage || typeof storage.getItem !== 'function' || typeof storage.setItem !== 'function') {
    throw new TypeError(`positions: ${typeof opt === 'string' ? opt + 'Storage is not available here' : 'expected "session", "local" or a Storage'}`);
  }
  return new PositionStore(storage, prefix);
}
