"""``python -m pipelines.validate [params.yaml]``: check the configuration; ``--schema`` prints its JSON Schema.

Exit 0 on a good file; exit 2 listing every problem as ``dotted.path: message``.
"""

from __future__ import annotations

import argparse
import json
import sys

from components.config import ConfigError, PipelineConfig, load_config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("params", nargs="?", default="params.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--schema", action="store_true", help="print the JSON Schema of params.yaml and exit")
    args = p.parse_args(argv)
    if args.schema:
        print(json.dumps(PipelineConfig.model_json_schema(), indent=2))
        return 0
    try:
        cfg = load_config(args.params, args.overrides)
    except ConfigError as exc:
        print(f"{exc.source}: {len(exc.problems)} problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    print(f"{args.params}: ok (profile {cfg.profile}, models {', '.join(cfg.train)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
