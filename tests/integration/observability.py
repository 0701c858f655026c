"""Real Prometheus and node_exporter (Debian packages `prometheus`, `prometheus-node-exporter`),
each started by a test on a free loopback port with its own configuration and data directory,
and stopped by PID (never the packaged service)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

import helpers

PROMETHEUS = "prometheus"
NODE_EXPORTER = "prometheus-node-exporter"
PROMTOOL = "promtool"
RULES = helpers.REPO_ROOT / "collection" / "prometheus" / "fleetpki.rules.yml"
RULES_TEST = helpers.REPO_ROOT / "collection" / "prometheus" / "fleetpki.rules.test.yml"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run scripts/system-packages (as root) to install it")
    return path


class Process:
    """A server of the test, its output in a file; stopped by its own PID."""

    def __init__(self, argv: list[str], log: Path):
        self.argv = argv
        self.log = log
        self._out = log.open("wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._out, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._out.close()


def get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", errors="replace")
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, ""


def wait_ready(process: Process, url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.proc.poll() is not None:
            pytest.fail(f"{process.argv[0]} exited with {process.proc.returncode}:\n{process.output()}")
        if get(url)[0] == 200:
            return
        time.sleep(0.2)
    pytest.fail(f"{process.argv[0]} did not answer {url} within {timeout} s:\n{process.output()}")


def start_node_exporter(textfile_dir: Path, log_dir: Path) -> tuple[Process, str]:
    """node_exporter with only its textfile collector; returns (process, host:port)."""
    address = f"127.0.0.1:{helpers.free_port()}"
    process = Process(
        [
            tool(NODE_EXPORTER),
            f"--web.listen-address={address}",
            "--collector.disable-defaults",
            "--collector.textfile",
            f"--collector.textfile.directory={textfile_dir}",
        ],
        log_dir / f"node-exporter-{address.rsplit(':', 1)[1]}.log",
    )
    wait_ready(process, f"http://{address}/metrics")
    return process, address


def start_prometheus(directory: Path, jobs: dict[str, list[str]], rules: list[Path]) -> tuple[Process, str]:
    """Prometheus scraping `jobs` (job name -> host:port targets) every second and evaluating
    `rules` every second; returns (process, base URL)."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(r) for r in rules],
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]} for job, targets in jobs.items()],
    }
    # JSON is YAML: no YAML writer needed.
    config_path = directory / "prometheus.yml"
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    address = f"127.0.0.1:{helpers.free_port()}"
    process = Process(
        [
            tool(PROMETHEUS),
            f"--config.file={config_path}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address={address}",
        ],
        directory / "prometheus.log",
    )
    base = f"http://{address}"
    wait_ready(process, f"{base}/-/ready")
    return process, base


def query(base: str, promql: str) -> list[dict[str, Any]]:
    status, body = get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
    assert status == 200, f"query {promql!r}: HTTP {status}: {body}"
    return json.loads(body)["data"]["result"]


def firing_alerts(base: str) -> list[dict[str, Any]]:
    status, body = get(f"{base}/api/v1/alerts")
    assert status == 200, f"alerts: HTTP {status}: {body}"
    return [a for a in json.loads(body)["data"]["alerts"] if a["state"] == "firing"]


def wait_targets_up(base: str, count: int, prometheus: Process, timeout: float = 60.0) -> None:
    """Until Prometheus has scraped `count` targets successfully; else fail with their errors."""
    deadline = time.monotonic() + timeout
    targets: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        status, body = get(f"{base}/api/v1/targets")
        if status == 200:
            targets = json.loads(body)["data"]["activeTargets"]
            if len(targets) == count and all(t["health"] == "up" for t in targets):
                return
        time.sleep(0.5)
    health = [(t["scrapeUrl"], t["health"], t.get("lastError")) for t in targets]
    pytest.fail(f"not all {count} targets up within {timeout} s: {health}\n{prometheus.output()}")
