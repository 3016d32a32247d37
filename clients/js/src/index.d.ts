// Type definitions for @brokerd/client, the browser and Node client of
// brokerd (WebSocket subprotocol brokerd.v1.json).

import type { ErrorCode, CloseCodeNumber } from './codes.js';
export { ErrorCodes, CloseCodes } from './codes.js';
export type { ErrorCode, CloseCodeNumber } from './codes.js';

/** The subprotocol the client offers: "brokerd.v1.json". */
export declare const SUBPROTOCOL: 'brokerd.v1.json';

/** Any JSON value: what `data` of a message may be. */
export type JSONValue = null | boolean | number | string | JSONValue[] | { [key: string]: JSONValue };

/** Codes of errors the client raises itself. */
export type ClientErrorCode = 'closed' | 'queue_full' | 'invalid_key' | 'connection_lost' | 'subscription_ended' | 'unsupported';

/** Error codes of the client itself, with descriptions. */
export declare const ClientErrorCodes: Readonly<Record<ClientErrorCode, string>>;

/** An error from the broker (err, unsubbed, close) or from the client. */
export declare class BrokerError extends Error {
  constructor(code: string, message: string, details?: Record<string, unknown>);
  readonly name: 'BrokerError';
  /** A protocol error code (ErrorCodes) or a client one (ClientErrorCodes). */
  readonly code: ErrorCode | ClientErrorCode | (string & {});
  /** offset_out_of_range, epoch_mismatch: the earliest retained offset. */
  readonly earliest?: number;
  /** offset_out_of_range, epoch_mismatch: the last stored offset. */
  readonly latest?: number;
  /** epoch_mismatch: the topic's current epoch. */
  readonly epoch?: string;
  readonly topic?: string;
  /** When a close caused the error: its code and reason. */
  readonly closeCode?: number;
  readonly closeReason?: string;
}

