// Types for lifeline.js, written by hand: the module has no build step, so
// these declarations are the contract TypeScript users compile against.
// web/test/types-check.ts uses every item here under `tsc --strict`.

/** The WebSocket subprotocol offered to the server: 'lifeline.v1'. */
export declare const SUBPROTOCOL: 'lifeline.v1';

/**
 * The client's state. 'idle' only before the first start(); every `state`
 * event carries one of the other four.
 */
export type LifelineState = 'idle' | 'connecting' | 'online' | 'waiting' | 'stopped';

/** Detail of the `state` event. */
export interface LifelineStateDetail {
  state: Exclude<LifelineState, 'idle'>;
  /**
   * Why the client is waiting or stopped: a `bye` reason from the server
   * ('timeout', 'shutdown', 'overload', 'slow-consumer', 'replaced', 'kicked'),
   * a refused login ('auth-failed', 'bad-id'), 'closed' (the socket closed
   * without a word), 'timeout' (no answer to `misses` heartbeats), 'offline'
   * (the browser has no network; no delay, the `online` event reconnects),
   * 'connect-timeout' (no welcome in connectTimeoutMs), 'connect-failed' (no
   * WebSocket could be made), or 'stop' (stop() was called).
   */
  reason?: string;
  /** With 'waiting' (except 'offline'): ms until the next attempt. */
  delay?: number;
}

/** Detail of the `message` event: a `<msg>` from another client or an admin push. */
export interface LifelineMessage {
  /** The sender's id ('admin' for pushes). */
  from: string | null;
  /** The message id, to ack; null when the sender gave none (then nothing is acked). */
  id: string | null;
  /** The text, entity references resolved. */
  text: string;
}

/**
 * Detail of the `error` event: an `<error>` from the server (e.g. 'offline'
 * with ref = the id send() returned, 'auth-failed', 'bad-id'), or one raised
 * here: 'handler-failed' (a waitUntil() promise rejected; ref = the message
 * id, which was not acked), 'unreadable-frame', 'connect-failed'.
 */
export interface LifelineErrorDetail {
  code: string | null;
  ref: string | null;
  text: string;
}

/** Detail of the `heartbeat` event: one of our pings was answered. */
export interface LifelineHeartbeatDetail {
  /** Round-trip time, ms. */
  rtt: number;
}

/** The `message` event. */
export declare class LifelineMessageEvent extends CustomEvent<LifelineMessage> {
  constructor(detail: LifelineMessage);
  /**
   * With autoAck, ack the message only once `promise` resolves; if it
   * rejects, the message is not acked (and an `error` event with code
   * 'handler-failed' follows). Call it synchronously inside the listener;
   * later it throws a LifelineError with code 'invalid-state'.
   */
  waitUntil(promise: PromiseLike<unknown>): void;
}

/** Events of a LifelineClient, by name. */
export interface LifelineClientEventMap {
  state: CustomEvent<LifelineStateDetail>;
  message: LifelineMessageEvent;
  error: CustomEvent<LifelineErrorDetail>;
  heartbeat: CustomEvent<LifelineHeartbeatDetail>;
}

/** The parts of a WebSocket the client uses, for options.WebSocket. */
export interface LifelineSocket {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
}

/** A WebSocket class: `new (url, protocol)`. */
export type LifelineSocketClass = new (url: string, protocol: string) => LifelineSocket;

/** Something events can be listened to on (a window, a document, an EventTarget). */
export interface LifelineEventSource {
  addEventListener(type: string, listener: () => void): void;
  removeEventListener(type: string, listener: () => void): void;
}

