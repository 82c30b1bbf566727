"""Online DPO on fewer online pairs than one batch (a near-deterministic sampler) takes no optimizer step: the stage
exports its start byte for byte and says so, in its report.json, the figure JSON and the console summary; with at
least one batch it trains as every stage does (the last incomplete batch dropped)."""
import dataclasses
import json

import torch

from allroads.llm.core.atomic import write_json, write_jsonl
from allroads.llm.figures.summary import summarise_online, summary_lines
from allroads.llm.model import models as M
from allroads.llm.pipeline import train_stages as T
from allroads.llm.pipeline.context import Pipeline
from allroads.llm.pipeline.settings import stage_config

from . import _tiny


def _pairs_stage(pipe, sft, n):
    """An online-pairs artifact holding the first ``n`` human pairs (what online_pairs writes: pairs.jsonl and
    sampling.json)."""
    human = pipe.human_pairs()

    def build(out):
        write_jsonl(out / "pairs.jsonl", [dataclasses.asdict(human[i]) for i in range(n)])
        write_json(out / "sampling.json", {"sampling_temperature": 0.7})

    return pipe.run("online_pairs", {"n": n}, [sft], build)


def _weights(art):
    return M.load_policy(str(art.path / "model")).state_dict()


def test_too_few_online_pairs_keep_the_start_and_say_so(tmp_path):
    pipe = Pipeline(tmp_path, _tiny.small_settings(), None, log=lambda m: None)
    cfg = stage_config("online_dpo", pipe.settings, seed=0)
    assert cfg.batch_size == 16
    sft = T.sft(pipe)

    few = T.online_dpo(pipe, sft, _pairs_stage(pipe, sft, 5), 0)
    assert T.online_record(few) == {"n_pairs": 5, "batch_size": 16, "steps": 0, "start": sft.path.name}
    start_files = sorted(p.relative_to(sft.path / "model") for p in (sft.path / "model").rglob("*") if p.is_file())
    for rel in start_files:
        assert (few.path / "model" / rel).read_bytes() == (sft.path / "model" / rel).read_bytes()

    enough = T.online_dpo(pipe, sft, _pairs_stage(pipe, sft, 32), 0)  # 2 full batches
    assert T.online_record(enough) == {"n_pairs": 32, "batch_size": 16, "steps": 2 * cfg.epochs}
    trained, start = _weights(enough), _weights(sft)
    assert any(not torch.equal(trained[k], start[k]) for k in start)
    assert T.online_record(sft) is None

    online = summarise_online({"Online DPO (DPO)": [T.online_record(few), T.online_record(enough)]})
    assert online == {"Online DPO (DPO)": {"n_pairs": [5, 32], "steps": [0, 2 * cfg.epochs], "batch_size": 16}}
    lines = summary_lines({"figure": "fig3", "bars": {}, "online_dpo": online})
    assert any("0 steps: fewer pairs than one batch" in line and "[5, 32]" in line for line in lines)
    json.dumps(online)  # goes into the figure JSON as it is
