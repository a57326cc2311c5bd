"""Use cases: what the service does (verify, identify, enroll, ...), with no HTTP in sight.

Each takes the assembled ``ServiceResources`` and bytes or plain values, runs blocking work in
worker threads (``service.usecases.threads``), raises ``service.usecases.errors`` and returns
dataclasses. The HTTP API (``service.api``) and the CLI are front ends over them.
"""
