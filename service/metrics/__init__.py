"""Prometheus metrics of the service: requests, model health, the prediction log, the process.

Names and labels are a public interface (dashboards and alert rules are built on them);
docs/metrics-and-traces.md lists them. All label values are bounded: transports, endpoints and
status codes of our own routes, contract feature names, the ``Reason`` vocabulary, the model's
two labels.

BentoML serves ``/metrics`` from whichever worker gets the scrape and merges every worker's values
through prometheus_client's multiprocess mode, in which only values written when they change are
exported. Everything here is therefore push-style and created inside the worker (each class
creates its metrics when constructed, by the service's ``__init__``; importing this package
creates none): counters and histograms sum over workers; each gauge declares how workers combine
(``livesum``, ``livemax``...). The service passes ``registry=None`` (service/service.py says why);
tests pass a fresh ``CollectorRegistry``.

One module per family, by where its numbers come from:

- ``requests``: request metrics from the one event per answered request, and model-health
  metrics from each merged model call (:class:`ServiceMetrics`), buffered off the request path;
- ``predlog``: prediction-log metrics from its observer interface (:class:`PredictionLogMetrics`);
- ``drift``: drift metrics from the latest drift run in the store, which every worker reads
  (:class:`DriftMetrics`): the same values in every worker and replica;
- ``process``: process metrics (CPU, memory, file descriptors) from a sampler thread, because the
  default process collector does not work in multiprocess mode (:class:`ProcessMetrics`);
- ``traces``: span export metrics, when tracing exports, from the counts the tracing pipeline
  keeps (service/tracing.py) (:class:`TraceMetrics`);
- ``flusher``: the worker's one thread (``flusher.FLUSHER``) that applies the buffered request,
  model-call and span updates every ``REQUEST_FLUSH_SECONDS``, in the same turn as BentoML's
  request metrics (service/bentoml_metrics.py). To replace it (tests do), patch
  ``service.metrics.flusher.FLUSHER``: it is deliberately not re-exported here, where a patch
  would change a second reference that nothing reads.
"""

from service.metrics.drift import DriftMetrics
from service.metrics.flusher import REQUEST_FLUSH_SECONDS, Flusher, observe_many
from service.metrics.predlog import PredictionLogMetrics
from service.metrics.process import PROCESS_SAMPLE_SECONDS, ProcessMetrics
from service.metrics.requests import LATENCY_BUCKETS, ServiceMetrics
from service.metrics.traces import TraceMetrics

__all__ = [
    "LATENCY_BUCKETS",
    "PROCESS_SAMPLE_SECONDS",
    "REQUEST_FLUSH_SECONDS",
    "DriftMetrics",
    "Flusher",
    "PredictionLogMetrics",
    "ProcessMetrics",
    "ServiceMetrics",
    "TraceMetrics",
    "observe_many",
]
