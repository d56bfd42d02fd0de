"""``accelerate launch`` with the project's error contract: a bad input ends with its one ``error:`` line
and exit status 2, without the launcher's traceback.

    python scripts/launch.py [accelerate launch flags] scripts/train_sr.py [script flags]
    python scripts/launch.py --cpu --num_processes 2 --num_machines 1 --mpirun_hostfile F scripts/train_sr.py ...

Takes exactly ``accelerate launch``'s flags (``--help`` lists them). The launcher reports a failed
worker by raising (``CalledProcessError``; ``ChildFailedError`` under torchrun), so a plain
``accelerate launch`` prints the worker's ``error:`` line, then a traceback, and exits 1; this
wrapper exits with the worker's own status instead.
"""

import subprocess
import sys

from accelerate.commands.launch import launch_command, launch_command_parser


def main(argv=None) -> int:
    args = launch_command_parser().parse_args(argv)
    try:
        launch_command(args)
    except subprocess.CalledProcessError as err:
        return err.returncode
    except Exception as err:  # noqa: BLE001 - torchrun's ChildFailedError carries each rank's status
        failures = getattr(err, "failures", None)
        if not failures:
            raise
        return max(f.exitcode for f in failures.values())
    return 0


if __name__ == "__main__":
    sys.exit(main())
