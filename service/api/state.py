"""What the lifespan builds and every request reads (through ``deps.Services``; no module globals)."""

from __future__ import annotations

from dataclasses import dataclass

from service.api.metrics import ApiMetrics
from service.api.thresholds import ThresholdPolicy
from service.auth.authenticator import Authenticator
from service.gallery.gallery import Gallery
from service.packs.loader import LoadedPack
from service.pipeline.face_pipeline import FacePipeline
from service.pipeline.pixel_budget import PixelBudget
from service.pipeline.quality import QualityBars
from service.settings import Settings


@dataclass(frozen=True)
class AppServices:
    settings: Settings
    pack: LoadedPack
    pipeline: FacePipeline
    gallery: Gallery
    authenticator: Authenticator
    metrics: ApiMetrics
    thresholds: ThresholdPolicy
    quality_bars: QualityBars
    pixel_budget: PixelBudget  # decoded pixels in flight across requests (service.api.images)
