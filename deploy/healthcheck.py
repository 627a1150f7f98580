"""Container health check: exit 0 when the server's gRPC health service says SERVING.

Used by the Dockerfiles' HEALTHCHECK (Kubernetes uses its native gRPC probes instead). Talks
plaintext to 127.0.0.1:$LATENTFACE_SERVER_PORT (default 50051); with TLS on the server, set
LATENTFACE_HEALTHCHECK_CA to the CA file (mutual-TLS servers need another probe, e.g. an exec of
a client with a certificate).
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main() -> int:
    target = f"127.0.0.1:{os.environ.get('LATENTFACE_SERVER_PORT', '50051')}"
    ca = os.environ.get("LATENTFACE_HEALTHCHECK_CA")
    if ca:
        with open(ca, "rb") as fh:
            credentials = grpc.ssl_channel_credentials(root_certificates=fh.read())
        # The certificate names the service, not 127.0.0.1.
        options = [("grpc.ssl_target_name_override", os.environ.get("LATENTFACE_HEALTHCHECK_NAME", "localhost"))]
        channel = grpc.secure_channel(target, credentials, options=options)
    else:
        channel = grpc.insecure_channel(target)
    try:
        with channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    except grpc.RpcError as exc:
        print(f"unhealthy: {exc.code().name}", file=sys.stderr)
        return 1
    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    print(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
