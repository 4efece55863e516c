"""A realistic traffic mix against a running gateway, for locust.

    80 %  reads with valid keys             GET /v1/servers, /v1/instances, /v1/backups
    10 %  writes with JSON bodies           POST /v1/instances (deployment key)
     5 %  invalid keys                      expected 401
     5 %  a `limited`-tier key              runs into 429 after 10 a minute

Expected 401s and 429s are counted as successes under their own names ("401 expected", "429 expected"), so the
failure column shows only what is really wrong (5xx, timeouts, an unexpected status). The keys come from the
JSON file named by GATEWAY_LOAD_KEYS (default loadtests/keys.json), written by loadtests/make_keys.sh.
See loadtests/README.md for the command.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from locust import FastHttpUser, between, task

KEYS = json.loads(Path(os.environ.get("GATEWAY_LOAD_KEYS", Path(__file__).with_name("keys.json"))).read_text())
READ_PATHS = ("/v1/servers", "/v1/instances", "/v1/backups", "/v1/servers/srv_01")
# Well-formed in shape, wrong checksum: refused before any store lookup, like a mistyped key.
BAD_KEYS = ("dep_live_" + "A" * 32, "dep_live_" + "x" * 26 + "000000", "not-a-key")


class ApiUser(FastHttpUser):
    wait_time = between(0.0, 0.05)

    def _auth(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    @task(80)
    def read(self) -> None:
        self.client.get(random.choice(READ_PATHS), headers=self._auth(KEYS["read"]), name="read")

    @task(10)
    def write(self) -> None:
        body = {"app": "shop", "size": random.randint(1, 8), "note": "x" * random.randint(10, 2000)}
        self.client.post("/v1/instances", json=body, headers=self._auth(KEYS["write"]), name="write")

    @task(5)
    def invalid(self) -> None:
        with self.client.get("/v1/servers", headers=self._auth(random.choice(BAD_KEYS)), name="401 expected",
                             catch_response=True) as resp:
            if resp.status_code == 401:
                resp.success()
            else:
                resp.failure(f"expected 401, got {resp.status_code}")

    @task(5)
    def limited(self) -> None:
        with self.client.get("/v1/servers", headers=self._auth(KEYS["limited"]), name="limited key",
                             catch_response=True) as resp:
            if resp.status_code == 429:
                resp.request_meta["name"] = "429 expected"
                resp.success()
            elif resp.status_code != 200:
                resp.failure(f"expected 200 or 429, got {resp.status_code}")
