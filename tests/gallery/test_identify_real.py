"""Enroll real people through the FacePipeline, identify their other photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from service.gallery.gallery import Gallery
from service.gallery.store import NewFace, StoredCrop
from service.settings import Settings

ENROLLED_PER_PERSON = 3


def test_identify_enrolled_people_from_their_other_photos(
    tmp_path: Path, default_pipeline, johns: dict[str, list[np.ndarray]], database_url: str | None
) -> None:
    pipeline = default_pipeline
    settings = Settings(faiss_gpu=False, database_url=database_url)
    subjects: dict[str, str] = {}
    with Gallery.open(tmp_path, pipeline.pack_id, pipeline.embedding_size, settings) as gallery:
        for name, images in johns.items():
            subject = gallery.create_subject(name, {"source": "dlib_johns"})
            faces = []
            for image in images[:ENROLLED_PER_PERSON]:
                (embedded,) = pipeline.analyze_sync(image)
                crop = StoredCrop(*pipeline.storage_crop(image, embedded.face))
                faces.append(NewFace.from_embedded(embedded, crop))
            records = gallery.add_faces(subject.id, faces)
            assert len(records) == ENROLLED_PER_PERSON
            assert all(r.has_crop for r in records)
            subjects[name] = subject.id

        probes = [(name, image) for name, images in johns.items() for image in images[ENROLLED_PER_PERSON:]]
        embeddings = np.stack([pipeline.analyze_sync(image)[0].embedding for _, image in probes])
        results = gallery.identify(embeddings, top_k=3)
        for (name, _), candidates in zip(probes, results, strict=True):
            assert len(candidates) == 3
            assert len({c.subject_id for c in candidates}) == 3
            assert candidates[0].subject_id == subjects[name], (name, candidates)
            assert candidates[0].name == name

        # 1:1 against the right subject beats every wrong one.
        for (name, _), embedding in zip(probes, embeddings, strict=True):
            own = gallery.verify_against_subject(embedding, subjects[name])
            others = [
                gallery.verify_against_subject(embedding, sid) for n, sid in subjects.items() if n != name
            ]
            assert own > max(others)
