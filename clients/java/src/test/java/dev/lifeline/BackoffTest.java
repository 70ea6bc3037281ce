package dev.lifeline;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.Random;
import org.junit.jupiter.api.Test;

class BackoffTest {
    @Test
    void ceilingDoublesPerFailureUpToTheCap() {
        Backoff backoff = new Backoff(500, 30_000, new Random(1));
        assertEquals(500, backoff.ceilingMillis(0));
        assertEquals(1000, backoff.ceilingMillis(1));
        assertEquals(16_000, backoff.ceilingMillis(5));
        assertEquals(30_000, backoff.ceilingMillis(6));
        assertEquals(30_000, backoff.ceilingMillis(Integer.MAX_VALUE));
    }

    @Test
    void delaysAreFullJitterOverTheWholeWindow() {
        Backoff backoff = new Backoff(100, 1000, new Random(7));
        long smallest = Long.MAX_VALUE;
        long largest = Long.MIN_VALUE;
        for (int i = 0; i < 2000; i++) {
            long delay = backoff.delayMillis(3);
            assertTrue(delay >= 0 && delay <= 800, "delay " + delay + " outside [0, 800]");
            smallest = Math.min(smallest, delay);
            largest = Math.max(largest, delay);
        }
        // Full jitter: from near zero to near the ceiling, not a fixed step.
        assertTrue(smallest < 40, "smallest delay " + smallest);
        assertTrue(largest > 760, "largest delay " + largest);
    }

    @Test
    void refusesABaseAboveTheCap() {
        assertThrows(IllegalArgumentException.class, () -> new Backoff(2000, 1000, new Random()));
        assertThrows(IllegalArgumentException.class, () -> new Backoff(0, 1000, new Random()));
    }
}
