"""Datasets: sample keys, shapes and dtypes; collate functions; seeded view selection; loaders."""

from __future__ import annotations

import functools

import pytest
import torch
from torch.utils.data import DataLoader

from renderssl.data.datasets import (
    ImageDataset, MultiViewDataset, PointCloudDataset, RGBDFrameDataset, collate_points, collate_stacked,
    select_overlapping_views,
)
from renderssl.data.formats import read_scannet, write_image_folder, write_scannet
from renderssl.data.types import PointCloud, ViewSet
from renderssl.errors import InputError
from renderssl.geometry import intrinsics_matrix


def line_viewset(V=5, H=6, W=8, seed=0, labels=True, depth=True, name="s") -> ViewSet:
    """Cameras on the x axis at x = 0..V-1, all looking down +z (OpenCV)."""
    g = torch.Generator().manual_seed(seed)
    c2w = torch.eye(4).repeat(V, 1, 1)
    c2w[:, 0, 3] = torch.arange(V, dtype=torch.float32)
    return ViewSet(
        rgb=torch.rand(V, 3, H, W, generator=g),
        K=intrinsics_matrix(10.0, 10.0, W / 2, H / 2).expand(V, 3, 3).clone(),
        c2w=c2w,
        depth=torch.rand(V, 1, H, W, generator=g) + 1 if depth else None,
        semantic=torch.randint(-1, 4, (V, H, W), generator=g) if labels else None,
        instance=torch.randint(-1, 9, (V, H, W), generator=g) if labels else None,
        name=name,
    )


# ---- RGB-D frames ---------------------------------------------------------------------------------
def test_rgbd_frame_samples_and_collate():
    scenes = [line_viewset(3, name="a"), line_viewset(2, labels=False, name="b")]
    ds = RGBDFrameDataset(scenes)
    assert len(ds) == 5
    s = ds[4]  # scene b, frame 1
    assert s["rgb"].shape == (3, 6, 8) and s["rgb"].dtype == torch.float32
    assert s["depth"].shape == (1, 6, 8) and s["K"].shape == (3, 3) and s["c2w"].shape == (4, 4)
    assert s["scene"] == "b" and s["frame"] == "000001" and int(s["frame_index"]) == 1 and "semantic" not in s
    torch.testing.assert_close(s["c2w"], scenes[1].c2w[1])
    batch = collate_stacked([ds[i] for i in (0, 2, 4)])
    assert batch["rgb"].shape == (3, 3, 6, 8) and batch["depth"].shape == (3, 1, 6, 8)
    assert batch["K"].shape == (3, 3, 3) and batch["c2w"].shape == (3, 4, 4)
    assert batch["semantic"].shape == (3, 6, 8) and batch["semantic"].dtype == torch.int64
    assert bool((batch["semantic"][2] == -1).all())  # scene b has no labels: ignore
    torch.testing.assert_close(batch["semantic"][1], scenes[0].semantic[2])
    assert batch["scene"] == ["a", "a", "b"] and batch["frame_index"].tolist() == [0, 2, 1]


def test_rgbd_frames_from_loaders_and_dataloader(tmp_path):
    write_scannet(line_viewset(3, H=4, W=4), tmp_path / "s0")
    write_scannet(line_viewset(2, H=4, W=4), tmp_path / "s1")
    calls = []

    def load(path):
        calls.append(path.name)
        return read_scannet(path)

    ds = RGBDFrameDataset([functools.partial(load, tmp_path / n) for n in ("s0", "s1")], lengths=[3, 2], cache_scenes=1)
    assert len(ds) == 5 and calls == []  # lengths given: nothing loaded yet
    batches = list(DataLoader(ds, batch_size=2, collate_fn=collate_stacked))
    assert [b["rgb"].shape[0] for b in batches] == [2, 2, 1] and batches[0]["semantic"].shape == (2, 4, 4)
    assert calls == ["s0", "s1"]  # sequential access: each scene loaded once with an LRU of one
    with pytest.raises(InputError, match="has no depth"):
        RGBDFrameDataset([line_viewset(2, depth=False, name="nodepth")])[0]
    assert float(RGBDFrameDataset([line_viewset(2, depth=False)], require_depth=False)[1]["depth"].abs().sum()) == 0
    with pytest.raises(InputError, match="loader returned PointCloud"):
        RGBDFrameDataset([lambda: PointCloud(torch.zeros(1, 3))])