export interface LifelineClientOptions {
  /** ws:// or wss:// URL of the server. Default in a page: this page's host. */
  url?: string;
  /** The login id: 1-64 of [A-Za-z0-9_.:@-] (the server answers 'bad-id' otherwise). */
  id: string;
  /**
   * Lowercase hex HMAC-SHA256(secret, id), when the server has an auth
   * secret; with `exp`, HMAC-SHA256(secret, id + "|" + exp) (protocol 1.2).
   */
  token?: string | null;
  /** When the token expires, in Unix seconds (protocol 1.2). Default null (a token that does not expire). */
  exp?: number | null;
  /**
   * The heartbeat interval to ask for, ms (protocol 1.2); the server grants
   * one within its range, read it from `interval` once online. Default null
   * (the server's own).
   */
  interval?: number | null;
  /** Ack each message after its listeners (and their waitUntil promises). Default true. */
  autoAck?: boolean;
  /** Sends held while not online; one more throws. Default 100. */
  maxQueued?: number;
  /** Backoff before reconnect attempt n is uniform in [0, min(cap, base * 2^n)). Default 500. */
  backoffBaseMs?: number;
  /** Default 30000. */
  backoffCapMs?: number;
  /** From opening the socket to the welcome; past it the attempt failed ('connect-timeout'). Default 20000. */
  connectTimeoutMs?: number;
  /** The WebSocket class. Default: globalThis.WebSocket (Node 20: --experimental-websocket). */
  WebSocket?: LifelineSocketClass;
  /** Where `online`/`offline` are heard. Default: globalThis (the page's window). */
  window?: LifelineEventSource;
  /** Where `visibilitychange` is heard. Default: globalThis.document. */
  document?: LifelineEventSource & { readonly visibilityState: string };
}

/**
 * Thrown by send() (code 'queue-full', or 'stopped' after stop()), and the
 * reason start() rejects (code 'stopped'; reason 'replaced', 'kicked',
 * 'auth-failed', 'bad-id' or 'stop').
 */
export declare class LifelineError extends Error {
  constructor(code: string, message: string, reason?: string | null);
  readonly code: 'queue-full' | 'stopped' | 'invalid-state' | (string & {});
  readonly reason: string | null;
}

/** A client that stays connected to a Lifeline server. */
export declare class LifelineClient extends EventTarget {
  constructor(options: LifelineClientOptions);

  /** The current state. */
  readonly state: LifelineState;
  /** Round-trip time of the last answered heartbeat, ms (null before one). */
  readonly rtt: number | null;
  /** Connections opened after the first one. */
  readonly reconnects: number;
  /** The heartbeat interval the server granted in its last welcome, ms (null before one). */
  readonly interval: number | null;

  /**
   * Connects (or connects anew after a stop). Resolves on the first 'online';
   * rejects with a LifelineError if the client stops for good first
   * (replaced, kicked, auth-failed, bad-id, or stop()).
   */
  start(): Promise<void>;
  /** For good: 'stopped', no reconnect, queued sends dropped. start() connects anew. */
  stop(): void;
  /**
   * Sends `text` to client `to`; returns the message id. Online: sent at once;
   * otherwise queued (at most maxQueued, then throws) and sent in order after
   * the next welcome. Throws TypeError for a `to` outside the id alphabet or
   * text XML cannot carry.
   */
  send(to: string, text: string): string;
  /** Confirms message `id` was processed (for autoAck: false). */
  ack(id: string): void;

  addEventListener<K extends keyof LifelineClientEventMap>(
    type: K,
    listener: (this: LifelineClient, event: LifelineClientEventMap[K]) => unknown,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof LifelineClientEventMap>(
    type: K,
    listener: (this: LifelineClient, event: LifelineClientEventMap[K]) => unknown,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
}

/** Escapes text for XML content or a quoted attribute value. */
export declare function escapeXml(text: unknown): string;
/** The text of XML content: references resolved, CDATA kept, tags dropped. */
export declare function unescapeXml(raw: string): string;
/** One server frame parsed; throws on text that is not an element. */
export declare function parseFrame(xml: string): {
  name: string;
  attrs: Record<string, string>;
  text: string;
};
/** The client frames of the protocol, escaped. */
export declare const frames: {
  login(id: string, token?: string | null, exp?: number | null, interval?: number | null): string;
  msg(to: string, text: string, id: string): string;
  ack(id: string): string;
  ping(seq: number | string | null): string;
  pong(seq: number | string | null): string;
  bye(): string;
};
/** Full-jitter backoff: uniform in [0, min(cap, base * 2^attempt)). */
export declare function backoffDelay(
  attempt: number,
  base: number,
  cap: number,
  random?: () => number,
): number;
