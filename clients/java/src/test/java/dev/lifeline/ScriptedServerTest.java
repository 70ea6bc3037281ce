package dev.lifeline;

import static dev.lifeline.LifelineClient.State.CONNECTING;
import static dev.lifeline.LifelineClient.State.ONLINE;
import static dev.lifeline.LifelineClient.State.STOPPED;
import static dev.lifeline.LifelineClient.State.WAITING;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * The client against a server the test plays by hand, for what the real
 * server does not do on cue: exact heartbeat timing, a chosen retry-ms, a
 * refused login, redelivery, frames dribbled a byte at a time.
 */
@Timeout(value = 60, unit = TimeUnit.SECONDS)
class ScriptedServerTest {
    static final long WAIT_MILLIS = 5000;

    static LifelineClient.Builder client(FakeServer server, Recorder recorder) {
        return LifelineClient.builder("127.0.0.1", server.port(), "alice").listener(recorder);
    }

    static long millis(long nanos) {
        return TimeUnit.NANOSECONDS.toMillis(nanos);
    }

    @Test
    void pingsAtPhaseThenEveryIntervalAndAnswersProbes() throws Exception {
        Recorder recorder = new Recorder();
        try (FakeServer server = new FakeServer(); LifelineClient client = client(server, recorder).build()) {
            client.start();
            try (RawPeer peer = server.acceptLogin("alice", WAIT_MILLIS)) {
                long welcomedAt = System.nanoTime();
                peer.send("<welcome id=\"alice\" interval=\"300\" misses=\"3\" phase-ms=\"100\"/>");
                Frame first = peer.expect("heartbeat", WAIT_MILLIS);
                long firstAt = System.nanoTime();
                assertEquals("ping", first.attribute("mode"));
                assertEquals("1", first.attribute("seq"));
                long phase = millis(firstAt - welcomedAt);
                assertTrue(phase >= 100 && phase < 300, "first ping " + phase + " ms after the welcome; phase-ms 100");
                peer.send("<heartbeat mode=\"pong\" seq=\"1\"/>");

                Frame second = peer.expect("heartbeat", WAIT_MILLIS);
                long gap = millis(System.nanoTime() - firstAt);
                assertEquals("2", second.attribute("seq"));
                // The schedule is kept from the welcome, so a late first ping makes this gap shorter.
                assertTrue(gap >= 200 && gap <= 450, "second ping " + gap + " ms after the first; interval 300");
                peer.send("<heartbeat mode=\"pong\" seq=\"2\"/>");

                // A probe is answered at once, echoing its seq, before the next ping is due.
                long probedAt = System.nanoTime();
                peer.send("<heartbeat mode=\"ping\" seq=\"41\"/>");
                Frame pong = peer.expect("heartbeat", WAIT_MILLIS);
                assertEquals("pong", pong.attribute("mode"), "got " + pong);
                assertEquals("41", pong.attribute("seq"));
                assertTrue(millis(System.nanoTime() - probedAt) < 200, "the probe waited for the schedule");
                assertEquals(ONLINE, client.state());
            }
        }
    }

    @Test
    void aSilentServerIsLostAfterIntervalTimesMisses() throws Exception {
        Recorder recorder = new Recorder();
        try (FakeServer server = new FakeServer();
                LifelineClient client = client(server, recorder).backoffBaseMillis(5000).backoffCapMillis(5000).build()) {
            client.start();
            try (RawPeer peer = server.acceptLogin("alice", WAIT_MILLIS)) {
                long welcomedAt = System.nanoTime();
                peer.send("<welcome id=\"alice\" interval=\"100\" misses=\"3\" phase-ms=\"0\"/>");
                // Pings go out, nothing answers, and the client gives up on this connection.
                assertTrue(peer.awaitClosed(WAIT_MILLIS), "the client kept a silent server");
                Recorder.Event lost = recorder.awaitState(WAITING, 0, WAIT_MILLIS);
                assertEquals("lost", lost.reason);
                long took = millis(lost.at - welcomedAt);
                assertTrue(took >= 300 && took <= 400, "lost " + took + " ms after the last frame; 3 x 100 ms");
            }
        }
    }

