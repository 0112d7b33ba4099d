"""`python -m karaoke_cli ARGS` is `karaoke ARGS`."""

from karaoke_cli.main import main

main(prog_name="karaoke")
