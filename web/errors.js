// The error type of the Lifeline browser client.

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
