"""The `karaoke` command line: the top floor, above the library (`karaoke`) and the Ray jobs
(`pipelines`); nothing imports it. `python -m karaoke_cli` runs it from a checkout (e.g. under
`ray job submit --working-dir .`)."""
