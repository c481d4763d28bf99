"""The combination matrix: front x policy x upstream kind x dumps x auth, one canonical scenario per cell
(tests/matrix_scenario.py). Every pair of axis values runs by default; the whole product runs under
the `slow` marker, which .ci/run runs too. A new feature adds its axis here."""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from matrix_scenario import AXES, Cell, pairwise, run_cell

PAIRWISE = pairwise(AXES)
REST = [cell for cell in itertools.product(*AXES) if cell not in PAIRWISE]



def _run(cell: tuple[str, ...], tmp_path: Path, url_server: str) -> None:
    front, policy, upstream, dumps, auth = cell
    run_cell(Cell(front, policy, upstream, dumps, tmp_path, url_server=url_server, auth=auth))


@pytest.mark.parametrize("cell", PAIRWISE, ids=["-".join(c) for c in PAIRWISE])
def test_pairwise(cell: tuple[str, ...], tmp_path: Path, url_server: str) -> None:
    _run(cell, tmp_path, url_server)


@pytest.mark.slow
@pytest.mark.parametrize("cell", REST, ids=["-".join(c) for c in REST])
def test_rest_of_the_matrix(cell: tuple[str, ...], tmp_path: Path, url_server: str) -> None:
    _run(cell, tmp_path, url_server)
