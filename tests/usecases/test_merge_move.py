"""Merging subjects and moving faces through the use cases, on real photos: what identify answers
afterwards, and the refusals as domain errors naming the input at fault (no HTTP anywhere)."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.gallery.store import FaceNotFoundError, SubjectNotFoundError
from service.usecases import faces, subjects
from service.usecases.enroll import EnrollRequest, enroll
from service.usecases.errors import SelfMergeError, TargetSubjectNotFoundError
from service.usecases.identify import IdentifyRequest, identify
from service.usecases.resources import ServiceResources
from tests.api.conftest import Person
from tests.usecases.conftest import photo, run

pytestmark = pytest.mark.slow


async def _best_subject(resources: ServiceResources, path: Path) -> str:
    result = await identify(resources, IdentifyRequest(photo(path), largest_only=True))
    assert result.faces, path.name
    assert result.faces[0].candidates, path.name
    return result.faces[0].candidates[0].subject_id


def test_merge_then_move_change_whom_identify_names(resources: ServiceResources, johns: list[Person]) -> None:
    a, b = johns[2], johns[3]

    async def use(res: ServiceResources) -> None:
        ids = {}
        face_photos: dict[str, Path] = {}
        for person in (a, b):
            subject = await subjects.create_subject(res, person.name, {"person": person.name})
            images = [photo(path, f"images[{i}]") for i, path in enumerate(person.enroll)]
            result = await enroll(res, EnrollRequest(subject.id, images))
            assert result.accepted == len(person.enroll), result.outcomes
            ids[person.name] = subject.id
            face_photos |= {str(o.face_id): person.enroll[i] for i, o in enumerate(result.outcomes)}
        a_id, b_id = ids[a.name], ids[b.name]
        assert await _best_subject(res, a.probes[0]) == a_id

        with pytest.raises(SelfMergeError) as itself:
            await subjects.merge_subject(res, a_id, a_id)
        assert [p.field for p in itself.value.problems] == ["body.into"]
        with pytest.raises(TargetSubjectNotFoundError) as no_target:
            await subjects.merge_subject(res, a_id, "nobody")
        assert [p.field for p in no_target.value.problems] == ["body.into"]
        with pytest.raises(SubjectNotFoundError):
            await subjects.merge_subject(res, "nobody", b_id)

        merged = await subjects.merge_subject(res, a_id, b_id)
        assert (merged.id, merged.face_count) == (b_id, len(a.enroll) + len(b.enroll))
        assert merged.metadata == {"person": b.name}  # both had the key: the target's value stays
        assert await _best_subject(res, a.probes[0]) == b_id
        with pytest.raises(SubjectNotFoundError):
            await subjects.get_subject(res, a_id)

        # One of a's faces back to a subject of a's own: the photo it came from is a's again.
        face_id = next(f for f, path in face_photos.items() if path == a.enroll[0])
        again = await subjects.create_subject(res, a.name, None)
        with pytest.raises(TargetSubjectNotFoundError) as no_subject:
            await faces.move_face(res, face_id, "nobody")
        assert [p.field for p in no_subject.value.problems] == ["body.subject_id"]
        with pytest.raises(FaceNotFoundError):
            await faces.move_face(res, "no-such-face", again.id)
        assert await _best_subject(res, a.enroll[0]) == b_id
        moved = await faces.move_face(res, face_id, again.id)
        assert (moved.id, moved.subject_id, moved.has_crop) == (face_id, again.id, True)
        assert await faces.get_face(res, face_id) == moved
        assert await _best_subject(res, a.enroll[0]) == again.id

    run(resources, use)
