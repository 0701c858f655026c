"""Renewal through the site playbook: a fleet inside its renewal window renews on the
next run, each host reloading once; outside it, a run changes nothing and sends nothing."""

from __future__ import annotations

import helpers
from collection_helpers import describe_run, play_recap
from test_collection_site import assert_no_failure

NODES = 3


def serials(fleet) -> dict[str, int]:
    return {h: helpers.load_cert(n["path"] / "current" / "cert.pem").serial_number for h, n in fleet.nodes.items()}


def test_inside_the_window_the_fleet_renews_once_outside_it_nothing_moves(make_fleet, sqs):
    fleet = make_fleet(NODES)
    hosts = {"ca1", *fleet.nodes}
    one_day = ("-e", "mtls_client_lifetime_days=1")

    first = fleet.site(*one_day)
    assert_no_failure(first, play_recap(first.stdout), hosts)
    issued = serials(fleet)
    for host in fleet.nodes:
        fleet.marker(host).unlink()

    # renew_before 2d on 1-day certificates: every node is inside its window now.
    second = fleet.site(*one_day, "-e", "mtls_client_renew_before=2d")
    recap = play_recap(second.stdout)
    assert_no_failure(second, recap, hosts)
    renewed = serials(fleet)
    for host in fleet.nodes:
        assert recap[host]["changed"] > 0, f"{host} did not renew\n{describe_run(second)}"
        assert renewed[host] != issued[host], f"{host} kept its certificate"
        assert fleet.marker(host).exists(), f"{host}: the reload handler did not run after renewal"
        fleet.marker(host).unlink()
        current = fleet.nodes[host]["path"] / "current"
        helpers.assert_openssl_verifies(current / "cert.pem", fleet.root_ca, current / "chain.pem", "sslclient")

    # renew_before 1h: outside the window; nothing is sent, installed or reloaded.
    csr_before = fleet.queues.snapshot(sqs)
    third = fleet.site(*one_day, "-e", "mtls_client_renew_before=1h")
    recap3 = play_recap(third.stdout)
    assert_no_failure(third, recap3, hosts)
    changed = {h: r["changed"] for h, r in recap3.items() if r["changed"]}
    assert not changed, f"a run outside the window changed something: {changed}\n{describe_run(third)}"
    assert serials(fleet) == renewed
    assert not any(fleet.marker(h).exists() for h in fleet.nodes), "a host reloaded outside its window"
    assert fleet.queues.snapshot(sqs) == csr_before, "a request was sent outside the window"
