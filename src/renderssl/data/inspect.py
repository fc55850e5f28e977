"""``renderssl data inspect PATH``: what a folder holds, as the readers see it, and whether its cameras
and depth agree. A user's first command with new data.

What PATH may be (tried in this order; the first that fits is the layout reported):

- ``ply file``: PATH is a ``.ply`` file: one point cloud (:func:`~renderssl.data.formats.read_ply`).
- ``scene``: :func:`~renderssl.data.formats.detect_format` recognises PATH itself (any format in
  :data:`~renderssl.data.formats.OPENERS`: ScanNet-style, 7-Scenes, Blender / NeRF, LLFF, ...).
- ``ply folder``: PATH holds ``.ply`` files (one cloud each: the 3D segmentation source).
- ``scene folder``: PATH's entries as ``data.source`` lists them (:func:`renderssl.data.build.scene_folders`)
  include at least one folder ``detect_format`` recognises; the others are listed under ``notes``.
- ``nested scene folders``: folders ``detect_format`` recognises 2 or 3 levels below PATH (a dataset
  root holding several layouts, say); a note names the folders to give ``data.source``.
- ``image folder``: image files (.png, .jpg, .jpeg) anywhere under PATH (BSDS500-style, ImageNet-style
  class folders, flat): a plain image collection for 2D pretraining.

Anything else is an :class:`InputError` saying what was looked for.

Reading. A scene is opened as ``data.source`` opens it (the ``(open, count)`` pair of its format in
``OPENERS``, as :func:`renderssl.data.scenes.folder_ref` uses them, with the default
:class:`~renderssl.data.formats.options.ReadOptions` or the ones given), and each of
its first ``max_frames`` frames (default: every frame) is read once through the opener's
``Scene.read_frame`` (a format still read whole when opened gives a ViewSet; its frames are then taken
from memory and the frames its reader dropped come from its ``skipped``). A frame whose read raises an
:class:`InputError` is listed under ``skipped`` with the reader's message, which names the file and the
problem; a scene that cannot be opened is reported with its error and the others go on. Warnings the
readers emit are collected into the scene's ``notes``. One frame's decoded tensors are held at a time.

Checks, per scene (each states its rule; ``problems`` lists what fails them, ``!`` in the text report):

- Frames: listed (the ``count`` of the format, from listings only), read, skipped; the frame sizes seen.
- Depth and labels: frames with depth, semantic and instance maps; class names; the semantic label
  values seen (a label >= the number of class names is a problem).
- Intrinsics (``K`` of every frame): median fx, fy in pixels (and their range when they vary), fy / fx,
  the principal point's offset from the image centre as a fraction of W and H, the horizontal and
  vertical field of view 2 atan(W / 2 fx), 2 atan(H / 2 fy). Problems: non-finite or non-positive focal
  lengths; fy / fx outside [0.9, 1.1] (non-square pixels, or K for another image size); a principal
  point more than 10% of the size from the centre or outside the image; a horizontal field of view
  outside [10, 150] degrees.
- Poses (``c2w`` of every frame): non-finite; singular (|det R| < 1e-8); rotations that are not
  orthonormal (max |R^T R - I| > 1e-3: a scale or shear in c2w) or have det < 0 (an axis flipped); plus
  the frames a reader refused for their pose (its message uses :func:`~renderssl.data.formats.images.
  pose_problem`'s words "non-finite" / "non-invertible"). Over the frames read, in frame order: the
  camera path length (sum of distances between consecutive centres), the median and largest distance
  between neighbouring cameras (a largest step above 10x the median is noted as a jump) and the median
  rotation between neighbours in degrees. Distances are in the scene's units (metres for the RGB-D
  formats; LLFF poses have an arbitrary scale).
- Depth reprojection, where frames have depth: for each pair of neighbouring frames read (i, i+1) with
  depth, frame i's valid depth (every s-th pixel in both directions, s = ceil(sqrt(H W / 20000)), at most
  about 20k points) is back-projected with its K and c2w (:meth:`Cameras.backproject_depth`), projected
  into frame i+1 (:meth:`Cameras.project`), and compared where it lands in front of the camera inside the
  image on a pixel with valid depth: |z_proj - z_observed| / z_observed, z_observed interpolated
  bilinearly between the four nearest pixel centres when they are valid and within 10% of each other,
  else the depth of the pixel containing the projection (never interpolated across a depth edge;
  on a 32x24 synthetic scene bilinear gives 0.05% where nearest gives about 0.7% of pixel
  discretisation). A pair needs at least :data:`MIN_PAIR_POINTS` such points. Reported: the median over pairs of each pair's median (robust to a
  few occluded points and a few bad pairs), the worst pair, and the median fraction of points that land
  (overlap). Exact depth and poses give a fraction of a percent (pixel discretisation); it is a problem
  above :data:`REPROJECTION_LIMIT` (5%): wrong pose conventions (OpenGL vs OpenCV axes, w2c stored as
  c2w, transposed rotations), a wrong depth scale or intrinsics show up exactly there. No pair with
  enough overlap is reported as n/a with the reason.
- PLY clouds: points, fields present, labelled points, label values, extent; a cloud above the 3D
  segmentation point cap (``downstream.points.max_points``) is noted, since training then crops it.
- Image folders: images, their sizes, the sub-folders directly under PATH (classes when ImageNet-style);
  each image (up to ``max_frames``) is decoded once, so unreadable ones are listed.

The report is a JSON-able dict (:func:`inspect_path`; ``--json FILE`` writes it) and a compact text
(:func:`format_report`). Only the readers' public API is used: :mod:`renderssl.data.formats`,
:mod:`renderssl.data.scenes`, :mod:`renderssl.data.build` and :class:`renderssl.geometry.Cameras`.
"""

