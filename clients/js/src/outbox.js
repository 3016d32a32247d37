// The persistent outbox: publishes not yet acknowledged by the broker,
// kept in IndexedDB so that they survive a page reload and are sent again,
// once, with their idempotency key.
//
// Each client instance owns the records it writes. A record is sent again
// by a later instance only when its owner is gone: owners hold a Web Lock
// named after themselves for as long as they live, so a second tab of the
// same page does not send the first tab's publishes. Where Web Locks are
// missing, every record left in the outbox is taken over. Either way the
// broker's idempotency keys make a second send store nothing within the
// dedup window.

const STORE = 'outbox';
const LOCK_PREFIX = 'brokerd-outbox-owner:';

function req(r) {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}

function done(tx) {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error || new Error('IndexedDB transaction aborted'));
  });
}

/**
 * An outbox in IndexedDB: database `name`, one object store of records
 * {id, topic, key, data, ts, seq, owner}, where data is the JSON text.
 */
export class IndexedDBOutbox {
  /**
   * @param {{name?: string, indexedDB?: IDBFactory, locks?: LockManager}} [opts]
   */
  constructor(opts = {}) {
    this.name = opts.name || 'brokerd-outbox';
    this.idb = opts.indexedDB || globalThis.indexedDB;
    this.locks = opts.locks !== undefined ? opts.locks : globalThis.navigator?.locks;
    if (!this.idb) throw new TypeError('outbox "indexeddb": IndexedDB is not available here');
    this.db = null;
    this.release = null;
  }

  async open() {
    if (this.db) return this.db;
    const r = this.idb.open(this.name, 1);
    r.onupgradeneeded = () => {
      r.result.createObjectStore(STORE, { keyPath: 'id' });
    };
    this.db = await req(r);
    // Another version of the page wants to upgrade: step aside.
    this.db.onversionchange = () => this.db && this.db.close();
    return this.db;
  }

  /** Holds the owner lock of owner until close(). */
  async hold(owner) {
    if (!this.locks) return;
    const held = new Promise((resolve) => {
      this.locks.request(LOCK_PREFIX + owner, () => new Promise((release) => {
        this.release = release;
        resolve();
      })).catch(() => resolve());
    });
    await held;
  }

  /**
   * Takes over the records of owners that are gone and returns them,
   * oldest first. They belong to owner from now on.
   */
  async restore(owner) {
    await this.hold(owner);
    const db = await this.open();
    let live = null;
    if (this.locks && typeof this.locks.query === 'function') {
      try {
        const q = await this.locks.query();
        live = new Set((q.held || []).map((l) => l.name).filter((n) => n && n.startsWith(LOCK_PREFIX)).map((n) => n.slice(LOCK_PREFIX.length)));
      } catch {
        live = null;
      }
    }
    const tx = db.transaction(STORE, 'readwrite');
    const st = tx.objectStore(STORE);
    const all = await req(st.getAll());
    const mine = [];
    for (const rec of all) {
      if (rec.owner === owner || (live && live.has(rec.owner))) continue;
      rec.owner = owner;
      st.put(rec);
      mine.push(rec);
    }
    await done(tx);
    mine.sort((a, b) => a.ts - b.ts || a.seq - b.seq);
    return mine;
  }

  async put(rec) {
    const db = await this.open();
    const tx = db.transaction(STORE, 'readwrite');
    tx.objectStore(STORE).put(rec);
    await done(tx);
  }

  async delete(id) {
    const db = await this.open();
    const tx = db.transaction(STORE, 'readwrite');
    tx.objectStore(STORE).delete(id);
    await done(tx);
  }

  /** Every record, for inspection and tests. */
  async list() {
    const db = await this.open();
    const tx = db.transaction(STORE, 'readonly');
    return req(tx.objectStore(STORE).getAll());
  }

  /** Lets go of the owner lock: from now on another client may take these records over. */
  releaseOwner() {
    if (this.release) {
      this.release();
      this.release = null;
    }
  }

  close() {
    this.releaseOwner();
    if (this.db) {
      this.db.close(); // it closes once its transactions are done
      this.db = null;
    }
  }
}

/**
 * Resolves the outbox option to a store, or null for an in-memory queue.
 *
 * @param {'memory'|'indexeddb'|object|undefined} opt
 * @param {string} [name]
 */
export function outboxStore(opt, name) {
  if (!opt || opt === 'memory') return null;
  if (opt === 'indexeddb') return new IndexedDBOutbox({ name });
  if (typeof opt === 'object' && typeof opt.restore === 'function' && typeof opt.put === 'function' && typeof opt.delete === 'function') {
    return opt;
  }
  throw new TypeError('outbox: expected "memory", "indexeddb" or a store with restore, put and delete');
}
