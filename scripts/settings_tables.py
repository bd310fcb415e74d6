"""Write the README's per-service settings tables from the settings dataclasses (their defaults and
docs), or check that they are current (`--check`, run by tests/mesh/test_settings.py).

Each table sits between `<!-- settings:<name> -->` and `<!-- /settings:<name> -->` in README.md.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

from ztmesh.audit.settings import AuditSettings
from ztmesh.keys.settings import KeysSettings
from ztmesh.mesh.settings import describe
from ztmesh.plugins.settings import PluginsSettings
from ztmesh.policy.settings import PolicySettings

REPO_ROOT = Path(__file__).resolve().parent.parent
README = REPO_ROOT / "README.md"
TABLES = {"policy": PolicySettings, "plugins": PluginsSettings, "keys": KeysSettings, "audit": AuditSettings}


def _default(text: str) -> str:
    if text in ("None", "()", ""):
        return ""
    if text in ("True", "False"):
        return text.lower()
    return text.replace(str(REPO_ROOT) + "/", "")  # defaults inside the checkout, shown relative to it


def table(cls: type) -> str:
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, default, doc in describe(cls):
        shown = f"`{_default(default)}`" if _default(default) else ""
        meaning = doc.replace("|", "\\|")
        rows.append(f"| `{name}` | {shown} | {meaning} |")
    return "\n".join(rows)


def _block_filler(rendered: str) -> Callable[[re.Match[str]], str]:
    return lambda m: m.group(1) + rendered + "\n" + m.group(2)


def render(readme: str) -> str:
    for name, cls in TABLES.items():
        pattern = re.compile(rf"(<!-- settings:{name} -->\n).*?(<!-- /settings:{name} -->)", re.DOTALL)
        if not pattern.search(readme):
            raise SystemExit(f"settings_tables: README.md has no <!-- settings:{name} --> block")
        readme = pattern.sub(_block_filler(table(cls)), readme)
    return readme


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if README.md's tables are out of date")
    args = parser.parse_args(argv)
    current = README.read_text()
    wanted = render(current)
    if wanted == current:
        return 0
    if args.check:
        print("settings_tables: README.md settings tables are stale; run `python scripts/settings_tables.py`",
              file=sys.stderr)  # fmt: skip
        return 1
    README.write_text(wanted)
    print("wrote README.md settings tables")
    return 0


if __name__ == "__main__":
    sys.exit(main())
