"""Generated from ``service/oip/proto/grpc_predict_v2.proto`` by ``make proto``; do not edit.

The messages live in a private descriptor pool (``grpc_predict_v2_pb2.DESCRIPTOR.pool``), not in
protobuf's default one; ``service/oip/codegen.py`` says why.
"""
