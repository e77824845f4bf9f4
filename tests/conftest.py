"""Session fixtures: an isolated BentoML home with a freshly trained model, and a served process.

BENTOML_HOME is set before anything imports bentoml, so tests never touch the user's model store.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest

os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="bentoml-home-")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
# In-process services (TestClient) start their gRPC server on a free port (served ones get their
# own), never on `make`'s exported 3001, which other runs on the machine would share.
os.environ["GRPC_PORT"] = "0"
# The prediction log of in-process and served tests goes to a throwaway directory, not ./var.
os.environ.setdefault("PREDICTION_LOG_URL", f"sqlite:///{tempfile.mkdtemp()}/predictions.db")
os.environ.setdefault("PREDICTION_LOG_SPOOL_DIR", tempfile.mkdtemp(prefix="predlog-spool-"))
# Drift runs a child process importing Evidently (seconds of CPU): off for the suite, on in the
# drift tests (tests/drift), which set it for the services they start.
os.environ.setdefault("DRIFT_ENABLED", "false")
os.environ.setdefault("DRIFT_SNAPSHOT_DIR", tempfile.mkdtemp(prefix="drift-snapshots-"))

from tests.support import ServedService, scrape, total, wait_until


@pytest.fixture(scope="session")
def model_tag() -> str:
    """Train and register the example model in the test store; its tag."""
    import bentoml

    from models import train

    assert train.main([]) == 0
    return str(bentoml.models.get(f"{train.CONTRACT.model_name}:latest").tag)


@pytest.fixture(scope="session")
def served(model_tag: str) -> Iterator[ServedService]:
    """A `bentoml serve` of the project with 2 workers, shared by the integration tests; both
    workers up (/readyz answers once one is: tests of connections spread over the workers need
    the second)."""
    with ServedService(workers=2) as service:
        wait_until(lambda: total(scrape(service.url), "service_workers") == 2, timeout=120)
        yield service
