// The client side of the Lifeline heartbeat: a ping on the schedule the
// server's welcome gives, the round-trip time of the answered ones, and the
// lost-server rule (`misses` pings in a row with no frame from the server).

/** The floor under the server's heartbeat interval, so a misconfigured server cannot make a page spin. */
const MIN_HEARTBEAT_MS = 100;

/** One per client, restarted by every welcome; ping numbers go on across connections. */
export class Heartbeat {
  #ping;
  #lost;
  #interval = 0;
  #misses = 0;
  #unansweredPings = 0;
  #seq = 0;
  #pingSentAt = 0;
  #timer = null;
  #dueAt = 0;

  /** `ping(seq)` writes a ping; `lost()` is called once the server has been silent too long. */
  constructor({ ping, lost }) {
    this.#ping = ping;
    this.#lost = lost;
  }

  /** The interval of the last welcome, ms (null before one). */
  get interval() {
    return this.#interval > 0 ? this.#interval : null;
  }

  /** A welcome's attributes: its interval and misses, and the first ping after its phase-ms. */
  start(welcome) {
    this.#interval = Math.max(MIN_HEARTBEAT_MS, Number(welcome.interval) || 5000);
    this.#misses = Math.max(1, Number(welcome.misses) || 5);
    // v1.1: the server spreads heartbeat phases; without phase-ms, a full interval.
    const phase = welcome['phase-ms'] == null ? NaN : Number(welcome['phase-ms']);
    this.#schedule(Number.isFinite(phase) && phase >= 0 ? Math.min(phase, this.#interval) : this.#interval);
  }

  /** A frame came: any frame proves the server is alive, not only the pong to our ping. */
  heard() {
    this.#unansweredPings = 0;
  }

  /** The round-trip time in ms when pong `seq` answers the last ping; null otherwise. */
  answered(seq) {
    return seq === String(this.#seq) ? performance.now() - this.#pingSentAt : null;
  }

  /**
   * A page made visible again: its throttled or frozen timer may be overdue,
   * and then the beat runs now. A hidden tab gets no other timer of ours.
   */
  catchUp() {
    if (this.#timer !== null && performance.now() >= this.#dueAt) this.#beat();
  }

  stop() {
    clearTimeout(this.#timer);
    this.#timer = null;
  }

  #schedule(delay) {
    clearTimeout(this.#timer);
    this.#dueAt = performance.now() + delay;
    this.#timer = setTimeout(() => this.#beat(), Math.max(0, delay));
  }

  #beat() {
    if (this.#unansweredPings >= this.#misses) {
      this.#lost();
      return;
    }
    this.#seq += 1;
    this.#unansweredPings += 1;
    this.#pingSentAt = performance.now();
    this.#ping(this.#seq);
    this.#schedule(this.#interval);
  }
}
