"""Margin heads: closed forms at known angles, monotone targets, untouched non-targets, real-face training."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from models.heads import MarginHead, SoftmaxHead, SphereFaceHead, build_head, head_names, head_options

ALL_HEADS = ("softmax", "normface", "sphereface", "sphereface_arccos", "cosface", "arcface", "combined")
ANGULAR_HEADS = tuple(name for name in ALL_HEADS if name != "softmax")
MARGIN_HEADS = tuple(name for name in ANGULAR_HEADS if name != "normface")
# Known angles, off the piecewise boundaries (kπ/4, π − 0.5, π/1.35, ...): the closed forms are unambiguous.
ANGLES = (0.0, 0.1, math.pi / 6, 0.7, math.pi / 3, 1.3, math.pi / 2, 2.0, 2.5, 2.9, math.pi)


def _sphereface_psi(theta: float, m: float) -> float:
    k = min(math.floor(m * theta / math.pi), math.ceil(m) - 1)
    return (-1) ** k * math.cos(m * theta) - 2 * k


def _arcface(theta: float, m: float) -> float:
    # insightface: cos(θ + m) while cos θ > cos(π − m), else cos θ − sin(π − m)·m
    return math.cos(theta + m) if theta < math.pi - m else math.cos(theta) - math.sin(math.pi - m) * m


def _cos_below_pi(phi: float, m3: float) -> float | None:
    return math.cos(phi) - m3 if phi <= math.pi else None


# name, build options, closed form of the target logit (before the scale), as written in the papers.
CLOSED_FORMS = [
    ("softmax", {}, math.cos),
    ("normface", {"s": 30.0}, math.cos),
    ("cosface", {}, lambda t: math.cos(t) - 0.35),
    ("cosface", {"m": 0.2}, lambda t: math.cos(t) - 0.2),
    ("arcface", {}, lambda t: _arcface(t, 0.5)),
    ("arcface", {"m": 0.3}, lambda t: _arcface(t, 0.3)),
    ("sphereface", {"lambda_base": 0.0, "lambda_min": 0.0}, lambda t: _sphereface_psi(t, 4)),
    ("sphereface", {"m": 2, "lambda_base": 0.0, "lambda_min": 0.0}, lambda t: _sphereface_psi(t, 2)),
    # At iteration 0, λ = base = 1000: f = (λ cos θ + ψ) / (1 + λ).
    ("sphereface", {}, lambda t: (1000.0 * math.cos(t) + _sphereface_psi(t, 4)) / 1001.0),
    ("sphereface_arccos", {}, lambda t: _sphereface_psi(t, 1.35)),
    ("combined", {}, lambda t: _cos_below_pi(t + 0.3, 0.2)),
    ("combined", {"m1": 1.0, "m2": 0.0, "m3": 0.35}, lambda t: math.cos(t) - 0.35),
    # Past m1·θ + m2 = π the combined target continues as SphereFace's ψ: −cos(·) − 2 − m3.
    ("combined", {"m1": 1.2, "m2": 0.1, "m3": 0.05}, lambda t: _sphereface_psi(t + 0.1 / 1.2, 1.2) - 0.05),
]


def _head(name: str, **options: object) -> MarginHead:
    return build_head(name, embedding_size=16, num_classes=10, **options)


def test_registry_names_and_options() -> None:
    assert head_names() == list(ALL_HEADS)
    assert head_options("arcface") == {"s": 64.0, "m": 0.5}
    assert head_options("cosface") == {"s": 64.0, "m": 0.35}
    assert head_options("sphereface")["m"] == 4
    with pytest.raises(KeyError, match="unknown head"):
        build_head("nope", embedding_size=4, num_classes=3)
    with pytest.raises(TypeError, match="takes no option"):
        build_head("cosface", embedding_size=4, num_classes=3, margin=0.1)


@pytest.mark.parametrize(("name", "options", "closed_form"), CLOSED_FORMS)
def test_target_logit_matches_closed_form_at_known_angles(name, options, closed_form) -> None:
    head = _head(name, **options)
    angles = [t for t in ANGLES if closed_form(t) is not None]
    assert len(angles) >= 8
    cos_theta = torch.tensor([math.cos(t) for t in angles], dtype=torch.float64)
    expected = torch.tensor([closed_form(t) for t in angles], dtype=torch.float64)
    torch.testing.assert_close(head.target_logit(cos_theta), expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", ALL_HEADS)
def test_target_logit_is_non_increasing_in_theta(name: str) -> None:
    theta = torch.linspace(0.0, math.pi, 20001, dtype=torch.float64)
    target = _head(name).target_logit(torch.cos(theta))
    assert torch.isfinite(target).all()
    assert (target.diff() <= 1e-12).all(), f"{name} rises at θ = {theta[1:][target.diff() > 1e-12][:3]}"


@pytest.mark.parametrize("lam", [0.0, 5.0, 100.0])
def test_sphereface_target_is_non_increasing_at_every_lambda(lam: float) -> None:
    head = _head("sphereface", lambda_base=lam, lambda_min=lam)
    theta = torch.linspace(0.0, math.pi, 20001, dtype=torch.float64)
    assert (head.target_logit(torch.cos(theta)).diff() <= 1e-12).all()


@pytest.mark.parametrize("name", MARGIN_HEADS)
def test_margin_heads_penalize_the_target_everywhere_inside(name: str) -> None:
    theta = torch.linspace(0.01, math.pi - 0.01, 2001, dtype=torch.float64)
    options = {"lambda_min": 0.0, "lambda_base": 0.0} if name == "sphereface" else {}
    assert (_head(name, **options).target_logit(torch.cos(theta)) < torch.cos(theta)).all()


def _batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(6, 16, generator=generator) * 3.0
    labels = torch.tensor([0, 3, 9, 3, 5, 1])
    return embeddings, labels


@pytest.mark.parametrize("name", ANGULAR_HEADS)
def test_forward_scales_cosines_and_changes_only_the_target(name: str) -> None:
    head = _head(name).eval()
    embeddings, labels = _batch(0)
    logits = head(embeddings, labels)
    assert logits.shape == (6, 10)

    cos_theta = F.normalize(embeddings, dim=1) @ F.normalize(head.weight, dim=1).T
    if name == "sphereface":
        scale = embeddings.norm(dim=1, keepdim=True)  # the original A-Softmax keeps ‖x‖
    else:
        scale = torch.full((6, 1), head_options(name)["s"])
    is_target = F.one_hot(labels, 10).bool()
    torch.testing.assert_close(logits[~is_target], (scale * cos_theta)[~is_target], rtol=1e-6, atol=1e-6)
    expected_target = scale.squeeze(1) * head.target_logit(cos_theta[is_target])
    torch.testing.assert_close(logits[is_target], expected_target, rtol=1e-6, atol=1e-6)


def test_sphereface_with_fixed_scale_uses_normalized_features() -> None:
    head = _head("sphereface", s=30.0)
    embeddings, labels = _batch(1)
    logits = head(embeddings, labels)
    cos_theta = F.normalize(embeddings, dim=1) @ F.normalize(head.weight, dim=1).T
    is_target = F.one_hot(labels, 10).bool()
    torch.testing.assert_close(logits[~is_target], 30.0 * cos_theta[~is_target], rtol=1e-6, atol=1e-6)


def test_softmax_is_a_plain_linear_layer_with_bias() -> None:
    head = _head("softmax")
    assert isinstance(head, SoftmaxHead)
    embeddings, labels = _batch(2)
    torch.testing.assert_close(head(embeddings, labels), embeddings @ head.weight.T + head.bias)


@pytest.mark.parametrize("name", ALL_HEADS)
def test_gradients_reach_embeddings_and_weights(name: str) -> None:
    head = _head(name).train()
    embeddings, labels = _batch(3)
    embeddings.requires_grad_(True)
    # Also rows lying exactly on their class weight (cos θ = 1) and opposite it (cos θ = −1): no NaN.
    with torch.no_grad():
        embeddings[0] = head.weight[labels[0]] * 2.0
        embeddings[1] = -head.weight[labels[1]]
    F.cross_entropy(head(embeddings, labels), labels).backward()
    for tensor in (embeddings, head.weight):
        assert tensor.grad is not None
        assert torch.isfinite(tensor.grad).all()
        assert tensor.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("embeddings", "labels", "message"),
    [
        (torch.randn(4, 15), torch.zeros(4, dtype=torch.long), "embeddings must have shape"),
        (torch.randn(4, 16), torch.zeros(3, dtype=torch.long), "labels must have shape"),
        (torch.randn(4, 16), torch.zeros(4), "torch.long"),
        (torch.randn(4, 16), torch.tensor([0, 1, 10, 2]), "labels must lie in"),
        (torch.randn(4, 16), torch.tensor([0, -1, 1, 2]), "labels must lie in"),
    ],
)
def test_bad_batches_are_rejected(embeddings: torch.Tensor, labels: torch.Tensor, message: str) -> None:
    for name in ALL_HEADS:
        with pytest.raises(ValueError, match=message):
            _head(name)(embeddings, labels)


@pytest.mark.parametrize(
    ("name", "options"),
    [("cosface", {"s": 0.0}), ("arcface", {"m": 2.0}), ("sphereface", {"m": 1.5}), ("combined", {"m1": 0.5})],
)
def test_bad_hyper_parameters_are_rejected(name: str, options: dict[str, float]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each head words its own message
        _head(name, **options)


def test_sphereface_lambda_anneals_per_training_forward_only() -> None:
    head = _head("sphereface")
    assert isinstance(head, SphereFaceHead)
    embeddings, labels = _batch(4)
    assert head.current_lambda == 1000.0
    head.train()
    for _ in range(3):
        head(embeddings, labels)
    assert head.current_lambda == pytest.approx(1000.0 / (1.0 + 0.12 * 3))
    head.eval()
    head(embeddings, labels)
    assert int(head.iteration) == 3
    head.iteration.fill_(10_000)
    assert head.current_lambda == 5.0  # λ_min

    resumed = _head("sphereface")
    resumed.load_state_dict(head.state_dict())
    assert isinstance(resumed, SphereFaceHead)
    assert int(resumed.iteration) == 10_000


# ---- real faces ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def orl_pixels(shared_faces: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ORL faces (40 people × 10) as standardized 23×28 pixel vectors; images 1-7 train, 8-10 held out."""
    features, labels, is_train = [], [], []
    people = sorted(p for p in (shared_faces / "orl_att_faces").iterdir() if p.is_dir())
    for label, folder in enumerate(people):
        for index in range(1, 11):
            image = (
                Image.open(folder / f"{index}.pgm").convert("L").resize((23, 28), Image.Resampling.BILINEAR)
            )
            features.append(np.asarray(image, dtype=np.float32).ravel() / 255.0)
            labels.append(label)
            is_train.append(index <= 7)
    x = torch.from_numpy(np.stack(features))
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    return x, torch.tensor(labels), torch.tensor(is_train)


