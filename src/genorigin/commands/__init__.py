"""Subcommands, one module each: ``add_arguments(parser)`` declares its flags, ``run(args) -> int`` runs it."""