from __future__ import annotations

import json
import math
import warnings
from collections import Counter
from pathlib import Path

import torch
from torch import Tensor

from ..errors import InputError
from ..geometry import Cameras
from .types import PointCloud, ViewSet

REPROJECTION_LIMIT = 0.05  # median relative depth error between neighbours above which poses are suspect
REPROJECTION_POINTS = 20000  # about this many back-projected pixels per frame (a pixel stride)
MIN_PAIR_POINTS = 20  # landed points a neighbouring pair needs to count
EDGE_RATIO = 1.1  # four neighbouring depths within this ratio are interpolated, else the nearest is used
FOCAL_RATIO_RANGE = (0.9, 1.1)
CENTRE_OFFSET_LIMIT = 0.1  # fraction of W / H
FOV_RANGE_DEG = (10.0, 150.0)
ORTHONORMAL_TOL = 1e-3
SINGULAR_DET = 1e-8
JUMP_FACTOR = 10.0
POSE_WORDS = ("non-finite", "non-invertible", "singular")  # images.pose_problem's words in reader messages
SEGMENTATION_POINT_CAP = 40000  # PointTaskConfig.max_points' default (eval/tasks.py; data/ does not import eval)
NESTED_DEPTH = 3  # scene folders are looked for this many levels below PATH
LIST_LIMIT = 10  # skipped files / problems printed per scene in the text report (the JSON has all)


# ==================================================================================================
# Entry point
# ==================================================================================================
def inspect_path(path, max_frames: int | None = None, options=None) -> dict:
    """The report of ``path`` (see the module docstring); ``max_frames`` caps the frames read per scene
    (None = all), ``options`` the :class:`ReadOptions` scenes are opened with (None = defaults)."""
    from .formats.options import ReadOptions

    if max_frames is not None and max_frames < 1:
        raise InputError(f"--max-frames must be >= 1, got {max_frames}")
    path, options = Path(path), options or ReadOptions()
    if not path.exists():
        raise InputError(f"{path}: not found")
    report = {"path": str(path), "layout": None, "format": None, "scenes": [], "clouds": [], "images": None,
              "notes": [], "max_frames": max_frames}
    if path.is_file():
        if path.suffix.lower() != ".ply":
            raise InputError(f"{path}: a file; expected a scene folder, a folder of scenes, of .ply files or of "
                             "images, or a .ply file")
        report.update(layout="ply file", format="ply", clouds=[inspect_cloud(path)])
        return finish(report)
    fmt = scene_format(path)
    if fmt is not None:
        report.update(layout="scene", format=fmt, scenes=[inspect_scene(path, fmt, options, max_frames)])
        return finish(report)
    plys = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".ply")
    if plys:
        report.update(layout="ply folder", format="ply", clouds=[inspect_cloud(p) for p in plys])
        return finish(report)
    scenes = scene_entries(path)
    if scenes:
        for entry, entry_fmt in scenes:
            if entry_fmt is None:
                report["notes"].append(f"{entry}: not a scene ({why_not_a_scene(entry)})")
            else:
                label = entry.relative_to(path).as_posix() if entry.is_relative_to(path) else None
                report["scenes"].append(inspect_scene(entry, entry_fmt, options, max_frames, label=label))
        formats = sorted({s["format"] for s in report["scenes"]})
        report.update(layout="scene folder", format=formats[0] if len(formats) == 1 else "mixed: " + ", ".join(formats))
        return finish(report)
    nested = nested_scenes(path)
    if nested:
        for entry, entry_fmt in nested:
            report["scenes"].append(inspect_scene(entry, entry_fmt, options, max_frames, label=entry.relative_to(path).as_posix()))
        parents = sorted({e.parent.relative_to(path).as_posix() for e, _ in nested})
        report["notes"].append("the scenes lie deeper than PATH's sub-folders: data.source takes a folder whose "
                               "sub-folders are scenes, here " + ", ".join(str(path / p) for p in parents[:5])
                               + (", ..." if len(parents) > 5 else ""))
        formats = sorted({s["format"] for s in report["scenes"]})
        report.update(layout="nested scene folders", format=formats[0] if len(formats) == 1 else "mixed: " + ", ".join(formats))
        return finish(report)
    images = image_files(path)
    if images:
        report.update(layout="image folder", format="images", images=inspect_images(path, images, max_frames))
        return finish(report)
    raise InputError(f"{path}: found no scene (transforms*.json, poses_bounds.npy, color/ + pose/, frame-*.pose.txt), "
                     "no .ply files and no images (.png, .jpg) in it or its sub-folders")


