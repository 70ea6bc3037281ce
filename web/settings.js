// What a Lifeline browser client is given, checked up front: the
// constructor's options (with their defaults), and the arguments of send()
// and ack(). Every refusal is a TypeError naming the option and the value.

import { isXmlText } from './xml.js';

/**
 * How long a connection may take from the socket's creation to the welcome
 * by default. A frozen or black-holed server can leave a handshake pending
 * for minutes; past this the attempt counts as failed and backoff goes on.
 */
const CONNECT_TIMEOUT_MS = 20000;

/** The id alphabet of PROTOCOL.md: a `to` or message id outside it makes the server close with bad-frame. */
const CLIENT_ID = /^[A-Za-z0-9_.:@-]{1,64}$/;
const MESSAGE_ID = /^[A-Za-z0-9_.:@-]{1,128}$/;

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

/** The constructor's options, checked and with defaults filled in. */
export function readOptions(options) {
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
  return Object.freeze({
    url: String(url),
    id,
    token,
    exp,
    /** The heartbeat interval asked for at login (ms), or null for the server's. */
    interval,
    autoAck: Boolean(autoAck),
    maxQueued,
    backoffBaseMs: positiveNumber('backoffBaseMs', backoffBaseMs),
    backoffCapMs: positiveNumber('backoffCapMs', backoffCapMs),
    connectTimeoutMs: positiveNumber('connectTimeoutMs', connectTimeoutMs),
    WebSocket: WebSocketClass,
    /** Where the browser's `online`/`offline` are heard. */
    window: windowTarget,
    /** Where `visibilitychange` is heard and `visibilityState` read. */
    document: documentTarget,
  });
}

/** send()'s recipient and text; returns the text as the string that goes out. */
export function checkSend(to, text) {
  if (typeof to !== 'string' || !CLIENT_ID.test(to)) {
    throw new TypeError(`lifeline: send() needs a client id of 1-64 [A-Za-z0-9_.:@-], not ${to}`);
  }
  const body = String(text);
  if (!isXmlText(body)) {
    throw new TypeError('lifeline: send() text holds a control character or lone surrogate XML cannot carry');
  }
  return body;
}

/** ack()'s message id. */
export function checkMessageId(id) {
  if (typeof id !== 'string' || !MESSAGE_ID.test(id)) {
    throw new TypeError(`lifeline: ack() needs a message id of 1-128 [A-Za-z0-9_.:@-], not ${id}`);
  }
}
