"""One module per ``genorigin`` command, each with ``add_arguments(parser)`` and ``run(args) -> int``.

``genorigin.cli.COMMANDS`` registers them; ``args`` holds the option groups several commands share. The work
itself is in ``genorigin.workflow`` (and the runtime), never here: a command parses, calls, prints.
"""
