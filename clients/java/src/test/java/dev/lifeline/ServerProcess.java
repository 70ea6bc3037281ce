package dev.lifeline;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.TimeUnit;

/**
 * The real lifeline binary on loopback ports the OS picks, started for one
 * test and killed through its own process handle when closed, so a failing
 * test never leaves it behind. The binary comes from the system property
 * lifeline.bin or the environment variable LIFELINE_BIN.
 */
final class ServerProcess implements AutoCloseable {
    private static final long START_WAIT_MILLIS = 10_000;
    /**
     * Servers not yet killed. A JVM stopped from outside (SIGTERM from the Rust
     * harness's time limit) runs no finally blocks, so a hook kills these.
     */
    private static final Set<Process> RUNNING = ConcurrentHashMap.newKeySet();

    static {
        Runtime.getRuntime().addShutdownHook(new Thread(() -> RUNNING.forEach(Process::destroyForcibly)));
    }

    final InetSocketAddress address;
    final InetSocketAddress admin;
    private final Process process;
    private final List<String> log = new ArrayList<>();
    private boolean frozen;

    /** Starts the server with {@code settings} (name, value, name, value...) on top of the test defaults. */
    static ServerProcess start(String... settings) throws IOException, InterruptedException {
        Map<String, String> env = new LinkedHashMap<>();
        env.put("LIFELINE_LISTEN", "127.0.0.1:0");
        env.put("LIFELINE_ADMIN_ADDR", "127.0.0.1:0");
        env.put("LIFELINE_LOG", "info");
        for (int i = 0; i + 1 < settings.length; i += 2) {
            env.put(settings[i], settings[i + 1]);
        }
        return new ServerProcess(env);
    }

    static String binary() {
        String path = System.getProperty("lifeline.bin");
        if (path == null || path.isEmpty()) {
            path = System.getenv("LIFELINE_BIN");
        }
        if (path == null || path.isEmpty()) {
            throw new IllegalStateException(
                    "no server binary: pass -Dlifeline.bin=PATH or set LIFELINE_BIN (cargo build --release makes target/release/lifeline)");
        }
        return path;
    }

    private ServerProcess(Map<String, String> env) throws IOException, InterruptedException {
        ProcessBuilder builder = new ProcessBuilder(binary());
        builder.environment().clear();
        builder.environment().putAll(env);
        builder.redirectInput(ProcessBuilder.Redirect.PIPE);
        builder.redirectOutput(ProcessBuilder.Redirect.DISCARD);
        process = builder.start();
        RUNNING.add(process);
        Thread reader = new Thread(this::collectLog, "lifeline-server-log");
        reader.setDaemon(true);
        reader.start();
        String listening = waitLog("listening on ", START_WAIT_MILLIS);
        if (listening == null) {
            kill();
            throw new AssertionError("the server did not start within " + START_WAIT_MILLIS + " ms; log: " + logLines());
        }
        address = parseAddress(listening.split("listening on ")[1].split(";")[0]);
        String adminLine = waitLog("admin API on http://", 0);
        admin = adminLine == null ? null : parseAddress(adminLine.split("admin API on http://")[1]);
    }

    private void collectLog() {
        try (BufferedReader lines = new BufferedReader(
                new InputStreamReader(process.getErrorStream(), StandardCharsets.UTF_8))) {
            String line;
            while ((line = lines.readLine()) != null) {
                synchronized (log) {
                    log.add(line);
                    log.notifyAll();
                }
            }
        } catch (IOException e) {
            // The process ended; what it logged is kept.
        }
    }

    private static InetSocketAddress parseAddress(String text) {
        String trimmed = text.trim();
        int colon = trimmed.lastIndexOf(':');
        return new InetSocketAddress(trimmed.substring(0, colon), Integer.parseInt(trimmed.substring(colon + 1)));
    }

    long pid() {
        return process.pid();
    }

    List<String> logLines() {
        synchronized (log) {
            return new ArrayList<>(log);
        }
    }

    /** The first log line containing {@code needle}, waiting up to {@code timeoutMillis}; null if none came. */
    String waitLog(String needle, long timeoutMillis) throws InterruptedException {
        long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(timeoutMillis);
        synchronized (log) {
            while (true) {
                for (String line : log) {
                    if (line.contains(needle)) {
                        return line;
                    }
                }
                long remaining = deadline - System.nanoTime();
                if (remaining <= 0) {
                    return null;
                }
                TimeUnit.NANOSECONDS.timedWait(log, remaining);
            }
        }
    }

    /** Whether {@code n} log lines containing {@code needle} came within {@code timeoutMillis}. */
    boolean waitCount(String needle, int n, long timeoutMillis) throws InterruptedException {
        long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(timeoutMillis);
        synchronized (log) {
            while (true) {
                int count = 0;
                for (String line : log) {
                    if (line.contains(needle)) {
                        count++;
                    }
                }
                if (count >= n) {
                    return true;
                }
                long remaining = deadline - System.nanoTime();
                if (remaining <= 0) {
                    return false;
                }
                TimeUnit.NANOSECONDS.timedWait(log, remaining);
            }
        }
    }

    /** SIGSTOP: the process stays, its sockets stay open, nothing answers. */
    void freeze() throws IOException, InterruptedException {
        signal("-STOP");
        frozen = true;
    }

    void thaw() throws IOException, InterruptedException {
        signal("-CONT");
        frozen = false;
    }

    private void signal(String signal) throws IOException, InterruptedException {
        Process kill = new ProcessBuilder("kill", signal, Long.toString(process.pid())).inheritIO().start();
        if (!kill.waitFor(5, TimeUnit.SECONDS) || kill.exitValue() != 0) {
            kill.destroyForcibly();
            throw new IOException("kill " + signal + " " + process.pid() + " failed");
        }
    }

    /** SIGKILL, and wait for the process to be gone. */
    void kill() throws InterruptedException {
        process.destroyForcibly();
        if (!process.waitFor(10, TimeUnit.SECONDS)) {
            throw new AssertionError("server " + process.pid() + " survived SIGKILL for 10 s");
        }
        RUNNING.remove(process);
    }

    @Override
    public void close() throws IOException, InterruptedException {
        try {
            if (frozen) {
                thaw();
            }
        } finally {
            kill();
        }
    }
}
