"""The one settings object of the service: environment variables prefixed ``FACE_``."""

from __future__ import annotations

import os
import re
from enum import StrEnum
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _xdg_dir(env_name: str, fallback: str) -> Path:
    base = os.environ.get(env_name)
    return Path(base) if base else Path.home() / fallback


def default_data_dir() -> Path:
    """Gallery, keys and other state; outside the source tree by default."""
    return _xdg_dir("XDG_DATA_HOME", ".local/share") / "face-service"


def default_models_dir() -> Path:
    """Model packs; built packs are a cache that can be rebuilt at any time."""
    return _xdg_dir("XDG_CACHE_HOME", ".cache") / "face-service" / "models"


def models_dir_from_env() -> Path:
    """``FACE_MODELS_DIR`` when set, else ``default_models_dir()``: where face-export and face-train
    put and find packs. Only this one variable is read: no other service setting reaches them."""
    value = os.environ.get("FACE_MODELS_DIR")
    return Path(value) if value else default_models_dir()


class FacePolicy(StrEnum):
    """Which face of a photo is "the" face (ranked in ``service.pipeline.face_choice``)."""

    LARGEST = "largest"
    CENTRE = "centre"
    SCORE = "score"


class ExecutionDevice(StrEnum):
    AUTO = "auto"  # CUDA when onnxruntime offers it, else CPU (reported, never silent)
    CPU = "cpu"
    CUDA = "cuda"  # CUDA required: start fails without it


class SearchBackend(StrEnum):
    FAISS = "faiss"  # every replica searches its own in-memory FAISS index, fed by the change feed
    PGVECTOR = "pgvector"  # search inside PostgreSQL (HNSW): for galleries too large for each replica


class SubjectScore(StrEnum):
    MAX = "max"  # a subject's score is the best of its faces
    MEAN = "mean"  # mean of its faces' similarities


# The gallery the routes without a collection (/v1/subjects, /v1/identify, ...) use: FACE_PACK's.
DEFAULT_COLLECTION = "default"
# A collection's name: the path segment of /v1/collections/{collection}/..., a folder and a schema name.
COLLECTION_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,39}$"
# A pack folder's name under models_dir (FACE_PACK, and each collection's pack).
PACK_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class DuplicateNames(StrEnum):
    """What creating or renaming a subject to a name another subject has (trimmed, any case) does."""

    FLAG = "flag"  # allowed; such subjects carry duplicate_name: true
    REFUSE = "refuse"  # 409 duplicate_name, nothing written