/** The minimal WebSocket the client needs: the browser's, or the `ws` package's in Node. */
export interface WebSocketLike {
  readonly readyState: number;
  readonly protocol: string;
  onopen: ((ev: any) => any) | null;
  onmessage: ((ev: { data: any }) => any) | null;
  onclose: ((ev: { code: number; reason: string; wasClean: boolean }) => any) | null;
  onerror: ((ev: any) => any) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

/** A WebSocket constructor such as globalThis.WebSocket or `import WebSocket from 'ws'`. */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

/** Where a subscription starts: an offset (inclusive), "earliest" or "latest". */
export type From = number | 'earliest' | 'latest';

/** What a subscription does when its topic's history was reset. */
export type EpochMismatchPolicy = 'earliest' | 'latest' | 'fail';

/** What a subscription does when its position is no longer retained. */
export type OutOfRangePolicy = 'earliest' | 'fail';

/** A store for the persistent outbox; IndexedDBOutbox is one. */
export interface OutboxStore {
  /** Takes over the records of clients that are gone; returns them oldest first. */
  restore(owner: string): Promise<OutboxRecord[]>;
  put(record: OutboxRecord): Promise<void>;
  delete(id: string): Promise<void>;
  /** Lets other clients take the records over (on close). */
  releaseOwner?(): void;
  close?(): void;
}

/** One unacknowledged publish in a persistent outbox. */
export interface OutboxRecord {
  /** topic + "\n" + key */
  id: string;
  topic: string;
  key: string;
  /** The data as JSON text. */
  data: string;
  /** When it was published (ms since the epoch), and its sequence number then. */
  ts: number;
  seq: number;
  /** The client instance that owns it. */
  owner: string;
}

/** A Web Storage (sessionStorage, localStorage) or anything alike. */
export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

export interface ClientOptions {
  /** A token, sent in an auth command right after welcome. */
  token?: string;
  /** Called on every (re)connect for a fresh token; wins over token. */
  getToken?: () => string | Promise<string>;
  /** The WebSocket constructor (required in Node 20: pass the `ws` package's). Default: globalThis.WebSocket. */
  WebSocket?: WebSocketConstructor | (new (url: string, protocols?: string | string[]) => any);
  /** Connect on construction (on the next microtask). Default true. */
  autoConnect?: boolean;
  /** Reconnect after the connection drops. Default true. */
  reconnect?: boolean;
  /** Backoff: the first delay's cap (default 500 ms) and the largest cap (default 30 s). */
  minReconnectDelayMs?: number;
  maxReconnectDelayMs?: number;
  /** Give up after this many failed attempts in a row. Default Infinity. */
  maxReconnectAttempts?: number;
  /** How long the socket may take to open and welcome. Default 10 s. */
  connectTimeoutMs?: number;
  /** Send a ping after this long without traffic. Default: the heartbeat of welcome (25 s). */
  pingIntervalMs?: number;
  /** Give the connection up when a ping is not answered within this. Default 10 s. */
  pongTimeoutMs?: number;
  /** Bounds of the unacknowledged publishes (default 1000 and 8 MiB). */
  maxQueue?: number;
  maxQueueBytes?: number;
  /** Largest data of one publish, in bytes of JSON (default 1 MiB, the broker's default). */
  maxMessageBytes?: number;
  /** Largest outgoing frame (default 1 MiB) and commands in one frame (default 100). */
  maxFrameBytes?: number;
  maxCommandsPerFrame?: number;
  /** Messages an iterated subscription buffers (default 1000). */
  bufferSize?: number;
  /** Default policies of subscriptions; see the README. */
  onEpochMismatch?: EpochMismatchPolicy;
  onOutOfRange?: OutOfRangePolicy;
  /** Where unacknowledged publishes wait: memory (default), IndexedDB, or a store of yours. */
  outbox?: 'memory' | 'indexeddb' | OutboxStore;
  /** The IndexedDB database of the outbox. Default "brokerd-outbox". */
  outboxName?: string;
  /** Persist subscription positions in sessionStorage, localStorage or a storage of yours. */
  positions?: 'session' | 'local' | StorageLike | null;
  /** Prefix of the storage keys of positions. Default "brokerd:pos:". */
  positionsPrefix?: string;
  /** Targets of online/pagehide and visibilitychange events; default window and document; null for none. */
  window?: EventTarget | null;
  document?: (EventTarget & { visibilityState?: string }) | null;
}

export interface SubscribeOptions {
  /** Where to start: an offset, "earliest" or "latest" (default). Not for patterns. */
  from?: From;
  /** Start this many messages before the next offset (1 to 10000): the last N, then live. Not with from or since; not for patterns. Broker feature "last". */
  last?: number;
  /** Start at the first message stored at or after this time (a Date or ms since the Unix epoch). For a pattern: every topic without a position. Not with from or last. Broker feature "since" ("pattern_replay" for patterns). */
  since?: Date | number;
  /** Patterns only: where to resume each topic (topic → {from, epoch}). Broker feature "pattern_replay". */
  positions?: Record<string, { from: number; epoch?: string }>;
  /** The epoch the offset belongs to; a different current epoch is an epoch_mismatch. */
  epoch?: string;
  /** Start at the earliest retained message when from is gone (reported as missed). */
  ifGone?: boolean;
  /** A durable consumer: the broker keeps its acked offset. */
  consumer?: string;
  /** A durable consumer's bound on messages sent but not acked (1 to 10000). */
  maxInflight?: number;
  /** With the positions option: resume from the stored position (default true). */
  resume?: boolean;
  /** Messages buffered for iteration (default: the client's bufferSize). */
  bufferSize?: number;
  onEpochMismatch?: EpochMismatchPolicy;
  onOutOfRange?: OutOfRangePolicy;
  /**
   * Topics only: the subscription is a member of the topic's presence while
   * it lasts, and gets join and leave of the other members (events join,
   * leave, presence_muted, and the callbacks below). Broker feature
   * "presence": without it the subscription fails with unsupported.
   */
  presence?: boolean;
  /** With presence: what the others see as this member's info, any JSON value up to 1 KiB. */
  presenceInfo?: JSONValue;
  /** With presence: another member joined the topic. */
  onJoin?: (member: PresenceMember) => unknown;
  /** With presence: a member left (the same member object as its join). */
  onLeave?: (member: PresenceMember) => unknown;
  /** With presence: the topic has more than 1,000 members and stops sending join and leave. */
  onPresenceMuted?: (detail: { topic: string }) => unknown;
}

/** A member of a topic's presence: one subscription made with presence. */
export interface PresenceMember {
  /** The session (connection) of the member. */
  session: string;
  /** The subject of the member's token; absent when the broker runs without auth. */
  user?: string;
  /** The broker node the member is connected to. */
  node: string;
  /** The member's presenceInfo; absent when it gave none. */
  info?: JSONValue;
}

/** What presence(topic) resolves with. */
export interface PresenceResult {
  topic: string;
  /** At most 1,000 of the members. */
  members: PresenceMember[];
  /** How many members there are, all of them. */
  count: number;
}

export interface PublishOptions {
  /** Idempotency key: 1 to 255 visible ASCII characters. Default: a random UUID. */
  key?: string;
}

export interface PublishResult {
  topic: string;
  /** The offset the message was stored at (the first one's, when dup). */
  offset: number;
  /** The key had been seen: nothing was stored this time. */
  dup: boolean;
  key: string;
}

/** A message delivered to a subscription. */
export interface Message<T = JSONValue> {
  topic: string;
  offset: number;
  /** When the broker appended it, in ms since the Unix epoch. */
  ts: number;
  data: T;
  /** The epoch of the topic's log (for a pattern, the topic's, from its topic event). */
  epoch: string | undefined;
  /** The pattern, when the message came through a pattern subscription. */
  pattern?: string;
  /** Durable consumers: acknowledge this message and everything before it. */
  ack?: () => Promise<void>;
}

export interface SubscribeInfo {
  topic: string;
  /** Absent for pattern subscriptions. */
  epoch?: string;
  head?: number;
  from?: number;
  missed?: [number, number];
  /** Whether this ok resumed the subscription: after a reconnect, a reset, or from a stored position. */
  resumed: boolean;
}

export type ConnectionState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed';

export interface ClientEventMap {
  connecting: { attempt: number; url: string };
  open: { session: string; node: string; version: string; heartbeat: number };
  closed: { code: number; reason: string; wasClean: boolean; willReconnect: boolean; retryAfterMs?: number; message?: string };
  reconnecting: { attempt: number; delayMs: number; retryAfterMs?: number };
  statechange: { state: ConnectionState; previous: ConnectionState };
  error: { error: Error };
  republished: PublishResult;
}

export interface SubscriptionEventMap {
  subscribed: SubscribeInfo;
  missed: { topic: string; epoch: string; first: number; last: number };
  gap: { topic: string; epoch: string | undefined; first: number; last: number };
  epoch_mismatch: { topic: string; previousEpoch: string | undefined; epoch: string; earliest: number; latest: number; restart: 'earliest' | 'latest' | null };
  offset_out_of_range: { topic: string; from: number | undefined; epoch: string | undefined; earliest: number | undefined; latest: number | undefined; beyondHead: boolean; restart: 'earliest' | number | null };
  unsubbed: { topic: string; code: string; resubscribing: boolean };
  overflow: { topic: string; dropped: number; offset: number; pattern: boolean };
  error: { topic: string; error: unknown };
  end: { topic: string; error: BrokerError | null };
  /** Pattern subscriptions: a topic starts (epoch, from, missed), or is not delivered (code epoch_mismatch or offset_out_of_range, with earliest and latest). */
  topic: { pattern: string; topic: string; epoch: string; from?: number; missed?: [number, number]; code?: 'epoch_mismatch' | 'offset_out_of_range'; earliest?: number; latest?: number };
  /** Presence subscriptions: another member joined the topic. */
  join: { topic: string; member: PresenceMember };
  /** Presence subscriptions: a member left the topic. */
  leave: { topic: string; member: PresenceMember };
  /** Presence subscriptions: the topic has more than 1,000 members and stops sending join and leave. */
  presence_muted: { topic: string };
}

/** An event of the client or a subscription; its detail has the data. */
export type DetailEvent<D> = CustomEvent<D>;

export declare class Subscription<T = JSONValue> extends EventTarget implements AsyncIterable<Message<T>> {
  readonly topic: string;
  readonly pattern: boolean;
  readonly consumer: string | undefined;
  readonly state: 'pending' | 'active' | 'paused' | 'ended';
  /** The epoch followed, once known. */
  readonly epoch: string | undefined;
  /** The last offset handed to the app. */
  readonly offset: number;
  /** The error that ended the subscription. */
  readonly error: BrokerError | null;
  /** Whether the subscription is a member of the topic's presence. */
  readonly presence: boolean;
  /** Whether the topic stopped sending join and leave (presence_muted). */
  readonly presenceMuted: boolean;
  /** Resolves with the broker's first ok; rejects when the subscription ends first. */
  readonly ready: Promise<SubscribeInfo>;
  unsubscribe(): Promise<void>;
  /** Durable consumers: acknowledge everything up to offset. */
  ack(offset: number): Promise<void>;
  on<K extends keyof SubscriptionEventMap>(type: K, fn: (detail: SubscriptionEventMap[K], event: DetailEvent<SubscriptionEventMap[K]>) => void): () => void;
  addEventListener<K extends keyof SubscriptionEventMap>(type: K, listener: (event: DetailEvent<SubscriptionEventMap[K]>) => void, options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
  removeEventListener<K extends keyof SubscriptionEventMap>(type: K, listener: (event: DetailEvent<SubscriptionEventMap[K]>) => void, options?: boolean | EventListenerOptions): void;
  removeEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | EventListenerOptions): void;
  [Symbol.asyncIterator](): AsyncIterator<Message<T>, undefined>;
}

export declare class BrokerClient extends EventTarget {
  constructor(url: string, options?: ClientOptions);
  /** The ws: or wss: URL. */
  readonly url: string;
  readonly state: ConnectionState;
  /** The session of the current connection. */
  readonly session: string | undefined;
  readonly welcome: ClientEventMap['open'] | undefined;
  /** The protocol v1.1 features of the broker, from its welcome ([] from a v1.0 broker). */
  readonly features: string[];
  /** Whether the broker has the feature ("last", "since", "pattern_replay", "ack_epoch", "presence", ...). */
  hasFeature(feature: string): boolean;
  /** Resolves with how many publishes a persistent outbox brought back. */
  readonly outboxRestored: Promise<number>;
  readonly subscriptions: Subscription[];
  /** Publishes that wait for the broker's ok. */
  readonly pendingPublishes: number;

