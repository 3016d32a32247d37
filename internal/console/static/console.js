// The brokerd console: connect, subscribe, watch, publish. It uses the
// JavaScript client that the broker serves under ./client/.
import { BrokerClient, CloseCodes } from './client/index.js';

const $ = (id) => document.getElementById(id);
const KEY = 'brokerd-console:';
/** Messages kept on screen (the newest); ?rows=N in the page's URL changes it. */
const MAX_ROWS = (() => {
  const n = Number.parseInt(new URLSearchParams(location.search).get('rows') || '', 10);
  return Number.isSafeInteger(n) && n >= 1 && n <= 100000 ? n : 2000;
})();
/** Events kept in their own list, apart from messages. */
const MAX_EVENTS = 500;
/** How often the topic list is refreshed while connected and visible. */
const TOPICS_EVERY_MS = 15000;
/** Members shown per topic (the broker lists at most 1,000 and mutes joins and leaves beyond). */
const MAX_MEMBERS = 1000;

const ui = {
  url: $('url'), token: $('token'), connectBtn: $('connect-btn'), disconnectBtn: $('disconnect-btn'),
  state: $('state'), stateText: $('state-text'), retryBtn: $('retry-btn'),
  events: $('events'), detail: $('detail'), detailMeta: $('detail-meta'), detailJSON: $('detail-json'), detailTitle: $('detail-title'),
  topics: $('topics'), topicsNote: $('topics-note'), subs: $('subs'),
  subTopic: $('sub-topic'), subFrom: $('sub-from'), subOffset: $('sub-offset'), subLast: $('sub-last'), subSince: $('sub-since'),
  subPresence: $('sub-presence'), presencePanel: $('presence-panel'), presence: $('presence'),
  rows: $('rows'), log: $('log'), logEmpty: $('log-empty'), count: $('count'), follow: $('follow'),
  pubTopic: $('pub-topic'), pubKey: $('pub-key'), pubData: $('pub-data'), pubResult: $('pub-result'), outbox: $('outbox'),
};

let client = null;
/**
 * topic → {topic, from, presence, sub, members, count, muted}: what the
 * console subscribes to, across reconnects and reloads; with presence, the
 * topic's members (session → member) as presence() listed them and joins
 * and leaves changed them since.
 */
const specs = new Map();
let received = 0;
let pendingRows = [];
let flushQueued = false;
let reconnectTimer = null;
/** topic|epoch|offset → its row: a message that comes through two subscriptions shows once. */
const shown = new Map();
/** The message each row shows, for the detail view. */
const messageOf = new WeakMap();
/** The current outage: since when, how many attempts, the last close. */
let outage = null;
/** Whether the broker asked for a token (unauthorized without one, 4001, 4003). */
let authProblem = '';
/** topic → its entry in the topic list, to keep its count current. */
const topicItems = new Map();
let topicsTimer = null;

// ---- helpers ----

function store(name, value) {
  try {
    if (value === undefined) sessionStorage.removeItem(KEY + name);
    else sessionStorage.setItem(KEY + name, JSON.stringify(value));
  } catch {
    // storage disabled: the console still works, it just forgets
  }
}

function load(name) {
  try {
    const v = sessionStorage.getItem(KEY + name);
    return v === null ? undefined : JSON.parse(v);
  } catch {
    return undefined;
  }
}

function defaultURL() {
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
}

function httpBase(wsUrl) {
  const u = new URL(wsUrl, location.href);
  u.protocol = u.protocol === 'wss:' ? 'https:' : u.protocol === 'ws:' ? 'http:' : u.protocol;
  return `${u.protocol}//${u.host}`;
}

function clock(ms) {
  const d = new Date(ms);
  const p = (n, w = 2) => String(n).padStart(w, '0');
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}

function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === 'class') e.className = v;
    else if (k === 'data') for (const [dk, dv] of Object.entries(v)) e.dataset[dk] = dv;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

function shortEpoch(e) {
  return e ? e.slice(0, 8) : '';
}

// ---- the log of messages and events ----

function rowKey(m) {
  return `${m.topic}|${m.epoch || ''}|${m.offset}`;
}

