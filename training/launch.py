"""The training job's launcher: ``python training/launch.py <hyperparameters as --name value>``.

SageMaker runs it as the job's entry script (through the SDK's basic script driver, which
passes the hyperparameters as command-line arguments); the local runner runs the same command
on every emulated host. It starts ``torchrun`` the way the SageMaker SDK's own torchrun driver
does (``--nnodes``, ``--nproc_per_node``, and for several hosts a static rendezvous on the
first host with ``--master_addr/--master_port/--node_rank``), with one difference: the process
count comes from the ProcessesPerNode pipeline parameter (``LEPTON_NPROC_PER_NODE``) at run
time, where the SDK bakes it into its driver when the definition is built. One host uses
``--standalone`` (a free rendezvous port, so several local jobs can run at once).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence

from training.env import LaunchEnv, read_launch_env

ENTRY_MODULE = "training.train"
# Instance types with EFA, where NCCL should use it (the SageMaker SDK's driver does the same).
EFA_INSTANCE_PREFIXES = ("ml.p4d.", "ml.p4de.", "ml.p5.", "ml.p5e.", "ml.p5en.", "ml.trn1.")


def torchrun_command(
    env: LaunchEnv, args: Sequence[str], python: str = sys.executable
) -> list[str]:
    """The torchrun command line for this host."""
    cmd = [python, "-m", "torch.distributed.run", f"--nnodes={env.host_count}"]
    cmd.append(f"--nproc_per_node={env.nproc_per_node}")
    if env.host_count > 1:
        cmd += [
            f"--master_addr={env.master_addr}",
            f"--master_port={env.master_port}",
            f"--node_rank={env.host_rank}",
        ]
    else:
        cmd.append("--standalone")
    return [*cmd, "-m", ENTRY_MODULE, *args]


def nccl_environment(env: LaunchEnv) -> dict[str, str]:
    """Network settings for NCCL across hosts (what the SDK's torchrun driver sets)."""
    if env.num_gpus == 0:
        return {}
    out = {"NCCL_SOCKET_IFNAME": env.network_interface, "NCCL_PROTO": "simple"}
    if env.instance_type.startswith(EFA_INSTANCE_PREFIXES):
        out.update({"FI_PROVIDER": "efa", "FI_EFA_USE_DEVICE_RDMA": "1", "RDMAV_FORK_SAFE": "1"})
    return out


def main(argv: Sequence[str] | None = None) -> int:
    env = read_launch_env()
    args = list(sys.argv[1:] if argv is None else argv)
    cmd = torchrun_command(env, args)
    print(
        f"launch: host {env.host_rank + 1}/{env.host_count}, "
        f"{env.nproc_per_node} process(es) per host: {' '.join(cmd[:8])} ...",
        flush=True,
    )
    child_env = {**os.environ, **nccl_environment(env)}
    proc = subprocess.Popen(cmd, env=child_env)
    # SIGTERM (a spot interruption, a stop) is passed on to torchrun, which passes it to the
    # ranks: they save a checkpoint and exit 143, and the launcher exits with their status.
    signal.signal(signal.SIGTERM, lambda signum, _frame: proc.send_signal(signum))
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        return proc.wait()


if __name__ == "__main__":
    from inference.quick_exit import quick_exit

    sys.exit(quick_exit(main()))
