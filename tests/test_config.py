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
    assert error(["train.step=5"]) == "override train.step=5: unknown key step in train; did you mean steps?"
    assert error(["trian.steps=5"]) == "override trian.steps=5: unknown key trian; did you mean train?"
    assert error(["extra.deep.dept=3"]) == "override extra.deep.dept=3: unknown key dept in extra.deep; did you mean depth?"
    assert error(["optim.betas2=[1, 2]"]).startswith("override optim.betas2=[1, 2]: unknown key betas2 in optim; did you mean betas?")
    message = error(["train.zzzzzz=1"])
    assert message.startswith("override train.zzzzzz=1: unknown key zzzzzz in train; known keys: steps, batch_size, seed")
    with pytest.raises(ConfigError, match="^unknown key num_gaussian in gmae; did you mean num_gaussians") as info:
        from_dict(Gmae, {"num_gaussian": 4}, "gmae")
    assert info.value.key == "gmae.num_gaussian"


def test_wrong_types_name_the_key_and_the_value():
    # The override names the key; the problem repeats it only when it lies deeper than the override's key.
    cases = {
        "train.steps=abc": "expected an integer, got 'abc'",
        "train.steps=2.5": "expected an integer, got 2.5",
        "train.steps=true": "expected an integer, got True",  # bools are not ints
        "train.progress=1": "expected true or false, got 1",
        "optim.blr=high": "expected a number, got 'high'",
        "optim.lr=fast": "expected a number, got 'fast'",  # float | None
        "optim.betas=0.9": "expected a list, got 0.9",
        "optim.betas=[0.9]": "expected 2 values, got 1",
        "optim.betas=[0.9, x]": "optim.betas[1]: expected a number, got 'x'",
        "extra.tags=[a, 3]": "extra.tags[1]: expected a string, got 3",
        "extra.deep.mode=slow": "'slow' is not one of ['fast', 'exact']",
        "train=5": "expected a mapping of TrainConfig fields, got 5",
        "train.steps=0": "train: steps must be >= 1, got 0",  # the dataclass's own check, at its section
    }
    for override, problem in cases.items():
        assert error([override]) == f"override {override}: {problem}"
    # from_dict alone (no override to name) names the dotted key.
    with pytest.raises(ConfigError, match=r"^optim\.betas\[1\]: expected a number, got 'x'$"):
        from_dict(Experiment, {"optim": {"betas": [0.9, "x"]}})
    with pytest.raises(ConfigError, match=r"^override train\.steps: expected key=value"):
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
    assert error(path=typo) == f"{typo}: unknown key stepz in train; did you mean steps?"
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


def test_errors_name_the_override_or_the_file_that_causes_them(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("train:\n  steps: 50\n")
    # A bad override is reported as that override; the file, which is fine, is not named.
    assert error(["train.step=5"], path) == "override train.step=5: unknown key step in train; did you mean steps?"
    assert error(["optim.blr=0.1", "train.steps=abc", "train.seed=3"], path) == "override train.steps=abc: expected an integer, got 'abc'"
    # Several overrides of one section: the first that breaks its check (the later one does not fix it).
    assert error(["train.steps=0", "train.seed=1"], path) == "override train.steps=0: train: steps must be >= 1, got 0"
    # An error in the file is reported at the file, even with (good) overrides of the same section.
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  steps: 50\n  sed: 3\n")
    assert error(["train.steps=60"], bad) == f"{bad}: unknown key sed in train; did you mean seed?"
    # A file value that an override replaces is not an error; a bad override of a bad file value is the override's.
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("train:\n  steps: xyz\n")
    assert load_config(Experiment, wrong, ["train.steps=7"]).train.steps == 7
    assert error(["train.steps=abc"], wrong) == "override train.steps=abc: expected an integer, got 'abc'"
    assert error([], wrong) == f"{wrong}: train.steps: expected an integer, got 'xyz'"


def test_override_syntax_errors_name_the_override():
    with pytest.raises(ConfigError) as info:
        apply_overrides({}, ["train.steps=["])
    assert str(info.value) == "override train.steps=[: the value is not valid YAML (expected the node content, but found '<stream end>')"
    with pytest.raises(ConfigError, match=r"^override train\.steps\.x=1: train\.steps is a value, not a section$"):
        apply_overrides({"train": {"steps": 3}}, ["train.steps.x=1"])
    with pytest.raises(ConfigError, match=r"^override train\.\.steps=1: expected key=value"):
        apply_overrides({}, ["train..steps=1"])


def test_a_loader_that_names_its_file_is_reworded_once(tmp_path):
    """``build_with_overrides`` around a loader that itself prefixes its errors with the file (as
    ``experiment.load_experiment`` does): the override is named instead, or the file once."""
    from renderssl.typed_config import build_with_overrides

    path = tmp_path / "exp.yaml"
    path.write_text("train:\n  steps: 50\n")

    def loader(items):
        try:
            return from_dict(Experiment, apply_overrides(yaml.safe_load(path.read_text()), items))
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None

    def message(items):
        with pytest.raises(ConfigError) as info:
            build_with_overrides(loader, items, path)
        return str(info.value)

    assert message(["train.seed=1", "train.step=5"]) == "override train.step=5: unknown key step in train; did you mean steps?"
    assert message(["optim.betas=[1]"]) == "override optim.betas=[1]: expected 2 values, got 1"
    assert message(["train.x=["]).startswith("override train.x=[: the value is not valid YAML")
    assert build_with_overrides(loader, ["train.seed=4"], path).train.seed == 4
    path.write_text("train:\n  steps: 0\n")
    assert message(["train.seed=1"]) == f"{path}: train: steps must be >= 1, got 0"
