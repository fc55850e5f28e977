"""Typed configs: dataclasses built from YAML plus ``key=value`` overrides.

Unknown keys and values of the wrong type are errors that name the key once (``unknown key
num_gaussian in gmae; did you mean num_gaussians?``, ``train.steps: expected an integer, got 'abc'``).
:func:`load_config` (and any loader built on :func:`build_with_overrides`) says where the error comes
from: ``override gmae.num_gaussian=3: unknown key num_gaussian in gmae; ...`` for a bad override,
``<file>: train.steps: ...`` for an error in the file. Override values are parsed as YAML (``train.steps=200``,
``optim.betas=[0.9,0.95]``, ``train.device=cpu``). ``to_dict`` gives the plain dict written beside every
run as ``config.yaml``. Every layer (methods, data, train) uses these helpers; none of them imports the
engine.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path

import yaml

from .errors import InputError


_KEY = re.compile(r"[A-Za-z_]\w*(?:\.\w+|\[\d+\])*")  # a dotted config key: gmae.encoder.depth, optim.betas[1]


class ConfigError(InputError):
    """A config key or value is wrong; the message names the dotted key.

    ``key``: the dotted key the problem is at (``""`` when unknown); ``detail``: the message without
    that key, for reports that name the key another way (an override ``key=value``). Without an
    explicit ``key``, a message ``"<dotted key>: <detail>"`` is split into the two.
    """

    def __init__(self, message: str, key: str | None = None, detail: str | None = None):
        super().__init__(message)
        if key is None:
            head, sep, rest = message.partition(": ")
            key, detail = (head, rest) if sep and _KEY.fullmatch(head) else ("", message)
        self.key = key
        self.detail = message if detail is None else detail


# ---- generic dataclass <-> dict ------------------------------------------------------------------


def _convert(tp, value, where: str):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(option, value, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {args}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, where)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if tp is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return list(value)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        inner = args[0] if args else typing.Any
        out = [_convert(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        if len(args) == 2:  # dict[K, V]: keys and values converted (e.g. optim.groups.<name>.lr)
            return {_convert(args[0], k, where): _convert(args[1], v, f"{where}.{k}") for k, v in value.items()}
        return dict(value)
    if tp is typing.Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported field type {tp}")


def from_dict(cls, data: dict, where: str = ""):
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {close[0]}?" if close else f"; known keys: {', '.join(names)}"
            message = f"unknown key {key}{f' in {where}' if where else ''}{hint}"  # names the key once
            raise ConfigError(message, key=path, detail=message)
        kwargs[key] = _convert(hints[key], value, path)
    try:
        return cls(**kwargs)
    except InputError as err:  # a dataclass's own validation
        raise _validation_error(str(err), where, cls, names) from None


def _validation_error(message: str, where: str, cls, names: list[str]) -> ConfigError:
    """A dataclass's own check as a ConfigError at the key it names, without naming it twice: a message
    that starts with the section's key (``gmae.loss: ...``, ``gmae: ...``) or with one of its fields
    (``steps: ...``) keeps that key; any other is put under the section (``train: steps must be ...``)."""
    head, sep, rest = message.partition(": ")
    if sep and _KEY.fullmatch(head):
        if where and (head == where or head.startswith(f"{where}.") or head.startswith(f"{where}[")):
            return ConfigError(message, key=head, detail=rest)
        if re.split(r"[.\[]", head)[0] in names:
            key = f"{where}.{head}" if where else head
            return ConfigError(f"{key}: {rest}", key=key, detail=rest)
    return ConfigError(f"{where or cls.__name__}: {message}", key=where, detail=message)


def to_dict(config) -> dict:
    """Plain nested dict (tuples as lists) of a dataclass config."""

    def plain(v):
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(config))


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set ``a.b.c=value`` entries (values parsed as YAML) into a nested dict, returning a copy."""
    import copy

    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(f"{OVERRIDE} {item}: expected key=value with a dotted key (train.steps=100)", key="")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"{OVERRIDE} {item}: the value is not valid YAML ({problem})", key="") from None
        node = data
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                section = ".".join(parts[:i + 1])
                raise ConfigError(f"{OVERRIDE} {item}: {section} is a value, not a section", key="") from None
        node[parts[-1]] = value
    return data


OVERRIDE = "override"  # how a message names the override it is about: "override gmae.loss=x: ..."


def build_with_overrides(build, overrides: list[str] = (), source=None):
    """``build(overrides)``, with a ConfigError reported against what causes it.

    ``build`` makes a config from a list of ``key=value`` overrides (reading ``source``, a config file,
    itself) and raises ConfigError. When it fails, the overrides are dropped from the end one at a time
    until that error (the same message) goes away: the last one dropped is the culprit, reported as
    ``override KEY=VALUE: <problem>`` (the key named once: the problem without the key when the error is
    at that key). When the error remains with no overrides at all it is in the file, reported as
    ``<source>: <problem at its dotted key>`` (``source`` is named only then). A failed build costs up to
    one rebuild per override; a successful one costs nothing extra.
    """
    overrides = list(overrides)
    try:
        return build(overrides)
    except ConfigError as err:
        raise locate_error(err, build, overrides, source) from None


def locate_error(err: ConfigError, build, overrides: list[str], source=None) -> ConfigError:
    """``err`` (raised by ``build(overrides)``) reworded to name its override or file, as
    :func:`build_with_overrides` describes. An error that already names its override is returned as is
    (without the ``source`` prefix that an outer loader may have put in front of it)."""
    message = str(err)
    prefix = None if source is None else f"{source}: "
    inner = message[len(prefix):] if prefix and message.startswith(prefix) else message
    if inner.startswith(f"{OVERRIDE} "):
        return err if inner == message else ConfigError(inner, key="")
    culprit = None
    for i in range(len(overrides) - 1, -1, -1):
        try:
            build(overrides[:i])
        except Exception as other:  # noqa: BLE001 - any other failure means this error is not there yet
            if str(other) == message:
                continue
        culprit = overrides[i]
        break
    if culprit is None:  # in the file (or the defaults)
        if prefix is None or message.startswith(prefix):
            return err
        return ConfigError(f"{prefix}{message}", key=err.key, detail=err.detail)
    at = err if inner == message else ConfigError(inner)
    text = at.detail if at.key and at.key == culprit.partition("=")[0].strip() else inner
    return ConfigError(f"{OVERRIDE} {culprit}: {text}", key=at.key, detail=text)


def load_yaml(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def load_config(cls, path=None, overrides: list[str] = ()):
    """``cls`` from an optional YAML file plus overrides; an error names the override or the file that
    causes it (:func:`build_with_overrides`)."""
    data = load_yaml(path) if path is not None else {}
    return build_with_overrides(lambda items: from_dict(cls, apply_overrides(data, items)), overrides, path)


def save_config(config, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    return path
