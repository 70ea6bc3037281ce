// Lifeline browser client: the XML frame protocol (PROTOCOL.md) over a
// WebSocket with the subprotocol lifeline.v1. It logs in, heartbeats on the
// schedule the server's <welcome> gives, declares the server lost after
// `misses` unanswered pings, and reconnects with exponential backoff and full
// jitter (or after the server's retry-ms). Sends made between connections wait
// in a bounded queue; received messages are acked once the app has handled
// them, and a redelivered message is not handed to the app twice.
//
// ES modules with no dependencies and no build step. This one is the entry:
// the public class, and the rest of the API re-exported from its siblings
// (xml.js the frame codec, settings.js the options, heartbeat.js and
// reconnect.js the timers, delivery.js the message event and acks, errors.js
// the error type), which it imports by relative path. The server embeds these
// very files and serves each at /<name> (GET /lifeline.js the entry), and
// npm users get the same files (types in lifeline.d.ts). Nothing browser-only
// is touched before start(), so it also runs in Node >= 20 (WebSocket from
// --experimental-websocket, or any WebSocket class passed in the options).

import { Acks, dispatchMessage } from './delivery.js';
import { LifelineError } from './errors.js';
import { Heartbeat } from './heartbeat.js';
import { Reconnect } from './reconnect.js';
import { checkMessageId, checkSend, readOptions } from './settings.js';
import { frames, parseFrame } from './xml.js';

export { LifelineMessageEvent } from './delivery.js';
export { LifelineError } from './errors.js';
export { backoffDelay } from './reconnect.js';
export { escapeXml, frames, parseFrame, unescapeXml } from './xml.js';

export const SUBPROTOCOL = 'lifeline.v1';

/** `bye` reasons after which the client does not reconnect by itself (PROTOCOL.md v1.1). */
const TERMINAL_BYE = new Set(['replaced', 'kicked']);
/** Errors the server closes on, which a retry with the same login would only repeat. */
const TERMINAL_ERROR = new Set(['auth-failed', 'bad-id']);

