package dev.modelrouter.client;

import dev.modelrouter.v1.CompleteEvent;
import dev.modelrouter.v1.CompletionSummary;
import dev.modelrouter.v1.Escalation;
import dev.modelrouter.v1.RoutingDecision;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;

/** A Complete call read to its end, or as far as it got. Not thread-safe. */
public final class Completion {
  private RoutingDecision decision;
  private final StringBuilder text = new StringBuilder();
  private final List<Escalation> escalations = new ArrayList<>();
  private CompletionSummary summary;

  /** Fold one event into the completion and return the text it carried ("" if none). */
  public String add(CompleteEvent event) {
    switch (event.getEventCase()) {
      case DECISION -> decision = event.getDecision();
      case DELTA -> {
        text.append(event.getDelta().getText());
        return event.getDelta().getText();
      }
      case ESCALATION -> escalations.add(event.getEscalation());
      case SUMMARY -> summary = event.getSummary();
      case EVENT_NOT_SET -> { }
    }
    return "";
  }

  /** Return the routing decision (the first event), or null if none arrived. */
  public RoutingDecision decision() {
    return decision;
  }

  /** Return the answer: every delta received, in order. */
  public String text() {
    return text.toString();
  }

  /** Return each tier abandoned before any of its text was sent. */
  public List<Escalation> escalations() {
    return Collections.unmodifiableList(escalations);
  }

  /** Return the usage, cost, answering tier and attempts, or null if the stream ended first. */
  public CompletionSummary summary() {
    return summary;
  }
}
