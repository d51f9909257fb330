"""`fleet hub bootstrap` (apps/cli/hub.py) end to end: `fleet up` with the stand-in hub (no users yet), the command
as a subprocess through the router, then the fleet started again with the printed FLEET_HUB_TEAM_TOKENS, where a
team's fleet token reaches the team's new hub user. Real processes on loopback.

The stand-in hub (apps/local/standin_accounts.py) keeps Tabby 0.32's rules for owners and invitations; that the
same GraphQL works against a real Tabby was not run here (docs/DEPLOY.md, The owner and the team users).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .support import fleets
from .support.fleetproc import RunningFleet, run_fleet

FRESH_ENV = {"FLEET_HUB_ROUTER_TOKEN": fleets.HUB_TOKENS["hub"]}  # no stand-in users, no team tokens yet
ME = {"query": "query { me { email name isOwner } }"}
OWNER = "owner@example.com"
ADMIN = fleets.HUB_ADMIN
AS_OWNER = ("--owner-email", OWNER, "--owner-password-stdin", "--team", "frontend")
Run = subprocess.CompletedProcess[str]


def bootstrap(fleet: RunningFleet, *args: str, admin: str | None = ADMIN, stdin: str = "") -> Run:
    """`fleet hub bootstrap` against ``fleet``, as an admin runs it (the admin token in the environment)."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("FLEET_")}
    if admin is not None:
        env["FLEET_ADMIN_TOKEN"] = admin
    argv = ["hub", "bootstrap", "--url", fleet.base_url, "--config", str(fleet.workdir / "fleet.toml"), *args]
    return subprocess.run(
        [sys.executable, "-m", "apps.cli", *argv], input=stdin, capture_output=True, text=True, timeout=120, env=env
    )


def printed_tokens(output: str) -> dict[str, str]:
    found = re.search(r"^  (\{.*\})$", output, re.MULTILINE)
    assert found, output
    return dict(json.loads(found.group(1)))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bootstrap") / "fleet"


@pytest.fixture(scope="module")
def fresh(workdir: Path) -> Iterator[RunningFleet]:
    with run_fleet(workdir, fleets.with_hub(), env=FRESH_ENV) as fleet:
        yield fleet


@pytest.fixture(scope="module")
def first_run(fresh: RunningFleet) -> Run:
    return bootstrap(fresh, "--owner-email", OWNER, "--team", "frontend")


def test_bootstrap_makes_the_owner_and_the_teams_user_and_prints_what_to_do(
    first_run: Run,
) -> None:
    out = first_run.stdout
    assert first_run.returncode == 0, first_run.stderr + out
    assert f"Owner {OWNER} registered" in out and "team frontend: hub user frontend@hub.tabby-fleet created" in out
    password = re.search(r"Its password \(shown once; keep it in your password manager\): (\S+)", out)
    assert password and 8 <= len(password.group(1)) <= 20
    tokens = printed_tokens(out)
    assert list(tokens) == ["frontend"] and tokens["frontend"].startswith("auth_")
    assert "modal secret create tabby-fleet-hub" in out and "--force" in out
    assert f"FLEET_HUB_TEAM_TOKENS='{json.dumps(tokens)}' fleet up" in out
    assert "Seats: 2 used of 5 (Tabby licence COMMUNITY, OK); [hub] licence_seats = 5." in out
    assert fleets.HUB_ADMIN not in out + first_run.stderr


def test_a_second_bootstrap_says_the_owner_exists_and_how_to_log_in_as_it(fresh: RunningFleet, first_run: Run) -> None:
    again = bootstrap(fresh, "--owner-email", OWNER, "--team", "frontend")
    assert again.returncode == 1 and again.stdout == ""
    assert "the hub already has an owner" in again.stderr and "--owner-password-stdin" in again.stderr


def test_as_the_owner_an_existing_team_is_reported_and_no_token_is_shown_again(
    fresh: RunningFleet, first_run: Run
) -> None:
    password = re.search(r"manager\): (\S+)", first_run.stdout)
    assert password
    again = bootstrap(
        fresh, "--owner-email", OWNER, "--owner-password-stdin", "--team", "frontend", stdin=password.group(1) + "\n"
    )
    assert again.returncode == 0, again.stderr
    assert "its hub user frontend@hub.tabby-fleet exists already" in again.stdout
    assert "No new hub user" in again.stdout and "auth_" not in again.stdout
    wrong = bootstrap(
        fresh, "--owner-email", OWNER, "--owner-password-stdin", "--team", "frontend", stdin="Wr0ng-pass\n"
    )
    assert wrong.returncode == 1 and 'the hub refused tokenAuth: "Invalid email address or password"' in wrong.stderr