def scene_format(path: Path) -> str | None:
    """The format ``detect_format`` gives ``path``, or None when it recognises none."""
    from .formats import OPENERS, detect_format

    try:
        fmt = detect_format(path)
    except InputError:
        return None
    return fmt if fmt in OPENERS else None


def why_not_a_scene(path: Path) -> str:
    from .formats import detect_format

    try:
        detect_format(path)
    except InputError as err:
        return str(err).removeprefix(f"{path}: ")
    return "no reader for its format"


def scene_entries(path: Path) -> list[tuple[Path, str | None]]:
    """(folder, format or None) of the scenes ``data.source`` would list in ``path``, when any is a scene."""
    from .build import scene_folders

    try:
        folders = [f for f in scene_folders(path) if f.is_dir()]
    except InputError:
        return []
    entries = [(f, scene_format(f)) for f in folders]
    return entries if any(fmt is not None for _, fmt in entries) else []


def nested_scenes(path: Path, max_depth: int = NESTED_DEPTH) -> list[tuple[Path, str]]:
    """(folder, format) of the scene folders 2 to ``max_depth`` levels below ``path`` (a scene folder is
    not searched further; hidden folders are skipped), in path order."""
    found, level = [], [path]
    for depth in range(1, max_depth + 1):
        children = []
        for folder in level:
            try:
                children += sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
            except OSError:
                continue
        level = []
        for child in children:
            fmt = scene_format(child) if depth > 1 else None
            if fmt is not None:
                found.append((child, fmt))
            else:
                level.append(child)
    return sorted(found, key=lambda e: e[0].as_posix())


def finish(report: dict) -> dict:
    """Totals over the scenes / clouds, and every problem and skipped file with where it comes from."""
    scenes = report["scenes"]
    report["num_scenes"] = len(scenes)
    report["frames"] = {key: sum(s["frames"][key] for s in scenes) for key in ("listed", "read", "ok", "skipped")}
    sizes = Counter()
    for s in scenes:
        sizes.update(s["frames"]["sizes"])
    report["resolutions"] = dict(sizes)
    report["skipped"] = [item for s in scenes for item in s["skipped"]]
    report["skipped"] += [c["error"] for c in report["clouds"] if c.get("error")]
    if report["images"]:
        report["skipped"] += report["images"]["skipped"]
    report["problems"] = [f"{s['name']}: {p}" for s in scenes for p in s["problems"]]
    report["problems"] += [f"{c['name']}: {p}" for c in report["clouds"] for p in c.get("problems", [])]
    return report


