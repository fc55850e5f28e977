"""``renderssl bench memory``: the figures it derives (rendered pixels, model state) against values
counted by hand, LPIPS stand-ins that load as real weights, and its command line."""

import tempfile
import warnings
from pathlib import Path

from renderssl.bench.step_memory import bench_config, measure_step_memory
from renderssl.cli import main
from renderssl.eval.lpips import LPIPS

TINY = ["data.train_scenes=2", "data.val_scenes=1", "data.test_scenes=1"]

def test_rendered_pixels_and_model_state_match_a_hand_count():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gs3_rgbd_tiny trains with MSE only and says so
        row = measure_step_memory("gs3_rgbd_tiny", TINY, repeats=1)
    assert row.rendered_pixels == 2 * 2 * 48 * 64  # batch 2 scenes x 2 context views x 48 x 64
    params = row.parameters
    # AdamW in fp32: parameter + gradient + two moments (4 x 4 bytes each) + one float32 step per tensor
    from renderssl.experiment import build_method, load_experiment

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tensors = len(list(build_method(load_experiment("gs3_rgbd_tiny", TINY)).parameters()))
    assert row.state_bytes == 16 * params + 4 * tensors
    assert row.step_peak_bytes is None or row.step_peak_bytes >= 0
    assert row.bytes_per_pixel is None or row.bytes_per_pixel == row.step_peak_bytes / row.rendered_pixels
    assert row.seconds > 0 and not row.lpips_stand_in

def test_missing_lpips_weights_get_stand_ins_that_load():
    with tempfile.TemporaryDirectory() as scratch:
        cfg, stand_in = bench_config("gs3_rgbd_base", TINY, Path(scratch))
        assert stand_in and cfg.train.batch_size == 4 and cfg.data.train_scenes == 2
        paths = cfg.recipe.lpips_weights
        assert Path(paths.vgg_path).parent == Path(scratch)
        LPIPS.from_files(paths.vgg_path, paths.lin_path)  # the files a run would read

def test_bench_memory_command_line(capsys):
    assert main(["bench", "memory", "train.steps=1"]) == 2
    assert "give at least one preset" in capsys.readouterr().err
    assert main(["bench", "memory", "mae_tiny", "train.batch_size=2", *TINY, "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "| mae_tiny | mae | vit | 2 | 64x64 | - |" in out  # one row, from its own process; MAE renders nothing

def test_a_failing_preset_names_itself(capsys):
    assert main(["bench", "memory", "mae_tiny", "mae.mask_ratio=1.5", "--repeats", "1"]) == 2
    assert "mae_tiny failed" in capsys.readouterr().err