  /** Starts connecting (when autoConnect is false), or reconnects now when waiting to. */
  connect(): void;
  subscribe<T = JSONValue>(topic: string, handler: (msg: Message<T>) => unknown, options?: SubscribeOptions): Subscription<T>;
  subscribe<T = JSONValue>(topic: string, options?: SubscribeOptions): Subscription<T>;
  /**
   * Resolves once the broker has stored the message. Rejects with a BrokerError
   * (invalid_topic, invalid_key, message_too_large, queue_full, closed, or the
   * broker's err), or with a TypeError when data is not a JSON value (undefined,
   * a function, a symbol, a BigInt, a cycle).
   */
  publish(topic: string, data: unknown, options?: PublishOptions): Promise<PublishResult>;
  ack(topic: string, consumer: string, offset: number): Promise<void>;
  /**
   * The presence of topic: at most 1,000 members, and the count of all.
   * Rejects with unsupported when the broker lacks the feature "presence",
   * forbidden without the right to subscribe to the topic.
   */
  presence(topic: string): Promise<PresenceResult>;
  /** Replaces the token of the live connection (auth); without an argument it asks getToken. */
  refreshToken(token?: string): Promise<void>;
  /** Closes with code 1000 (or code) and stops reconnecting. */
  close(code?: number, reason?: string): Promise<void>;

