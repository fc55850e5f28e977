"""methods.ponder_losses against hand computations, eikonal against exact SDFs, InfoNCE against an
independent cross-entropy; data.text_embeddings with temp files; plane depth -> ray distance by hand."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from renderssl.data.text_embeddings import SEMANTIC_OFF_MESSAGE, load_class_embeddings
from renderssl.errors import InputError
from renderssl.methods.ponder_losses import (
    PonderLossConfig,
    depth_l1_loss,
    free_space_loss,
    ponder_losses,
    rgb_l1_loss,
    sdf_loss,
    sdf_sample_masks,
    semantic_infonce_loss,
    semantic_infonce_over_rays,
)
from renderssl.render.volume import AutogradSDFField, eikonal_loss, ray_distance_from_z_depth

f64 = torch.float64


def test_official_weights_are_the_defaults():
    c = PonderLossConfig()
    assert (c.rgb_weight, c.depth_weight, c.sdf_weight, c.free_space_weight, c.eikonal_weight, c.semantic_weight) == (
        10.0, 1.0, 10.0, 1.0, 0.01, 0.1)
    assert (c.truncation, c.temperature) == (0.05, 0.01)
    with pytest.raises(InputError, match="semantic_negatives"):
        PonderLossConfig(semantic_negatives="pixels")


def test_rgb_and_depth_l1_by_hand():
    rgb = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.5, 0.5]])
    target = torch.tensor([[0.2, 0.2, 0.1], [0.5, 0.9, 0.5]])
    assert math.isclose(rgb_l1_loss(rgb, target).item(), (0.1 + 0 + 0.2 + 0 + 0.4 + 0) / 6, rel_tol=1e-6)
    depth = torch.tensor([1.0, 2.0, 3.0, 4.0])
    gt = torch.tensor([1.5, 0.0, 2.0, 4.25])  # ray 1 invalid
    assert math.isclose(depth_l1_loss(depth, gt).item(), (0.5 + 1.0 + 0.25) / 3, rel_tol=1e-6)
    assert depth_l1_loss(depth, torch.zeros(4)).item() == 0.0


def test_sdf_and_free_space_by_hand():
    """Two rays, surface at d = 1.0 and an invalid ray; τ = 0.05."""
    t = torch.tensor([[0.50, 0.96, 1.00, 1.04, 1.20],
                      [0.50, 0.96, 1.00, 1.04, 1.20]], dtype=f64)
    sdf = torch.tensor([[0.40, 0.05, 0.01, -0.02, -0.3],
                        [0.01, 0.00, 0.00, 0.00, 0.00]], dtype=f64)
    d = torch.tensor([1.0, 0.0], dtype=f64)
    front, band = sdf_sample_masks(t, d, 0.05)
    assert front.tolist() == [[True, False, False, False, False], [False] * 5]
    assert band.tolist() == [[False, True, True, True, False], [False] * 5]
    # band: |0.96 + 0.05 - 1| = 0.01, |1.00 + 0.01 - 1| = 0.01, |1.04 - 0.02 - 1| = 0.02
    assert math.isclose(sdf_loss(t, sdf, d, 0.05).item(), (0.01 + 0.01 + 0.02) / 3, rel_tol=1e-9)
    # front: relu(0.05 - 0.40) = 0
    assert free_space_loss(t, sdf, d, 0.05).item() == 0.0
    sdf2 = sdf.clone()
    sdf2[0, 0] = 0.01
    assert math.isclose(free_space_loss(t, sdf2, d, 0.05).item(), 0.04, rel_tol=1e-9)


def test_eikonal_is_zero_for_exact_plane_and_sphere_sdfs():
    pts = torch.rand(6, 9, 3, dtype=f64) * 2 - 1
    dirs = F.normalize(torch.randn_like(pts), dim=-1)
    n = F.normalize(torch.tensor([1.0, 2.0, -0.5], dtype=f64), dim=0)
    centre = torch.tensor([3.0, 0.0, 0.0], dtype=f64)  # away from the sphere's centre (∇ undefined there)
    for sdf_fn in (lambda p: (p * n).sum(-1) + 0.3, lambda p: (p - centre).norm(dim=-1) - 0.7):
        field = AutogradSDFField(sdf_fn)(pts, dirs)
        assert eikonal_loss(field.gradients).item() < 1e-20
    doubled = AutogradSDFField(lambda p: 2 * (p * n).sum(-1))(pts, dirs)
    assert math.isclose(eikonal_loss(doubled.gradients).item(), 1.0, rel_tol=1e-9)  # (2 - 1)^2


def class_embeddings(K=4, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(K, D, generator=g, dtype=f64), dim=-1)


def test_infonce_over_classes_equals_an_independent_cross_entropy():
    E = class_embeddings()
    g = torch.Generator().manual_seed(1)
    e = torch.randn(6, 8, generator=g, dtype=f64) * 3  # unnormalised rendered embeddings
    labels = torch.tensor([0, 3, -1, 2, 2, 1])
    got = semantic_infonce_loss(e, labels, E, 0.01)
    # independent: per ray, -log softmax over classes of cos / T, averaged over labelled rays
    total = 0.0
    for i in [0, 1, 3, 4, 5]:
        cos = [(e[i] @ E[k]).item() / e[i].norm().item() for k in range(4)]
        logits = [c / 0.01 for c in cos]
        m = max(logits)
        total += -(logits[labels[i]] - m - math.log(sum(math.exp(x - m) for x in logits)))
    assert math.isclose(got.item(), total / 5, rel_tol=1e-9)
    assert semantic_infonce_loss(e, torch.full((6,), -1), E).item() == 0.0


def test_infonce_over_rays_is_the_official_form():
    E = class_embeddings()
    g = torch.Generator().manual_seed(2)
    e = torch.randn(5, 8, generator=g, dtype=f64)
    labels = torch.tensor([1, 1, -1, 3, 0])
    got = semantic_infonce_over_rays(e, labels, E, 0.01)
    targets = torch.stack([E[1], E[1], torch.zeros(8, dtype=f64), E[3], E[0]])
    logits = F.normalize(e, dim=-1) @ targets.T / 0.01
    ce = F.cross_entropy(logits, torch.tensor([0, 1, -100, 3, 4]))  # official: ignore_index -100
    torch.testing.assert_close(got, ce)
    # a perfect prediction still pays log(2) on the two rays of class 1 (duplicate columns)
    perfect = torch.stack([E[1], E[1], E[2], E[3], E[0]]) * 5
    assert semantic_infonce_over_rays(perfect, labels, E, 1e-4).item() == pytest.approx(2 * math.log(2) / 4, rel=1e-6)


def test_ponder_losses_weights_and_total():
    R, S = 4, 6
    g = torch.Generator().manual_seed(3)
    t = torch.linspace(0.2, 1.8, S, dtype=f64).expand(R, S)
    sdf = torch.randn(R, S, generator=g, dtype=f64) * 0.1
    grads = torch.randn(R, S, 3, generator=g, dtype=f64)
    rgb, rgb_t = torch.rand(R, 3, generator=g, dtype=f64), torch.rand(R, 3, generator=g, dtype=f64)
    depth, depth_t = torch.rand(R, generator=g, dtype=f64) + 0.5, torch.tensor([1.0, 0.0, 1.3, 0.7], dtype=f64)
    E = class_embeddings()
    sem, labels = torch.randn(R, 8, generator=g, dtype=f64), torch.tensor([0, 1, -1, 3])
    cfg = PonderLossConfig()
    out = ponder_losses(cfg, rgb, rgb_t, depth, depth_t, t, sdf, grads, sem, labels, E)
    torch.testing.assert_close(out["rgb"], 10 * rgb_l1_loss(rgb, rgb_t))
    torch.testing.assert_close(out["depth"], 1 * depth_l1_loss(depth, depth_t))
    torch.testing.assert_close(out["sdf"], 10 * sdf_loss(t, sdf, depth_t, 0.05))
    torch.testing.assert_close(out["free_space"], 1 * free_space_loss(t, sdf, depth_t, 0.05))
    torch.testing.assert_close(out["eikonal"], 0.01 * eikonal_loss(grads))
    torch.testing.assert_close(out["semantic"], 0.1 * semantic_infonce_loss(sem, labels, E, 0.01))
    torch.testing.assert_close(out["total"], sum(v for k, v in out.items() if k != "total"))
    off = ponder_losses(cfg, rgb, rgb_t, depth, depth_t, t, sdf, grads)  # no embeddings: no semantic term
    assert "semantic" not in off


def test_plane_depth_to_ray_distance_by_hand():
    """A camera looking along +z: a ray at 45° to the axis in x reaches z-depth 2 after 2·√2."""
    axis = torch.tensor([0.0, 0.0, 1.0])
    d = F.normalize(torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 1.0], [3.0, 0.0, 4.0]]), dim=-1)
    z = torch.tensor([2.0, 2.0, 4.0])
    # hand: cos = 1, 1/√2, 4/5  ->  2, 2√2, 4 / 0.8 = 5
    torch.testing.assert_close(ray_distance_from_z_depth(z, d, axis), torch.tensor([2.0, 2 * math.sqrt(2), 5.0]))


# ---- text embeddings -----------------------------------------------------------------------------
def test_text_embeddings_from_a_name_dict_and_a_names_pair(tmp_path):
    vecs = {"wall": torch.tensor([3.0, 4.0, 0.0]), "floor": torch.tensor([0.0, 0.0, 2.0]), "door": torch.tensor([1.0, 1.0, 1.0])}
    p = tmp_path / "clip.pt"
    torch.save(vecs, p)
    E = load_class_embeddings(p, ["floor", "wall"])
    torch.testing.assert_close(E, torch.tensor([[0.0, 0.0, 1.0], [0.6, 0.8, 0.0]]))
    q = tmp_path / "clip.pth"
    torch.save({"names": ["wall", "floor"], "embeddings": torch.stack([vecs["wall"], vecs["floor"]])}, q)
    torch.testing.assert_close(load_class_embeddings(q, ["floor", "wall"]), E)
    n = tmp_path / "clip.npz"
    np.savez(n, names=np.array(["wall", "floor"]), embeddings=np.stack([vecs["wall"].numpy(), vecs["floor"].numpy()]))
    torch.testing.assert_close(load_class_embeddings(n, ["floor", "wall"]), E)


def test_text_embeddings_absent_or_incomplete(tmp_path):
    assert load_class_embeddings(None, ["wall"]) is None
    assert load_class_embeddings("", ["wall"]) is None
    assert load_class_embeddings(tmp_path / "nope.pt", ["wall"], missing_ok=True) is None
    assert "ponder.text_embeddings=PATH" in SEMANTIC_OFF_MESSAGE
    with pytest.raises(InputError, match="nope.pt"):
        load_class_embeddings(tmp_path / "nope.pt", ["wall"])
    p = tmp_path / "clip.pt"
    torch.save({"wall": torch.ones(4)}, p)
    with pytest.raises(InputError, match=r"clip\.pt.*'sofa'"):
        load_class_embeddings(p, ["wall", "sofa"])
    torch.save({"wall": torch.zeros(4)}, p)
    with pytest.raises(InputError, match="'wall'"):
        load_class_embeddings(p, ["wall"])
