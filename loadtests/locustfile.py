"""Locust scenarios against the HTTP JSON API (``POST /predict``).

    locust -f loadtests/locustfile.py --host http://127.0.0.1:3000 --headless -u 20 -r 10 \
        -t 1m --csv loadtests/reports/mix --html loadtests/reports/mix.html [UserClass ...]

Without class names every class runs, mixed by weight. Payloads come from the served model's
contract (``GET /model``), so the scenarios work for any model. Options (``--batch-size``,
``--user-rps``, ``--drift``, ``--slo-p99-ms``...) are in ``loadtests/common.py`` and the table
of docs/benchmarks.md: ``locust --help`` prints before loading a locustfile, without them. The
Open Inference Protocol users are in ``locustfile_v2.py``.
"""

from __future__ import annotations

from typing import Any

import orjson
from locust import FastHttpUser, constant, task
from locust.contrib.fasthttp import ResponseContextManager

from loadtests.common import JSON_HEADERS, Target, pace, response_failure, target


class PredictUser(FastHttpUser):
    abstract = True
    # Per-user pacing; as fast as the server answers with --user-rps 0.
    wait_time = constant(0)

    def on_start(self) -> None:
        self.target: Target = target(self.environment)
        pace(self)

    def predict(self, instances: list[dict[str, Any]], name: str) -> None:
        """POST the instances; anything but 200 with one prediction per instance fails."""
        body = orjson.dumps({"instances": instances})
        with self.client.post(
            "/predict", data=body, headers=JSON_HEADERS, name=name, catch_response=True
        ) as response:
            check_predictions(response, len(instances), self.target.contract.score_name)


def check_predictions(response: ResponseContextManager, n: int, score_name: str) -> None:
    if response.status_code != 200:
        response.failure(response_failure(response))
        return
    try:
        predictions = orjson.loads(response.content)["predictions"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        response.failure("the answer is not a predictions object")
        return
    if len(predictions) != n or score_name not in predictions[0]:
        response.failure(f"expected {n} predictions with {score_name}, got {len(predictions)}")


class SteadyUser(PredictUser):
    """Single-instance requests sampled from the data, at --user-rps each."""

    weight = 10

    @task
    def single(self) -> None:
        self.predict(self.target.payloads.instances(1), "/predict [1]")


class BatchUser(PredictUser):
    """Batches of --batch-size instances."""

    weight = 2

    @task
    def batch(self) -> None:
        size = self.environment.parsed_options.batch_size
        self.predict(self.target.payloads.instances(size), f"/predict [{size}]")


class DriftedUser(PredictUser):
    """Single instances with --drift applied: valid traffic the drift monitoring must flag."""

    weight = 1

    @task
    def drifted(self) -> None:
        instances = self.target.drift.instances(self.target.payloads, 1)
        self.predict(instances, "/predict [1] drifted")


class InvalidUser(PredictUser):
    """Payloads breaking one contract rule each; the refusal must be the expected 4xx.

    A 2xx or a 5xx fails, and so does a 4xx that does not name the broken instance and field.
    """

    weight = 1

    @task
    def invalid(self) -> None:
        case = self.target.payloads.rng.choice(self.target.invalid)
        with self.client.post(
            "/predict",
            data=case.body,
            headers=JSON_HEADERS,
            name=f"/predict invalid:{case.reason}",
            catch_response=True,
        ) as response:
            try:
                answer = orjson.loads(response.content or b"null")
            except orjson.JSONDecodeError:
                answer = None
            if case.matches(response.status_code, answer):
                response.success()
            else:
                got = response_failure(response)
                response.failure(
                    f"expected HTTP {case.status} {case.reason} at instance {case.instance} "
                    f"field {case.field!r}; got {got}"
                )
