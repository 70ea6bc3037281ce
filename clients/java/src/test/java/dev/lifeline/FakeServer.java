package dev.lifeline;

import java.io.IOException;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.net.SocketTimeoutException;

/** A listening socket a test scripts by hand, to play a server that misbehaves on cue. */
final class FakeServer implements AutoCloseable {
    private final ServerSocket listener;

    FakeServer() throws IOException {
        this(new ServerSocket(0, 50, InetAddress.getLoopbackAddress()));
    }

    /** A fake server on a listener made elsewhere (a TLS one, say). */
    FakeServer(ServerSocket listener) {
        this.listener = listener;
    }

    int port() {
        return listener.getLocalPort();
    }

    InetSocketAddress address() {
        return new InetSocketAddress(listener.getInetAddress(), listener.getLocalPort());
    }

    /** The next connection within {@code timeoutMillis}, or null if none came. */
    RawPeer accept(long timeoutMillis) throws IOException {
        listener.setSoTimeout((int) timeoutMillis);
        Socket socket;
        try {
            socket = listener.accept();
        } catch (SocketTimeoutException e) {
            return null;
        }
        return new RawPeer(socket, System.nanoTime());
    }

    /** The next connection, which must come within {@code timeoutMillis}, with its login read. */
    RawPeer acceptLogin(String id, long timeoutMillis) throws IOException {
        RawPeer peer = accept(timeoutMillis);
        if (peer == null) {
            throw new AssertionError("the client did not connect within " + timeoutMillis + " ms");
        }
        Frame login = peer.expect("login", 5000);
        if (!id.equals(login.attribute("id"))) {
            throw new AssertionError("login for the wrong id: " + login);
        }
        return peer;
    }

    @Override
    public void close() throws IOException {
        listener.close();
    }
}
