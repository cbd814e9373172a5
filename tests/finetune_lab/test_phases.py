"""finetune_lab.phases: the clock behind "where the time went" in the CLI's summary and the notebook."""

import time

from finetune_lab.phases import Phases


def test_phases_add_up_in_the_order_they_first_ran_and_the_rest_is_shown_apart():
    phases = Phases()
    with phases("load"):
        time.sleep(0.05)
    with phases("train"):
        time.sleep(0.02)
    with phases("load"):
        time.sleep(0.05)
    assert list(phases.seconds) == ["load", "train"]
    assert 0.1 <= phases.seconds["load"] < 0.5
    table = phases.table(wall=1.0).splitlines()
    assert [line.split()[0] for line in table] == ["load", "train", "other", "total"]
    assert table[-1].split()[1] == "1.0"


def test_a_phase_that_raises_is_still_timed():
    phases = Phases()
    try:
        with phases("train"):
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert "train" in phases.seconds
