package dev.modelrouter.client;

import dev.modelrouter.v1.CompleteEvent;
import io.grpc.Context;
import java.util.Iterator;
import java.util.function.Consumer;

/**
 * One Complete call in progress: iterate its events, or {@link #collect} them.
 *
 * <p>Iteration throws {@link io.grpc.StatusRuntimeException} when the call fails. {@link
 * #cancel} (or {@link #close} before the end) abandons the call; the server sees the
 * cancellation and stops the backend.
 */
public final class CompletionStream implements Iterator<CompleteEvent>, AutoCloseable {
  private final Context.CancellableContext context;
  private final Iterator<CompleteEvent> events;

  CompletionStream(Context.CancellableContext context, Iterator<CompleteEvent> events) {
    this.context = context;
    this.events = events;
  }

  @Override
  public boolean hasNext() {
    return events.hasNext();
  }

  @Override
  public CompleteEvent next() {
    return events.next();
  }

  /** Read the stream to its end, passing each piece of text to onText (may be null). */
  public Completion collect(Consumer<String> onText) {
    Completion completion = new Completion();
    while (hasNext()) {
      String text = completion.add(next());
      if (onText != null && !text.isEmpty()) {
        onText.accept(text);
      }
    }
    return completion;
  }

  /** Abandon the call. */
  public void cancel() {
    context.cancel(null);
  }

  /** Abandon the call if it is still running. */
  @Override
  public void close() {
    cancel();
  }
}
