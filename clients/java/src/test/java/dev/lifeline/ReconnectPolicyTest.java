package dev.lifeline;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.util.Random;
import org.junit.jupiter.api.Test;

class ReconnectPolicyTest {
    /** Jitter that always draws the top of the window, so each delay shows the ceiling it was drawn under. */
    private static final class Highest extends Random {
        private static final long serialVersionUID = 1L;

        @Override
        public double nextDouble() {
            return Math.nextDown(1.0);
        }
    }

    private static ReconnectPolicy policy() {
        return new ReconnectPolicy(new Backoff(100, 1000, new Highest()));
    }

    @Test
    void failedAttemptsDoubleTheWindowUpToTheCap() {
        ReconnectPolicy reconnect = policy();
        Ending failed = Ending.retry("connect-failed", false);
        assertEquals(200, reconnect.delayAfter(failed));
        assertEquals(400, reconnect.delayAfter(failed));
        assertEquals(800, reconnect.delayAfter(failed));
        assertEquals(1000, reconnect.delayAfter(failed));
        assertEquals(1000, reconnect.delayAfter(failed));
    }

    @Test
    void aWelcomedConnectionStartsTheCountAgain() {
        ReconnectPolicy reconnect = policy();
        reconnect.delayAfter(Ending.retry("connect-failed", false));
        reconnect.delayAfter(Ending.retry("connect-failed", false));
        assertEquals(100, reconnect.delayAfter(Ending.retry("lost", true)));
        assertEquals(200, reconnect.delayAfter(Ending.retry("connect-failed", false)));
    }

    @Test
    void retryMsReplacesTheJitterButStillCountsTheFailure() {
        ReconnectPolicy reconnect = policy();
        assertEquals(7, reconnect.delayAfter(Ending.retryAfter("shutdown", 7, false)));
        assertEquals(400, reconnect.delayAfter(Ending.retry("connect-failed", false)));
        assertEquals(0, reconnect.delayAfter(Ending.retryAfter("shutdown", 0, true)));
    }

    @Test
    void aNewNetworkForgetsTheOldFailures() {
        ReconnectPolicy reconnect = policy();
        reconnect.delayAfter(Ending.retry("connect-failed", false));
        reconnect.delayAfter(Ending.retry("connect-failed", false));
        reconnect.reset();
        assertEquals(200, reconnect.delayAfter(Ending.retry("connect-failed", false)));
    }
}
