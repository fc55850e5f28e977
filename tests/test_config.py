"""Typed configs: unknown keys and wrong types name the dotted key, overrides are YAML, files are named
in their errors, and configs round-trip through dicts and YAML."""

from dataclasses import dataclass, field
from typing import Literal

import pytest
import yaml

from renderssl.train.config import (
    ConfigError,
    DataConfig,
    OptimConfig,
    TrainConfig,
    apply_overrides,
    from_dict,
    load_config,
    save_config,
    to_dict,
)


@dataclass
class Deep:
    depth: int = 2
    mode: Literal["fast", "exact"] = "fast"


@dataclass
class Extra:
    deep: Deep = field(default_factory=Deep)
    tags: list[str] = field(default_factory=list)
    head: Deep | None = None
    size: tuple[int, int] = (64, 48)


@dataclass
class Gmae:
    num_gaussians: int = 256


@dataclass
class Experiment:
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    extra: Extra = field(default_factory=Extra)


def error(overrides=(), path=None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(Experiment, path, overrides)
    return str(info.value)


def test_unknown_keys_name_the_dotted_key_and_suggest_the_closest():
    assert error(["train.step=5"]) == "train.step: unknown key; did you mean steps?"
    assert error(["trian.steps=5"]) == "trian: unknown key; did you mean train?"
    assert error(["extra.deep.dept=3"]) == "extra.deep.dept: unknown key; did you mean depth?"
    assert error(["optim.betas2=[1, 2]"]).startswith("optim.betas2: unknown key; did you mean betas?")
    message = error(["train.zzzzzz=1"])
    assert message.startswith("train.zzzzzz: unknown key; known keys: steps, batch_size, seed")
    with pytest.raises(ConfigError, match="^gmae.num_gaussian: unknown key; did you mean num_gaussians"):
        from_dict(Gmae, {"num_gaussian": 4}, "gmae")


def test_wrong_types_name_the_key_and_the_value():
    assert error(["train.steps=abc"]) == "train.steps: expected an integer, got 'abc'"
    assert error(["train.steps=2.5"]) == "train.steps: expected an integer, got 2.5"
    assert error(["train.steps=true"]) == "train.steps: expected an integer, got True"  # bools are not ints
    assert error(["train.progress=1"]) == "train.progress: expected true or false, got 1"
    assert error(["optim.blr=high"]) == "optim.blr: expected a number, got 'high'"
    assert error(["optim.lr=fast"]) == "optim.lr: expected a number, got 'fast'"  # float | None
    assert error(["optim.betas=0.9"]) == "optim.betas: expected a list, got 0.9"
    assert error(["optim.betas=[0.9]"]) == "optim.betas: expected 2 values, got 1"
    assert error(["optim.betas=[0.9, x]"]) == "optim.betas[1]: expected a number, got 'x'"
    assert error(["extra.tags=[a, 3]"]) == "extra.tags[1]: expected a string, got 3"
    assert error(["extra.deep.mode=slow"]) == "extra.deep.mode: 'slow' is not one of ['fast', 'exact']"
    assert error(["train=5"]) == "train: expected a mapping of TrainConfig fields, got 5"
    assert error(["train.steps=0"]) == "train: steps must be >= 1, got 0"  # the dataclass's own check
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides({}, ["train.steps"])


def test_overrides_are_parsed_as_yaml():
    cfg = load_config(
        Experiment,
        overrides=[
            "train.steps=200",
            "optim.betas=[0.8, 0.99]",
            "optim.lr=0.001",
            "optim.lr=null",  # later overrides win
            "optim.grad_clip=1",  # an int where a float is wanted becomes a float
            "optim.min_lr=1.0e-6",
            "train.device=cuda:1",
            "train.out_dir=runs/a b",
            "extra.tags=[x, y]",
            "extra.size=[32, 16]",
            "extra.head={depth: 5}",
            "extra.deep.depth=7",
        ],
    )
    assert cfg.train.steps == 200 and cfg.optim.betas == (0.8, 0.99) and isinstance(cfg.optim.betas, tuple)
    assert cfg.optim.lr is None and cfg.optim.grad_clip == 1.0 and isinstance(cfg.optim.grad_clip, float)
    assert cfg.optim.min_lr == 1e-6 and cfg.train.device == "cuda:1" and cfg.train.out_dir == "runs/a b"
    assert cfg.extra.tags == ["x", "y"] and cfg.extra.size == (32, 16)
    assert cfg.extra.head == Deep(depth=5) and cfg.extra.deep == Deep(depth=7)
    assert cfg.train.batch_size == TrainConfig().batch_size and cfg.data == DataConfig()  # untouched defaults
    assert load_config(Experiment, overrides=["optim.lr=0.5"]).optim.lr == 0.5
    assert load_config(Experiment, overrides=["extra.head=null"]).extra.head is None


def test_nested_sections_come_from_files_and_overrides(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("train:\n  steps: 50\n  seed: 3\noptim:\n  blr: 1.0e-3\nextra:\n  deep:\n    mode: exact\n")
    cfg = load_config(Experiment, path, ["train.steps=60", "extra.deep.depth=4"])
    assert (cfg.train.steps, cfg.train.seed, cfg.optim.blr) == (60, 3, 1e-3)
    assert cfg.extra.deep == Deep(depth=4, mode="exact")
    assert isinstance(cfg.train, TrainConfig) and isinstance(cfg.extra.deep, Deep)


def test_yaml_file_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    assert error(path=missing) == f"{missing}: config file not found"
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [steps: 1\n")
    assert error(path=broken).startswith(f"{broken}: not valid YAML")
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    assert error(path=listed) == f"{listed}: expected a mapping at the top level"
    typo = tmp_path / "typo.yaml"
    typo.write_text("train:\n  stepz: 5\n")
    assert error(path=typo) == f"{typo}: train.stepz: unknown key; did you mean steps?"
    bad_type = tmp_path / "type.yaml"
    bad_type.write_text("optim:\n  betas: [0.9, 0.95, 0.99]\n")
    assert error(path=bad_type) == f"{bad_type}: optim.betas: expected 2 values, got 3"
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(Experiment, empty) == Experiment()


def test_round_trip_through_dict_and_yaml(tmp_path):
    cfg = load_config(Experiment, overrides=["optim.betas=[0.7, 0.8]", "extra.tags=[a]", "extra.head={mode: exact}", "train.steps=9"])
    plain = to_dict(cfg)
    assert plain["optim"]["betas"] == [0.7, 0.8] and plain["extra"]["size"] == [64, 48]  # tuples become lists
    assert yaml.safe_load(yaml.safe_dump(plain)) == plain  # plain YAML types only
    assert from_dict(Experiment, plain) == cfg
    path = save_config(cfg, tmp_path / "sub" / "config.yaml")
    assert load_config(Experiment, path) == cfg
    assert from_dict(TrainConfig, to_dict(TrainConfig(steps=3, device="cpu"))) == TrainConfig(steps=3, device="cpu")
