// Waiting in tests: every wait is for a condition and has a deadline, so a
// slow machine only makes a test slower and a broken one fails with a message
// that says what never happened.
import { setTimeout as delay } from 'node:timers/promises';

/** How often a polled condition is checked. */
const POLL_MS = 5;

/**
 * Polls `check` (sync or async) until it returns something other than
 * undefined/false, and returns that; throws after `timeoutMs` naming `what`.
 */
export async function waitFor(check, what, timeoutMs = 5000) {
  const deadline = performance.now() + timeoutMs;
  let lastError;
  for (;;) {
    try {
      const value = await check();
      if (value !== undefined && value !== false) return value;
    } catch (err) {
      lastError = err; // e.g. a server still starting: keep polling until the deadline
    }
    if (performance.now() >= deadline) {
      const why = lastError ? ` (last error: ${lastError.message})` : '';
      throw new Error(`waited ${timeoutMs} ms for ${what}${why}`);
    }
    await delay(POLL_MS);
  }
}

/**
 * Resolves with the next `type` event on `target` whose detail satisfies
 * `match`; rejects after `timeoutMs`. Listen before causing the event.
 */
export function nextEvent(target, type, match = () => true, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      target.removeEventListener(type, listener);
      reject(new Error(`waited ${timeoutMs} ms for a '${type}' event`));
    }, timeoutMs);
    function listener(event) {
      if (!match(event.detail)) return;
      clearTimeout(timer);
      target.removeEventListener(type, listener);
      resolve(event);
    }
    target.addEventListener(type, listener);
  });
}

/** Resolves once the client's state is `state` (at once if it already is). */
export function stateReached(client, state, timeoutMs = 5000) {
  if (client.state === state) return Promise.resolve();
  return nextEvent(client, 'state', (d) => d.state === state, timeoutMs).then(() => undefined);
}
