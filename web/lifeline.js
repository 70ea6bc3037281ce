// Lifeline browser client: the XML frame protocol (PROTOCOL.md) over a
// WebSocket with the subprotocol lifeline.v1. It logs in, heartbeats on the
// schedule the server's <welcome> gives, declares the server lost after
// `misses` unanswered pings, and reconnects with exponential backoff and full
// jitter. No build step, no dependencies: an ES module that also loads in
// Node for its tests (nothing browser-only is touched until start()).

export const SUBPROTOCOL = 'lifeline.v1';

/** `bye` reasons after which the client does not reconnect by itself. */
const TERMINAL_BYE = new Set(['replaced', 'kicked']);
/** Errors the server closes on, which a retry with the same login would repeat. */
const TERMINAL_ERROR = new Set(['auth-failed', 'bad-id']);

const ESCAPES = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&apos;' };
const ENTITIES = { lt: '<', gt: '>', amp: '&', apos: "'", quot: '"' };

/** Escapes text for XML content or a quoted attribute value. */
export function escapeXml(text) {
  let out = '';
  for (const ch of String(text)) out += ESCAPES[ch] ?? ch;
  return out;
}

/**
 * The text of XML content: entity and character references resolved,
 * CDATA kept verbatim, comments and nested tags dropped (like DOM textContent).
 */
export function unescapeXml(raw) {
  let out = '';
  let i = 0;
  while (i < raw.length) {
    const ch = raw[i];
    if (ch === '&') {
      const end = raw.indexOf(';', i);
      const name = end < 0 ? '' : raw.slice(i + 1, end);
      const resolved = resolveEntity(name);
      if (resolved === undefined) {
        out += ch; // not a reference the server would pass: keep it literally
        i += 1;
      } else {
        out += resolved;
        i = end + 1;
      }
    } else if (raw.startsWith('<![CDATA[', i)) {
      const end = raw.indexOf(']]>', i);
      const stop = end < 0 ? raw.length : end;
      out += raw.slice(i + 9, stop);
      i = stop + 3;
    } else if (raw.startsWith('<!--', i)) {
      const end = raw.indexOf('-->', i);
      i = end < 0 ? raw.length : end + 3;
    } else if (ch === '<') {
      const end = raw.indexOf('>', i);
      i = end < 0 ? raw.length : end + 1;
    } else {
      out += ch;
      i += 1;
    }
  }
  return out;
}

function resolveEntity(name) {
  if (name in ENTITIES) return ENTITIES[name];
  if (name.startsWith('#')) {
    const hex = name[1] === 'x';
    const digits = name.slice(hex ? 2 : 1);
    const code = Number.parseInt(digits, hex ? 16 : 10);
    if (digits !== '' && Number.isInteger(code) && code >= 0 && code <= 0x10ffff) {
      return String.fromCodePoint(code);
    }
  }
  return undefined;
}

const isSpace = (ch) => ch === ' ' || ch === '\t' || ch === '\n' || ch === '\r';

/**
 * Parses one server frame (one whole top-level element) into
 * `{ name, attrs, text }`. Throws on text that is not an element; the server
 * only ever sends well-formed frames, so this stays small and regex-free.
 */
export function parseFrame(xml) {
  let i = 0;
  const skipSpace = () => {
    while (i < xml.length && isSpace(xml[i])) i += 1;
  };
  const readUntil = (stop) => {
    const start = i;
    while (i < xml.length && !stop(xml[i])) i += 1;
    return xml.slice(start, i);
  };
  skipSpace();
  if (xml[i] !== '<') throw new Error('frame does not start with <');
  i += 1;
  const name = readUntil((ch) => isSpace(ch) || ch === '/' || ch === '>');
  if (name === '') throw new Error('frame has no element name');
  const attrs = {};
  for (;;) {
    skipSpace();
    if (xml.startsWith('/>', i)) return { name, attrs, text: '' };
    if (xml[i] === '>') break;
    const key = readUntil((ch) => isSpace(ch) || ch === '=' || ch === '>' || ch === '/');
    skipSpace();
    if (key === '' || xml[i] !== '=') throw new Error(`malformed attribute in <${name}>`);
    i += 1;
    skipSpace();
    const quote = xml[i];
    if (quote !== '"' && quote !== "'") throw new Error(`unquoted attribute ${key}`);
    i += 1;
    const value = readUntil((ch) => ch === quote);
    if (i >= xml.length) throw new Error(`unterminated attribute ${key}`);
    i += 1;
    attrs[key] = unescapeXml(value);
  }
  const close = xml.lastIndexOf(`</${name}`);
  if (close < i) throw new Error(`<${name}> is not closed`);
  return { name, attrs, text: unescapeXml(xml.slice(i + 1, close)) };
}

