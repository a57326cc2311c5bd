"""/v1/info, /metrics, /healthz, /readyz describe the running service."""

from __future__ import annotations

from tests.api.conftest import Person, admin_headers
from tests.api.routes.gallery import Enrolled, identify

H = admin_headers()


def test_info_and_metrics_describe_the_running_service(enrolled: Enrolled, johns: list[Person]) -> None:
    info = enrolled.client.get("/v1/info", headers=H).json()
    assert info["pack_id"].startswith("sface-int8-retinaface-")
    assert set(info["providers"]) == {"detector", "embedder"}
    assert "CPUExecutionProvider" in info["providers"]["embedder"]
    assert "default" in info["operating_points"]
    assert info["threshold"]["name"] == "default"
    assert info["gallery"]["subjects"] == len(johns)
    assert info["gallery"]["faces"] == sum(len(p.enroll) for p in johns)
    assert info["gallery"]["index_type"]

    identify(enrolled.client, johns[0].probes[0])  # a request the route metrics must then show
    metrics = enrolled.client.get("/metrics")  # no key needed
    assert metrics.status_code == 200
    text = metrics.text
    assert 'route="/v1/identify"' in text
    assert 'route="/v1/subjects/{subject_id}/faces"' in text
    assert f'face_gallery_faces{{collection="default"}} {float(info["gallery"]["faces"])}' in text
    embedded = [line for line in text.splitlines() if line.startswith("face_faces_embedded_total")]
    assert embedded
    assert float(embedded[0].split()[-1]) >= info["gallery"]["faces"]
    assert "face_embedding_batch_size_count" in text
    assert enrolled.client.get("/healthz").json() == {"status": "ok"}
    assert enrolled.client.get("/readyz").json()["status"] == "ready"
