"""The combination matrix: front (the era bridge among them) x policy x upstream kind x observe (dumps,
traces, JSON logs) x auth,
one canonical scenario per cell (tests/matrix_scenario.py). Every pair of axis values runs by
default; the whole product runs under the `slow` marker, which .ci/run runs too. A new feature adds its axis here."""
from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from matrix_scenario import AXES, Cell, UrlServer, pairwise, run_cell
from otlp_receiver import OtlpReceiver

# The era bridge's cells run with everything observable on (dumps, traces, JSON logs): where the
# bridge's frames go is what they check beside the policy.
PAIRWISE = list(dict.fromkeys(cell if "bridge" not in cell[0] else (*cell[:3], "on", cell[4])
                              for cell in pairwise(AXES)))
REST = [cell for cell in itertools.product(*AXES) if cell not in PAIRWISE]



def _url_server(tmp_path_factory: pytest.TempPathFactory, flag: str) -> Iterator[str]:
    server = UrlServer(tmp_path_factory.mktemp(f"url-upstream{flag}"), flag)
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def legacy_url_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The HTTP echo fixture speaking only the legacy era: the http-bridge front's url upstream."""
    yield from _url_server(tmp_path_factory, "--legacy-only")


@pytest.fixture(scope="module")
def modern_url_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The HTTP echo fixture speaking only the modern era: the legacy-bridge fronts' url upstream."""
    yield from _url_server(tmp_path_factory, "--modern-only")


def _run(cell: tuple[str, ...], tmp_path: Path, url_server: str, legacy_url_server: str, modern_url_server: str,
         monkeypatch: pytest.MonkeyPatch) -> None:
    front, policy, upstream, observe, auth = cell
    c = Cell(front, policy, upstream, observe, tmp_path, url_server=url_server, auth=auth,
             legacy_url_server=legacy_url_server, modern_url_server=modern_url_server)
    if observe != "on":
        run_cell(c)
        return
    c.receiver = OtlpReceiver()        # the gateway's spans, exported as in production (OTLP/HTTP, batched)
    for name, value in (("OTEL_EXPORTER_OTLP_ENDPOINT", c.receiver.endpoint), ("OTEL_BSP_SCHEDULE_DELAY", "50")):
        monkeypatch.setenv(name, value)
    for name in ("OTEL_SERVICE_NAME", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    try:
        run_cell(c)
    finally:
        c.receiver.stop()


@pytest.mark.parametrize("cell", PAIRWISE, ids=["-".join(c) for c in PAIRWISE])
def test_pairwise(cell: tuple[str, ...], tmp_path: Path, url_server: str, legacy_url_server: str,
                  modern_url_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _run(cell, tmp_path, url_server, legacy_url_server, modern_url_server, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("cell", REST, ids=["-".join(c) for c in REST])
def test_rest_of_the_matrix(cell: tuple[str, ...], tmp_path: Path, url_server: str, legacy_url_server: str,
                            modern_url_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _run(cell, tmp_path, url_server, legacy_url_server, modern_url_server, monkeypatch)
