package dev.lifeline;

import static dev.lifeline.LifelineClient.State.CONNECTING;
import static dev.lifeline.LifelineClient.State.ONLINE;
import static dev.lifeline.LifelineClient.State.STOPPED;
import static dev.lifeline.LifelineClient.State.WAITING;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.util.concurrent.TimeUnit;
import javax.crypto.Mac;
import javax.crypto.spec.SecretKeySpec;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/** The client against the real server binary, over real sockets. */
@Timeout(value = 60, unit = TimeUnit.SECONDS)
class LifelineClientTest {
    static final long WAIT_MILLIS = 5000;

    static LifelineClient.Builder client(ServerProcess server, String id, Recorder recorder) {
        return LifelineClient.builder("127.0.0.1", server.address.getPort(), id).listener(recorder);
    }

    static long millisSince(long nanoTime, long laterNanoTime) {
        return TimeUnit.NANOSECONDS.toMillis(laterNanoTime - nanoTime);
    }

    @Test
    void logsInAndGoesOnline() throws Exception {
        Recorder recorder = new Recorder();
        try (ServerProcess server = ServerProcess.start();
                LifelineClient client = client(server, "alice", recorder).build()) {
            assertEquals(WAITING, client.state(), "before start()");
            client.start();
            recorder.awaitState(CONNECTING, 0, WAIT_MILLIS);
            Recorder.Event online = recorder.awaitState(ONLINE, 0, WAIT_MILLIS);
            assertEquals(ONLINE, client.state());
            assertTrue(online.thread.startsWith("lifeline-client-"), "callback on " + online.thread);
            assertNotNull(server.waitLog("online id=alice", WAIT_MILLIS), "server log: " + server.logLines());
            Admin.Reply presence = Admin.request(server.admin, "GET", "/clients/alice", null);
            assertEquals(200, presence.status, presence.toString());
            assertEquals("online", presence.field("state"), presence.toString());
        }
    }

    @Test
    void heartbeatsKeepItOnlineThroughManyServerDeadlines() throws Exception {
        Recorder recorder = new Recorder();
        try (ServerProcess server = ServerProcess.start("LIFELINE_HEARTBEAT_MS", "200", "LIFELINE_MISSES", "3");
                LifelineClient client = client(server, "alice", recorder).build()) {
            client.start();
            recorder.awaitState(ONLINE, 0, WAIT_MILLIS);
            // The server closes a client silent for 600 ms; over 2 s (ten intervals)
            // only the client's pings can keep this one open.
            assertNull(server.waitLog("offline id=alice", 2000), "timed out: " + server.logLines());
            assertEquals(ONLINE, client.state(), "events: " + recorder.events());
            assertEquals(1, recorder.count(e -> e.state == ONLINE), "events: " + recorder.events());
            Admin.Reply presence = Admin.request(server.admin, "GET", "/clients/alice", null);
            assertEquals("online", presence.field("state"), "never suspect: " + presence);
            // Answering the server's probes alone would also keep it open; every
            // heartbeat beyond one pong per probe is a ping of the client's own.
            long heartbeats = Admin.metric(server.admin, "lifeline_heartbeats_received_total");
            long probes = Admin.metric(server.admin, "lifeline_probes_sent_total");
            assertTrue(heartbeats - probes >= 7, heartbeats + " heartbeats for " + probes + " probes in 2 s");
        }
    }

    @Test
    void messagesFlowBothWaysEscapedAndUnescaped() throws Exception {
        Recorder recorder = new Recorder();
        try (ServerProcess server = ServerProcess.start();
                LifelineClient client = client(server, "alice", recorder).build()) {
            client.start();
            recorder.awaitState(ONLINE, 0, WAIT_MILLIS);
            try (RawPeer bob = RawPeer.login(server.address, "bob")) {
                String text = "hi <bob> & \"friends\" ]]> \u00e9\u2713\uD83D\uDE00 cr\r lf\n";
                String first = client.send("bob", text);
                Frame delivered = bob.expect("msg", WAIT_MILLIS);
                assertEquals("alice", delivered.attribute("from"));
                assertEquals(first, delivered.attribute("id"));
                assertEquals(text, delivered.text);
                assertTrue(first.matches("alice-1-[0-9a-z]+"), first);
                String second = client.send("bob", "again");
                assertNotEquals(first, second);
                assertEquals(second, bob.expect("msg", WAIT_MILLIS).attribute("id"));

                int mark = recorder.mark();
                bob.send("<msg to=\"alice\" id=\"b-1\">x &amp; y &#x1F600; &lt;<![CDATA[<raw> & more]]></msg>");
                Recorder.Event got = recorder.awaitMessage("b-1", mark, WAIT_MILLIS);
                assertEquals("bob", got.from);
                assertEquals("x & y \uD83D\uDE00 <<raw> & more", got.text);
                // A message id delivered already is not delivered again; b-2 after it
                // shows the repeat was dropped, not late.
                bob.send("<msg to=\"alice\" id=\"b-1\">x</msg><msg to=\"alice\" id=\"b-2\">second</msg>");
                assertEquals("second", recorder.awaitMessage("b-2", mark, WAIT_MILLIS).text);
                assertEquals(1, recorder.count(e -> "b-1".equals(e.id)), "events: " + recorder.events());
            }
            // To a client that is not online: the server says so, naming the message.
            int mark = recorder.mark();
            String lost = client.send("carol", "anyone?");
            assertEquals(lost, recorder.awaitError("offline", mark, WAIT_MILLIS).id);
        }
    }

