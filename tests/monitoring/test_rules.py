"""The Prometheus and Alertmanager configuration, checked offline by promtool and amtool.

Every alert has a severity the routing knows, a summary, a description and a runbook section
that exists, and unit tests (`promtool test rules`) that show it firing and staying quiet.
"""

from __future__ import annotations

import re

import pytest

from tests.monitoring.support import (
    ALERTMANAGER_YML,
    HEARTBEAT,
    PROMETHEUS_YML,
    RULE_TESTS,
    RULES,
    RUNBOOK,
    alerts,
    load_yaml,
    run,
    tool,
)


def test_promtool_accepts_the_prometheus_config_and_its_rule_files() -> None:
    result = run(tool("promtool"), "check", "config", PROMETHEUS_YML)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(RULES)} rule files found" in result.stdout


def test_promtool_accepts_the_rules() -> None:
    result = run(tool("promtool"), "check", "rules", *RULES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alert_unit_tests_pass() -> None:
    result = run(tool("promtool"), "test", "rules", *RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        for case in load_yaml(path)["tests"]:
            # a healthy neighbour (job="quiet") in the input is asserted quiet by every exact
            # expectation of the case
            neighbour = any('job="quiet"' in s["series"] for s in case["input_series"])
            for check in case.get("alert_rule_test", []):
                name = check["alertname"]
                if check.get("exp_alerts"):
                    firing.add(name)
                    if neighbour:
                        quiet.add(name)
                else:
                    quiet.add(name)
    names = {a["alert"] for a in alerts()}
    assert names - firing == set(), "alerts never shown firing"
    # the heartbeat fires always: quiet, it would no longer beat
    assert names - quiet == {HEARTBEAT}, "alerts never shown quiet"


def runbook_anchors() -> set[str]:
    headings = re.findall(r"^#+ (.+)$", RUNBOOK.read_text(), flags=re.MULTILINE)
    # GitHub's anchors: lower case, spaces to dashes, punctuation dropped
    return {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}


@pytest.mark.parametrize("alert", alerts(), ids=lambda a: a["alert"])
def test_alert_has_severity_summary_description_and_a_runbook_section(alert: dict) -> None:
    # the heartbeat is for a machine (the dead-man's switch), never a person: severity none
    severities = {"none"} if alert["alert"] == HEARTBEAT else {"page", "ticket"}
    assert alert["labels"]["severity"] in severities
    annotations = alert["annotations"]
    assert annotations["summary"].strip()
    assert annotations["description"].strip()
    path, _, anchor = annotations["runbook_url"].partition("#")
    assert path == "monitoring/RUNBOOK.md"
    assert anchor == alert["alert"].lower()
    assert anchor in runbook_anchors()


def test_amtool_accepts_the_alertmanager_config() -> None:
    result = run(tool("amtool"), "check-config", ALERTMANAGER_YML)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["severity=page", "alertname=ServiceDown"], "page"),
        (["severity=ticket", "alertname=DatasetDriftSustained"], "ticket"),
        (["alertname=Unlabelled"], "ticket"),
    ],
)
def test_alerts_are_routed_by_severity(labels: list[str], receiver: str) -> None:
    assert routed(labels) == receiver


@pytest.mark.parametrize("alert", alerts(), ids=lambda a: a["alert"])
def test_every_alert_reaches_the_receiver_its_severity_names(alert: dict) -> None:
    # with its own labels: a page or a ticket sent to the dead-man's switch would be a mere beat
    labels = [f"alertname={alert['alert']}", *(f"{k}={v}" for k, v in alert["labels"].items())]
    expected = "heartbeat" if alert["alert"] == HEARTBEAT else alert["labels"]["severity"]
    assert routed(labels) == expected