@pytest.fixture(scope="module")
def trained_on_orl(orl_pixels) -> dict[str, dict[str, float]]:
    """Train a linear 64-d embedder with each head on ORL; report held-out accuracy and angular gaps."""
    x, y, is_train = orl_pixels
    results = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: extra threads only add synchronisation on a shared CPU
    try:
        for name in ALL_HEADS:
            results[name] = _train_linear_embedder(name, x, y, is_train)
    finally:
        torch.set_num_threads(threads)
    return results


def _train_linear_embedder(
    name: str, x: torch.Tensor, y: torch.Tensor, is_train: torch.Tensor
) -> dict[str, float]:
    torch.manual_seed(0)
    embedder = torch.nn.Linear(x.shape[1], 64)
    head = build_head(name, embedding_size=64, num_classes=40)
    optimizer = torch.optim.Adam([*embedder.parameters(), *head.parameters()], lr=3e-3)
    for _ in range(200):
        loss = F.cross_entropy(head(embedder(x[is_train]), y[is_train]), y[is_train])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        result = {}
        for split, mask in (("train", is_train), ("test", ~is_train)):
            cos_theta = head.cosine(embedder(x[mask]))
            truth = y[mask].unsqueeze(1)
            target_angle = torch.acos(cos_theta.gather(1, truth).squeeze(1))
            nearest_other = torch.acos(cos_theta.scatter(1, truth, -1.0).max(dim=1).values)
            gap = nearest_other - target_angle  # > 0: the true class is the nearest
            result[f"{split}_accuracy"] = (gap > 0).float().mean().item()
            result[f"{split}_median_gap"] = gap.median().item()
            result[f"{split}_min_gap"] = gap.min().item()
    return result


@pytest.mark.parametrize("name", ALL_HEADS)
def test_every_head_learns_real_identities(name: str, trained_on_orl) -> None:
    result = trained_on_orl[name]
    assert result["train_accuracy"] == 1.0
    assert result["test_accuracy"] >= 0.85  # 40 people: chance is 0.025


@pytest.mark.parametrize("name", MARGIN_HEADS)
def test_margins_widen_the_angular_gap_on_real_faces(name: str, trained_on_orl) -> None:
    baseline = trained_on_orl["normface"]
    result = trained_on_orl[name]
    assert result["train_median_gap"] > 1.5 * baseline["train_median_gap"]
    assert result["test_median_gap"] > baseline["test_median_gap"]


def test_arcface_separates_every_training_face_by_its_margin(trained_on_orl) -> None:
    # Once ArcFace's loss is ~0, θ_y + m < θ_j for every training sample: the gap is at least m = 0.5.
    assert trained_on_orl["arcface"]["train_min_gap"] >= 0.5
