"""The HF sampler's decode loop (allroads.llm.model.decode): its random streams against a pure-Python reference, its
tokens against the inverse CDF of a cache-free forward pass, and samples that do not depend on batching or splitting."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from allroads.llm.model.decode import decode, stream_uniforms  # noqa: E402
from allroads.llm.model.sample import SamplingConfig, sample  # noqa: E402

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
