package dev.lifeline;

import java.io.IOException;
import java.io.InputStream;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.net.SocketTimeoutException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayDeque;
import java.util.Deque;
import java.util.concurrent.TimeUnit;

/** One end of a plain TCP connection that speaks frames by hand: a raw client, or a fake server's side. */
final class RawPeer implements AutoCloseable {
    final Socket socket;
    /** When the connection was accepted (System.nanoTime()), for a fake server's peers. */
    final long acceptedAt;
    private final InputStream in;
    private final FrameParser parser = new FrameParser(1 << 20);
    private final Deque<Frame> frames = new ArrayDeque<>();
    private final byte[] chunk = new byte[16 * 1024];
    private boolean closedByOtherEnd;

    RawPeer(Socket socket, long acceptedAt) throws IOException {
        this.socket = socket;
        this.acceptedAt = acceptedAt;
        this.in = socket.getInputStream();
        socket.setTcpNoDelay(true);
    }

    static RawPeer connect(InetSocketAddress address) throws IOException {
        Socket socket = new Socket();
        socket.connect(address, 5000);
        return new RawPeer(socket, System.nanoTime());
    }

    /** Connects and logs in as {@code id}; fails unless welcomed. */
    static RawPeer login(InetSocketAddress address, String id) throws IOException {
        RawPeer peer = connect(address);
        peer.send("<login id=\"" + id + "\"/>");
        Frame welcome = peer.expect("welcome", 5000);
        if (!id.equals(welcome.attribute("id"))) {
            throw new AssertionError("welcome for the wrong id: " + welcome);
        }
        return peer;
    }

    void send(String xml) throws IOException {
        sendBytes(xml.getBytes(StandardCharsets.UTF_8));
    }

    void sendBytes(byte[] bytes) throws IOException {
        socket.getOutputStream().write(bytes);
        socket.getOutputStream().flush();
    }

    /** The next frame within {@code timeoutMillis}; null if none came or the other end closed. */
    Frame next(long timeoutMillis) throws IOException {
        long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(timeoutMillis);
        while (frames.isEmpty()) {
            if (!fill(deadline)) {
                return null;
            }
        }
        return frames.poll();
    }

    /** The next frame, which must be a {@code name} and come within {@code timeoutMillis}. */
    Frame expect(String name, long timeoutMillis) throws IOException {
        Frame frame = next(timeoutMillis);
        if (frame == null) {
            throw new AssertionError("no <" + name + "> within " + timeoutMillis + " ms"
                    + (closedByOtherEnd ? " (the connection closed)" : ""));
        }
        if (!frame.name.equals(name)) {
            throw new AssertionError("expected <" + name + ">, got " + frame);
        }
        return frame;
    }

    /** Reads until the other end closes; true if it did within {@code timeoutMillis}. */
    boolean awaitClosed(long timeoutMillis) throws IOException {
        long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(timeoutMillis);
        while (!closedByOtherEnd) {
            frames.clear();
            if (!fill(deadline) && !closedByOtherEnd) {
                return false;
            }
        }
        return true;
    }

    /** One read, bounded by {@code deadline}; false on timeout or end of stream. */
    private boolean fill(long deadline) throws IOException {
        if (closedByOtherEnd) {
            return false;
        }
        long remaining = deadline - System.nanoTime();
        if (remaining <= 0) {
            return false;
        }
        socket.setSoTimeout((int) Math.max(1, TimeUnit.NANOSECONDS.toMillis(remaining)));
        int read;
        try {
            read = in.read(chunk);
        } catch (SocketTimeoutException e) {
            return false;
        } catch (IOException e) {
            // A reset is a close as far as a test is concerned.
            closedByOtherEnd = true;
            return false;
        }
        if (read < 0) {
            closedByOtherEnd = true;
            return false;
        }
        try {
            frames.addAll(parser.feed(chunk, 0, read));
        } catch (BadFrameException e) {
            throw new AssertionError("unreadable bytes from the other end: " + e.getMessage(), e);
        }
        return true;
    }

    @Override
    public void close() throws IOException {
        socket.close();
    }
}
