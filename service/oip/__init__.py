"""The Open Inference Protocol (KServe v2): gRPC on GRPC_PORT and v2 REST on the HTTP port.

- ``protocol.py``: the protocol's semantics (metadata, readiness, infer), shared by both
  transports, which only parse and render their wire formats;
- ``tensors.py``: the tensor layout derived from the contract, shared by both transports;
- ``servicer.py``: ``inference.GRPCInferenceService``, a thin adapter around ``protocol.py``;
- ``server.py``: the ``grpc.aio`` server each BentoML worker runs, with health and reflection;
- ``grpc_metrics.py``: Prometheus metrics of gRPC calls (a server interceptor);
- ``outcome.py``: how a gRPC call ended (its status, who cancelled it), for the metrics and
  the servicer alike;
- ``rest.py``: the v2 REST routes;
- ``proto/`` and ``generated/``: the protocol's schema and its stubs, which ``codegen.py``
  regenerates (``make proto``).
"""
