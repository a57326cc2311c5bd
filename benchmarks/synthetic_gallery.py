"""Synthetic galleries of realistic identities, calibrated on real face embeddings.

Uniform random unit vectors make a 1:N benchmark far too easy or far too hard: real embeddings
crowd around a common direction (the mean of dlib descriptors has norm ≈ 0.9), identities differ
along a few dozen effective dimensions, and faces of one person scatter tightly around their
identity. This module models exactly those three facts and fits them to measured cosines:

    mean direction ``m`` (unit), two random rotations ``Q_b``, ``Q_w`` of R^D
    identity centre    c = normalize(m + b · Q_b diag(√λ(β_b)) z),        z ~ N(0, I_D)
    face of identity   x = normalize(c + w · s · Q_w diag(√λ(β_w)) e),    e ~ N(0, I_D)
    per-face spread    s = exp(σ u − σ²/2),                                u ~ N(0, 1)

``λ(β)`` is a power-law spectrum (λ_k ∝ k^-β, summing to 1): ``β = 0`` is isotropic, larger ``β``
concentrates the variation in fewer dimensions (``effective_dimension``). ``b`` sets the mean
cosine between different identities, ``w`` the mean cosine within one, ``σ`` how much photos of
one person vary in quality, ``β_b`` the spread of different-identity cosines. ``calibrate`` fits
(b, β_b, w, σ) so that the synthetic same-identity and different-identity cosine distributions
match the measured ones (quantile matching, common random numbers); ``β_w`` is taken from the
effective dimension of the measured within-identity scatter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.optimize import brentq, minimize
from scipy.stats import ortho_group

from service.pipeline.embed import l2_normalize
from service.pipeline.types import FloatArray

Float64Array = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

QUANTILE_LEVELS = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
# The quantiles the calibration matches (the extreme ones are too noisy on a few hundred faces).
FIT_LEVELS = (0.05, 0.25, 0.5, 0.75, 0.95)
_CHUNK_ROWS = 65_536  # faces generated per block, to bound temporary memory at 1M faces
_MAX_DECAY = 4.0


# ---------------------------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class CosineSummary:
    """A distribution of cosine similarities: count, mean, std and quantiles (``QUANTILE_LEVELS``)."""

    count: int
    mean: float
    std: float
    quantiles: tuple[float, ...]

    @classmethod
    def of(cls, values: npt.ArrayLike) -> CosineSummary:
        array = np.asarray(values, dtype=np.float64).ravel()
        if array.size == 0:
            raise ValueError("cannot summarize an empty set of cosines")
        return cls(
            count=int(array.size),
            mean=float(array.mean()),
            std=float(array.std()),
            quantiles=tuple(float(q) for q in np.quantile(array, QUANTILE_LEVELS)),
        )

    def quantile(self, level: float) -> float:
        return self.quantiles[QUANTILE_LEVELS.index(level)]

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "mean": self.mean,
            "std": self.std,
            "quantiles": {
                f"p{round(level * 100)}": q for level, q in zip(QUANTILE_LEVELS, self.quantiles, strict=True)
            },
        }


@dataclass(frozen=True)
class IdentityStatistics:
    """What the generator is calibrated to: cosine distributions of a labelled embedding set."""

    same: CosineSummary  # pairs of faces of the same identity
    different: CosineSummary  # pairs of faces of different identities
    identities: int
    faces: int
    within_effective_dimension: float  # of the faces' offsets from their identity's mean

    def to_json(self) -> dict[str, Any]:
        return {
            "same": self.same.to_json(),
            "different": self.different.to_json(),
            "identities": self.identities,
            "faces": self.faces,
            "within_effective_dimension": self.within_effective_dimension,
        }


def pair_cosines(
    embeddings: npt.ArrayLike,
    labels: Sequence[object] | npt.ArrayLike,
    *,
    max_pairs: int | None = None,
    seed: int = 0,
) -> tuple[Float64Array, Float64Array]:
    """Cosines of all same-label pairs and of all (or ``max_pairs`` random) different-label pairs."""
    vectors = l2_normalize(np.asarray(embeddings, dtype=np.float32)).astype(np.float64)
    codes = _label_codes(labels, len(vectors))
    same_rows, same_cols, diff_rows, diff_cols = _pair_indexes(codes, max_pairs, np.random.default_rng(seed))
    gram = vectors @ vectors.T  # N is at most a few thousand faces here
    same_cos: Float64Array = gram[same_rows, same_cols]
    diff_cos: Float64Array = gram[diff_rows, diff_cols]
    return same_cos, diff_cos


def measure_identity_statistics(
    embeddings: npt.ArrayLike, labels: Sequence[object] | npt.ArrayLike
) -> IdentityStatistics:
    """Same/different-identity cosine distributions and the within-identity effective dimension."""
    vectors = l2_normalize(np.asarray(embeddings, dtype=np.float32)).astype(np.float64)
    codes = _label_codes(labels, len(vectors))
    counts = np.bincount(codes)
    if (counts >= 2).sum() < 1 or len(counts) < 2:
        raise ValueError("need at least two identities, one of them with two or more faces")
    same, different = pair_cosines(vectors, codes)
    offsets = vectors - _group_means(vectors, codes)[codes]
    return IdentityStatistics(
        same=CosineSummary.of(same),
        different=CosineSummary.of(different),
        identities=len(counts),
        faces=len(vectors),
        within_effective_dimension=_effective_dimension_of(offsets[counts[codes] >= 2]),
    )


def effective_dimension(spectrum: npt.ArrayLike) -> float:
    """(Σλ)² / Σλ²: the number of equally strong directions with the same second moment."""
    values = np.asarray(spectrum, dtype=np.float64)
    return float(values.sum() ** 2 / np.square(values).sum())


def power_spectrum(dim: int, decay: float) -> Float64Array:
    """λ_k ∝ k^-decay for k = 1..dim, summing to 1."""
    values = np.arange(1, dim + 1, dtype=np.float64) ** -decay
    spectrum: Float64Array = values / values.sum()
    return spectrum


def decay_for_effective_dimension(dim: int, target: float) -> float:
    """The power-law decay whose spectrum has ``target`` effective dimensions (clipped to [1, dim])."""
    if target >= dim:
        return 0.0
    target = max(target, 1.0 + 1e-6)
    low_end = effective_dimension(power_spectrum(dim, _MAX_DECAY))
    if target <= low_end:
        return _MAX_DECAY
    return float(brentq(lambda d: effective_dimension(power_spectrum(dim, d)) - target, 0.0, _MAX_DECAY))


# ---------------------------------------------------------------------------------------------- model


@dataclass(frozen=True)
class IdentityModel:
    """Parameters of the generator (see the module docstring for the formulas)."""

    dim: int
    centre_spread: float  # b: identities' scatter around the common mean direction
    between_decay: float  # β_b: spectrum decay of that scatter
    face_spread: float  # w: faces' scatter around their identity centre
    face_spread_jitter: float  # σ: log-normal spread of w from face to face
    within_decay: float  # β_w: spectrum decay of the faces' scatter

    def __post_init__(self) -> None:
        if self.dim < 2:
            raise ValueError(f"dim must be >= 2, got {self.dim}")
        if min(self.centre_spread, self.face_spread, self.face_spread_jitter) < 0:
            raise ValueError("spreads must be >= 0")
        if min(self.between_decay, self.within_decay) < 0:
            raise ValueError("spectrum decays must be >= 0")

    @property
    def between_effective_dimension(self) -> float:
        return effective_dimension(power_spectrum(self.dim, self.between_decay))

    @property
    def within_effective_dimension(self) -> float:
        return effective_dimension(power_spectrum(self.dim, self.within_decay))

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "between_effective_dimension": self.between_effective_dimension,
            "within_effective_dimension": self.within_effective_dimension,
        }


@dataclass(frozen=True)
class _Geometry:
    """The random but fixed frame of one synthetic world: mean direction and the two bases."""

    mean: Float64Array  # (D,)
    between_basis: Float64Array  # (D, D) orthogonal
    within_basis: Float64Array  # (D, D) orthogonal

    @classmethod
    def draw(cls, dim: int, rng: np.random.Generator) -> _Geometry:
        mean = rng.standard_normal(dim)
        return cls(
            mean=mean / np.linalg.norm(mean),
            between_basis=np.asarray(ortho_group.rvs(dim, random_state=rng), dtype=np.float64),
            within_basis=np.asarray(ortho_group.rvs(dim, random_state=rng), dtype=np.float64),
        )

    def centres(self, model: IdentityModel, z: Float64Array) -> Float64Array:
        scale = self.between_basis * np.sqrt(power_spectrum(model.dim, model.between_decay))
        return _unit_rows(self.mean + model.centre_spread * (z @ scale.T))

    def faces(
        self, model: IdentityModel, centres: Float64Array, e: Float64Array, u: Float64Array
    ) -> Float64Array:
        sigma = model.face_spread_jitter
        per_face = model.face_spread * np.exp(sigma * u - sigma**2 / 2)
        scale = self.within_basis * np.sqrt(power_spectrum(model.dim, model.within_decay))
        return _unit_rows(centres + per_face[:, None] * (e @ scale.T))


@dataclass(frozen=True)
class SyntheticGallery:
    vectors: FloatArray  # (N, D) unit rows, float32
    identities: IntArray  # (N,) identity of each face
    centres: FloatArray  # (identities, D) identity centres (unit)


class IdentityGenerator:
    """Draws identities and their faces from an ``IdentityModel`` in one fixed random frame."""

    def __init__(self, model: IdentityModel, seed: int = 0) -> None:
        self._model = model
        self._geometry = _Geometry.draw(model.dim, np.random.default_rng([seed, 0]))
        self._seed = seed

    @property
    def model(self) -> IdentityModel:
        return self._model

    def centres(self, count: int, rng: np.random.Generator) -> FloatArray:
        """``count`` identity centres (unit rows)."""
        z = rng.standard_normal((count, self._model.dim))
        return self._geometry.centres(self._model, z).astype(np.float32)

    def faces(self, centres: FloatArray, identities: IntArray, rng: np.random.Generator) -> FloatArray:
        """One fresh face (unit row) for each entry of ``identities`` (indexes into ``centres``)."""
        out = np.empty((len(identities), self._model.dim), dtype=np.float32)
        for start in range(0, len(identities), _CHUNK_ROWS):
            rows = identities[start : start + _CHUNK_ROWS]
            e = rng.standard_normal((len(rows), self._model.dim))
            u = rng.standard_normal(len(rows))
            block = self._geometry.faces(self._model, centres[rows].astype(np.float64), e, u)
            out[start : start + len(rows)] = block
        return out

    def gallery(self, size: int, faces_per_identity: int, seed: int) -> SyntheticGallery:
        """``size`` faces, ``faces_per_identity`` per identity (the last identity may have fewer)."""
        if size < 1 or faces_per_identity < 1:
            raise ValueError("size and faces_per_identity must be >= 1")
        rng = np.random.default_rng([self._seed, 1, seed])
        count = -(-size // faces_per_identity)
        centres = self.centres(count, rng)
        identities = (np.arange(size, dtype=np.int64) // faces_per_identity).astype(np.int64)
        return SyntheticGallery(self.faces(centres, identities, rng), identities, centres)

    def queries(self, gallery: SyntheticGallery, count: int, seed: int) -> tuple[FloatArray, IntArray]:
        """``count`` fresh faces of identities enrolled in ``gallery``, and those identities."""
        rng = np.random.default_rng([self._seed, 2, seed])
        identities = rng.integers(0, len(gallery.centres), size=count).astype(np.int64)
        return self.faces(gallery.centres, identities, rng), identities


# ---------------------------------------------------------------------------------------------- calibration


@dataclass(frozen=True)
class Calibration:
    model: IdentityModel
    target: IdentityStatistics
    achieved: IdentityStatistics  # a fresh synthetic set (other seed than the fit) measured the same way
    fit_error: float  # RMS quantile error of the fit, in units of each target distribution's std
    evaluations: int

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model.to_json(),
            "target": self.target.to_json(),
            "achieved": self.achieved.to_json(),
            "fit_error_in_std": self.fit_error,
            "evaluations": self.evaluations,
        }


def calibrate(
    target: IdentityStatistics,
    dim: int,
    *,
    identities: int = 200,
    faces_per_identity: int = 8,
    diff_pairs: int = 100_000,
    seed: int = 0,
) -> Calibration:
    """Fit (b, β_b, w, σ) so that synthetic same/different cosine quantiles match ``target``.

    Every evaluation re-uses the same standard-normal draws (common random numbers), which makes
    the objective a deterministic function of the parameters that Nelder–Mead can minimize.
    """
    within_decay = decay_for_effective_dimension(dim, target.within_effective_dimension)
    rng = np.random.default_rng([seed, 3])
    geometry = _Geometry.draw(dim, rng)
    z = rng.standard_normal((identities, dim))
    e = rng.standard_normal((identities * faces_per_identity, dim))
    u = rng.standard_normal(identities * faces_per_identity)
    owner = np.repeat(np.arange(identities), faces_per_identity)
    same_rows, same_cols, diff_rows, diff_cols = _pair_indexes(owner, diff_pairs, rng)
    goal_same = np.asarray([target.same.quantile(q) for q in FIT_LEVELS])
    goal_diff = np.asarray([target.different.quantile(q) for q in FIT_LEVELS])

    def model_of(theta: Float64Array) -> IdentityModel:
        return IdentityModel(
            dim=dim,
            centre_spread=float(np.exp(theta[0])),
            between_decay=float(np.clip(theta[1], 0.0, _MAX_DECAY)),
            face_spread=float(np.exp(theta[2])),
            face_spread_jitter=float(np.exp(theta[3])),
            within_decay=within_decay,
        )

    def error(theta: Float64Array) -> float:
        model = model_of(theta)
        faces = geometry.faces(model, geometry.centres(model, z)[owner], e, u)
        gram = faces @ faces.T  # cheaper than gathering 100k row pairs
        same = gram[same_rows, same_cols]
        diff = gram[diff_rows, diff_cols]
        residual = np.concatenate(
            [
                (np.quantile(same, FIT_LEVELS) - goal_same) / target.same.std,
                (np.quantile(diff, FIT_LEVELS) - goal_diff) / target.different.std,
            ]
        )
        return float(np.sqrt(np.mean(np.square(residual))))

    result = minimize(
        error,
        _initial_guess(target, dim),
        method="Nelder-Mead",
        options={"xatol": 1e-3, "fatol": 1e-4, "maxiter": 600},
    )
    model = model_of(np.asarray(result.x, dtype=np.float64))
    check = IdentityGenerator(model, seed=seed + 1).gallery(
        identities * faces_per_identity, faces_per_identity, seed=seed + 1
    )
    return Calibration(
        model=model,
        target=target,
        achieved=measure_identity_statistics(check.vectors, check.identities),
        fit_error=float(result.fun),
        evaluations=int(result.nfev),
    )


def _initial_guess(target: IdentityStatistics, dim: int) -> Float64Array:
    # Small-angle approximations: cos(face, face') ≈ 1/(1+w²) within an identity; the centres'
    # cosine ≈ 1/(1+b²) = different/same; its std ≈ (1 - that) / √(effective dimension).
    same_mean = float(np.clip(target.same.mean, 1e-3, 0.9999))
    diff_mean = float(np.clip(target.different.mean, -0.99, same_mean - 1e-4))
    centre_cos = diff_mean / same_mean if diff_mean > 0 else 0.5
    face_spread = np.sqrt(1.0 / same_mean - 1.0)
    centre_spread = np.sqrt(max(1.0 / centre_cos - 1.0, 1e-4))
    centre_std = max(target.different.std / same_mean, 1e-6)
    between_dim = float(np.clip(((1.0 - centre_cos) / centre_std) ** 2, 1.0, dim))
    return np.asarray(
        [
            np.log(centre_spread),
            decay_for_effective_dimension(dim, between_dim),
            np.log(face_spread),
            np.log(0.3),
        ]
    )


# ---------------------------------------------------------------------------------------------- helpers


def _label_codes(labels: Sequence[object] | npt.ArrayLike, count: int) -> IntArray:
    values = np.asarray(labels)
    if values.shape != (count,):
        raise ValueError(f"need one label per embedding ({count}), got shape {values.shape}")
    _, codes = np.unique(values, return_inverse=True)
    return codes.astype(np.int64)


def _group_means(vectors: Float64Array, codes: IntArray) -> Float64Array:
    sums = np.zeros((int(codes.max()) + 1, vectors.shape[1]))
    np.add.at(sums, codes, vectors)
    means: Float64Array = sums / np.bincount(codes)[:, None]
    return means


def _effective_dimension_of(offsets: Float64Array) -> float:
    if len(offsets) < 2:
        return float(offsets.shape[1])
    singular = np.linalg.svd(offsets, compute_uv=False)
    return effective_dimension(np.square(singular))


def _unit_rows(x: Float64Array) -> Float64Array:
    unit: Float64Array = x / np.linalg.norm(x, axis=1, keepdims=True)
    return unit


def _pair_indexes(
    owner: npt.NDArray[np.int_], diff_pairs: int | None, rng: np.random.Generator
) -> tuple[IntArray, IntArray, IntArray, IntArray]:
    """Index pairs (i < j) of all same-owner pairs and of all or ``diff_pairs`` random other pairs."""
    rows, cols = np.triu_indices(len(owner), k=1)
    same = owner[rows] == owner[cols]
    diff_rows, diff_cols = rows[~same], cols[~same]
    if diff_pairs is not None and len(diff_rows) > diff_pairs:
        pick = rng.choice(len(diff_rows), size=diff_pairs, replace=False)
        diff_rows, diff_cols = diff_rows[pick], diff_cols[pick]
    return (
        rows[same].astype(np.int64),
        cols[same].astype(np.int64),
        diff_rows.astype(np.int64),
        diff_cols.astype(np.int64),
    )
