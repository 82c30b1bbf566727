r"""The training stages of the TL;DR graph (Sec. 3; B.2–B.3): plain functions of explicit inputs → artifacts.

    sft(pipe)                                  SFT from the base model (B.2)
    rm(pipe, sft, seed, pairs, base, fraction)  global RM from the SFT checkpoint (Table 2)
    local_rm(pipe, sft, seed)                   reference-free DPO from SFT, β = 1/53 (Table 4)
    dpo(pipe, sft, seed, epochs, pairs, fraction)  offline DPO, π_ref = π_sft (Table 3); epochs: a multiple
    online_dpo(pipe, start, pairs, seed)        DPO on online pairs, π_ref = the sampler at its temperature
                                               (no step when the pairs are fewer than one batch; report.json)

Each writes ``model/`` (save_pretrained), ``config.json``, ``metrics.jsonl`` and ``curves.png`` into its cached
directory. Each function here only derives the stage's spec from the settings and gathers its inputs; what runs
(and what the cache key's code is) is :mod:`allroads.llm.pipeline.train_builds`. ``pairs``: a data stage's artifact (:mod:`allroads.llm.pipeline.data_stages`), or None for the human
comparisons (``fraction`` of them for Fig. 12). Every config comes from
:func:`allroads.llm.pipeline.settings.stage_config`.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

from allroads.llm.data.rows import TokenizedPair
from allroads.llm.pipeline import train_builds as B
from allroads.llm.pipeline.context import Artifact, Pipeline, read_pairs
from allroads.llm.pipeline.settings import stage_config

__all__ = ["sft", "rm", "local_rm", "dpo", "online_dpo", "online_record"]


def _run(pipe: Pipeline, spec, inputs: list[Artifact], build, **kwargs) -> Artifact:
    """Run ``build(spec, out, **kwargs)`` as the cached stage ``spec.kind`` keyed by ``spec``, ``inputs`` and the
    code of :mod:`allroads.llm.pipeline.train_builds`."""
    return pipe.run(spec.kind, spec, inputs, functools.partial(_call, build, spec, kwargs), code=B.__name__)


def _call(build, spec, kwargs: dict, out) -> None:
    build(spec, out, **kwargs)


def sft(pipe: Pipeline, donor: Path | None = None) -> Artifact:
    """SFT of the base model on the SFT rows (B.2). ``donor``: a model kept by a run of this very training (the
    selection's best epoch), adopted instead of training when
    :func:`~allroads.llm.pipeline.train_builds.why_not_adopted` finds nothing against it (not part of the key: the
    result is the same)."""
    if (imported := pipe.imported("sft")) is not None:
        return imported
    examples = pipe.sft_examples()
    spec = B.SFTSpec(stage_config("sft", pipe.settings), examples.digest(), pipe.tokenizer_digest)
    return _run(pipe, spec, [], B.build_sft, examples=examples, tokenizer=pipe.tokenizer, donor=donor)


def _pairs(pipe: Pipeline, pairs: Artifact | None, fraction: float) -> tuple[list[TokenizedPair], str]:
    """The pairs a stage trains on and their content digest ("" for a data stage's pairs: its hash is an input)."""
    if pairs is not None:
        return read_pairs(pairs), ""
    human = pipe.human_pairs(fraction)
    return human, human.digest()


def rm(pipe: Pipeline, sft: Artifact, seed: int, pairs: Artifact | None = None, base: str = "",
       fraction: float = 1.0, donor: Path | None = None) -> Artifact:
    """Global RM from the SFT checkpoint (or from ``base`` weights), Table 2; ``donor`` as in :func:`sft`. The
    default RM of a seed may be a stage made elsewhere (``--stage rm@SEED=DIR``)."""
    if pairs is None and not base and fraction == 1.0 and (imported := pipe.imported("rm", seed)) is not None:
        return imported
    data, digest = _pairs(pipe, pairs, fraction)
    spec = B.RMSpec(stage_config("rm", pipe.settings, seed=seed), base, digest, pipe.tokenizer_digest)
    return _run(pipe, spec, [sft] + ([pairs] if pairs else []), B.build_rm, pairs=data, tokenizer=pipe.tokenizer,
                sft=sft.path, donor=donor)


def local_rm(pipe: Pipeline, sft: Artifact, seed: int) -> Artifact:
    """Local RM: reference-free DPO from SFT on the human pairs, β = 1/53 (Table 4); or ``--stage local_rm@SEED``."""
    if (imported := pipe.imported("local_rm", seed)) is not None:
        return imported
    data, digest = _pairs(pipe, None, 1.0)
    spec = B.LocalRMSpec(stage_config("local_rm", pipe.settings, seed=seed), digest, pipe.tokenizer_digest)
    return _run(pipe, spec, [sft], B.build_local_rm, pairs=data, tokenizer=pipe.tokenizer, sft=sft.path)


def dpo(pipe: Pipeline, sft: Artifact, seed: int, *, epochs: int = 1, pairs: Artifact | None = None,
        fraction: float = 1.0) -> Artifact:
    """Offline DPO from SFT with π_ref = π_sft (Table 3); ``epochs=2`` is "DPO (2x)" (Fig. 3): twice the epochs of
    ``Settings.dpo`` (the paper's 1). The default DPO of a seed (1x, all human pairs) may be ``--stage dpo@SEED``."""
    if epochs == 1 and pairs is None and fraction == 1.0 and (imported := pipe.imported("dpo", seed)) is not None:
        return imported
    data, digest = _pairs(pipe, pairs, fraction)
    spec = B.DPOSpec(stage_config("dpo", pipe.settings, seed=seed, epochs=epochs * pipe.settings.dpo.epochs), digest,
                     pipe.tokenizer_digest)
    return _run(pipe, spec, [sft] + ([pairs] if pairs else []), B.build_dpo, pairs=data, tokenizer=pipe.tokenizer,
                sft=sft.path)


def online_dpo(pipe: Pipeline, start: Artifact, pairs: Artifact, seed: int) -> Artifact:
    """DPO on the online pairs sampled from ``start``, with π_ref = ``start`` at the temperature the pairs were
    sampled at (Table 3), read from the pairs' own record (``sampling.json``); the trained policy's log-probs at
    that temperature too unless ``Settings.online.temper_policy`` is False (REBEL's convention).

    Writes ``report.json``: ``n_pairs``, ``batch_size`` and the optimizer ``steps`` taken. A near-deterministic
    sampler (every one of a row's samples the same summary, even after the redraws) can leave fewer pairs than one
    batch; the paper does not say what to do then. Every stage drops the last incomplete batch, so online DPO then
    takes **no step**: ``model/`` is ``start``'s model, byte for byte, ``steps`` is 0 and the figure JSON says so
    (:func:`online_record`)."""
    spec = B.OnlineDPOSpec(stage_config("online_dpo", pipe.settings, seed=seed), pipe.settings.online.temper_policy,
                           pipe.tokenizer_digest)
    return _run(pipe, spec, [start, pairs], B.build_online_dpo, start=start.path, pairs=pairs.path,
                tokenizer=pipe.tokenizer, log=pipe.log)


def online_record(art: Artifact) -> dict | None:
    """``report.json`` of an online DPO stage (``n_pairs``, ``batch_size``, ``steps``), None for any other stage."""
    if art.kind != "online_dpo":
        return None
    return json.loads((art.path / "report.json").read_text())
