package dev.lifeline;

import java.io.BufferedReader;
import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.io.UnsupportedEncodingException;
import java.nio.charset.StandardCharsets;
import java.util.Locale;

/**
 * A console chat on top of {@link LifelineClient}:
 *
 * <pre>
 * java -cp clients/java/build/classes dev.lifeline.Chat 127.0.0.1 7070 alice
 * bob: hello          (sends "hello" to bob)
 * </pre>
 *
 * Incoming messages print as {@code from: text} and are acked once printed;
 * state changes print as {@code * state (reason)}, server errors as
 * {@code ! code ref: text}. End of input (Ctrl-D) or {@code /quit} closes the
 * client. A login token, when the server needs one, comes from the
 * environment variable LIFELINE_TOKEN. Input and output are UTF-8.
 */
public final class Chat {
    private Chat() {}

    public static void main(String[] args) throws IOException {
        if (args.length != 3) {
            System.err.println("usage: java -cp CLASSES dev.lifeline.Chat HOST PORT ID");
            System.exit(2);
        }
        int port;
        try {
            port = Integer.parseInt(args[1]);
        } catch (NumberFormatException e) {
            System.err.println("chat: PORT must be a number, got " + args[1]);
            System.exit(2);
            return;
        }
        PrintStream out = utf8Stdout();
        Printer printer = new Printer(out);
        LifelineClient.Builder builder = LifelineClient.builder(args[0], port, args[2]).listener(printer);
        String token = System.getenv("LIFELINE_TOKEN");
        if (token != null && !token.isEmpty()) {
            builder.token(token);
        }
        LifelineClient client;
        try {
            client = builder.build();
        } catch (IllegalArgumentException e) {
            System.err.println("chat: " + e.getMessage());
            System.exit(2);
            return;
        }
        printer.client = client;
        client.start();
        try (BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8))) {
            String line;
            while ((line = in.readLine()) != null && !line.equals("/quit")) {
                sendLine(client, line, out);
            }
        } finally {
            client.close();
        }
    }

    /** "to: text" sends text to "to"; anything else gets a hint. */
    private static void sendLine(LifelineClient client, String line, PrintStream out) {
        if (line.trim().isEmpty()) {
            return;
        }
        int colon = line.indexOf(':');
        if (colon <= 0) {
            out.println("! type RECIPIENT: TEXT, e.g. bob: hello (or /quit)");
            return;
        }
        String to = line.substring(0, colon).trim();
        String text = line.substring(colon + 1).trim();
        try {
            client.send(to, text);
        } catch (IllegalStateException e) {
            out.println("! not sent: the client is " + client.state().toString().toLowerCase(Locale.ROOT));
        } catch (IllegalArgumentException e) {
            out.println("! not sent: " + e.getMessage());
        }
    }

    private static PrintStream utf8Stdout() throws UnsupportedEncodingException {
        // System.out uses the platform encoding, which may not be able to print the messages.
        return new PrintStream(new FileOutputStream(FileDescriptor.out), true, "UTF-8");
    }

    /** Prints what the client reports. Called on the client's thread, where acking is fine. */
    private static final class Printer implements LifelineClient.Listener {
        /** Set before start(), so before the first callback. */
        volatile LifelineClient client;
        private final PrintStream out;

        Printer(PrintStream out) {
            this.out = out;
        }

        @Override
        public void onState(LifelineClient.State state, String reason) {
            String name = state.toString().toLowerCase(Locale.ROOT);
            out.println("* " + name + (reason == null ? "" : " (" + reason + ")"));
        }

        @Override
        public void onMessage(String from, String id, String text) {
            out.println(from + ": " + text);
            if (id != null) {
                client.ack(id);
            }
        }

        @Override
        public void onError(String code, String ref, String text) {
            out.println("! " + code + (ref == null ? "" : " " + ref) + (text.isEmpty() ? "" : ": " + text));
        }
    }
}
