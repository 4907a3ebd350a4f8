package dev.modelrouter.client;

import dev.modelrouter.v1.RouteBatchResult;
import dev.modelrouter.v1.RoutingDecision;
import io.grpc.Status;

/**
 * {@link ModelRouterClient#routeBatch}'s answer for one request: its decision, or the status Route
 * would have ended it with.
 *
 * @param decision the routing decision, as {@link ModelRouterClient#route} returns it; null when
 *     {@code error} is set
 * @param error the status of a request that got no decision ({@code INVALID_ARGUMENT}, its
 *     description naming the field); null with a decision
 * @param requestId the request's id: the caller's, or the one the server generated
 */
public record BatchResult(RoutingDecision decision, Status error, String requestId) {
  /** Return whether the request got a decision. */
  public boolean ok() {
    return decision != null;
  }

  static BatchResult of(RouteBatchResult result) {
    if (result.hasError()) {
      var e = result.getError();
      return new BatchResult(
          null, Status.fromCodeValue(e.getCode()).withDescription(e.getMessage()), e.getRequestId());
    }
    return new BatchResult(result.getDecision(), null, result.getDecision().getRequestId());
  }
}