# ==================================================================================================
# Posed scenes
# ==================================================================================================
def inspect_scene(path: Path, fmt: str, options, max_frames: int | None, label: str | None = None) -> dict:
    """One scene folder: opened as ``data.source`` opens it, each frame read once. ``label``: how the
    text report names it (default: the scene's name)."""
    from .formats import OPENERS

    opener, counter = OPENERS[fmt]
    out = {"name": path.name, "label": label, "path": str(path), "format": fmt, "error": None, "notes": [], "problems": [],
           "skipped": [], "frames": {"listed": 0, "read": 0, "ok": 0, "skipped": 0, "sizes": {}}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out["frames"]["listed"] = int(counter(path, options))
            scene = opener(path, options)
        except InputError as err:
            out["error"] = str(err)
            out["problems"].append(f"cannot be opened: {err}")
            out["skipped"].append(str(err))
            out["frames"]["skipped"] = out["frames"]["listed"]
            out["notes"] += [str(w.message) for w in caught]
            return out
        scan_frames(scene, out, max_frames)
    out["notes"] += [str(w.message) for w in caught]
    return out


def scan_frames(scene, out: dict, max_frames: int | None) -> None:
    """Read the scene's frames once, gathering sizes, depth, labels, skipped files and the checks."""
    in_memory = isinstance(scene, ViewSet)
    if in_memory:
        from .formats import skipped_frames

        out["skipped"] += skipped_frames(scene)
    n = len(scene)
    count = n if max_frames is None else min(n, max_frames)
    W, H = int(scene.width), int(scene.height)
    out.update(name=scene.name or out["name"], width=W, height=H, class_names=list(scene.class_names),
               has_depth=bool(scene.depth is not None if in_memory else scene.has_depth))
    sizes, depth_frames, label_frames, label_values = Counter(), 0, Counter(), set()
    labelled, label_pixels = 0, 0
    good, pairs = [], []
    previous = None  # (index, depth (H, W)) of the last frame read with depth
    for i in range(count):
        try:
            frame = frame_of(scene, i, in_memory)
        except InputError as err:
            out["skipped"].append(str(err))
            continue
        good.append(i)
        rgb = frame["rgb"]  # (3, h, w)
        sizes[f"{rgb.shape[-1]}x{rgb.shape[-2]}"] += 1
        for key in ("semantic", "instance"):
            if key in frame:
                label_frames[key] += 1
        if "semantic" in frame:
            sem = frame["semantic"].long()  # (H, W)
            label_values.update(torch.unique(sem[sem >= 0]).tolist())
            labelled, label_pixels = labelled + int((sem >= 0).sum()), label_pixels + sem.numel()
        depth = frame.get("depth")
        if depth is not None:
            depth_frames += 1
            depth = depth.reshape(depth.shape[-2:]).float()  # (H, W)
            if previous is not None and tuple(depth.shape) == (H, W) == tuple(previous[1].shape):
                pairs.append(pair_error(scene, previous[0], previous[1], i, depth))
            previous = (i, depth) if tuple(depth.shape) == (H, W) else None
    frames = out["frames"]
    frames.update(listed=max(frames["listed"], n + (len(out["skipped"]) if in_memory else 0)), read=count,
                  ok=len(good), skipped=len(out["skipped"]), sizes=dict(sizes))
    if max_frames is not None and count < n:
        out["notes"].append(f"read the first {count} of {n} frames (--max-frames)")
    out["depth"] = {"frames": depth_frames}
    out["labels"] = {"semantic_frames": label_frames["semantic"], "instance_frames": label_frames["instance"],
                     "num_class_names": len(scene.class_names),
                     "values": sorted(int(v) for v in label_values),
                     "labelled_fraction": labelled / label_pixels if label_pixels else None}
    if label_values and scene.class_names and max(label_values) >= len(scene.class_names):
        out["problems"].append(f"semantic label {max(label_values)} but only {len(scene.class_names)} class names")
    if len(sizes) > 1 or (sizes and f"{W}x{H}" not in sizes):
        out["problems"].append(f"frame sizes {dict(sizes)} differ from the scene's {W}x{H}")
    out["intrinsics"] = intrinsics_report(scene.K, W, H, out["problems"])
    out["poses"] = pose_report(scene.c2w, good, out["skipped"], out["problems"])
    out["reprojection"] = reprojection_report(pairs, out["has_depth"] or depth_frames > 0, out["problems"])


def frame_of(scene, i: int, in_memory: bool) -> dict:
    """Frame ``i`` as the opener's scene gives it (the read_frame keys)."""
    if in_memory:
        from .scenes import viewset_frame

        return viewset_frame(scene, i)
    return scene.read_frame(i)


def intrinsics_report(K: Tensor, W: int, H: int, problems: list[str]) -> dict:
    """Focal lengths, principal point offset and fields of view of K (V, 3, 3); problems appended."""
    K = K.double()
    fx, fy, cx, cy = K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2]  # (V,) each
    if not torch.isfinite(K).all():
        problems.append("intrinsics have non-finite values")
        return {"finite": False}
    if (fx <= 0).any() or (fy <= 0).any():
        problems.append(f"non-positive focal length (fx min {float(fx.min()):.4g}, fy min {float(fy.min()):.4g})")
        return {"finite": True, "fx": float(fx.median()), "fy": float(fy.median())}
    med = lambda t: float(t.median())  # noqa: E731
    out = {
        "fx": med(fx), "fy": med(fy), "fx_range": [float(fx.min()), float(fx.max())],
        "fy_range": [float(fy.min()), float(fy.max())], "fy_over_fx": med(fy / fx),
        "principal_offset": [med((cx - W / 2) / W), med((cy - H / 2) / H)],  # fraction of W, H
        "fov_deg": [math.degrees(2 * math.atan(W / (2 * med(fx)))), math.degrees(2 * math.atan(H / (2 * med(fy))))],
        "varies": bool((K - K[:1]).abs().max() > 1e-6), "skew": med(K[:, 0, 1]),
    }
    ratio = out["fy_over_fx"]
    if not FOCAL_RATIO_RANGE[0] <= ratio <= FOCAL_RATIO_RANGE[1]:
        problems.append(f"fy / fx = {ratio:.3f}: non-square pixels, or K for another image size")
    ox, oy = out["principal_offset"]
    inside = bool(((cx >= 0) & (cx <= W) & (cy >= 0) & (cy <= H)).all())
    if not inside:
        problems.append("the principal point lies outside the image (K for another image size?)")
    elif max(abs(ox), abs(oy)) > CENTRE_OFFSET_LIMIT:
        problems.append(f"principal point {ox:+.0%}, {oy:+.0%} of W, H from the image centre")
    if not FOV_RANGE_DEG[0] <= out["fov_deg"][0] <= FOV_RANGE_DEG[1]:
        problems.append(f"horizontal field of view {out['fov_deg'][0]:.1f} deg is unusual (focal length in other units?)")
    return out


