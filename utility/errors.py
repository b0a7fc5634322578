"""User-facing errors: one clear line and a non-zero exit, never a traceback."""
import sys


class UserError(Exception):
    """Bad input from the user (flags, list files, images, checkpoints).

    The scripts print the message as one line and exit with status 2.
    """


def run_main(main, argv=None):
    """Run a script's main(argv), turning UserError, the file system's refusals and Ctrl-C into clean exits."""
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
