package dev.lifeline;

import java.util.LinkedHashMap;
import java.util.Map;

/**
 * The ids of the last few messages handed to the app, and whether the app has
 * acked each. The server redelivers an unacked push after a reconnect under
 * the same id; the app must see it once, and if it has acked it already, the
 * ack that got lost with the old connection is due again.
 */
final class RecentIds {
    /** What to do with a message that just arrived. */
    enum Arrival {
        /** Not seen recently: deliver it. */
        NEW,
        /** Delivered and acked before: the server missed the ack; send it again. */
        ACKED_BEFORE,
        /** Delivered, not acked yet: the app still has it; drop the copy. */
        PENDING
    }

    private final Map<String, Boolean> ackedById;

    RecentIds(final int capacity) {
        // Insertion order: the oldest delivery is forgotten first.
        this.ackedById = new LinkedHashMap<String, Boolean>(16, 0.75f, false) {
            private static final long serialVersionUID = 1L;

            @Override
            protected boolean removeEldestEntry(Map.Entry<String, Boolean> eldest) {
                return size() > capacity;
            }
        };
    }

    synchronized Arrival arrived(String messageId) {
        Boolean acked = ackedById.get(messageId);
        if (acked == null) {
            ackedById.put(messageId, Boolean.FALSE);
            return Arrival.NEW;
        }
        return acked ? Arrival.ACKED_BEFORE : Arrival.PENDING;
    }

    synchronized void acked(String messageId) {
        ackedById.put(messageId, Boolean.TRUE);
    }
}