def pose_report(c2w: Tensor, good: list[int], skipped: list[str], problems: list[str]) -> dict:
    """Pose checks over every frame's c2w (V, 4, 4) and the camera path over the frames read."""
    c2w = c2w.double()
    finite = torch.isfinite(c2w).flatten(1).all(1)  # (V,)
    R = torch.where(finite[:, None, None], c2w[:, :3, :3], torch.eye(3, dtype=c2w.dtype))  # (V, 3, 3)
    det = torch.linalg.det(R)  # (V,)
    singular = finite & (det.abs() < SINGULAR_DET)
    eye = torch.eye(3, dtype=c2w.dtype)
    ortho_err = (R.transpose(-1, -2) @ R - eye).abs().flatten(1).amax(1)  # (V,)
    usable = finite & ~singular
    refused = [s for s in skipped if any(w in s for w in POSE_WORDS)]
    out = {"frames": len(c2w), "non_finite": int((~finite).sum()), "singular": int(singular.sum()),
           "refused_by_reader": len(refused), "not_orthonormal": int((usable & (ortho_err > ORTHONORMAL_TOL)).sum()),
           "reflections": int((usable & (det < 0)).sum())}
    bad = out["non_finite"] + out["singular"] + out["refused_by_reader"]
    if bad:
        problems.append(f"{bad} unusable pose(s): {out['non_finite']} non-finite, {out['singular']} singular, "
                        f"{out['refused_by_reader']} refused by the reader")
    if out["not_orthonormal"]:
        problems.append(f"{out['not_orthonormal']} pose(s) whose rotation is not orthonormal (scale or shear in c2w)")
    if out["reflections"]:
        problems.append(f"{out['reflections']} pose(s) with det R < 0 (an axis flipped: a convention mix-up?)")
    keep = [i for i in good if bool(usable[i])]
    centres = c2w[keep, :3, 3]  # (n, 3)
    if len(keep) < 2:
        out.update(path_length=None, neighbour_distance_median=None, neighbour_distance_max=None,
                   neighbour_rotation_deg_median=None)
        return out
    steps = (centres[1:] - centres[:-1]).norm(dim=1)  # (n - 1,)
    Rk = R[keep]
    rel = Rk[:-1].transpose(-1, -2) @ Rk[1:]  # (n - 1, 3, 3)
    cos = ((rel.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    out.update(path_length=float(steps.sum()), neighbour_distance_median=float(steps.median()),
               neighbour_distance_max=float(steps.max()),
               neighbour_rotation_deg_median=math.degrees(float(torch.acos(cos).median())),
               extent=float((centres.amax(0) - centres.amin(0)).norm()))
    j = int(steps.argmax())
    if float(steps.median()) > 0 and float(steps[j]) > JUMP_FACTOR * float(steps.median()):
        out["jump"] = {"frames": [keep[j], keep[j + 1]], "distance": float(steps[j])}
        problems.append(f"camera jump of {float(steps[j]):.3g} between frames {keep[j]} and {keep[j + 1]} "
                        f"(> {JUMP_FACTOR:g}x the median step {float(steps.median()):.3g})")
    return out


def pair_error(scene, i: int, depth_i: Tensor, j: int, depth_j: Tensor) -> dict:
    """Depth of frame i (H, W) back-projected and projected into frame j; its error against j's depth."""
    H, W = depth_i.shape
    pose_ok = all(torch.isfinite(scene.c2w[k]).all() and torch.isfinite(scene.K[k]).all() for k in (i, j))
    out = {"frames": [i, j], "points": 0, "landed": 0, "median": None}
    if not pose_ok:
        return out
    s = max(1, math.ceil(math.sqrt(H * W / REPROJECTION_POINTS)))
    try:
        cam_i = Cameras(scene.K[i : i + 1].float(), scene.c2w[i : i + 1].float(), W, H)
        cam_j = Cameras(scene.K[j : j + 1].float(), scene.c2w[j : j + 1].float(), W, H)
        world = cam_i.backproject_depth(depth_i[None])[0]  # (H, W, 3)
    except InputError:
        return out
    valid = torch.zeros(H, W, dtype=torch.bool)
    valid[::s, ::s] = True
    valid &= depth_i > 0
    points = world[valid]  # (N, 3)
    out["points"] = int(points.shape[0])
    if not out["points"]:
        return out
    uv, z = cam_j.project(points[None])  # (1, N, 2), (1, N)
    uv, z = uv[0], z[0]
    inside = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H) & torch.isfinite(uv).all(1)
    observed = observed_depth(depth_j, uv)  # (N,)
    landed = inside & (observed > 0)
    out["landed"] = int(landed.sum())
    if out["landed"] >= MIN_PAIR_POINTS:
        err = (z[landed] - observed[landed]).abs() / observed[landed]
        out["median"] = float(err.double().median())
    return out


def observed_depth(depth: Tensor, uv: Tensor) -> Tensor:
    """Depth (H, W) at continuous pixel positions uv (N, 2): bilinear between the four nearest pixel
    centres where all four are valid and within :data:`EDGE_RATIO` of each other (no depth edge between
    them), else the depth of the pixel containing the position (nearest). 0 where that is invalid."""
    H, W = depth.shape
    u, v = uv[:, 0].clamp(0, W - 1e-4), uv[:, 1].clamp(0, H - 1e-4)  # (N,)
    nearest = depth[v.floor().long(), u.floor().long()]  # (N,)
    x, y = (u - 0.5).clamp(0, W - 1), (v - 0.5).clamp(0, H - 1)  # pixel-centre grid coordinates
    x0, y0 = x.floor().long().clamp(0, max(W - 2, 0)), y.floor().long().clamp(0, max(H - 2, 0))
    x1, y1 = (x0 + 1).clamp(max=W - 1), (y0 + 1).clamp(max=H - 1)
    fx, fy = (x - x0).clamp(0, 1), (y - y0).clamp(0, 1)
    d = torch.stack([depth[y0, x0], depth[y0, x1], depth[y1, x0], depth[y1, x1]])  # (4, N)
    smooth = (d > 0).all(0) & (d.amax(0) <= EDGE_RATIO * d.amin(0))
    bilinear = (d[0] * (1 - fx) + d[1] * fx) * (1 - fy) + (d[2] * (1 - fx) + d[3] * fx) * fy
    return torch.where(smooth, bilinear, nearest)


def reprojection_report(pairs: list[dict], has_depth: bool, problems: list[str]) -> dict:
    """Median over neighbouring pairs of the pairs' median relative depth errors (see the module docstring)."""
    if not has_depth:
        return {"median": None, "reason": "no depth"}
    scored = [p for p in pairs if p["median"] is not None]
    if not scored:
        reason = ("fewer than two frames with depth were read" if not pairs else
                  f"no neighbouring pair has {MIN_PAIR_POINTS} points landing on valid depth of the next frame")
        if pairs:
            problems.append(f"depth reprojection: {reason} (poses or intrinsics may be wrong)")
        return {"median": None, "reason": reason, "pairs": len(pairs)}
    medians = torch.tensor([p["median"] for p in scored], dtype=torch.float64)
    overlap = torch.tensor([p["landed"] / p["points"] for p in scored], dtype=torch.float64)
    worst = scored[int(medians.argmax())]
    out = {"median": float(medians.median()), "pairs": len(pairs), "scored_pairs": len(scored),
           "worst": {"frames": worst["frames"], "median": worst["median"]}, "overlap_median": float(overlap.median()),
           "limit": REPROJECTION_LIMIT}
    if out["median"] > REPROJECTION_LIMIT:
        problems.append(f"depth reprojection error {out['median']:.1%} between neighbouring frames (> "
                        f"{REPROJECTION_LIMIT:.0%}): poses or their convention (OpenGL vs OpenCV, w2c vs c2w, "
                        "transposed rotations), the depth scale or the intrinsics are likely wrong")
    return out


# ==================================================================================================
# Point clouds and image folders
# ==================================================================================================
def inspect_cloud(path: Path) -> dict:
    """One PLY file: points, fields, labels, extent; its error when it cannot be read."""
    from .formats import read_ply

    out = {"name": path.stem, "path": str(path), "error": None, "problems": []}
    try:
        cloud: PointCloud = read_ply(path)
    except InputError as err:
        out["error"] = str(err)
        out["problems"].append(f"cannot be read: {err}")
        return out
    pts = cloud.points.double()  # (N, 3)
    out.update(points=len(cloud), fields=[k for k in ("colors", "normals", "semantic", "instance")
                                          if getattr(cloud, k) is not None])
    if len(cloud):
        if not torch.isfinite(pts).all():
            out["problems"].append(f"{int((~torch.isfinite(pts).all(1)).sum())} point(s) with non-finite coordinates")
        finite = pts[torch.isfinite(pts).all(1)]
        if len(finite):
            out["extent"] = (finite.amax(0) - finite.amin(0)).tolist()
    if cloud.semantic is not None:
        sem = cloud.semantic
        values = torch.unique(sem[sem >= 0]).tolist()
        out["labels"] = {"labelled": int((sem >= 0).sum()), "values": [int(v) for v in values]}
        if not values:
            out["problems"].append("no labelled point (every label is -1)")
    if len(cloud) > SEGMENTATION_POINT_CAP:
        out["note"] = (f"{len(cloud)} points: 3D segmentation training caps a cloud at downstream.points.max_points "
                       f"(default {SEGMENTATION_POINT_CAP})")
    return out


def image_files(root: Path) -> list[Path]:
    """Image files anywhere under ``root`` (hidden entries skipped), sorted by relative path."""
    from .formats.images import is_image_file

    return sorted((p for p in root.rglob("*") if not any(part.startswith(".") for part in p.relative_to(root).parts)
                   and is_image_file(p)), key=lambda p: p.relative_to(root).as_posix())


def inspect_images(root: Path, files: list[Path], max_frames: int | None) -> dict:
    """A plain image folder: images, sizes, top-level sub-folders; each image (up to max_frames) decoded once."""
    from .formats.images import read_rgb

    count = len(files) if max_frames is None else min(len(files), max_frames)
    sizes, skipped = Counter(), []
    for path in files[:count]:
        try:
            rgb = read_rgb(path)  # (3, H, W)
        except InputError as err:
            skipped.append(str(err))
            continue
        sizes[f"{rgb.shape[-1]}x{rgb.shape[-2]}"] += 1
    folders = Counter(p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) > 1)
    return {"images": len(files), "read": count, "sizes": dict(sizes), "skipped": skipped,
            "top_folders": dict(sorted(folders.items())), "loose_images": sum(1 for p in files if p.parent == root)}


