// Small helpers shared by the modules of the client.

/** The subprotocol this client speaks. */
export const SUBPROTOCOL = 'brokerd.v1.json';

/** The longest idempotency key, in bytes. */
export const MAX_KEY_LEN = 255;

/** Length of s encoded as UTF-8, in bytes. */
export function utf8Length(s) {
  let n = s.length;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) continue;
    if (c < 0x800) n += 1;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        n += 2; // four bytes for the pair, whose two units counted two
        i++;
      } else n += 2;
    } else n += 2;
  }
  return n;
}

/** Whether k is a valid idempotency key: 1 to 255 bytes of visible ASCII. */
export function validKey(k) {
  if (typeof k !== 'string' || k.length === 0 || k.length > MAX_KEY_LEN) return false;
  for (let i = 0; i < k.length; i++) {
    const c = k.charCodeAt(i);
    if (c < 0x21 || c > 0x7e) return false;
  }
  return true;
}

const SEGMENT = /^[A-Za-z0-9_-]+$/;

/**
 * Whether s is a valid topic name: 1-255 bytes of [A-Za-z0-9_-] segments
 * joined by '.' (the rules of subproto; checked against its wire vectors).
 */
export function validTopic(s) {
  return typeof s === 'string' && s.length >= 1 && s.length <= 255 && s.split('.').every((seg) => SEGMENT.test(seg));
}

/**
 * Whether s is a valid sub topic: a name, or a pattern where '*' is a whole
 * segment and '>' the whole last one.
 */
export function validPattern(s) {
  if (typeof s !== 'string' || s.length < 1 || s.length > 255) return false;
  const segs = s.split('.');
  return segs.every((seg, i) => SEGMENT.test(seg) || seg === '*' || (seg === '>' && i === segs.length - 1));
}

/** Whether the pattern (or topic) matches the topic, as the broker matches. */
export function matchPattern(pattern, topic) {
  const p = pattern.split('.');
  const t = topic.split('.');
  for (let i = 0; i < p.length; i++) {
    if (p[i] === '>') return t.length > i;
    if (i >= t.length || (p[i] !== '*' && p[i] !== t[i])) return false;
  }
  return p.length === t.length;
}

/** Whether topic is a pattern ("*" or ">" among its segments). */
export function isPattern(topic) {
  return topic.split('.').some((s) => s === '*' || s === '>');
}

/** A fresh random idempotency key (a UUID). */
export function randomKey() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === 'function') return c.randomUUID();
  // crypto.randomUUID needs a secure context in browsers; fall back to
  // getRandomValues, which does not.
  const b = new Uint8Array(16);
  if (c && typeof c.getRandomValues === 'function') c.getRandomValues(b);
  else for (let i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** A promise with its resolve and reject (Promise.withResolvers is too new for Node 20). */
export function deferred() {
  let resolve, reject;
  const promise = new Promise((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** Creates an event with detail; cancelable when asked. */
export function makeEvent(type, detail, cancelable = false) {
  return new CustomEvent(type, { detail, cancelable });
}

/**
 * A member of a presence as the app sees it: {session, node, user?,
 * info?}; null for something that is not one.
 */
export function presenceMember(m) {
  if (!m || typeof m !== 'object' || typeof m.session !== 'string') return null;
  const out = { session: m.session, node: typeof m.node === 'string' ? m.node : '' };
  if (typeof m.user === 'string') out.user = m.user;
  if (m.info !== undefined) out.info = m.info;
  return out;
}
