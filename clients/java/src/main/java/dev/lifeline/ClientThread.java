package dev.lifeline;

import java.io.IOException;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.util.Random;
import javax.net.ssl.SSLParameters;
import javax.net.ssl.SSLSocket;

/**
 * The client's thread and its states: connects, lets a {@link Connection} serve
 * the socket, backs off by the {@link ReconnectPolicy}, again, until close(), a
 * terminal bye or error, or an interrupt stops it. Also the other threads' way
 * in: start(), networkChanged() and close() reach the thread through the lock
 * and by cutting its socket; send() and ack() write on the welcomed
 * {@link #online()} link.
 *
 * <p>The thread blocks in {@code read} with a timeout set to the next thing it has
 * to do (ping, loss deadline, connect deadline), so an idle client costs no
 * wakeups between heartbeats.
 */
final class ClientThread implements Connection.Owner {
    /** How long close() lets the client's thread say bye before it cuts the socket. */
    private static final long CLOSE_GRACE_MILLIS = 1000;

    private enum Wake { ELAPSED, NETWORK_CHANGED, CLOSING }

    private final Settings settings;
    private final RecentIds recentIds;
    private final Random jitter;

    /** Guards the four fields below it; the client's thread waits on it while WAITING. */
    private final Object lock = new Object();
    private Thread thread;
    private boolean closeRequested;
    private boolean networkChanged;
    /**
     * The TCP socket of the attempt or connection under way, so close() and
     * networkChanged() can cut it. Under TLS it is the socket beneath: closing
     * that sends nothing, so no network I/O happens on the caller's thread.
     */
    private Socket current;

    private volatile LifelineClient.State state = LifelineClient.State.WAITING;
    /** The welcomed connection, for send() and ack(); null when not ONLINE. */
    private volatile Link online;
    /** The heartbeat interval of the last welcome; 0 before one. */
    private volatile long grantedIntervalMillis;

    ClientThread(Settings settings, RecentIds recentIds, Random jitter) {
        this.settings = settings;
        this.recentIds = recentIds;
        this.jitter = jitter;
    }

    LifelineClient.State state() {
        return state;
    }

    /** The welcomed connection's link; null when not ONLINE. */
    Link online() {
        return online;
    }

    long grantedIntervalMillis() {
        return grantedIntervalMillis;
    }

    /** @throws IllegalStateException if started before or closed */
    void start() {
        synchronized (lock) {
            if (closeRequested) {
                throw new IllegalStateException("the client is closed");
            }
            if (thread != null) {
                throw new IllegalStateException("the client is started already");
            }
            state = LifelineClient.State.CONNECTING;
            thread = new Thread(this::run, "lifeline-client-" + settings.id);
            // A client the app forgot to close must not keep the process alive.
            thread.setDaemon(true);
            thread.start();
        }
    }

    /** Drops the connection or attempt under way and ends the wait, so the thread reconnects now. */
    void networkChanged() {
        Socket cut;
        synchronized (lock) {
            if (thread == null || closeRequested) {
                return;
            }
            networkChanged = true;
            lock.notifyAll();
            cut = current;
        }
        Link.closeQuietly(cut);
    }

    /** Stops the thread and waits for it to end, unless called on it. */
    void close() {
        Thread worker;
        Socket socket;
        synchronized (lock) {
            closeRequested = true;
            lock.notifyAll();
            worker = thread;
            socket = current;
        }
        if (worker == null) {
            // Never started: there is no client thread to report on.
            state = LifelineClient.State.STOPPED;
            return;
        }
        if (worker == Thread.currentThread()) {
            return;
        }
        wakeReader(socket);
        if (!joinUninterruptibly(worker, CLOSE_GRACE_MILLIS)) {
            // The thread is stuck in a write (a server that stopped reading): cut it off.
            synchronized (lock) {
                socket = current;
            }
            Link.closeQuietly(socket);
            joinUninterruptibly(worker, 0);
        }
    }

    @Override
    public boolean isCloseRequested() {
        synchronized (lock) {
            // Only close() should stop the client's thread, but an interrupt means
            // someone wants it gone all the same.
            if (Thread.currentThread() == thread && Thread.currentThread().isInterrupted()) {
                closeRequested = true;
            }
            return closeRequested;
        }
    }

    @Override
    public void welcomed(Link link, long intervalMillis) {
        grantedIntervalMillis = intervalMillis;
        online = link;
        setState(LifelineClient.State.ONLINE, null);
    }

    private void run() {
        String stopReason = "failed"; // kept only if the loop throws
        try {
            stopReason = reconnectLoop();
        } finally {
            online = null;
            setState(LifelineClient.State.STOPPED, stopReason);
        }
    }