def test_collate_rejects_mixed_sizes():
    ds = RGBDFrameDataset([line_viewset(1, H=6, W=8), line_viewset(1, H=4, W=8)])
    with pytest.raises(InputError, match=r"'rgb' has different shapes"):
        collate_stacked([ds[0], ds[1]])


# ---- multi-view -----------------------------------------------------------------------------------
def test_multiview_sample_shapes_and_determinism():
    scenes = [line_viewset(6, name="a"), line_viewset(4, labels=False, name="b")]
    ds = MultiViewDataset(scenes, num_views=3, samples_per_scene=4, seed=7)
    assert len(ds) == 8
    s = ds[5]
    assert s["rgb"].shape == (3, 3, 6, 8) and s["depth"].shape == (3, 1, 6, 8)
    assert s["K"].shape == (3, 3, 3) and s["c2w"].shape == (3, 4, 4) and s["scene"] == "b"
    assert s["view_ids"].dtype == torch.int64 and len(set(s["view_ids"].tolist())) == 3
    torch.testing.assert_close(s["c2w"], scenes[1].c2w[s["view_ids"]])
    assert torch.equal(ds[5]["view_ids"], s["view_ids"])  # pure function of (seed, epoch, index)
    again = MultiViewDataset(scenes, num_views=3, samples_per_scene=4, seed=7)
    assert all(torch.equal(ds[i]["view_ids"], again[i]["view_ids"]) for i in range(8))
    other = MultiViewDataset(scenes, num_views=3, samples_per_scene=4, seed=8)
    assert any(not torch.equal(ds[i]["view_ids"], other[i]["view_ids"]) for i in range(8))
    ids_before = [ds[i]["view_ids"] for i in range(8)]
    ds.set_epoch(1)
    assert any(not torch.equal(ids_before[i], ds[i]["view_ids"]) for i in range(8))
    batch = collate_stacked([ds[0], ds[1]])
    assert batch["rgb"].shape == (2, 3, 3, 6, 8) and batch["semantic"].shape == (2, 3, 6, 8)
    assert batch["view_ids"].shape == (2, 3) and batch["c2w"].shape == (2, 3, 4, 4)


def test_view_selection_prefers_overlapping_cameras():
    c2w = line_viewset(8).c2w.clone()
    c2w[7, :3, :3] = torch.diag(torch.tensor([-1.0, 1.0, -1.0]))  # camera 7 looks down -z: no overlap
    for seed in range(20):
        ids = select_overlapping_views(c2w, 2, torch.Generator().manual_seed(seed), pool=1)
        ref, other = ids.tolist()
        if ref != 7:
            assert other != 7
            dists = (c2w[:7, 0, 3] - c2w[ref, 0, 3]).abs()
            dists[ref] = float("inf")
            assert abs(float(c2w[other, 0, 3] - c2w[ref, 0, 3])) == float(dists.min())  # a nearest neighbour
    ids = select_overlapping_views(c2w, 4, torch.Generator().manual_seed(0))
    assert ids.shape == (4,) and len(set(ids.tolist())) == 4


def test_multiview_too_few_views():
    with pytest.raises(InputError, match="'tiny' has 2 views, fewer than num_views=3"):
        MultiViewDataset([line_viewset(2, name="tiny")], num_views=3)[0]


# ---- images ---------------------------------------------------------------------------------------
def test_image_dataset_from_folder_and_viewsets(tmp_path):
    imgs = [torch.rand(3, 6, 8), torch.rand(3, 5, 7), torch.rand(3, 6, 8)]
    write_image_folder(imgs, [0, 1, 1], ["x", "y"], tmp_path / "f")
    ds = ImageDataset(tmp_path / "f")
    assert len(ds) == 3 and ds.class_names == ["x", "y"]
    assert ds[1]["label"].dtype == torch.int64 and int(ds[1]["label"]) == 1 and ds[1]["image"].shape == (3, 5, 7)
    with pytest.raises(InputError, match="different shapes"):
        collate_stacked([ds[0], ds[1]])
    batch = collate_stacked([ImageDataset(tmp_path / "f", size=(4, 4))[i] for i in range(3)])
    assert batch["image"].shape == (3, 3, 4, 4) and batch["label"].tolist() == [0, 1, 1]
    vds = ImageDataset([line_viewset(3), line_viewset(2)], labels=[5, 6])
    assert len(vds) == 5 and int(vds[3]["label"]) == 6 and vds[3]["image"].shape == (3, 6, 8)
    assert "label" not in ImageDataset([line_viewset(2)])[0]