function addRow(tr) {
  pendingRows.push(tr);
  if (pendingRows.length > MAX_ROWS) {
    for (const r of pendingRows.slice(0, pendingRows.length - MAX_ROWS)) shown.delete(r.dataset.key);
    pendingRows = pendingRows.slice(-MAX_ROWS);
  }
  if (!flushQueued) {
    flushQueued = true;
    // Animation frames pause in background tabs; the timer catches up there.
    const t = setTimeout(flushRows, 250);
    requestAnimationFrame(() => {
      clearTimeout(t);
      flushRows();
    });
  }
}

function renderCount() {
  const n = (v) => v.toLocaleString('en-US');
  let text = `${n(received)} message${received === 1 ? '' : 's'}`;
  if (received > MAX_ROWS) text += ` · showing the last ${n(MAX_ROWS)}`;
  ui.count.textContent = text;
}

function flushRows() {
  if (!flushQueued) return;
  flushQueued = false;
  const rows = pendingRows;
  pendingRows = [];
  if (rows.length === 0) return;
  const frag = document.createDocumentFragment();
  for (const r of rows) frag.append(r);
  ui.rows.append(frag);
  while (ui.rows.childElementCount > MAX_ROWS) {
    const first = ui.rows.firstElementChild;
    shown.delete(first.dataset.key);
    first.remove();
  }
  ui.logEmpty.hidden = true;
  renderCount();
  if (ui.follow.checked) ui.log.scrollTop = ui.log.scrollHeight;
}

/** Shows a message, once even when it comes through two subscriptions. */
function showMessage(m, via) {
  const key = rowKey(m);
  const seen = shown.get(key);
  if (seen) {
    const vias = seen.dataset.via ? seen.dataset.via.split(' ') : [];
    if (!vias.includes(via)) {
      vias.push(via);
      seen.dataset.via = vias.join(' ');
      seen.querySelector('td.topic').title = `via ${vias.join(', ')}`;
    }
    return;
  }
  received++;
  const tr = messageRow(m, via);
  shown.set(key, tr);
  addRow(tr);
  bumpTopic(m.topic, m.offset);
}

function messageRow(m, via) {
  let text = JSON.stringify(m.data);
  if (text.length > 400) text = `${text.slice(0, 400)}…`;
  const tr = el('tr', { class: 'msg', tabindex: '0', data: { topic: m.topic, offset: String(m.offset), epoch: m.epoch || '', key: rowKey(m), via } },
    el('td', { class: 't' }, clock(m.ts)),
    el('td', { class: 'topic', title: `via ${via}` }, m.topic),
    el('td', { class: 'num' }, String(m.offset)),
    el('td', { class: 'data' }, text));
  messageOf.set(tr, m);
  return tr;
}

/** The detail view of a message: its metadata and its data as indented JSON. */
function showDetail(tr) {
  const m = messageOf.get(tr);
  if (!m) return;
  ui.detailTitle.textContent = `${m.topic} · offset ${m.offset}`;
  const rows = [
    ['topic', m.topic],
    ['offset', String(m.offset)],
    ['epoch', m.epoch || '—'],
    ['stored', `${new Date(m.ts).toISOString()} (${clock(m.ts)} here)`],
    ['via', (tr.dataset.via || '').split(' ').join(', ')],
  ];
  ui.detailMeta.replaceChildren(...rows.flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, v)]));
  ui.detailJSON.textContent = JSON.stringify(m.data, null, 2);
  if (typeof ui.detail.showModal === 'function') {
    if (!ui.detail.open) ui.detail.showModal();
  } else ui.detail.setAttribute('open', '');
}

/** An event of the connection or a subscription, in the events list (apart from messages). */
function event(text, kind = '') {
  const li = el('li', { class: `event ${kind}`, data: { event: kind || 'info' } },
    el('time', {}, clock(Date.now())), ' ', el('span', {}, text));
  ui.events.append(li);
  while (ui.events.childElementCount > MAX_EVENTS) ui.events.firstElementChild.remove();
  ui.events.scrollTop = ui.events.scrollHeight;
  return li;
}

// ---- connection ----

/**
 * The one status line of the connection. States: idle, connecting, checking
 * (open, access not known yet), open, reconnecting (with Retry now), auth
 * (the broker wants a token, or refused it), closed.
 */
function setState(state, text) {
  ui.state.dataset.state = state;
  ui.stateText.textContent = text;
  ui.disconnectBtn.disabled = !client;
  ui.retryBtn.hidden = !(client && state === 'reconnecting');
  renderSubsSoon();
}

