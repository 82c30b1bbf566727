"""End to end over the cached stage graph: JSON + PNG per figure, and a rerun does no work."""
import json

import pytest

from allroads.llm.figures.paper import FigureConfig, load_figure_config, run_figure
from allroads.llm.judge.factory import JudgeFactory
from allroads.llm.pipeline.context import Pipeline, paper_settings, tiny_settings

from . import _tiny


def _run(root, out, settings, figure, **kw):
    judges = JudgeFactory("tiny", root)
    pipe = Pipeline(root, settings, judges, log=lambda m: None)
    try:
        res = run_figure(pipe, FigureConfig(figure=figure, seeds=(0,), **kw), out)
    finally:
        judges.close()
    return pipe, res


def test_fig7_small_end_to_end_and_rerun_is_free(tmp_path):
    s = _tiny.small_settings()
    pipe, res = _run(tmp_path / "root", tmp_path / "out", s, "fig7")
    assert (tmp_path / "out" / "fig7.json").is_file() and (tmp_path / "out" / "fig7.png").stat().st_size > 0
    assert sorted(pipe.executed) == sorted(["sft", "rm", "local_rm", "dpo", "eval_valid", "eval_valid", "eval_valid"])
    assert set(res["bars"]) == {"global", "local", "dpo"}
    assert all(v["mean"] < 0 for v in res["bars"].values())
    pipe2, res2 = _run(tmp_path / "root", tmp_path / "out2", s, "fig7")
    assert pipe2.executed == []
    assert res2["bars"] == res["bars"]


def test_fig3_small_end_to_end_and_extension_reuses_stages(tmp_path):
    s = _tiny.small_settings()
    pipe, res = _run(tmp_path / "root", tmp_path / "out", s, "fig3")
    saved = json.loads((tmp_path / "out" / "fig3.json").read_text())
    assert set(saved["bars"]) == {"SFT", "DPO", "DPO (2x)", "Online DPO (SFT)", "Online DPO (DPO)"}
    assert (tmp_path / "out" / "fig3.png").is_file()
    assert pipe.executed.count("online_pairs") == 2 and pipe.executed.count("online_dpo") == 2
    from allroads.llm.figures.paper import GROUND_TRUTH

    truth = saved["ground_truth"]
    assert set(truth) == {label for _, label in GROUND_TRUTH}
    assert all(set(block) == set(saved["bars"]) for block in truth.values())
    assert truth["KL(π‖π_sft) on-policy"]["SFT"]["mean"] == 0.0  # π = π_sft: every log-ratio is 0
    assert pipe.executed.count("eval_known") == 5 and pipe.executed.count("eval_rm_score") == 5
    _rm_scores_are_of_the_known_score_samples(tmp_path / "root", truth)
    scored = list((tmp_path / "root").glob("online_pairs-*/scored.jsonl"))
    assert len(scored) == 2
    # Fig. 8 on the same root trains nothing already trained (SFT, global RM, DPO are shared)
    pipe8, res8 = _run(tmp_path / "root", tmp_path / "out", s, "fig8", bon_ns=(1, 3))
    assert "sft" not in pipe8.executed and "rm" not in pipe8.executed and "dpo" not in pipe8.executed
    assert set(res8["curves"]) == {"SFT", "DPO"} and (tmp_path / "out" / "fig8.png").is_file()


def _rm_scores_are_of_the_known_score_samples(root, truth):
    """Each eval_rm_score stage scored the very samples (same texts, same known score) that the eval_known stage of
    the same policy and seed scored, and the figure's RM-score block holds those stages' means."""
    def stages(kind):
        for d in root.glob(f"{kind}-*"):
            if not (d / "DONE").is_file():
                continue  # lock files and unfinished stages
            spec = json.loads((d / "stage.json").read_text())
            yield (spec["inputs"][0], dict(spec["spec"]["args"])["seed"]), json.loads((d / "result.json").read_text())

    known, rm = dict(stages("eval_known")), dict(stages("eval_rm_score"))
    assert len(rm) == 5 and set(rm) <= set(known)
    for key, r in rm.items():
        assert r["samples"] == known[key]["samples"] and r["known_score"] == known[key]["known_score"]
    block = truth["global RM score of the T = 0.01 samples"]
    assert sorted(v["mean"] for v in block.values()) == pytest.approx(sorted(r["rm_score"] for r in rm.values()))


def test_figure_config_errors(tmp_path):
    with pytest.raises(ValueError, match="figure"):
        FigureConfig(figure="fig99").validate()
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"figure": "fig3", "sedes": [0]}))
    with pytest.raises(ValueError, match="unknown"):
        load_figure_config(p)


@pytest.mark.slow
def test_tiny_preset_fig3_runner(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments" / "llm"))
    import run

    assert run.main(["--preset", "tiny", "--figure", "fig3", "--root", str(tmp_path / "r"), "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "fig3.json").is_file() and (tmp_path / "o" / "fig3.png").is_file()


def test_every_paper_figure_has_a_config_and_is_wired():
    from pathlib import Path

    from allroads.llm.figures.paper import FIGURES

    configs = Path(__file__).resolve().parents[2] / "experiments" / "llm" / "configs"
    assert sorted(FIGURES) == sorted([f"fig{i}" for i in range(3, 13)] + ["frontier"])
    for name in FIGURES:
        fig = load_figure_config(configs / f"{name}.json")
        fig.validate()
        assert fig.figure == name and fig.seeds == (0, 1, 2)
        for label in fig.policy_sizes + fig.rm_sizes:  # Fig. 9's size labels resolve in both presets
            tiny_settings().size_model(label)
            assert paper_settings().size_model(label).startswith("EleutherAI/pythia-")


@pytest.mark.slow
def test_tiny_preset_generated_data_figures_runner_and_rerun(tmp_path, capsys):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments" / "llm"))
    import run

    args = ["--preset", "tiny", "--figure", "fig6", "fig9", "fig10", "fig11", "--root", str(tmp_path / "r"),
            "--out", str(tmp_path / "o")]
    assert run.main(args) == 0
    for f in ("fig6", "fig9", "fig10", "fig11"):
        assert (tmp_path / "o" / f"{f}.json").is_file() and (tmp_path / "o" / f"{f}.png").is_file()
    capsys.readouterr()
    assert run.main(args) == 0
    assert "stages executed: 0 []" in capsys.readouterr().out
