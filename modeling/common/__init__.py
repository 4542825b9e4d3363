"""The single source of the files every model folder carries (as same-folder links) for remote code."""
