"""``treedrive.client`` is quick to import: the standard library only, none of the node (no
click, aiohttp, SQLAlchemy, alembic, pluggy, cryptography), so that a script and ``treedrive
push`` start fast."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = {"click", "aiohttp", "sqlalchemy", "alembic", "pluggy", "cryptography", "asyncio"}


def test_importing_the_client_loads_nothing_of_the_node() -> None:
    code = (
        "import json, sys; import treedrive.client; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{sorted(HEAVY)!r} or m.startswith('treedrive'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = json.loads(done.stdout)
    assert not [m for m in loaded if m.split(".")[0] in HEAVY], loaded
    assert [m for m in loaded if not m.startswith("treedrive.client")] == [
        "treedrive",
        "treedrive.core",
        "treedrive.core.config",
    ]