# ---- point clouds ---------------------------------------------------------------------------------
def cloud(N, seed, labels=True):
    g = torch.Generator().manual_seed(seed)
    return PointCloud(torch.randn(N, 3, generator=g), torch.rand(N, 3, generator=g),
                      torch.nn.functional.normalize(torch.randn(N, 3, generator=g), dim=-1),
                      torch.randint(0, 5, (N,), generator=g) if labels else None, None, name=f"c{seed}")


def test_point_cloud_collate_offsets():
    clouds = [cloud(5, 0), cloud(3, 1, labels=False), lambda: cloud(7, 2)]
    ds = PointCloudDataset(clouds)
    s = ds[0]
    assert s["points"].shape == (5, 3) and s["colors"].shape == (5, 3) and s["normals"].shape == (5, 3)
    assert s["semantic"].shape == (5,) and s["semantic"].dtype == torch.int64 and "instance" not in s
    batch = collate_points([ds[i] for i in range(3)])
    assert batch["points"].shape == (15, 3) and batch["colors"].shape == (15, 3)
    assert batch["offset"].tolist() == [5, 8, 15] and batch["offset"].dtype == torch.int64
    assert batch["batch"].tolist() == [0] * 5 + [1] * 3 + [2] * 7
    assert batch["semantic"][5:8].tolist() == [-1, -1, -1]  # missing labels -> ignore
    torch.testing.assert_close(batch["points"][8:], clouds[2]().points)
    assert batch["name"] == ["c0", "c1", "c2"]
    loader = DataLoader(ds, batch_size=2, collate_fn=collate_points)
    assert [b["offset"].tolist() for b in loader] == [[5, 8], [7]]
    bare = PointCloudDataset([PointCloud(torch.zeros(2, 3))])[0]
    with pytest.raises(InputError, match=r"lacks \['colors', 'normals'\]"):
        collate_points([bare, ds[0]])


def test_multiview_samples_by_view_selection_policy_with_targets_and_near_far():
    from renderssl.data.datasets import near_far
    from renderssl.data.synthetic import SyntheticConfig, generate_scene
    from renderssl.data.views import ViewSelectionConfig

    scene = generate_scene(3, SyntheticConfig(num_views=12, width=16, height=12))
    ds = MultiViewDataset([scene], views=ViewSelectionConfig(mode="interval", interval=5), num_targets=2,
                          samples_per_scene=6, seed=1)
    for i in range(6):
        s = ds[i]
        ids = s["view_ids"].tolist()
        assert len(ids) == 4 and len(set(ids)) == 4 and ids[1] - ids[0] == 5  # the context pair 5 frames apart
        torch.testing.assert_close(s["c2w"], scene.c2w[s["view_ids"]])
        valid = scene.depth[s["view_ids"]][scene.depth[s["view_ids"]] > 0].sort().values
        n = valid.numel()  # the 1st and 99th percentiles by hand (linear interpolation), widened by 10%
        lo, hi = (valid[int(q * (n - 1))] + (q * (n - 1) % 1) * (valid[int(q * (n - 1)) + 1] - valid[int(q * (n - 1))]) for q in (0.01, 0.99))
        assert float(s["near"]) == pytest.approx(0.9 * float(lo), rel=1e-5) and float(s["far"]) == pytest.approx(1.1 * float(hi), rel=1e-5)
    assert [float(x) for x in near_far(torch.zeros(2, 1, 4, 4), (0.5, 7.0))] == [0.5, 7.0]  # no depth: the default
    overlap = MultiViewDataset([scene], views=ViewSelectionConfig(mode="overlap", min_overlap=0.3), seed=1)
    assert overlap[0]["rgb"].shape == (2, 3, 12, 16)
    batch = collate_stacked([ds[0], ds[1]])
    assert batch["rgb"].shape == (2, 4, 3, 12, 16) and batch["near"].shape == (2,)


def test_the_multiview_sample_type_is_built_from_a_recipes_sample_options():
    from renderssl.data.build import sample_dataset
    from renderssl.data.views import ViewSelectionConfig
    from renderssl.train.config import DataConfig

    data = DataConfig(width=16, height=12, views=8, train_scenes=2, val_scenes=1, test_scenes=1)
    ds, collate = sample_dataset("multiview", data, "pretrain", options={"views": ViewSelectionConfig(interval=3), "num_targets": 1})
    batch = collate([ds[0], ds[1]])
    assert len(ds) == 2 and batch["rgb"].shape == (2, 3, 3, 12, 16)
    assert (batch["view_ids"][:, 1] - batch["view_ids"][:, 0]).tolist() == [3, 3]


def test_between_targets_lie_strictly_between_the_interval_pair_and_random_stays_unchanged():
    from renderssl.data.views import ViewSelectionConfig

    scene = line_viewset(12, name="line")
    between = MultiViewDataset([scene], views=ViewSelectionConfig(interval=5, targets="between"), num_targets=1,
                               samples_per_scene=40, seed=3)
    seen = set()
    for i in range(len(between)):
        a, b, t = between[i]["view_ids"].tolist()
        assert b - a == 5 and a < t < b
        seen.add(t - a)
    assert seen == {1, 2, 3, 4}  # uniform among i+1 .. i+4: every offset occurs in 40 draws
    # the default (random) draws exactly what pretraining drew before: any other frame, same generator use
    default = MultiViewDataset([scene], views=ViewSelectionConfig(interval=5), num_targets=1, samples_per_scene=40, seed=3)
    explicit = MultiViewDataset([scene], views=ViewSelectionConfig(interval=5, targets="random"), num_targets=1,
                                samples_per_scene=40, seed=3)
    outside = 0
    for i in range(len(default)):
        ids = default[i]["view_ids"]
        assert torch.equal(ids, explicit[i]["view_ids"]) and len(set(ids.tolist())) == 3
        outside += not ids[0] < ids[2] < ids[1]
    assert outside > 0
    # interval 1 (nothing between) and overlap mode: a random other frame
    adjacent = MultiViewDataset([scene], views=ViewSelectionConfig(interval=1, targets="between"), num_targets=1,
                                samples_per_scene=5, seed=0)
    for i in range(len(adjacent)):
        a, b, t = adjacent[i]["view_ids"].tolist()
        assert b - a == 1 and t not in (a, b)


# ---- multi-view samples with the scene's fused cloud (PonderV2) ----------------------------------
def test_scene_cloud_equals_fusing_the_loaded_scene_and_collates_with_offsets():
    from renderssl.data.build import load_split
    from renderssl.data.datasets import SceneCloudConfig
    from renderssl.data.points import fuse_frames
    from renderssl.data.scenes import open_scene
    from renderssl.data.views import ViewSelectionConfig
    from renderssl.train.config import DataConfig

    scenes = load_split(DataConfig(source="synthetic", kind="room", width=32, height=24, views=6, train_scenes=2,
                                   val_scenes=0, test_scenes=0), "train")
    views = ViewSelectionConfig(mode="random", count=3)
    ds = MultiViewDataset(scenes, views=views, num_targets=1, scene_cloud=SceneCloudConfig(pixel_stride=3, frame_step=2))
    samples = [ds[0], ds[1]]
    assert samples[0]["rgb"].shape[0] == 4 and len(set(samples[0]["view_ids"].tolist())) == 4
    for i, sample in enumerate(samples):
        vs = open_scene(scenes[i])
        vs = vs if isinstance(vs, ViewSet) else vs.load()
        expected = fuse_frames(vs, frames=list(range(0, len(vs), 2)), stride=3)  # independent: the whole scene in memory
        torch.testing.assert_close(sample["cloud"]["points"], expected.points)
        torch.testing.assert_close(sample["cloud"]["colors"], expected.colors)
        assert torch.equal(sample["cloud"]["semantic"], expected.semantic)
    assert ds[0]["cloud"] is samples[0]["cloud"]  # fused once per scene
    batch = collate_stacked(samples)
    counts = [len(s["cloud"]["points"]) for s in samples]
    assert batch["cloud"]["offset"].tolist() == [counts[0], counts[0] + counts[1]]
    assert batch["cloud"]["points"].shape == (sum(counts), 3) and batch["rgb"].shape[:2] == (2, 4)


