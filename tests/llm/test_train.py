"""Training: losses through the LLM path = the loss core; accumulation = full batch; resume = uninterrupted;
DPO on synthetic data raises the known score of greedy outputs."""
import json

import pytest
import torch
import torch.nn.functional as F

from allroads import losses
from allroads.llm.core.config import DPOConfig, LocalRMConfig, RMConfig, SFTConfig
from allroads.llm.data import load as L
from allroads.llm.data import rows as D
from allroads.llm.data import synthetic as S
from allroads.llm.model import models as M
from allroads.llm.model import tokenizer as TK
from allroads.llm.train import methods as T

COMMON = dict(model="tiny", device="cpu", progress=False, resume=False, schedule="constant")


@pytest.fixture(scope="module")
def tok():
    return TK.build_tiny_tokenizer()


@pytest.fixture(scope="module")
def pairs(tok):
    rows, _ = L.load_comparison_rows("synthetic:16:7")
    return D.tokenize_pairs(rows, tok)


def policy(tok, seed, dtype="float64"):
    return M.load_policy("tiny", tokenizer=tok, seed=seed, dtype=dtype)


def naive_logp(model, prompt, response):
    """One unpadded forward; Σ of log-softmax at the response tokens (independent of masks/padding)."""
    ids = torch.tensor([prompt + response])
    logits = model(input_ids=ids).logits[0].double()
    lp = torch.log_softmax(logits[:-1], -1)
    return sum(lp[len(prompt) - 1 + t, a] for t, a in enumerate(response))


def naive_reward(rm, prompt, response):
    h = rm.base_model(input_ids=torch.tensor([prompt + response])).last_hidden_state[0, -1]
    return rm.score(h)[0].double()


def test_first_step_losses_equal_hand_computed(tmp_path, tok, pairs):
    """The recorded step-1 loss (pre-update) of every stage equals −log σ(·) written out by hand."""
    n, beta = len(pairs), 0.05
    pol, ref = policy(tok, 0), policy(tok, 1)
    with torch.no_grad():
        lw = torch.stack([naive_logp(pol, p.prompt_ids, p.chosen_ids) for p in pairs])
        ll = torch.stack([naive_logp(pol, p.prompt_ids, p.rejected_ids) for p in pairs])
        rw = torch.stack([naive_logp(ref, p.prompt_ids, p.chosen_ids) for p in pairs])
        rl = torch.stack([naive_logp(ref, p.prompt_ids, p.rejected_ids) for p in pairs])
    kw = dict(COMMON, batch_size=n, micro_batch_size=4, max_steps=1, lr=1e-4, dtype="float64")
    h = T.train_dpo(pol, ref, pairs, DPOConfig(**kw, beta=beta, output_dir=str(tmp_path / "dpo")))
    m = h.metrics[0]
    expect = -F.logsigmoid(beta * ((lw - rw) - (ll - rl)))
    assert m["loss"] == pytest.approx(expect.mean().item(), abs=1e-9)
    assert m["rewards/margins"] == pytest.approx((beta * ((lw - rw) - (ll - rl))).mean().item(), abs=1e-9)
    assert m["rewards/accuracies"] == pytest.approx(((lw - rw) > (ll - rl)).double().mean().item())

    pol = policy(tok, 0)
    h = T.train_local_rm(pol, pairs, LocalRMConfig(**kw, output_dir=str(tmp_path / "lrm")))
    assert h.metrics[0]["loss"] == pytest.approx((-F.logsigmoid((lw - ll) / 53)).mean().item(), abs=1e-9)

    rm = M.reward_model_from_policy(policy(tok, 2))
    with torch.no_grad():
        r_w = torch.stack([naive_reward(rm, p.prompt_ids, p.chosen_ids) for p in pairs])
        r_l = torch.stack([naive_reward(rm, p.prompt_ids, p.rejected_ids) for p in pairs])
    h = T.train_rm(rm, pairs, RMConfig(**kw, output_dir=str(tmp_path / "rm")))
    assert h.metrics[0]["loss"] == pytest.approx(torch.log1p(torch.exp(-(r_w - r_l))).mean().item(), abs=1e-9)
    assert h.metrics[0]["rewards/chosen"] == pytest.approx(r_w.mean().item(), abs=1e-9)

    sft = [D.TokenizedSFT(p.prompt_ids, p.chosen_ids) for p in pairs]
    h = T.train_sft(policy(tok, 0), sft, SFTConfig(**kw, output_dir=str(tmp_path / "sft")))
    assert h.metrics[0]["loss"] == pytest.approx((-lw).mean().item(), abs=1e-9)


