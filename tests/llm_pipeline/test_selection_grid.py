"""The selection grid grows past an edge choice (``SelectionConfig.grow_lrs``): on constructed held-out curves whose
best lr is known, the choice walks the half-decade ladder to it and stops there, or stops at the growth limit and
says the choice is at the edge; with no growth (the control) the edge choice stays."""
import json
from types import SimpleNamespace

import pytest

from allroads.llm.pipeline import selection as SEL
from allroads.llm.pipeline.settings import SelectionConfig


def test_ladder_steps_are_half_decades():
    assert [SEL.ladder_step(x, up=True) for x in (1e-5, 3e-5, 1e-4, 3e-4, 2e-4, 3e-3)] == [3e-5, 1e-4, 3e-4, 1e-3,
                                                                                            3e-4, 1e-2]
    assert [SEL.ladder_step(x, up=False) for x in (1e-5, 3e-5, 1e-4, 3e-4, 2e-4, 1e-2)] == [3e-6, 1e-5, 3e-5, 1e-4,
                                                                                             1e-4, 3e-3]


@pytest.fixture
def curves(tmp_path, monkeypatch):
    """Grid runs replaced by held-out curves (lr, epoch) → (log10 lr − log10 ``target``)² + 1 / epoch, whose best
    lr on the ladder is the rung nearest ``target`` in log scale; every run asked for is recorded."""
    asked: list[float] = []
    target = {"lr": 1.0}

    def curve(pipe, kind, lr, max_epochs, sel, sft, pairs=None, patience=0):
        import math

        asked.append(lr)
        path = tmp_path / f"{kind}-{lr:g}"
        path.mkdir(exist_ok=True)
        losses = [(math.log10(lr) - math.log10(target["lr"])) ** 2 + 1 / e for e in range(1, max_epochs + 1)]
        (path / "heldout.json").write_text(json.dumps({"lr": lr, "epochs": list(range(1, max_epochs + 1)),
                                                       "heldout_loss": losses}))
        return SimpleNamespace(path=path)

    monkeypatch.setattr(SEL, "heldout_loss_curve", curve)
    pipe = SimpleNamespace(in_turn=lambda items, what, **_: list(items), log=lambda message: None)
    return pipe, asked, target


def test_the_grid_grows_to_the_best_lr_and_stops(curves):
    pipe, asked, target = curves
    target["lr"] = 2e-5  # nearest rung: 3e-5 (log distance 0.18; 1e-5: 0.30)
    got = SEL._choose(pipe, "rm", (1e-4, 3e-4, 1e-3), 4, SelectionConfig(), None, grow=2)
    assert (got["lr"], got["epochs"], got["at_edge"]) == (3e-5, 4, ["epochs"])  # 1/epoch falls to the last epoch
    assert got["grown"] == [1e-5, 3e-5] and sorted(set(asked)) == [1e-5, 3e-5, 1e-4, 3e-4, 1e-3]
    assert {g["lr"] for g in got["grid"]} == {1e-5, 3e-5, 1e-4, 3e-4, 1e-3}
    asked.clear()
    target["lr"] = 5e-3  # nearest rung 3e-3: grows upwards once, then 3e-3 is inside (1e-2 tried, worse)
    got = SEL._choose(pipe, "sft", (1e-4, 3e-4, 1e-3), 2, SelectionConfig(), None, grow=2)
    assert got["lr"] == 3e-3 and got["grown"] == [3e-3, 1e-2] and "lr" not in got["at_edge"]


def test_growth_stops_at_its_limit_and_the_edge_is_flagged(curves):
    pipe, asked, target = curves
    target["lr"] = 1e-6
    got = SEL._choose(pipe, "rm", (1e-4, 3e-4), 2, SelectionConfig(), None, grow=2)
    assert got["lr"] == 1e-5 and got["grown"] == [1e-5, 3e-5] and got["at_edge"] == ["lr", "epochs"]
    control = SEL._choose(pipe, "rm", (1e-4, 3e-4), 2, SelectionConfig(), None, grow=0)  # the grid as given
    assert control["lr"] == 1e-4 and control["grown"] == [] and "lr" in control["at_edge"]
    single = SEL._choose(pipe, "rm", (3e-4,), 2, SelectionConfig(), None, grow=2)  # one lr: fixed, not grown
    assert single["lr"] == 3e-4 and single["grown"] == []


def test_selection_config_refuses_bad_grids():
    with pytest.raises(ValueError, match="grow_lrs=-1"):
        SelectionConfig(grow_lrs=-1)
    with pytest.raises(ValueError, match="rm_lrs=\\(\\)"):
        SelectionConfig(rm_lrs=())
