package dev.lifeline;

/**
 * How long the client's thread waits before its next attempt: the server's
 * {@code retry-ms} when its bye gave one, otherwise the {@link Backoff} for the
 * attempts that failed since the last welcome.
 */
final class ReconnectPolicy {
    private final Backoff backoff;
    /** Attempts that failed since the last welcome. */
    private int failures;

    ReconnectPolicy(Backoff backoff) {
        this.backoff = backoff;
    }

    /** A new network: the old one's failures say nothing about it. */
    void reset() {
        failures = 0;
    }

    /** The delay before the attempt after {@code ending}, in ms. */
    long delayAfter(Ending ending) {
        failures = ending.wasOnline ? 0 : failures + 1;
        // The server's retry-ms is already a per-client random spread, so it
        // replaces the jitter for this one attempt; later failures back off.
        return ending.retryMillis >= 0 ? ending.retryMillis : backoff.delayMillis(failures);
    }
}
