"""maintctl: the command-line client of maintd's control socket."""
