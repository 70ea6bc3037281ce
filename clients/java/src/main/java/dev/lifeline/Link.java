package dev.lifeline;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.locks.ReentrantLock;

/** One connection's socket. Each frame goes out in one write, one writer at a time. */
final class Link {
    final Socket socket;
    final InputStream in;
    private final OutputStream out;
    private final ReentrantLock writing = new ReentrantLock();

    Link(Socket socket) throws IOException {
        this.socket = socket;
        this.in = socket.getInputStream();
        this.out = socket.getOutputStream();
    }

    void write(String frame) throws IOException {
        byte[] bytes = frame.getBytes(StandardCharsets.UTF_8);
        writing.lock();
        try {
            out.write(bytes);
            out.flush();
        } finally {
            writing.unlock();
        }
    }

    /**
     * For the client thread's heartbeat frames: skipped while another thread
     * is writing. That thread's frame tells the server we are alive just as
     * well, and the client's thread must not wait behind a write it cannot
     * bound, or nothing would watch the loss deadline.
     */
    void writeUnlessBusy(String frame) throws IOException {
        writeWithin(frame, System.nanoTime());
    }

    /**
     * Writes unless another thread holds the socket past {@code deadline}
     * (System.nanoTime()); returns whether the frame went out.
     */
    boolean writeWithin(String frame, long deadline) throws IOException {
        byte[] bytes = frame.getBytes(StandardCharsets.UTF_8);
        boolean locked;
        try {
            locked = writing.tryLock(Math.max(0, deadline - System.nanoTime()), TimeUnit.NANOSECONDS);
        } catch (InterruptedException e) {
            // The loop takes an interrupt as close(); keep it for the loop to see.
            Thread.currentThread().interrupt();
            return false;
        }
        if (!locked) {
            return false;
        }
        try {
            out.write(bytes);
            out.flush();
            return true;
        } finally {
            writing.unlock();
        }
    }

    /** Best effort: the server logs a clean leave; if it fails, it sees the close instead. */
    void sayBye() {
        try {
            writeUnlessBusy(ClientFrames.BYE);
        } catch (IOException e) {
            // Nothing to do: the socket closes next either way.
        }
    }

    void abort() {
        closeQuietly(socket);
    }

    static void closeQuietly(Socket socket) {
        if (socket == null) {
            return;
        }
        try {
            socket.close();
        } catch (IOException e) {
            // Closing is all that was wanted; a failure leaves nothing to undo.
        }
    }
}
