package dev.lifeline;

import static org.junit.jupiter.api.Assertions.assertEquals;

import org.junit.jupiter.api.Test;

class RecentIdsTest {
    @Test
    void aRepeatIsDroppedUntilAckedThenAckedAgain() {
        RecentIds ids = new RecentIds(4);
        assertEquals(RecentIds.Arrival.NEW, ids.arrived("push-1"));
        assertEquals(RecentIds.Arrival.PENDING, ids.arrived("push-1"));
        ids.acked("push-1");
        assertEquals(RecentIds.Arrival.ACKED_BEFORE, ids.arrived("push-1"));
    }

    @Test
    void forgetsTheOldestBeyondItsCapacity() {
        RecentIds ids = new RecentIds(4);
        for (int i = 0; i < 5; i++) {
            assertEquals(RecentIds.Arrival.NEW, ids.arrived("m" + i));
        }
        assertEquals(RecentIds.Arrival.NEW, ids.arrived("m0"));
        assertEquals(RecentIds.Arrival.PENDING, ids.arrived("m4"));
    }
}
