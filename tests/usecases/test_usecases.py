"""The use cases called directly, on real photos: enroll then identify, verify, detect and embed,
and the refusals they raise (domain errors, not HTTP answers)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from service.usecases import subjects
from service.usecases.detect import detect_faces
from service.usecases.embed import embed_faces
from service.usecases.enroll import EnrollRequest, enroll
from service.usecases.errors import (
    FaceIndexOutOfRangeError,
    InvalidImageError,
    InvalidVerifyRequestError,
    NoFaceAcceptedError,
    TooManyImagesError,
)
from service.usecases.identify import IdentifyRequest, identify
from service.usecases.images import ImageInput
from service.usecases.resources import ServiceResources
from service.usecases.verify import FaceRequest, VerifyRequest, verify
from tests.api.conftest import Person
from tests.usecases.conftest import photo, run

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Enrolled:
    subject_ids: dict[str, str]  # person name → subject id


@pytest.fixture(scope="module")
def enrolled(resources: ServiceResources, johns: list[Person]) -> Enrolled:
    """Two of the dlib_johns people enrolled through the enroll use case."""

    async def use(res: ServiceResources) -> Enrolled:
        ids = {}
        for person in johns[:2]:
            subject = await subjects.create_subject(res, person.name, {"set": "dlib_johns"})
            images = [photo(path, f"images[{i}]") for i, path in enumerate(person.enroll)]
            result = await enroll(res, EnrollRequest(subject.id, images))
            assert result.accepted == len(person.enroll), result.outcomes
            assert all(outcome.face_id for outcome in result.outcomes)
            ids[person.name] = subject.id
        return Enrolled(ids)

    return run(resources, use)


def test_enrolled_photos_are_identified_as_their_person(
    resources: ServiceResources, enrolled: Enrolled, johns: list[Person]
) -> None:
    for person in johns[:2]:
        for probe in person.probes[:3]:
            for largest_only in (True, False):
                request = IdentifyRequest(photo(probe), largest_only=largest_only)
                result = run(resources, functools.partial(identify, request=request))
                assert len(result.faces) == 1, probe.name
                (face,) = result.faces
                assert face.candidates, probe.name
                assert face.candidates[0].subject_id == enrolled.subject_ids[person.name], probe.name
                assert all(c.similarity >= result.threshold.value for c in face.candidates)


def test_a_person_never_enrolled_is_unknown(
    resources: ServiceResources, enrolled: Enrolled, strangers: list[Path]
) -> None:
    result = run(resources, lambda res: identify(res, IdentifyRequest(photo(strangers[1]))))
    assert result.faces
    assert all(face.candidates == [] for face in result.faces)


def _pair(first: Path, second: Path) -> VerifyRequest:
    return VerifyRequest(
        image_a=FaceRequest(photo(first, "image_a"), index_field="face_index_a"),
        image_b=FaceRequest(photo(second, "image_b"), index_field="face_index_b"),
    )


def test_verify_pair_same_person_matches_and_two_people_do_not(
    resources: ServiceResources, johns: list[Person]
) -> None:
    person, other = johns[2], johns[3]
    same = run(resources, lambda res: verify(res, _pair(person.probes[0], person.probes[1])))
    different = run(resources, lambda res: verify(res, _pair(person.probes[0], other.probes[0])))
    assert same.mode == "pair"
    assert same.match is True
    assert same.similarity >= same.threshold.value
    assert different.match is False
    assert different.similarity < different.threshold.value < same.similarity
    assert same.face_b is not None
    expected = float(np.dot(same.face_a.face.embedding, same.face_b.face.embedding))
    assert same.similarity == pytest.approx(expected)


def test_verify_against_a_subject(
    resources: ServiceResources, enrolled: Enrolled, johns: list[Person]
) -> None:
    person, other = johns[0], johns[1]
    subject_id = enrolled.subject_ids[person.name]

    def request(path: Path) -> VerifyRequest:
        return VerifyRequest(
            image=FaceRequest(photo(path), index_field="face_index_a"), subject_id=subject_id
        )

    same = run(resources, lambda res: verify(res, request(person.probes[3])))
    different = run(resources, lambda res: verify(res, request(other.probes[3])))
    assert same.mode == "subject"
    assert same.subject is not None
    assert same.subject.id == subject_id
    assert same.match is True
    assert different.match is False


def test_verify_refusals_are_domain_errors(resources: ServiceResources, johns: list[Person]) -> None:
    probe = johns[0].probes[0]
    with pytest.raises(InvalidVerifyRequestError):
        run(resources, lambda res: verify(res, VerifyRequest()))
    out_of_range = VerifyRequest(
        image_a=FaceRequest(photo(probe, "image_a"), index=5, index_field="face_index_a"),
        image_b=FaceRequest(photo(probe, "image_b"), index_field="face_index_b"),
    )
    with pytest.raises(FaceIndexOutOfRangeError) as raised:
        run(resources, lambda res: verify(res, out_of_range))
    assert raised.value.problems[0].field == "face_index_a"
    garbage = VerifyRequest(
        image_a=FaceRequest(photo(probe, "image_a")),
        image_b=FaceRequest(ImageInput(b"not an image", "image_b")),
    )
    with pytest.raises(InvalidImageError) as invalid:
        run(resources, lambda res: verify(res, garbage))
    assert invalid.value.field == "image_b"


def test_detect_and_embed_every_face(resources: ServiceResources, johns: list[Person]) -> None:
    probe = photo(johns[4].probes[0])
    detected = run(resources, lambda res: detect_faces(res, probe))
    embedded = run(resources, lambda res: embed_faces(res, probe))
    assert len(detected.faces) == len(embedded.faces) == 1
    assert detected.width > 0
    assert detected.height > 0
    vector = embedded.faces[0].embedding
    assert vector.shape == (embedded.embedding_size,)
    assert float(np.linalg.norm(vector)) == pytest.approx(1.0, abs=1e-4)


def test_enrollment_refusals_store_nothing(
    resources: ServiceResources, strangers: list[Path], johns: list[Person]
) -> None:
    subject = run(resources, lambda res: subjects.create_subject(res, "nobody", None))
    garbage = EnrollRequest(subject.id, [ImageInput(b"\x00" * 64, "images[0]")])
    with pytest.raises(NoFaceAcceptedError) as raised:
        run(resources, lambda res: enroll(res, garbage))
    assert [(p.field, p.code) for p in raised.value.problems] == [("images[0]", "invalid_image")]
    limit = resources.settings.max_images_per_request
    too_many = EnrollRequest(subject.id, [photo(johns[0].enroll[0])] * (limit + 1))
    with pytest.raises(TooManyImagesError):
        run(resources, lambda res: enroll(res, too_many))
    faces = run(resources, lambda res: subjects.list_subject_faces(res, subject.id))
    assert faces == []
