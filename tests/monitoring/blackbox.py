"""A real blackbox exporter (Debian's prometheus-blackbox-exporter) on loopback, with the
committed monitoring/blackbox/blackbox.yml, and its probes as the tests read them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.monitoring.support import BLACKBOX_YML, tool
from tests.support import start_on_a_free_port


def start_blackbox(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    """The exporter on a free loopback port, its log in ``work``; the process and its port."""
    return start_on_a_free_port(
        lambda port: [
            tool("prometheus-blackbox-exporter"),
            f"--config.file={BLACKBOX_YML}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        work / "blackbox.log",
        ready_path="/-/healthy",
    )


def probe(exporter: str, module: str, target: str) -> dict[str, float]:
    """One probe of ``target`` with ``module``, as Prometheus's scrape of the exporter asks for
    it: each sample's name (labels, if any, in braces) and value."""
    answer = httpx.get(f"{exporter}/probe", params={"module": module, "target": target}, timeout=30)
    assert answer.status_code == 200, answer.text
    samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples
