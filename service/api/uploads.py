"""Uploaded files → the bytes and names the use cases take (``ImageInput``)."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import UploadFile

from service.usecases.images import ImageInput


async def read_upload(upload: UploadFile) -> bytes:
    try:
        return await upload.read()
    finally:
        await upload.close()


async def image_input(upload: UploadFile, field: str) -> ImageInput:
    """One upload's bytes, named by its form field."""
    return ImageInput(await read_upload(upload), field, upload.filename)


async def image_inputs(uploads: Sequence[UploadFile], field: str) -> list[ImageInput]:
    """A list field's uploads, each named ``field[i]``, in request order."""
    return [await image_input(upload, f"{field}[{index}]") for index, upload in enumerate(uploads)]
