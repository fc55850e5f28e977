"""PLY point clouds (the vertex element of ascii, binary_little_endian and binary_big_endian files).

On disk: a text header ``ply / format <fmt> 1.0 / element vertex N / property <type> <name> ... /
end_header`` followed by the vertex records (one text line each for ascii, packed structs for binary).
Other elements (faces of a mesh, ...) are ignored; one *before* the vertex element may not have list
properties in a binary file.

Vertex fields understood (anything else is an :class:`InputError` listing the unknown and known
fields, unless ``ignore_unknown=True``):
- ``x y z`` (required) -> ``points`` float32 (N, 3), world coordinates as stored.
- ``red green blue`` -> ``colors`` float32 (N, 3) in [0, 1]: integer types are divided by their
  maximum (uchar / 255, ushort / 65535); float types are taken to be in [0, 1] already.
- ``alpha`` -> ignored (ScanNet meshes carry it).
- ``nx ny nz`` -> ``normals`` float32 (N, 3).
- ``label | semantic | class | semantic_label`` -> ``semantic`` int64 (N,), values as stored.
- ``instance | instance_id`` -> ``instance`` int64 (N,), values as stored.

Records are decoded with numpy structured dtypes (binary) or ``np.loadtxt`` (ascii); no per-point
Python loops. The writer stores x y z (float32), red green blue (uchar, or float32 with
``color_type="float"``), nx ny nz (float32), ``label`` and ``instance`` (int32, so -1 survives).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ...errors import InputError
from ..types import PointCloud
from .images import require_file

FORMATS = {"ascii": None, "binary_little_endian": "<", "binary_big_endian": ">"}
PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
FIELD_GROUPS = {
    "points": ("x", "y", "z"),
    "colors": ("red", "green", "blue"),
    "normals": ("nx", "ny", "nz"),
}
SEMANTIC_FIELDS = ("label", "semantic", "class", "semantic_label")
INSTANCE_FIELDS = ("instance", "instance_id")
IGNORED_FIELDS = ("alpha",)
KNOWN_FIELDS = tuple(n for g in FIELD_GROUPS.values() for n in g) + SEMANTIC_FIELDS + INSTANCE_FIELDS + IGNORED_FIELDS


@dataclass
class Element:
    name: str
    count: int
    props: list[tuple[str, str]]  # (name, numpy type code) for scalar properties
    has_list: bool = False


# ---- header ---------------------------------------------------------------------------------------
def parse_header(path: Path, data: bytes) -> tuple[str, list[Element], int]:
    """(format, elements, byte offset of the body)."""
    if not data.startswith(b"ply"):
        raise InputError(f"{path}: not a PLY file (does not start with 'ply')")
    end = data.find(b"end_header")
    if end < 0:
        raise InputError(f"{path}: PLY header has no 'end_header'")
    body = data.find(b"\n", end) + 1
    if body == 0:
        raise InputError(f"{path}: PLY file ends right after its header")
    try:
        lines = data[:end].decode("ascii").splitlines()[1:]
    except UnicodeDecodeError:
        raise InputError(f"{path}: PLY header is not ASCII text") from None
    fmt, elements = None, []
    for line in lines:
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format":
            fmt = words[1] if len(words) > 1 else ""
            if fmt not in FORMATS:
                raise InputError(f"{path}: unsupported PLY format {fmt!r}; expected one of {list(FORMATS)}")
        elif words[0] == "element" and len(words) == 3 and words[2].isdigit():
            elements.append(Element(words[1], int(words[2]), []))
        elif words[0] == "property" and elements:
            parse_property(path, elements[-1], words)
        else:
            raise InputError(f"{path}: malformed PLY header line {line!r}")
    if fmt is None:
        raise InputError(f"{path}: PLY header has no 'format' line")
    return fmt, elements, body


def parse_property(path: Path, element: Element, words: list[str]) -> None:
    if words[1] == "list" and len(words) == 5:
        element.has_list = True
        element.props.append((words[4], "list"))
        return
    if len(words) != 3 or words[1] not in PLY_TYPES:
        raise InputError(f"{path}: malformed PLY property {' '.join(words)!r}")
    if any(n == words[2] for n, _ in element.props):
        raise InputError(f"{path}: duplicate property {words[2]!r} in element {element.name!r}")
    element.props.append((words[2], PLY_TYPES[words[1]]))


# ---- reading --------------------------------------------------------------------------------------
def read_ply(path, ignore_unknown: bool = False, name: str | None = None) -> PointCloud:
    """Read the vertex element of a PLY file into a :class:`PointCloud` (see the module docstring)."""
    path = require_file(path, "PLY file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read file ({e})") from None
    fmt, elements, body = parse_header(path, data)
    index = next((i for i, e in enumerate(elements) if e.name == "vertex"), None)
    if index is None:
        raise InputError(f"{path}: PLY file has no 'vertex' element")
    vertex = elements[index]
    if vertex.count == 0:
        raise InputError(f"{path}: empty point cloud (element vertex 0)")
    if vertex.has_list:
        raise InputError(f"{path}: list properties in the vertex element are not supported")
    check_fields(path, [n for n, _ in vertex.props], ignore_unknown)
    if fmt == "ascii":
        records = read_ascii_vertices(path, data[body:], elements[:index], vertex)
    else:
        records = read_binary_vertices(path, data[body:], elements[:index], vertex, FORMATS[fmt])
    return records_to_cloud(path, records, name if name is not None else path.stem)


def check_fields(path: Path, names: list[str], ignore_unknown: bool) -> None:
    unknown = [n for n in names if n not in KNOWN_FIELDS]
    if unknown and not ignore_unknown:
        raise InputError(
            f"{path}: unknown vertex field(s) {unknown}; known fields are {list(KNOWN_FIELDS)} "
            "(pass ignore_unknown=True to drop unknown fields)"
        )
    for group, fields in FIELD_GROUPS.items():
        present = [f for f in fields if f in names]
        if group == "points" and len(present) != 3:
            raise InputError(f"{path}: vertex element needs fields x, y, z; found {names}")
        if 0 < len(present) < 3:
            raise InputError(f"{path}: incomplete {group} fields {present}; need all of {list(fields)}")
    for label_fields in (SEMANTIC_FIELDS, INSTANCE_FIELDS):
        present = [f for f in label_fields if f in names]
        if len(present) > 1:
            raise InputError(f"{path}: more than one label field of the same kind: {present}")


def read_ascii_vertices(path: Path, body: bytes, before: list[Element], vertex: Element) -> np.ndarray:
    lines = body.decode("ascii", errors="replace").splitlines()
    skip = sum(e.count for e in before)
    rows = lines[skip:skip + vertex.count]
    if len(rows) < vertex.count:
        raise InputError(f"{path}: truncated PLY: {vertex.count} vertices declared, {len(rows)} lines found")
    try:
        values = np.loadtxt(rows, dtype=np.float64, ndmin=2)  # (N, P)
    except ValueError as e:
        raise InputError(f"{path}: malformed ascii vertex data ({e})") from None
    if values.shape != (vertex.count, len(vertex.props)):
        raise InputError(f"{path}: expected {len(vertex.props)} values per vertex line, got shape {values.shape}")
    records = np.empty(vertex.count, dtype=[(n, t) for n, t in vertex.props])
    for j, (n, _) in enumerate(vertex.props):
        records[n] = values[:, j]
    return records


def read_binary_vertices(path: Path, body: bytes, before: list[Element], vertex: Element, endian: str) -> np.ndarray:
    offset = 0
    for e in before:
        if e.has_list:
            raise InputError(f"{path}: element {e.name!r} with list properties precedes 'vertex'; not supported in binary PLY")
        offset += e.count * np.dtype([(n, endian + t) for n, t in e.props]).itemsize
    dtype = np.dtype([(n, endian + t) for n, t in vertex.props])
    need = offset + vertex.count * dtype.itemsize
    if len(body) < need:
        raise InputError(f"{path}: truncated PLY: {vertex.count} vertices need {need} bytes of data, file has {len(body)}")
    return np.frombuffer(body, dtype=dtype, count=vertex.count, offset=offset)


def records_to_cloud(path: Path, rec: np.ndarray, name: str) -> PointCloud:
    names = rec.dtype.names

    def stack(fields) -> torch.Tensor:
        return torch.from_numpy(np.stack([rec[f].astype(np.float32) for f in fields], axis=-1))  # (N, 3)

    points = stack(FIELD_GROUPS["points"])
    if not bool(torch.isfinite(points).all()):
        raise InputError(f"{path}: {int((~torch.isfinite(points)).any(-1).sum())} point(s) with non-finite coordinates")
    colors = normals = semantic = instance = None
    if "red" in names:
        colors = stack(FIELD_GROUPS["colors"])
        kind = rec.dtype["red"]
        if kind.kind in "ui":
            colors = colors / float(np.iinfo(kind).max)
    if "nx" in names:
        normals = stack(FIELD_GROUPS["normals"])
    sem = next((f for f in SEMANTIC_FIELDS if f in names), None)
    if sem is not None:
        semantic = torch.from_numpy(np.round(rec[sem].astype(np.float64)).astype(np.int64))  # (N,)
    ins = next((f for f in INSTANCE_FIELDS if f in names), None)
    if ins is not None:
        instance = torch.from_numpy(np.round(rec[ins].astype(np.float64)).astype(np.int64))  # (N,)
    return PointCloud(points, colors, normals, semantic, instance, name=name)


# ---- writing --------------------------------------------------------------------------------------
def write_ply(cloud: PointCloud, path, format: str = "binary_little_endian", color_type: str = "uchar") -> Path:
    """Write ``cloud`` as a PLY file in ``format`` (ascii, binary_little_endian, binary_big_endian)."""
    path = Path(path)
    if format not in FORMATS:
        raise InputError(f"write_ply: format must be one of {list(FORMATS)}, got {format!r}")
    if color_type not in ("uchar", "float"):
        raise InputError(f"write_ply: color_type must be 'uchar' or 'float', got {color_type!r}")
    if len(cloud) == 0:
        raise InputError(f"write_ply: {path}: empty point cloud")
    columns = cloud_columns(cloud, color_type)  # [(name, ply type, (N,) array)]
    endian = FORMATS[format] or "<"
    rec = np.empty(len(cloud), dtype=[(n, endian + PLY_TYPES[t]) for n, t, _ in columns])
    for n, _, col in columns:
        rec[n] = col
    header = ["ply", f"format {format} 1.0", "comment written by renderssl", f"element vertex {len(cloud)}"]
    header += [f"property {t} {n}" for n, t, _ in columns] + ["end_header"]
    path.parent.mkdir(parents=True, exist_ok=True)
    body = ascii_body(rec) if format == "ascii" else rec.tobytes()
    path.write_bytes(("\n".join(header) + "\n").encode("ascii") + body)
    return path


def cloud_columns(cloud: PointCloud, color_type: str) -> list[tuple[str, str, np.ndarray]]:
    def np32(t: torch.Tensor) -> np.ndarray:
        return t.detach().cpu().float().numpy()

    cols = [(n, "float", np32(cloud.points[:, j])) for j, n in enumerate("xyz")]
    if cloud.colors is not None:
        c = cloud.colors.detach().cpu().float().clamp(0, 1)
        if color_type == "uchar":
            c = (c * 255.0).round().to(torch.uint8)
        cols += [(n, color_type, c[:, j].numpy()) for j, n in enumerate(FIELD_GROUPS["colors"])]
    if cloud.normals is not None:
        cols += [(n, "float", np32(cloud.normals[:, j])) for j, n in enumerate(FIELD_GROUPS["normals"])]
    for name, labels in (("label", cloud.semantic), ("instance", cloud.instance)):
        if labels is not None:
            cols.append((name, "int", labels.detach().cpu().numpy().astype(np.int32)))
    return cols


def ascii_body(rec: np.ndarray) -> bytes:
    """Structured records -> one text line per record (vectorised formatting; floats as %.9g)."""
    parts = []
    for n in rec.dtype.names:
        fmt = "%.9g" if rec.dtype[n].kind == "f" else "%d"
        parts.append(np.char.mod(fmt, rec[n]))  # (N,) str
    lines = parts[0]
    for p in parts[1:]:
        lines = np.char.add(np.char.add(lines, " "), p)
    return ("\n".join(lines.tolist()) + "\n").encode("ascii")
