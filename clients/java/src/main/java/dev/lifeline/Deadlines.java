package dev.lifeline;

import java.util.concurrent.TimeUnit;

/** Deadlines as System.nanoTime() values, turned into the millisecond waits the JDK's blocking calls take. */
final class Deadlines {
    private Deadlines() {}

    /** The nanoTime {@code millis} from now. */
    static long after(long millis) {
        return System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(millis);
    }

    /** Milliseconds from now until {@code deadline} (nanoTime), rounded up, at least 1 (0 would mean forever). */
    static int millisUntil(long deadline) {
        long remaining = deadline - System.nanoTime();
        return (int) Math.min(Integer.MAX_VALUE, Math.max(1, ceilMillis(remaining)));
    }

    static long ceilMillis(long nanos) {
        return (nanos + 999_999) / 1_000_000;
    }
}
