r"""``python -m allroads.llm judge``: two policies' samples judged pairwise with the App. B.4 prompt on an
OpenAI-compatible endpoint (``--base_url``, ``--judge_model``; the API key only from ``OPENAI_API_KEY``).

Each side is a directory holding ``scored.jsonl`` (``sample``'s or the runner's: sample ``--sample_index`` of each
prompt is judged; the judge reads the post of the Table 1 prompt) or a JSONL of texts, one ``{"post": text, "text":
text}`` per line (``"prompt"`` instead of ``"post"`` is read as the post). Line i of one side is judged against
line i of the other; both must hold the same posts in the same order (every mismatch listed before any request).
Writes ``verdicts.jsonl`` (per pair: texts, the A/B order shown, the label, whether the first won, the answer, the
error of a failed request) and ``result.json`` (wins, losses, unparseable, errors, win rate of ``--first``).
Answers are cached (``--cache``), so a rerun re-asks only the pairs that failed or did not parse.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from allroads.llm.cli.common import (
    REQUIRED,
    CommandError,
    fresh_output_dir,
    parse_args,
    run_command,
    write_command,
)
from allroads.llm.core.atomic import write_json, write_jsonl
from allroads.llm.core.config import DEFAULT_JUDGE_MODEL
from allroads.llm.data.tldr_format import PROMPT_RE
from allroads.llm.evaluation.judged import judge_pair_records
from allroads.llm.judge.judge import Judge, JudgeConfig
from allroads.llm.train import stage_files as F

__all__ = ["JudgeArgs", "read_side", "main"]


@dataclass(frozen=True)
class JudgeArgs:
    """Arguments of ``python -m allroads.llm judge``."""

    first: str = REQUIRED
    """The candidate's samples: a directory holding ``scored.jsonl``, or a JSONL of ``{"post", "text"}`` lines."""
    second: str = REQUIRED
    """The samples it is judged against (another policy's, or references), in the same format."""
    sample_index: int = 0
    """Which sample of each prompt of a ``scored.jsonl`` is judged."""
    variant: str = "standard"
    """The B.4 prompt: ``standard`` or ``two_word`` (Fig. 10)."""
    judge_model: str = DEFAULT_JUDGE_MODEL
    """Judge model sent to the endpoint (B.4: gpt-4o, pinned to a dated snapshot)."""
    base_url: str = ""
    """OpenAI-compatible endpoint; empty = ``OPENAI_BASE_URL`` from the environment, else OpenAI's."""
    seed: int = 0
    """Seed of the A/B order of each pair and of the API's sampling."""
    max_workers: int = 8
    """Concurrent requests."""
    cache: str = ""
    """sqlite file of answers; empty = ``judge-cache.sqlite`` in ``--output_dir``."""
    output_dir: str = REQUIRED
    """Directory for ``verdicts.jsonl`` and ``result.json``."""


def _post(prompt: str) -> str:
    """The post of a Table 1 prompt (the prompt itself when it is in another format)."""
    m = PROMPT_RE.match(prompt)
    return m["post"] if m else prompt


def read_side(path: str, sample_index: int) -> tuple[list[str], list[str]]:
    """(posts, texts) of one side: sample ``sample_index`` of each prompt of a ``scored.jsonl`` directory, or the lines
    of a JSONL of texts (every line checked first)."""
    p = Path(path)
    if p.is_dir() or p.name == F.SCORED:
        scored = F.read_scored(p, require_scores=False)
        if not 0 <= sample_index < len(scored.completions[0]):
            raise CommandError(f"--sample_index {sample_index}: {F.scored_path(p)} has {len(scored.completions[0])} "
                               "samples per prompt")
        return [_post(q) for q in scored.prompts], [row[sample_index].text for row in scored.completions]
    rows = F.read_text_file(p)
    return [r[0] for r in rows], [r[1] for r in rows]


def _check_sides(a: JudgeArgs, first: tuple[list[str], list[str]], second: tuple[list[str], list[str]]) -> None:
    if len(first[0]) != len(second[0]):
        raise CommandError(f"judge: {a.first} holds {len(first[0])} samples, {a.second} {len(second[0])}; line i of "
                           "one is judged against line i of the other")
    bad = [f"line {i + 1}" for i, (x, y) in enumerate(zip(first[0], second[0])) if x != y]
    if bad:
        raise CommandError(f"judge: {a.first} and {a.second} differ in the post of {len(bad)} line(s): "
                           f"{', '.join(bad[:F.MAX_LISTED])}")


def judge(argv: list[str]) -> int:
    """``python -m allroads.llm judge``: judge ``--first`` against ``--second``."""
    a = parse_args("judge", __doc__, JudgeArgs, argv)
    first, second = read_side(a.first, a.sample_index), read_side(a.second, a.sample_index)
    _check_sides(a, first, second)
    out = fresh_output_dir(a.output_dir, ("verdicts.jsonl", "result.json"))
    out.mkdir(parents=True, exist_ok=True)
    cfg = JudgeConfig(model=a.judge_model, variant=a.variant, seed=a.seed, base_url=a.base_url,
                      cache_path=a.cache or str(out / "judge-cache.sqlite"), max_workers=a.max_workers)
    result = Judge(cfg).compare(first[0], first[1], second[1])
    write_jsonl(out / "verdicts.jsonl", judge_pair_records(result, first[0], first[1], second[1]))
    summary = {**result.summary(), "first": a.first, "second": a.second}
    write_json(out / "result.json", summary)
    write_command(out, "judge", a)
    print(f"[judge] win rate of --first {summary['win_rate']:.3f} over {result.wins + result.losses} decided pairs "
          f"({result.unparseable} unparseable, {result.errors} errors) -> {out / 'result.json'}")
    return 0


def main(argv: list[str]) -> int:
    """The ``judge`` command (exit status 2 on bad input)."""
    return run_command("judge", lambda: judge(argv))