function closeText(code, reason, message) {
  const name = CloseCodes[code] || (code === 1006 ? 'abnormal' : '');
  const why = message || (reason && !reason.startsWith('{') ? reason : '');
  return `${code}${name ? ` ${name}` : ''}${why ? ` — ${why}` : ''}`;
}

/** The broker wants a token, or refused the one given: say so in the status line, not in protocol words. */
function needToken(why) {
  authProblem = why;
  setState('auth', why);
  ui.token.focus();
}

function openState(c) {
  const where = `open · ${c.welcome.node} · session ${c.session.slice(0, 8)}`;
  setState('open', ui.token.value.trim() ? `${where} · token` : where);
}

function connect() {
  if (client) disconnect(true);
  const url = ui.url.value.trim();
  const token = ui.token.value.trim();
  try {
    localStorage.setItem(KEY + 'url', url);
  } catch {
    // not remembered
  }
  let c;
  try {
    c = new BrokerClient(url, {
      token: token || undefined,
      outbox: ui.outbox.checked && 'indexedDB' in globalThis ? 'indexeddb' : 'memory',
      outboxName: 'brokerd-console-outbox',
      positions: 'session',
      positionsPrefix: KEY + 'pos:',
    });
  } catch (err) {
    setState('closed', err.message);
    return;
  }
  client = c;
  outage = null;
  authProblem = '';
  c.on('statechange', ({ state }) => {
    if (client !== c) return;
    if (state === 'connecting' && !outage) setState(state, `connecting to ${c.url}`);
    else if (state === 'closed' && !authProblem) setState(state, 'closed');
    renderSubsSoon();
  });
  c.on('open', ({ node, version, heartbeat }) => {
    if (client !== c) return;
    if (outage) {
      const s = ((Date.now() - outage.since) / 1000).toFixed(1);
      event(`reconnected to ${node} after ${s} s (${outage.attempts} attempt${outage.attempts === 1 ? '' : 's'})`, 'good');
      outage = null;
    } else {
      event(`connected to ${node} (brokerd ${version}, heartbeat ${heartbeat} s)`, 'good');
    }
    // Errors of before are stale now.
    if (ui.pubResult.classList.contains('bad')) {
      ui.pubResult.textContent = '';
      ui.pubResult.className = 'note';
    }
    authProblem = '';
    if (ui.token.value.trim()) openState(c);
    else setState('checking', `open · ${node} · checking access…`);
    refreshTopics().then((status) => {
      if (client !== c || c.state !== 'open' || authProblem) return;
      if (status === 401 && !ui.token.value.trim()) needToken('this broker needs a token: paste one in Token, then Connect');
      else openState(c);
    });
  });
  c.on('closed', ({ code, reason, message, willReconnect, retryAfterMs }) => {
    if (client !== c) return;
    const text = closeText(code, reason, message);
    if ((code === 4001 || code === 4003) && !willReconnect) {
      const had = ui.token.value.trim();
      if (code === 4003) needToken('the token has expired: paste a fresh one in Token, then Connect');
      else if (had) needToken(`the broker refused the token${message ? ` (${message})` : ''}: paste another in Token, then Connect`);
      else needToken('this broker needs a token: paste one in Token, then Connect');
      event(`connection closed: ${text}`, 'bad');
      return;
    }
    if (!outage) {
      // One row for the whole outage; the status line counts the attempts.
      outage = { since: Date.now(), attempts: 0, last: text };
      let row = `connection lost: ${text}`;
      if (retryAfterMs) row += `; the broker asks to retry after ${(retryAfterMs / 1000).toFixed(1)} s`;
      if (!willReconnect) row += '; not reconnecting';
      event(row, willReconnect ? 'warn' : 'bad');
    } else {
      outage.last = text;
    }
    if (!willReconnect) setState('closed', `closed: ${text}`);
  });
  c.on('reconnecting', ({ delayMs, attempt }) => {
    if (client !== c) return;
    if (outage) outage.attempts = attempt;
    const until = Date.now() + delayMs;
    clearInterval(reconnectTimer);
    const tick = () => {
      if (client !== c || c.state !== 'reconnecting') {
        clearInterval(reconnectTimer);
        return;
      }
      const s = Math.max(0, (until - Date.now()) / 1000);
      const last = outage ? ` · last: ${outage.last}` : '';
      setState('reconnecting', `offline · retrying in ${s.toFixed(1)} s (attempt ${attempt})${last}`);
    };
    tick();
    reconnectTimer = setInterval(tick, 100);
  });
  c.on('connecting', ({ attempt }) => {
    if (client !== c || !outage) return;
    setState('reconnecting', `offline · connecting (attempt ${attempt}) · last: ${outage.last}`);
    ui.retryBtn.hidden = true;
  });
  c.on('error', ({ error }) => {
    if (client !== c) return;
    if (error.code === 'unauthorized' && (error.closeCode === 4001 || error.closeCode === 4003)) return; // said by closed
    event(`error: ${error.code ? `${error.code}: ` : ''}${error.message}`, 'bad');
  });
  c.on('republished', ({ topic, key, offset, dup }) => {
    event(`re-sent a publish from an earlier page to ${topic} (key ${key}): ${dup ? 'already stored at' : 'stored at'} offset ${offset}`, 'good');
  });
  for (const spec of specs.values()) startSub(spec, true);
  renderSubs();
  clearInterval(topicsTimer);
  topicsTimer = setInterval(() => {
    if (client === c && c.state === 'open' && document.visibilityState !== 'hidden') refreshTopics();
  }, TOPICS_EVERY_MS);
}

