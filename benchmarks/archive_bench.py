"""Gallery export and import (``face-service export`` / ``import``): time, throughput and archive size.

    python -m benchmarks.archive_bench --sizes 1000 10000 --out benchmarks/results/archive.json

For each size: a SQLite gallery of that many faces (10 per subject) is written through the store, each
face with a real stored crop (one celeba_wild photo's crop and landmarks, so the PNGs are of real size)
and a random unit embedding of the default pack's size. Then it is exported (the same code as the CLI
and ``GET /v1/gallery/export``), imported into an empty gallery on the same pack (verification of every
checksum, the records and the embeddings, one transaction, the index update) and, for the smallest size
only, into a gallery on another pack (re-embedded from the crops: the default pack with flip
augmentation, another id). Prints a markdown table and writes every number to the JSON file.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.service_bench import DEFAULT_FACES_DIR, markdown_table
from service.gallery.gallery import Gallery
from service.gallery.store import NewFace, PackPin, StoredCrop
from service.packs.files import write_manifest
from service.packs.loader import LoadedPack, load_pack, resolve_pack_dir
from service.pipeline.face_pipeline import FacePipeline
from service.settings import Settings, load_settings
from service.usecases.gallery_archive import ImportOptions, export_archive_sync, import_archive_sync

FACES_PER_SUBJECT = 10
BATCH = 500


@dataclass(frozen=True)
class ArchiveResult:
    faces: int
    reembedded: bool
    archive_mb: float
    export_s: float
    import_s: float

    @property
    def export_faces_per_s(self) -> float:
        return self.faces / self.export_s

    @property
    def import_faces_per_s(self) -> float:
        return self.faces / self.import_s


def _pipeline(pack: LoadedPack, threads: int) -> FacePipeline:
    return FacePipeline.from_pack(pack, Settings(device="cpu", intra_op_threads=threads))


def _real_crop(pipeline: FacePipeline, faces_dir: Path) -> StoredCrop:
    photo = sorted((faces_dir / "celeba_wild").rglob("*.jpg"))[0]
    image = np.asarray(Image.open(photo).convert("RGB"))
    faces = pipeline.detect(image)
    return StoredCrop(*pipeline.storage_crop(image, faces[0]))


def _filled_gallery(folder: Path, pipeline: FacePipeline, crop: StoredCrop, faces: int) -> Gallery:
    gallery = Gallery.open(folder, pipeline.pack_id, pipeline.embedding_size, Settings(faiss_gpu=False))
    rng = np.random.default_rng(0)
    for first in range(0, faces, FACES_PER_SUBJECT):
        subject = gallery.create_subject(f"person {first // FACES_PER_SUBJECT}", {"n": first})
        count = min(FACES_PER_SUBJECT, faces - first)
        vectors = rng.standard_normal((count, pipeline.embedding_size)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        gallery.add_faces(subject.id, [NewFace(vector, 0.99, {}, crop) for vector in vectors])
    return gallery


def measure(
    faces: int, source: FacePipeline, target: FacePipeline, crop: StoredCrop, work: Path
) -> ArchiveResult:
    archive = work / f"gallery-{faces}.tar"
    with _filled_gallery(work / f"source-{faces}-{target.pack_id}", source, crop, faces) as gallery:
        started = time.perf_counter()
        with archive.open("wb") as handle:
            export_archive_sync(gallery, PackPin(gallery.pack_id, gallery.embedding_size), handle)
        export_s = time.perf_counter() - started
    folder = work / f"target-{faces}-{target.pack_id}"
    settings = Settings(faiss_gpu=False)
    with Gallery.open(folder, target.pack_id, target.embedding_size, settings) as gallery:
        started = time.perf_counter()
        report = import_archive_sync(gallery, target, archive, ImportOptions())
        import_s = time.perf_counter() - started
        if gallery.index_size != faces or report.faces != faces:
            raise RuntimeError(f"imported {report.faces} faces, index {gallery.index_size}; expected {faces}")
    size_mb = archive.stat().st_size / 2**20
    archive.unlink()
    shutil.rmtree(folder)
    return ArchiveResult(faces, report.reembedded > 0, round(size_mb, 1), export_s, import_s)


def _other_pack(pack: LoadedPack, folder: Path) -> LoadedPack:
    """The default pack's networks under another id (flip augmentation on): imports re-embed."""
    folder.mkdir()
    for name in pack.manifest.files:
        shutil.copy(pack.dir / name, folder / name)
    embedder = pack.manifest.embedder.model_copy(update={"flip_augmentation": True})
    write_manifest(
        folder, pack.manifest.model_copy(update={"id": f"{pack.manifest.id}-flip", "embedder": embedder})
    )
    return load_pack(folder)


def run(sizes: Sequence[int], threads: int, faces_dir: Path) -> dict[str, Any]:
    settings = load_settings()
    pack = load_pack(resolve_pack_dir(settings.models_dir, settings.pack))
    results: list[ArchiveResult] = []
    with tempfile.TemporaryDirectory(prefix="archive-bench-") as scratch:
        work = Path(scratch)
        source = _pipeline(pack, threads)
        crop = _real_crop(source, faces_dir)
        for faces in sizes:
            results.append(measure(faces, source, source, crop, work))
            print(f"  {faces} faces: done", file=sys.stderr)
        other = _pipeline(_other_pack(pack, work / "other-pack"), threads)
        results.append(measure(min(sizes), source, other, crop, work))
    return {
        "pack_id": pack.manifest.id,
        "threads": threads,
        "results": [
            asdict(r)
            | {"export_faces_per_s": r.export_faces_per_s, "import_faces_per_s": r.import_faces_per_s}
            for r in results
        ],
        "table": _table(results),
    }


def _table(results: Sequence[ArchiveResult]) -> str:
    rows = [
        (
            f"{r.faces:,}",
            "re-embedded from crops" if r.reembedded else "same pack",
            f"{r.archive_mb:,.1f}",
            f"{r.export_s:.1f}",
            f"{r.export_faces_per_s:,.0f}",
            f"{r.import_s:.1f}",
            f"{r.import_faces_per_s:,.0f}",
        )
        for r in results
    ]
    headers = ("faces", "import", "archive MB", "export s", "export faces/s", "import s", "import faces/s")
    return markdown_table(headers, rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--threads", type=int, default=2, help="inference threads for re-embedding")
    parser.add_argument("--faces-dir", type=Path, default=DEFAULT_FACES_DIR)
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON results")
    args = parser.parse_args(argv)
    payload = run(args.sizes, args.threads, args.faces_dir)
    print(payload["table"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
