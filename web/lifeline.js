// Lifeline browser client: the XML frame protocol (PROTOCOL.md) over a
// WebSocket with the subprotocol lifeline.v1. It logs in, heartbeats on the
// schedule the server's <welcome> gives, declares the server lost after
// `misses` unanswered pings, and reconnects with exponential backoff and full
// jitter (or after the server's retry-ms). Sends made between connections wait
// in a bounded queue; received messages are acked once the app has handled
// them, and a redelivered message is not handed to the app twice.
//
// One self-contained ES module with no imports and no build step: the server
// embeds this very file and serves it as GET /lifeline.js, and npm users get
// the same file (types in lifeline.d.ts). Nothing browser-only is touched
// before start(), so it also runs in Node >= 20 (WebSocket from
// --experimental-websocket, or any WebSocket class passed in the options).

export const SUBPROTOCOL = 'lifeline.v1';

/** `bye` reasons after which the client does not reconnect by itself (PROTOCOL.md v1.1). */
const TERMINAL_BYE = new Set(['replaced', 'kicked']);
/** Errors the server closes on, which a retry with the same login would only repeat. */
const TERMINAL_ERROR = new Set(['auth-failed', 'bad-id']);

/**
 * How many recent message ids are remembered to drop redeliveries. A
 * redelivery follows its original within a reconnect or two, far inside the
 * last thousand messages; the bound keeps a page that lives for days small.
 */
const RECENT_MESSAGE_IDS = 1000;

/** The floor under the server's heartbeat interval, so a misconfigured server cannot make a page spin. */
const MIN_HEARTBEAT_MS = 100;

/**
 * How long a connection may take from the socket's creation to the welcome
 * by default. A frozen or black-holed server can leave a handshake pending
 * for minutes; past this the attempt counts as failed and backoff goes on.
 */
const CONNECT_TIMEOUT_MS = 20000;

/** WebSocket.OPEN, named here because a substitute WebSocket class need not carry the static. */
const OPEN = 1;

/** The id alphabet of PROTOCOL.md: a `to` or message id outside it makes the server close with bad-frame. */
const CLIENT_ID = /^[A-Za-z0-9_.:@-]{1,64}$/;
const MESSAGE_ID = /^[A-Za-z0-9_.:@-]{1,128}$/;
/** Characters XML 1.0 cannot carry even escaped; the server closes on them with bad-frame. */
const NOT_XML_CHAR = /[\u0000-\u0008\u000B\u000C\u000E-\u001F\uFFFE\uFFFF]/;

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
  /** `exp` (Unix seconds) and `interval` (ms) are protocol 1.2; each only when given. */
  login: (id, token, exp = null, interval = null) =>
    `<login${attr('id', id)}${attr('token', token || null)}${attr('exp', exp)}${attr('interval', interval)}/>`,
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

/**
 * Thrown by send() (code `queue-full` or `stopped`), and the reason start()
 * rejects (code `stopped`, with `reason` saying why: `replaced`, `kicked`,
 * `auth-failed`, `bad-id` or `stop`).
 */
export class LifelineError extends Error {
  constructor(code, message, reason = null) {
    super(message);
    this.name = 'LifelineError';
    this.code = code;
    this.reason = reason;
  }
}

/**
 * The promises handed to waitUntil() by the listeners of a `message` event,
 * kept only while that event is being dispatched: afterwards the ack decision
 * is taken and a late waitUntil() could no longer change it.
 */
const waitsOfDispatch = new WeakMap();

/** The `message` event: `detail` is `{ from, id, text }`; `waitUntil()` holds the ack back. */
export class LifelineMessageEvent extends CustomEvent {
  constructor(detail) {
    super('message', { detail });
  }

  /**
   * Acks the message only once `promise` resolves (with autoAck); if it
   * rejects, the message is not acked and a redelivery is handed over again.
   * Call it synchronously inside the listener.
   */
  waitUntil(promise) {
    const waits = waitsOfDispatch.get(this);
    if (!waits) {
      throw new LifelineError(
        'invalid-state',
        'lifeline: waitUntil() must be called synchronously inside the message listener',
      );
    }
    waits.push(Promise.resolve(promise));
  }
}