    @Test
    void aPushIsNotAckedUntilTheAppAcksIt() throws Exception {
        Recorder recorder = new Recorder();
        try (ServerProcess server = ServerProcess.start();
                LifelineClient client = client(server, "alice", recorder).build()) {
            client.start();
            recorder.awaitState(ONLINE, 0, WAIT_MILLIS);
            Admin.Reply pushed = Admin.request(server.admin, "POST", "/clients/alice/push", "hello <alice> & co");
            assertEquals(202, pushed.status, pushed.toString());
            String pushId = pushed.field("id");
            assertNotNull(pushId, pushed.toString());
            Recorder.Event message = recorder.awaitMessage(pushId, 0, WAIT_MILLIS);
            assertEquals("admin", message.from);
            assertEquals("hello <alice> & co", message.text);
            assertEquals("sent", Admin.request(server.admin, "GET", "/messages/" + pushId, null).field("status"),
                    "delivered but not acked yet");

            client.ack(pushId);
            long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(WAIT_MILLIS);
            Admin.Reply receipt;
            while (true) {
                receipt = Admin.request(server.admin, "GET", "/messages/" + pushId, null);
                if ("acked".equals(receipt.field("status")) || System.nanoTime() >= deadline) {
                    break;
                }
                Thread.sleep(10); // between polls of a condition that has a deadline
            }
            assertEquals("acked", receipt.field("status"), receipt.toString());
        }
    }

    @Test
    void comesBackOnlineAfterTheServerIsKilledAndRestartedOnTheSamePort() throws Exception {
        long capMillis = 1000;
        Recorder recorder = new Recorder();
        ServerProcess first = ServerProcess.start();
        int port = first.address.getPort();
        try (ServerProcess killed = first;
                LifelineClient client = client(first, "alice", recorder)
                        .backoffBaseMillis(100).backoffCapMillis(capMillis).build()) {
            client.start();
            recorder.awaitState(ONLINE, 0, WAIT_MILLIS);
            int mark = recorder.mark();
            killed.kill();
            assertEquals("closed", recorder.awaitState(WAITING, mark, WAIT_MILLIS).reason);
            // Nothing listens: attempts fail and back off.
            recorder.await("a failed attempt", mark, WAIT_MILLIS,
                    e -> e.state == WAITING && "connect-failed".equals(e.reason));

            int beforeRestart = recorder.mark();
            try (ServerProcess restarted = ServerProcess.start("LIFELINE_LISTEN", "127.0.0.1:" + port)) {
                long restartedAt = System.nanoTime();
                Recorder.Event online = recorder.awaitState(ONLINE, beforeRestart, capMillis + WAIT_MILLIS);
                long took = millisSince(restartedAt, online.at);
                assertTrue(took <= capMillis + 500, "online " + took + " ms after the restart; cap " + capMillis);
                assertNotNull(restarted.waitLog("online id=alice", WAIT_MILLIS));
            }
        }
    }

