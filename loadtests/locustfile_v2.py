"""Locust scenarios over the Open Inference Protocol (KServe v2): REST ``/v2/.../infer`` and gRPC.

    locust -f loadtests/locustfile_v2.py --host http://127.0.0.1:3000 \
        --grpc-target 127.0.0.1:3001 --headless -u 16 -r 16 -t 1m --batch-size 1 \
        --csv loadtests/reports/grpc --html loadtests/reports/grpc.html GrpcUser

The service serves plaintext gRPC; ``--grpc-tls`` (with ``--grpc-root-certificates`` for a
private CA and ``--grpc-server-name`` for a target that is not the certificate's name) calls the
TLS-terminating proxy or ingress in front of it instead.

Both send one tensor per contract feature (BYTES for categories, INT64/FP64 for numbers), shaped
as the server's model metadata says. Any KServe v2 server serving the model works (MLServer too:
``--host`` is then only used for the v2 REST routes, and the contract comes from the local model
store). gRPC calls are measured with ``events.request.fire``, so they appear in the same stats,
reports and SLO check as HTTP requests.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import grpc
import grpc.experimental.gevent as grpc_gevent
import numpy as np
import orjson
from locust import FastHttpUser, User, constant, events, task

from loadtests.common import (
    JSON_HEADERS,
    OPTION_CHECKS,
    Target,
    pace,
    response_failure,
    target,
)
from loadtests.payloads import v2_inputs, v2_output_rows

# gRPC's own threads would block gevent's loop: let gRPC cooperate with gevent instead.
grpc_gevent.init_gevent()

import tritonclient.grpc as triton_grpc  # noqa: E402  (after init_gevent)
from tritonclient.utils import InferenceServerException  # noqa: E402

_NUMPY_TYPES = {"BYTES": np.object_, "INT64": np.int64, "FP64": np.float64}


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument(
        "--grpc-target",
        default=f"127.0.0.1:{os.environ.get('GRPC_PORT', '3001')}",
        env_var="LOCUST_GRPC_TARGET",
        help="host:port of the v2 gRPC server (GrpcUser); with --grpc-tls, of the TLS-terminating "
        "proxy in front of it",
    )
    parser.add_argument(
        "--grpc-tls",
        action="store_true",
        default=False,
        env_var="LOCUST_GRPC_TLS",
        help="GrpcUser calls --grpc-target over TLS (a TLS-terminating proxy or ingress in front "
        "of the service); default: plaintext, as the service serves gRPC",
    )
    parser.add_argument(
        "--grpc-root-certificates",
        default="",
        env_var="LOCUST_GRPC_ROOT_CERTIFICATES",
        help="with --grpc-tls: PEM file of the CA certificates to trust (a private CA); "
        "default: gRPC's bundled public roots",
    )
    parser.add_argument(
        "--grpc-server-name",
        default="",
        env_var="LOCUST_GRPC_SERVER_NAME",
        help="with --grpc-tls: the name the server's certificate must hold, also sent as SNI, "
        "when --grpc-target does not name it (an IP address, a port-forward); default: "
        "--grpc-target's host",
    )


class GrpcTls:
    """How GrpcUser secures its channel: the credentials and the TLS server name override."""

    def __init__(self, root_certificates: bytes | None, server_name: str) -> None:
        self.credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
        self.server_name = server_name


def grpc_tls(options: Any) -> GrpcTls | None:
    """The TLS of --grpc-tls and its options; None for plaintext (the default)."""
    if not options.grpc_tls:
        # Silently plaintext would call a TLS port in clear text: every call a confusing failure.
        for name in ("grpc_root_certificates", "grpc_server_name"):
            if getattr(options, name):
                raise ValueError(f"--{name.replace('_', '-')} needs --grpc-tls")
        return None
    roots = None
    if options.grpc_root_certificates:
        path = Path(options.grpc_root_certificates)
        try:
            roots = path.read_bytes()
        except OSError as exc:
            raise ValueError(f"--grpc-root-certificates: cannot read {path}: {exc}") from None
        # Anything else (a key, a DER file) fails only at the handshake, as an untrusted server.
        if b"-----BEGIN CERTIFICATE-----" not in roots:
            raise ValueError(f"--grpc-root-certificates: {path} holds no PEM certificate")
    return GrpcTls(roots, options.grpc_server_name)


# A missing certificate file or a TLS option without --grpc-tls fails at start, not user by user.
OPTION_CHECKS.append(grpc_tls)


class V2RestUser(FastHttpUser):
    """Batches of --batch-size instances to ``POST /v2/models/<model>/infer``."""

    wait_time = constant(0)

    def on_start(self) -> None:
        self.target: Target = target(self.environment)
        self.model = self.target.contract.model_name
        pace(self)
        metadata = self.client.get(f"/v2/models/{self.model}", name="/v2/models/[model]")
        self.shapes = _shapes(orjson.loads(metadata.content)) if metadata.status_code == 200 else {}

    @task
    def infer(self) -> None:
        size = self.environment.parsed_options.batch_size
        instances = self.target.payloads.instances(size)
        body = orjson.dumps({"inputs": v2_inputs(self.target.contract, instances, self.shapes)})
        with self.client.post(
            f"/v2/models/{self.model}/infer",
            data=body,
            headers=JSON_HEADERS,
            name=f"/v2/models/[model]/infer [{size}]",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(response_failure(response))
                return
            try:
                answer = orjson.loads(response.content)
            except orjson.JSONDecodeError:
                answer = None
            if v2_output_rows(answer) != size:
                response.failure(f"expected outputs for {size} instances")


class GrpcClient(triton_grpc.InferenceServerClient):
    """tritonclient's gRPC client, with a connection of its own, closed once.

    gRPC shares one connection among all the channels of a process that have the same target and
    arguments: every user would send on one connection, so to one worker of the server (the
    workers share GRPC_PORT, and the kernel spreads connections, not calls). A local subchannel
    pool gives each user its own connection, as each HTTP user has its own.

    tritonclient's ``__del__`` closes the channel again. At interpreter exit, with gevent's loop
    gone, that second close can block forever on a gRPC lock: locust printed its report and its
    exit code, and never exited.
    """

    _closed = False

    def __init__(self, url: str, tls: GrpcTls | None = None) -> None:
        keepalive = triton_grpc.KeepAliveOptions()
        # channel_args replaces tritonclient's own: its defaults, then the pool of our own.
        channel_args = [
            ("grpc.max_send_message_length", triton_grpc.MAX_GRPC_MESSAGE_SIZE),
            ("grpc.max_receive_message_length", triton_grpc.MAX_GRPC_MESSAGE_SIZE),
            ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
            ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
            ("grpc.use_local_subchannel_pool", 1),
        ]
        if tls is None:
            super().__init__(url, channel_args=channel_args)
            return
        if tls.server_name:
            channel_args.append(("grpc.ssl_target_name_override", tls.server_name))
        super().__init__(url, creds=tls.credentials, channel_args=channel_args)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            super().close()


class GrpcCallFailed(Exception):
    """A failed gRPC call, with its status and message (what the failures report shows)."""


class GrpcUser(User):
    """Batches of --batch-size instances to ``inference.GRPCInferenceService/ModelInfer``.

    The model's metadata (its input shapes) is read by the first task, and again by the next one
    after a failure: a server that does not answer, or a TLS handshake refused, is then a failed
    ``ModelMetadata`` request in the stats, with its reason, and the user goes on when the
    server does. Read in ``on_start``, a failure killed the user with nothing counted.
    """

    wait_time = constant(0)

    def on_start(self) -> None:
        self.target: Target = target(self.environment)
        self.model = self.target.contract.model_name
        pace(self)
        options = self.environment.parsed_options
        # Made last, so that nothing fails after it: locust does not call on_stop then.
        self.client = GrpcClient(options.grpc_target, grpc_tls(options))
        self.shapes: dict[str, list[int]] | None = None

    def on_stop(self) -> None:
        self.client.close()

    @task
    def infer(self) -> None:
        if self.shapes is None:
            self.shapes = self._model_shapes()
            if self.shapes is None:
                return
        size = self.environment.parsed_options.batch_size
        instances = self.target.payloads.instances(size)
        inputs = []
        for tensor in v2_inputs(self.target.contract, instances, self.shapes):
            value = triton_grpc.InferInput(tensor["name"], tensor["shape"], tensor["datatype"])
            array = np.array(tensor["data"], dtype=_NUMPY_TYPES[tensor["datatype"]])
            value.set_data_from_numpy(array.reshape(tensor["shape"]))
            inputs.append(value)
        started = time.perf_counter()
        exception: Exception | None = None
        length = 0
        try:
            result = self.client.infer(self.model, inputs)
            response = result.get_response()
            length = response.ByteSize()
            shape = response.outputs[0].shape if response.outputs else []
            if not shape or shape[0] != size:
                raise AssertionError(f"expected outputs for {size} instances")
        except InferenceServerException as exc:
            # Its repr, which locust reports, is "InferenceServerException()": name the reason.
            exception = GrpcCallFailed(str(exc))
        except AssertionError as exc:
            exception = exc
        events.request.fire(
            request_type="grpc",
            name=f"ModelInfer [{size}]",
            response_time=(time.perf_counter() - started) * 1000,
            response_length=length,
            exception=exception,
            context={},
        )

    def _model_shapes(self) -> dict[str, list[int]] | None:
        """The model's input shapes, from a ``ModelMetadata`` call counted in the stats."""
        started = time.perf_counter()
        exception: Exception | None = None
        shapes = None
        length = 0
        try:
            metadata = self.client.get_model_metadata(self.model)
            length = metadata.ByteSize()
            shapes = {tensor.name: [int(d) for d in tensor.shape] for tensor in metadata.inputs}
        except InferenceServerException as exc:
            exception = GrpcCallFailed(str(exc))
        events.request.fire(
            request_type="grpc",
            name="ModelMetadata",
            response_time=(time.perf_counter() - started) * 1000,
            response_length=length,
            exception=exception,
            context={},
        )
        return shapes


def _shapes(metadata: dict[str, Any]) -> dict[str, list[int]]:
    """Per-input shapes of a v2 model metadata answer (``-1`` = batch dimension)."""
    shapes = {}
    for tensor in metadata.get("inputs", []):
        shapes[tensor["name"]] = [int(d) for d in tensor.get("shape", [-1])]
    return shapes
