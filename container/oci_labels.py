"""The OCI labels (``org.opencontainers.image.*``) of the image built from a bento, as
``bentoml containerize`` options: one ``label=KEY=VALUE`` per line, each to follow ``--opt``.

Run by ``make image`` (and the container test) with the bento's tag:
``python container/oci_labels.py credit_risk_service:<version> [--git-dir DIR]``.

Why options rather than ``LABEL`` lines in the Dockerfile: BentoML 1.4 generates the Dockerfile of
a new-style service from its own template and ignores ``docker.dockerfile_template`` unless it
falls back to the old bento format (another Dockerfile, pip instead of uv), and its template
writes no label. Every containerize backend takes ``--label``; ``--opt label=...`` passes it on.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

PREFIX = "org.opencontainers.image."


def _git(git_dir: Path, *args: str) -> str | None:
    """Output of a git command in ``git_dir``; None outside a checkout or without git."""
    try:
        result = subprocess.run(
            ["git", "-C", str(git_dir), *args], capture_output=True, text=True, timeout=30
        )
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    return (result.stdout.strip() or None) if result.returncode == 0 else None


def _public_url(remote: str) -> str:
    """The remote without credentials: an HTTPS remote may carry a token (``user:token@``)."""
    parts = urlsplit(remote)
    if parts.scheme in ("http", "https") and "@" in parts.netloc:
        return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
    return remote


def labels(bento_tag: str, git_dir: Path | None) -> dict[str, str]:
    """The labels of ``bento_tag`` (in the current BENTOML_HOME); revision and source from the
    git checkout ``git_dir``, when it is one (a build from an export has none)."""
    import bentoml  # late: --help needs no BentoML

    bento = bentoml.get(bento_tag)
    found = {
        "title": bento.tag.name,
        "version": str(bento.tag.version),
        # The bento's creation, not the image's: rebuilding one bento gives the same labels.
        "created": bento.info.creation_time.isoformat(),
    }
    if git_dir is not None:
        if revision := _git(git_dir, "rev-parse", "HEAD"):
            found["revision"] = revision
        if remote := _git(git_dir, "remote", "get-url", "origin"):
            found["source"] = _public_url(remote)
    return {PREFIX + key: value for key, value in found.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bento", help="the bento's tag, NAME:VERSION")
    parser.add_argument(
        "--git-dir", type=Path, default=Path.cwd(), help="the checkout it was built from"
    )
    args = parser.parse_args(argv)
    for key, value in labels(args.bento, args.git_dir).items():
        print(f"label={key}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
