#!/usr/bin/env python3
"""Write docs/config.md from the config model itself, so the reference cannot drift.

python scripts/generate_config_reference.py          # rewrite the file
python scripts/generate_config_reference.py --check  # exit 1 if it is out of date (the tests do this)
"""

from __future__ import annotations

import sys
from pathlib import Path

from lockstep.config.sample import render_reference

TARGET = Path(__file__).resolve().parent.parent / "docs" / "config.md"


def main() -> int:
    text = render_reference()
    if "--check" in sys.argv:
        if not TARGET.exists() or TARGET.read_text(encoding="utf-8") != text:
            print(f"{TARGET} is out of date: run python scripts/generate_config_reference.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