# ==================================================================================================
# Text
# ==================================================================================================
def pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def num(x, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}g}"


def format_report(report: dict) -> str:
    """The compact human-readable report (``!`` marks problems)."""
    lines = [f"{report['path']}", f"  layout  {report['layout']} ({report['format']})"]
    if report["scenes"] or report["layout"] in ("scene", "scene folder"):
        f = report["frames"]
        res = ", ".join(f"{k} ({v})" for k, v in report["resolutions"].items()) or "n/a"
        lines.append(f"  scenes  {report['num_scenes']}, frames {f['listed']} listed, {f['ok']} readable, "
                     f"{f['skipped']} skipped; resolution {res}")
    for s in report["scenes"]:
        lines += scene_lines(s)
    if report["clouds"]:
        lines.append(f"  clouds  {len(report['clouds'])}")
        for c in report["clouds"]:
            lines += cloud_lines(c)
    if report["images"]:
        im = report["images"]
        sizes = ", ".join(f"{k} ({v})" for k, v in sorted(im["sizes"].items(), key=lambda kv: -kv[1])[:5]) or "n/a"
        folders = ", ".join(f"{k} ({v})" for k, v in list(im["top_folders"].items())[:8])
        lines.append(f"  images  {im['images']} ({im['read']} read, {len(im['skipped'])} unreadable); sizes {sizes}")
        if folders:
            more = len(im["top_folders"]) - 8
            lines.append(f"  folders {folders}{f', ... {more} more' if more > 0 else ''}"
                         + (f"; {im['loose_images']} images directly in the folder" if im["loose_images"] else ""))
        lines += [f"  skipped {s}" for s in im["skipped"][:LIST_LIMIT]]
    for note in report["notes"]:
        lines.append(f"  note    {note}")
    n = len(report["problems"])
    lines.append(f"  {'no problems found' if not n else f'{n} problem(s) (marked !)'}; "
                 f"{len(report['skipped'])} skipped file(s)")
    return "\n".join(lines)


