package dev.modelrouter.client;

import com.google.protobuf.Descriptors;
import com.google.protobuf.Message;
import dev.modelrouter.v1.CompleteEvent;
import dev.modelrouter.v1.CompleteRequest;
import dev.modelrouter.v1.FeedbackRequest;
import dev.modelrouter.v1.FeedbackResponse;
import dev.modelrouter.v1.GetConfigRequest;
import dev.modelrouter.v1.GetConfigResponse;
import dev.modelrouter.v1.RouteRequest;
import dev.modelrouter.v1.RouteResponse;
import dev.modelrouter.v1.RouterProto;
import io.grpc.MethodDescriptor;
import io.grpc.MethodDescriptor.MethodType;
import io.grpc.protobuf.ProtoUtils;

/**
 * The gRPC methods of {@code modelrouter.v1.ModelRouter}, built from the classes protoc
 * generates for router.proto.
 *
 * <p>They play the part of protoc-gen-grpc-java's {@code get*Method()} accessors. Each one is
 * checked against the service as the .proto declares it (name, request and response types,
 * streaming) when this class loads, so a change to the .proto that these do not follow fails
 * at once instead of on the wire.
 */
public final class ModelRouterMethods {
  private static final Descriptors.ServiceDescriptor SERVICE =
      RouterProto.getDescriptor().findServiceByName("ModelRouter");

  /** The fully qualified service name, as health checking and reflection report it. */
  public static final String SERVICE_NAME = SERVICE.getFullName();

  /** Decide which tier should answer a query. */
  public static final MethodDescriptor<RouteRequest, RouteResponse> ROUTE =
      method("Route", MethodType.UNARY, RouteRequest.getDefaultInstance(),
          RouteResponse.getDefaultInstance());

  /** Decide, run the chosen tier and stream the answer. */
  public static final MethodDescriptor<CompleteRequest, CompleteEvent> COMPLETE =
      method("Complete", MethodType.SERVER_STREAMING, CompleteRequest.getDefaultInstance(),
          CompleteEvent.getDefaultInstance());

  /** Rate an answer by its request id. */
  public static final MethodDescriptor<FeedbackRequest, FeedbackResponse> FEEDBACK =
      method("Feedback", MethodType.UNARY, FeedbackRequest.getDefaultInstance(),
          FeedbackResponse.getDefaultInstance());

  /** Describe tiers, prices, thresholds and the routing model. */
  public static final MethodDescriptor<GetConfigRequest, GetConfigResponse> GET_CONFIG =
      method("GetConfig", MethodType.UNARY, GetConfigRequest.getDefaultInstance(),
          GetConfigResponse.getDefaultInstance());

  private ModelRouterMethods() {}

  private static <ReqT extends Message, RespT extends Message> MethodDescriptor<ReqT, RespT> method(
      String name, MethodType type, ReqT request, RespT response) {
    Descriptors.MethodDescriptor declared = SERVICE.findMethodByName(name);
    if (declared == null
        || declared.getInputType() != request.getDescriptorForType()
        || declared.getOutputType() != response.getDescriptorForType()
        || declared.isClientStreaming()
        || declared.isServerStreaming() != (type == MethodType.SERVER_STREAMING)) {
      throw new IllegalStateException(
          "router.proto declares " + SERVICE_NAME + "." + name + " differently: "
              + (declared == null ? "missing" : declared.toProto().toString().trim()));
    }
    return MethodDescriptor.<ReqT, RespT>newBuilder()
        .setType(type)
        .setFullMethodName(MethodDescriptor.generateFullMethodName(SERVICE_NAME, name))
        .setRequestMarshaller(ProtoUtils.marshaller(request))
        .setResponseMarshaller(ProtoUtils.marshaller(response))
        .build();
  }
}
