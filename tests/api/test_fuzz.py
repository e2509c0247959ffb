"""The API survives a fuzzer: schemathesis, bounded, over the OpenAPI document, with a valid admin
key against a live server — no 5xx, no schema-valid request refused, every response as
documented (status, content type, headers, body schema)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from sqlalchemy import func, select

from portal.extensions import db
from portal.metering.stream import STREAM
from portal.models import UsageRecord
from portal.redis_store import get_redis
from tests.api_helpers import ROOT, Servers, add_key, drain
from tests.factories import new_tenant

pytestmark = pytest.mark.slow
# Examples per operation (and phase); TOLLGATE_FUZZ_EXAMPLES=100 for a longer run.
EXAMPLES = int(os.environ.get("TOLLGATE_FUZZ_EXAMPLES", "25"))


@pytest.fixture
def server(server_env):
    # No limit on the request line: the fuzzer's longest queries reach the application (gunicorn
    # alone would refuse them with a 414, which the document states).
    servers = Servers(server_env, 1, ("--limit-request-line", "0"))
    yield servers
    servers.stop()


def test_the_api_survives_a_bounded_schemathesis_run(app, server, tmp_path):
    servers, server = server, server.urls[0]
    # Enterprise: windows wide enough that the run is about the API, not about 429s.
    tenant = new_tenant(app, "Fuzz Co", plan="enterprise", key=True)
    _, secret = add_key(app, tenant.tenant_id, "fuzz-admin", scope="admin")
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.fuzz.hooks", "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{server}/api/v1/openapi.json",
        "--url",
        server,
        "--header",
        f"X-API-Key: {secret}",
        # Both ways of presenting the key, so neither is fuzzed into a wrong credential while the
        # other authenticates the call.
        "--header",
        f"Authorization: Bearer {secret}",
        "--checks",
        "all",
        "--max-examples",
        str(EXAMPLES),
        "--seed",
        os.environ.get("TOLLGATE_FUZZ_SEED", "20261201"),
        "--no-color",
        "--no-shrink",
        "--max-failures",
        "20",
        "--report-dir",
        str(tmp_path),
    ]
    # Bounded by the examples per operation; the timeout only guards against a hung run.
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    # Whatever the fuzzer reported is stored by the worker: no batch it cannot write. The server
    # stops first: an idle server's timer sends its last call's completion whenever it fires.
    servers.stop()
    drain(app)
    with app.app_context():
        assert get_redis(app).xlen(STREAM) == 0
        assert db.session.scalar(select(func.count()).select_from(UsageRecord)) > 0
