"""Settings read from files (TOML configs, a PNG's record) are checked against their dataclass fields, in one
sentence naming the file and the key, before anything runs."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from facediffuser.cli.main import main
from facediffuser.evaluation.harness import EvaluationConfig
from facediffuser.io.configuration import build_config, load_toml
from facediffuser.training.config import TrainConfig


@pytest.mark.parametrize(
    "line,words",
    [
        ('max_train_steps = "ten"', "`max_train_steps` must be an integer, got 'ten'."),
        ("max_train_steps = 10.0", "`max_train_steps` must be an integer, got 10.0."),
        ("max_train_steps = true", "`max_train_steps` must be an integer, got True."),
        ('learning_rate = "1e-4"', "`learning_rate` must be a number, got '1e-4'."),
        ("use_ema = 1", "`use_ema` must be true or false, got 1."),
        ("output_dir = 5", "`output_dir` must be a path (a string), got 5."),
        ('log_with = "wandb"', "`log_with` must be one of 'auto', 'tensorboard', 'csv', got 'wandb'."),
        ("snr_gamma = [5]", "`snr_gamma` must be a number (or null), got [5]."),
    ],
)
def test_a_toml_value_of_the_wrong_type_names_the_file_and_key(tmp_path, line, words):
    path = tmp_path / "train.toml"
    path.write_text(line + "\n", encoding="utf-8")
    with pytest.raises(ValueError) as err:
        build_config(TrainConfig, argparse.Namespace(data_root=Path("data")), path)
    assert str(err.value) == f"In {path}, {words}"


def test_an_integer_is_a_number_and_a_string_a_path():
    from facediffuser.io.configuration import check_file_values

    config = build_config(TrainConfig, base={"data_root": "data", "learning_rate": 1, "output_dir": "out"})
    assert config.learning_rate == 1.0 and isinstance(config.learning_rate, float)
    assert config.output_dir == Path("out")
    check_file_values(EvaluationConfig, {"methods": "tdm", "model": ["a", "b"], "height": None}, "x.toml")
    with pytest.raises(ValueError, match=r"^In x.toml, `methods` must be a list of strings \(or null\), got \[1\]."):
        check_file_values(EvaluationConfig, {"methods": [1]}, "x.toml")


@pytest.mark.parametrize(
    "content,words",
    [
        (b"\xef\xbb\xbfmax_train_steps = 3\n", None),  # a byte-order mark, as some Windows editors write
        (b"max_train_steps = 3\nname = '\xe9'\n", "is not UTF-8 text (byte 0xe9 at offset 28): save it as UTF-8."),
        (b"max_train_steps = \n", "is not valid TOML (Invalid value (at line 1, column 19))."),
    ],
)
def test_toml_files_are_utf8_with_or_without_a_bom_and_a_broken_one_is_named(tmp_path, content, words):
    path = tmp_path / "train.toml"
    path.write_bytes(content)
    if words is None:
        assert load_toml(path) == {"max_train_steps": 3}
        return
    with pytest.raises(ValueError) as err:
        load_toml(path)
    assert str(err.value) == f"{path} {words}"


def test_train_with_a_mistyped_config_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "train.toml").write_text('train_batch_size = "8"\n', encoding="utf-8")
    code = main(["train", "tdm", "--data-root", str(tmp_path), "--config", str(tmp_path / "train.toml")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert err.strip() == (
        f"facediffuser train: error: In {tmp_path / 'train.toml'}, `train_batch_size` must be an integer, got '8'."
    )


def test_a_bad_byte_after_a_byte_order_mark_is_placed_in_the_file(tmp_path):
    path = tmp_path / "t.toml"
    path.write_bytes(b"\xef\xbb\xbfmax_train_steps = 3\nname = 'caf\xe9'\n")
    with pytest.raises(ValueError, match=r"t.toml is not UTF-8 text \(byte 0xe9 at offset 34\)"):
        load_toml(path)