    /** Connects, serves, backs off, again, until told to stop; returns the stop reason. */
    private String reconnectLoop() {
        ReconnectPolicy reconnect =
                new ReconnectPolicy(new Backoff(settings.backoffBaseMillis, settings.backoffCapMillis, jitter));
        long delayMillis = 0;
        while (true) {
            Wake wake = waitOut(delayMillis);
            if (wake == Wake.CLOSING) {
                return null;
            }
            if (wake == Wake.NETWORK_CHANGED) {
                reconnect.reset();
            }
            setState(LifelineClient.State.CONNECTING, null);
            Ending ending = connectAndServe();
            if (ending.terminal) {
                return ending.reason;
            }
            if (ending.closing || isCloseRequested()) {
                return null;
            }
            if (takeNetworkChanged()) {
                reconnect.reset();
                delayMillis = 0;
                setState(LifelineClient.State.WAITING, "network-changed");
                continue;
            }
            delayMillis = reconnect.delayAfter(ending);
            setState(LifelineClient.State.WAITING, ending.reason);
        }
    }

    /** Waits {@code delayMillis} unless close() or networkChanged() comes first. */
    private Wake waitOut(long delayMillis) {
        long deadline = Deadlines.after(delayMillis);
        synchronized (lock) {
            while (true) {
                if (closeRequested) {
                    return Wake.CLOSING;
                }
                if (networkChanged) {
                    networkChanged = false;
                    return Wake.NETWORK_CHANGED;
                }
                long remaining = deadline - System.nanoTime();
                if (remaining <= 0) {
                    return Wake.ELAPSED;
                }
                try {
                    lock.wait(Deadlines.ceilMillis(remaining));
                } catch (InterruptedException e) {
                    // As in isCloseRequested(): an interrupt stops the client.
                    closeRequested = true;
                }
            }
        }
    }

    private Ending connectAndServe() {
        long deadline = Deadlines.after(settings.connectTimeoutMillis);
        Socket plain = new Socket();
        synchronized (lock) {
            if (closeRequested) {
                return Ending.CLOSING;
            }
            // This attempt already is the reconnect a network change asks for.
            networkChanged = false;
            current = plain;
        }
        Link link = null;
        try {
            try {
                link = open(plain, deadline);
            } catch (IOException e) {
                return Ending.retry("connect-failed", false);
            }
            return new Connection(this, settings, recentIds, link, deadline).serve();
        } finally {
            online = null;
            synchronized (lock) {
                current = null;
            }
            // The TCP socket first: an SSLSocket's close waits for its record lock
            // to send close_notify, and an app thread stuck writing to a server
            // that stopped reading holds that lock until its socket is gone.
            Link.closeQuietly(plain);
            if (link != null) {
                Link.closeQuietly(link.socket);
            }
        }
    }

    /** TCP connect, TLS handshake when configured, login. */
    private Link open(Socket plain, long deadline) throws IOException {
        plain.connect(new InetSocketAddress(settings.host, settings.port), Deadlines.millisUntil(deadline));
        // Heartbeats are tiny and their latency is what they measure.
        plain.setTcpNoDelay(true);
        Socket socket = plain;
        if (settings.tls != null) {
            SSLSocket secure = (SSLSocket) settings.tls.createSocket(plain, settings.host, settings.port, true);
            // SSLSocketFactory checks the chain but not the name; without this a
            // valid certificate for any host would do.
            SSLParameters parameters = secure.getSSLParameters();
            parameters.setEndpointIdentificationAlgorithm("HTTPS");
            secure.setSSLParameters(parameters);
            secure.setSoTimeout(Deadlines.millisUntil(deadline));
            secure.startHandshake();
            socket = secure;
        }
        Link link = new Link(socket);
        link.write(ClientFrames.login(settings.id, settings.token, settings.exp, settings.askedIntervalMillis));
        return link;
    }

    private boolean takeNetworkChanged() {
        synchronized (lock) {
            boolean changed = networkChanged;
            networkChanged = false;
            return changed;
        }
    }

    private void setState(LifelineClient.State next, String reason) {
        state = next;
        settings.listener.onState(next, reason);
    }

    /**
     * Wakes the client's thread from its read so it can say bye and stop. Half-
     * closing the input ends the read with end-of-stream and leaves the output
     * open for the bye. TLS has no half-close (its records run over the socket
     * beneath), so under TLS, and before the connect completes, the socket is closed.
     */
    private void wakeReader(Socket socket) {
        if (socket == null) {
            return;
        }
        if (settings.tls != null || !socket.isConnected()) {
            Link.closeQuietly(socket);
            return;
        }
        try {
            socket.shutdownInput();
        } catch (IOException | UnsupportedOperationException e) {
            Link.closeQuietly(socket);
        }
    }

    private static boolean joinUninterruptibly(Thread thread, long millis) {
        boolean interrupted = false;
        long deadline = Deadlines.after(millis);
        try {
            while (thread.isAlive()) {
                long remaining = deadline - System.nanoTime();
                if (millis > 0 && remaining <= 0) {
                    return false;
                }
                try {
                    thread.join(millis > 0 ? Deadlines.ceilMillis(remaining) : 0);
                } catch (InterruptedException e) {
                    interrupted = true;
                }
            }
            return true;
        } finally {
            if (interrupted) {
                Thread.currentThread().interrupt();
            }
        }
    }
}
