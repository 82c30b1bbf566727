"""The stage cache's code key is the syntax tree of the code, not its text: comments, docstrings and formatting
never change it; any edited statement does. Edits are made to copies, never to the real source."""
import functools
import shutil
from pathlib import Path

import pytest

from allroads.llm.pipeline.cache import PACKAGE_ROOT, StageCache, build_module, code_hash, source_key


@pytest.fixture
def losses_copy(tmp_path) -> Path:
    f = tmp_path / "losses.py"
    shutil.copy(PACKAGE_ROOT / "losses.py", f)
    return f


def _replace(f: Path, old: str, new: str) -> None:
    text = f.read_text()
    assert text.count(old) == 1, f"the edit {old!r} must match exactly once"
    f.write_text(text.replace(old, new))


# each edit: (old text of allroads/losses.py, new text)
COMMENTS = [("    return r_1 - r_2\n", "    return r_1 - r_2  # the BT logit\n"),
            ("\n\ndef bt_loss(", "\n\n# Bradley–Terry losses follow.\n# (a second comment line)\ndef bt_loss(")]
DOCSTRINGS = [("The loss core: every preference", "Losses: each preference"),  # the module's
              ("Logit of the Bradley–Terry preference probability (paper Eq. 4).",
               "The BT logit σ⁻¹(P(ξ_1 ≻ ξ_2)), paper Eq. 4, reworded.")]  # a function's
REFLOWS = [("def bt_logits(r_1: torch.Tensor, r_2: torch.Tensor) -> torch.Tensor:",
            "def bt_logits(r_1: torch.Tensor,\n              r_2: torch.Tensor\n              ) -> torch.Tensor:"),
           ('    "bt_logits",\n    "bt_loss",\n', '    "bt_logits", "bt_loss",\n'),
           ("    return r_1 - r_2\n", "    return (r_1 -\n            r_2)\n")]


@pytest.mark.parametrize("edit", COMMENTS + DOCSTRINGS + REFLOWS, ids=lambda e: e[0][:24])
def test_comments_docstrings_and_formatting_keep_the_key(losses_copy, edit):
    before = source_key(losses_copy)
    assert before == source_key(PACKAGE_ROOT / "losses.py")
    old_text = losses_copy.read_text()
    _replace(losses_copy, *edit)
    assert losses_copy.read_text() != old_text
    assert source_key(losses_copy) == before


@pytest.mark.parametrize("edit", [("    return r_1 - r_2\n", "    return r_2 - r_1\n"),  # a statement
                                  ('    "bt_logits",\n', '    "bt_logit",\n'),  # a string that is not a docstring
                                  ("    return -F.logsigmoid(r_w - r_l)\n",
                                   "    y = 0\n    return -F.logsigmoid(r_w - r_l)\n")],
                         ids=["operands", "string", "added"])
def test_an_edited_statement_changes_the_key(losses_copy, edit):
    before = source_key(losses_copy)
    _replace(losses_copy, *edit)
    assert source_key(losses_copy) != before


def test_class_and_attribute_docstrings_are_ignored_but_string_values_are_not(tmp_path):
    f = tmp_path / "m.py"

    def key(text):
        f.write_text(text)
        return source_key(f)

    base = key('"""Module."""\nclass C:\n    """A class."""\n    lr: float = 1.0\n    """The lr."""\n'
               'def g():\n    """Only a docstring."""\n')
    assert key('"""Other."""\nclass C:\n    """Another class text."""\n    lr: float = 1.0\n    """A field doc."""\n'
               'def g():\n    """Another."""\n') == base
    assert key('class C:\n    lr: float = 1.0\ndef g():\n    pass\n') != base  # `pass` is a statement
    assert key('class C:\n    lr: float = 2.0\ndef g():\n    """x"""\n') != base  # a changed default
    assert key('x = "A"\n') != key('x = "B"\n')  # an assigned string is a value, not a docstring


def test_code_hash_of_a_package_copy_ignores_comments_not_statements(tmp_path):
    copy = tmp_path / "allroads"
    shutil.copytree(PACKAGE_ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    module = "allroads.llm.pipeline.train_stages"
    before = code_hash([module], copy)
    loop = copy / "llm" / "train" / "loop.py"
    loop.write_text("# a new first line\n" + loop.read_text().replace('"""', '"""  Edited docstring text.', 1))
    assert code_hash([module], copy) == before
    loop.write_text(loop.read_text() + "\nEDITED = True\n")
    assert code_hash([module], copy) != before


def _build(out: Path, text: str) -> None:
    (out / "x.txt").write_text(text)


def test_a_partial_build_is_keyed_by_the_wrapped_function_or_by_code(tmp_path):
    assert build_module(functools.partial(_build, text="a")) == __name__ == build_module(_build)
    copy = tmp_path / "allroads"
    shutil.copytree(PACKAGE_ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))

    def run(**kw):
        cache = StageCache(tmp_path / "root", log=lambda m: None, code_root=copy)
        cache.run("demo", {"a": 1}, [], functools.partial(_build, text="a"), **kw)
        return cache.records[0]

    plain, keyed = run(), run(code="allroads.losses")
    assert plain["hash"] != keyed["hash"] and (plain["status"], keyed["status"]) == ("ran", "ran")
    assert run(code="allroads.losses")["status"] == "reused"
    (copy / "llm" / "judge" / "judge.py").write_text((copy / "llm" / "judge" / "judge.py").read_text() + "\nZ = 1\n")
    assert run(code="allroads.losses")["hash"] == keyed["hash"]  # judge.py is not in losses' closure
    (copy / "losses.py").write_text((copy / "losses.py").read_text() + "\nZ = 1\n")
    assert run(code="allroads.losses")["hash"] != keyed["hash"]
