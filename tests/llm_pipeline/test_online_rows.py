"""Online DPO data per comparison row: rows sharing a post are sampled independently, tied rows are sampled afresh
and what stays tied is counted; evaluation prompts are a seeded random draw of the SFT-test rows."""
import dataclasses
import zlib

from allroads.llm.core.config import OnlineDataConfig
from allroads.llm.model.backend import FunctionRM
from allroads.llm.pipeline.context import Pipeline
from allroads.llm.train.online_data import build_online_pairs

from . import _tiny


def test_repeated_prompts_sample_independently_and_ties_are_redrawn_then_counted():
    tok = _tiny.tok()
    prompts, _ = _tiny.prompts(tok, n=3)
    rows = [prompts[0], prompts[0], prompts[0], prompts[1], prompts[2]]  # three comparison rows share one post
    n_calls = {"p1": 0}

    def score(prompt, text):
        if prompt == prompts[2]:
            return 0.0  # ties in every sampling
        if prompt == prompts[1]:
            n_calls["p1"] += 1
            if n_calls["p1"] <= 4:
                return 0.0  # ties in its first sampling only (4 samples)
        return float(zlib.crc32(text.encode()))

    cfg = OnlineDataConfig(n_samples=4, sampling_temperature=1.0, max_new_tokens=6, sample_batch_size=8, tie_redraws=2)
    be = _tiny.backend(tok, max_new_tokens=6)
    pairs, scored, rep = build_online_pairs(be, _tiny.policy(tok), FunctionRM(score), rows, cfg)
    assert (rep.n_prompts, rep.n_pairs, rep.n_dropped_ties, rep.n_redrawn) == (5, 4, 1, 3)
    assert pairs.kept.tolist() == [True, True, True, True, False]
    assert scored.prompts == rows + [prompts[1], prompts[2], prompts[2]]  # first pass, then the two rounds
    same_post = [tuple(c.text for c in row) for row in scored.completions[:3]]
    assert len(set(same_post)) == 3  # the three rows of one post got their own samples


def test_evaluation_prompts_are_a_seeded_random_draw(tmp_path):
    s = dataclasses.replace(_tiny.small_settings(), sft_data="synthetic:64", n_test=8)
    pipe = Pipeline(tmp_path, s, None, log=lambda m: None)
    all_rows = pipe.sft_rows("test", 0)
    picked = pipe.test_rows(8)
    assert len(picked) == 8 and picked != all_rows[:8]
    assert picked == pipe.test_rows(8)  # the same prompts for every policy
    other = Pipeline(tmp_path, dataclasses.replace(s, eval_prompt_seed=1), None, log=lambda m: None).test_rows(8)
    assert other != picked
    index = {id(r): i for i, r in enumerate(all_rows)}
    assert [index[id(r)] for r in picked] == sorted(index[id(r)] for r in picked)
    assert pipe.test_set()[1] == [r.post for r in picked]


def test_online_pairs_stage_samples_every_comparison_row(tmp_path):
    import json

    from allroads.llm.pipeline import data_stages as G
    from allroads.llm.pipeline import train_stages as T

    pipe = Pipeline(tmp_path, _tiny.small_settings(), None, log=lambda m: None)
    art = G.online_pairs(pipe, T.sft(pipe), None, "known", 0)
    rep = json.loads((art.path / "report.json").read_text())
    n_rows = len(pipe.pft_train_rows())
    n_pairs = len((art.path / "pairs.jsonl").read_text().splitlines())
    assert rep["n_rows"] == rep["n_prompts"] == n_rows and n_pairs == rep["n_pairs"] == n_rows - rep["shortfall"]
    assert len((art.path / "scored.jsonl").read_text().splitlines()) == n_rows + rep["n_redrawn"]
