"""The ``reallm`` command.

Torch's OpenMP threads spin while they wait for one another; on a machine whose cores are busy with
anything else that made ``--threads 2`` 3-4x slower than one thread (docs/benchmarks.md). The command
asks for passive waiting unless the user set ``OMP_WAIT_POLICY``; it must be set before torch loads its
OpenMP runtime, which is why it is here, before any command module imports torch.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