const attr = (name, value) => (value == null ? '' : ` ${name}="${escapeXml(value)}"`);

/** The client frames of the protocol, escaped. */
export const frames = {
  login: (id, token) => `<login${attr('id', id)}${attr('token', token || null)}/>`,
  msg: (to, text, id) => `<msg${attr('to', to)}${attr('id', id)}>${escapeXml(text)}</msg>`,
  ack: (id) => `<ack${attr('id', id)}/>`,
  ping: (seq) => `<heartbeat mode="ping"${attr('seq', seq)}/>`,
  pong: (seq) => `<heartbeat mode="pong"${attr('seq', seq)}/>`,
  bye: () => '<bye/>',
};

/**
 * Exponential backoff with full jitter: a uniform delay in
 * [0, min(cap, base * 2^attempt)), so a crowd of clients dropped at once
 * does not come back at once.
 */
export function backoffDelay(attempt, base, cap, random = Math.random) {
  const ceiling = Math.min(cap, base * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

function defaultUrl() {
  const loc = globalThis.location;
  if (!loc) throw new Error('no url given and no page location to derive it from');
  return `${loc.protocol === 'https:' ? 'wss' : 'ws'}://${loc.host}/`;
}

let messageCounter = 0;
function nextMessageId() {
  messageCounter += 1;
  return `m${Date.now().toString(36)}.${messageCounter}`;
}

/**
 * A client that stays connected. States: `idle` (before start), `connecting`
 * (socket opening or login sent), `online` (welcomed), `waiting` (before a
 * reconnect), `offline` (the browser is offline), `stopped` (by stop(), a
 * terminal bye or a refused login; start() again to resume).
 *
 * Options: `id`, `token`, `url` (default: this page's host), `base`/`cap`
 * backoff bounds in ms, callbacks `onState(state, detail)`, `onMessage({from,
 * id, text})`, `onRtt(ms)`, `onError({code, ref, text})`, `onLog(line)`, and
 * for tests `WebSocket` and `events` (where online/offline are heard).
 */
export class LifelineClient {
  state = 'idle';
  /** Round-trip time of the last answered heartbeat, ms (null before one). */
  rtt = null;
  /** Connections opened after the first one. */
  reconnects = 0;

  #opts;
  #ws = null;
  #attempt = 0;
  #connections = 0;
  #terminal = false;
  #offline = false;
  #bye = null;
  #heartbeatTimer = null;
  #reconnectTimer = null;
  #interval = 0;
  #misses = 0;
  #missed = 0;
  #seq = 0;
  #pingSentAt = 0;
  #events = null;
  #onOnline = () => this.#online();
  #onOffline = () => this.#goOffline();

  constructor(opts) {
    this.#opts = { base: 500, cap: 30000, ...opts };
  }

  /** Connects (or resumes after stop()), and follows the browser's online state. */
  start() {
    this.#terminal = false;
    this.#attempt = 0;
    this.#events = this.#opts.events ?? globalThis;
    if (typeof this.#events?.addEventListener === 'function') {
      this.#events.addEventListener('online', this.#onOnline);
      this.#events.addEventListener('offline', this.#onOffline);
    }
    if (globalThis.navigator?.onLine === false) this.#goOffline();
    else this.#connect();
  }

  /** Says bye and closes; no reconnect until start(). */
  stop() {
    this.#terminal = true;
    if (typeof this.#events?.removeEventListener === 'function') {
      this.#events.removeEventListener('online', this.#onOnline);
      this.#events.removeEventListener('offline', this.#onOffline);
    }
    if (this.state === 'online') this.#send(frames.bye());
    this.#drop(1000);
    this.#setState('stopped', { reason: 'stop' });
  }

  /** Sends `text` to client `to`; returns the message id (generated if not given). */
  send(to, text, id = nextMessageId()) {
    if (this.state !== 'online') throw new Error(`cannot send while ${this.state}`);
    this.#send(frames.msg(to, text, id));
    return id;
  }

  #connect() {
    this.#clearTimers();
    this.#bye = null;
    if (this.#connections > 0) this.reconnects += 1;
    this.#connections += 1;
    this.#setState('connecting');
    const WS = this.#opts.WebSocket ?? globalThis.WebSocket;
    const ws = new WS(this.#opts.url ?? defaultUrl(), SUBPROTOCOL);
    this.#ws = ws;
    ws.onopen = () => this.#send(frames.login(this.#opts.id, this.#opts.token));
    ws.onmessage = (event) => this.#receive(event.data);
    // onerror is always followed by onclose, which handles both.
    ws.onclose = () => {
      if (this.#ws === ws) this.#lost('closed');
    };
  }

  #receive(data) {
    let frame;
    try {
      frame = parseFrame(String(data));
    } catch (err) {
      this.#log(`unreadable frame: ${err.message}`);
      return;
    }
    // Any frame proves the server is alive, not only the pong to our ping.
    this.#missed = 0;
    const a = frame.attrs;
    switch (frame.name) {
      case 'welcome':
        this.#attempt = 0;
        this.#interval = Math.max(100, Number(a.interval) || 5000);
        this.#misses = Math.max(1, Number(a.misses) || 5);
        this.#setState('online', { id: a.id });
        this.#scheduleHeartbeat(a['phase-ms'] != null ? Number(a['phase-ms']) : this.#interval);
        break;
      case 'heartbeat':
        if (a.mode === 'ping') {
          this.#send(frames.pong(a.seq ?? null));
        } else if (a.mode === 'pong' && a.seq === String(this.#seq)) {
          this.rtt = performance.now() - this.#pingSentAt;
          this.#opts.onRtt?.(this.rtt);
        }
        break;
      case 'msg':
        this.#opts.onMessage?.({ from: a.from, id: a.id ?? null, text: frame.text });
        if (a.id != null) this.#send(frames.ack(a.id));
        break;
      case 'bye':
        this.#bye = { reason: a.reason, retryMs: a['retry-ms'] != null ? Number(a['retry-ms']) : null };
        if (TERMINAL_BYE.has(a.reason)) this.#terminal = true;
        this.#log(`server said bye: ${a.reason}`);
        break;
      case 'error':
        this.#opts.onError?.({ code: a.code, ref: a.ref ?? null, text: frame.text });
        if (TERMINAL_ERROR.has(a.code)) {
          this.#terminal = true;
          this.#bye = { reason: a.code, retryMs: null };
        }
        break;
      default:
        this.#log(`ignoring <${frame.name}>`);
    }
  }

  #scheduleHeartbeat(delay) {
    clearTimeout(this.#heartbeatTimer);
    this.#heartbeatTimer = setTimeout(() => this.#heartbeat(), Math.max(0, delay));
  }

  #heartbeat() {
    if (this.#missed >= this.#misses) {
      this.#log(`no answer to ${this.#missed} heartbeats: server lost`);
      this.#lost('timeout');
      return;
    }
    this.#seq += 1;
    this.#missed += 1;
    this.#pingSentAt = performance.now();
    this.#send(frames.ping(this.#seq));
    this.#scheduleHeartbeat(this.#interval);
  }

  /** The connection is gone (closed, or the server went silent): decide what next. */
  #lost(why) {
    this.#drop(1000);
    if (this.#terminal) {
      this.#setState('stopped', { reason: this.#bye?.reason ?? why });
      return;
    }
    if (this.#offline) return;
    const { base, cap } = this.#opts;
    const retryMs = this.#bye?.retryMs;
    const delay = retryMs != null && Number.isFinite(retryMs)
      ? retryMs
      : backoffDelay(this.#attempt, base, cap);
    this.#attempt += 1;
    this.#setState('waiting', { reason: this.#bye?.reason ?? why, delay });
    this.#reconnectTimer = setTimeout(() => this.#connect(), delay);
  }

  #goOffline() {
    this.#offline = true;
    this.#drop(1001);
    if (!this.#terminal) this.#setState('offline');
  }

  #online() {
    this.#offline = false;
    if (this.#terminal || this.state === 'connecting' || this.state === 'online') return;
    this.#attempt = 0;
    this.#connect();
  }

  /** Closes the socket without hearing from it again, and stops the timers. */
  #drop(code) {
    this.#clearTimers();
    const ws = this.#ws;
    this.#ws = null;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = null;
    try {
      ws.close(code);
    } catch {
      // already closing: nothing left to do
    }
  }

  #clearTimers() {
    clearTimeout(this.#heartbeatTimer);
    clearTimeout(this.#reconnectTimer);
    this.#heartbeatTimer = this.#reconnectTimer = null;
  }

  #send(frame) {
    if (this.#ws?.readyState === 1) this.#ws.send(frame);
  }

  #setState(state, detail = {}) {
    this.state = state;
    this.#opts.onState?.(state, detail);
  }

  #log(line) {
    this.#opts.onLog?.(line);
  }
}
