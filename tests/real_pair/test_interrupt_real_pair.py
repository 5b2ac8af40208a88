"""Ctrl-C at many points of the real pair's start-up (its loads, contexts and probe), as in
the issue that found it swallowed: `svip-local generate` must exit 130 every time."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.sigint import interrupt_at, start_up_seconds

pytestmark = pytest.mark.real_pair
TRIES = 16


def test_ctrl_c_anywhere_in_the_real_start_up_exits_130(real_pair: tuple[Path, Path]) -> None:
    pair = ["--target", str(real_pair[0]), "--draft", str(real_pair[1])]
    start_up_seconds(pair)  # a first run may probe and store costs: time the second
    whole = start_up_seconds(pair)
    outcomes = interrupt_at([whole * i / TRIES for i in range(TRIES)], pair)
    assert [o[1:3] for o in outcomes] == [(130, False)] * TRIES, outcomes
