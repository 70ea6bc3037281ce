// When the Lifeline browser client tries again after a connection ends:
// the server's retry-ms when its bye gave one, otherwise exponential backoff
// with full jitter over the attempts that failed since the last welcome.

/**
 * Exponential backoff with full jitter: a uniform delay in
 * [0, min(cap, base * 2^attempt)), so a crowd of clients dropped at once
 * does not come back at once.
 */
export function backoffDelay(attempt, base, cap, random = Math.random) {
  const ceiling = Math.min(cap, base * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

/** The reconnect schedule: the failure count, and the one timer of the next attempt. */
export class Reconnect {
  #baseMs;
  #capMs;
  /** Failed connection attempts since the last welcome: the backoff exponent. */
  #attempt = 0;
  #timer = null;
  #dueAt = 0;

  constructor(baseMs, capMs) {
    this.#baseMs = baseMs;
    this.#capMs = capMs;
  }

  /** A start, a welcome or the network back: earlier failures say nothing about the next attempt. */
  reset() {
    this.#attempt = 0;
  }

  /**
   * Calls `connect` after the wait that `ending` ({ retryMs? }) earns, and
   * returns that wait in ms. The server's retry-ms is already a per-client
   * spread, so it replaces the jitter; the attempt still counts as failed.
   */
  schedule(ending, connect) {
    const delay = ending.retryMs ?? backoffDelay(this.#attempt, this.#baseMs, this.#capMs);
    this.#attempt += 1;
    this.#dueAt = performance.now() + delay;
    this.#timer = setTimeout(connect, delay);
    return delay;
  }

  /**
   * True when an attempt is scheduled and its time has passed: a hidden page's
   * timers are throttled or frozen, so a page made visible again checks.
   */
  isOverdue() {
    return this.#timer !== null && performance.now() >= this.#dueAt;
  }

  cancel() {
    clearTimeout(this.#timer);
    this.#timer = null;
  }
}
