"""`python -m tuneline.schedule cron|timezone [PARAMS]`: the retrain schedule from params.yaml's
`deploy:` section, printed for prefect.yaml's build steps (so the cron lives in params, not YAML twice)."""
from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from tuneline.config import load_config

    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in ("cron", "timezone"):
        print("usage: python -m tuneline.schedule cron|timezone [params.yaml]", file=sys.stderr)
        return 2
    params = args[1] if len(args) > 1 else ("params.yaml" if Path("params.yaml").is_file() else None)
    print(getattr(load_config(params).deploy, args[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