  on<K extends keyof ClientEventMap>(type: K, fn: (detail: ClientEventMap[K], event: DetailEvent<ClientEventMap[K]>) => void): () => void;
  addEventListener<K extends keyof ClientEventMap>(type: K, listener: (event: DetailEvent<ClientEventMap[K]>) => void, options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
  removeEventListener<K extends keyof ClientEventMap>(type: K, listener: (event: DetailEvent<ClientEventMap[K]>) => void, options?: boolean | EventListenerOptions): void;
  removeEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | EventListenerOptions): void;
}

/** The IndexedDB outbox behind the option outbox: "indexeddb". */
export declare class IndexedDBOutbox implements OutboxStore {
  constructor(options?: { name?: string; indexedDB?: IDBFactory; locks?: LockManager | null });
  restore(owner: string): Promise<OutboxRecord[]>;
  put(record: OutboxRecord): Promise<void>;
  delete(id: string): Promise<void>;
  list(): Promise<OutboxRecord[]>;
  releaseOwner(): void;
  close(): void;
}

/** Positions of subscriptions in a Web Storage. */
export declare class PositionStore {
  constructor(storage: StorageLike, prefix: string, flushMs?: number);
  get(topic: string): { epoch: string; offset: number } | null;
  set(topic: string, epoch: string, offset: number): void;
  delete(topic: string): void;
  flush(): void;
}

/** The delay before reconnect attempt `attempt`: full jitter under min(maxMs, baseMs·2^attempt). */
export declare function backoffDelay(attempt: number, options: { baseMs: number; maxMs: number }, random?: () => number): number;

/** Parses a close reason such as {"reason":"going_away","retry_after_ms":1234}. */
export declare function parseCloseReason(reason: string): { reason?: string; message?: string; retryAfterMs?: number };

// ---------------------------------------------------------------------------
// The wire: events as the broker sends them (protocol brokerd.v1.json, v1.1),
// before the client turns them into the values above. Every event of the
// shared wire vectors (subproto/testdata/vectors.json) is checked against
// these types by `npm run typecheck`.

/** `welcome`: the first event of a connection. */
export interface WelcomeEvent {
  op: 'welcome';
  session: string;
  node: string;
  version: string;
  /** Seconds between pings the broker expects. */
  heartbeat: number;
  /** v1.1: what the broker has of the v1.1 additions ("last", "since", "pattern_replay", "ack_epoch", "presence"). */
  features?: string[];
}

/** `msg`: one message of a subscription. */
export interface MsgEvent {
  op: 'msg';
  topic: string;
  offset: number;
  /** When the broker appended it, in ms since the Unix epoch. */
  ts: number;
  data: JSONValue;
  /** The pattern, when it came through a pattern subscription. */
  sub?: string;
}

/** `ok`: the reply to a command; what it carries depends on the command. */
export interface OkEvent {
  op: 'ok';
  id: number;
  /** pub and sub: the topic (a sub's pattern for a pattern subscription). */
  topic?: string;
  /** pub: the offset stored at (the first one's when dup). */
  offset?: number;
  /** pub: the key had been seen; nothing was stored. */
  dup?: boolean;
  /** sub of a topic: its epoch, last stored offset (0 when empty) and first offset delivered. */
  epoch?: string;
  head?: number;
  from?: number;
  /** sub with if_gone: the hole skipped, first and last offsets. */
  missed?: [number, number];
  /** presence (v1.1): at most 1,000 members of the topic, and how many there are. */
  members?: WireMember[];
  count?: number;
}

/** A member of a presence on the wire (v1.1). */
export interface WireMember {
  session: string;
  user?: string;
  node: string;
  info?: JSONValue;
}

/** `join` and `leave` (v1.1): a member of a presence subscription's topic came or went. */
export interface PresenceEvent {
  op: 'join' | 'leave';
  topic: string;
  member: WireMember;
}

/** `presence_muted` (v1.1): the topic has too many members to send join and leave. */
export interface PresenceMutedEvent {
  op: 'presence_muted';
  topic: string;
}

/** `err`: a command failed (id absent when the frame had none to give). */
export interface ErrEvent {
  op: 'err';
  id?: number;
  code: ErrorCode | (string & {});
  message: string;
  earliest?: number;
  latest?: number;
  epoch?: string;
}

/** `pong`: the reply to a ping. */
export interface PongEvent {
  op: 'pong';
  id: number;
}

/** `unsubbed`: the broker ended a subscription. */
export interface UnsubbedEvent {
  op: 'unsubbed';
  topic: string;
  code: ErrorCode | (string & {});
}

/** `topic` (v1.1): a pattern subscription starts a topic, or cannot (code). */
export interface TopicEvent {
  op: 'topic';
  /** The pattern. */
  sub: string;
  topic: string;
  epoch: string;
  from?: number;
  missed?: [number, number];
  code?: 'epoch_mismatch' | 'offset_out_of_range';
  earliest?: number;
  latest?: number;
}

/** Every event of the protocol; a newer broker may send others, and members not listed here. */
export type ServerEvent = WelcomeEvent | MsgEvent | OkEvent | ErrEvent | PongEvent | UnsubbedEvent | TopicEvent | PresenceEvent | PresenceMutedEvent;