def scene_lines(s: dict) -> list[str]:
    f = s["frames"]
    head = f"  scene {s['label'] or s['name']} [{s['format']}]"
    if s["error"]:
        return [head, f"    ! cannot be opened: {s['error']}"]
    size = f"{s['width']}x{s['height']}"
    lines = [f"{head} {f['listed']} frames ({f['ok']} readable, {f['skipped']} skipped) {size}"]
    lab = s["labels"]
    names = s["class_names"]
    values = lab["values"]
    sem = (f"semantic {lab['semantic_frames']}/{f['ok']}"
           + (f" (values {values[0]}..{values[-1]}, {len(values)} distinct; labelled {pct(lab['labelled_fraction'])})"
              if values else ""))
    labels = (f"{sem}, instance {lab['instance_frames']}/{f['ok']}; {len(names)} class names"
              + (f" ({', '.join(names[:6])}{', ...' if len(names) > 6 else ''})" if names else "")
              if lab["semantic_frames"] or lab["instance_frames"] or names else "none")
    lines.append(f"    depth {s['depth']['frames']}/{f['ok']} frames; labels {labels}")
    k = s["intrinsics"]
    if "fov_deg" in k:
        vary = " (vary per frame)" if k["varies"] else ""
        lines.append(f"    intrinsics fx {k['fx']:.1f} fy {k['fy']:.1f} px{vary}, principal point "
                     f"{k['principal_offset'][0]:+.1%} / {k['principal_offset'][1]:+.1%} of W / H from the centre, "
                     f"FOV {k['fov_deg'][0]:.1f} x {k['fov_deg'][1]:.1f} deg")
    p = s["poses"]
    bad = p["non_finite"] + p["singular"] + p["refused_by_reader"]
    lines.append(f"    poses {p['frames']} ({bad} unusable); camera path {num(p['path_length'])}, neighbour distance "
                 f"median {num(p['neighbour_distance_median'])} (max {num(p['neighbour_distance_max'])}) scene units, "
                 f"rotation median {num(p['neighbour_rotation_deg_median'])} deg")
    r = s["reprojection"]
    if r["median"] is None:
        lines.append(f"    depth reprojection n/a ({r['reason']})")
    else:
        lines.append(f"    depth reprojection median {pct(r['median'])} over {r['scored_pairs']} neighbouring pair(s) "
                     f"(worst {pct(r['worst']['median'])}: frames {r['worst']['frames'][0]}->{r['worst']['frames'][1]}; "
                     f"overlap {r['overlap_median']:.0%})")
    lines += [f"    skipped {x}" for x in s["skipped"][:LIST_LIMIT]]
    if len(s["skipped"]) > LIST_LIMIT:
        lines.append(f"    ... {len(s['skipped']) - LIST_LIMIT} more skipped (all in --json)")
    lines += [f"    ! {x}" for x in s["problems"]]
    lines += [f"    note {x}" for x in s["notes"]]
    return lines


def cloud_lines(c: dict) -> list[str]:
    if c["error"]:
        return [f"    {c['name']}: ! cannot be read: {c['error']}"]
    lab = c.get("labels")
    labels = (f"labelled {lab['labelled']}/{c['points']}, values {lab['values'][0]}..{lab['values'][-1]} "
              f"({len(lab['values'])} distinct)" if lab and lab["values"] else "no labels" if not lab else "no labelled point")
    extent = " x ".join(f"{e:.2f}" for e in c.get("extent", []))
    lines = [f"    {c['name']}: {c['points']} points, fields {', '.join(c['fields']) or 'xyz only'}; {labels}; extent {extent}"]
    if c.get("note"):
        lines.append(f"      note {c['note']}")
    lines += [f"      ! {x}" for x in c["problems"]]
    return lines


def write_json(report: dict, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, allow_nan=False, default=str))
    return path


__all__ = ["REPROJECTION_LIMIT", "format_report", "inspect_path", "write_json"]
