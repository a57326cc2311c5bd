"""An ensemble pack's embedder: every member embeds its own chip; one weighted, normalized vector.

The pipeline aligns each face once onto the ensemble's crop template; each member's chip is cut from
that crop with the member's own template and size (a similarity transform between the two templates,
the crop being large enough that this second resampling only shrinks). Member embeddings are unit
norm; the result is ``normalize(concat(w_1·e_1, …, w_k·e_k))``, so its cosine is the
``w²``-weighted mean of the members' cosines. Like ``Embedder``'s, its output rows are checked unit
vectors that nothing downstream re-normalizes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.packs.manifest import EnsembleSpec
from service.pipeline.align import align_to_template
from service.pipeline.embed import Embedder, check_unit_rows, l2_normalize
from service.pipeline.types import FloatArray, ImageArray


@dataclass(frozen=True)
class WeightedMember:
    embedder: Embedder
    weight: float


class EnsembleEmbedder:
    """Same interface as ``Embedder`` (``embed``, ``embedding_size``, ``max_batch``, ``providers``)."""

    def __init__(self, spec: EnsembleSpec, members: Sequence[WeightedMember]) -> None:
        if len(members) != len(spec.members):
            raise ValueError(f"the ensemble declares {len(spec.members)} members, got {len(members)}")
        self._spec = spec
        self._members = list(members)
        self._crop_template = np.asarray(spec.crop_template, dtype=np.float32)

    @property
    def embedding_size(self) -> int:
        return sum(member.embedder.embedding_size for member in self._members)

    @property
    def max_batch(self) -> int:
        return min(member.embedder.max_batch for member in self._members)

    @property
    def providers(self) -> list[str]:
        return self._members[0].embedder.providers

    def member_chips(self, crops: Sequence[ImageArray], index: int) -> list[ImageArray]:
        """Member ``index``'s chips cut from the ensemble crops."""
        spec = self._members[index].embedder.spec
        template = np.asarray(spec.template, dtype=np.float32)
        return [align_to_template(crop, self._crop_template, template, spec.input_size) for crop in crops]

    def embed(self, crops: Sequence[ImageArray]) -> FloatArray:
        """(N, D) unit embeddings, D the sum of the members' sizes; (0, D) for none."""
        if not crops:
            return np.zeros((0, self.embedding_size), dtype=np.float32)
        parts = [
            member.embedder.embed(self.member_chips(crops, index)) * np.float32(member.weight)
            for index, member in enumerate(self._members)
        ]
        models = " + ".join(member.embedder.spec.file for member in self._members)
        return check_unit_rows(l2_normalize(np.concatenate(parts, axis=1)), models)