class Settings(BaseSettings):
    """Every knob of the service. Each field reads ``FACE_<FIELD NAME>`` from the environment."""

    model_config = SettingsConfigDict(env_prefix="FACE_", env_file=None, extra="ignore")

    # --- server
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    log_level: str = "info"
    cors_origins: list[str] = Field(default_factory=list)
    # A connection must deliver a complete request head this soon after it opens (or after its last
    # response): idle and half-sent (slowloris) connections are closed instead of holding a descriptor.
    header_timeout_s: float = Field(10.0, gt=0.0, le=600.0)
    keep_alive_timeout_s: int = Field(5, ge=1, le=600)  # idle keep-alive connection between requests
    # Open connections (or requests in flight) beyond this are answered 503 at once (uvicorn's
    # limit_concurrency); keep it well under the process's file-descriptor limit (`ulimit -n`).
    max_connections: int = Field(1000, ge=1)
    graceful_shutdown_timeout_s: int = Field(30, ge=1)  # in-flight requests get this long at shutdown

    # --- storage
    data_dir: Path = Field(default_factory=default_data_dir)
    models_dir: Path = Field(default_factory=default_models_dir)
    pack: str = Field("default", pattern=PACK_NAME_PATTERN)
    store_crops: bool = True  # keep aligned crops so the gallery can be re-embedded
    duplicate_names: DuplicateNames = DuplicateNames.FLAG
    # Named galleries besides the default one, each pinned to its own pack: {"kiosk": "fast"} (JSON:
    # collection name -> pack folder, as FACE_PACK names one). Served under /v1/collections/{name}/.
    # Declared, not created through the API: every replica must serve the same collections, so adding
    # one is a configuration change and a (rolling) restart (docs/api.md, "Collections").
    collections: dict[str, str] = Field(default_factory=dict)

    # --- shared gallery (PostgreSQL). Unset: the embedded SQLite gallery in data_dir.
    # A libpq URL (postgresql://user:password@host:5432/db); secret because it may carry a password.
    database_url: SecretStr | None = None
    search: SearchBackend = SearchBackend.FAISS  # pgvector needs database_url
    db_pool_min_size: int = Field(1, ge=0, le=100)
    db_pool_max_size: int = Field(8, ge=1, le=100)
    # A request waits this long for a database connection before it is answered 503.
    db_timeout_s: float = Field(3.0, gt=0.0, le=120.0)
    # Replicas wake on LISTEN/NOTIFY; they also poll this often (the fallback when a notice is lost).
    feed_poll_interval_s: float = Field(1.0, gt=0.0, le=60.0)
    # /readyz fails while the oldest change this replica has not applied is older than this.
    replica_max_lag_s: float = Field(30.0, gt=0.0)

    # --- auth
    api_key: SecretStr | None = None  # an explicit admin key (tests, Docker)
    auth_enabled: bool = True  # False only for local experiments; logged as a warning

    # --- runtime
    device: ExecutionDevice = ExecutionDevice.AUTO
    tensorrt: bool = False  # opt-in TensorRT provider ahead of CUDA
    intra_op_threads: int = Field(0, ge=0)  # 0: number of CPU cores
    inter_op_threads: int = Field(1, ge=1)
    # 0: by device. On CPU, SFace's time per face grows with the batch (9.5 ms at 1, 9.1 at 4, 16.3 at
    # 32 on 2 cores: activations outgrow the caches), so CPU batches stay small; GPUs want big ones.
    batch_max_size: int = Field(0, ge=0, le=512)
    batch_max_wait_ms: float = Field(2.0, ge=0.0, le=1000.0)

    # --- detection
    det_input_size: int = Field(640, ge=64, le=4096)  # longest side fed to the detector
    # Identify (largest_only) and face-eval first detect at this size and keep that answer when it
    # settles the choice of face (docs/pipeline.md); 0: always full size.
    det_coarse_input_size: int = Field(320, ge=0, le=4096)
    # Unset: the pack's recommended thresholds (its manifest); set: an explicit override.
    det_score_threshold: float | None = Field(None, gt=0.0, lt=1.0)
    det_nms_threshold: float | None = Field(None, gt=0.0, lt=1.0)
    max_faces: int = Field(32, ge=1, le=1000)
    min_face_size: int = Field(16, ge=1)  # pixels, shorter side of the box
    # Which face of a photo verify, identify (one face), enrollment and face-eval take; chosen by
    # measurement on celeba_wild (docs/evaluation.md, "The right face").
    face_policy: FacePolicy = FacePolicy.CENTRE

    # --- input limits
    max_request_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    # POST /v1/gallery/import only (an archive holds a whole gallery; spooled to a temp file, not memory)
    max_import_bytes: int = Field(1024 * 1024 * 1024, ge=1024)
    max_image_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(40_000_000, ge=1024)
    max_images_per_request: int = Field(32, ge=1)
    # Decoded pixels held at once by decoding + detecting images, across all requests (memory bound:
    # ~3 bytes a pixel, a few copies at peak). An image waits for room, at most decode_budget_wait_s,
    # then the request is answered 503 with Retry-After.
    decode_pixel_budget: int = Field(120_000_000, ge=1024)
    decode_budget_wait_s: float = Field(30.0, ge=0.0, le=600.0)
    # Enrollment decodes a JPEG at least twice this long at a 1/2, 1/4 or 1/8 DCT scale keeping its
    # longest side >= max(this, 2 × det_input_size): faces the detector can find stay >= 2× their
    # detector size, enough for the 112×112 chip and the size bars. 0: always decode at full size.
    jpeg_draft_min_side: int = Field(1280, ge=0)

    # --- enrollment quality bars
    enroll_min_face_size: int = Field(40, ge=1)
    enroll_min_det_score: float = Field(0.8, ge=0.0, le=1.0)
    enroll_min_sharpness: float = Field(10.0, ge=0.0)
    enroll_max_yaw_deg: float = Field(45.0, ge=0.0, le=90.0)
    enroll_max_pitch_deg: float = Field(40.0, ge=0.0, le=90.0)

    # --- matching
    threshold: str = "default"  # a named operating point of the pack (e.g. "far=1e-3") or a number
    subject_score: SubjectScore = SubjectScore.MAX
    identify_top_k: int = Field(5, ge=1, le=100)

    # --- index
    index_hnsw_min_size: int = Field(50_000, ge=1)  # exact IndexFlatIP below, HNSW from here on
    hnsw_m: int = Field(32, ge=4, le=128)
    hnsw_ef_construction: int = Field(80, ge=8)
    # efSearch 256: recall@1 >= 0.99 at 1M realistic 128-d faces, p50 < 1 ms (docs/benchmarks.md)
    hnsw_ef_search: int = Field(256, ge=8)
    faiss_gpu: bool = True  # use faiss-gpu when it is installed and a GPU is present

    @model_validator(mode="after")
    def _shared_gallery_settings_agree(self) -> Settings:
        if self.search is SearchBackend.PGVECTOR and self.database_url is None:
            raise ValueError("FACE_SEARCH=pgvector searches inside PostgreSQL: set FACE_DATABASE_URL too")
        if self.db_pool_min_size > self.db_pool_max_size:
            raise ValueError(
                f"FACE_DB_POOL_MIN_SIZE ({self.db_pool_min_size}) exceeds "
                f"FACE_DB_POOL_MAX_SIZE ({self.db_pool_max_size})"
            )
        return self

    @model_validator(mode="after")
    def _collections_are_well_named(self) -> Settings:
        for name, pack in self.collections.items():
            if not re.fullmatch(COLLECTION_NAME_PATTERN, name):
                raise ValueError(
                    f"FACE_COLLECTIONS: {name!r} is no collection name (lower-case letters, digits and _, "
                    "starting with a letter, at most 40 characters)"
                )
            if name == DEFAULT_COLLECTION:
                raise ValueError(
                    f"FACE_COLLECTIONS: {DEFAULT_COLLECTION!r} is the gallery of FACE_PACK; name the "
                    "collection otherwise"
                )
            if not re.fullmatch(PACK_NAME_PATTERN, pack):
                raise ValueError(f"FACE_COLLECTIONS: collection {name!r}: {pack!r} is no pack folder name")
        return self

    @property
    def pack_dir(self) -> Path:
        return self.models_dir / self.pack

    @property
    def shared_gallery(self) -> bool:
        """Whether the gallery lives in PostgreSQL (shared by replicas) rather than in data_dir."""
        return self.database_url is not None


def load_settings() -> Settings:
    return Settings()