def test_the_hub_authorization_header_from_a_team_is_refused_and_never_reaches_the_hub(fresh: RunningFleet) -> None:
    with fresh.client(headers={"Authorization": f"Bearer {fleets.HUB_TOKENS['frontend']}",
                               "X-Fleet-Hub-Authorization": "Bearer auth_someone"}) as client:  # fmt: skip
        refused = client.post("/graphql", json=ME)
        completion = client.post("/v1/completions", json={"language": "python", "segments": {"prefix": "x"}})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "hub-header-admin-only"
    assert completion.status_code == 200  # on an entry's path the header is dropped, never forwarded
    with fresh.client() as client:
        seen = client.get("/stand-in/seen").json()
    assert "auth_someone" not in json.dumps(seen)


def test_the_printed_tokens_give_the_team_its_hub_user_through_the_router(
    fresh: RunningFleet, workdir: Path, first_run: Run
) -> None:
    tokens = printed_tokens(first_run.stdout)
    fresh.process.send_signal(2)  # SIGINT: the router stops, and the hub with its last snapshot
    fresh.process.wait(timeout=30)
    env = {**FRESH_ENV, "FLEET_HUB_TEAM_TOKENS": json.dumps(tokens)}
    frontend = {"Authorization": f"Bearer {fleets.HUB_TOKENS['frontend']}"}
    with run_fleet(workdir, fleets.with_hub(), env=env) as again, again.client(headers=frontend) as client:
        me = client.post("/graphql", json=ME)
    assert me.status_code == 200, me.text
    assert me.json()["data"]["me"] == {"email": "frontend@hub.tabby-fleet", "name": "frontend", "isOwner": False}


@pytest.mark.parametrize(
    ("admin", "advice"),
    [
        ("tfa_wrong", "does not take that admin token"),
        (None, "an admin token is needed"),
    ],
)
def test_a_wrong_or_missing_admin_token_is_exit_1_with_advice(tmp_path: Path, admin: str | None, advice: str) -> None:
    with run_fleet(tmp_path / "fleet", fleets.with_hub(), env=FRESH_ENV) as fleet:
        refused = bootstrap(fleet, "--owner-email", OWNER, "--team", "frontend", admin=admin)
        info = httpx.post(
            f"{fleet.base_url}/graphql",
            json={"query": "{ serverInfo { isAdminInitialized } }"},
            headers={"Authorization": f"Bearer {fleets.HUB_ADMIN}"},
        ).json()
    assert refused.returncode == 1 and advice in refused.stderr and refused.stdout == ""
    assert info["data"]["serverInfo"]["isAdminInitialized"] is False  # nothing was registered


def test_no_router_and_a_fleet_without_hub_are_exit_1_with_advice(tmp_path: Path) -> None:
    with run_fleet(tmp_path / "fleet", fleets.guarded(fleets.HUB_ADMIN)) as fleet:
        off = bootstrap(fleet, "--owner-email", OWNER, "--team", "frontend")
        url = fleet.base_url
    assert off.returncode == 1 and "has no hub" in off.stderr and "[hub] enabled = true" in off.stderr
    gone = subprocess.run(
        [sys.executable, "-m", "apps.cli", "hub", "bootstrap", "--url", url, "--admin-token", "x",
         "--owner-email", OWNER, "--team", "frontend", "--config", str(tmp_path / "fleet" / "fleet.toml")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert gone.returncode == 1 and "cannot reach a router" in gone.stderr and "fleet up" in gone.stderr


def test_a_graphql_error_is_quoted(tmp_path: Path) -> None:
    with run_fleet(tmp_path / "fleet", fleets.with_hub(), env=FRESH_ENV) as fleet:
        bad = bootstrap(fleet, *AS_OWNER, stdin="short\n")
    assert bad.returncode == 1
    assert 'the hub refused register: "Password must be between 8 and 20 characters"' in bad.stderr
