"""Sampling (allroads.llm.model.sample) with a tiny random GPT-NeoX and the real Pythia tokenizer, on CPU."""
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from allroads.llm.model.sample import SamplingConfig, sample  # noqa: F401

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"  # tests/fixtures/, inside the repository
PYTHIA_TOKENIZER = FIXTURES / "gpt-neox-20b" / "tokenizer.json"  # Apache-2.0, see its README.md
TOKENIZER_JSON = PYTHIA_TOKENIZER
EOS = 0  # <|endoftext|> in the GPT-NeoX tokenizer
PROMPTS = ["The cat sat on the mat and then", "Hello"]


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.GPTNeoXConfig(
        vocab_size=50304, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128,
    )
    return transformers.GPTNeoXForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def tok():
    t = transformers.PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER_JSON))
    t.eos_token = "<|endoftext|>"
    assert t.eos_token_id == EOS
    return t


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def eos_model():
    """Every position has the same next-token distribution, with P(EOS) ≈ 0.25 at T = 1: the final layer
    norm outputs a constant vector v, and the EOS row of the unembedding is aligned with v."""
    m = tiny_model(1)
    v = torch.zeros(32)
    v[0] = 1.0
    with torch.no_grad():
        m.gpt_neox.final_layer_norm.weight.zero_()
        m.gpt_neox.final_layer_norm.bias.copy_(v)
        m.get_output_embeddings().weight.zero_()
        m.get_output_embeddings().weight[EOS, 0] = torch.log(torch.tensor(50303 / 3.0))  # odds 1:3 against the rest
    return m


def ids_of(result):
    return [[c.token_ids for c in p.completions] for p in result]


def test_same_seed_same_samples_and_other_seed_differs(model, tok):
    cfg = SamplingConfig(n=3, temperature=1.0, max_new_tokens=6, seed=7, batch_size=2)
    a, b = sample(model, tok, PROMPTS, cfg), sample(model, tok, PROMPTS, cfg)
    c = sample(model, tok, PROMPTS, SamplingConfig(n=3, temperature=1.0, max_new_tokens=6, seed=8, batch_size=2))
    assert ids_of(a) == ids_of(b)
    assert [[x.logp for x in p.completions] for p in a] == [[x.logp for x in p.completions] for p in b]
    assert ids_of(a) != ids_of(c)
    # n samples of one prompt are distinct draws at T = 1 over a 50k vocabulary
    assert len(set(a[0].completions[i].token_ids for i in range(3))) == 3
    assert [p.prompt for p in a] == PROMPTS and all(len(p.completions) == 3 for p in a)


def test_global_rng_is_not_touched(model, tok):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    sample(model, tok, PROMPTS, SamplingConfig(n=2, temperature=1.0, max_new_tokens=3))
    assert torch.equal(before, torch.get_rng_state())


def test_eos_truncation_and_unfinished_flag(eos_model, tok):
    cfg = SamplingConfig(n=16, temperature=1.0, max_new_tokens=5, seed=0, batch_size=2)
    res = sample(eos_model, tok, PROMPTS, cfg)
    comps = [c for p in res for c in p.completions]
    finished = [c for c in comps if c.finished]
    unfinished = [c for c in comps if not c.finished]
    # P(no EOS in 5 steps) = 0.75**5 ≈ 0.24 for each of 32 samples: both kinds must occur
    assert finished and unfinished
    for c in finished:
        assert c.token_ids[-1] == EOS and EOS not in c.token_ids[:-1]
        assert "<|endoftext|>" not in c.text
        assert c.text == tok.decode(list(c.token_ids[:-1]))
    for c in unfinished:
        assert len(c.token_ids) == cfg.max_new_tokens and EOS not in c.token_ids
    assert any(len(c.token_ids) < cfg.max_new_tokens for c in finished)  # really cut, not just full length
    assert res.n_unfinished == len(unfinished)
    assert res.counts() == {"prompts": 2, "completions": 32, "unfinished": len(unfinished)}
    kept = res.finished_only()
    assert kept.n_unfinished == 0 and kept.n_completions == len(finished)

    # keep_eos=False: the same draws (same seed) without the EOS id
    res2 = sample(eos_model, tok, PROMPTS, SamplingConfig(n=16, temperature=1.0, max_new_tokens=5, keep_eos=False))
    for c, c2 in zip(comps, [c for p in res2 for c in p.completions]):
        assert c2.finished == c.finished
        assert c2.token_ids == (c.token_ids[:-1] if c.finished else c.token_ids)
        assert c2.logp == pytest.approx(c.logp, abs=1e-6)  # logp still counts the EOS step