    @Test
    void retryMsIsHonouredInsteadOfTheBackoff() throws Exception {
        long retryMillis = 700;
        long capMillis = 200;
        Recorder recorder = new Recorder();
        try (FakeServer server = new FakeServer();
                LifelineClient client = client(server, recorder)
                        .backoffBaseMillis(100).backoffCapMillis(capMillis).build()) {
            client.start();
            long byeAt;
            try (RawPeer first = server.acceptLogin("alice", WAIT_MILLIS)) {
                first.send("<welcome id=\"alice\" interval=\"5000\" misses=\"5\"/>");
                recorder.awaitState(ONLINE, 0, WAIT_MILLIS);
                byeAt = System.nanoTime();
                first.send("<bye reason=\"shutdown\" retry-ms=\"" + retryMillis + "\"/>");
                assertEquals("shutdown", recorder.awaitState(WAITING, 0, WAIT_MILLIS).reason);
            }
            long byeWithoutRetryAt;
            try (RawPeer second = server.acceptLogin("alice", retryMillis + WAIT_MILLIS)) {
                long waited = millis(second.acceptedAt - byeAt);
                assertTrue(waited >= retryMillis, "reconnected " + waited + " ms after retry-ms=" + retryMillis);
                assertTrue(waited <= retryMillis + 1000, "reconnected only " + waited + " ms after the bye");
                // The control: the same bye without retry-ms is followed by the backoff,
                // at most the cap, well under retry-ms.
                int mark = recorder.mark();
                second.send("<welcome id=\"alice\" interval=\"5000\" misses=\"5\"/>");
                recorder.awaitState(ONLINE, mark, WAIT_MILLIS);
                byeWithoutRetryAt = System.nanoTime();
                second.send("<bye reason=\"shutdown\"/>");
            }
            try (RawPeer third = server.acceptLogin("alice", WAIT_MILLIS)) {
                long waited = millis(third.acceptedAt - byeWithoutRetryAt);
                assertTrue(waited <= capMillis + 250, "without retry-ms the client waited " + waited + " ms");
            }
        }
    }

    @Test
    void refusedLoginsAreTerminal() throws Exception {
        for (String code : new String[] {"auth-failed", "bad-id"}) {
            Recorder recorder = new Recorder();
            try (FakeServer server = new FakeServer();
                    LifelineClient client = client(server, recorder).backoffBaseMillis(50).backoffCapMillis(200).build()) {
                client.start();
                try (RawPeer peer = server.acceptLogin("alice", WAIT_MILLIS)) {
                    peer.send("<error code=\"" + code + "\">refused</error>");
                }
                assertEquals("refused", recorder.awaitError(code, 0, WAIT_MILLIS).text);
                assertEquals(code, recorder.awaitState(STOPPED, 0, WAIT_MILLIS).reason);
                assertNull(server.accept(1000), "a second attempt after " + code);
                assertEquals(1, recorder.count(e -> e.state == CONNECTING));
            }
        }
    }

    @Test
    void networkChangedReconnectsAtOnce() throws Exception {
        Recorder recorder = new Recorder();
        try (FakeServer server = new FakeServer(); LifelineClient client = client(server, recorder).build()) {
            client.start();
            try (RawPeer first = server.acceptLogin("alice", WAIT_MILLIS)) {
                first.send("<welcome id=\"alice\" interval=\"5000\" misses=\"5\"/>");
                recorder.awaitState(ONLINE, 0, WAIT_MILLIS);
                first.send("<bye reason=\"shutdown\" retry-ms=\"60000\"/>");
                recorder.awaitState(WAITING, 0, WAIT_MILLIS);
            }
            // Waiting out a minute: a new network cuts the wait short.
            client.networkChanged();
            try (RawPeer second = server.acceptLogin("alice", 2000)) {
                int mark = recorder.mark();
                second.send("<welcome id=\"alice\" interval=\"5000\" misses=\"5\"/>");
                recorder.awaitState(ONLINE, mark, WAIT_MILLIS);
                // Online: the connection is dropped (its path likely went with the old
                // network) and a new one made right away.
                mark = recorder.mark();
                client.networkChanged();
                assertTrue(second.awaitClosed(WAIT_MILLIS), "the old connection stayed open");
                assertEquals("network-changed", recorder.awaitState(WAITING, mark, WAIT_MILLIS).reason);
                try (RawPeer third = server.acceptLogin("alice", 2000)) {
                    third.send("<welcome id=\"alice\" interval=\"5000\" misses=\"5\"/>");
                    recorder.awaitState(ONLINE, mark, WAIT_MILLIS);
                }
            }
        }
    }

