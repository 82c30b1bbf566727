"""``benchmarks/gpu_check.py`` runs end to end in its CPU smoke mode (``--device cpu --tiny``): every section that
does not need CUDA or an optional package reports ok, the FSDP2 torchrun worker stops, resumes from its sharded
checkpoint and exports weights equal to the plain run's, and the JSON is written. It says nothing about GPU numbers."""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_cpu_smoke(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path), "--device", "cpu",
           "--tiny", "--steps", "2"]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sections = json.loads((tmp_path / "gpu_check.json").read_text())["sections"]
    assert set(sections) == {"env", "gpu_tests", "dpo_step", "fsdp_torchrun", "runner", "generate", "vllm_generate",
                             "trl"}
    assert sections["gpu_tests"]["summary"].startswith("3 skipped")  # the gpu tests need CUDA
    dpo = sections["dpo_step"]
    assert dpo["ok"] and dpo["shared_prompt"]["tokens_per_s"] > 0 and dpo["two_sequences"]["tokens_per_s"] > 0
    assert dpo["shared_prompt"]["positions_per_step"] < dpo["two_sequences"]["positions_per_step"]
    assert dpo["two_sequences_eager"]["positions_per_step"] == dpo["two_sequences"]["positions_per_step"]
    assert dpo["packed"]["positions_per_step"] == dpo["packed_eager"]["positions_per_step"] == \
        dpo["two_sequences"]["positions_per_step"]  # the same real tokens, packed
    fsdp = sections["fsdp_torchrun"]
    assert fsdp["ok"] and fsdp["stopped_at"] == 2 and fsdp["resumed_from"] == 2 and fsdp["shards"] == ["__0_0.distcp"]
    assert fsdp["max_abs_diff_vs_plain"] <= 1e-5
    runner = sections["runner"]  # on the CPU both runs are the same computation: equal to the last bit
    assert runner["ok"] and runner["max_abs_diff_loglik"] == 0.0 and set(runner["cpu"]["bars"]) == {"global", "local",
                                                                                                    "dpo"}
    gen = sections["generate"]
    assert gen["generated_tokens_per_s"] > 0 and gen["sample"]["generated_tokens_per_s"] > 0
    assert gen["sample"]["generated_tokens"] > 0 and gen["sample_vs_plain"] > 0
