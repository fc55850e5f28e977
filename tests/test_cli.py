"""CLI: `renderssl data synth` writes files the readers return unchanged; bad arguments fail cleanly."""

import torch

from renderssl.bench.render import bench_render, format_render_bench
from renderssl.cli import main
from renderssl.data.formats import read_blender, read_llff, read_ply, read_scannet, read_sevenscenes
from renderssl.data.points import viewset_to_pointcloud
from renderssl.data.synthetic import SyntheticConfig, generate_scene

HALF_LEVEL = 0.5 / 255 + 1e-6  # 8-bit images of float renders


def test_data_synth_round_trips_through_every_reader(tmp_path, capsys):
    args = ["--scenes", "2", "--views", "3", "--size", "24x16", "--seed", "7", "--formats", "scannet,blender,7scenes,llff"]
    assert main(["data", "synth", "--out", str(tmp_path), *args]) == 0
    printed = capsys.readouterr().out
    assert "preview" in printed and (tmp_path / "preview.png").is_file()
    config = SyntheticConfig(num_views=3, width=24, height=16)
    for seed in (7, 8):
        original = generate_scene(seed, config)
        readers = {"scannet": read_scannet, "blender": read_blender, "7scenes": read_sevenscenes, "llff": read_llff}
        for fmt, read in readers.items():
            vs = read(tmp_path / fmt / original.name)
            assert vs.rgb.shape == original.rgb.shape
            torch.testing.assert_close(vs.K, original.K, atol=1e-5, rtol=0)
            torch.testing.assert_close(vs.c2w, original.c2w, atol=1e-5, rtol=0)
            assert (vs.rgb - original.rgb).abs().max() <= HALF_LEVEL
            if fmt != "llff":  # LLFF stores no depth
                assert (vs.depth - original.depth).abs().max() <= 5e-4  # millimetre PNGs
        scannet = read_scannet(tmp_path / "scannet" / original.name)
        assert torch.equal(scannet.semantic, original.semantic) and torch.equal(scannet.instance, original.instance)
        cloud, expected = read_ply(tmp_path / "ply" / f"{original.name}.ply"), viewset_to_pointcloud(original)
        torch.testing.assert_close(cloud.points, expected.points)
        assert torch.equal(cloud.semantic, expected.semantic) and torch.equal(cloud.instance, expected.instance)


def test_data_synth_bad_arguments_fail_with_a_message(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path), "--size", "64by64"]) == 2
    assert "WIDTHxHEIGHT" in capsys.readouterr().err
    assert main(["data", "synth", "--out", str(tmp_path), "--formats", "colmap"]) == 2
    assert "colmap" in capsys.readouterr().err


def test_bench_render_smoke():
    result = bench_render(counts=(256, 512), sizes=((32, 32), (48, 32)), scenes=("cloud",), volume=False, log=lambda s: None)
    assert {t.backend for t in result.timings} == {"tiles", "dense"} and len(result.timings) == 8
    assert all(t.seconds > 0 for t in result.timings)
    text = format_render_bench(result)
    assert "tiles" in text and "dense" in text


def test_overrides_may_follow_options():
    from renderssl.cli import parse_args

    args = parse_args(["compare", "runs/a", "--tasks", "segmentation3d", "downstream.steps=2", "runs/b"])
    assert args.items == ["runs/a", "downstream.steps=2", "runs/b"] and args.tasks == "segmentation3d"
    assert parse_args(["pretrain", "gmae_tiny", "--resume", "train.steps=3"]).overrides == ["train.steps=3"]


def test_bench_encoders_smoke_and_exponent_fit():
    from renderssl.bench.encoders import bench_encoders, fit_exponent, format_encoder_bench

    assert abs(fit_exponent([1e3, 1e4, 1e5], [3 * x**0.5 for x in (1e3, 1e4, 1e5)]) - 0.5) < 1e-9
    result = bench_encoders(counts=(400, 800), sparse_unet="small", pointnet2="small", repeats=1, log=lambda s: None)
    assert [(t.encoder, t.points) for t in result.timings] == [
        ("sparse_unet:small", 400), ("sparse_unet:small", 800), ("pointnet2:small", 400), ("pointnet2:small", 800)]
    assert all(t.seconds > 0 for t in result.timings)
    assert all(0 < t.voxels <= t.points for t in result.timings if t.encoder.startswith("sparse_unet"))
    assert "800 points" in format_encoder_bench(result)


