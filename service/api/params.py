"""Request parameters shared by several routes (``Annotated`` aliases)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Form, Query

from service.settings import FacePolicy

_THRESHOLD_HELP = 'operating point name (e.g. "default", "far=1e-3") or a cosine value in [-1, 1]'

# The threshold may come as a form field or a query parameter (the form field wins).
ThresholdForm = Annotated[str | None, Form(alias="threshold", description=_THRESHOLD_HELP, max_length=64)]
ThresholdQuery = Annotated[str | None, Query(alias="threshold", description=_THRESHOLD_HELP, max_length=64)]

# Which face of an image to use when one is needed; unset: FACE_FACE_POLICY.
FacePolicyForm = Annotated[
    FacePolicy | None,
    Form(
        description="which face to use: largest, centre (nearest the centre, weighted by size) or score "
        "(most confident); default: the FACE_FACE_POLICY setting",
    ),
]
