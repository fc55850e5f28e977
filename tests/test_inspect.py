"""``renderssl data inspect``: synthetic scenes written in the public layouts (exact cameras, depth and
labels known) are read back and reported; corrupted poses, a deleted depth file, a truncated image, a
bad principal point and an unreadable image are each found and named."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import numpy as np
import pytest
import torch

from renderssl import cli
from renderssl.data.formats import write_blender, write_ply, write_scannet
from renderssl.data.formats.images import write_rgb
from renderssl.data.inspect import REPROJECTION_LIMIT, SEGMENTATION_POINT_CAP, format_report, inspect_path
from renderssl.data.points import fuse_frames
from renderssl.data.synthetic import CLASS_NAMES, SyntheticConfig, generate_scene
from renderssl.errors import InputError
from renderssl.eval.tasks import PointTaskConfig

SYNTH = SyntheticConfig(width=32, height=24, num_views=4)  # fov 65 deg horizontal


@pytest.fixture(scope="module")
def scenes():
    return [generate_scene(s, SYNTH) for s in (0, 1)]


@pytest.fixture(scope="module")
def data(tmp_path_factory, scenes):
    root = tmp_path_factory.mktemp("inspect")
    for name, vs in zip(("a", "b"), scenes):
        write_scannet(vs, root / "scannet" / name)
    write_blender(scenes[0], root / "blender" / "a")
    return root


def fresh_copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def path_length(c2w: torch.Tensor) -> float:
    centres = c2w[:, :3, 3].double()
    return float((centres[1:] - centres[:-1]).norm(dim=1).sum())


# ----------------------------------------------------------------------------------------- clean data


def test_scannet_folder_of_scenes_is_reported_as_written(data, scenes):
    report = inspect_path(data / "scannet")
    assert (report["layout"], report["format"], report["num_scenes"]) == ("scene folder", "scannet", 2)
    assert report["frames"] == {"listed": 8, "read": 8, "ok": 8, "skipped": 0}
    assert report["resolutions"] == {"32x24": 8}
    assert report["problems"] == [] and report["skipped"] == []
    for s, vs in zip(report["scenes"], scenes):
        assert (s["width"], s["height"], s["has_depth"]) == (32, 24, True)
        assert s["depth"]["frames"] == 4
        assert s["labels"]["semantic_frames"] == s["labels"]["instance_frames"] == 4
        assert s["class_names"] == list(CLASS_NAMES)
        assert s["labels"]["values"] == sorted(torch.unique(vs.semantic[vs.semantic >= 0]).tolist())
        k = s["intrinsics"]
        assert k["fx"] == pytest.approx(float(vs.K[0, 0, 0]), rel=1e-6)
        assert k["fov_deg"][0] == pytest.approx(SYNTH.fov_deg, abs=1e-3)
        fov_y = math.degrees(2 * math.atan(24 / (2 * float(vs.K[0, 1, 1]))))
        assert k["fov_deg"][1] == pytest.approx(fov_y, abs=1e-4)
        assert k["principal_offset"] == pytest.approx([0.0, 0.0], abs=1e-6)
        p = s["poses"]
        assert (p["non_finite"], p["singular"], p["not_orthonormal"], p["reflections"]) == (0, 0, 0, 0)
        assert p["path_length"] == pytest.approx(path_length(vs.c2w), rel=1e-5)
        steps = (vs.c2w[1:, :3, 3] - vs.c2w[:-1, :3, 3]).double().norm(dim=1)
        assert p["neighbour_distance_median"] == pytest.approx(float(steps.median()), rel=1e-5)
        r = s["reprojection"]
        assert r["scored_pairs"] == 3 and r["median"] < 0.01  # exact synthetic depth (mm PNG) and poses
    text = format_report(report)
    assert "scannet" in text and "32x24" in text and "no problems found" in text


def test_blender_scene_folder(data, scenes):
    report = inspect_path(data / "blender" / "a")
    assert (report["layout"], report["format"], report["num_scenes"]) == ("scene", "blender", 1)
    s = report["scenes"][0]
    assert s["frames"]["listed"] == s["frames"]["ok"] == 4 and s["frames"]["sizes"] == {"32x24": 4}
    assert s["depth"]["frames"] == 4
    assert s["labels"]["semantic_frames"] == 0  # the Blender layout has no label maps
    assert s["poses"]["path_length"] == pytest.approx(path_length(scenes[0].c2w), rel=1e-5)  # OpenGL -> OpenCV
    assert s["reprojection"]["median"] < 0.01
    assert report["problems"] == []


def test_max_frames_caps_the_frames_read(data):
    s = inspect_path(data / "scannet" / "a", max_frames=2)["scenes"][0]
    assert s["frames"]["listed"] == 4 and s["frames"]["read"] == s["frames"]["ok"] == 2
    assert s["reprojection"]["scored_pairs"] == 1
    assert any("--max-frames" in n for n in s["notes"])
    with pytest.raises(InputError, match="max-frames"):
        inspect_path(data / "scannet" / "a", max_frames=0)


# ----------------------------------------------------------------------------------------- broken data


def test_transposed_rotations_give_a_large_reprojection_error(data, tmp_path):
    exact = inspect_path(data / "scannet" / "a")["scenes"][0]["reprojection"]["median"]
    root = fresh_copy(data / "scannet" / "a", tmp_path / "a")
    for f in sorted((root / "pose").glob("*.txt")):
        m = np.loadtxt(f)
        m[:3, :3] = m[:3, :3].T
        np.savetxt(f, m)
    report = inspect_path(root)
    r = report["scenes"][0]["reprojection"]
    assert r["median"] > REPROJECTION_LIMIT and r["median"] > 20 * exact
    assert any("reprojection" in p for p in report["problems"])
    assert "! depth reprojection error" in format_report(report)


def test_deleted_depth_and_truncated_image_are_skipped_and_named(data, tmp_path, capsys):
    root = fresh_copy(data / "scannet" / "a", tmp_path / "a")
    (root / "depth" / "2.png").unlink()
    color = root / "color" / "1.png"
    color.write_bytes(color.read_bytes()[: color.stat().st_size // 2])
    report = inspect_path(root)
    s = report["scenes"][0]
    assert s["frames"]["listed"] == 4 and s["frames"]["ok"] == 2 and s["frames"]["skipped"] == 2
    assert any(str(root / "depth" / "2.png") in x for x in s["skipped"])
    assert any(str(color) in x and "truncated" in x for x in s["skipped"])
    assert s["reprojection"]["scored_pairs"] == 1  # frames 0 and 3 remain, as neighbours
    # the CLI prints them and writes the same report as JSON
    out = tmp_path / "report.json"
    assert cli.main(["data", "inspect", str(root), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert str(root / "depth" / "2.png") in text and str(color) in text
    written = json.loads(out.read_text())
    assert written["skipped"] == report["skipped"] and written["frames"] == report["frames"]


def test_non_finite_pose_and_off_centre_principal_point_are_problems(data, tmp_path):
    root = fresh_copy(data / "scannet" / "a", tmp_path / "a")
    (root / "pose" / "3.txt").write_text("-inf " * 16)  # ScanNet marks lost tracking so
    for name in ("intrinsic_color.txt", "intrinsic_depth.txt"):
        K = np.loadtxt(root / "intrinsic" / name)
        K[0, 2] = 0.8 * 32  # cx at 80% of the width
        np.savetxt(root / "intrinsic" / name, K)
    report = inspect_path(root)
    s = report["scenes"][0]
    assert s["poses"]["refused_by_reader"] == 1 and any("3.txt" in x for x in s["skipped"])
    assert s["intrinsics"]["principal_offset"][0] == pytest.approx(0.3, abs=1e-6)
    assert any("unusable pose" in p for p in report["problems"])
    assert any("principal point" in p for p in report["problems"])


# ----------------------------------------------------------------------------------------- other layouts


def test_ply_folder(tmp_path, scenes):
    clouds = []
    for name, vs in zip(("x", "y"), scenes):
        cloud = fuse_frames(vs)
        semantic = cloud.semantic.clone()
        semantic[::5] = -1
        clouds.append(dataclasses.replace(cloud, semantic=semantic, name=name))
        write_ply(clouds[-1], tmp_path / f"{name}.ply")
    (tmp_path / "z.ply").write_text("ply\nformat ascii 1.0\nelement vertex 3\nend_header\n")  # broken
    report = inspect_path(tmp_path)
    assert (report["layout"], report["format"]) == ("ply folder", "ply")
    by_name = {c["name"]: c for c in report["clouds"]}
    for cloud in clouds:
        c = by_name[cloud.name]
        assert c["points"] == len(cloud) and set(c["fields"]) == {"colors", "normals", "semantic", "instance"}
        assert c["labels"]["labelled"] == int((cloud.semantic >= 0).sum())
    assert by_name["z"]["error"] and any(str(tmp_path / "z.ply") in x for x in report["skipped"])
    assert SEGMENTATION_POINT_CAP == PointTaskConfig().max_points  # the note quotes the 3D task's default


def test_nested_image_folder(tmp_path):
    g = torch.Generator().manual_seed(0)
    for rel, (h, w) in {"train/a.png": (20, 30), "train/b.jpg": (20, 30), "val/c.png": (12, 16)}.items():
        write_rgb(tmp_path / "images" / rel, torch.rand(3, h, w, generator=g))
    bad = tmp_path / "images" / "val" / "d.png"
    write_rgb(bad, torch.rand(3, 8, 8, generator=g))
    bad.write_bytes(bad.read_bytes()[:40])
    report = inspect_path(tmp_path)
    assert (report["layout"], report["format"]) == ("image folder", "images")
    im = report["images"]
    assert im["images"] == 4 and im["sizes"] == {"30x20": 2, "16x12": 1}
    assert im["top_folders"] == {"images": 4}
    assert len(report["skipped"]) == 1 and str(bad) in report["skipped"][0]


def test_nested_scene_folders_name_the_source_to_give(data):
    report = inspect_path(data)  # scannet/{a,b} and blender/a, two levels down
    assert report["layout"] == "nested scene folders" and report["num_scenes"] == 3
    assert sorted(s["label"] for s in report["scenes"]) == ["blender/a", "scannet/a", "scannet/b"]
    assert any(str(data / "scannet") in n for n in report["notes"])


def test_nothing_usable_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hello")
    assert cli.main(["data", "inspect", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert str(tmp_path / "empty") in err and "\n" not in err and "Traceback" not in err
    assert cli.main(["data", "inspect", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
