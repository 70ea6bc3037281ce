package dev.lifeline;

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.function.Predicate;

/** A listener that records every callback with its time, and waits for the ones a test expects. */
final class Recorder implements LifelineClient.Listener {
    /** One callback. Fields a kind does not use are null. */
    static final class Event {
        final long at = System.nanoTime();
        final String thread = Thread.currentThread().getName();
        final String kind;
        final LifelineClient.State state;
        final String reason;
        final String from;
        final String id;
        final String text;
        final String code;

        Event(String kind, LifelineClient.State state, String reason, String from, String id, String text, String code) {
            this.kind = kind;
            this.state = state;
            this.reason = reason;
            this.from = from;
            this.id = id;
            this.text = text;
            this.code = code;
        }

        @Override
        public String toString() {
            switch (kind) {
                case "state": return state + (reason == null ? "" : "(" + reason + ")");
                case "message": return "message " + from + "/" + id + ": " + text;
                default: return "error " + code + " ref=" + id + ": " + text;
            }
        }
    }

    private final List<Event> events = new ArrayList<>();

    @Override
    public synchronized void onState(LifelineClient.State state, String reason) {
        add(new Event("state", state, reason, null, null, null, null));
    }

    @Override
    public synchronized void onMessage(String from, String id, String text) {
        add(new Event("message", null, null, from, id, text, null));
    }

    @Override
    public synchronized void onError(String code, String ref, String text) {
        add(new Event("error", null, null, null, ref, text, code));
    }

    private void add(Event event) {
        events.add(event);
        notifyAll();
    }

    /** The number of events so far: a later wait can look only at what comes after. */
    synchronized int mark() {
        return events.size();
    }

    synchronized List<Event> events() {
        return new ArrayList<>(events);
    }

    /**
     * The first event at index {@code from} or later that {@code match}es,
     * waiting up to {@code timeoutMillis}; fails with every event seen otherwise.
     */
    synchronized Event await(String what, int from, long timeoutMillis, Predicate<Event> match)
            throws InterruptedException {
        long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(timeoutMillis);
        int next = from;
        while (true) {
            for (; next < events.size(); next++) {
                if (match.test(events.get(next))) {
                    return events.get(next);
                }
            }
            long remaining = deadline - System.nanoTime();
            if (remaining <= 0) {
                throw new AssertionError("waited " + timeoutMillis + " ms for " + what + "; events: " + events);
            }
            TimeUnit.NANOSECONDS.timedWait(this, remaining);
        }
    }

    Event awaitState(LifelineClient.State state, int from, long timeoutMillis) throws InterruptedException {
        return await(state.toString(), from, timeoutMillis, e -> e.state == state);
    }

    Event awaitMessage(String id, int from, long timeoutMillis) throws InterruptedException {
        return await("message " + id, from, timeoutMillis, e -> e.kind.equals("message") && id.equals(e.id));
    }

    Event awaitError(String code, int from, long timeoutMillis) throws InterruptedException {
        return await("error " + code, from, timeoutMillis, e -> e.kind.equals("error") && code.equals(e.code));
    }

    synchronized long count(Predicate<Event> match) {
        return events.stream().filter(match).count();
    }
}
