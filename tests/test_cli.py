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