function defaultUrl() {
  const loc = globalThis.location;
  if (!loc) throw new TypeError('lifeline: options.url is required outside a page (ws://host:port/)');
  return `${loc.protocol === 'https:' ? 'wss' : 'ws'}://${loc.host}/`;
}

function positiveNumber(name, value) {
  if (typeof value !== 'number' || !(value > 0) || !Number.isFinite(value)) {
    throw new TypeError(`lifeline: options.${name} must be a positive number of ms, not ${value}`);
  }
  return value;
}

/** Unique enough across tabs and devices: a random per-client prefix and a counter. */
function messageIdPrefix() {
  return `m${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}.`;
}

/**
 * A client that stays connected. States: `idle` (before the first start()),
 * `connecting` (socket opening or login sent), `online` (welcomed), `waiting`
 * (before a reconnect, or until the network is back), `stopped` (by stop(),
 * a terminal bye or a refused login; start() again to connect anew).
 *
 * Events: `state` ({ state, reason?, delay? }), `message` ({ from, id, text },
 * a LifelineMessageEvent), `error` ({ code, ref, text }), `heartbeat` ({ rtt }).
 */
export class LifelineClient extends EventTarget {
  #url;
  #id;
  #token;
  #exp;
  /** The heartbeat interval asked for at login (ms), or null for the server's. */
  #askedInterval;
  #autoAck;
  #maxQueued;
  #backoffBaseMs;
  #backoffCapMs;
  #connectTimeoutMs;
  #WebSocket;
  /** Where the browser's `online`/`offline` are heard. */
  #window;
  /** Where `visibilitychange` is heard and `visibilityState` read. */
  #document;

  #state = 'idle';
  #rtt = null;
  #reconnects = 0;
  #connections = 0;
  #messageIdPrefix = messageIdPrefix();
  #messageCount = 0;

  #ws = null;
  /** Failed connection attempts since the last welcome: the backoff exponent. */
  #attempt = 0;
  /** What the server said before the connection ended: { reason, retryMs?, terminal? }. */
  #ending = null;
  #networkDown = false;
  #listening = false;
  /** start()'s promise while it waits for 'online': { promise, resolve, reject }. */
  #starting = null;

  #heartbeatTimer = null;
  #heartbeatDueAt = 0;
  #reconnectTimer = null;
  #reconnectDueAt = 0;
  #connectTimer = null;
  #interval = 0;
  #misses = 0;
  #unansweredPings = 0;
  #seq = 0;
  #pingSentAt = 0;

  /** `<msg>` frames sent while not online, in order, written after the next welcome. */
  #queue = [];
  /** Acks made while not online, written after the next welcome (the server takes an ack on any connection). */
  #pendingAcks = new Set();
  /** Recent message id -> 'handling' (dispatched, not acked yet) or 'acked'. */
  #recent = new Map();

  #onNetworkUp = () => this.#networkUp();
  #onNetworkDown = () => this.#networkDownNow();
  #onVisibilityChange = () => this.#visibilityChanged();

