// Errors the client hands to the app.

/**
 * An error from the broker (an err event, an unsubbed event, a close) or
 * from the client itself. code is one of the protocol's ErrorCodes or one
 * of ClientErrorCodes.
 */
export class BrokerError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {object} [details] context from the err event (earliest, latest, epoch) and similar
   */
  constructor(code, message, details) {
    super(message || code);
    this.name = 'BrokerError';
    this.code = code;
    if (details) {
      for (const k of ['earliest', 'latest', 'epoch', 'topic', 'closeCode', 'closeReason']) {
        if (details[k] !== undefined) this[k] = details[k];
      }
    }
  }
}

/** Error codes that the client raises itself (never sent by the server). */
export const ClientErrorCodes = Object.freeze({
  closed: 'The client was closed: the command will not be sent or answered.',
  queue_full: 'Too many publishes wait to be acknowledged (maxQueue or maxQueueBytes), or too many presence queries (1,000) wait for their reply; retry later.',
  invalid_key: 'The idempotency key is not 1 to 255 bytes of visible ASCII.',
  connection_lost: 'The connection closed before the broker answered; the command is not retried.',
  subscription_ended: 'The subscription ended before it could be used.',
  unsupported: 'The broker lacks a protocol feature the call needs (not in the features of its welcome), such as "presence" for subscribe with presence or presence().',
});
