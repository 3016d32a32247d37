// @brokerd/client: the browser and Node client of brokerd.

export { BrokerClient } from './client.js';
export { Subscription } from './subscription.js';
export { BrokerError, ClientErrorCodes } from './errors.js';
export { ErrorCodes, CloseCodes } from './codes.js';
export { IndexedDBOutbox } from './outbox.js';
export { PositionStore } from './positions.js';
export { backoffDelay, parseCloseReason } from './backoff.js';
export { SUBPROTOCOL } from './util.js';
