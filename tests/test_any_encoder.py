"""Any encoder in and out: a ResNet, a SparseUNet and a PointNet++ as the encoder of a tiny Method are
pretrained by the real Trainer (resume and non-finite skipping included), exported, reloaded bit-
identically, and fine-tuned through ``renderssl compare`` next to scratch; the task family follows the
encoder; the 2D and 3D trainers do not import each other."""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from renderssl import cli
from renderssl.compare import CompareConfig, run_compare
from renderssl.data.datasets import collate_points
from renderssl.errors import InputError
from renderssl.eval.downstream import encoder_dim, encoder_features
from renderssl.eval.tasks import DownstreamConfig, PointTaskConfig, assign_tasks
from renderssl.export import build_encoder, export_encoder, load_encoder, read_encoder_info
from renderssl.finetune import downstream_config_for
from renderssl.methods.base import Method, MethodOutput, StepContext
from renderssl.models.encoders import ResNet, ResNetConfig
from renderssl.train import OptimConfig, Trainer, TrainConfig
from renderssl.train.config import DataConfig

# The encoders under test: resnet18 (its config has no width: the smallest ResNet, at 32x32 input), the
# SparseUNet and PointNet++ CPU presets with colour + normal inputs.
ENCODERS = {
    "resnet": dict(depth=18),
    "sparse_unet": dict(preset="small", in_channels=6, grid_size=0.1),
    "pointnet2": dict(preset="small", in_channels=6),
}
POINT = ("sparse_unet", "pointnet2")
SIDE, POINTS, SAMPLES = 32, 96, 4  # image side, points per cloud, pretraining samples
DATA = dict(width=32, height=32, views=2, train_scenes=2, val_scenes=0, test_scenes=1)  # downstream scenes


# ----------------------------------------------------------------------------------------- the tiny method


class Images(Dataset):
    """``rgb`` (3, SIDE, SIDE) smooth random pictures in [0, 1]."""

    def __init__(self):
        g = torch.Generator().manual_seed(5)
        coarse = torch.rand(SAMPLES, 3, 4, 4, generator=g)  # (S, 3, 4, 4)
        self.rgb = F.interpolate(coarse, size=(SIDE, SIDE), mode="bilinear", align_corners=False)  # (S, 3, H, W)

    def __len__(self) -> int:
        return SAMPLES

    def __getitem__(self, i: int) -> dict:
        return {"rgb": self.rgb[i]}


class Clouds(Dataset):
    """``points`` (POINTS, 3) in the unit cube, ``colors`` a smooth function of position, unit ``normals``."""

    def __init__(self):
        g = torch.Generator().manual_seed(6)
        self.points = torch.rand(SAMPLES, POINTS, 3, generator=g)  # (S, N, 3)
        self.colors = torch.sigmoid(torch.sin(3 * self.points) * 2)  # (S, N, 3)
        self.normals = F.normalize(torch.randn(SAMPLES, POINTS, 3, generator=g), dim=-1)  # (S, N, 3)

    def __len__(self) -> int:
        return SAMPLES

    def __getitem__(self, i: int) -> dict:
        return {"points": self.points[i], "colors": self.colors[i], "normals": self.normals[i]}


class Reconstruct(Method):
    """The encoder of ``architecture`` plus a linear head reconstructing the colours from its features
    (1x1 conv on the last ResNet stage, upsampled to the image; Linear per point), MSE. ``nan_at``: the
    forward calls (1-based) whose loss is NaN."""

    def __init__(self, architecture: str, nan_at=()):
        super().__init__()
        self.encoder_architecture = architecture  # the export architecture (instance value of the ClassVar)
        self.sample_type = "points" if architecture in POINT else "image"
        self.encoder = build_encoder(architecture, ENCODERS[architecture])
        width = self.encoder.num_features if architecture == "resnet" else self.encoder.out_channels
        self.head = nn.Conv2d(width, 3, 1) if architecture == "resnet" else nn.Linear(width, 3)
        self.nan_at, self.calls = tuple(nan_at), 0

    def encoder_config(self) -> dict:
        return dataclasses.asdict(self.encoder.config)

    def forward(self, batch: dict, ctx: StepContext = StepContext()) -> MethodOutput:
        self.calls += 1
        if self.sample_type == "image":
            x = batch["rgb"]  # (B, 3, H, W)
            feats = self.encoder.forward_features(x)[-1]  # (B, 512, H/32, W/32)
            pred = F.interpolate(self.head(feats), size=x.shape[-2:], mode="bilinear", align_corners=False)
            target = x
        else:
            features = torch.cat([batch["colors"], batch["normals"]], dim=1)  # (N, 6)
            pred = self.head(self.encoder(batch["points"], features, batch["offset"]))  # (N, 3)
            target = batch["colors"]
        loss = F.mse_loss(pred, target)
        if self.calls in self.nan_at:
            loss = loss * float("nan")
        return MethodOutput(loss=loss, terms={"mse": loss.detach()})


def trainer(architecture: str, out_dir, steps: int, nan_at=()) -> Trainer:
    """The real Trainer on the tiny method; constant lr, so a run's steps do not depend on its length."""
    torch.manual_seed(0)
    method = Reconstruct(architecture, nan_at)
    train = TrainConfig(steps=steps, batch_size=2, out_dir=str(out_dir), device="cpu", log_every=1, ckpt_every=2,
                        preview_every=100, progress=False)
    optim = OptimConfig(lr=1e-3, schedule="constant", warmup_steps=0)
    data, collate = (Clouds(), collate_points) if architecture in POINT else (Images(), None)
    return Trainer(method, data, train, optim, collate_fn=collate)


def losses(run: Path) -> list:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def fixed_input(architecture: str):
    if architecture == "resnet":
        return (Images().rgb[:2],)
    clouds = Clouds()
    batch = collate_points([clouds[0], clouds[1]])
    return batch["points"], torch.cat([batch["colors"], batch["normals"]], 1), batch["offset"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> dict:
    """architecture -> (trained method, summary, export folder): 3 steps of the Trainer, then the export
    ``experiment.export_method_encoder`` writes."""
    root = tmp_path_factory.mktemp("pretrained")
    out = {}
    for arch in ENCODERS:
        t = trainer(arch, root / arch, steps=3)
        summary = t.fit()
        method = t.method
        folder = export_encoder(method.encoder, method.encoder_architecture, method.encoder_config(), root / arch / "encoder",
                                pretraining={"method": f"tiny_{arch}", "steps": summary.steps_done})
        out[arch] = (method, summary, folder)
    return out


# ----------------------------------------------------------------------------------------- pretrain, export, reload


@pytest.mark.parametrize("arch", list(ENCODERS))
def test_trained_encoder_reloads_bit_identically(pretrained, arch):
    method, summary, folder = pretrained[arch]
    assert summary.steps_done == 3 and summary.skipped_nonfinite == 0 and math.isfinite(summary.last_loss)
    assert read_encoder_info(folder)["architecture"] == arch
    loaded = load_encoder(folder)
    want, got = method.encoder.state_dict(), loaded.state_dict()
    assert list(got) == list(want)
    for key, value in want.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key  # BN statistics included
    assert any("running_mean" in k for k in want)
    method.encoder.eval()
    with torch.no_grad():
        a, b = method.encoder(*fixed_input(arch)), loaded(*fixed_input(arch))
    assert torch.equal(a, b)


@pytest.mark.parametrize("arch", list(ENCODERS))
def test_resume_continues_the_run_exactly(tmp_path, arch):
    straight = trainer(arch, tmp_path / "straight", steps=4).fit()
    first = trainer(arch, tmp_path / "cut", steps=2).fit()
    assert first.steps_done == 2 and first.checkpoint.is_file()
    resumed_trainer = trainer(arch, tmp_path / "cut", steps=4)
    resumed = resumed_trainer.fit(resume=True)
    assert resumed.steps_done == 4
    assert [json.loads(line)["step"] for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert losses(tmp_path / "cut") == losses(tmp_path / "straight")  # bit-identical at every step
    final = torch.load(straight.checkpoint, weights_only=True)["model"]
    for key, value in resumed_trainer.method.state_dict().items():
        assert torch.equal(value, final[key]), key


def test_nonfinite_loss_of_a_point_encoder_is_skipped(tmp_path):
    t = trainer("sparse_unet", tmp_path, steps=3, nan_at=[2])
    seen = []  # parameters as each forward (= step) finds them
    t.method.register_forward_pre_hook(lambda m, args: seen.append([p.detach().clone() for p in m.parameters()]))
    summary = t.fit()
    assert summary.steps_done == 3 and summary.skipped_nonfinite == 1 and math.isfinite(summary.last_loss)
    records = {r["step"]: r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())}
    assert records[2]["loss"] is None and records[2]["skipped_nonfinite"] == 1 and records[1]["skipped_nonfinite"] == 0
    assert all(torch.equal(a, b) for a, b in zip(seen[1], seen[2]))  # the NaN step 2 changed no parameter
    assert not all(torch.equal(a, b) for a, b in zip(seen[0], seen[1]))  # step 1 did train
    assert all(torch.isfinite(v).all() for v in t.method.state_dict().values() if v.is_floating_point())


# ----------------------------------------------------------------------------------------- downstream


@pytest.mark.parametrize("arch", list(ENCODERS))
def test_compare_finetunes_the_export_next_to_scratch(pretrained, tmp_path, arch):
    _, _, folder = pretrained[arch]
    tasks = ["segmentation"] if arch == "resnet" else []  # point encoders: the default, segmentation3d
    ds = DownstreamConfig(steps=2, batch_size=2, lr=1e-3, warmup=1, device="cpu", points=PointTaskConfig(grid_size=0.05))
    cfg = CompareConfig(encoders=[str(folder)], tasks=tasks, fractions=[1.0], seeds=1, data=_data(), downstream=ds,
                        out_dir=str(tmp_path / "cmp"))
    results = run_compare(cfg, log=lambda s: None)
    task = "segmentation" if arch == "resnet" else "segmentation3d"
    assert list(results["tasks"]) == [task]
    runs = results["tasks"][task]["runs"]
    assert set(runs) == {f"tiny_{arch}", "scratch"}
    assert all(0.0 <= v["1.0"][0] <= 1.0 for v in runs.values())
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert f"tiny_{arch}" in table and "scratch" in table


def _data() -> DataConfig:
    return DataConfig(**DATA)


def test_resnet_dense_features_are_its_last_stage():
    torch.manual_seed(0)
    resnet = ResNet(ResNetConfig(depth=18)).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        dense = encoder_features(resnet, x, dense=True)
        stages = resnet.forward_features(x)
        pooled = encoder_features(resnet, x, dense=False)
    assert dense.shape == (2, 512, 2, 2) and torch.equal(dense, stages[-1])  # stride 32, num_features channels
    assert encoder_dim(resnet) == 512 == dense.shape[1]
    assert pooled.shape == (2, 512) and torch.allclose(pooled, stages[-1].mean(dim=(2, 3)))


# ----------------------------------------------------------------------------------------- task families


def test_tasks_follow_the_encoders():
    assert assign_tasks({"r": "resnet", "v": "vit"}, None) == {"segmentation": ["r", "v"], "depth": ["r", "v"]}
    assert assign_tasks({"p": "pointnet2", "s": "sparse_unet"}, []) == {"segmentation3d": ["p", "s"]}
    assert assign_tasks({"v": "vit", "p": "pointnet2"}, ["segmentation3d", "depth"]) == {"segmentation3d": ["p"], "depth": ["v"]}
    with pytest.raises(InputError, match="share no task.*image: v; points: p"):
        assign_tasks({"v": "vit", "p": "pointnet2"}, None)
    with pytest.raises(InputError, match="task 'segmentation' needs an image encoder.*encoder 'p' is a pointnet2"):
        assign_tasks({"v": "vit", "p": "pointnet2"}, ["segmentation"])  # p would take no task
    with pytest.raises(InputError, match="task 'segmentation3d' needs a point encoder.*encoder 'r' is a resnet") as err:
        assign_tasks({"r": "resnet"}, ["segmentation3d"])
    assert "\n" not in str(err.value)


def test_compare_refuses_a_task_that_does_not_fit_before_training(pretrained, tmp_path):
    resnet, points = pretrained["resnet"][2], pretrained["pointnet2"][2]
    bad = [
        (dict(encoders=[str(resnet)], tasks=["segmentation3d"]), "'segmentation3d'.*'tiny_resnet' is a resnet"),
        (dict(encoders=[str(points)], tasks=["depth"]), "'depth'.*'tiny_pointnet2' is a pointnet2"),
        (dict(architectures=["resnet:depth=18"], tasks=["segmentation3d"]), "'resnet:depth=18 \\(scratch\\)' is a resnet"),
        (dict(encoders=[str(resnet), str(points)]), "share no task"),
    ]
    for fields, message in bad:
        cfg = CompareConfig(**fields, fractions=[1.0], seeds=1, data=_data(), out_dir=str(tmp_path / "bad"))
        with pytest.raises(InputError, match=message):
            run_compare(cfg, log=lambda s: None)
    assert not (tmp_path / "bad").exists()
    # a mix with tasks that name both families: each task gets the entries of its family
    from renderssl.compare import build_entries

    cfg = CompareConfig(encoders=[str(resnet), str(points)], tasks=["segmentation", "segmentation3d"])
    entries = build_entries(cfg, [resnet, points])
    assert [e.name for e in entries] == ["tiny_resnet", "tiny_pointnet2", "scratch (resnet)", "scratch (pointnet2)"]
    plan = assign_tasks({e.name: e.architecture for e in entries}, cfg.tasks)
    assert plan == {"segmentation": ["tiny_resnet", "scratch (resnet)"],
                    "segmentation3d": ["tiny_pointnet2", "scratch (pointnet2)"]}


def test_finetune_picks_the_task_from_the_encoder(pretrained, tmp_path, capsys):
    resnet, points = pretrained["resnet"][2], pretrained["pointnet2"][2]
    assert downstream_config_for(resnet).task == "segmentation"
    cfg = downstream_config_for(points)
    assert (cfg.task, cfg.points.features) == ("segmentation3d", "color_normal")  # 6 input channels
    assert downstream_config_for(points, {"points": {"features": "color"}}).points.features == "color"  # given wins
    with pytest.raises(InputError, match=f"task 'depth' needs an image encoder.*{points.name}"):
        downstream_config_for(points, {"task": "depth"})
    assert cli.main(["finetune", str(points), "downstream.task=segmentation"]) == 2
    err = capsys.readouterr().err.strip()
    assert "'segmentation'" in err and str(points) in err and "pointnet2" in err and "\n" not in err
    # end to end through the CLI, the run folder standing for its encoder/: the 3D task by default
    out = tmp_path / "ft.json"
    overrides = [f"data.{k}={v}" for k, v in DATA.items()] + ["downstream.steps=2", "downstream.warmup=1", "downstream.batch_size=2",
                                                               "downstream.device=cpu", "downstream.points.grid_size=0.05"]
    assert cli.main(["finetune", str(points.parent), *overrides, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["task"] == "segmentation3d" and 0.0 <= result["metrics"]["miou"] <= 1.0
    capsys.readouterr()


# ----------------------------------------------------------------------------------------- import hygiene

EVAL = Path(__file__).resolve().parents[1] / "src" / "renderssl" / "eval"


def imported_modules(path: Path) -> set[str]:
    """Every module an ``import`` / ``from ... import`` in the file names (relative ones as written)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
            names.update("." * node.level + a.name for a in node.names if not node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_2d_and_3d_trainers_do_not_import_each_other():
    down, seg = imported_modules(EVAL / "downstream.py"), imported_modules(EVAL / "segmentation3d.py")
    assert not {m for m in down if m.endswith(("segmentation3d", "transfer"))}, down
    assert not {m for m in seg if m.endswith(("downstream", "transfer"))}, seg
    # nor through another module: importing one leaves the other unloaded
    for module, other in (("downstream", "segmentation3d"), ("segmentation3d", "downstream")):
        code = f"import sys, renderssl.eval.{module}; print(sorted(m for m in sys.modules if m.startswith('renderssl.eval.')))"
        loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert f"renderssl.eval.{other}'" not in loaded and "renderssl.eval.transfer'" not in loaded, loaded
