"""Ray jobs over the `karaoke` library: thin glue that the command line (`karaoke_cli`) calls."""
