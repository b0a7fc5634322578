"""User-facing errors: one clear line and a non-zero exit, never a traceback."""
import sys


class UserError(Exception):
    """Bad input from the user (flags, list files, images, checkpoints).

    The scripts print the message as one line and exit with status 2.
    """


def run_cli(main, argv=None):
    """Set up the process, then run a script's main(argv), turning UserError and Ctrl-C into clean exits.

    main must import Paddle itself (not at module level), so that the CPU settings apply.
    """
    from utility import runtime

    print(runtime.configure(), flush=True)
    try:
        main(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    except OSError as err:  # the file system said no (permissions, full disk, ...): its message names the file
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