function disconnect(silent) {
  const c = client;
  if (!c) return;
  client = null;
  for (const spec of specs.values()) {
    spec.sub = null;
    spec.members = new Map();
    spec.listed = false;
  }
  c.close();
  clearInterval(reconnectTimer);
  clearInterval(topicsTimer);
  outage = null;
  if (!silent) {
    event('disconnected', 'warn');
    setState('closed', 'disconnected');
  }
  renderSubs();
  renderPresence();
}

// ---- subscriptions ----

function saveSpecs() {
  store('subs', [...specs.values()].map(({ topic, from, presence }) => (presence ? { topic, from, presence } : { topic, from })));
}

/**
 * The subscribe options of a start: from is "latest", "earliest", an
 * offset, {last: N} or {since: ms}. A pattern takes since only ("earliest"
 * is since 0); it resumes each topic from its stored position.
 */
function subOptions(from, pattern, resume) {
  const o = from && typeof from === 'object' ? from : null;
  if (pattern) {
    if (from === 'earliest') return { since: 0, resume };
    if (o && Number.isSafeInteger(o.since)) return { since: o.since, resume };
    return { resume };
  }
  if (o && Number.isSafeInteger(o.last)) return { last: o.last, resume };
  if (o && Number.isSafeInteger(o.since)) return { since: o.since, resume };
  return { from: o ? undefined : from, resume };
}

function describeFrom(from) {
  if (from && typeof from === 'object') return from.last !== undefined ? `the last ${from.last}` : `since ${new Date(from.since).toLocaleString()}`;
  return `from ${from}`;
}

function isPatternTopic(topic) {
  return /(^|\.)(\*|>)(\.|$)/.test(topic);
}

