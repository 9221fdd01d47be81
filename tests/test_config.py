"""Config mistakes through the training CLI: one line on stderr naming the key, exit code 2,
nothing written to the output directory; plus --print-config and bare config names."""
import pytest
import yaml

from psp.cli.train import main
from psp.config import load_config, to_dict


@pytest.fixture
def out(tmp_path):
    return tmp_path / "run"


def _fails(capsys, argv, *needles):
    """Run the CLI, expect exit code 2 and one stderr line containing every needle."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert captured.out == ""
    return lines[0]


def test_unknown_override_key_suggests_the_right_one(capsys, out):
    line = _fails(capsys, ["--config", "demo", f"train.output_dir={out}", "train.max_step=5"],
                  "train.max_step", "did you mean 'train.max_steps'")
    assert line.startswith("error: ")
    assert not out.exists()


def test_unknown_key_in_a_file_names_the_file(capsys, tmp_path, out):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("optim:\n  gradclip: 1.0\n")
    _fails(capsys, ["--config", "demo", "--config", str(cfg), f"train.output_dir={out}"],
           "optim.gradclip", str(cfg), "did you mean 'optim.grad_clip'")
    assert not out.exists()


def test_wrong_type(capsys, out):
    _fails(capsys, ["--config", "demo", f"train.output_dir={out}", "train.batch_size=many"],
           "train.batch_size", "int", "many")
    assert not out.exists()


def test_bad_choice_lists_allowed_values(capsys, out):
    _fails(capsys, ["--config", "demo", f"train.output_dir={out}", "optim.name=sgd"],
           "optim.name", "'sgd'", "ranger, adam")
    assert not out.exists()


def test_bad_precision_choice(capsys, out):
    _fails(capsys, ["--config", "demo", f"train.output_dir={out}", "train.precision=fp8"],
           "train.precision", "32, bf16-mixed, 16-mixed")
    assert not out.exists()


def test_missing_required_value(capsys, out):
    _fails(capsys, ["--config", "demo", f"train.output_dir={out}", "data.kind=images"],
           "data.train_dir", "required")
    assert not out.exists()


def test_missing_weights_for_an_enabled_loss(capsys, out):
    _fails(capsys, ["--config", "demo", f"train.output_dir={out}", "loss.id=0.1"],
           "loss.id_weights", "model_ir_se50.pth")
    assert not out.exists()


def test_missing_config_file(capsys, out):
    _fails(capsys, ["--config", "no_such_recipe", f"train.output_dir={out}"],
           "no_such_recipe", "not found", "demo.yaml")
    assert not out.exists()


def test_missing_weights_file(capsys, tmp_path, out):
    _fails(capsys, ["--config", "demo", f"train.output_dir={out}",
                    f"model.generator.checkpoint={tmp_path / 'nope.pt'}"],
           "model.generator.checkpoint", "nope.pt", "does not exist")
    assert not out.exists()


def test_bad_yaml(capsys, tmp_path, out):
    cfg = tmp_path / "broken.yaml"
    cfg.write_text("train:\n  max_steps: [1, 2\n")
    _fails(capsys, ["--config", "demo", "--config", str(cfg), f"train.output_dir={out}"],
           "broken.yaml", "invalid YAML", "line")
    assert not out.exists()


@pytest.mark.parametrize("item", ["train.max_steps", "=3", " train.max_steps=3"])
def test_bad_override_syntax(capsys, out, item):
    _fails(capsys, ["--config", "demo", f"train.output_dir={out}", item], "key=value")
    assert not out.exists()


def test_bad_command_line_flag(capsys, out):
    _fails(capsys, ["--config", "demo", f"train.output_dir={out}", "--resum", "auto"], "--resum")
    assert not out.exists()


def test_print_config_is_the_resolved_config(capsys, out):
    assert main(["--config", "demo", f"train.output_dir={out}", "train.max_steps=7", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    expected = to_dict(load_config(["demo"], [f"train.output_dir={out}", "train.max_steps=7"]))
    # only the sections training reads
    assert printed == {k: v for k, v in expected.items()
                       if k in ("config_version", "model", "data", "loss", "lpips", "discriminator", "optim", "train",
                               "ops", "log")}
    assert printed["train"]["max_steps"] == 7
    assert not out.exists()


def test_bare_name_and_path_give_the_same_config(capsys):
    from psp.config import CONFIGS_DIR

    assert main(["--config", "demo", "--print-config"]) == 0
    by_name = capsys.readouterr().out
    assert main(["--config", str(CONFIGS_DIR / "demo.yaml"), "--print-config"]) == 0
    assert capsys.readouterr().out == by_name
    assert "kind: synthetic" in by_name


def test_later_config_and_overrides_win(capsys, tmp_path):
    cfg = tmp_path / "more.yaml"
    cfg.write_text("train:\n  batch_size: 3\n  val_every: 11\n")
    assert main(["--config", "demo", "--config", str(cfg), "train.val_every=13", "--print-config"]) == 0
    train = yaml.safe_load(capsys.readouterr().out)["train"]
    assert (train["batch_size"], train["val_every"]) == (3, 13)


def test_every_leaf_key_is_read_by_the_library():
    """A schema key that no code reads is a setting that silently does nothing (``ops.channels_last``
    once): each leaf must appear as an attribute read (``.name``) or a key string (``"name"``)
    in the library, outside the schema module and the argument parsing (``psp/cli/common.py``, which
    applies the ``ops`` section for every command, counts as library)."""
    import re
    from pathlib import Path

    from psp.config import iter_fields

    root = Path(__file__).resolve().parent.parent / "psp"
    sources = "\n".join(p.read_text() for p in root.rglob("*.py")
                        if p.name != "config.py"
                        and ("cli" not in p.relative_to(root).parts or p.name == "common.py"))
    unread = [key for key, *_ in iter_fields() if key != "config_version" and not re.search(
        rf"\.{key.rsplit('.', 1)[-1]}\b|[\"']{key.rsplit('.', 1)[-1]}[\"']", sources)]
    assert not unread, f"config keys read nowhere: {unread}"
