"""Regenerates ``service/oip/generated/`` from ``service/oip/proto/grpc_predict_v2.proto``.

Run by ``make proto`` (needs the dev dependency ``grpcio-tools``); a unit test checks that the
committed files equal a fresh generation. Two edits follow protoc's output, each asserted so that a
protoc release which changes its output fails here rather than producing subtly different code:

- the messages are registered in a private descriptor pool instead of protobuf's process-wide
  default one. tritonclient, MLServer and KServe register the same ``inference.*`` names in the
  default pool, and a second registration fails with "duplicate symbol" (kserve/kserve#3099,
  triton-inference-server/client#730): without this edit the service could not import
  tritonclient (e.g. to call a Triton server), nor could our tests.
- the stubs import the messages relatively, as a package member.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
PROTO = PACKAGE / "proto" / "grpc_predict_v2.proto"
GENERATED = PACKAGE / "generated"
STEM = PROTO.stem

_EDITS: dict[str, list[tuple[str, str]]] = {
    f"{STEM}_pb2.py": [
        (
            "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile(",
            "# Private pool, not Default(): see service/oip/codegen.py.\n"
            "DESCRIPTOR = _descriptor_pool.DescriptorPool().AddSerializedFile(",
        )
    ],
    f"{STEM}_pb2_grpc.py": [
        (f"\nimport {STEM}_pb2 as ", f"\nfrom . import {STEM}_pb2 as "),
    ],
}


def generate(out: Path) -> list[Path]:
    """Write the stubs into ``out``; return the files written."""
    from grpc_tools import protoc  # dev dependency: imported only when generating

    args = [
        "grpc_tools.protoc",
        f"-I{PROTO.parent}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        PROTO.name,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO}")
    for name, edits in _EDITS.items():
        path = out / name
        text = path.read_text()
        for old, new in edits:
            if text.count(old) != 1:
                raise RuntimeError(f"{name}: expected exactly one {old!r}; has protoc changed?")
            text = text.replace(old, new)
        path.write_text(text)
    return sorted(out.glob(f"{STEM}_pb2*"))


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        for path in generate(Path(tmp)):
            (GENERATED / path.name).write_text(path.read_text())
            print(f"wrote {(GENERATED / path.name).relative_to(PACKAGE.parent.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
