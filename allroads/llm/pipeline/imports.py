r"""Training stages made elsewhere, used as the runner's own: ``run.py --stage sft=DIR --stage rm@0=DIR``.

A model too large for the runner's one process (Fig. 9's 6.9B SFT and RM, trained with ``torchrun … -m allroads.llm
sft --fsdp``), or trained by another tool, is registered as the artifact of the stage it stands for:

    sft=DIR                  the SFT stage of the run's base model (one per run)
    KIND@SEED=DIR            the stage of that training seed: rm, local_rm or dpo (the default data: all human pairs)
    KIND[MODEL]…=DIR         the stage of another base model (Fig. 9's sizes: a model id or a size label of
                             ``Settings.size_models``), e.g. sft[6.9b]=runs/sft-6.9b rm[6.9b]@0=runs/rm-6.9b

``DIR`` is a training output directory (``model/`` inside it) or a ``save_pretrained`` directory itself. Checked
before any stage runs (:func:`check_imports`), all problems at once: the weights and ``config.json`` are there; a
directory written by this library (its ``config.json`` names the stage) must hold a *finished* run of that kind whose
config matches the stage the runner would train in every field that changes the result (the fields of
:data:`allroads.llm.train.resume.RESULT_NEUTRAL_FIELDS`, the device, the trackers and the starting weights'
path may differ); one written by another tool is checked for its files only, and recorded as such. The stage's
hash is the SHA-256 of its model files, so every stage built on it is keyed by its weights. Figure JSONs list each
import under ``stages`` (status ``imported``) with its source and what was checked.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from allroads.llm.core import ranks
from allroads.llm.core.atomic import write_json
from allroads.llm.pipeline.cache import Artifact, manifest
from allroads.llm.pipeline.settings import Settings, stage_config
from allroads.llm.train.resume import differing_fields

__all__ = ["StageImport", "parse_stage_import", "check_imports", "from_flags", "register", "IMPORTABLE"]

IMPORTABLE = ("sft", "rm", "local_rm", "dpo")
"""The training kinds a directory can stand for."""
_MAY_DIFFER = ("device", "report_to", "model", "ref_model")
"""Besides the result-neutral fields: where it ran, what watched it, and the path it started from (an SFT in
another directory holds the same weights; an SFT's own ``model``, its base model, is compared)."""
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class StageImport:
    """One ``--stage`` argument."""

    kind: str
    """The training stage it stands for (:data:`IMPORTABLE`)."""
    seed: int | None
    """Its training seed (None for ``sft``, which has one per run)."""
    path: Path
    """The directory given."""
    model: str = ""
    """The base model of the stage it stands for ("" = the run's ``Settings.model``; a size label is resolved by
    :func:`from_flags`)."""
    given: str = ""
    """The argument as written (named in messages)."""

    @property
    def model_dir(self) -> Path:
        """``path/model`` when there is one (a training output directory), else ``path``."""
        return self.path / "model" if (self.path / "model").is_dir() else self.path

    @property
    def label(self) -> str:
        return self.kind + (f"[{self.model}]" if self.model else "") + ("" if self.seed is None else f"@{self.seed}")


def parse_stage_import(text: str) -> StageImport:
    """``sft=DIR`` / ``rm@0=DIR`` / ``sft[6.9b]=DIR`` → :class:`StageImport`; ``ValueError`` saying the form
    otherwise."""
    m = re.fullmatch(r"([a-z_]+)(?:\[([^\]]+)\])?(?:@(\d+))?=(.+)", text.strip())
    if not m or m.group(1) not in IMPORTABLE:
        raise ValueError(f"--stage {text!r}: use sft=DIR or KIND@SEED=DIR with KIND one of {', '.join(IMPORTABLE[1:])}"
                         " (KIND[MODEL]… for another base model)")
    kind, model, seed = m.group(1), m.group(2) or "", m.group(3)
    if (kind == "sft") != (seed is None):
        raise ValueError(f"--stage {text!r}: " + ("sft has one stage per run: sft=DIR, no @SEED" if kind == "sft"
                                                  else f"{kind} has one stage per training seed: {kind}@SEED=DIR"))
    return StageImport(kind, None if seed is None else int(seed), Path(m.group(4)).expanduser(), model, text.strip())


def _stored(imp: StageImport) -> dict | None:
    """The library's run config in ``imp.path`` (None: not a run of this library)."""
    path = imp.path / "config.json"
    if imp.model_dir == imp.path or not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return stored if isinstance(stored, dict) and "stage" in stored else None


def check_imports(imports: list[StageImport], expected) -> list[str]:
    """Every problem of ``imports`` (module docstring), one line each; ``expected(import)`` is the config the runner
    would train that stage with."""
    problems, seen = [], set()
    for imp in imports:
        where = f"--stage {imp.given or f'{imp.label}={imp.path}'}"
        if (imp.kind, imp.seed, imp.model) in seen:
            problems.append(f"{where}: {imp.label} is given twice")
        seen.add((imp.kind, imp.seed, imp.model))
        if not imp.path.is_dir():
            problems.append(f"{where}: no such directory")
            continue
        if not (imp.model_dir / "config.json").is_file() or not any((imp.model_dir / w).is_file() for w in _WEIGHTS):
            problems.append(f"{where}: {imp.model_dir} holds no save_pretrained model (config.json and weights: "
                            f"{' or '.join(_WEIGHTS)})")
            continue
        stored = _stored(imp)
        if stored is None:
            continue
        if stored["stage"] != imp.kind:
            problems.append(f"{where}: it holds a {stored['stage']} run, not {imp.kind}")
        elif not (imp.path / "finished.json").is_file():
            problems.append(f"{where}: the run there has not finished (no finished.json); finish it first (rerun its "
                            "command: it resumes)")
        else:
            may_differ = _MAY_DIFFER if imp.kind != "sft" else tuple(k for k in _MAY_DIFFER if k != "model")
            diff = {k: v for k, v in differing_fields(expected(imp), stored).items() if k not in may_differ}
            if diff:
                problems.append(f"{where}: trained with another config than this run's {imp.label}: " + "; ".join(
                    f"{k} {old!r} there, {new!r} here" for k, (old, new) in diff.items())
                    + f" (run with those values, e.g. --set {imp.kind}.FIELD=VALUE, or train it again)")
    return problems


def from_flags(texts: list[str], settings: Settings, preset: str) -> tuple[list[StageImport], list[str]]:
    """The imports of ``--stage`` arguments ``texts`` and every problem of them against ``settings`` (each stage's
    config as :func:`~allroads.llm.pipeline.settings.stage_config` derives it). A preset that chooses its stages'
    hyperparameters on held-out data (``Settings.selection``) takes none: what it would train is not known yet."""
    imports, problems = [], []
    for text in texts:
        try:
            imp = parse_stage_import(text)
            model = settings.size_model(imp.model) if imp.model in dict(settings.size_models) else imp.model
            imports.append(dataclasses.replace(imp, model=model or settings.model))
        except ValueError as e:
            problems.append(str(e))
    if imports and settings.selection is not None:
        problems.append(f"--stage: the {preset} preset chooses its stages' hyperparameters on held-out data, so no "
                        "stage made elsewhere can stand for one; use it with --preset paper or tiny")
    elif imports:
        problems += check_imports(imports, lambda imp: stage_config(
            imp.kind, settings.with_model(imp.model), **({} if imp.seed is None else {"seed": imp.seed})))
    return imports, problems


def register(root: Path, imp: StageImport) -> Artifact:
    """The stage directory ``<root>/<kind>-import-<hash>`` standing for ``imp``: ``model`` (a link to the imported
    weights), ``imported.json`` (source, seed, what was checked); the hash is the SHA-256 of the model files."""
    files = manifest(imp.model_dir)["files"]
    h = hashlib.sha256(json.dumps({"kind": imp.kind, "files": files}, sort_keys=True).encode()).hexdigest()[:12]
    stage = root / f"{imp.kind}-import-{h}"
    link = stage / "model"
    if ranks.writes_here():  # rank 0 of a torchrun job makes the directory; the others wait below
        stage.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(imp.model_dir.resolve(), target_is_directory=True)
    stored = _stored(imp)
    write_json(stage / "imported.json", {
        "source": str(imp.path.resolve()), "kind": imp.kind, "seed": imp.seed, "model_files": files,
        "checked": ("files and config (a finished run of this library)" if stored is not None
                    else "files only (not a run of this library: no config to compare)"),
        "config": stored})
    ranks.barrier()
    return Artifact(imp.kind, stage, h)
