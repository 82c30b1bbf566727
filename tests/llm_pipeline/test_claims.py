"""Workers share one list of work by claims (``allroads.llm.pipeline.claims``): a real second process holds a claim,
and the list comes out in the order the module promises (free items first, a second look, held items last, or
skipped); a claim dies with its process. In the selection, a worker left waiting for the SFT grid builds the first
global-RM grid run from the best SFT it knows: reused when that SFT is the choice, an extra run when it is not,
and the choice is the one-worker choice either way."""
from __future__ import annotations

import multiprocessing
import os
import signal

import pytest

from allroads.llm.pipeline.claims import claimed_in_order
from allroads.llm.pipeline.context import Pipeline, tiny_settings
from allroads.llm.pipeline.selection import grid_name, select_hyperparameters
from allroads.llm.pipeline.settings import SelectionConfig

FORK = multiprocessing.get_context("fork")


def _hold(take, ready, release):
    """Child: claim the first item ``take()`` yields, say so, keep it until ``release`` (or until killed)."""
    items = take()
    next(items)
    ready.set()
    release.wait(120)
    items.close()


class _Holder:
    """A second process that holds the claim of one item while the test runs."""

    def __init__(self, take):
        self.ready, self.release = FORK.Event(), FORK.Event()
        self.proc = FORK.Process(target=_hold, args=(take, self.ready, self.release))
        self.proc.start()
        assert self.ready.wait(60), "the holder never took its claim"

    def stop(self, kill: bool = False):
        if kill:  # (no release.set(): notifying a killed waiter would wait for it forever)
            os.kill(self.proc.pid, signal.SIGKILL)
        else:
            self.release.set()
        self.proc.join(60)


def test_held_items_come_last_and_meanwhile_runs_before_them(tmp_path):
    holder = _Holder(lambda: claimed_in_order(tmp_path, "grid", ["b"], "salt"))
    try:
        called = []
        got = list(claimed_in_order(tmp_path, "grid", ["a", "b", "c"], "salt", meanwhile=lambda: called.append(1)))
        assert got == ["a", "c", "b"] and called == [1]
        assert list(claimed_in_order(tmp_path, "grid", ["a", "b", "c"], "salt", others="skip")) == ["a", "c"]
        # control: another list name, or another run's settings (salt), is another claim: nothing is held
        assert list(claimed_in_order(tmp_path, "other", ["a", "b", "c"], "salt")) == ["a", "b", "c"]
        assert list(claimed_in_order(tmp_path, "grid", ["a", "b", "c"], "other salt")) == ["a", "b", "c"]
    finally:
        holder.stop()


def test_an_item_released_meanwhile_is_taken_at_the_second_look(tmp_path):
    holder = _Holder(lambda: claimed_in_order(tmp_path, "grid", ["b"], "salt"))
    called, got = [], []
    for item in claimed_in_order(tmp_path, "grid", ["a", "b", "c"], "salt", meanwhile=lambda: called.append(1)):
        got.append(item)
        if item == "c":
            holder.stop()  # the other worker finished "b" while this one worked on "c"
    assert got == ["a", "c", "b"] and called == []  # "b" came from the second look: nothing left to wait for


def test_a_killed_holder_frees_its_claim(tmp_path):
    holder = _Holder(lambda: claimed_in_order(tmp_path, "grid", ["b"], "salt"))
    assert list(claimed_in_order(tmp_path, "grid", ["b"], "salt", others="skip")) == []
    holder.stop(kill=True)
    assert list(claimed_in_order(tmp_path, "grid", ["b"], "salt", others="skip")) == ["b"]


def test_claims_refuse_an_unknown_policy(tmp_path):
    with pytest.raises(ValueError, match="others='wait'"):
        list(claimed_in_order(tmp_path, "grid", ["a"], others="wait"))


SEL = SelectionConfig(sft_lrs=(1e-3, 3e-3, 1e-2), sft_max_epochs=2, rm_lrs=(1e-3, 3e-3), rm_max_epochs=2,
                      heldout_rows=24, grow_lrs=0, patience=0)


def _settings():
    return tiny_settings(sft_data="synthetic:64", pft_data="synthetic:64", valid_limit=16, n_test=6, selection=SEL)


def _select_while_held(root, lr: float):
    """Worker 0 of 2 selects SFT and RM while a second process holds the claim of the SFT grid's run at ``lr``
    (and never builds it: this worker builds it last); its record, executed kinds and log."""
    lines: list[str] = []
    pipe = Pipeline(root, _settings(), log=lines.append, worker=(0, 2))
    other = Pipeline(root, _settings(), log=lambda _: None, worker=(1, 2))
    what = grid_name("sft", None, None, SEL.sft_max_epochs, SEL.patience)
    holder = _Holder(lambda: iter(other.in_turn([lr], what)))
    try:
        _, record = select_hyperparameters(pipe, ("sft", "rm"))
    finally:
        holder.stop()
    return record, pipe.executed, lines


def test_a_waiting_worker_builds_the_rm_grid_run_of_the_best_sft_so_far(tmp_path):
    _, alone = select_hyperparameters(Pipeline(tmp_path / "alone", _settings(), log=lambda _: None), ("sft", "rm"))
    chosen = alone["sft"]["lr"]
    other = next(lr for lr in SEL.sft_lrs if lr != chosen)
    # the held run is not the choice: the guess (best of the other two) is the choice, its RM run is reused
    record, executed, lines = _select_while_held(tmp_path / "right", other)
    assert record == alone
    assert any("while the SFT grid finishes: global RM lr 0.001 from SFT lr " + f"{chosen:g}" in x for x in lines)
    assert executed.count("select_rm") == len(SEL.rm_lrs) and executed.count("sft") == 1
    # the held run is the choice: the guess is wrong, its RM run is extra work, the choice is still the same
    record, executed, lines = _select_while_held(tmp_path / "wrong", chosen)
    assert record == alone
    assert any("while the SFT grid finishes" in x and f"from SFT lr {chosen:g} " not in x for x in lines)
    assert executed.count("select_rm") == len(SEL.rm_lrs) + 1 and executed.count("sft") == 2


def test_one_worker_never_guesses(tmp_path):
    lines: list[str] = []
    select_hyperparameters(Pipeline(tmp_path, _settings(), log=lines.append), ("sft", "rm"))
    assert not any("while the SFT grid finishes" in x for x in lines)
