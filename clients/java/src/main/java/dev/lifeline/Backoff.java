package dev.lifeline;

import java.util.Random;

/**
 * Reconnect delays: exponential backoff with full jitter. The delay after
 * {@code failures} failed attempts is uniform in {@code [0, min(cap, base * 2^failures)]},
 * so a crowd of clients that lost the same server spreads over the whole window
 * instead of coming back in synchronised waves.
 */
final class Backoff {
    private final long baseMillis;
    private final long capMillis;
    private final Random random;

    Backoff(long baseMillis, long capMillis, Random random) {
        if (baseMillis <= 0 || baseMillis > capMillis) {
            throw new IllegalArgumentException("backoff base must be positive and no larger than the cap");
        }
        this.baseMillis = baseMillis;
        this.capMillis = capMillis;
        this.random = random;
    }

    /** The longest delay after {@code failures} failures: {@code min(cap, base * 2^failures)}, without overflow. */
    long ceilingMillis(int failures) {
        long ceiling = baseMillis;
        for (int i = 0; i < failures && ceiling < capMillis; i++) {
            ceiling *= 2; // below cap <= Long.MAX_VALUE / 2 in any sane configuration; clamped next
        }
        return Math.min(ceiling, capMillis);
    }

    /** A random delay in {@code [0, ceilingMillis(failures)]}. */
    long delayMillis(int failures) {
        long ceiling = ceilingMillis(failures);
        return (long) (random.nextDouble() * (ceiling + 1));
    }
}
