"""Accuracy in the wild: a pack on ``celeba_wild`` through the full pipeline, per face policy.

    python -m benchmarks.wild_eval --pack DIR [--pack DIR ...] [--policies largest centre score]
        [--det-input-size N] [--coarse-input-size N] [--served] [--detector-from PACK_DIR] [--out FILE.json]

Every photo goes through the service's FacePipeline (decode, detect, align, embed every face); the
face policies (``service.pipeline.face_choice``) then pick one face per photo. A photo without a face
counts against the pipeline: its pairs score −1 (rejected at every threshold), it is never dropped.

* Verification: every same-person pair of the 2,233 photos and every different-person pair
  (~2.5 M impostors): TAR at FAR 1e-2/1e-3/1e-4 and the thresholds that give them (the calibration
  shipped in the default pack), and 10-fold accuracy on a balanced set (all genuine pairs plus as many
  impostor pairs drawn at random, seed 0), as LFW reports it.
* 1:N open set, gallery of every identity's first photo (299 people): each other photo is a mated
  probe (rank-1, TPIR) and, searched with its own identity left out, a non-mated probe against the
  other 298 people (FPIR). TPIR at FPIR 1e-2, and FPIR/TPIR at the pack's named thresholds.
* Held-out calibration check: thresholds fitted on the even-numbered identities, FAR measured on
  the odd ones.

Embeddings of every face are cached per pack manifest and options (``--cache``), so comparing
policies costs one pipeline pass per pack. ``--served`` instead embeds, per policy, only the face the
service's own ``FacePipeline.detect_chosen`` picks, with its coarse first pass
(``--coarse-input-size``, FACE_DET_COARSE_INPUT_SIZE): what /v1/verify and /v1/identify serve.
Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from service.evaluation.image_files import read_image
from service.evaluation.metrics import threshold_at_far, tpir_at_fpir, verification_report
from service.evaluation.pairs import identity_folders
from service.packs.loader import LoadedPack, load_pack
from service.pipeline.face_choice import choose_face
from service.pipeline.face_pipeline import FacePipeline
from service.pipeline.types import EmbeddedFace, ImageArray
from service.settings import FacePolicy, Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = REPO_ROOT.parent / "shared" / "data" / "faces" / "celeba_wild"
FARS = (1e-2, 1e-3, 1e-4)
FPIRS = (1e-1, 1e-2)
NO_FACE_SCORE = -1.0
CACHE_VERSION = 1


@dataclass(frozen=True)
class PhotoFaces:
    """Every face the pipeline found in one photo."""

    identity: str
    size: tuple[int, int]  # (width, height)
    boxes: npt.NDArray[np.float32]  # (F, 4)
    scores: npt.NDArray[np.float32]  # (F,)
    landmarks: npt.NDArray[np.float32]  # (F, 5, 2)
    embeddings: npt.NDArray[np.float32]  # (F, D)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    images = identity_folders(args.images)
    results: dict[str, Any] = {
        "images": str(args.images),
        "photos": sum(map(len, images.values())),
        "runs": [],
    }
    for pack_dir in args.pack:
        pack = load_pack(pack_dir, verify=True)
        settings = Settings(
            det_input_size=args.det_input_size,
            det_coarse_input_size=args.coarse_input_size,
            models_dir=pack_dir.parent,
            pack=pack_dir.name,
        )
        if args.detector_from is not None:
            pack = _with_detector_of(pack, load_pack(args.detector_from, verify=True))
        if not args.served:
            photos, seconds = embed_photos_timed(pack, settings, images, args.cache)
        for policy in args.policies:
            if args.served:
                photos, seconds = embed_photos_timed(pack, settings, images, args.cache, FacePolicy(policy))
            run = evaluate(photos, FacePolicy(policy), pack)
            run.update(pack=pack.manifest.id, detector=pack.manifest.detector.provenance.source)
            run.update(det_input_size=args.det_input_size, seconds_per_photo=seconds)
            run.update(served=args.served, coarse_input_size=args.coarse_input_size if args.served else None)
            results["runs"].append(run)
            _print_run(run)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wild_eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pack", type=Path, action="append", required=True, help="pack folder (repeatable)")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="one folder per identity")
    parser.add_argument(
        "--policies", nargs="+", default=[p.value for p in FacePolicy], choices=list(FacePolicy)
    )
    parser.add_argument("--det-input-size", type=int, default=Settings().det_input_size)
    parser.add_argument("--coarse-input-size", type=int, default=Settings().det_coarse_input_size)
    parser.add_argument(
        "--served",
        action="store_true",
        help="embed only the face detect_chosen picks, per policy",
    )
    parser.add_argument("--detector-from", type=Path, default=None, help="use this pack's detector instead")
    parser.add_argument("--cache", type=Path, default=Settings().models_dir.parent / "wild-eval-cache")
    parser.add_argument("--out", type=Path, default=None, help="JSON results")
    return parser


def _with_detector_of(pack: LoadedPack, other: LoadedPack) -> LoadedPack:
    manifest = pack.manifest.model_copy(
        update={"detector": other.manifest.detector, "id": f"{pack.manifest.id}+{other.manifest.id}-detector"}
    )
    return LoadedPack(
        dir=pack.dir, manifest=manifest, detector_path=other.detector_path, embedder_path=pack.embedder_path
    )


# ------------------------------------------------------------------------------------------ embedding


def embed_photos(
    pack: LoadedPack, settings: Settings, images: dict[str, list[Path]], cache_dir: Path
) -> list[PhotoFaces]:
    """Every face of every photo, embedded (read back from the cache when the key matches)."""
    return embed_photos_timed(pack, settings, images, cache_dir)[0]


def embed_photos_timed(
    pack: LoadedPack,
    settings: Settings,
    images: dict[str, list[Path]],
    cache_dir: Path,
    served: FacePolicy | None = None,
) -> tuple[list[PhotoFaces], float]:
    """``embed_photos`` and the pipeline's seconds per photo (as measured when first computed).

    ``served``: only the face the service picks under that policy (``detect_chosen``, coarse pass).
    """
    key = _cache_key(pack, settings, images, served)
    cache_file = cache_dir / f"{key}.npz"
    if cache_file.is_file():
        return _read_cache(cache_file)
    pipeline = FacePipeline.from_pack(pack, settings)
    photos, start = [], time.perf_counter()
    paths = [(identity, path) for identity, files in sorted(images.items()) for path in files]
    for done, (identity, path) in enumerate(paths, start=1):
        image = read_image(path)
        faces = pipeline.analyze_sync(image) if served is None else _served_face(pipeline, image, served)
        photos.append(
            PhotoFaces(
                identity=identity,
                size=(image.shape[1], image.shape[0]),
                boxes=np.asarray([f.face.box for f in faces], np.float32).reshape(-1, 4),
                scores=np.asarray([f.face.score for f in faces], np.float32),
                landmarks=np.asarray([f.face.landmarks for f in faces], np.float32).reshape(-1, 5, 2),
                embeddings=np.asarray([f.embedding for f in faces], np.float32).reshape(
                    len(faces), pipeline.embedding_size
                ),
            )
        )
        if done % 200 == 0 or done == len(paths):
            elapsed = time.perf_counter() - start
            print(
                f"{pack.manifest.id}: {done}/{len(paths)} photos, {done / elapsed:.1f}/s, "
                f"{(len(paths) - done) * elapsed / done:.0f} s left",
                file=sys.stderr,
                flush=True,
            )
    seconds = (time.perf_counter() - start) / max(len(paths), 1)
    _write_cache(cache_file, photos, seconds)
    return photos, seconds


def _served_face(pipeline: FacePipeline, image: ImageArray, policy: FacePolicy) -> list[EmbeddedFace]:
    face, _ = pipeline.analyze_chosen_sync(image, policy)
    return [] if face is None else [face]


def _cache_key(
    pack: LoadedPack, settings: Settings, images: dict[str, list[Path]], served: FacePolicy | None = None
) -> str:
    facts = {
        "version": CACHE_VERSION,
        "manifest": pack.manifest.model_dump(mode="json"),
        "det_input_size": settings.det_input_size,
        "min_face_size": settings.min_face_size,
        "det_score_threshold": settings.det_score_threshold,
        "det_nms_threshold": settings.det_nms_threshold,
        "max_faces": settings.max_faces,
        "files": [str(p) for files in sorted(images.values()) for p in files],
    }
    if served is not None:  # absent otherwise, so the all-faces caches keep their keys
        facts["served"] = [served.value, settings.det_coarse_input_size]
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:24]


def _write_cache(path: Path, photos: list[PhotoFaces], seconds: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {"seconds": np.float64(seconds), "count": np.int64(len(photos))}
    for i, photo in enumerate(photos):
        arrays[f"{i}_identity"] = np.asarray(photo.identity)
        arrays[f"{i}_size"] = np.asarray(photo.size)
        arrays[f"{i}_boxes"], arrays[f"{i}_scores"] = photo.boxes, photo.scores
        arrays[f"{i}_landmarks"], arrays[f"{i}_embeddings"] = photo.landmarks, photo.embeddings
    temporary = path.with_suffix(".partial.npz")
    np.savez(temporary, **arrays)
    temporary.replace(path)


def _read_cache(path: Path) -> tuple[list[PhotoFaces], float]:
    with np.load(path) as data:
        photos = [
            PhotoFaces(
                identity=str(data[f"{i}_identity"]),
                size=(int(data[f"{i}_size"][0]), int(data[f"{i}_size"][1])),
                boxes=data[f"{i}_boxes"],
                scores=data[f"{i}_scores"],
                landmarks=data[f"{i}_landmarks"],
                embeddings=data[f"{i}_embeddings"],
            )
            for i in range(int(data["count"]))
        ]
        return photos, float(data["seconds"])


# ----------------------------------------------------------------------------------------- evaluation


def chosen_embeddings(
    photos: list[PhotoFaces], policy: FacePolicy
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """(N, D) the chosen face's embedding per photo (zeros when none) and which photos have a face."""
    from service.pipeline.types import DetectedFace

    dim = next(p.embeddings.shape[1] for p in photos if len(p.embeddings))
    chosen = np.zeros((len(photos), dim), np.float32)
    found = np.zeros(len(photos), np.bool_)
    for i, photo in enumerate(photos):
        faces = [
            DetectedFace(box=box, score=float(score), landmarks=points)
            for box, score, points in zip(photo.boxes, photo.scores, photo.landmarks, strict=True)
        ]
        index = choose_face(faces, photo.size, policy)
        if index is not None:
            chosen[i], found[i] = photo.embeddings[index], True
    return chosen, found


