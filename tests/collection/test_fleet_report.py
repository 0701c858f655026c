"""The fleet certificate report (playbook fleetpki.mtls.report) over a real fleet enrolled by the
site playbook: headless Chromium, with no network at all, renders the page; the DOM it rendered
lists every node in expiry order, the overdue one marked; a screenshot is taken."""

from __future__ import annotations

import datetime as dt
import html.parser
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import helpers
from collection_helpers import assert_run_ok, play_recap, run, tool

NODES = 4


class Rows(html.parser.HTMLParser):
    """The report's table rows and timeline rows, in document order, from the rendered DOM."""

    def __init__(self):
        super().__init__()
        self.rows: list[dict[str, str]] = []
        self.timeline: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and "node" in (a.get("class") or "").split():
            self.rows.append(a)
        if tag == "g" and a.get("class") == "timeline-row":
            self.timeline.append(a["data-host"])


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("chromium is not installed: run scripts/system-packages (as root) to install it")


def render(page: Path, out: Path) -> tuple[str, Path]:
    """Chromium's DOM of `page` and a screenshot, in a network namespace with no interface up."""
    offline = ["unshare", "--net"] if os.geteuid() == 0 else ["unshare", "--map-root-user", "--net"]
    common = [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        f"--user-data-dir={out / 'chromium-profile'}", "--window-size=1280,720",
    ]
    dom = subprocess.run([*offline, *common, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0 and "</html>" in dom.stdout, f"chromium failed: {dom.stderr[-2000:]}"
    shot = out / "report.png"
    taken = subprocess.run(
        [*offline, *common, f"--screenshot={shot}", page.as_uri()], capture_output=True, text=True, timeout=120
    )
    assert taken.returncode == 0 and shot.is_file() and shot.stat().st_size > 10_000, taken.stderr[-2000:]
    return dom.stdout, shot


# The page and the playbook do not change with ansible-core: one leg of the matrix is enough.
@pytest.mark.one_leg
def test_report_lists_every_node_in_expiry_order_as_chromium_renders_it(make_fleet, tmp_path):
    fleet = make_fleet(NODES)
    assert_run_ok(fleet.site())
    # Distinct expiries: node2 re-issued for 3 days with a renewal window wider than that (overdue
    # at once), node3 for 10 days.
    assert_run_ok(fleet.site("--limit", "ca1,node2", "-e", "mtls_client_force=true", "-e", "mtls_client_lifetime_days=3",
                             "-e", "mtls_client_renew_before=5d"))
    assert_run_ok(fleet.site("--limit", "ca1,node3", "-e", "mtls_client_force=true", "-e", "mtls_client_lifetime_days=10"))
    before = {h: (n["path"] / "current").resolve() for h, n in fleet.nodes.items()}

    page = tmp_path / "report.html"
    proc = run([tool("ansible-playbook"), "-i", str(fleet.inventory), "fleetpki.mtls.report", "-e", f"fleetpki_report_dest={page}"],
               env=fleet.env, cwd=fleet.dir)
    assert_run_ok(proc)
    assert f"The fleet certificate report is {page}" in proc.stdout
    recap = play_recap(proc.stdout)
    assert all(r["changed"] == 0 for h, r in recap.items() if h in fleet.nodes), recap
    assert {h: (n["path"] / "current").resolve() for h, n in fleet.nodes.items()} == before

    dom, shot = render(page, tmp_path)
    parsed = Rows()
    parsed.feed(dom)
    hosts = [r["data-host"] for r in parsed.rows]
    assert sorted(hosts) == sorted(fleet.nodes), f"the rendered table lists {hosts}"
    not_after = {h: helpers.load_cert(n["path"] / "current" / "cert.pem").not_valid_after_utc for h, n in fleet.nodes.items()}
    assert [not_after[h] for h in hosts] == sorted(not_after.values()), f"not in expiry order: {hosts}"
    assert hosts[:2] == ["node2", "node3"], hosts
    for row in parsed.rows:
        rendered = dt.datetime.strptime(row["data-not-after"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
        assert rendered == not_after[row["data-host"]], row
    states = {r["data-host"]: r["data-state"] for r in parsed.rows}
    assert states == {"node1": "ok", "node2": "overdue", "node3": "ok", "node4": "ok"}, states
    assert parsed.timeline == hosts, "the timeline is not in the table's order"
    (tmp_path / "screenshot-path.txt").write_text(str(shot))
    print(f"report screenshot: {shot}")
