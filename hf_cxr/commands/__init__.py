"""`hf-cxr` subcommands: argument parsing only, the work is done by library functions."""