  constructor(options) {
    super();
    if (options == null || typeof options !== 'object') {
      throw new TypeError('lifeline: new LifelineClient({ url, id, token }) needs an options object');
    }
    const {
      url = defaultUrl(),
      id,
      token = null,
      exp = null,
      interval = null,
      autoAck = true,
      maxQueued = 100,
      backoffBaseMs = 500,
      backoffCapMs = 30000,
      connectTimeoutMs = CONNECT_TIMEOUT_MS,
      WebSocket: WebSocketClass = globalThis.WebSocket,
      window: windowTarget = globalThis,
      document: documentTarget = globalThis.document,
    } = options;
    if (typeof id !== 'string' || id === '') {
      throw new TypeError('lifeline: options.id must be a non-empty string (the login id)');
    }
    let parsed;
    try {
      parsed = new URL(url);
    } catch {
      throw new TypeError(`lifeline: options.url is not a URL: ${url}`);
    }
    if (parsed.protocol !== 'ws:' && parsed.protocol !== 'wss:') {
      throw new TypeError(`lifeline: options.url must be ws:// or wss://, not ${url}`);
    }
    if (exp !== null && !(Number.isSafeInteger(exp) && exp >= 0)) {
      throw new TypeError(`lifeline: options.exp must be null or whole Unix seconds, not ${exp}`);
    }
    if (interval !== null && !(Number.isSafeInteger(interval) && interval > 0)) {
      throw new TypeError(`lifeline: options.interval must be null or a whole number of ms > 0, not ${interval}`);
    }
    if (!Number.isInteger(maxQueued) || maxQueued < 0) {
      throw new TypeError(`lifeline: options.maxQueued must be a whole number >= 0, not ${maxQueued}`);
    }
    if (typeof WebSocketClass !== 'function') {
      throw new TypeError(
        'lifeline: no WebSocket here: run Node 20 with --experimental-websocket, or pass options.WebSocket',
      );
    }
    this.#url = String(url);
    this.#id = id;
    this.#token = token;
    this.#exp = exp;
    this.#askedInterval = interval;
    this.#autoAck = Boolean(autoAck);
    this.#maxQueued = maxQueued;
    this.#backoffBaseMs = positiveNumber('backoffBaseMs', backoffBaseMs);
    this.#backoffCapMs = positiveNumber('backoffCapMs', backoffCapMs);
    this.#connectTimeoutMs = positiveNumber('connectTimeoutMs', connectTimeoutMs);
    this.#WebSocket = WebSocketClass;
    this.#window = windowTarget;
    this.#document = documentTarget;
  }

  /** 'idle' | 'connecting' | 'online' | 'waiting' | 'stopped'. */
  get state() {
    return this.#state;
  }

  /** Round-trip time of the last answered heartbeat, ms (null before one). */
  get rtt() {
    return this.#rtt;
  }

  /** Connections opened after the first one. */
  get reconnects() {
    return this.#reconnects;
  }

  /** The heartbeat interval the server granted in its last welcome, ms (null before one). */
  get interval() {
    return this.#interval > 0 ? this.#interval : null;
  }

