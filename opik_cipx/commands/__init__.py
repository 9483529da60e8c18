"""One module per subcommand, named like it. Each defines `configure(parser)` and `run(args, settings)`."""