    @Test
    void aFrozenServerIsDeclaredLostWithinIntervalTimesMissesPlusOneInterval() throws Exception {
        long interval = 200;
        long misses = 3;
        Recorder recorder = new Recorder();
        try (ServerProcess server = ServerProcess.start(
                        "LIFELINE_HEARTBEAT_MS", Long.toString(interval), "LIFELINE_MISSES", Long.toString(misses));
                LifelineClient client = client(server, "alice", recorder).build()) {
            client.start();
            recorder.awaitState(ONLINE, 0, WAIT_MILLIS);
            // A few pings answered, so the last frame heard is a pong, not the welcome.
            assertNull(server.waitLog("offline id=alice", 3 * interval));
            int mark = recorder.mark();
            server.freeze(); // its sockets stay open; the kernel even keeps acking
            long frozenAt = System.nanoTime();
            Recorder.Event lost = recorder.awaitState(WAITING, mark, 10 * interval * misses);
            assertEquals("lost", lost.reason, "events: " + recorder.events());
            long took = millisSince(frozenAt, lost.at);
            assertTrue(took <= interval * misses + interval, "lost after " + took + " ms");
            // Not sooner than the rule allows: the last pong came at most one interval
            // before the freeze, and `kill -STOP` itself takes a moment.
            assertTrue(took >= interval * misses - 2 * interval, "lost after only " + took + " ms");
        }
    }

    @Test
    void replacedAndKickedAreTerminal() throws Exception {
        Recorder alice = new Recorder();
        Recorder carol = new Recorder();
        try (ServerProcess server = ServerProcess.start();
                LifelineClient replaced = client(server, "alice", alice)
                        .backoffBaseMillis(50).backoffCapMillis(200).build();
                LifelineClient kicked = client(server, "carol", carol)
                        .backoffBaseMillis(50).backoffCapMillis(200).build()) {
            replaced.start();
            kicked.start();
            alice.awaitState(ONLINE, 0, WAIT_MILLIS);
            carol.awaitState(ONLINE, 0, WAIT_MILLIS);

            try (RawPeer newer = RawPeer.login(server.address, "alice")) {
                assertEquals("replaced", alice.awaitState(STOPPED, 0, WAIT_MILLIS).reason);
                assertEquals(STOPPED, replaced.state());
                // A reconnect would replace the newer login in turn; five backoff caps pass without one.
                assertNull(newer.next(1000), "the replaced client came back");
            }
            assertEquals(204, Admin.request(server.admin, "DELETE", "/clients/carol", null).status);
            assertEquals("kicked", carol.awaitState(STOPPED, 0, WAIT_MILLIS).reason);
            assertFalse(server.waitCount("online id=carol ", 2, 1000), "the kicked client came back");
            assertThrows(IllegalStateException.class, () -> kicked.send("alice", "still there?"));
        }
    }

    @Test
    void logsInWithATokenAndStopsOnAWrongOne() throws Exception {
        String secret = "s3cret";
        Recorder good = new Recorder();
        Recorder bad = new Recorder();
        try (ServerProcess server = ServerProcess.start("LIFELINE_AUTH_SECRET", secret);
                LifelineClient withToken = client(server, "alice", good).token(tokenFor(secret, "alice")).build();
                LifelineClient wrongToken = client(server, "mallory", bad).token(tokenFor(secret, "alice"))
                        .backoffBaseMillis(50).backoffCapMillis(200).build()) {
            withToken.start();
            wrongToken.start();
            good.awaitState(ONLINE, 0, WAIT_MILLIS);
            bad.awaitError("auth-failed", 0, WAIT_MILLIS);
            assertEquals("auth-failed", bad.awaitState(STOPPED, 0, WAIT_MILLIS).reason);
            assertEquals(1, bad.count(e -> e.state == CONNECTING), "no second attempt: " + bad.events());
        }
    }

    @Test
    void logsInWithAnExpiringTokenAndTheIntervalItAskedFor() throws Exception {
        Recorder phone = new Recorder();
        Recorder stale = new Recorder();
        long now = System.currentTimeMillis() / 1000;
        try (ServerProcess server = ServerProcess.start("LIFELINE_AUTH_SECRET", "new,old",
                        "LIFELINE_HEARTBEAT_MIN_MS", "100", "LIFELINE_HEARTBEAT_MAX_MS", "20000");
                LifelineClient client = client(server, "phone", phone)
                        .token(tokenFor("old", "phone|" + (now + 600)), now + 600)
                        .interval(java.time.Duration.ofSeconds(15)).build();
                LifelineClient expired = client(server, "stale", stale)
                        .token(tokenFor("new", "stale|" + (now - 1)), now - 1).build()) {
            assertEquals(0, client.intervalMillis(), "nothing granted before a welcome");
            client.start();
            expired.start();
            phone.awaitState(ONLINE, 0, WAIT_MILLIS);
            assertEquals(15_000, client.intervalMillis());
            assertNotNull(server.waitLog("online id=phone", WAIT_MILLIS), "log: " + server.logLines());
            assertEquals("auth-failed", stale.awaitState(STOPPED, 0, WAIT_MILLIS).reason);
        }
    }

