"""Schema-driven fuzzing (schemathesis): no generated request may get a 5xx.

Marked slow. ``FACE_FUZZ_EXAMPLES`` sets the examples per operation (default 15; the heavy run
uses more).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from service.api.app import create_app
from tests.api.conftest import admin_headers, api_settings

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("FACE_FUZZ_EXAMPLES", "15"))


def test_no_request_gets_a_server_error(tmp_path: Path, default_pack_dir: Path) -> None:
    # schemathesis starts the app's lifespan once and keeps it for the process (models load once).
    app = create_app(api_settings(tmp_path, default_pack_dir))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 15

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        def no_server_error(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=admin_headers(), checks=[not_a_server_error])

        no_server_error()
