"""Ray jobs over the `karaoke` library; each module runs as `python -m pipelines.<job>`."""
