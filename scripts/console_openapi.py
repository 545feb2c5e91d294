"""Print the platform's OpenAPI document as JSON, built from ``create_app`` (no server, no DB, no Temporal).

Used by ``scripts/console-types.sh`` to generate the console's typed API client and by the drift test.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def openapi() -> dict[str, Any]:
    from api.app import create_app
    from registry.settings import Settings

    # Nothing connects: the lifespan never runs; the settings only have to pass ``check_secure``.
    settings = Settings(dev_mode=True, jwt_secret="openapi-export-only-" + "x" * 32)
    return create_app(settings).openapi()


def dump() -> str:
    return json.dumps(openapi(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(dump())