@pytest.mark.parametrize("stage", ["dpo", "rm"])
def test_accumulation_equals_full_batch(tmp_path, tok, pairs, stage):
    """1 example × 8 micro-steps gives the same gradient and weights as 8 examples × 1 step, and both
    equal the gradient of the batch-mean loss computed directly."""
    batch = pairs[:8]
    results = {}
    for micro in (1, 8):
        kw = dict(COMMON, batch_size=8, micro_batch_size=micro, max_steps=1, lr=1e-3, dtype="float64",
                  output_dir=str(tmp_path / f"{stage}{micro}"))
        if stage == "dpo":
            model = policy(tok, 0)
            T.train_dpo(model, policy(tok, 1), batch, DPOConfig(**kw, precompute_ref=False))
        else:
            model = M.reward_model_from_policy(policy(tok, 0))
            torch.manual_seed(0)
            model.score.weight.data.normal_()
            T.train_rm(model, batch, RMConfig(**kw))
        results[micro] = ({k: p.grad.clone() for k, p in model.named_parameters()},
                          {k: p.detach().clone() for k, p in model.named_parameters()})
    # direct full-batch gradient at the initial weights
    if stage == "dpo":
        model, ref = policy(tok, 0), policy(tok, 1)
    else:
        model = M.reward_model_from_policy(policy(tok, 0))
        torch.manual_seed(0)
        model.score.weight.data.normal_()
    b = D.collate_pairs(batch, tok.pad_token_id)
    if stage == "dpo":
        logp, _ = M.sequence_logps(model, b["input_ids"], b["attention_mask"], b["response_mask"])
        with torch.no_grad():
            ref_logp, _ = M.sequence_logps(ref, b["input_ids"], b["attention_mask"], b["response_mask"])
        loss = losses.dpo_loss(*logp.chunk(2), *ref_logp.chunk(2), 0.05).mean()
    else:
        loss = losses.bt_loss(*M.rewards(model, b["input_ids"], b["attention_mask"]).chunk(2)).mean()
    loss.backward()
    direct = {k: p.grad for k, p in model.named_parameters()}
    nonzero = 0
    for k in direct:
        torch.testing.assert_close(results[1][0][k], results[8][0][k], atol=1e-12, rtol=0)
        torch.testing.assert_close(results[8][0][k], direct[k], atol=1e-12, rtol=0)
        torch.testing.assert_close(results[1][1][k], results[8][1][k], atol=1e-12, rtol=0)
        nonzero += int(direct[k].abs().max() > 1e-8)
    assert nonzero > len(direct) // 2  # the gradients compared are not trivially zero


def test_precomputed_reference_equals_live_reference(tmp_path, tok, pairs):
    out = {}
    for pre in (True, False):
        model = policy(tok, 0)
        cfg = DPOConfig(**COMMON, batch_size=8, micro_batch_size=4, max_steps=2, lr=1e-3, dtype="float64",
                        precompute_ref=pre, output_dir=str(tmp_path / f"pre{pre}"))
        T.train_dpo(model, policy(tok, 1), pairs, cfg)
        out[pre] = model.state_dict()
    assert (tmp_path / "preTrue" / "ref_logps.pt").is_file()
    for k in out[True]:
        torch.testing.assert_close(out[True][k], out[False][k], atol=1e-10, rtol=0)


