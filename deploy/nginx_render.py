"""Render deploy/nginx.conf for a set of web processes.

The file is a whole nginx.conf with two placeholders, `${LISTEN}` (nginx's `listen` argument:
`80`, `127.0.0.1:8080`) and `${SLUICE_UPSTREAMS}` (one `server ...;` line per web process).
Only `${UPPER_CASE}` names outside comments are replaced, so nginx's own variables ($host,
$upstream_addr) stay as they are; a placeholder without a value is an error, not an empty
string.

    python -m deploy.nginx_render --listen 80 --upstream 127.0.0.1:8001 \
        --upstream "127.0.0.1:8002 max_fails=2" > /etc/sluice/nginx.conf
"""
from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent / "nginx.conf"
_PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")


def nginx_render(*, listen: str, upstreams: Sequence[str], template: Path = TEMPLATE) -> str:
    """The config text: `upstreams` are `server` arguments (`host:port [parameters]`)."""
    if not upstreams:
        raise ValueError("nginx needs at least one upstream web process")
    values = {
        "LISTEN": listen,
        "SLUICE_UPSTREAMS": "\n        ".join(f"server {u};" for u in upstreams),
    }

    def fill(match: re.Match[str]) -> str:
        if match.group(1) not in values:
            raise KeyError(f"{template}: no value for ${{{match.group(1)}}}")
        return values[match.group(1)]

    return "".join(
        line if line.lstrip().startswith("#") else _PLACEHOLDER.sub(fill, line)
        for line in template.read_text().splitlines(keepends=True)
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="80", help="nginx's listen argument (default 80)")
    parser.add_argument("--upstream", action="append", required=True,
                        help="a web process, host:port [server parameters]; repeat per process")
    args = parser.parse_args(argv)
    sys.stdout.write(nginx_render(listen=args.listen, upstreams=args.upstream))


if __name__ == "__main__":
    main()
