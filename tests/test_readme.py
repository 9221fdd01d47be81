"""The README stays true: its config reference is the schema's, its set-up is what CI runs."""
from pathlib import Path

from psp.config import REFERENCE_END as README_END, REFERENCE_START as README_START, markdown_reference

ROOT = Path(__file__).resolve().parent.parent


def test_config_reference_matches_schema():
    text = (ROOT / "README.md").read_text()
    body = text.split(README_START, 1)[1].split(README_END, 1)[0].strip()
    assert body == markdown_reference(), (
        "README config reference is stale: run `python -m psp.config --update-readme README.md`")


def test_setup_commands_are_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    for command in ("make setup", "make test"):
        assert command in readme and command in ci