function startSub(spec, resume) {
  const pattern = isPatternTopic(spec.topic);
  const opts = subOptions(spec.from, pattern, resume);
  spec.topics = new Set();
  if (spec.presence && client.state === 'open' && !client.hasFeature('presence')) {
    event(`${spec.topic}: this broker has no presence (feature "presence"); subscribing without`, 'warn');
    spec.presence = false;
    saveSpecs();
  }
  if (spec.presence) {
    Object.assign(opts, {
      presence: true,
      onJoin: (m) => memberJoined(spec, m),
      onLeave: (m) => memberLeft(spec, m),
      onPresenceMuted: () => {
        spec.muted = true;
        event(`${spec.topic}: more than 1,000 members: joins and leaves are no longer sent (Refresh counts them)`, 'warn');
        renderPresence();
      },
    });
  }
  spec.members = new Map();
  spec.count = 0;
  spec.muted = false;
  spec.listed = false;
  let sub;
  try {
    sub = client.subscribe(spec.topic, (m) => {
      showMessage(m, spec.topic);
      renderSubsSoon();
    }, opts);
  } catch (err) {
    event(`cannot subscribe to ${spec.topic}: ${err.message}`, 'bad');
    return false;
  }
  spec.sub = sub;
  sub.on('subscribed', ({ from, head, epoch, resumed }) => {
    if (pattern) event(`${resumed ? 'resumed' : 'subscribed to'} the pattern ${spec.topic} (${describeFrom(spec.from)}; each topic in order, replayed then live)`, 'good');
    else if (resumed) event(`resumed ${spec.topic} from offset ${from} (epoch ${shortEpoch(epoch)})`, 'good');
    else event(`subscribed to ${spec.topic} from offset ${from} (head ${head}, epoch ${shortEpoch(epoch)})`, 'good');
    // Who is there: asked after every (re)subscribe, since members came
    // and went while the console was away.
    if (spec.presence) loadMembers(spec, sub);
    renderSubs();
  });
  sub.on('missed', ({ topic, first, last }) => event(`${topic}: offsets ${first}–${last} are no longer retained (missed)`, 'warn'));
  sub.on('topic', ({ topic, epoch, from, code, earliest, latest }) => {
    if (code) event(`${spec.topic}: ${topic} is not delivered (${code}; retained ${earliest}–${latest}, epoch ${shortEpoch(epoch)})`, 'warn');
    else {
      spec.topics.add(topic);
      event(`${spec.topic}: ${topic} from offset ${from} (epoch ${shortEpoch(epoch)})`);
    }
    renderSubsSoon();
  });
  sub.on('gap', ({ first, last }) => event(`${spec.topic}: gap, offsets ${first}–${last} never arrived`, 'bad'));
  sub.on('epoch_mismatch', ({ previousEpoch, epoch }) => event(`${spec.topic}: the history was reset (epoch ${shortEpoch(previousEpoch)} → ${shortEpoch(epoch)}); starting over from its earliest message`, 'warn'));
  sub.on('offset_out_of_range', ({ from, earliest, latest }) => event(`${spec.topic}: offset ${from ?? '?'} is outside the log${earliest !== undefined ? ` (${earliest}–${latest})` : ''}`, 'warn'));
  sub.on('unsubbed', ({ code }) => event(`${spec.topic}: the broker ended the subscription (${code})`, 'warn'));
  sub.on('end', ({ error }) => {
    if (error && (error.code === 'unsupported' || error.code === 'forbidden') && spec.presence && specs.get(spec.topic) === spec) {
      // No presence here (a broker without it, known only once connected,
      // or a topic whose policy turns it off): go on without. A plain
      // subscription that is forbidden too ends as usual.
      event(error.code === 'unsupported'
        ? `${spec.topic}: this broker has no presence (feature "presence"); subscribing without`
        : `${spec.topic}: presence refused (${error.message}); subscribing without`, 'warn');
      spec.presence = false;
      saveSpecs();
      if (client) startSub(spec, true);
      renderSubs();
      renderPresence();
      return;
    }
    if (error) {
      if (error.code === 'unauthorized') {
        // Kept: it starts again once a token (another one) is given.
        spec.sub = null;
        if (!authProblem) {
          needToken(ui.token.value.trim()
            ? `the broker refused the token: paste another in Token, then Connect`
            : `this broker needs a token to subscribe to ${spec.topic}: paste one in Token, then Connect`);
        }
      } else {
        event(`${spec.topic}: subscription ended: ${error.code}: ${error.message}`, 'bad');
        specs.delete(spec.topic);
        saveSpecs();
      }
    }
    renderSubs();
  });
  return true;
}

function subscribe(topic, from, presence) {
  if (!client) connect();
  if (specs.has(topic)) {
    event(`already subscribed to ${topic}`, 'warn');
    return;
  }
  if (presence && isPatternTopic(topic)) {
    event(`${topic}: presence is per topic, not for a pattern; subscribing without`, 'warn');
    presence = false;
  }
  const spec = { topic, from, presence: !!presence, sub: null };
  specs.set(topic, spec);
  if (!startSub(spec, false)) {
    specs.delete(topic);
    return;
  }
  saveSpecs();
  renderSubs();
}

function unsubscribe(topic) {
  const spec = specs.get(topic);
  if (!spec) return;
  specs.delete(topic);
  if (spec.sub) spec.sub.unsubscribe();
  saveSpecs();
  event(`unsubscribed from ${topic}`);
  renderSubs();
  renderPresence();
}

// ---- presence ----

function memberName(m) {
  return m.user !== undefined ? m.user : `session ${m.session.slice(0, 8)}`;
}

function memberInfo(m) {
  if (m.info === undefined) return '';
  const t = JSON.stringify(m.info);
  return t.length > 120 ? `${t.slice(0, 120)}…` : t;
}

