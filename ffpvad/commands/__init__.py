"""The command lines.  Each module has ``main(argv)`` (returns the exit code, raises ``UserError``) and ``cli()``,
the console script, which runs ``main`` through ``errors.run_cli``."""