  /**
   * Connects (or connects anew after a stop), and follows the browser's
   * network and visibility. Resolves on the first 'online'; rejects with a
   * LifelineError if the client stops for good before that.
   */
  start() {
    if (this.#state === 'online') return Promise.resolve();
    if (!this.#starting) {
      let resolve;
      let reject;
      const promise = new Promise((res, rej) => {
        resolve = res;
        reject = rej;
      });
      this.#starting = { promise, resolve, reject };
    }
    const { promise } = this.#starting;
    if (this.#state === 'idle' || this.#state === 'stopped') this.#begin();
    return promise;
  }

  /** For good: says bye, closes, drops the queued sends; no reconnect until start(). */
  stop() {
    if (this.#state === 'stopped') return;
    if (this.#state === 'online') this.#write(frames.bye());
    this.#finish('stop');
  }

  /**
   * Sends `text` to client `to` and returns the message id. Online it goes
   * out at once; otherwise it waits (at most maxQueued) and goes out, in
   * order, right after the next welcome. A recipient that is not online comes
   * back as an `error` event with code 'offline' and ref = this id.
   */
  send(to, text) {
    if (typeof to !== 'string' || !CLIENT_ID.test(to)) {
      throw new TypeError(`lifeline: send() needs a client id of 1-64 [A-Za-z0-9_.:@-], not ${to}`);
    }
    const body = String(text);
    if (NOT_XML_CHAR.test(body) || (body.isWellFormed && !body.isWellFormed())) {
      throw new TypeError('lifeline: send() text holds a control character or lone surrogate XML cannot carry');
    }
    if (this.#state === 'stopped') {
      throw new LifelineError('stopped', 'lifeline: cannot send: the client is stopped (start() it again first)');
    }
    this.#messageCount += 1;
    const id = `${this.#messageIdPrefix}${this.#messageCount}`;
    const frame = frames.msg(to, body, id);
    if (this.#state === 'online' && this.#write(frame)) return id;
    if (this.#queue.length >= this.#maxQueued) {
      throw new LifelineError(
        'queue-full',
        `lifeline: cannot send while ${this.#state}: ${this.#maxQueued} messages are already queued (maxQueued)`,
      );
    }
    this.#queue.push(frame);
    return id;
  }

  /**
   * Confirms that message `id` was processed. Needed only with autoAck: false.
   * Not online, the ack waits for the next welcome; stopped, it is dropped.
   */
  ack(id) {
    if (typeof id !== 'string' || !MESSAGE_ID.test(id)) {
      throw new TypeError(`lifeline: ack() needs a message id of 1-128 [A-Za-z0-9_.:@-], not ${id}`);
    }
    this.#remember(id, 'acked');
    if (this.#state === 'stopped' || this.#state === 'idle') return;
    if (this.#state === 'online' && this.#write(frames.ack(id))) return;
    this.#pendingAcks.add(id);
    if (this.#pendingAcks.size > RECENT_MESSAGE_IDS) {
      this.#pendingAcks.delete(this.#pendingAcks.values().next().value);
    }
  }

  #begin() {
    this.#attempt = 0;
    this.#listen(true);
    // A page that loads offline waits for the 'online' event instead of failing attempts.
    if (globalThis.navigator?.onLine === false) {
      this.#networkDown = true;
      this.#setState('waiting', { reason: 'offline' });
    } else {
      this.#connect();
    }
  }

  #connect() {
    this.#clearTimers();
    this.#ending = null;
    if (this.#connections > 0) this.#reconnects += 1;
    this.#connections += 1;
    this.#setState('connecting');
    if (this.#state !== 'connecting') return; // a state listener stopped the client
    let ws;
    try {
      ws = new this.#WebSocket(this.#url, SUBPROTOCOL);
    } catch (err) {
      // e.g. a Content-Security-Policy refusal: retrying with backoff is all a client can do.
      this.#ending = { reason: 'connect-failed' };
      this.#emitError({ code: 'connect-failed', ref: null, text: String(err?.message ?? err) });
      if (this.#state === 'connecting') this.#lost('connect-failed');
      return;
    }
    this.#ws = ws;
    this.#connectTimer = setTimeout(() => this.#lost('connect-timeout'), this.#connectTimeoutMs);
    ws.onopen = () => this.#write(frames.login(this.#id, this.#token, this.#exp, this.#askedInterval));
    ws.onmessage = (event) => this.#receive(event.data);
    // An error always ends a WebSocket, and Node 20's never follows a refused
    // connection with a close event: either one means this socket is done.
    ws.onerror = ws.onclose = () => {
      if (this.#ws === ws) this.#lost('closed');
    };
  }

  #receive(data) {
    if (typeof data !== 'string') return; // the server only sends text messages
    let frame;
    try {
      frame = parseFrame(data);
    } catch (err) {
      this.#emitError({ code: 'unreadable-frame', ref: null, text: `${err.message}: ${data.slice(0, 200)}` });
      return;
    }
    // Any frame proves the server is alive, not only the pong to our ping.
    this.#unansweredPings = 0;
    const a = frame.attrs;
    switch (frame.name) {
      case 'welcome':
        this.#welcomed(a);
        break;
      case 'heartbeat':
        if (a.mode === 'ping') {
          this.#write(frames.pong(a.seq ?? null));
        } else if (a.mode === 'pong' && a.seq === String(this.#seq)) {
          this.#rtt = performance.now() - this.#pingSentAt;
          this.dispatchEvent(new CustomEvent('heartbeat', { detail: { rtt: this.#rtt } }));
        }
        break;
      case 'msg':
        this.#deliver({ from: a.from ?? null, id: a.id ?? null, text: frame.text });
        break;
      case 'bye': {
        const retryMs = a['retry-ms'] == null ? null : Number(a['retry-ms']);
        this.#ending = {
          reason: a.reason ?? 'bye',
          retryMs: Number.isFinite(retryMs) && retryMs >= 0 ? retryMs : null,
          terminal: TERMINAL_BYE.has(a.reason),
        };
        break;
      }
      case 'error':
        if (TERMINAL_ERROR.has(a.code)) this.#ending = { reason: a.code, terminal: true };
        this.#emitError({ code: a.code ?? null, ref: a.ref ?? null, text: frame.text });
        break;
      default:
        // A frame of a later protocol version: nothing this client has to do.
        break;
    }
  }

  #welcomed(a) {
    clearTimeout(this.#connectTimer);
    this.#connectTimer = null;
    this.#attempt = 0;
    this.#interval = Math.max(MIN_HEARTBEAT_MS, Number(a.interval) || 5000);
    this.#misses = Math.max(1, Number(a.misses) || 5);
    // v1.1: the server spreads heartbeat phases; without phase-ms, a full interval.
    const phase = a['phase-ms'] == null ? NaN : Number(a['phase-ms']);
    this.#scheduleHeartbeat(Number.isFinite(phase) && phase >= 0 ? Math.min(phase, this.#interval) : this.#interval);
    // Online before the 'online' event, so a listener's send() goes out at
    // once, after everything that waited for this welcome.
    this.#state = 'online';
    for (const id of this.#pendingAcks) this.#write(frames.ack(id));
    this.#pendingAcks.clear();
    const queued = this.#queue;
    this.#queue = [];
    for (const frame of queued) this.#write(frame);
    const starting = this.#starting;
    this.#starting = null;
    this.#setState('online');
    starting?.resolve();
  }

  /**
   * Hands a message to the `message` listeners, then acks it (with autoAck)
   * once they and every promise given to waitUntil() are done. A message id
   * seen before is not dispatched again.
   */
  #deliver(message) {
    const { id } = message;
    if (id !== null) {
      const seen = this.#recent.get(id);
      // Already processed: the redelivery means our ack may have been lost
      // with a connection, so confirm it again instead of processing twice.
      if (seen === 'acked') {
        this.#write(frames.ack(id));
        return;
      }
      if (seen === 'handling') return; // the first copy's ack is still to come
      this.#remember(id, 'handling');
    }
    const event = new LifelineMessageEvent(message);
    const waits = [];
    waitsOfDispatch.set(event, waits);
    try {
      this.dispatchEvent(event);
    } finally {
      waitsOfDispatch.delete(event);
    }
    if (waits.length === 0) {
      if (this.#autoAck && id !== null) this.ack(id);
      return;
    }
    Promise.all(waits).then(
      () => {
        if (this.#autoAck && id !== null) this.ack(id);
      },
      (reason) => {
        // Not processed: forget the id so that a redelivery is handled again.
        if (id !== null && this.#recent.get(id) === 'handling') this.#recent.delete(id);
        this.#emitError({ code: 'handler-failed', ref: id, text: String(reason?.message ?? reason) });
      },
    );
  }

  #remember(id, status) {
    if (!this.#recent.has(id) && this.#recent.size >= RECENT_MESSAGE_IDS) {
      this.#recent.delete(this.#recent.keys().next().value);
    }
    this.#recent.set(id, status);
  }

  #scheduleHeartbeat(delay) {
    clearTimeout(this.#heartbeatTimer);
    this.#heartbeatDueAt = performance.now() + delay;
    this.#heartbeatTimer = setTimeout(() => this.#heartbeat(), Math.max(0, delay));
  }

  #heartbeat() {
    if (this.#unansweredPings >= this.#misses) {
      this.#lost('timeout');
      return;
    }
    this.#seq += 1;
    this.#unansweredPings += 1;
    this.#pingSentAt = performance.now();
    this.#write(frames.ping(this.#seq));
    this.#scheduleHeartbeat(this.#interval);
  }

  /** The connection is gone (closed, or the server went silent): decide what next. */
  #lost(why) {
    const ending = this.#ending ?? { reason: why };
    this.#drop();
    if (ending.terminal) {
      this.#finish(ending.reason);
      return;
    }
    if (this.#networkDown) {
      this.#setState('waiting', { reason: 'offline' }); // the 'online' event reconnects
      return;
    }
    const delay = ending.retryMs ?? backoffDelay(this.#attempt, this.#backoffBaseMs, this.#backoffCapMs);
    this.#attempt += 1;
    this.#reconnectDueAt = performance.now() + delay;
    this.#reconnectTimer = setTimeout(() => this.#connect(), delay);
    this.#setState('waiting', { reason: ending.reason, delay });
  }

  /** Stopped for good: no socket, no timers, no queue, no listeners on the page. */
  #finish(reason) {
    this.#listen(false);
    this.#drop();
    this.#queue = [];
    this.#pendingAcks.clear();
    this.#networkDown = false;
    const starting = this.#starting;
    this.#starting = null;
    this.#setState('stopped', { reason });
    starting?.reject(new LifelineError('stopped', `lifeline: stopped before coming online: ${reason}`, reason));
  }

  #networkDownNow() {
    this.#networkDown = true;
    if (this.#state === 'stopped' || this.#state === 'idle') return;
    // Attempts cannot succeed offline; wait for 'online' rather than burn backoff.
    this.#drop();
    this.#setState('waiting', { reason: 'offline' });
  }

  #networkUp() {
    this.#networkDown = false;
    if (this.#state !== 'waiting') return;
    // The network is back: reconnect at once, not after a backoff earned while it was down.
    this.#attempt = 0;
    this.#connect();
  }

  /**
   * A hidden tab gets no timer of ours beyond the heartbeat (and a pending
   * reconnect). Browsers throttle or freeze those timers in hidden and frozen
   * pages, so when the page is visible again one that is overdue runs now.
   */
  #visibilityChanged() {
    if (this.#document?.visibilityState !== 'visible') return;
    const now = performance.now();
    if (this.#state === 'online' && this.#heartbeatTimer !== null && now >= this.#heartbeatDueAt) {
      this.#heartbeat();
    } else if (this.#state === 'waiting' && this.#reconnectTimer !== null && now >= this.#reconnectDueAt) {
      this.#connect();
    }
  }

  #listen(on) {
    if (on === this.#listening) return;
    this.#listening = on;
    const method = on ? 'addEventListener' : 'removeEventListener';
    if (typeof this.#window?.[method] === 'function') {
      this.#window[method]('online', this.#onNetworkUp);
      this.#window[method]('offline', this.#onNetworkDown);
    }
    if (typeof this.#document?.[method] === 'function') {
      this.#document[method]('visibilitychange', this.#onVisibilityChange);
    }
  }

  /** Closes the socket without hearing from it again, and stops the timers. */
  #drop() {
    this.#clearTimers();
    const ws = this.#ws;
    this.#ws = null;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
    try {
      // Only 1000 and 3000-4999 are codes a browser lets a page send.
      ws.close(1000);
    } catch {
      // already closing: nothing left to do
    }
  }

  #clearTimers() {
    clearTimeout(this.#heartbeatTimer);
    clearTimeout(this.#reconnectTimer);
    clearTimeout(this.#connectTimer);
    this.#heartbeatTimer = this.#reconnectTimer = this.#connectTimer = null;
  }

  /** Writes a frame if the socket is open; false when it is not. */
  #write(frame) {
    if (this.#ws?.readyState !== OPEN) return false;
    this.#ws.send(frame);
    return true;
  }

  #setState(state, detail = {}) {
    this.#state = state;
    this.dispatchEvent(new CustomEvent('state', { detail: { state, ...detail } }));
  }

  #emitError(detail) {
    this.dispatchEvent(new CustomEvent('error', { detail }));
  }
}
