"""`python -m campfleet.agent` / `campfleet-agent`: wire settings, runtime and volumes, run."""

from __future__ import annotations

import logging
import sys
from typing import Optional, Sequence

from campfleet.agent.agent import Agent
from campfleet.agent.config import ConfigProblem, load
from campfleet.agent.docker import DockerRuntime
from campfleet.agent.imds import Imds, ImdsFailure
from campfleet.agent.runtime import LocalRuntime, Runtime
from campfleet.agent.volume import EbsVolumes, LocalVolumes


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        cfg, level = load(argv)
    except ConfigProblem as exc:
        print(f"campfleet-agent: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    runtime: Runtime
    if cfg.runtime == "local":
        runtime = LocalRuntime(cfg.state_dir, cfg.content)
    else:
        runtime = DockerRuntime(
            cfg.state_dir,
            cfg.mount_path,
            scope=cfg.docker_scope,
            memory_mib=cfg.container_memory_mib,
            pids_limit=cfg.container_pids_limit,
        )
    volumes = LocalVolumes(cfg.volumes_root) if cfg.local else EbsVolumes(cfg.volumes_root)
    try:
        agent = Agent(cfg, runtime, volumes, None if cfg.local else Imds(cfg.imds_url))
    except (ImdsFailure, ValueError) as exc:
        print(f"campfleet-agent: {exc}", file=sys.stderr)
        return 2
    return agent.run()


if __name__ == "__main__":
    sys.exit(main())