def test_resume_after_kill_equals_uninterrupted(tmp_path, tok, pairs):
    kw = dict(COMMON, batch_size=4, micro_batch_size=2, epochs=2, lr=1e-3, save_every=2, resume=True,
              dtype="float32", schedule="linear")
    full = policy(tok, 0, "float32")
    h_full = T.train_dpo(full, policy(tok, 1, "float32"), pairs, DPOConfig(**kw, output_dir=str(tmp_path / "a")))
    assert h_full.finished and h_full.final_step == 8  # 16 pairs / 4 × 2 epochs
    # killed after step 7: the last checkpoint is step 6, so step 7 is redone after the restart
    first = policy(tok, 0, "float32")
    h1 = T.train_dpo(first, policy(tok, 1, "float32"), pairs, DPOConfig(**kw, output_dir=str(tmp_path / "b")),
                     stop_after=7)
    assert not h1.finished and h1.final_step == 7
    second = policy(tok, 5, "float32")  # different init: everything must come from the checkpoint
    h2 = T.train_dpo(second, policy(tok, 1, "float32"), pairs, DPOConfig(**kw, output_dir=str(tmp_path / "b")))
    assert h2.finished and h2.metrics[0]["step"] == 7
    for k, v in full.state_dict().items():
        assert torch.equal(v, second.state_dict()[k]), k
    assert not all(torch.equal(v, policy(tok, 0, "float32").state_dict()[k]) for k, v in full.state_dict().items())
    losses_a = [json.loads(x)["loss"] for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    losses_b = [json.loads(x)["loss"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert losses_a == losses_b and len(losses_a) == 8
    assert (tmp_path / "b" / "model" / "config.json").is_file() and (tmp_path / "b" / "curves.png").is_file()
    assert not (tmp_path / "b" / "checkpoints").exists()  # the final model is written once, to model/


def test_final_checkpoint_only_when_asked(tmp_path, tok, pairs):
    kw = dict(COMMON, batch_size=8, micro_batch_size=8, max_steps=2, lr=1e-3, dtype="float32")
    T.train_dpo(policy(tok, 0, "float32"), policy(tok, 1, "float32"), pairs, DPOConfig(**kw, output_dir=str(tmp_path / "a")))
    assert (tmp_path / "a" / "model" / "config.json").is_file() and not (tmp_path / "a" / "checkpoints").exists()
    T.train_dpo(policy(tok, 0, "float32"), policy(tok, 1, "float32"), pairs,
                DPOConfig(**kw, output_dir=str(tmp_path / "b"), save_final_checkpoint=True))
    assert (tmp_path / "b" / "checkpoints" / "step-000002" / "dcp" / ".metadata").is_file()


def greedy_mean_score(model, tok, rows):
    model.eval()
    ex = D.tokenize_sft(rows, tok)
    b = D.collate_sequences([e.prompt_ids for e in ex], [[] for _ in ex], tok.pad_token_id, "left")
    with torch.no_grad():
        out = model.generate(input_ids=b["input_ids"], attention_mask=b["attention_mask"], max_new_tokens=8,
                             do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    texts = tok.batch_decode(out[:, b["input_ids"].shape[1]:], skip_special_tokens=True)
    model.train()
    return sum(S.synthetic_score(r.post, t) for r, t in zip(rows, texts)) / len(rows)


def test_dpo_raises_known_score_of_greedy_outputs(tmp_path, tok):
    """SFT on short summaries → greedy stops early; DPO on score-labelled pairs → more facts covered."""
    sft_rows, _ = L.load_sft_rows("synthetic:2048")
    eval_rows, _ = L.load_sft_rows("synthetic:64", split="validation")
    model = policy(tok, 0, "float32")
    T.train_sft(model, D.tokenize_sft(sft_rows, tok),
                SFTConfig(**{**COMMON, "lr": 3e-3}, batch_size=32, micro_batch_size=32, epochs=3, output_dir=str(tmp_path / "sft")))
    before = greedy_mean_score(model, tok, eval_rows)
    ref = policy(tok, 0, "float32")
    ref.load_state_dict(model.state_dict())
    pr, _ = L.load_comparison_rows("synthetic:1024")
    h = T.train_dpo(model, ref, D.tokenize_pairs(pr, tok),
                    DPOConfig(**{**COMMON, "lr": 3e-4}, beta=0.1, batch_size=32, micro_batch_size=32, epochs=2,
                              output_dir=str(tmp_path / "dpo")))
    after = greedy_mean_score(model, tok, eval_rows)
    assert h.metrics[-1]["rewards/accuracies"] > 0.6
    assert after > before + 0.2, (before, after)


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_group_by_length_gives_the_same_step_with_less_padding(tmp_path, tok, pairs, monkeypatch, stage):
    """``group_by_length``: a step's micro-batches are formed from its examples sorted by length. On 8 examples of
    very different prompt lengths in micro-batches of 2, the gradient and the weights after the step equal the
    ungrouped step's to 1e-12 (float64: only the order of the sums differs), while the batches hold fewer positions
    (for SFT exactly those of consecutive sorted lengths; control: with one micro-batch per step there is nothing to
    regroup and the positions are the same)."""
    cut = (4, 30, 6, 28, 5, 31, 7, 27)
    batch = [D.TokenizedPair(p.prompt_ids[-k:], p.chosen_ids, p.rejected_ids) for p, k in zip(pairs[:8], cut)]
    sft = [D.TokenizedSFT(p.prompt_ids, p.chosen_ids) for p in batch]
    positions: list[int] = []

    def counting(real):
        def collate(*args, **kwargs):
            out = real(*args, **kwargs)
            positions.append(sum(v.numel() for key, v in out.items() if key.endswith("ids")))
            return out
        return collate

    for name in ("pair_batch", "collate_sft"):
        monkeypatch.setattr(T, name, counting(getattr(T, name)))
    results = {}
    for micro, grouped in ((2, False), (2, True), (8, False), (8, True)):
        positions.clear()
        kw = dict(COMMON, batch_size=8, micro_batch_size=micro, max_steps=1, lr=1e-3, dtype="float64",
                  group_by_length=grouped, output_dir=str(tmp_path / f"{stage}{micro}{grouped}"))
        model = policy(tok, 0)
        if stage == "dpo":
            T.train_dpo(model, policy(tok, 1), batch, DPOConfig(**kw, precompute_ref=False))
        else:
            T.train_sft(model, sft, SFTConfig(**kw))
        results[micro, grouped] = ({k: p.grad.clone() for k, p in model.named_parameters()},
                                   {k: p.detach().clone() for k, p in model.named_parameters()}, sum(positions))
    for k in results[2, False][0]:
        for i in (0, 1):
            torch.testing.assert_close(results[2, True][i][k], results[2, False][i][k], atol=1e-12, rtol=0)
    assert results[2, True][2] < results[2, False][2], (results[2, True][2], results[2, False][2])
    if stage == "sft":  # grouped: consecutive sorted lengths share a micro-batch, each padded to its longer one
        lengths = sorted(T.sft_length(e) for e in sft)
        assert results[2, True][2] == sum(2 * lengths[i + 1] for i in range(0, 8, 2))
    assert results[8, True][2] == results[8, False][2]


def test_attention_kernels_give_the_same_step(tmp_path, tok, pairs):
    """``attn_implementation``: a DPO step with eager attention and with PyTorch's fused (sdpa) attention has the
    same loss to 1e-10 and gradient to 1e-8 (float64 model; GPT-NeoX's eager attention takes its softmax in float32,
    hence not 1e-12), and the weights after the step to 1e-8; the kernel is really switched (the model's config says
    so), and an unknown kernel is refused before any work."""
    weights, grads, loss = {}, {}, {}
    for kernel in ("eager", "sdpa"):
        model = policy(tok, 0)
        kw = dict(COMMON, batch_size=8, micro_batch_size=4, max_steps=1, lr=1e-3, dtype="float64",
                  attn_implementation=kernel, output_dir=str(tmp_path / kernel))
        h = T.train_dpo(model, policy(tok, 1), pairs[:8], DPOConfig(**kw, precompute_ref=False))
        assert model.config._attn_implementation == kernel
        weights[kernel] = {k: p.detach().clone() for k, p in model.named_parameters()}
        grads[kernel] = {k: p.grad.clone() for k, p in model.named_parameters()}
        loss[kernel] = h.metrics[0]["loss"]
    assert loss["sdpa"] == pytest.approx(loss["eager"], abs=1e-10)
    moved = 0
    for k, w in weights["eager"].items():
        torch.testing.assert_close(grads["sdpa"][k], grads["eager"][k], atol=1e-8, rtol=0)
        torch.testing.assert_close(weights["sdpa"][k], w, atol=1e-8, rtol=0)
        moved += int(not torch.equal(w, policy(tok, 0).state_dict()[k]))
    assert moved > 0
    with pytest.raises(ValueError, match="attn_implementation"):
        DPOConfig(**dict(COMMON, attn_implementation="fast")).validate()