    /** An at-least-once push the app has not acked comes again after a reconnect: once to the app. */
    @Test
    void anUnackedAtLeastOncePushIsRedeliveredButHandedToTheAppOnce() throws Exception {
        Recorder recorder = new Recorder();
        try (ServerProcess server = ServerProcess.start();
                LifelineClient client = client(server, "alice", recorder).backoffBaseMillis(20)
                        .backoffCapMillis(50).build()) {
            client.start();
            recorder.awaitState(ONLINE, 0, WAIT_MILLIS);
            Admin.Reply pushed = Admin.request(server.admin, "POST", "/clients/alice/push?queue_ttl_ms=60000", "keep");
            String pushId = pushed.field("id");
            recorder.awaitMessage(pushId, 0, WAIT_MILLIS);
            int mark = recorder.mark();
            client.networkChanged(); // the connection ends before the ack
            recorder.awaitState(ONLINE, mark, WAIT_MILLIS);
            awaitReceipt(server, pushId, "sent", 1);
            assertEquals(1, recorder.count(e -> pushId.equals(e.id)), "events: " + recorder.events());
            client.ack(pushId);
            awaitReceipt(server, pushId, "acked", 1);
        }
    }

    /** Polls the receipt of {@code pushId} until its status and redelivered count are these. */
    static void awaitReceipt(ServerProcess server, String pushId, String status, int redelivered)
            throws Exception {
        String count = "\"redelivered\":" + redelivered;
        long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(WAIT_MILLIS);
        Admin.Reply receipt;
        while (true) {
            receipt = Admin.request(server.admin, "GET", "/messages/" + pushId, null);
            boolean there = status.equals(receipt.field("status")) && receipt.body.contains(count);
            if (there || System.nanoTime() >= deadline) {
                break;
            }
            Thread.sleep(10); // between polls of a condition that has a deadline
        }
        assertEquals(status, receipt.field("status"), receipt.toString());
        assertTrue(receipt.body.contains(count), receipt.toString());
    }

    static String tokenFor(String secret, String id) throws Exception {
        Mac mac = Mac.getInstance("HmacSHA256");
        mac.init(new SecretKeySpec(secret.getBytes(StandardCharsets.UTF_8), "HmacSHA256"));
        StringBuilder hex = new StringBuilder();
        for (byte b : mac.doFinal(id.getBytes(StandardCharsets.UTF_8))) {
            hex.append(String.format("%02x", b));
        }
        return hex.toString();
    }

    @Test
    void closeSaysByeStopsAndNeverReconnects() throws Exception {
        Recorder recorder = new Recorder();
        try (ServerProcess server = ServerProcess.start()) {
            LifelineClient client = client(server, "alice", recorder).build();
            assertThrows(IllegalStateException.class, () -> client.send("bob", "too early"));
            client.start();
            assertThrows(IllegalStateException.class, client::start);
            recorder.awaitState(ONLINE, 0, WAIT_MILLIS);
            client.close();
            assertEquals(STOPPED, client.state(), "close() returns once stopped");
            Recorder.Event stopped = recorder.awaitState(STOPPED, 0, 0);
            assertNull(stopped.reason);
            assertNotNull(server.waitLog("offline id=alice reason=bye", WAIT_MILLIS), "log: " + server.logLines());
            assertThrows(IllegalStateException.class, () -> client.send("bob", "too late"));
            client.close(); // a second close does nothing
            client.networkChanged(); // nor does a network change
            assertFalse(server.waitCount("online id=alice ", 2, 500), "reconnected after close()");
        }
        LifelineClient neverStarted = LifelineClient.builder("127.0.0.1", 1, "x").build();
        neverStarted.close();
        assertEquals(STOPPED, neverStarted.state());
        assertThrows(IllegalStateException.class, neverStarted::start);
    }

    @Test
    void refusesBadSettingsAtBuild() {
        assertThrows(IllegalArgumentException.class, () -> LifelineClient.builder("h", 7070, "has space").build());
        assertThrows(IllegalArgumentException.class, () -> LifelineClient.builder("h", 0, "a").build());
        assertThrows(IllegalArgumentException.class,
                () -> LifelineClient.builder("h", 7070, "a").backoffBaseMillis(5000).backoffCapMillis(1000).build());
        assertThrows(IllegalArgumentException.class,
                () -> LifelineClient.builder("h", 7070, "a").token("ff", -1).build());
        assertThrows(IllegalArgumentException.class,
                () -> LifelineClient.builder("h", 7070, "a").interval(java.time.Duration.ZERO));
    }
}
