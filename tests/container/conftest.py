"""Fixtures of the container tests: the image built the standard way, and containers of it.

Every test here is marked ``container`` (deselected by default; ``make test-container`` runs them).
They need root, buildah, podman, runc and debootstrap (``make container-tools`` installs them).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from tests.container.oci import BENTO_USER_UID, Container, Oci, StartContainer, missing_tools
from tests.support import ROOT, VENV_BIN, build_bento, free_port, oci_label_options


@pytest.fixture(scope="session")
def oci() -> Oci:
    if missing := missing_tools():
        pytest.fail(f"missing {', '.join(missing)}: run `make container-tools` (as root)")
    if os.geteuid() != 0:
        pytest.fail("the container tests run rootful buildah/podman and debootstrap: run as root")
    oci = Oci()
    oci.remove_leftovers()
    return oci


@pytest.fixture(scope="session")
def image(oci: Oci, model_tag: str) -> str:
    """`bentoml build`, then `bentoml containerize credit_risk_service:latest` with the OCI
    labels `make image` gives it; the image name.

    Keeps the image afterwards: it is the build cache of the next run.
    """
    with oci.build_context(ROOT) as context:
        bento = build_bento(context)
        assert bento.startswith("credit_risk_service:")
        # As `make image` runs it; the copy has no .git, so revision and source are ROOT's.
        labels = oci_label_options(bento, "--git-dir", str(ROOT), context=context)
        # `latest` is the bento just built: the test's BENTOML_HOME is its own.
        oci.containerize(
            "credit_risk_service:latest",
            bentoml=VENV_BIN / "bentoml",
            options=[item for label in labels for item in ("--opt", label)],
        )
    image = f"localhost/{bento}"
    assert oci.image_exists(image)
    oci.remove_other_images(keep=image)
    return image


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A host directory to mount as the image's data volume, writable by its `bentoml` user."""
    path = tmp_path / "data"
    path.mkdir()
    os.chown(path, BENTO_USER_UID, BENTO_USER_UID)
    return path


@pytest.fixture
def start_container(oci: Oci, image: str, data_dir: Path) -> Iterator[StartContainer]:
    """Start containers of the image (ready on /readyz); removes them all whatever happens."""
    started: list[Container] = []

    def start(env: Mapping[str, str] | None = None, run_flags: Sequence[str] = ()) -> Container:
        container = Container(
            oci,
            image,
            data_dir=data_dir,
            http_port=free_port(),
            grpc_port=free_port(),
            env=env,
            run_flags=run_flags,
        )
        started.append(container)
        return container.start()

    yield start
    for container in started:
        container.remove()
