"""A corpus of bad recipe inputs through the CLI (#14 item 6, the recipe part): every case is
a one-line error naming the file (and line) and the fix, exit status 2, never an internal
error or a traceback."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _cases(tmp: Path) -> dict[str, tuple[list[str], str]]:
    good = tmp / "good.yaml"
    shutil.copy(REPO / "recipes" / "ocean-demo.yaml", good)
    text = good.read_text()
    assert "2014-01-01" in text
    (tmp / "baddate.yaml").write_text(text.replace("2014-01-01", "2014-02-30", 1))
    (tmp / "binary.yaml").write_bytes(bytes(range(128, 256)) * 3)
    (tmp / "folder.yaml").mkdir()
    (tmp / "dup.yaml").write_text("name: a\n" + text)
    (tmp / "afile").write_text("not a folder")
    return {
        "impossible date": (["recipe", "validate", tmp / "baddate.yaml"], "not a valid date"),
        "binary file": (["recipe", "validate", tmp / "binary.yaml"], "not a text (UTF-8) file"),
        "directory as recipe": (["recipe", "validate", tmp / "folder.yaml"],
                                "a directory, not a recipe file"),
        "bad YAML in --set": (["recipe", "validate", good, "--set", "train.lr=[1,"],
                              "the value is not valid YAML"),
        "duplicate key": (["recipe", "validate", tmp / "dup.yaml"],
                          "key 'name' is written twice"),
        "file as workdir": (["prepare", good, "--workdir", tmp / "afile"],
                            "the workdir is a file"),
        "missing recipe": (["recipe", "validate", tmp / "nope.yaml"], "recipe file not found"),
    }


@pytest.mark.parametrize("case", ["impossible date", "binary file", "directory as recipe",
                                  "bad YAML in --set", "duplicate key", "file as workdir",
                                  "missing recipe"])
def test_bad_recipe_input_is_a_one_line_error(case, tmp_path):
    args, expected = _cases(tmp_path)[case]
    res = subprocess.run([sys.executable, "-m", "geoft.cli", *map(str, args)],
                         capture_output=True, text=True, timeout=120)
    text = (res.stdout + res.stderr).strip()
    assert res.returncode == 2, (case, res.returncode, text[-500:])
    assert expected in text and "Fix:" in text
    assert "internal error" not in text and "Traceback" not in text
    assert len(text.splitlines()) == 1, text


def test_a_usage_error_is_a_usage_message_and_debug_goes_anywhere(tmp_path):
    """An unknown option or a missing argument is click's usage message with exit 2 (it was an
    'internal error' under the click copy newer typer releases bundle); `--debug` after the
    command, where the error message suggests it, is accepted."""
    for args, expected in ((["prepare", "--bogus"], "No such option: --bogus"),
                           (["prepare"], "Missing argument 'RECIPE'")):
        res = subprocess.run([sys.executable, "-m", "geoft.cli", *args], capture_output=True,
                             text=True, timeout=120)
        text = res.stdout + res.stderr
        assert res.returncode == 2 and expected in text, text
        assert "internal error" not in text and "Traceback" not in text
    res = subprocess.run([sys.executable, "-m", "geoft.cli", "recipe", "validate",
                          str(tmp_path / "nope.yaml"), "--debug"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2 and "recipe file not found" in res.stderr, res.stderr