/**
 * Joins (on) or leaves (off) the topic's presence: the subscription is
 * made again with or without presence, resuming from its position, so no
 * message is lost or shown twice.
 */
function togglePresence(topic) {
  const spec = specs.get(topic);
  if (!spec || isPatternTopic(topic)) return;
  spec.presence = !spec.presence;
  saveSpecs();
  event(spec.presence ? `${topic}: joining the presence` : `${topic}: leaving the presence`);
  if (client && spec.sub) {
    spec.sub.unsubscribe();
    spec.sub = null;
    startSub(spec, true);
  }
  renderSubs();
  renderPresence();
}

/** Lists the topic's members with presence() (after each subscribe, and Refresh). */
async function loadMembers(spec, sub) {
  const c = client;
  if (!c) return;
  try {
    const { members, count } = await c.presence(spec.topic);
    if (client !== c || spec.sub !== sub) return;
    spec.members = new Map(members.map((m) => [m.session, m]));
    spec.count = count;
    spec.listed = true;
  } catch (err) {
    if (client !== c || spec.sub !== sub) return;
    event(`${spec.topic}: cannot list the presence: ${err.code ? `${err.code}: ` : ''}${err.message}`, 'bad');
  }
  renderPresence();
}

function memberJoined(spec, m) {
  if (!spec.members.has(m.session)) spec.count++;
  if (spec.members.size < MAX_MEMBERS || spec.members.has(m.session)) spec.members.set(m.session, m);
  event(`${spec.topic}: ${memberName(m)} joined (${m.node})`);
  renderPresenceSoon();
}

function memberLeft(spec, m) {
  if (spec.members.delete(m.session) || spec.count > spec.members.size) spec.count = Math.max(0, spec.count - 1);
  event(`${spec.topic}: ${memberName(m)} left`);
  renderPresenceSoon();
}

let presenceQueued = false;
function renderPresenceSoon() {
  if (presenceQueued) return;
  presenceQueued = true;
  setTimeout(() => {
    presenceQueued = false;
    renderPresence();
  }, 100);
}

function renderPresence() {
  const joined = [...specs.values()].filter((s) => s.presence);
  ui.presencePanel.hidden = joined.length === 0;
  ui.presence.replaceChildren(...joined.map((spec) => {
    const me = client && client.session;
    const members = [...(spec.members || new Map()).values()];
    members.sort((a, b) => (a.session === me ? -1 : b.session === me ? 1 : memberName(a).localeCompare(memberName(b))));
    const shown = members.slice(0, MAX_MEMBERS);
    const count = spec.listed ? `${spec.count} here` : '…';
    const items = shown.map((m) => {
      const you = m.session === me;
      const info = memberInfo(m);
      return el('li', { class: `member${you ? ' you' : ''}`, data: { session: m.session, user: m.user || '', node: m.node }, title: `session ${m.session}\nnode ${m.node}${m.user !== undefined ? `\nuser ${m.user}` : ''}` },
        el('span', { class: 'who' }, `${memberName(m)}${you ? ' (you)' : ''}`),
        el('span', { class: 'meta' }, m.node),
        info ? el('span', { class: 'info' }, info) : null);
    });
    if (items.length === 0) items.push(el('li', { class: 'empty' }, spec.listed ? 'nobody' : 'waiting for the subscription'));
    return el('div', { class: 'presence-topic', data: { topic: spec.topic, count: String(spec.count || 0) } },
      el('div', { class: 'panel-head' },
        el('span', { class: 'name', title: spec.topic }, spec.topic),
        el('span', { class: 'count' }, count),
        el('button', {
          type: 'button', class: 'icon', title: `List the members of ${spec.topic} again`, 'aria-label': `List the members of ${spec.topic} again`,
          onclick: () => spec.sub && client && loadMembers(spec, spec.sub),
        }, '↻')),
      spec.muted ? el('p', { class: 'note' }, 'more than 1,000 members: joins and leaves are not sent; ↻ counts them') : null,
      el('ul', { class: 'list members' }, ...items));
  }));
}

let subsQueued = false;
function renderSubsSoon() {
  if (subsQueued) return;
  subsQueued = true;
  setTimeout(() => {
    subsQueued = false;
    renderSubs();
  }, 200);
}

