"""multiscope: bluesky control of multi-scale battery-electrode imaging."""

__version__ = "0.1.0"
