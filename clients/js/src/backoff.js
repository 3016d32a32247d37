// Reconnect timing: exponential backoff with full jitter, and the
// retry_after_ms a server puts in a close reason.

/**
 * The delay before reconnect attempt number attempt (0 for the first):
 * a uniformly random time in [0, min(maxMs, baseMs * 2^attempt)) ("full
 * jitter"), so that clients cut off together do not return together.
 *
 * @param {number} attempt
 * @param {{baseMs: number, maxMs: number}} opts
 * @param {() => number} [random]
 */
export function backoffDelay(attempt, { baseMs, maxMs }, random = Math.random) {
  const cap = Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * cap);
}

/** Close codes whose reason may carry retry_after_ms. */
export const RETRY_AFTER_CODES = new Set([1001, 1013, 4029]);

/**
 * Parses a close reason. The server sends JSON such as
 * {"reason":"going_away","message":"…","retry_after_ms":1234}; anything
 * else is kept as a message.
 *
 * @param {string} reason
 * @returns {{reason?: string, message?: string, retryAfterMs?: number}}
 */
export function parseCloseReason(reason) {
  if (typeof reason !== 'string' || reason === '') return {};
  if (reason[0] === '{') {
    try {
      const o = JSON.parse(reason);
      if (o && typeof o === 'object') {
        const out = {};
        if (typeof o.reason === 'string') out.reason = o.reason;
        if (typeof o.message === 'string') out.message = o.message;
        const ra = o.retry_after_ms;
        if (typeof ra === 'number' && Number.isFinite(ra) && ra > 0) out.retryAfterMs = Math.min(ra, 10 * 60 * 1000);
        return out;
      }
    } catch {
      // not JSON: a plain message
    }
  }
  return { message: reason };
}