function renderSubs() {
  ui.subs.replaceChildren();
  if (specs.size === 0) {
    ui.subs.append(el('li', { class: 'empty' }, 'none yet'));
    return;
  }
  for (const spec of specs.values()) {
    const s = spec.sub;
    let state = s ? s.state : 'idle';
    // While the connection is down a subscription waits to resume.
    if (s && state !== 'ended' && (!client || client.state !== 'open')) state = 'paused';
    if (!s && authProblem) state = 'needs token';
    const meta = s && !s.pattern && s.epoch ? `offset ${s.offset} · epoch ${shortEpoch(s.epoch)}` : s && s.pattern ? `pattern · ${spec.topics ? spec.topics.size : 0} topics` : '';
    ui.subs.append(el('li', { class: 'sub', data: { topic: spec.topic, state, offset: s ? String(s.offset) : '0' } },
      el('div', { class: 'sub-line' },
        el('span', { class: 'name', title: spec.topic }, spec.topic),
        el('button', { type: 'button', title: `Unsubscribe from ${spec.topic}`, 'aria-label': `Unsubscribe from ${spec.topic}`, onclick: () => unsubscribe(spec.topic) }, '×')),
      el('div', { class: 'sub-line' },
        el('span', { class: `badge ${state.replace(' ', '-')}`, title: state === 'paused' ? 'offline: resumes where it was once the connection is back' : '' }, state),
        el('span', { class: 'meta', title: s && s.epoch ? `epoch ${s.epoch}` : '' }, meta),
        isPatternTopic(spec.topic) ? null : el('button', {
          type: 'button', class: 'presence-toggle', 'aria-pressed': spec.presence ? 'true' : 'false',
          title: spec.presence ? `Leave the presence of ${spec.topic}` : `Join the presence of ${spec.topic}: see who else is subscribed`,
          onclick: () => togglePresence(spec.topic),
        }, 'presence'))));
  }
}

// ---- topics ----

/** Keeps a listed topic's count current as its messages arrive. */
function bumpTopic(topic, offset) {
  const item = topicItems.get(topic);
  if (!item || offset <= item.head) return;
  item.head = offset;
  item.meta.textContent = String(offset);
}

/** Loads the topic list; resolves with the HTTP status (0 when unreachable). */
async function refreshTopics() {
  const url = ui.url.value.trim();
  let base;
  try {
    base = httpBase(url);
  } catch {
    return 0;
  }
  const headers = {};
  const token = ui.token.value.trim();
  if (token) headers.Authorization = `Bearer ${token}`;
  if (!topicItems.size) {
    ui.topicsNote.className = 'note';
    ui.topicsNote.textContent = 'loading…';
  }
  let status = 0;
  try {
    // Bounded: a request the broker never answers (one sent while it was
    // going down or coming up) must not keep the page checking for good.
    const r = await fetch(`${base}/v1/topics?limit=1000`, { headers, cache: 'no-store', signal: AbortSignal.timeout(10000) });
    status = r.status;
    if (!r.ok) {
      let msg = `${r.status} ${r.statusText}`;
      try {
        const body = await r.json();
        if (body && body.message) msg = `${r.status}: ${body.message}`;
      } catch {
        // not JSON
      }
      if (r.status === 401) msg = token ? 'the broker refused the token' : 'this broker needs a token';
      throw new Error(msg);
    }
    const body = await r.json();
    const list = Array.isArray(body.topics) ? body.topics : [];
    ui.topics.replaceChildren();
    topicItems.clear();
    for (const t of list) {
      const meta = el('span', { class: 'meta' }, `${t.head}`);
      topicItems.set(t.topic, { head: t.head, meta });
      ui.topics.append(el('li', {
        class: 'topic', data: { topic: t.topic }, title: `epoch ${t.epoch}\noffsets ${t.earliest}–${t.head}`,
        onclick: () => {
          ui.subTopic.value = t.topic;
          ui.pubTopic.value = t.topic;
          ui.subTopic.focus();
        },
      }, el('span', { class: 'name' }, t.topic), meta));
    }
    ui.topicsNote.className = 'note';
    ui.topicsNote.textContent = list.length ? '' : 'no topics yet';
  } catch (err) {
    ui.topicsNote.className = 'note bad';
    ui.topicsNote.textContent = `topic list unavailable: ${err.message}`;
  }
  return status;
}

// ---- publishing ----