    @Test
    void aRedeliveredMessageIsDeliveredOnceAndItsAckRepeated() throws Exception {
        Recorder recorder = new Recorder();
        try (FakeServer server = new FakeServer();
                LifelineClient client = client(server, recorder).backoffBaseMillis(50).backoffCapMillis(100).build()) {
            client.start();
            try (RawPeer first = server.acceptLogin("alice", WAIT_MILLIS)) {
                // Dribbled a byte per write: the frames arrive cut at many places.
                dribble(first, "<welcome id=\"alice\" interval=\"5000\" misses=\"5\"/>"
                        + "<msg from=\"admin\" id=\"push-1\">caf\u00e9 \uD83D\uDE00</msg>");
                assertEquals("caf\u00e9 \uD83D\uDE00", recorder.awaitMessage("push-1", 0, WAIT_MILLIS).text);
                // The copy is dropped while the app holds the first; push-2 shows it was dropped, not late.
                first.send("<msg from=\"admin\" id=\"push-1\">caf\u00e9</msg><msg from=\"admin\" id=\"push-2\">two</msg>");
                recorder.awaitMessage("push-2", 0, WAIT_MILLIS);
                client.ack("push-1");
                assertEquals("push-1", first.expect("ack", WAIT_MILLIS).attribute("id"));
                first.send("<bye reason=\"shutdown\" retry-ms=\"0\"/>");
            }
            try (RawPeer second = server.acceptLogin("alice", WAIT_MILLIS)) {
                // The server redelivers what it holds unacked, or whose ack it missed.
                second.send("<welcome id=\"alice\" interval=\"5000\" misses=\"5\"/>"
                        + "<msg from=\"admin\" id=\"push-1\">caf\u00e9</msg><msg from=\"admin\" id=\"push-3\">three</msg>");
                recorder.awaitMessage("push-3", 0, WAIT_MILLIS);
                assertEquals(1, recorder.count(e -> "push-1".equals(e.id)), "events: " + recorder.events());
                // The app acked push-1 already, so its redelivery is acked for it.
                assertEquals("push-1", second.expect("ack", WAIT_MILLIS).attribute("id"));
            }
        }
    }

    @Test
    void anAckedMessageRedeliveredBeforeTheWelcomeIsAckedAndTheClientGoesOn() throws Exception {
        Recorder recorder = new Recorder();
        try (FakeServer server = new FakeServer();
                LifelineClient client = client(server, recorder).backoffBaseMillis(50).backoffCapMillis(100).build()) {
            client.start();
            try (RawPeer first = server.acceptLogin("alice", WAIT_MILLIS)) {
                first.send("<welcome id=\"alice\" interval=\"5000\" misses=\"5\"/><msg from=\"admin\" id=\"push-1\">one</msg>");
                recorder.awaitMessage("push-1", 0, WAIT_MILLIS);
                client.ack("push-1");
                assertEquals("push-1", first.expect("ack", WAIT_MILLIS).attribute("id"));
                first.send("<bye reason=\"shutdown\" retry-ms=\"0\"/>");
            }
            int mark = recorder.mark();
            try (RawPeer second = server.acceptLogin("alice", WAIT_MILLIS)) {
                // Out of order (the protocol sends nothing before the welcome), so only
                // a broken or hostile server does it: there is no loss deadline yet.
                second.send("<msg from=\"admin\" id=\"push-1\">one</msg>");
                assertEquals("push-1", second.expect("ack", WAIT_MILLIS).attribute("id"));
                second.send("<welcome id=\"alice\" interval=\"5000\" misses=\"5\"/>");
                recorder.awaitState(ONLINE, mark, WAIT_MILLIS);
                assertEquals(0, recorder.count(e -> e.state == STOPPED), "events: " + recorder.events());
                assertEquals(1, recorder.count(e -> "push-1".equals(e.id)), "events: " + recorder.events());
            }
        }
    }

    private static void dribble(RawPeer peer, String xml) throws Exception {
        for (byte b : xml.getBytes(StandardCharsets.UTF_8)) {
            peer.sendBytes(new byte[] {b});
        }
    }
}
