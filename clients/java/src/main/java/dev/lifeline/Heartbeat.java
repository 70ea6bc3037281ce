package dev.lifeline;

import java.util.concurrent.TimeUnit;

/**
 * The client side of the heartbeat: when to ping, and when the server counts
 * as lost ({@code last heard + interval × misses}). Times are System.nanoTime().
 */
final class Heartbeat {
    private final long intervalNanos;
    private final long silenceNanos;
    private long nextPing;
    private long lastHeard;
    private long seq;

    Heartbeat(long intervalMillis, long misses, long phaseMillis, long now) {
        this.intervalNanos = TimeUnit.MILLISECONDS.toNanos(intervalMillis);
        this.silenceNanos = TimeUnit.MILLISECONDS.toNanos(intervalMillis * misses);
        this.nextPing = now + TimeUnit.MILLISECONDS.toNanos(phaseMillis);
        this.lastHeard = now;
    }

    long lostAt() {
        return lastHeard + silenceNanos;
    }

    boolean isLost(long now) {
        return now - lostAt() >= 0;
    }

    boolean isPingDue(long now) {
        return now - nextPing >= 0;
    }

    long nextWakeup() {
        return nextPing - lostAt() < 0 ? nextPing : lostAt();
    }

    void heard(long now) {
        lastHeard = now;
    }

    /** Records a ping going out now; returns its sequence number. */
    long pingSent(long now) {
        seq++;
        nextPing += intervalNanos;
        // After a stall (a suspended phone, a starved thread) ping once, not
        // once per missed slot.
        if (nextPing - now <= 0) {
            nextPing = now + intervalNanos;
        }
        return seq;
    }
}
