"""The arguments the sampler builds for vLLM, checked through a FAKE of the two vLLM classes it uses (``LLM`` and
``SamplingParams``, plus ``vllm.inputs.TokensPrompt``, a TypedDict in vLLM). The fake records what it is given and
returns canned token ids and log-probs; it says nothing about vLLM's own behaviour, which only a GPU run with
vLLM installed checks (``benchmarks/gpu_check.py``)."""
import sys
import types
from types import SimpleNamespace

import pytest

from allroads.llm.model import models as M
from allroads.llm.model import sample as S
from allroads.llm.model import sample_vllm as V
from allroads.llm.model import tokenizer as TK
from allroads.llm.model.sample import SamplingConfig, sample

EOS = 0


class FakeSamplingParams:
    """Fake: keeps its keyword arguments."""

    def __init__(self, **kw):
        self.kw = kw


class FakeLLM:
    """Fake: records the engine arguments and every generate call; child j of a request returns the ids
    [3 + j, 4, EOS] with log-prob −0.5 per token."""

    built: list = []

    def __init__(self, **kw):
        self.kw = kw
        self.calls = []
        FakeLLM.built.append(self)

    def generate(self, prompts, params, use_tqdm=True):
        self.calls.append((prompts, params))
        outs = []
        for p in params:
            children = []
            for j in range(p.kw["n"]):
                ids = [3 + j, 4, EOS]
                lp = [{t: SimpleNamespace(logprob=-0.5)} for t in ids] if p.kw["logprobs"] is not None else None
                children.append(SimpleNamespace(token_ids=ids, finish_reason="stop", logprobs=lp))
            outs.append(SimpleNamespace(outputs=children))
        return outs


@pytest.fixture
def fake_vllm(monkeypatch):
    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = FakeLLM, FakeSamplingParams
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = dict
    vllm.inputs = inputs
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.inputs", inputs)
    monkeypatch.setattr(S, "vllm_available", lambda: True)  # the fake stands in for vLLM + a CUDA device
    FakeLLM.built = []
    V.release_engine()
    yield
    V.release_engine()


@pytest.fixture(scope="module")
def tok():
    return TK.build_tiny_tokenizer()


PROMPTS = ["SUBREDDIT: r/tifu TITLE: a POST: b TL;DR:", "SUBREDDIT: r/cats TITLE: c POST: d TL;DR:", "TL;DR:"]


def test_prompts_seeds_and_logprobs(fake_vllm, tok):
    cfg = SamplingConfig(n=4, temperature=0.1, max_new_tokens=7, seed=10, backend="vllm")
    res = sample("some/model", tok, PROMPTS, cfg)
    (llm,) = FakeLLM.built
    assert llm.kw["logprobs_mode"] == "processed_logprobs" and llm.kw["model"] == "some/model"
    (prompts, params), = llm.calls
    assert [p["prompt_token_ids"] for p in prompts] == [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    for p in params:
        assert (p.kw["n"], p.kw["temperature"], p.kw["max_tokens"], p.kw["stop_token_ids"]) == (4, 0.1, 7, [EOS])
        assert p.kw["detokenize"] is False and p.kw["logprobs"] == 0
    # vLLM seeds child j of a request with seed + j: every (prompt, sample) stream must be distinct
    streams = [p.kw["seed"] + j for p in params for j in range(p.kw["n"])]
    assert len(set(streams)) == len(PROMPTS) * 4
    # a prompt's stream is keyed by its index in the whole set: the last prompt sampled alone as prompt 2 of the set
    # gets the request seed it had in the call of all three
    sample("some/model", tok, PROMPTS[2:], cfg, prompt_index=[2])
    assert FakeLLM.built[0].calls[1][1][0].kw["seed"] == params[2].kw["seed"] == 10 + 2 * 4
    c = res[0].completions[1]
    assert c.token_ids == (4, 4, EOS) and c.finished and c.logp == pytest.approx(-1.5)
    assert c.text == tok.decode([4, 4])  # decoded by us, EOS not in the text


def test_greedy_is_one_request_copied(fake_vllm, tok):
    cfg = SamplingConfig(n=5, temperature=0.0, seed=1, backend="vllm", compute_logp=False)
    res = sample("m", tok, PROMPTS[:2], cfg)
    (llm,) = FakeLLM.built
    assert "logprobs_mode" not in llm.kw
    _, params = llm.calls[0]
    assert all(p.kw["n"] == 1 and p.kw["temperature"] == 0.0 and p.kw["logprobs"] is None for p in params)
    assert all(len(ps.completions) == 5 and len(set(ps.completions)) == 1 for ps in res)


def test_loaded_model_is_sampled_from_its_directory(fake_vllm, tok, tmp_path):
    model = M.load_policy("tiny", tokenizer=tok)
    model.save_pretrained(tmp_path)
    loaded = M.load_policy(str(tmp_path))
    assert sample(loaded, tok, PROMPTS[:1], SamplingConfig(n=2, backend="auto")).backend == "hf"  # on the CPU
    sample(loaded, tok, PROMPTS[:1], SamplingConfig(n=2, backend="vllm"))
    sample(loaded, tok, PROMPTS[:1], SamplingConfig(n=2, backend="vllm", seed=3))
    assert len(FakeLLM.built) == 1 and FakeLLM.built[0].kw["model"] == str(tmp_path)  # engine built once, reused
    assert sample(loaded, tok, PROMPTS[:1], SamplingConfig(n=2, backend="hf")).backend == "hf"
    with pytest.raises(ValueError, match="loaded with from_pretrained from a directory"):
        sample(model, tok, PROMPTS[:1], SamplingConfig(backend="vllm"))  # built in memory: no directory
    assert sample(model, tok, PROMPTS[:1], SamplingConfig(n=2, backend="auto")).backend == "hf"
    assert sample("some/name", tok, PROMPTS[:1], SamplingConfig(n=2, backend="auto")).backend == "vllm"
