"""Start a gateway with policies added to the benchmark's generated config: a ``bench.run --variant``.

    R=$PWD; W="$R/.venv/bin/python $R/bench/with_policies.py"; GW="$R/.venv/bin/msa-gateway run"
    .venv/bin/python -m bench.run --header "X-API-Key: ..." \
        --variant apikey="$W bench/policies/api_key.yaml $GW"

It runs as a script: the variant's cwd is its temp dir, where the ``bench`` package is not importable.
Reads the YAML that ``bench.run`` wrote (``GATEWAY_CONFIG``), sets ``defaults.policies`` to the
blocks of the policies file, writes the result next to it and replaces itself with the command
(``exec``: the measured process is the gateway alone). A relative policies file is taken from
the repository root; the command must be absolute (the variant runs in its own temp dir).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def with_policies(config: dict[str, object], policies: dict[str, object]) -> dict[str, object]:
    """Return ``config`` with ``policies`` as the default policies of every service."""
    defaults = dict(config.get("defaults") or {})  # type: ignore[call-overload]
    defaults["policies"] = policies
    return {**config, "defaults": defaults}


def main(argv: Sequence[str] | None = None) -> None:
    """Rewrite the config, then exec the gateway command."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2:
        raise SystemExit("usage: python -m bench.with_policies POLICIES.yaml CMD [ARG...]")
    policies_file, command = Path(args[0]), args[1:]
    if not policies_file.is_absolute():
        policies_file = REPO / policies_file
    source = Path(os.environ["GATEWAY_CONFIG"])
    config = yaml.safe_load(source.read_text())
    policies = yaml.safe_load(policies_file.read_text())
    target = source.with_name("gateway-with-policies.yaml")
    target.write_text(yaml.safe_dump(with_policies(config, policies), sort_keys=False))
    os.environ["GATEWAY_CONFIG"] = str(target)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
