"""Identification (1:N) through the service's own Gallery and FaissIndex, in a temporary data dir.

An identity-per-folder data set is split: some identities are left out entirely (non-mated probes,
for open-set numbers: named ones, people with a single photo, and/or randomly drawn ones); of the
others, ``k`` images per identity are enrolled and the rest probed. An identity with ``k`` images or
fewer could be enrolled but never searched for: it is held out and reported, not enrolled silently
(it would otherwise change the gallery without being measured).
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Collection, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.evaluation.embedding_cache import FileEmbedding
from service.evaluation.metrics import OpenSetReport, rank_k_accuracy, tpir_at_fpir
from service.evaluation.verification import NO_FACE_SCORE, NoFacePolicy, far_label
from service.gallery.gallery import Gallery
from service.gallery.store import NewFace
from service.settings import Settings

DEFAULT_FPIRS: tuple[float, ...] = (1e-1, 1e-2)
RANKS: tuple[int, ...] = (1, 5)
# A probe without a face (kept under the "fail" policy) gets this one candidate: no identity, lowest score.
NO_CANDIDATE = "<no candidate>"
# Gallery faces from --aligned chips have no detector score; the store needs a number.
ALIGNED_DET_SCORE = 1.0
# ``--non-mated single-image``: people with exactly one photo are the non-mated probes.
SINGLE_IMAGE = "single-image"


@dataclass(frozen=True)
class Probe:
    identity: str
    path: Path


@dataclass(frozen=True)
class IdentificationSplit:
    gallery: dict[str, list[Path]]  # identity → enrolled images
    probes: tuple[Probe, ...]  # mated (identity enrolled) and non-mated (left-out identities)
    impostor_identities: tuple[str, ...]  # every identity left out as non-mated probes
    skipped_identities: tuple[str, ...] = ()  # too few images to enroll and probe: in neither

    @property
    def images(self) -> list[Path]:
        return [path for paths in self.gallery.values() for path in paths] + [p.path for p in self.probes]


def single_image_identities(folders: Mapping[str, Sequence[Path]]) -> list[str]:
    """The identities with exactly one image (``--non-mated single-image``)."""
    return sorted(name for name, files in folders.items() if len(files) == 1)


def read_identity_list(path: Path) -> list[str]:
    """Identity folder names, one a line (blank lines and ``#`` comments ignored)."""
    if not path.is_file():
        raise FileNotFoundError(f"non-mated identity list {path} does not exist")
    lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    names = [line for line in lines if line]
    if not names:
        raise ValueError(f"{path} lists no identity")
    return names


def split_identities(
    folders: Mapping[str, Sequence[Path]],
    per_identity: int,
    *,
    impostors: int = 0,
    seed: int = 0,
    non_mated: Collection[str] = (),
) -> IdentificationSplit:
    """Leave ``non_mated`` and ``impostors`` more random identities out; enroll ``per_identity``
    random images of each other identity and probe the rest.

    An identity with no more than ``per_identity`` images has no probe left: it is skipped (listed in
    ``skipped_identities``), neither enrolled nor probed.
    """
    if per_identity < 1:
        raise ValueError("--gallery-per-identity must be at least 1")
    names = sorted(folders)
    unknown = sorted(set(non_mated) - set(names))
    if unknown:
        shown = ", ".join(unknown[:5])
        raise ValueError(f"--non-mated: {len(unknown)} name(s) are not identity folders here, e.g. {shown}")
    held = set(non_mated)
    candidates = [name for name in names if name not in held]
    if not 0 <= impostors < len(candidates):
        raise ValueError(
            f"--impostors must be between 0 and {len(candidates) - 1} "
            f"({len(candidates)} identities not already non-mated)"
        )
    rng = np.random.default_rng(seed)
    left_out = held | {candidates[i] for i in rng.choice(len(candidates), size=impostors, replace=False)}
    gallery: dict[str, list[Path]] = {}
    probes: list[Probe] = []
    skipped: list[str] = []
    for name in names:
        files = list(folders[name])
        if name in left_out:
            probes.extend(Probe(name, path) for path in files)
            continue
        if len(files) <= per_identity:
            skipped.append(name)
            continue
        order = rng.permutation(len(files))
        gallery[name] = [files[i] for i in order[:per_identity]]
        probes.extend(Probe(name, files[i]) for i in order[per_identity:])
    return IdentificationSplit(gallery, tuple(probes), tuple(sorted(left_out)), tuple(skipped))


@dataclass(frozen=True)
class ThresholdPoint:
    """TPIR (rank 1) and FPIR at one fixed threshold, e.g. the pack's ``default``."""

    threshold: float
    tpir: float
    fpir: float | None  # None without non-mated probes


def at_threshold(
    candidate_ids: Sequence[Sequence[Hashable]],
    candidate_scores: Sequence[Sequence[float]],
    probe_ids: Sequence[Hashable],
    enrolled: Collection[Hashable],
    threshold: float,
) -> ThresholdPoint:
    """A mated probe is found when its first candidate is its identity scoring >= ``threshold``;
    a non-mated probe is a false positive when any candidate scores >= ``threshold``."""
    found: list[bool] = []
    false_positive: list[bool] = []
    for ids, scores, truth in zip(candidate_ids, candidate_scores, probe_ids, strict=True):
        if truth in enrolled:
            found.append(ids[0] == truth and scores[0] >= threshold)
        else:
            false_positive.append(max(scores) >= threshold)
    return ThresholdPoint(
        threshold=threshold,
        tpir=float(np.mean(found)) if found else 0.0,
        fpir=float(np.mean(false_positive)) if false_positive else None,
    )


@dataclass(frozen=True)
class IdentificationEvaluation:
    pack_id: str
    identities_enrolled: int
    gallery_faces: int
    gallery_no_face: int  # gallery images that could not be enrolled (no face)
    mated_probes: int
    non_mated_probes: int
    probes_no_face: int
    policy: NoFacePolicy
    rank_accuracy: dict[int, float]
    open_set: OpenSetReport | None  # None without non-mated probes
    search_ms_per_probe: float
    seconds_per_image: float | None
    cache_hits: int
    computed: int
    at_default: ThresholdPoint | None = None  # at the pack's default threshold
    skipped_identities: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        points = self.open_set.points if self.open_set else ()
        return {
            "pack_id": self.pack_id,
            "rank_1": self.rank_accuracy.get(1),
            "rank_5": self.rank_accuracy.get(5),
            "tpir_at_fpir": {far_label(p.target_fpir): p.tpir for p in points},
            "open_set_points": [
                {
                    "fpir": p.target_fpir,
                    "supported": p.supported,
                    "threshold": p.threshold,
                    "achieved_fpir": p.achieved_fpir,
                    "tpir": p.tpir,
                }
                for p in points
            ],
            "identities_enrolled": self.identities_enrolled,
            "gallery_faces": self.gallery_faces,
            "gallery_no_face": self.gallery_no_face,
            "mated_probes": self.mated_probes,
            "non_mated_probes": self.non_mated_probes,
            "no_face": self.gallery_no_face + self.probes_no_face,
            "probes_no_face": self.probes_no_face,
            "no_face_policy": self.policy.value,
            "search_ms_per_probe": self.search_ms_per_probe,
            "seconds_per_image": self.seconds_per_image,
            "cache": {"hits": self.cache_hits, "computed": self.computed},
            "default_threshold": None if self.at_default is None else asdict(self.at_default),
            "skipped_identities": list(self.skipped_identities),
        }

    def to_text(self) -> str:
        timing = "n/a" if self.seconds_per_image is None else f"{self.seconds_per_image * 1000:.1f} ms"
        lines = [
            f"pack:       {self.pack_id}",
            f"gallery:    {self.identities_enrolled} identities, {self.gallery_faces} faces enrolled "
            f"({self.gallery_no_face} gallery images without a face were skipped)",
            f"probes:     {self.mated_probes} mated, {self.non_mated_probes} non-mated "
            f"({self.probes_no_face} without a face; policy: {self._policy_text()})",
            *self._skipped_text(),
            f"timing:     pipeline {timing} per image; gallery search {self.search_ms_per_probe:.2f} ms "
            f"per probe; cache: {self.cache_hits} hits, {self.computed} computed",
        ]
        lines.extend(f"rank-{k}:     {100 * acc:.2f}%" for k, acc in sorted(self.rank_accuracy.items()))
        if self.at_default is not None:
            fixed = self.at_default
            fpir = "n/a (no non-mated probes)" if fixed.fpir is None else f"{100 * fixed.fpir:.2f}%"
            lines.append(
                f"at default: threshold {fixed.threshold:.4f}: TPIR {100 * fixed.tpir:.2f}% (rank 1), "
                f"FPIR {fpir}"
            )
        if self.open_set is None:
            lines.append("open set:   not measured: no non-mated probes (use --non-mated or --impostors N)")
        else:
            for point in self.open_set.points:
                label = f"TPIR@FPIR={far_label(point.target_fpir)}:"
                if point.supported and point.tpir is not None:
                    lines.append(
                        f"{label:<19} {100 * point.tpir:.2f}% at threshold {point.threshold:.4f} "
                        f"(observed FPIR {100 * (point.achieved_fpir or 0.0):.2f}%)"
                    )
                else:
                    lines.append(
                        f"{label:<19} not measurable: needs {math.ceil(1 / point.target_fpir - 1e-9)} "
                        f"non-mated probes, this split has {self.open_set.non_mated_probes}"
                    )
        return "\n".join(lines)

    def _skipped_text(self) -> list[str]:
        if not self.skipped_identities:
            return []
        shown = ", ".join(self.skipped_identities[:10])
        more = f" and {len(self.skipped_identities) - 10} more" if len(self.skipped_identities) > 10 else ""
        count = len(self.skipped_identities)
        noun = "identity" if count == 1 else "identities"
        return [
            f"skipped:    {count} {noun} with too few images to enroll and "
            f"probe (neither enrolled nor searched; --non-mated single-image makes one-photo people "
            f"non-mated probes): {shown}{more}"
        ]

    def _policy_text(self) -> str:
        texts = {
            NoFacePolicy.FAIL: "a probe without a face counts as not identified",
            NoFacePolicy.EXCLUDE: "probes without a face are excluded",
        }
        return texts[self.policy]


@dataclass(frozen=True)
class RunFacts:
    """Where the embeddings came from, for the report."""

    pack_id: str
    embedding_size: int
    seconds_per_image: float | None = None
    cache_hits: int = 0
    computed: int = 0


def evaluate_identification(
    split: IdentificationSplit,
    results: Mapping[Path, FileEmbedding],
    facts: RunFacts,
    settings: Settings,
    *,
    policy: NoFacePolicy = NoFacePolicy.FAIL,
    fpirs: Sequence[float] = DEFAULT_FPIRS,
    default_threshold: float | None = None,
) -> IdentificationEvaluation:
    """Enroll the gallery into a fresh Gallery (temporary data dir), search every probe, score it."""
    top_k = max(RANKS)
    vectors = {path: result.embedding for path, result in results.items() if result.embedding is not None}
    kept = [probe for probe in split.probes if policy is NoFacePolicy.FAIL or probe.path in vectors]
    with_face = [probe for probe in kept if probe.path in vectors]
    with (
        tempfile.TemporaryDirectory(prefix="face-eval-gallery-") as data_dir,
        Gallery.open(Path(data_dir), facts.pack_id, facts.embedding_size, settings) as gallery,
    ):
        gallery_no_face = _enroll(gallery, split.gallery, results)
        start = time.perf_counter()
        found = gallery.identify(np.stack([vectors[p.path] for p in with_face]), top_k) if with_face else []
        search_ms = 1000 * (time.perf_counter() - start) / max(1, len(with_face))
        faces = gallery.counts().faces
    by_path = {
        probe.path: ([c.name for c in candidates], [c.similarity for c in candidates])
        for probe, candidates in zip(with_face, found, strict=True)
    }
    ids: list[list[Hashable]] = []
    scores: list[list[float]] = []
    for probe in kept:
        probe_ids, probe_scores = by_path.get(probe.path, ([], []))
        ids.append(list(probe_ids) or [NO_CANDIDATE])
        scores.append(list(probe_scores) or [NO_FACE_SCORE])
    enrolled = set(split.gallery)
    mated = [i for i, probe in enumerate(kept) if probe.identity in enrolled]
    if not mated:
        raise ValueError(
            "no mated probes: no enrolled identity has an image left to search for "
            "(lower --gallery-per-identity)"
        )
    rank_accuracy = rank_k_accuracy([ids[i] for i in mated], [kept[i].identity for i in mated], RANKS)
    non_mated = len(kept) - len(mated)
    truths = [p.identity for p in kept]
    open_set = tpir_at_fpir(ids, scores, truths, enrolled, fpirs) if non_mated else None
    at_default = None
    if default_threshold is not None:
        at_default = at_threshold(ids, scores, truths, enrolled, default_threshold)
    return IdentificationEvaluation(
        pack_id=facts.pack_id,
        identities_enrolled=len(enrolled),
        gallery_faces=faces,
        gallery_no_face=gallery_no_face,
        mated_probes=len(mated),
        non_mated_probes=non_mated,
        probes_no_face=sum(results[p.path].embedding is None for p in split.probes),
        policy=policy,
        rank_accuracy=rank_accuracy,
        open_set=open_set,
        search_ms_per_probe=search_ms,
        seconds_per_image=facts.seconds_per_image,
        cache_hits=facts.cache_hits,
        computed=facts.computed,
        at_default=at_default,
        skipped_identities=split.skipped_identities,
    )


def _enroll(
    gallery: Gallery, enrolled: Mapping[str, Sequence[Path]], results: Mapping[Path, FileEmbedding]
) -> int:
    """One subject per identity named after it; returns how many gallery images had no face."""
    no_face = 0
    for name, paths in enrolled.items():
        faces = []
        for path in paths:
            result = results[path]
            if result.embedding is None:
                no_face += 1
                continue
            det_score = ALIGNED_DET_SCORE if result.det_score is None else result.det_score
            faces.append(NewFace(result.embedding, det_score))
        subject = gallery.create_subject(name)
        if faces:
            gallery.add_faces(subject.id, faces)
    return no_face
