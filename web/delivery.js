// How the Lifeline browser client hands messages to the app and acks them
// once the app has handled them: the `message` event with waitUntil(), and
// the message ids it remembers, so that a redelivery is not handled twice and
// an ack made between connections still reaches the server.

import { LifelineError } from './errors.js';

/**
 * How many recent message ids are remembered to drop redeliveries. A
 * redelivery follows its original within a reconnect or two, far inside the
 * last thousand messages; the bound keeps a page that lives for days small.
 */
const RECENT_MESSAGE_IDS = 1000;

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

/**
 * Dispatches `message` on `target` as a LifelineMessageEvent; returns the
 * promises its listeners handed to waitUntil() (none: handled when this returns).
 */
export function dispatchMessage(target, message) {
  const event = new LifelineMessageEvent(message);
  const waits = [];
  waitsOfDispatch.set(event, waits);
  try {
    target.dispatchEvent(event);
  } finally {
    waitsOfDispatch.delete(event);
  }
  return waits;
}

/** The acks side of delivery: recent message ids and what became of them, and acks held for the next welcome. */
export class Acks {
  /** Recent message id -> 'handling' (dispatched, not acked yet) or 'acked'. */
  #recent = new Map();
  /** Acks made while not online, written after the next welcome (the server takes an ack on any connection). */
  #held = new Set();

  /**
   * A message with id `id` arrived: 'new' (hand it to the app), 'acked-before'
   * (processed already: the redelivery means our ack may have been lost with
   * a connection, so confirm it again) or 'handling' (the first copy's ack is
   * still to come: drop this one).
   */
  arrived(id) {
    const seen = this.#recent.get(id);
    if (seen === 'acked') return 'acked-before';
    if (seen === 'handling') return 'handling';
    this.#remember(id, 'handling');
    return 'new';
  }

  acked(id) {
    this.#remember(id, 'acked');
  }

  /** The app failed to process `id`: forget it, so that a redelivery is handled again. */
  failed(id) {
    if (this.#recent.get(id) === 'handling') this.#recent.delete(id);
  }

  /** Keeps the ack of `id` for the next welcome; the oldest goes past the bound. */
  hold(id) {
    this.#held.add(id);
    if (this.#held.size > RECENT_MESSAGE_IDS) {
      this.#held.delete(this.#held.values().next().value);
    }
  }

  /** The held acks, oldest first, no longer held. */
  takeHeld() {
    const ids = [...this.#held];
    this.#held.clear();
    return ids;
  }

  dropHeld() {
    this.#held.clear();
  }

  #remember(id, status) {
    if (!this.#recent.has(id) && this.#recent.size >= RECENT_MESSAGE_IDS) {
      this.#recent.delete(this.#recent.keys().next().value);
    }
    this.#recent.set(id, status);
  }
}
