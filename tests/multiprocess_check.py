"""One process of a two-process training run on CPU (``jax.distributed``).

Started twice by ``tests/test_sharding.py`` with 4 faked CPU devices each:
``python tests/multiprocess_check.py PORT PROCESS_ID RUN_DIR``. Both
processes train the tiny model on one mesh of the 8 global devices
(``data=4,model=2``) and write into one run folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax


def main(port: str, pid: str, run_dir: str) -> None:
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
    coordinator_address=f"localhost:{port}",
    num_processes=2,
    process_id=int(pid),
  )
  sys.path.insert(0, str(Path(__file__).parent))
  from conftest import make_tiny_lm
  from mesh_checks import ITEMS, multiprocess_config

  from j6jax import sharding
  from j6jax._src import train as tr

  assert jax.device_count() == 8 and jax.local_device_count() == 4
  mesh = sharding.make_mesh("data=4,model=2")
  lm = make_tiny_lm()
  tr.train(lm, ITEMS, ITEMS[:2], multiprocess_config(), run_dir, mesh=mesh)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main(*sys.argv[1:4])
