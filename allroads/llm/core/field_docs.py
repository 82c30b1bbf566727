r"""The docstring under each field of a config dataclass (the string literal that follows the field's annotated
assignment in the class body), read from the source with :mod:`ast`, for ``--help`` texts."""
from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap

__all__ = ["field_docs"]


def _class_field_docs(cls: type) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = ast.parse(source).body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def field_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` for every field of dataclass ``cls``, the most derived class's docstring first
    (a subclass that redefines a field documents it anew); "" for a field without one."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        docs.update(_class_field_docs(klass))
    return {f.name: docs.get(f.name, "") for f in dataclasses.fields(cls)}