def test_pretrain_help_lists_the_presets_and_marks_sweep_files(capsys):
    import pytest

    from renderssl.cli import parse_args
    from renderssl.experiment import PRESET_DIR
    from renderssl.sweep import load_sweep

    files = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
    sweeps = []
    for name in files:  # a sweep file is one the sweep loader accepts
        try:
            load_sweep(name)
            sweeps.append(name)
        except Exception:
            pass
    assert sweeps == ["mask3d_ratio_grid"]
    for verb in ("pretrain", "config"):
        with pytest.raises(SystemExit):
            parse_args([verb, "--help"])
        text = capsys.readouterr().out
        presets_line = next(line for line in text.splitlines() if line.startswith("presets: "))
        sweep_line = next(line for line in text.splitlines() if line.startswith("sweep files"))
        assert presets_line == "presets: " + ", ".join(n for n in files if n not in sweeps)
        assert sweep_line.endswith(": mask3d_ratio_grid") and "renderssl sweep" in sweep_line


def test_pretrain_and_config_refuse_a_sweep_file_with_a_pointer_to_sweep(capsys):
    for verb in ("pretrain", "config"):
        assert main([verb, "mask3d_ratio_grid", "train.steps=1"]) == 2
        assert capsys.readouterr().err == (
            "renderssl: error: mask3d_ratio_grid is a sweep file (a grid of pretraining runs), not a preset: "
            "run it with `renderssl sweep mask3d_ratio_grid`\n")


def test_config_errors_name_the_override_or_the_file(tmp_path, capsys):
    assert main(["pretrain", "gmae_tiny", "train.steps=3", "gmae.num_gaussian=3", f"train.out_dir={tmp_path}"]) == 2
    assert capsys.readouterr().err == (
        "renderssl: error: override gmae.num_gaussian=3: unknown key num_gaussian in gmae; did you mean num_gaussians?\n")
    assert main(["config", "gmae_tiny", "train.steps=abc"]) == 2
    assert capsys.readouterr().err == "renderssl: error: override train.steps=abc: expected an integer, got 'abc'\n"
    assert main(["config", "gmae_tiny", "gmae.camera=fisheye"]) == 2
    assert capsys.readouterr().err == (
        "renderssl: error: override gmae.camera=fisheye: 'fisheye' is not one of ['orthographic', 'pinhole']\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: gmae\ngmae:\n  num_gaussian: 3\n")
    assert main(["pretrain", str(bad), "train.steps=3"]) == 2
    assert capsys.readouterr().err == f"renderssl: error: {bad}: unknown key num_gaussian in gmae; did you mean num_gaussians?\n"


def test_config_prints_the_resolved_config_as_yaml(tmp_path, capsys):
    import yaml

    from renderssl.experiment import PRESET_DIR, load_experiment

    assert main(["config", "gmae_tiny", "train.steps=7", "gmae.camera=pinhole"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    preset = yaml.safe_load((PRESET_DIR / "gmae_tiny.yaml").read_text())
    assert printed["method"] == "gmae" and printed["train"]["steps"] == 7 and printed["gmae"]["camera"] == "pinhole"
    for key, value in preset["gmae"].items():  # the preset's own values, the rest filled with defaults
        if not isinstance(value, dict):
            assert printed["gmae"][key] == value, key
    # What it prints is a complete config: loading it back gives the same experiment.
    path = tmp_path / "printed.yaml"
    path.write_text(yaml.safe_dump(printed))
    assert load_experiment(path) == load_experiment("gmae_tiny", ["train.steps=7", "gmae.camera=pinhole"])
