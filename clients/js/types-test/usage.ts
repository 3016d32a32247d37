// A typed tour of the client's API: `npm run typecheck` compiles it
// against the hand-written definitions, so that they stay usable.
import WebSocket from 'ws';
import {
  BrokerClient,
  BrokerError,
  ClientErrorCodes,
  CloseCodes,
  ErrorCodes,
  IndexedDBOutbox,
  backoffDelay,
  parseCloseReason,
  type ClientErrorCode,
  type ErrorCode,
  type Message,
  type PresenceMember,
  type PresenceResult,
  type PublishResult,
  type Subscription,
} from '@brokerd/client';
import { ErrorCodes as codesOnly } from '@brokerd/client/codes';

interface Order {
  id: number;
  total: number;
}

export async function tour(): Promise<void> {
  const client = new BrokerClient('wss://broker.example/ws', {
    WebSocket,
    getToken: async () => 'token',
    onEpochMismatch: 'earliest',
    onOutOfRange: 'earliest',
    positions: 'session',
    positionsPrefix: 'app:',
    maxQueue: 500,
  });

  client.on('closed', ({ code, reason, willReconnect, retryAfterMs }) => {
    const name: string | undefined = CloseCodes[code as keyof typeof CloseCodes];
    console.log(code, name, reason, willReconnect, retryAfterMs ?? 0);
  });
  client.addEventListener('statechange', (e) => {
    const s: 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed' = e.detail.state;
    console.log(s);
  });
  client.on('reconnecting', (d) => console.log(d.attempt, d.delayMs));

  // A handler, typed data.
  const sub: Subscription<Order> = client.subscribe<Order>('orders', (m: Message<Order>) => {
    const total: number = m.data.total;
    const offset: number = m.offset;
    console.log(total, offset, m.epoch);
  }, { from: 'earliest' });
  sub.on('epoch_mismatch', (d, e) => {
    console.log(d.previousEpoch, d.epoch, d.earliest, d.latest);
    e.preventDefault();
  });
  sub.on('missed', ({ first, last }) => console.log(first, last));
  sub.on('offset_out_of_range', (d) => console.log(d.beyondHead, d.restart));
  const info = await sub.ready;
  console.log(info.epoch, info.head, info.from, info.missed?.[0]);

  // The async iterator form.
  for await (const m of client.subscribe('alerts.>')) {
    console.log(m.topic, m.pattern, m.data);
    break;
  }

  // A durable consumer.
  // Protocol v1.1: feature detection, last, since, pattern resume.
  if (client.hasFeature('last')) client.subscribe('chat.room-7', (m) => console.log(m.offset), { last: 50 });
  const features: string[] = client.features;
  console.log(features.length);
  client.subscribe('chat.room-9', { since: new Date(Date.now() - 3600_000) });
  const rooms = client.subscribe('chat.*', { since: 0, ifGone: true, positions: { 'chat.a': { from: 12, epoch: 'e1' }, 'chat.b': { from: 1 } } });
  rooms.on('topic', ({ topic, epoch, from, code, earliest, latest }) => console.log(topic, epoch, from ?? 0, code ?? '', earliest ?? 0, latest ?? 0));
  // Presence: who else is in the room.
  const room = client.subscribe('chat.room-1', (m) => console.log(m.data), {
    presence: true,
    presenceInfo: { name: 'Ada', avatar: null },
    onJoin: (m: PresenceMember) => console.log('join', m.session, m.user ?? '', m.node, m.info),
    onLeave: ({ session }) => console.log('leave', session),
    onPresenceMuted: ({ topic }) => console.log('muted', topic),
  });
  room.on('join', ({ topic, member }) => console.log(topic, member.session));
  room.on('presence_muted', ({ topic }) => console.log(topic, room.presence, room.presenceMuted));
  const here: PresenceResult = await client.presence('chat.room-1');
  const names: string[] = here.members.map((m) => m.user ?? m.session);
  console.log(here.topic, here.count, names);
  const unsupported: ClientErrorCode = 'unsupported';
  console.log(unsupported);
  const work = client.subscribe('jobs', { consumer: 'workers', maxInflight: 10 });
  for await (const job of work) {
    await job.ack?.();
    await work.ack(job.offset);
    await client.ack('jobs', 'workers', job.offset);
  }

  const r: PublishResult = await client.publish('orders', { id: 1, total: 9.5 }, { key: 'order-1' });
  console.log(r.offset, r.dup, r.key);

  try {
    await client.publish('orders', 1);
  } catch (err) {
    if (err instanceof BrokerError) {
      const code: string = err.code;
      console.log(code, err.earliest, err.latest, err.epoch);
    }
  }

  const c: ErrorCode = 'epoch_mismatch';
  console.log(ErrorCodes[c], codesOnly.slow, ClientErrorCodes.queue_full);
  console.log(backoffDelay(3, { baseMs: 500, maxMs: 30000 }), parseCloseReason('{}').retryAfterMs);
  console.log(new IndexedDBOutbox({ name: 'x' }), await client.outboxRestored, client.pendingPublishes);

  await sub.unsubscribe();
  await client.close();

  // Browsers: the global WebSocket, a persistent outbox.
  const browser = new BrokerClient('/ws', { outbox: 'indexeddb', token: 't' });
  browser.connect();
}