class _ShiftAndDraw:
    """A picklable test transform: shifts the points by a random draw from the sample's generator."""

    def __call__(self, sample: dict, generator: torch.Generator) -> dict:
        shift = torch.rand(3, generator=generator)  # (3,)
        return dict(sample, cloud=dict(sample["cloud"], points=sample["cloud"]["points"] + shift), shift=shift)


def test_multiview_transform_is_applied_last_with_the_samples_seeded_generator():
    import pickle

    from renderssl.data.build import load_split
    from renderssl.data.datasets import SceneCloudConfig, sample_generator
    from renderssl.data.views import ViewSelectionConfig
    from renderssl.train.config import DataConfig

    scenes = load_split(DataConfig(source="synthetic", kind="room", width=32, height=24, views=6, train_scenes=2,
                                   val_scenes=0, test_scenes=0), "train")
    kw = dict(views=ViewSelectionConfig(mode="random", count=3), scene_cloud=SceneCloudConfig(pixel_stride=3))
    plain = MultiViewDataset(scenes, **kw)
    ds = MultiViewDataset(scenes, **kw, transform=_ShiftAndDraw())
    ds = pickle.loads(pickle.dumps(ds))  # DataLoader workers get a pickled copy
    a, b, raw = ds[1], ds[1], plain[1]
    assert torch.equal(a["shift"], b["shift"]) and torch.equal(a["cloud"]["points"], b["cloud"]["points"])
    assert torch.equal(a["view_ids"], raw["view_ids"])  # the views are drawn first, as without a transform
    g = sample_generator(0, 0, 1)
    plain.select_views(1, plain.scenes[1], g)  # the generator continues after the view selection
    torch.testing.assert_close(a["shift"], torch.rand(3, generator=g))
    torch.testing.assert_close(a["cloud"]["points"], raw["cloud"]["points"] + a["shift"])
    assert not torch.equal(ds[0]["shift"], a["shift"])  # another index, another draw
    with pytest.raises(InputError, match="transform"):
        MultiViewDataset(scenes, **kw, transform=3)


def test_multiview_samples_of_a_source_view_curriculum_follow_the_step():
    """NPS: the sources then the target; every sample of a step has as many sources (capped by the
    smallest scene); fewer views as training goes on; near / far from the sources' depth only."""
    from renderssl.data.datasets import near_far
    from renderssl.data.synthetic import SyntheticConfig, generate_scene
    from renderssl.data.views import SourceViewCurriculum, step_view_count

    scenes = [generate_scene(s, SyntheticConfig(num_views=n, width=16, height=12)) for s, n in ((3, 14), (4, 9))]
    curriculum = SourceViewCurriculum(fewer_views=True)
    ds = MultiViewDataset(scenes, views=curriculum, samples_per_scene=3, seed=1)
    for step, total in ((1, 100), (50, 100), (100, 100)):
        ds.set_step(step, total)
        counts = set()
        for i in range(len(ds)):
            s = ds[i]
            ids = s["view_ids"].tolist()
            assert len(set(ids)) == len(ids)  # the target is none of its sources
            counts.add(len(ids) - 1)
            depth = scenes[i // 3].depth[s["view_ids"][:-1]][:, None]  # (V - 1, 1, H, W): the sources only
            near, far = near_far(depth, (0.1, 100.0))
            assert float(s["near"]) == pytest.approx(float(near)) and float(s["far"]) == pytest.approx(float(far))
        assert counts == {min(step_view_count(curriculum, step, total, 1), 8)}  # 9 frames: at most 8 sources
    assert counts == {2}  # the last step: 2 source views
    batch = collate_stacked([ds[0], ds[4]])
    assert batch["rgb"].shape == (2, 3, 3, 12, 16)
