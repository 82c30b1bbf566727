"""A figure JSON says where each number came from: the git revision and dirty state, package versions, the device,
the resolved config of every stage behind it, and per bar the stage directories that made it (each one exists under
--root and its stage.json has the kind of its role); the settings block shows the config the stages ran with, not
the template. Saved models carry a model card with front matter; the runner writes its trackers' files; the outcome
line is printed and stored. One tiny fig7 run through the runner (seconds on a CPU)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from allroads.llm.core.provenance import git_state, stage_records, versions
from allroads.llm.train.checkpoint import model_card, write_model_card

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "experiments" / "llm"))
import run  # noqa: E402

SMALL = ["--set", "sft_data=synthetic:64", "--set", "pft_data=synthetic:32", "--set", "valid_limit=16",
         "--set", "n_test=6", "--set", "sft.epochs=1"]


@pytest.fixture(scope="module")
def fig7(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fig7")
    root, out = tmp / "root", tmp / "out"
    rc = run.main(["--preset", "tiny", "--figure", "fig7", "--root", str(root), "--out", str(out),
                   "--report_to", "tensorboard", "--model", "tiny", *SMALL])
    assert rc == 0
    return root, out, json.loads((out / "fig7.json").read_text())


def _kind(root: Path, name: str) -> str:
    return json.loads((root / name / "stage.json").read_text())["kind"]


def test_each_bar_names_existing_stage_directories_of_the_right_kind(fig7):
    root, _, result = fig7
    roles = {"global": "rm", "local": "local_rm", "dpo": "dpo"}
    for bar, kind in roles.items():
        stages = result["bars"][bar]["stages"]
        assert [_kind(root, d) for d in stages["rm"]] == [kind]
        assert [_kind(root, d) for d in stages["eval"]] == ["eval_valid"]
        assert all((root / d / "DONE").is_file() for d in stages["rm"] + stages["eval"])
    assert len({result["bars"][b]["stages"]["eval"][0] for b in roles}) == 3  # one evaluation per RM
    assert not (root / "rm-000000000000").exists()  # control: a made-up name names no directory


def test_the_json_records_git_versions_device_and_every_stage_config(fig7):
    root, _, result = fig7
    prov = result["provenance"]
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert prov["git"]["revision"] == (head.stdout.strip() if head.returncode == 0 else "unknown")
    assert prov["git"]["dirty"] in (True, False, None)
    import torch
    assert prov["versions"]["torch"] == torch.__version__ and set(prov["versions"]) >= {
        "python", "transformers", "datasets", "vllm", "openai"}
    assert prov["device"]["device"] == "cpu"
    configs = prov["stage_configs"]
    assert set(configs) == {Path(r["path"]).name for r in result["stages"]}
    sft = next(v for k, v in configs.items() if k.startswith("sft-"))
    assert sft["kind"] == "sft" and sft["spec"]["cfg"]["model"] == "tiny" and sft["spec"]["cfg"]["data"] == "synthetic:64"
    # the settings block holds what the stages ran with, not the SFTConfig template's Pythia and 53 tokens
    assert result["settings"]["sft"]["model"] == "tiny" and result["settings"]["sft"]["max_response_tokens"] == 8
    assert result["settings_from"]["assignments"][:2] == ["model=tiny", "report_to=tensorboard"]


def test_outcome_line_is_stored_and_names_the_ranking_and_chance(fig7, capsys):
    _, _, result = fig7
    outcome = result["outcome"]
    means = {k: v["mean"] for k, v in result["bars"].items()}
    best = max(means, key=means.get)
    assert outcome.startswith(f"Fig. 7: {best} ")
    below = [k for k, m in means.items() if m < -0.6931471805599453]
    assert ("below chance (-0.693)" in outcome) == bool(below)


def test_saved_models_have_a_model_card_with_front_matter(fig7):
    root, _, _ = fig7
    cards = sorted(root.glob("*/model/README.md"))
    assert {p.parent.parent.name.split("-")[0] for p in cards} >= {"sft", "rm", "local_rm", "dpo"}
    text = next(p for p in cards if p.parent.parent.name.startswith("dpo-")).read_text()
    front = yaml.safe_load(text.split("---")[1])
    assert front["library_name"] == "transformers" and "dpo" in front["tags"]
    assert "base_model" not in front  # "tiny" is not a hub id: no link the hub could not resolve
    assert "## Final metrics" in text and '"stage": "dpo"' in text


def test_model_card_of_a_hub_model_links_base_model_and_data(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"stage": "sft", "model": "EleutherAI/pythia-1.4b-deduped",
                                                      "data": "org/tldr", "lr": 3e-6}))
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.5}\n{"step": 2, "loss": 2.25}\n')
    (tmp_path / "model").mkdir()
    card = write_model_card(tmp_path / "model").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == "EleutherAI/pythia-1.4b-deduped" and front["datasets"] == ["org/tldr"]
    assert "| loss | 2.25 |" in card and "| step | 2 |" in card  # the last line's metrics
    assert "base_model" not in yaml.safe_load(model_card({"stage": "rm", "model": str(tmp_path)}, []).split("---")[1])


def test_the_runner_writes_its_tensorboard_events(fig7):
    _, out, _ = fig7
    events = list((out / "trackers").rglob("events.out.tfevents.*"))
    assert len(events) == 1
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = accumulator.EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert {"fig7/global", "fig7/local", "fig7/dpo"} <= set(acc.Tags()["scalars"])
    assert "fig7/sft" not in acc.Tags()["scalars"]  # control: only the figure's bars


def test_provenance_helpers_outside_a_checkout(tmp_path):
    assert git_state(tmp_path) == {"revision": "unknown", "dirty": None}  # not a repository
    assert versions(["surely-not-installed-pkg"])["surely-not-installed-pkg"] is None
    listed = stage_records([{"kind": "sft", "hash": "x", "path": str(tmp_path / "sft-x")}])
    assert listed["sft-x"]["kind"] == "sft" and "error" in listed["sft-x"]  # unreadable stage.json: said so
