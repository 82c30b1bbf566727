r"""Judges for a TL;DR run: the loopback rule judge of the tiny preset, or gpt-4o (App. B.4) pinned to a dated
snapshot (:data:`allroads.llm.core.config.DEFAULT_JUDGE_MODEL`), or any OpenAI-compatible endpoint."""
from __future__ import annotations

from pathlib import Path

from allroads.llm.core.config import DEFAULT_JUDGE_MODEL
from allroads.llm.data.synthetic import synthetic_two_word_summary, task_score
from allroads.llm.judge.client import make_client
from allroads.llm.judge.judge import Judge, JudgeConfig
from allroads.llm.judge.rule_server import RuleJudgeServer

__all__ = ["JudgeFactory"]


class JudgeFactory:
    """``judge_factory(variant) -> Judge`` for :class:`~allroads.llm.pipeline.context.Pipeline`: ``tiny`` and ``small`` start
    the loopback rule judge (:mod:`allroads.llm.judge.rule_server`, scoring with the known score of the synthetic
    ``task`` (:func:`allroads.llm.data.synthetic.task_score`), writing
    two-word summaries with :func:`allroads.llm.data.synthetic.synthetic_two_word_summary`) behind the OpenAI
    protocol; ``paper`` uses ``model`` (default: the dated ``gpt-4o`` snapshot) at ``base_url`` (default:
    ``OPENAI_BASE_URL`` from the environment, else OpenAI's) with the API key read from ``OPENAI_API_KEY`` (never
    logged). Answers are cached in ``root``."""

    def __init__(self, preset: str, root: str | Path, *, model: str = DEFAULT_JUDGE_MODEL, base_url: str = "",
                 task: str = "facts"):
        if preset not in ("tiny", "small", "paper"):
            raise ValueError(f"preset={preset!r}; use 'tiny', 'small' or 'paper'")
        self.preset, self.root, self.model, self.base_url, self.task = preset, Path(root), model, base_url, task
        self.server = None

    def __call__(self, variant: str):
        cfg = JudgeConfig(model=self.model if self.preset == "paper" else f"rule-judge-{self.task}", variant=variant,
                          base_url=self.base_url if self.preset == "paper" else "",
                          cache_path=str(self.root / f"judge-{self.preset}-{variant}.sqlite"),
                          usage_log_path=str(self.root / "judge-usage.jsonl") if self.preset == "paper" else "",
                          max_workers=8 if self.preset == "paper" else 2)
        if self.preset == "paper":
            return Judge(cfg)
        if self.server is None:
            self.server = RuleJudgeServer(score=task_score(self.task), write=synthetic_two_word_summary).start()
        return Judge(cfg, client=make_client(cfg, base_url=self.server.base_url, api_key="loopback-placeholder"))

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