/** WebSocket.OPEN, named here because a substitute WebSocket class need not carry the static. */
const OPEN = 1;

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
  /** The checked options (settings.js). */
  #options;

  #state = 'idle';
  #rtt = null;
  #reconnects = 0;
  #connections = 0;
  #messageIdPrefix = messageIdPrefix();
  #messageCount = 0;

  #ws = null;
  /** What the server said before the connection ended: { reason, retryMs?, terminal? }. */
  #ending = null;
  #networkDown = false;
  #listening = false;
  /** start()'s promise while it waits for 'online': { promise, resolve, reject }. */
  #starting = null;

  #heartbeat = new Heartbeat({
    ping: (seq) => this.#write(frames.ping(seq)),
    lost: () => this.#lost('timeout'),
  });
  #reconnect;
  #connectTimer = null;

  /** `<msg>` frames sent while not online, in order, written after the next welcome. */
  #queue = [];
  #acks = new Acks();

  #onNetworkUp = () => this.#networkUp();
  #onNetworkDown = () => this.#networkDownNow();
  #onVisibilityChange = () => this.#visibilityChanged();

  constructor(options) {
    super();
    this.#options = readOptions(options);
    this.#reconnect = new Reconnect(this.#options.backoffBaseMs, this.#options.backoffCapMs);
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
    return this.#heartbeat.interval;
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
    const body = checkSend(to, text);
    if (this.#state === 'stopped') {
      throw new LifelineError('stopped', 'lifeline: cannot send: the client is stopped (start() it again first)');
    }
    this.#messageCount += 1;
    const id = `${this.#messageIdPrefix}${this.#messageCount}`;
    const frame = frames.msg(to, body, id);
    if (this.#state === 'online' && this.#write(frame)) return id;
    const { maxQueued } = this.#options;
    if (this.#queue.length >= maxQueued) {
      throw new LifelineError(
        'queue-full',
        `lifeline: cannot send while ${this.#state}: ${maxQueued} messages are already queued (maxQueued)`,
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
    checkMessageId(id);
    this.#acks.acked(id);
    if (this.#state === 'stopped' || this.#state === 'idle') return;
    if (this.#state === 'online' && this.#write(frames.ack(id))) return;
    this.#acks.hold(id);
  }

  #begin() {
    this.#reconnect.reset();
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
    const { url, id, token, exp, interval, connectTimeoutMs, WebSocket } = this.#options;
    let ws;
    try {
      ws = new WebSocket(url, SUBPROTOCOL);
    } catch (err) {
      // e.g. a Content-Security-Policy refusal: retrying with backoff is all a client can do.
      this.#ending = { reason: 'connect-failed' };
      this.#emitError({ code: 'connect-failed', ref: null, text: String(err?.message ?? err) });
      if (this.#state === 'connecting') this.#lost('connect-failed');
      return;
    }
    this.#ws = ws;
    this.#connectTimer = setTimeout(() => this.#lost('connect-timeout'), connectTimeoutMs);
    ws.onopen = () => this.#write(frames.login(id, token, exp, interval));
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
    this.#heartbeat.heard();
    const a = frame.attrs;
    switch (frame.name) {
      case 'welcome':
        this.#welcomed(a);
        break;
      case 'heartbeat':
        if (a.mode === 'ping') {
          this.#write(frames.pong(a.seq ?? null));
        } else if (a.mode === 'pong') {
          const rtt = this.#heartbeat.answered(a.seq);
          if (rtt !== null) {
            this.#rtt = rtt;
            this.dispatchEvent(new CustomEvent('heartbeat', { detail: { rtt } }));
          }
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
    this.#reconnect.reset();
    this.#heartbeat.start(a);
    // Online before the 'online' event, so a listener's send() goes out at
    // once, after everything that waited for this welcome.
    this.#state = 'online';
    for (const id of this.#acks.takeHeld()) this.#write(frames.ack(id));
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
      const arrival = this.#acks.arrived(id);
      if (arrival === 'acked-before') {
        this.#write(frames.ack(id));
        return;
      }
      if (arrival === 'handling') return;
    }
    const waits = dispatchMessage(this, message);
    const { autoAck } = this.#options;
    if (waits.length === 0) {
      if (autoAck && id !== null) this.ack(id);
      return;
    }
    Promise.all(waits).then(
      () => {
        if (autoAck && id !== null) this.ack(id);
      },
      (reason) => {
        if (id !== null) this.#acks.failed(id);
        this.#emitError({ code: 'handler-failed', ref: id, text: String(reason?.message ?? reason) });
      },
    );
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
    const delay = this.#reconnect.schedule(ending, () => this.#connect());
    this.#setState('waiting', { reason: ending.reason, delay });
  }

  /** Stopped for good: no socket, no timers, no queue, no listeners on the page. */
  #finish(reason) {
    this.#listen(false);
    this.#drop();
    this.#queue = [];
    this.#acks.dropHeld();
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
    this.#reconnect.reset();
    this.#connect();
  }

  /**
   * A hidden tab gets no timer of ours beyond the heartbeat (and a pending
   * reconnect). Browsers throttle or freeze those timers in hidden and frozen
   * pages, so when the page is visible again one that is overdue runs now.
   */
  #visibilityChanged() {
    if (this.#options.document?.visibilityState !== 'visible') return;
    if (this.#state === 'online') {
      this.#heartbeat.catchUp();
    } else if (this.#state === 'waiting' && this.#reconnect.isOverdue()) {
      this.#connect();
    }
  }

  #listen(on) {
    if (on === this.#listening) return;
    this.#listening = on;
    const method = on ? 'addEventListener' : 'removeEventListener';
    const { window, document } = this.#options;
    if (typeof window?.[method] === 'function') {
      window[method]('online', this.#onNetworkUp);
      window[method]('offline', this.#onNetworkDown);
    }
    if (typeof document?.[method] === 'function') {
      document[method]('visibilitychange', this.#onVisibilityChange);
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
    this.#heartbeat.stop();
    this.#reconnect.cancel();
    clearTimeout(this.#connectTimer);
    this.#connectTimer = null;
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