def routed(labels: list[str]) -> str:
    """The receivers (comma-separated) the committed routing sends an alert with ``labels`` to."""
    result = run(
        tool("amtool"), "config", "routes", "test", f"--config.file={ALERTMANAGER_YML}", *labels
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


def test_the_watchdog_goes_to_the_heartbeat_receiver_only_and_often() -> None:
    # Its labels as alerts.yml gives them: a page or a ticket every few minutes would bury the
    # on-call; the switch needs a beat within each of its periods (10 to 15 minutes, typically).
    (watchdog,) = [a for a in alerts() if a["alert"] == HEARTBEAT]
    assert watchdog["expr"].strip() == "vector(1)"
    assert "for" not in watchdog
    labels = [f"alertname={HEARTBEAT}", *(f"{k}={v}" for k, v in watchdog["labels"].items())]
    assert routed(labels) == "heartbeat"
    config = load_yaml(ALERTMANAGER_YML)
    (route,) = [r for r in config["route"]["routes"] if r["receiver"] == "heartbeat"]
    assert route.get("continue", False) is False
    assert parse_duration(route["repeat_interval"]) <= 5 * 60
    assert parse_duration(route["group_interval"]) <= parse_duration(route["repeat_interval"])
    (receiver,) = [r for r in config["receivers"] if r["name"] == "heartbeat"]
    # a "resolved" sent once Prometheus stopped sending it would reach the switch as a beat
    assert all(hook["send_resolved"] is False for hook in receiver["webhook_configs"])


def parse_duration(text: str) -> int:
    """Seconds of a Prometheus duration with one unit (``30s``, ``5m``, ``12h``)."""
    match = re.fullmatch(r"(\d+)([smh])", text)
    assert match, text
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2)]


def test_the_watchdog_neither_inhibits_nor_is_inhibited() -> None:
    # a beat held back would read as the pipeline down; a heartbeat holding back a real alert
    # would hide it always
    for rule in load_yaml(ALERTMANAGER_YML)["inhibit_rules"]:
        assert HEARTBEAT not in " ".join(rule["source_matchers"])
        for matcher in rule["target_matchers"]:
            pattern = re.fullmatch(r'alertname=~"(.+)"', matcher)
            assert pattern, matcher
            assert not re.fullmatch(pattern.group(1), HEARTBEAT)


def inhibited_by(source: str) -> set[str]:
    """The alerts of alerts.yml that the inhibit rule whose source is ``source`` holds back,
    within the same job."""
    (rule,) = [
        r
        for r in load_yaml(ALERTMANAGER_YML)["inhibit_rules"]
        if r["source_matchers"] == [f'alertname="{source}"']
    ]
    assert rule["equal"] == ["job"]
    (matcher,) = rule["target_matchers"]
    pattern = re.fullmatch(r'alertname=~"(.+)"', matcher)
    assert pattern
    return {a["alert"] for a in alerts() if re.fullmatch(pattern.group(1), a["alert"])}


def test_service_job_down_inhibits_only_alerts_that_exist_and_are_its_symptoms() -> None:
    # the whole job down, not one instance (ServiceDown): that would hide the job-wide alerts
    # of the healthy replicas
    names = {a["alert"] for a in alerts()}
    inhibited = inhibited_by("ServiceJobDown")
    # the job's own outage (one page, not one more per instance) and the model's drift (read
    # from a shared store) stay visible; the heartbeat is no symptom of anything, and a beat
    # held back would read as the alerting pipeline down; the blackbox exporter down is no
    # symptom of the service's outage (the exporter's own job, its own ticket)
    assert inhibited == names - {
        "ServiceJobDown",
        "DatasetDriftSustained",
        "PredictionDrift",
        "BlackboxExporterDown",
        HEARTBEAT,
    }


def test_the_store_down_inhibits_what_follows_from_it_but_not_lost_rows() -> None:
    # the log's backlog and the drift runs (claimed and read in the same store, their window
    # starved of the rows not written) follow from it; rows dropped once the spool is full are
    # data lost, notified on their own
    assert inhibited_by("PredictionLogStoreDown") == {
        "PredictionLogLagging",
        "DriftMonitorStale",
        "DriftMonitorFailing",
        "DriftStarved",
    }