def pair_scores(
    embeddings: npt.NDArray[np.float32], found: npt.NDArray[np.bool_], codes: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """Every unordered pair's cosine (−1 when either photo has no face) and same-person label."""
    first, second = np.triu_indices(len(codes), k=1)
    similarity = embeddings.astype(np.float64) @ embeddings.T.astype(np.float64)
    scores = similarity[first, second]
    scores[~(found[first] & found[second])] = NO_FACE_SCORE
    return scores, codes[first] == codes[second]


def evaluate(photos: list[PhotoFaces], policy: FacePolicy, pack: LoadedPack) -> dict[str, Any]:
    embeddings, found = chosen_embeddings(photos, policy)
    _, codes = np.unique([p.identity for p in photos], return_inverse=True)
    scores, same = pair_scores(embeddings, found, codes)
    named = {name: point.threshold for name, point in pack.manifest.calibration.operating_points.items()}
    return {
        "policy": policy.value,
        "photos_without_face": int((~found).sum()),
        "verification": _verification(scores, same, named),
        "identification": _identification(embeddings, found, codes, named),
        "held_out_calibration": _held_out(scores, same, codes, photos),
    }


def _verification(
    scores: npt.NDArray[np.float64], same: npt.NDArray[np.bool_], named: dict[str, float]
) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    genuine = np.flatnonzero(same)
    impostors = rng.choice(np.flatnonzero(~same), size=genuine.size, replace=False)
    balanced = np.concatenate([genuine, impostors])
    report = verification_report(scores[balanced], same[balanced], n_folds=10, fars=())
    points = {f"{far:g}": threshold_at_far(scores, same, far) for far in FARS}
    return {
        "genuine_pairs": int(same.sum()),
        "impostor_pairs": int((~same).sum()),
        "accuracy_10fold": report.accuracy_mean,
        "accuracy_std": report.accuracy_std,
        "tar_at_far": {far: p.tar for far, p in points.items()},
        "threshold_at_far": {far: p.threshold for far, p in points.items()},
        "at_named_thresholds": {
            name: {
                "threshold": t,
                "tar": float(np.mean(scores[same] >= t)),
                "far": float(np.mean(scores[~same] >= t)),
            }
            for name, t in named.items()
        },
    }


def _identification(
    embeddings: npt.NDArray[np.float32],
    found: npt.NDArray[np.bool_],
    codes: npt.NDArray[np.int64],
    named: dict[str, float],
) -> dict[str, Any]:
    # Gallery: each identity's first photo with a face; probes: every other photo.
    gallery = np.asarray([np.flatnonzero((codes == c) & found)[0] for c in np.unique(codes[found])])
    probes = np.setdiff1d(np.arange(len(codes)), gallery)
    similarity = embeddings[probes] @ embeddings[gallery].T
    similarity[~found[probes]] = NO_FACE_SCORE
    gallery_codes = codes[gallery]
    own = gallery_codes[None, :] == codes[probes][:, None]
    mated_best = np.where(own, similarity, -np.inf).max(axis=1)
    others_best = np.where(own, -np.inf, similarity).max(axis=1)
    enrolled = np.isin(codes[probes], gallery_codes)
    rank1 = (mated_best > others_best) & enrolled
    # Non-mated probes: the same photos searched with their own identity removed from the gallery.
    ids = [[int(gallery_codes[j])] for j in similarity.argmax(axis=1)] + [[-1]] * len(probes)
    top = [[float(s)] for s in similarity.max(axis=1)] + [[float(s)] for s in others_best]
    truth = [int(c) for c in codes[probes]] + [-2] * len(probes)
    report = tpir_at_fpir(ids, top, truth, set(gallery_codes.tolist()), FPIRS)
    return {
        "gallery_size": len(gallery),
        "probes": len(probes),
        "rank1": float(rank1[enrolled].mean()),
        "tpir_at_fpir": {f"{p.target_fpir:g}": p.tpir for p in report.points},
        "at_named_thresholds": {
            name: {
                "threshold": t,
                "tpir": float(np.mean(rank1[enrolled] & (mated_best[enrolled] >= t))),
                "fpir": float(np.mean(others_best >= t)),
            }
            for name, t in named.items()
        },
    }


def _held_out(
    scores: npt.NDArray[np.float64],
    same: npt.NDArray[np.bool_],
    codes: npt.NDArray[np.int64],
    photos: list[PhotoFaces],
) -> dict[str, Any]:
    first, second = np.triu_indices(len(codes), k=1)
    fit = (codes[first] % 2 == 0) & (codes[second] % 2 == 0)
    test = (codes[first] % 2 == 1) & (codes[second] % 2 == 1)
    out = {}
    for far in FARS:
        point = threshold_at_far(scores[fit], same[fit], far)
        if point.threshold is None:
            continue
        out[f"{far:g}"] = {
            "threshold": point.threshold,
            "far_on_held_out": float(np.mean(scores[test & ~same] >= point.threshold)),
            "tar_on_held_out": float(np.mean(scores[test & same] >= point.threshold)),
        }
    return out


def _print_run(run: dict[str, Any]) -> None:
    v, i = run["verification"], run["identification"]
    tar = v["tar_at_far"]
    print(
        f"{run['pack']:<28} {run['policy']:<8} det {run['det_input_size']:>4}  "
        f"no-face {run['photos_without_face']:>3}  acc {v['accuracy_10fold']:.4f}  "
        f"TAR@1e-2 {tar['0.01']:.4f}  TAR@1e-3 {tar['0.001']:.4f}  TAR@1e-4 {tar['0.0001']:.4f}  "
        f"rank-1 {i['rank1']:.4f}  TPIR@FPIR1e-2 {i['tpir_at_fpir']['0.01']:.4f}  "
        f"{run['seconds_per_photo'] * 1000:.0f} ms/photo"
    )
    print(f"    thresholds at FAR: {v['threshold_at_far']}")
    print(f"    named: {v['at_named_thresholds']}")
    print(f"    1:N named: {i['at_named_thresholds']}")
    print(f"    held out: {run['held_out_calibration']}")


if __name__ == "__main__":
    raise SystemExit(main())
