"""The HF sampler's decode loop (allroads.llm.model.decode): its random streams against a pure-Python reference, its
tokens against the inverse CDF of a cache-free forward pass, and samples that do not depend on batching or splitting."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from allroads.llm.model.decode import decode, stream_uniforms  # noqa: E402
from allroads.llm.model.sample import SamplingConfig, decode_calls, sample  # noqa: E402

from .test_sample import EOS, PROMPTS, tiny_model, tok  # noqa: E402,F401  (tok: a fixture)

M32 = 0xFFFFFFFF


def _hash32_ref(x: int) -> int:
    """lowbias32 in Python integers (no overflow to avoid): the reference for the tensor version."""
    x &= M32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & M32
    return x ^ (x >> 16)


def _uniform_ref(seed: int, i: int, j: int, t: int) -> float:
    key = _hash32_ref((seed & M32) ^ _hash32_ref(seed >> 32))
    for part in (i, j, t):
        key = _hash32_ref(key ^ (part & M32))
    hi, lo = _hash32_ref(key ^ 0x9E3779B9) >> 6, _hash32_ref(key ^ 0x7F4A7C15) >> 5
    return (hi * 2**27 + lo + 0.5) / 2**53


def test_stream_uniforms_equal_the_python_reference_and_look_uniform():
    i = torch.tensor([0, 1, 2, 7, 123456, 2**31 - 1])
    j = torch.tensor([0, 0, 3, 24, 5, 1])
    for seed, t in ((0, 0), (12345, 3), (2**40 + 17, 52)):
        got = stream_uniforms(seed, i, j, t).tolist()
        assert got == [_uniform_ref(seed, a, b, t) for a, b in zip(i.tolist(), j.tolist())]
    # 40000 draws over (prompt, sample, step): in (0, 1), mean and variance of U(0, 1) within 5 s.e., a flat histogram
    grid = torch.cartesian_prod(torch.arange(200), torch.arange(25))
    u = torch.cat([stream_uniforms(7, grid[:, 0], grid[:, 1], t) for t in range(8)])
    assert float(u.min()) > 0 and float(u.max()) < 1 and len(set(u.tolist())) == len(u)
    n = len(u)
    assert abs(float(u.mean()) - 0.5) < 5 * (1 / 12 / n) ** 0.5
    assert abs(float(u.var()) - 1 / 12) < 5 * (1 / 180 / n) ** 0.5  # Var of (U - 1/2)^2 is 1/180
    counts = torch.histc(u, bins=20, min=0, max=1)
    chi2 = float(((counts - n / 20) ** 2 / (n / 20)).sum())
    assert chi2 < 45.3, chi2  # 19 degrees of freedom, p ≈ 0.001
    # neighbouring keys are not correlated: lag-1 correlation along the sample index
    a = stream_uniforms(7, grid[:, 0], grid[:, 1], 0).view(200, 25)
    r = torch.corrcoef(torch.stack([a[:, :-1].flatten(), a[:, 1:].flatten()]))[0, 1]
    assert abs(float(r)) < 5 / (200 * 24) ** 0.5


def _small_vocab_model(seed: int = 0):
    """A random GPT-NeoX over 8 tokens: EOS (0) comes up often, so rows finish at different steps."""
    torch.manual_seed(seed)
    cfg = transformers.GPTNeoXConfig(vocab_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64)
    return transformers.GPTNeoXForCausalLM(cfg).eval()


def test_decode_draws_the_inverse_cdf_of_the_model_at_each_rows_stream():
    """Every token of every row equals the inverse CDF of softmax(logits / T) at u(seed, prompt, sample, step), the
    logits from a cache-free forward pass of the unpadded prompt + the row's tokens so far; its log-prob agrees to
    1e-5. Left-padded prompts of different lengths; rows finish at different steps (some at the budget), so the
    cache, positions and rows leaving the batch are all checked."""
    model = _small_vocab_model()
    prompts = [[3, 5, 2], [1, 4, 4, 6, 7, 2]]
    ids = torch.tensor([[0, 0, 0, 3, 5, 2], [1, 4, 4, 6, 7, 2]])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    n, T, budget, seed = 6, 0.9, 7, 21
    tokens, logp = decode(model, ids, mask, n=n, max_new_tokens=budget, temperature=T, eos=EOS, pad=0, seed=seed,
                          prompt_index=torch.tensor([4, 9]), record_logp=True)
    lengths = []
    with torch.no_grad():
        for r in range(len(prompts) * n):
            i, j = divmod(r, n)
            row = []
            for t in range(budget):
                x = torch.tensor([prompts[i] + row])
                scores = model(input_ids=x).logits[0, -1].float() / T
                cdf = torch.softmax(scores, -1).double().cumsum(-1)
                u = _uniform_ref(seed, (4, 9)[i], j, t)
                want = min(int(torch.searchsorted(cdf, torch.tensor([u * float(cdf[-1])], dtype=torch.float64))), 7)
                assert int(tokens[r, t]) == want, (r, t)
                assert abs(float(logp[r, t]) - float(torch.log_softmax(scores.double(), -1)[want])) < 1e-5
                row.append(want)
                if want == EOS:
                    break
            lengths.append(len(row))
            assert tokens[r, len(row):].eq(0).all() and logp[r, len(row):].eq(0).all()
    assert len(set(lengths)) >= 3 and budget in lengths and min(lengths) < budget  # rows left at different steps


def test_greedy_decode_equals_generate(tok):
    """T = 0: the loop's argmax tokens equal ``model.generate(do_sample=False)``'s, token for token (an independent
    decoder over the same model, prompts of different lengths in one left-padded batch)."""
    model = tiny_model()
    greedy = sample(model, tok, PROMPTS, SamplingConfig(n=2, temperature=0.0, max_new_tokens=8, batch_size=2,
                                                         backend="hf"))
    for p, got in zip(PROMPTS, greedy.samples):
        ids = torch.tensor([tok(p, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            ref = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=8,
                                 pad_token_id=EOS, eos_token_id=EOS)[0, ids.shape[1]:].tolist()
        ref = ref[: ref.index(EOS) + 1] if EOS in ref else ref
        assert [list(c.token_ids) for c in got.completions] == [ref, ref]


def test_samples_do_not_depend_on_batching_or_on_splitting_the_prompts(tok):
    """The same seed gives each (prompt, sample) the same tokens whether the prompts are decoded together, one per
    batch, or split into two calls that pass their prompts' indices (what sharding across processes does); a split
    that does not pass them draws other samples for the second half (control)."""
    model = tiny_model()
    prompts = ["The cat sat on the mat and then", "Hello", "a b c TL;DR:", "one two three four five six seven"]
    cfg = SamplingConfig(n=4, temperature=1.0, max_new_tokens=5, seed=5, batch_size=4, backend="hf")
    together = [[c.token_ids for c in p.completions] for p in sample(model, tok, prompts, cfg).samples]
    alone = [[c.token_ids for c in p.completions]
             for p in sample(model, tok, prompts, SamplingConfig(**{**cfg.__dict__, "batch_size": 1})).samples]
    first = sample(model, tok, prompts[:2], cfg, prompt_index=[0, 1]).samples
    second = sample(model, tok, prompts[2:], cfg, prompt_index=[2, 3]).samples
    split = [[c.token_ids for c in p.completions] for p in first + second]
    assert together == alone == split
    unindexed = [[c.token_ids for c in p.completions] for p in sample(model, tok, prompts[2:], cfg).samples]
    assert unindexed != together[2:]
    with pytest.raises(ValueError, match="prompt indices"):
        sample(model, tok, prompts, cfg, prompt_index=[0, 1])


def test_decode_calls_group_by_length_within_the_budgets():
    """Every prompt in exactly one call; with ``group_by_length`` the calls read the prompts in increasing length
    (ties by index), else in order; no call over ``batch_size`` prompts or over ``max_batch_tokens`` key/value
    positions, (prompts × n) × (longest + max_new_tokens), unless it holds one prompt; and a call is closed only
    when the next prompt would break a budget (greedy: n counts once)."""
    g = torch.Generator().manual_seed(0)
    for trial in range(40):
        lengths = torch.randint(1, 30, (int(torch.randint(1, 12, (1,), generator=g)),), generator=g).tolist()
        cfg = SamplingConfig(n=int(torch.randint(1, 5, (1,), generator=g)), max_new_tokens=4,
                             batch_size=int(torch.randint(1, 5, (1,), generator=g)),
                             max_batch_tokens=int(torch.randint(0, 200, (1,), generator=g)),
                             group_by_length=bool(trial % 2), temperature=0.0 if trial % 5 == 0 else 1.0)
        calls = decode_calls(lengths, cfg)
        flat = [i for c in calls for i in c]
        want = sorted(range(len(lengths)), key=lambda i: (lengths[i], i)) if cfg.group_by_length else list(
            range(len(lengths)))
        assert flat == want
        n = 1 if cfg.greedy else cfg.n

        def cost(c):
            return len(c) * n * (max(lengths[i] for i in c) + cfg.max_new_tokens)

        for k, c in enumerate(calls):
            assert len(c) <= cfg.batch_size
            assert cfg.max_batch_tokens == 0 or len(c) == 1 or cost(c) <= cfg.max_batch_tokens
            if k + 1 < len(calls):  # closed because the next prompt would not fit
                more = c + calls[k + 1][:1]
                assert len(more) > cfg.batch_size or (cfg.max_batch_tokens and cost(more) > cfg.max_batch_tokens)


def test_samples_do_not_depend_on_length_grouping_or_the_memory_budget(tok):
    """The same samples (tokens and log-probs) in the prompts' order whether the decode calls group prompts by length
    or not and whatever the memory budget (one prompt a call at the smallest)."""
    model = tiny_model()
    prompts = ["one two three four five six seven", "Hello", "The cat sat on the mat and then", "a b c TL;DR:", "Hi"]
    base = dict(n=3, temperature=1.0, max_new_tokens=5, seed=9, batch_size=4, backend="hf")
    runs = [sample(model, tok, prompts, SamplingConfig(**base, **kw)).samples
            for kw in ({"group_by_length": False}, {}, {"max_batch_tokens": 40}, {"max_batch_tokens": 1})]
    tokens = [[[c.token_ids for c in p.completions] for p in r] for r in runs]
    logps = [[[c.logp for c in p.completions] for p in r] for r in runs]
    assert all(t == tokens[0] for t in tokens[1:])
    for lp in logps[1:]:
        assert torch.allclose(torch.tensor(lp), torch.tensor(logps[0]), atol=1e-5, rtol=0)
    assert [p.prompt for p in runs[1]] == prompts
    assert len({tuple(map(tuple, t)) for t in tokens[0]}) > 1  # the prompts got different samples