async function publish() {
  const topic = ui.pubTopic.value.trim();
  const key = ui.pubKey.value.trim();
  let data;
  try {
    data = JSON.parse(ui.pubData.value);
  } catch (err) {
    ui.pubResult.className = 'note bad';
    ui.pubResult.textContent = `not JSON: ${err.message}`;
    return;
  }
  if (!client) connect();
  const c = client;
  ui.pubResult.className = 'note';
  ui.pubResult.textContent = c.state === 'open' ? 'publishing…' : 'queued: will be sent when connected';
  try {
    const r = await c.publish(topic, data, key ? { key } : {});
    ui.pubResult.className = 'note good';
    ui.pubResult.textContent = r.dup ? `duplicate: already stored at offset ${r.offset}` : `stored at offset ${r.offset}`;
    ui.pubResult.dataset.offset = String(r.offset);
    if (topicItems.has(topic)) bumpTopic(topic, r.offset);
    else refreshTopics();
  } catch (err) {
    ui.pubResult.className = 'note bad';
    if (err.code === 'unauthorized' && !ui.token.value.trim()) {
      ui.pubResult.textContent = 'not published: this broker needs a token';
      needToken('this broker needs a token: paste one in Token, then Connect');
      return;
    }
    ui.pubResult.textContent = `${err.code ? `${err.code}: ` : ''}${err.message}`;
  }
}

// ---- wiring ----

ui.url.value = (() => {
  try {
    return localStorage.getItem(KEY + 'url') || defaultURL();
  } catch {
    return defaultURL();
  }
})();

$('connect').addEventListener('submit', (e) => {
  e.preventDefault();
  connect();
});
ui.disconnectBtn.addEventListener('click', () => disconnect(false));
ui.retryBtn.addEventListener('click', () => {
  if (client && client.state === 'reconnecting') client.connect();
});
$('events-clear').addEventListener('click', () => ui.events.replaceChildren());
ui.rows.addEventListener('click', (e) => {
  const tr = e.target.closest('tr.msg');
  if (tr) showDetail(tr);
});
ui.rows.addEventListener('keydown', (e) => {
  const tr = e.target.closest('tr.msg');
  if (tr && (e.key === 'Enter' || e.key === ' ')) {
    e.preventDefault();
    showDetail(tr);
  }
});
$('detail-close').addEventListener('click', () => ui.detail.close());
$('subscribe').addEventListener('submit', (e) => {
  e.preventDefault();
  const topic = ui.subTopic.value.trim();
  if (!topic) return;
  let from = ui.subFrom.value;
  if (from === 'offset') from = Math.max(1, Number.parseInt(ui.subOffset.value, 10) || 1);
  if (from === 'last') from = { last: Math.min(10000, Math.max(1, Number.parseInt(ui.subLast.value, 10) || 50)) };
  if (from === 'since') {
    const ms = ui.subSince.value ? new Date(ui.subSince.value).getTime() : Date.now() - 3600e3;
    from = { since: Number.isFinite(ms) ? Math.max(0, ms) : 0 };
  }
  subscribe(topic, from, ui.subPresence.checked);
});
ui.subFrom.addEventListener('change', () => {
  ui.subOffset.hidden = ui.subFrom.value !== 'offset';
  ui.subLast.hidden = ui.subFrom.value !== 'last';
  ui.subSince.hidden = ui.subFrom.value !== 'since';
});
$('publish').addEventListener('submit', (e) => {
  e.preventDefault();
  publish();
});
ui.pubData.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
    e.preventDefault();
    publish();
  }
});
$('topics-refresh').addEventListener('click', refreshTopics);
$('clear').addEventListener('click', () => {
  pendingRows = [];
  ui.rows.replaceChildren();
  shown.clear();
  received = 0;
  renderCount();
  ui.logEmpty.hidden = false;
});
ui.log.addEventListener('scroll', () => {
  const atBottom = ui.log.scrollHeight - ui.log.scrollTop - ui.log.clientHeight < 30;
  if (ui.follow.checked !== atBottom) ui.follow.checked = atBottom;
});
document.addEventListener('visibilitychange', flushRows);

for (const s of load('subs') || []) {
  if (s && typeof s.topic === 'string') specs.set(s.topic, { topic: s.topic, from: s.from, presence: s.presence === true && !isPatternTopic(s.topic), sub: null });
}
renderSubs();
renderPresence();
connect();
