"""The named chip conventions: pinned values, and every built-in pack declaring one of them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from service.packs.conventions import (
    ARCFACE_112,
    ARCFACE_NORMALIZATION,
    ARCFACE_TEMPLATE_112,
    CHIP_CONVENTIONS,
    DLIB_150,
    DLIB_CHIP_TEMPLATE_150,
    SFACE_112,
    ChipConvention,
    five_point_template,
)
from service.packs.insightface import INSIGHTFACE_PACKS
from service.packs.loader import BUILT_IN_PACKS, read_manifest
from service.packs.manifest import ColorOrder, EmbedderSpec


def test_arcface_template_is_insightfaces_arcface_dst():
    # insightface/utils/face_align.py arcface_dst, digit for digit: pack ids depend on these values.
    assert ARCFACE_TEMPLATE_112 == (
        (38.2946, 51.6963),
        (73.5318, 51.5014),
        (56.0252, 71.7366),
        (41.5493, 92.3655),
        (70.7299, 92.2041),
    )
    assert ARCFACE_112.input_size == (112, 112)
    assert ARCFACE_112.template == ARCFACE_TEMPLATE_112
    assert ARCFACE_NORMALIZATION.color_order is ColorOrder.RGB
    assert ARCFACE_NORMALIZATION.mean == ARCFACE_NORMALIZATION.std == (127.5, 127.5, 127.5)


def test_sface_and_dlib_conventions():
    assert SFACE_112.template == ARCFACE_TEMPLATE_112
    assert SFACE_112.input_size == (112, 112)
    assert SFACE_112.normalization.mean == (0.0, 0.0, 0.0)  # the graph normalizes itself
    assert SFACE_112.normalization.std == (1.0, 1.0, 1.0)
    assert DLIB_150.input_size == (150, 150)
    assert DLIB_150.template == DLIB_CHIP_TEMPLATE_150
    assert DLIB_150.normalization.mean == (122.782, 117.001, 104.298)
    assert DLIB_150.normalization.std == (256.0, 256.0, 256.0)


def test_conventions_are_named_once():
    assert set(CHIP_CONVENTIONS) == {"arcface112", "sface112", "dlib150"}
    assert all(CHIP_CONVENTIONS[name].name == name for name in CHIP_CONVENTIONS)


def test_scaled_template_is_float32_per_axis():
    half = ARCFACE_112.scaled_template((56, 56))
    assert half.dtype == np.float32
    np.testing.assert_array_equal(half * 2, np.asarray(ARCFACE_TEMPLATE_112, dtype=np.float32))
    stretched = ARCFACE_112.scaled_template((112, 224))
    np.testing.assert_array_equal(stretched[:, 0], np.asarray(ARCFACE_TEMPLATE_112, np.float32)[:, 0])


def test_five_point_template_refuses_other_shapes():
    assert five_point_template(np.asarray(ARCFACE_TEMPLATE_112)) == ARCFACE_TEMPLATE_112
    with pytest.raises(ValueError, match="five"):
        five_point_template([(1.0, 2.0)] * 4)


def _named_convention(embedder: EmbedderSpec) -> ChipConvention | None:
    for convention in CHIP_CONVENTIONS.values():
        declared = (embedder.input_size, embedder.template, embedder.normalization)
        same_chip = declared == (convention.input_size, convention.template, convention.normalization)
        if same_chip and embedder.template_derivation == convention.template_derivation:
            return convention
    return None


def _builders() -> dict[str, Callable[[Path], Path]]:
    from export.default_pack import FAST_PACK, FP32_PACK, build_default_pack, build_sface_pack
    from export.dlib_pack import build_dlib_pack
    from export.ensemble_pack import build_ensemble_pack

    return {
        "default": build_default_pack,
        "fast": lambda out: build_sface_pack(FAST_PACK, out),
        "fp32": lambda out: build_sface_pack(FP32_PACK, out),
        "dlib": build_dlib_pack,
        "ensemble": build_ensemble_pack,
    }


@pytest.mark.parametrize("name", sorted(BUILT_IN_PACKS))
def test_every_built_in_pack_uses_a_named_convention(name: str, default_pack_dir: Path):
    pack_dir = _builders()[name](default_pack_dir.parent / name)  # cached: built once, then verified
    manifest = read_manifest(pack_dir)
    for embedder in manifest.embedders:
        assert _named_convention(embedder) is not None, f"{name}: {embedder.file} declares unnamed chips"


def test_insightface_tables_use_a_named_convention():
    for layout in INSIGHTFACE_PACKS.values():
        assert layout.embedder_convention in CHIP_CONVENTIONS.values()