def test_logp_is_the_tempered_sequence_log_prob(eos_model, model, tok):
    # eos_model: the per-step distribution is known in closed form: softmax(W v / T)
    T = 0.7
    res = sample(eos_model, tok, ["Hello"], SamplingConfig(n=8, temperature=T, max_new_tokens=4))
    step = torch.log_softmax(eos_model.get_output_embeddings().weight[:, 0].double() / T, dim=0)
    for c in res[0].completions:
        assert c.logp == pytest.approx(float(step[list(c.token_ids)].sum().detach()), abs=1e-4)
    # random model: teacher-forced forward pass of prompt + completion (no padding: one prompt)
    prompt = tok("The cat sat")["input_ids"]
    res = sample(model, tok, ["The cat sat"], SamplingConfig(n=3, temperature=T, max_new_tokens=5))
    for c in res[0].completions:
        ids = torch.tensor([prompt + list(c.token_ids)])
        with torch.no_grad():
            logits = model(ids).logits[0, len(prompt) - 1:-1].double() / T  # (steps, V)
        ref = torch.log_softmax(logits, -1).gather(1, torch.tensor(c.token_ids)[:, None]).sum()
        assert c.logp == pytest.approx(float(ref), abs=1e-3)


def test_left_padding_batched_equals_alone_greedy(model, tok):
    cfg = SamplingConfig(n=2, temperature=0.0, max_new_tokens=8, batch_size=2)
    short, long = "Hello", "The cat sat on the mat and then it went to sleep because"
    alone = sample(model, tok, [short], cfg)
    batched = sample(model, tok, [long, short], cfg)
    assert len(tok(long)["input_ids"]) > len(tok(short)["input_ids"]) + 5
    assert alone[0].completions[0].token_ids == batched[1].completions[0].token_ids
    assert alone[0].completions[0].logp == pytest.approx(batched[1].completions[0].logp, abs=1e-3)
    # greedy: n identical copies, independent of the seed, and equal to step-by-step argmax
    assert batched[1].completions[0] == batched[1].completions[1]
    other_seed = sample(model, tok, [short], SamplingConfig(n=1, temperature=0.0, max_new_tokens=8, seed=99))
    assert other_seed[0].completions[0].token_ids == alone[0].completions[0].token_ids
    ids = tok(short)["input_ids"]
    for _ in range(8):
        with torch.no_grad():
            ids = ids + [int(model(torch.tensor([ids])).logits[0, -1].argmax())]
    want = ids[len(tok(short)["input_ids"]):]
    got = list(alone[0].completions[0].token_ids)
    assert got == want[: len(got)]


def test_small_temperature_is_near_greedy(model, tok):
    greedy = sample(model, tok, PROMPTS, SamplingConfig(n=1, temperature=0.0, max_new_tokens=5))
    cold = sample(model, tok, PROMPTS, SamplingConfig(n=3, temperature=1e-4, max_new_tokens=5, seed=3))
    for g, c in zip(greedy, cold):
        assert all(x.token_ids == g.completions[0].token_ids for x in c.completions)


@pytest.mark.parametrize("kwargs", [dict(n=0), dict(temperature=-0.1), dict(max_new_tokens=0),
                                    dict(batch_size=0), dict(backend="tpu")])
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError, match="SamplingConfig"):
        SamplingConfig(**kwargs)


def test_bad_inputs_fail_before_work(model, tok):
    with pytest.raises(ValueError, match="no prompts"):
        sample(model, tok, [], SamplingConfig())
    with pytest.raises(ValueError, match=r"prompts\[1\]"):
        sample(model, tok, ["ok", ""], SamplingConfig())
    with pytest.raises(ValueError, match="vLLM is not importable|needs a vllm.LLM"):
        sample(model, tok, ["ok"], SamplingConfig(backend="vllm"))


def test_samples_do_not_depend_on_recording_their_log_probs(model, tok):
    """Without ``compute_logp`` the sampler skips the per-step log-softmax (the costly part on a large vocabulary,
    ``benchmarks/sampling.py``); the tokens drawn are the same, for the same seed, at T = 1 and T = 0.1."""
    prompts = ["a b c TL;DR:", "d e TL;DR:"]
    for t in (1.0, 0.1):
        runs = [sample(model, tok, prompts, SamplingConfig(n=5, temperature=t, max_new_tokens=6, seed=3,
                                                           compute_logp=logp)) for logp in (True, False)]
        assert ids_of(runs[0]) == ids_of(runs[1])
        assert all(c.logp is None for p in runs[1].samples for c in p.completions)
