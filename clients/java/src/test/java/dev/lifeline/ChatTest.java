package dev.lifeline;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.BufferedReader;
import java.io.File;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.function.Predicate;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/** The console sample as a person runs it: its own JVM, lines in, lines out. */
@Timeout(value = 60, unit = TimeUnit.SECONDS)
class ChatTest {
    static final long WAIT_MILLIS = 10_000;

    /** The lines a process printed, collected as they come. */
    static final class Output {
        private final List<String> lines = new ArrayList<>();

        synchronized void add(String line) {
            lines.add(line);
            notifyAll();
        }

        void await(String line, long timeoutMillis) throws InterruptedException {
            awaitMatch("\"" + line + "\"", line::equals, timeoutMillis);
        }

        synchronized String awaitMatch(String what, Predicate<String> match, long timeoutMillis)
                throws InterruptedException {
            long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(timeoutMillis);
            while (true) {
                for (String line : lines) {
                    if (match.test(line)) {
                        return line;
                    }
                }
                long remaining = deadline - System.nanoTime();
                if (remaining <= 0) {
                    throw new AssertionError("chat did not print " + what + "; it printed " + lines);
                }
                TimeUnit.NANOSECONDS.timedWait(this, remaining);
            }
        }
    }

    @Test
    void sendsTypedLinesPrintsAndAcksIncomingOnes() throws Exception {
        try (ServerProcess server = ServerProcess.start()) {
            String java = System.getProperty("java.home") + File.separator + "bin" + File.separator + "java";
            String classes = new File(Chat.class.getProtectionDomain().getCodeSource().getLocation().toURI()).getPath();
            Process chat = new ProcessBuilder(java, "-cp", classes, "dev.lifeline.Chat",
                    "127.0.0.1", Integer.toString(server.address.getPort()), "alice")
                    .redirectErrorStream(true)
                    .start();
            try {
                Output output = new Output();
                Thread reader = new Thread(() -> {
                    try (BufferedReader lines = new BufferedReader(
                            new InputStreamReader(chat.getInputStream(), StandardCharsets.UTF_8))) {
                        String line;
                        while ((line = lines.readLine()) != null) {
                            output.add(line);
                        }
                    } catch (java.io.IOException e) {
                        // The process ended.
                    }
                });
                reader.setDaemon(true);
                reader.start();
                output.await("* online", WAIT_MILLIS);

                OutputStream typed = chat.getOutputStream();
                try (RawPeer bob = RawPeer.login(server.address, "bob")) {
                    typed.write("bob: hello b\u00f6b \uD83D\uDE00\n".getBytes(StandardCharsets.UTF_8));
                    typed.flush();
                    Frame msg = bob.expect("msg", WAIT_MILLIS);
                    assertEquals("alice", msg.attribute("from"));
                    assertEquals("hello b\u00f6b \uD83D\uDE00", msg.text);

                    bob.send("<msg to=\"alice\" id=\"b-1\">hi &lt;alice&gt;</msg>");
                    output.await("bob: hi <alice>", WAIT_MILLIS);
                }
                // A push is printed and acked once printed.
                Admin.Reply pushed = Admin.request(server.admin, "POST", "/clients/alice/push", "from the admin");
                String pushId = pushed.field("id");
                assertNotNull(pushId, pushed.toString());
                output.await("admin: from the admin", WAIT_MILLIS);
                long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(WAIT_MILLIS);
                String status;
                while (true) {
                    status = Admin.request(server.admin, "GET", "/messages/" + pushId, null).field("status");
                    if ("acked".equals(status) || System.nanoTime() >= deadline) {
                        break;
                    }
                    Thread.sleep(10); // between polls of a condition that has a deadline
                }
                assertEquals("acked", status);

                typed.write("nobody-here: anyone?\n".getBytes(StandardCharsets.UTF_8));
                typed.flush();
                output.awaitMatch("an offline error", line -> line.startsWith("! offline alice-2-"), WAIT_MILLIS);

                // End of input closes the client, which says bye, and the program ends.
                typed.close();
                assertTrue(chat.waitFor(WAIT_MILLIS, TimeUnit.MILLISECONDS), "chat still running after end of input");
                assertEquals(0, chat.exitValue());
                assertNotNull(server.waitLog("offline id=alice reason=bye", WAIT_MILLIS), "log: " + server.logLines());
                output.await("* stopped", WAIT_MILLIS);
            } finally {
                chat.destroyForcibly();
                chat.waitFor(10, TimeUnit.SECONDS);
            }
        }
    }
}
