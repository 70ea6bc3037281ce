package dev.lifeline;

/**
 * The app's listener as the client's thread calls it. A listener bug is the
 * app's to see, as a crash in its own callback would be: the exception goes to
 * the thread's uncaught-exception handler and the client goes on.
 */
final class GuardedListener implements LifelineClient.Listener {
    private final LifelineClient.Listener app;

    GuardedListener(LifelineClient.Listener app) {
        this.app = app;
    }

    @Override
    public void onState(LifelineClient.State state, String reason) {
        try {
            app.onState(state, reason);
        } catch (RuntimeException e) {
            toUncaughtHandler(e);
        }
    }

    @Override
    public void onMessage(String from, String id, String text) {
        try {
            app.onMessage(from, id, text);
        } catch (RuntimeException e) {
            toUncaughtHandler(e);
        }
    }

    @Override
    public void onError(String code, String ref, String text) {
        try {
            app.onError(code, ref, text);
        } catch (RuntimeException e) {
            toUncaughtHandler(e);
        }
    }

    private static void toUncaughtHandler(RuntimeException e) {
        Thread self = Thread.currentThread();
        self.getUncaughtExceptionHandler().uncaughtException(self, e);
    }
}
