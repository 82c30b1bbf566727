"""The LLM backend: TL;DR data, Pythia policies / reward models, SFT / RM / local-RM / DPO training.

Import-light on purpose: submodules (``data``, ``models``, ``train``, ``checkpoint``, ``config``,
``distributed``, ``synthetic``, ``metrics``) import torch / transformers only when imported
themselves. CLI: ``python -m allroads.llm {sft,rm,local-rm,dpo} --config FILE [--key value ...]``.
"""
